"""User spec -> ``Spec``, and ``Spec`` -> the constraint the local tier decodes under.

Both are pure functions of their inputs and cached: a Pydantic class compiles once per
process, a dict once per canonical form. The local constraint tightens the user's schema
without widening it (every value the constraint admits also validates against the schema):
objects are closed, whitespace is compact, and unbounded strings and lists get a bound
derived from the input, because a 135M model left unbounded repeats a word until the token
limit cuts the JSON (measured: 4 of 30 addresses).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, PydanticUserError

from extract.errors import ConfigError, UnsupportedSchema
from extract.spec.enforceable import enforceable
from extract.spec.features import detect_features
from extract.spec.grammar import Grammar
from extract.spec.model import Regex, Spec, canonical_json
from extract.spec.span_copy import COPY_KEY, CopySetting, apply_span_copy, copy_paths, strip_copy_marks

__all__ = ["GENERATE_BOUNDS", "checked_after", "clear_constraint_cache", "compile_spec", "length_bucket",
           "local_constraint", "max_output_chars"]


@lru_cache(maxsize=256)
def _compile_model(model: type[BaseModel]) -> Spec:
    try:
        schema = model.model_json_schema()
    except PydanticUserError as exc:
        raise UnsupportedSchema(
            "pydantic_json_schema", "all", detail=f"{model.__name__}: {exc}"
        ) from None
    except Exception as exc:  # pydantic raises several types for non-serialisable fields
        raise UnsupportedSchema(
            "pydantic_json_schema", "all", detail=f"{model.__name__}: {exc}"
        ) from None
    return Spec(
        kind="model",
        name=model.__name__,
        schema=schema,
        model=model,
        features=detect_features(schema),
        digest=Spec.digest_of("model", schema),
    )


@lru_cache(maxsize=256)
def _compile_schema(text: str) -> Spec:
    # The user's key order is kept: the model fills fields in that order (the digest is
    # order-free, so a reordered schema shares cached results).
    schema = json.loads(text)
    _check_schema(schema)
    return Spec(
        kind="schema",
        name=str(schema.get("title") or "schema"),
        schema=schema,
        features=detect_features(schema),
        digest=Spec.digest_of("schema", schema),
    )


def _check_schema(schema: dict[str, Any]) -> None:
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise ConfigError(f"not a valid JSON Schema at {where}: {exc.message}") from None


def compile_spec(spec: Any) -> Spec:
    """Accept a Pydantic model class, a JSON Schema dict, a ``Regex``, a ``Grammar`` or a ``Spec``."""
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, type) and issubclass(spec, BaseModel):
        return _compile_model(spec)
    if isinstance(spec, dict):
        try:
            canonical_json(spec)
            text = json.dumps(spec, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"the JSON Schema dict is not JSON-serialisable: {exc}") from None
        return _compile_schema(text)
    if isinstance(spec, Regex):
        return Spec(
            kind="regex",
            name=spec.name,
            pattern=spec.pattern,
            features={"regex": ("",)},
            digest=Spec.digest_of("regex", spec.pattern),
        )
    if isinstance(spec, Grammar):
        return Spec(
            kind="grammar",
            name=spec.name,
            grammar=spec,
            features={"grammar": ("",)},
            digest=Spec.digest_of("grammar", {"text": spec.text, "start": spec.start}),
        )
    if isinstance(spec, BaseModel):
        raise ConfigError(
            f"got an instance of {type(spec).__name__}; pass the class itself, "
            f"e.g. extract(text, {type(spec).__name__})"
        )
    raise ConfigError(
        f"a spec must be a Pydantic model class, a JSON Schema dict, extract.Regex or "
        f"extract.Grammar; "
        f"got {type(spec).__name__}"
    )


def length_bucket(n_chars: int) -> int:
    """The string bound for an input of ``n_chars``: the next power of two, at least 32.

    Bucketing keeps the number of distinct constraints per spec small, so the compiled
    grammar cache is hit for nearly every input.
    """
    bound = 32
    while bound < n_chars:
        bound *= 2
    return bound


_STRING_FREE = ("enum", "const", "maxLength")
# A node with none of these admits a value of any type (``{}``, ``{"minimum": 1}``, ...).
_TYPING = ("type", "enum", "const", "$ref", "$dynamicRef", "anyOf", "oneOf", "allOf")
_ANY_TYPES = ["object", "array", "string", "number", "boolean", "null"]
_SCALAR_TYPES = ["string", "number", "boolean", "null"]
_CONTAINER_KEYS = ("properties", "patternProperties", "additionalProperties", "required", "items", "prefixItems",
                   "additionalItems", "minProperties", "maxProperties")


def _bound_any(node: dict[str, Any], str_bound: int) -> None:
    """Give a node that admits any type one level of bounded containers, in place.

    Why: under ``{}`` (or a schema with no ``type``) llguidance admits any JSON value, and the
    135M model nests ``{"type":"json","data":{...`` or counts ``[1,2,3,...`` until the token
    limit cuts it (45 of 100 JSON Schema Test Suite cases, local tier). Every type stays
    allowed; an object's other values and an array's items become bounded scalars, and the
    object and array get a count bound (below), so any value the constraint admits is short.
    That only narrows what the schema admits: a value of the constraint still validates.
    """
    node["type"] = list(_ANY_TYPES)
    scalar = {"type": list(_SCALAR_TYPES), "maxLength": str_bound}
    if node.get("items", True) is True:
        node["items"] = scalar
    if node.get("additionalProperties", True) is True and "patternProperties" not in node:
        props = node.get("properties")
        if not isinstance(props, dict) or set(node.get("required") or []) - set(props):
            node["additionalProperties"] = dict(scalar)  # a required key nothing else lists
        # (listed properties only: closed below as any other object)


def _tighten(node: Any, str_bound: int, list_bound: int, closable: bool = True, free: bool = True,
             close: bool = True) -> None:
    """Bound strings and lists, and close objects, in place. ``closable`` is False for a branch
    of anyOf/allOf/oneOf: its ``properties`` may list only the keys it constrains. ``free`` is
    False where a node admitting any type must stay as it is (``_bound_any``): a definition
    (a ``$ref`` to it may stand beside keywords a bounded node would contradict; llguidance
    refuses a count bound beside optional properties) and a branch beside object or array
    keywords. ``close=False`` closes no object anywhere (the fallback in ``_constraint``)."""
    if isinstance(node, list):
        for v in node:
            _tighten(v, str_bound, list_bound, closable, free, close)
        return
    if not isinstance(node, dict):
        return
    any_branch = str_bound > 0 and free and not any(k in node for k in _TYPING) and (
        closable or not any(k in node for k in _CONTAINER_KEYS))  # a branch's keys may be typed beside it
    if any_branch:
        _bound_any(node, str_bound)
    any_branch = any_branch and not closable  # no count bound: a sibling branch may list optional keys
    types = node.get("type")
    type_list = types if isinstance(types, list) else [types]
    if str_bound > 0 and "string" in type_list and not any(k in node for k in _STRING_FREE):
        node["maxLength"] = max(str_bound, int(node.get("minLength", 0)))
    if str_bound > 0 and "array" in type_list and "maxItems" not in node:
        node["maxItems"] = max(list_bound, int(node.get("minItems", 0)))
    props = node.get("properties")
    # Closing an object is a tightening only when nothing else can define its keys: a
    # required key listed elsewhere (allOf, a $ref, a branch) would become unsatisfiable.
    defined_elsewhere = any(k in node for k in ("allOf", "anyOf", "oneOf", "$ref")) or (
        isinstance(props, dict) and not set(node.get("required") or []) <= set(props))
    if isinstance(props, dict) and "additionalProperties" not in node and not defined_elsewhere and closable \
            and close:
        node["additionalProperties"] = False
    # llguidance counts keys (maxProperties) only when every listed property is required.
    all_required = not isinstance(props, dict) or set(props) <= set(node.get("required") or [])
    if isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node and all_required \
            and not any_branch and not any(k in node for k in ("allOf", "anyOf", "oneOf", "$ref")):
        node["maxProperties"] = max(list_bound, int(node.get("minProperties", 0)))
    for key, value in node.items():
        if key in ("enum", "const", "default", "examples"):
            continue
        if key == "properties" and isinstance(value, dict):
            for name, sub in value.items():
                if sub is True:  # any value: bounded as ``{}`` is
                    value[name] = sub = {}
                _tighten(sub, str_bound, list_bound, close=close)
        elif key in ("patternProperties", "dependentSchemas", "$defs", "definitions") and isinstance(value, dict):
            for sub in value.values():  # a map of schemas, not a schema
                _tighten(sub, str_bound, list_bound, free=key not in ("$defs", "definitions"), close=close)
        elif key in ("anyOf", "allOf", "oneOf"):
            # A branch is bounded as any other node only when the node beside it defines no
            # keys or items: bounded values there could contradict what the node says of them.
            _tighten(value, str_bound, list_bound, closable=False,
                     free=not any(k in node for k in _CONTAINER_KEYS), close=close)
        else:
            _tighten(value, str_bound, list_bound, close=close)


@lru_cache(maxsize=256)
def _enforceable(digest_and_schema: tuple[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    relaxed, removed = enforceable(json.loads(digest_and_schema[1]))
    return json.dumps(relaxed, ensure_ascii=False), removed


def checked_after(spec: Spec) -> tuple[tuple[str, str], ...]:
    """(feature, JSON pointer) of every keyword the local constraint leaves to the check after
    decoding (``extract.spec.enforceable``); empty when the constraint enforces the whole schema."""
    if spec.schema is None:
        return ()
    return _enforceable((spec.digest, json.dumps(spec.schema, ensure_ascii=False)))[1]


@lru_cache(maxsize=1024)
def _constraint(digest_and_schema: tuple[str, str], str_bound: int, list_bound: int) -> str:
    # What llguidance cannot enforce is taken out here and checked after decoding.
    relaxed = _enforceable(digest_and_schema)[0]
    # Tightening can contradict a schema it cannot see whole: an object closed here that an
    # allOf elsewhere extends, a length bound below what a pattern needs (SchemaStore: 6 of
    # 150 refused as unsatisfiable). Then the objects stay open, then nothing is tightened:
    # a constraint that admits some instance beats a refusal. (The last try is returned as is.)
    for close, bounds in ((True, True), (False, True), (False, False)):
        tightened = json.loads(relaxed)
        if bounds:
            _tighten(tightened, str_bound, list_bound, close=close)
        # llguidance's JSON whitespace is free by default and a small model loops on spaces;
        # compact separators make every output one line with no optional whitespace.
        tightened["x-guidance"] = {"whitespace_flexible": False}
        text = json.dumps(tightened, separators=(",", ":"), ensure_ascii=False)
        if not _refused(text):
            break
    return text


def _refused(constraint: str) -> bool:
    """Whether llguidance refuses this JSON Schema (unsatisfiable, or a keyword combination it
    does not take). What it cannot compile at all is left for ``LocalTier.check_support`` to name."""
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(constraint)
    except (ValueError, RuntimeError):
        return False
    is_error, _ = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    return bool(is_error)


def clear_constraint_cache() -> None:
    """Forget every local constraint built so far (the benchmark's cold-compile measurement)."""
    _constraint.cache_clear()


# (string characters, list items) for an instance written from no document (Settings.generate).
# Input-derived bounds mean nothing there (the text is a request), and the 135M model fills a
# list to its bound and a string to its length: measured on SchemaStore (benchmarks/results/
# schemastore-local-*), instances long enough for the token limit to cut them.
GENERATE_BOUNDS = (32, 2)


def local_constraint(spec: Spec, text: str, *, copy_from_input: CopySetting = None, bounds: bool = True,
                     shapes: bool = False, generate: bool = False, trim_edges: bool = False) -> str:
    """The JSON Schema text the local tier constrains decoding with, for this input.

    ``copy_from_input`` is the span-copy switch (None: as the schema marks it; see
    ``extract.spec.span_copy``); ``shapes`` narrows copied fields by the shape their name or
    description names (``extract.spec.shapes``); ``bounds=False`` leaves strings and lists unbounded (only the
    ablation benchmark wants that, to measure what bounds buy). ``generate``: ``text`` is a
    request, not a document: strings and lists are bounded by ``GENERATE_BOUNDS`` (never below
    the schema's own minLength / minItems), not by the text. ``trim_edges``: copied strings may
    also shed what encloses them (``extract.spec.span_copy.span_forms``).
    """
    if spec.schema is None:
        raise ValueError("local_constraint needs a JSON spec")
    str_bound = length_bucket(len(text)) if bounds else 0
    list_bound = max(8, min(64, len(text.split())))
    if generate and bounds:
        str_bound, list_bound = GENERATE_BOUNDS
    # Key order matters (the model fills fields in schema order): not canonical_json here.
    ordered = json.dumps(spec.schema, ensure_ascii=False)
    base = _constraint((spec.digest, ordered), str_bound, list_bound)
    if not copy_paths(spec.schema, copy_from_input):
        if COPY_KEY not in base:
            return base
        return json.dumps(strip_copy_marks(json.loads(base)), separators=(",", ":"), ensure_ascii=False)
    # Per input: the spans change with every text, so this part is never cached.
    copied = apply_span_copy(json.loads(base), text, copy_from_input, shapes, trim_edges)
    return json.dumps(copied, separators=(",", ":"), ensure_ascii=False)


def max_output_chars(constraint: dict[str, Any] | str, *, cap: int = 1 << 20) -> int:
    """An upper bound on the serialized length of any instance of ``constraint``.

    Used to size the token budget: a token is at least one byte, so this many tokens always
    suffice for a bounded schema. Unbounded parts (recursion, free strings) hit ``cap``.
    """
    schema = json.loads(constraint) if isinstance(constraint, str) else constraint
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            defs[f"#/{key}/{name}"] = sub

    def size(node: Any, depth: int) -> int:
        if depth > 12 or not isinstance(node, dict):
            return cap
        if "$ref" in node:
            target = defs.get(node["$ref"]) if node["$ref"] != "#" else schema
            return size(target, depth + 1) if target is not None else cap
        if "const" in node:
            return len(json.dumps(node["const"]))
        if "enum" in node:
            return max((len(json.dumps(v, ensure_ascii=False)) for v in node["enum"]), default=4)
        for key in ("anyOf", "oneOf"):
            if key in node:
                return max((size(s, depth + 1) for s in node[key]), default=cap)
        if "allOf" in node:
            return min((size(s, depth + 1) for s in node["allOf"]), default=cap)
        types = node.get("type")
        type_list = types if isinstance(types, list) else [types]
        best = 0
        for t in type_list:
            if t == "string":
                if "maxLength" in node:
                    # JSON escapes can take 6 characters per character ("\u0000").
                    best = max(best, 2 + 6 * int(node["maxLength"]))
                elif "format" in node:
                    best = max(best, 64)
                else:
                    best = max(best, cap)
            elif t in ("integer", "number"):
                best = max(best, 24)
            elif t in ("boolean", "null"):
                best = max(best, 5)
            elif t == "array":
                n = int(node.get("maxItems", 1 << 16))
                item = size(node.get("items", {}), depth + 1) if "items" in node else cap
                best = max(best, 2 + n * (item + 1))
            elif t == "object" or "properties" in node:
                props = node.get("properties", {})
                total = 2 + sum(len(json.dumps(k)) + 2 + size(v, depth + 1) for k, v in props.items())
                if node.get("additionalProperties") not in (False, None):
                    total = cap
                best = max(best, total)
            elif t is None:
                best = max(best, cap)
        return min(best, cap)

    return size(schema, 0)
