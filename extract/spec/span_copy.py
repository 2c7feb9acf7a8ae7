"""Span-copy: string values that must be copied verbatim from the input.

A grammar makes a small model's output valid, not right: asked for a street name, a 135M
model will happily write one that is not in the address. When the task is span extraction
(every value is a piece of the text), the constraint can say so. ``apply_span_copy`` rewrites
the local constraint, per input, so each marked string is one of the input's word spans (an
``enum`` behind one ``$ref``, which llguidance compiles once per input in milliseconds even
for citation-length texts). Remote tiers cannot be constrained that way, so
``copy_violations`` checks the same promise after the fact, as a validator.

Which strings are marked: a field whose schema carries ``"copy_from_input": true``
(``Field(json_schema_extra={"copy_from_input": True})``), every plain string of a spec whose
root carries it (``model_config = ConfigDict(json_schema_extra={"copy_from_input": True})``),
or every plain string when the ``copy_from_input`` setting is True (False turns it all off).
A "plain" string has no enum, const, format or pattern: those already say what is allowed.
"""

from __future__ import annotations

import re
from typing import Any

from extract.spec.model import Spec
from extract.types import AttemptError

__all__ = [
    "COPY_KEY",
    "SPAN_DEF",
    "apply_span_copy",
    "copy_paths",
    "copy_violations",
    "strip_copy_marks",
    "word_spans",
]

COPY_KEY = "copy_from_input"
SPAN_DEF = "extract_input_span"
_REF = f"#/$defs/{SPAN_DEF}"
_WORD = re.compile(r"\S+")
# Trailing separators a span may drop ("Arlington," -> "Arlington"): both forms are substrings.
_TRAILING = ",;:"
# Longest span in words, and the most spans per input: a citation title runs to ~20 words;
# 40 words x 24 lengths x 2 forms stays near 2,000 alternatives (measured: compile < 10 ms).
MAX_SPAN_WORDS = 24
MAX_SPANS = 4000
_CONSTRAINING = ("enum", "const", "format", "pattern", "$ref")


def word_spans(text: str, max_words: int = MAX_SPAN_WORDS, limit: int = MAX_SPANS) -> list[str]:
    """Every run of 1..``max_words`` consecutive words of ``text``, as written (sorted, unique).

    Each run also appears without trailing separators. Past ``limit`` spans the longest runs
    are dropped first, so very long inputs keep every short span.
    """
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    seen: dict[str, int] = {}
    for length in range(1, max_words + 1):
        for i in range(0, len(words) - length + 1):
            span = text[words[i][0]:words[i + length - 1][1]]
            for form in (span, span.rstrip(_TRAILING)):
                if form and form not in seen:
                    seen[form] = length
        if len(seen) >= limit:
            break
    return sorted(seen)


def _plain_string(node: dict[str, Any]) -> bool:
    types = node.get("type")
    type_list = types if isinstance(types, list) else [types]
    return "string" in type_list and not any(k in node for k in _CONSTRAINING)


def _marked(schema: dict[str, Any], setting: bool | None) -> bool:
    """Whether span-copy applies to the whole spec (the setting wins over the schema)."""
    if setting is not None:
        return setting
    return bool(schema.get(COPY_KEY))


def _rewrite(node: Any, on: bool, setting: bool | None, hits: list[str], path: str) -> Any:
    """``node`` with its marked plain strings replaced by the span reference."""
    if isinstance(node, list):
        return [_rewrite(v, on, setting, hits, path) for v in node]
    if not isinstance(node, dict):
        return node
    here = setting if setting is not None else (on or bool(node.get(COPY_KEY)))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("enum", "const", "default", "examples", COPY_KEY):
            if key != COPY_KEY:
                out[key] = value
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {k: _rewrite(v, here, setting, hits, f"{path}.{k}" if path else k) for k, v in value.items()}
        elif key in ("$defs", "definitions") and isinstance(value, dict):
            out[key] = {k: _rewrite(v, False if setting is None else here, setting, hits, path)
                        for k, v in value.items()}
        else:
            out[key] = _rewrite(value, here, setting, hits, path)
    if here and _plain_string(out):
        hits.append(path)
        types = out.get("type")
        others = [t for t in (types if isinstance(types, list) else [types]) if t != "string"]
        # A bounded field gets the spans that fit its bound (one definition per bound).
        bound = out.get("maxLength")
        ref = {"$ref": _REF if bound is None else f"{_REF}_{int(bound)}"}
        if not others:
            return ref
        rest = {k: v for k, v in out.items() if k not in ("type", "maxLength", "minLength")}
        return {**rest, "anyOf": [ref, *({"type": t} for t in others)]}
    return out


def copy_paths(schema: dict[str, Any], setting: bool | None = None) -> list[str]:
    """Dotted paths of the strings span-copy constrains (empty: span-copy is off for this spec)."""
    hits: list[str] = []
    _rewrite(schema, _marked(schema, setting), setting, hits, "")
    return hits


def strip_copy_marks(node: Any) -> Any:
    """The schema without ``copy_from_input`` keys (llguidance warns on keys it does not know)."""
    if isinstance(node, list):
        return [strip_copy_marks(v) for v in node]
    if not isinstance(node, dict):
        return node
    return {k: (v if k in ("enum", "const", "default", "examples") else strip_copy_marks(v))
            for k, v in node.items() if k != COPY_KEY}


def apply_span_copy(schema: dict[str, Any], text: str, setting: bool | None = None) -> dict[str, Any]:
    """``schema`` with every marked string constrained to a word span of ``text``.

    Returns a new schema; an unmarked schema comes back only without the marks. An input with
    no words leaves the strings as they were (an empty enum would admit nothing).
    """
    hits: list[str] = []
    out = _rewrite(schema, _marked(schema, setting), setting, hits, "")
    spans = word_spans(text)
    if not hits or not spans:
        return strip_copy_marks(schema)  # type: ignore[no-any-return]
    defs = dict(out.get("$defs") or {})
    for ref in sorted(set(_refs(out))):
        name = ref.rsplit("/", 1)[-1]
        bound = int(name.rsplit("_", 1)[1]) if name != SPAN_DEF else None
        fitting = [s for s in spans if bound is None or len(s) <= bound]
        # No span fits: a string that cannot be produced; the field can still be null.
        defs[name] = {"type": "string", "enum": fitting} if fitting else {"type": "string", "maxLength": 0}
    out["$defs"] = defs
    return out  # type: ignore[no-any-return]


def _refs(node: Any) -> list[str]:
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    if not isinstance(node, dict):
        return []
    own = [node["$ref"]] if str(node.get("$ref", "")).startswith(_REF) else []
    return own + [r for k, v in node.items() if k not in ("enum", "const") for r in _refs(v)]


def _squash(s: str) -> str:
    return " ".join(s.split())


def _leaf(value: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(value, dict):
            value = value.get(part)
        else:
            value = getattr(value, part, None)
        if value is None:
            return None
    return value


def copy_violations(value: Any, spec: Spec, text: str, setting: bool | None = None) -> AttemptError | None:
    """A ``not_copied`` error naming each span-copy string of ``value`` absent from ``text``.

    The remote tiers' half of span-copy: they cannot be constrained per input, so the
    promise is checked. Whitespace runs compare equal (a model may re-flow a line break).
    """
    if spec.schema is None:
        return None
    paths = copy_paths(spec.schema, setting)
    if not paths:
        return None
    haystack = _squash(text)
    details = []
    for path in paths:
        got = _leaf(value, path.split("."))
        if isinstance(got, str) and got and _squash(got) not in haystack:
            details.append({"loc": path.split("."), "type": "not_copied",
                            "msg": "the value is not copied from the input"})
    if not details:
        return None
    return AttemptError(
        type="not_copied",
        message="not copied verbatim from the input: " + ", ".join(".".join(d["loc"]) for d in details),
        details=details,
    )
