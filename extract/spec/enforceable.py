"""The part of a JSON Schema the local constraint can enforce, and what is left to check after.

llguidance enforces most of JSON Schema but refuses or ignores some keywords (``not``,
``if/then/else``, ``uniqueItems``, ``oneOf``'s exclusivity, formats and regex constructs it
does not know, ``minProperties`` over optional keys, remote ``$ref``). Refusing the whole schema
for one such keyword deep in a definition cost most real-world schemas (SchemaStore: 61 of 150
compiled before this module). Instead the local tier decodes under the schema with those
keywords taken out — a superset of what the user's schema admits, never a subset — and the
output is validated against the whole schema afterwards (``extract.validate.check``), with a
reask when it fails (``extract.tiers.local``). Every keyword taken out is returned with its
JSON pointer and the feature it belongs to, so ``extract check`` and each Attempt say what was
enforced and what was only checked.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

__all__ = ["UNENFORCED_KEYS", "enforceable"]

# Keywords the local constraint never enforces, by the feature ``detect_features`` names.
UNENFORCED_KEYS: dict[str, str] = {
    "not": "not",
    "if": "conditional",
    "then": "conditional",
    "else": "conditional",
    "dependentRequired": "dependent",
    "dependentSchemas": "dependent",
    "dependencies": "dependent",
    "contains": "contains",
    "minContains": "contains",
    "maxContains": "contains",
    "unevaluatedProperties": "unevaluated",
    "unevaluatedItems": "unevaluated",
    "uniqueItems": "unique_items",
    "propertyNames": "property_names",
    # Dynamic scope: llguidance resolves no dynamic reference; the node admits any value.
    "$dynamicRef": "ref",
    "$dynamicAnchor": "ref",
}
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties",
           "minContains", "maxContains")

# Values, not schemas: nothing under these keys is walked.
_DATA_KEYS = frozenset({"enum", "const", "default", "examples"})


@lru_cache(maxsize=256)
def _accepted(fragment: str) -> bool:
    """Whether llguidance compiles this one-keyword schema without error or unimplemented warning."""
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(fragment)
    except (ValueError, RuntimeError):
        return False
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    return not is_error and not any("nimplemented" in m for m in messages)


def _format_ok(fmt: Any) -> bool:
    return isinstance(fmt, str) and _accepted(json.dumps({"type": "string", "format": fmt}))


def _pattern_ok(pattern: Any) -> bool:
    return isinstance(pattern, str) and _accepted(json.dumps({"type": "string", "pattern": pattern}))


def enforceable(schema: dict[str, Any]) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    """(a copy of ``schema`` without what llguidance cannot enforce, ((feature, pointer), ...)).

    The copy admits every instance the schema admits (only constraints are removed, and
    ``oneOf`` becomes ``anyOf``), so decoding under it never excludes a valid answer.
    """
    relaxed = copy.deepcopy(schema)
    removed: list[tuple[str, str]] = []
    _relax(relaxed, "", removed)
    return relaxed, tuple(removed)


def _relax(node: Any, path: str, removed: list[tuple[str, str]]) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            _relax(item, f"{path}/{i}", removed)
        return
    if not isinstance(node, dict):
        return
    for key, feature in UNENFORCED_KEYS.items():
        if key in node:
            del node[key]
            removed.append((feature, path or "/"))
    for key in _COUNTS:  # 2.0 is the count 2 (JSON Schema says so); llguidance wants an integer
        if isinstance(node.get(key), float) and node[key].is_integer():
            node[key] = int(node[key])
    if "oneOf" in node:
        branches = node.pop("oneOf")
        if "anyOf" in node:  # both: keep the anyOf, check the oneOf after
            removed.append(("one_of", path or "/"))
        else:
            node["anyOf"] = branches
            removed.append(("one_of", path or "/"))
    if "format" in node and not _format_ok(node["format"]):
        del node["format"]
        removed.append(("format_other", path or "/"))
    if "pattern" in node and not _pattern_ok(node["pattern"]):
        del node["pattern"]
        removed.append(("string_pattern", path or "/"))
    props = node.get("properties")
    if isinstance(props, dict) and any(k in node for k in ("minProperties", "maxProperties")):
        required = set(node.get("required") or [])
        if not set(props) <= required:  # llguidance counts keys only when all are required
            node.pop("minProperties", None)
            node.pop("maxProperties", None)
            removed.append(("min_max_properties", path or "/"))
    ref = node.get("$ref")
    if isinstance(ref, str) and not ref.startswith("#"):
        del node["$ref"]  # a remote schema: nothing here can fetch it
        removed.append(("ref", path or "/"))
    for key, value in node.items():
        if key in _DATA_KEYS:
            continue
        if key in ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas") \
                and isinstance(value, dict):
            for name, sub in value.items():
                _relax(sub, f"{path}/{key}/{name}", removed)
        else:
            _relax(value, f"{path}/{key}", removed)
