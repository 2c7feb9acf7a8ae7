"""Which JSON Schema features a spec uses, and which tiers honour which: capabilities as data.

``FEATURES`` names every feature we detect; ``TIER_SUPPORT`` says, per tier, which of them it
honours. Tests enumerate both tables, and ``extract check`` prints them. A feature a tier
does not honour makes ``ensure_supported`` raise ``UnsupportedSchema`` before any model call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from extract.errors import UnsupportedSchema

__all__ = ["CHECKED_AFTER", "FEATURES", "TIER_SUPPORT", "detect_features", "ensure_supported", "self_reaching",
           "unsupported"]

# feature name -> what it means, as shown by `extract check`.
FEATURES: dict[str, str] = {
    "string": "string values",
    "integer": "integer values",
    "number": "floating point values",
    "boolean": "true/false values",
    "null": "null values",
    "object": "nested objects with named properties",
    "array": "lists",
    "array_bounds": "minItems / maxItems on lists",
    "optional": "a value that may be null (Optional[...])",
    "enum": "a closed set of values (Enum, Literal of several values)",
    "const": "a single allowed value (Literal of one value)",
    "union": "anyOf over several types or models",
    "one_of": "oneOf: exactly one of several schemas matches",
    "discriminated_union": "a oneOf of models told apart by a tag field",
    "string_pattern": "a regular expression on a string",
    "string_length": "minLength / maxLength",
    "numeric_bounds": "minimum / maximum / exclusive bounds",
    "multiple_of": "multipleOf on numbers",
    "format_date": "format: date",
    "format_date_time": "format: date-time",
    "format_time": "format: time",
    "format_other": "any other string format (email, uri, uuid, ...)",
    "dict": "an object with free keys and typed values (dict[str, X])",
    "required": "required properties",
    "default": "default values",
    "ref": "definitions reused through $ref",
    "recursion": "a definition that refers to itself",
    "tuple": "prefixItems (fixed-length tuples)",
    "unique_items": "uniqueItems on lists",
    "all_of": "allOf combining schemas",
    "not": "not (negated schemas)",
    "conditional": "if / then / else",
    "pattern_properties": "patternProperties",
    "property_names": "propertyNames",
    "dependent": "dependentRequired / dependentSchemas",
    "contains": "contains / minContains / maxContains",
    "min_max_properties": "minProperties / maxProperties",
    "unevaluated": "unevaluatedProperties / unevaluatedItems",
    "regex": "the whole output is one regular expression",
    "grammar": "the whole output is a sentence of a Lark grammar",
    "grammar_field": "a string field that must be a sentence of a Lark grammar (Annotated[str, Grammar])",
}

_JSON_CORE = {
    "string", "integer", "number", "boolean", "null", "object", "array", "array_bounds",
    "optional", "enum", "const", "union", "discriminated_union", "string_pattern",
    "string_length", "numeric_bounds", "format_date", "format_date_time", "format_time",
    "dict", "required", "default", "ref", "all_of", "tuple",
}

# Features the local tier decodes without enforcing and checks after: llguidance 1.9 rejects
# `not` and `oneOf`, and decodes without enforcing `if/then/else`, `dependent*`, `contains`,
# `unevaluated*`, `uniqueItems` and `propertyNames` (a warning only). The local constraint
# leaves them out (``extract.spec.enforceable``: a superset of the schema), the output is
# validated against the whole schema, and a failure is reasked once (``extract.tiers.local``).
# Formats and patterns llguidance cannot compile, minProperties over optional keys and remote
# $refs are handled the same way where they occur (``extract check`` lists each place).
CHECKED_AFTER: dict[str, frozenset[str]] = {
    "local": frozenset({"not", "conditional", "dependent", "contains", "unevaluated", "unique_items",
                        "property_names", "one_of"}),
}

# What each tier honours: enforces while decoding, or checks after and reasks. The remote
# tiers validate after the fact, so they honour every keyword the validator checks; the local
# tier enforces what llguidance can constrain and checks the rest (CHECKED_AFTER).
# tests/test_spec.py keeps this table honest.
TIER_SUPPORT: dict[str, frozenset[str]] = {
    "local": frozenset(_JSON_CORE | CHECKED_AFTER["local"] | {
        "format_other", "recursion", "pattern_properties", "min_max_properties", "multiple_of", "regex",
        "grammar", "grammar_field"}),
    # Grammars: native sends them to the server where it enforces a grammar field (GBNF for
    # llama.cpp, Lark for vLLM), else asks for plain text; either way it parses with lark and
    # reasks with the parse error; repair regenerates on the local model under the grammar. Instructor validates
    # JSON against a response model and cannot carry a grammar: it refuses whole-output
    # grammars (the native tier runs the reask loop on the same endpoint). Grammar fields
    # are validated with lark after the fact everywhere (a Pydantic validator), so a
    # remote tier's reask carries the parse error; the local tier also constrains them.
    "native": frozenset(FEATURES),
    "instructor": frozenset(set(FEATURES) - {"regex", "grammar"}),
    "repair": frozenset(FEATURES),
}

_FORMATS = {"date": "format_date", "date-time": "format_date_time", "time": "format_time"}


def _walk(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """Yield (feature, pointer) for every feature used at or below ``node``."""
    if not isinstance(node, dict):
        return
    types = node.get("type")
    type_list = types if isinstance(types, list) else [types] if types else []
    for t in type_list:
        if t in ("string", "integer", "number", "boolean", "null", "object", "array"):
            yield t, path
    if "$ref" in node:
        yield "ref", path
    if "properties" in node:
        yield "object", path
        for name, sub in node["properties"].items():
            yield from _walk(sub, f"{path}/properties/{name}")
    if node.get("required"):
        yield "required", path
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        yield "dict", path
        yield from _walk(extra, f"{path}/additionalProperties")
    if "items" in node and isinstance(node["items"], dict):
        yield from _walk(node["items"], f"{path}/items")
    if "prefixItems" in node:
        yield "tuple", path
        for i, sub in enumerate(node["prefixItems"]):
            yield from _walk(sub, f"{path}/prefixItems/{i}")
    if "minItems" in node or "maxItems" in node:
        yield "array_bounds", path
    if "enum" in node:
        yield "enum", path
    if "const" in node:
        yield "const", path
    for key in ("anyOf", "oneOf"):
        if key in node:
            subs = node[key]
            nulls = [s for s in subs if isinstance(s, dict) and s.get("type") == "null"]
            if nulls and len(subs) - len(nulls) == 1:
                yield "optional", path
            else:
                yield "union", path
            if key == "oneOf":
                yield "one_of", path
            if key == "oneOf" and "discriminator" in node:
                yield "discriminated_union", path
            for i, sub in enumerate(subs):
                yield from _walk(sub, f"{path}/{key}/{i}")
    if "discriminator" in node and "oneOf" not in node:
        yield "discriminated_union", path
    if "allOf" in node:
        yield "all_of", path
        for i, sub in enumerate(node["allOf"]):
            yield from _walk(sub, f"{path}/allOf/{i}")
    if "x-grammar" in node:
        yield "grammar_field", path
    if "pattern" in node:
        yield "string_pattern", path
    if "minLength" in node or "maxLength" in node:
        yield "string_length", path
    if any(k in node for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        yield "numeric_bounds", path
    if "multipleOf" in node:
        yield "multiple_of", path
    if "format" in node:
        yield _FORMATS.get(node["format"], "format_other"), path
    if "default" in node:
        yield "default", path
    if node.get("uniqueItems"):
        yield "unique_items", path
    if "not" in node:
        yield "not", path
    if "if" in node:
        yield "conditional", path
    if "patternProperties" in node:
        yield "pattern_properties", path
    if "propertyNames" in node:
        yield "property_names", path
    if "dependentRequired" in node or "dependentSchemas" in node or "dependencies" in node:
        yield "dependent", path
    if "contains" in node:
        yield "contains", path
    if "minProperties" in node or "maxProperties" in node:
        yield "min_max_properties", path
    if "unevaluatedProperties" in node or "unevaluatedItems" in node:
        yield "unevaluated", path
    for defs in ("$defs", "definitions"):
        for name, sub in (node.get(defs) or {}).items():
            yield from _walk(sub, f"{path}/{defs}/{name}")


def self_reaching(edges: Mapping[str, Iterable[str]]) -> list[str]:
    """The nodes of a directed graph that can reach themselves, in ``edges``' order.

    One walk per node; a target that is not a key of ``edges`` has no edges of its own.
    Shared by the schema's recursive ``$ref``s here and the GBNF converter's left recursion.
    """
    found = []
    for start in edges:
        seen: set[str] = set()
        stack = list(edges[start])
        while stack:
            cur = stack.pop()
            if cur == start:
                found.append(start)
                break
            if cur in seen or cur not in edges:
                continue
            seen.add(cur)
            stack.extend(edges[cur])
    return found


def _recursive_refs(schema: dict[str, Any]) -> list[str]:
    """Names of definitions that can reach themselves through $ref."""
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            defs[f"#/{key}/{name}"] = sub

    def refs(node: Any) -> set[str]:
        found: set[str] = set()
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                found.add(node["$ref"])
            for v in node.values():
                found |= refs(v)
        elif isinstance(node, list):
            for v in node:
                found |= refs(v)
        return found

    edges = {name: refs(sub) for name, sub in defs.items()}
    cyclic = self_reaching(edges)
    if "#" in refs({k: v for k, v in schema.items() if k not in ("$defs", "definitions")}):
        cyclic.append("#")
    return cyclic


def detect_features(schema: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Map each feature used by ``schema`` to the JSON pointers where it occurs."""
    found: dict[str, list[str]] = {}
    for feature, pointer in _walk(schema, ""):
        found.setdefault(feature, [])
        if pointer not in found[feature]:
            found[feature].append(pointer)
    for name in _recursive_refs(schema):
        found.setdefault("recursion", []).append(name)
    return {k: tuple(v) for k, v in found.items()}


def unsupported(features: dict[str, tuple[str, ...]], tier: str) -> list[str]:
    """Features in ``features`` that ``tier`` does not honour, in table order."""
    honoured = TIER_SUPPORT.get(tier, frozenset())
    return [f for f in FEATURES if f in features and f not in honoured]


def ensure_supported(features: dict[str, tuple[str, ...]], tier: str) -> None:
    """Raise ``UnsupportedSchema`` for the first feature ``tier`` cannot honour."""
    missing = unsupported(features, tier)
    if missing:
        feature = missing[0]
        raise UnsupportedSchema(
            feature,
            tier,
            path=features[feature][0] or "/",
            detail=FEATURES[feature]
            + (f" (also unsupported: {', '.join(missing[1:])})" if missing[1:] else ""),
        )
