"""Deterministic syntax repair of raw model text, each step named so it can be counted.

Why a scanner of our own in front of ``json_repair``: ``json_repair`` is good at syntax
(trailing commas, comments, single quotes, Python literals) but when a text was *cut* it
completes the last value as best it can, and that silently changes meaning: ``{"n": 12`` cut
from ``{"n": 123}`` comes back as ``{"n": 12}``, ``"Main St`` as a half-written string,
``tr`` as the string ``"tr"``. The scanner finds where the JSON value starts and ends (so
prose and fences around it are dropped, recorded) and, when the text ends inside the value,
the last point where every value so far was complete. Only that prefix is closed, and the
closing is recorded as ``close_truncated`` (plus ``drop_truncated_tail`` when a cut value
was dropped): a truncated value is never passed off as generated, and a cut scalar is never
kept. A final check compares the repaired keys and values, in order, with the text's own
tokens, so a "repair" can change punctuation and quoting but never content.

This module imports nothing from tiers, providers or ``check``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RepairFailure", "Scan", "Syntax", "repair_syntax", "scan", "unverified"]

_OPEN = {"{": "}", "[": "]"}
_DELIMS = set("{}[]:,\"'")


@dataclass
class Scan:
    """Where a JSON-like value sits in a text.

    ``start``/``end`` delimit the value (``end`` is ``len(text)`` when it never closes);
    ``complete`` says its brackets closed; ``safe`` is the end of the longest prefix in
    which every value is complete (the cut point for a truncated text).
    """

    start: int
    end: int
    complete: bool
    safe: int
    in_string: bool = False


def _first_opener(text: str, prefer: str | None) -> int:
    if prefer is not None:
        i = text.find(prefer)
        if i >= 0:
            return i
    found = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    return min(found) if found else -1


def scan(text: str, prefer: str | None = None) -> Scan | None:
    """Locate the first JSON object or array in ``text`` (``prefer`` picks ``{`` or ``[``)."""
    start = _first_opener(text, prefer)
    if start < 0:
        return None
    stack: list[str] = []
    # Per open container: True when the next string/scalar is an object member's value.
    expect_value: list[bool] = []
    safe = start
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
            continue
        if c == "/" and i + 1 < n and text[i + 1] in "/*":
            if text[i + 1] == "/":
                j = text.find("\n", i)
                i = n if j < 0 else j + 1
            else:
                j = text.find("*/", i + 2)
                i = n if j < 0 else j + 2
            continue
        if c in _OPEN:
            stack.append(c)
            expect_value.append(c == "[")
            i += 1
            if len(stack) == 1:
                # Only the outermost opening is a cut point: cutting just inside a nested
                # container would keep an empty {} or [] the model never meant.
                safe = i
            continue
        if c in "}]":
            if stack:
                stack.pop()
                expect_value.pop()
            i += 1
            if not stack:
                return Scan(start, i, True, i)
            safe = i
            _after_value(stack, expect_value)
            continue
        if c == ":":
            if expect_value:
                expect_value[-1] = True
            i += 1
            continue
        if c == ",":
            if stack and stack[-1] == "{":
                expect_value[-1] = False
            i += 1
            continue
        is_value = bool(expect_value) and expect_value[-1]
        if c in "\"'":
            j = _string_end(text, i, c)
            if j < 0:  # the text ends inside this string
                return Scan(start, n, False, safe, in_string=True)
            i = j
        else:
            j = i
            while j < n and text[j] not in _DELIMS and text[j] not in " \t\r\n" and text[j : j + 2] not in ("//", "/*"):
                j += 1
            if j >= n:  # a scalar running into the end may be cut (12 of 123, tr of true)
                break
            i = j
        if is_value:
            safe = i
            _after_value(stack, expect_value)
    return Scan(start, n, False, safe)


def _after_value(stack: list[str], expect_value: list[bool]) -> None:
    if stack and stack[-1] == "{":
        expect_value[-1] = False


def _string_end(text: str, i: int, quote: str) -> int:
    """Index after the string opened at ``i``, or -1 when the text ends inside it."""
    j = i + 1
    n = len(text)
    while j < n:
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == quote:
            return j + 1
        j += 1
    return -1


class RepairFailure(Exception):
    """The text could not be turned into JSON honestly; ``type`` is the counted cause."""

    def __init__(self, type: str, message: str, repairs: list[str]) -> None:
        super().__init__(message)
        self.type = type
        self.message = message
        self.repairs = repairs


@dataclass
class Syntax:
    """Parsed JSON data and the repairs, in order, that were needed to get it."""

    data: Any
    repairs: list[str] = field(default_factory=list)
    truncated: bool = False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_loads(text: str) -> Any:
    """``json.loads`` without the NaN/Infinity extension: only RFC 8259 JSON is 'as generated'."""
    return json.loads(text, parse_constant=_reject_constant)


_OBJECT, _ARRAY = ("{",), ("[",)  # container markers: tuples never occur in JSON data


def _leaves(data: Any) -> list[Any]:
    """Container openings, keys and scalar values in document order (json_repair keeps order)."""
    out: list[Any] = []
    if isinstance(data, dict):
        out.append(_OBJECT)
        for k, v in data.items():
            out.append(k)
            out.extend(_leaves(v))
    elif isinstance(data, list):
        out.append(_ARRAY)
        for v in data:
            out.extend(_leaves(v))
    else:
        out.append(data)
    return out


_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None,
                             "True": True, "False": False, "None": None}


def _decode_string(token: str) -> str:
    body = token[1:-1]
    if token[0] == "'":
        body = body.replace("\\'", "'").replace('"', '\\"')
    value = json.loads('"' + body + '"', strict=False)
    assert isinstance(value, str)
    return value


def _tokens(source: str) -> list[Any]:
    """The strings and scalars of ``source`` decoded by our own rules, in order."""
    out: list[Any] = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c == "{" or c == "[":
            out.append(_OBJECT if c == "{" else _ARRAY)
            i += 1
        elif c in " \t\r\n}]:,":
            i += 1
        elif source.startswith("//", i):
            j = source.find("\n", i)
            i = n if j < 0 else j + 1
        elif source.startswith("/*", i):
            j = source.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in "\"'":
            j = _string_end(source, i, c)
            if j < 0:
                raise ValueError("unterminated string")
            out.append(_decode_string(source[i:j]))
            i = j
        else:
            j = i
            while j < n and source[j] not in _DELIMS and source[j] not in " \t\r\n" \
                    and source[j : j + 2] not in ("//", "/*"):
                j += 1
            word = source[i:j]
            if word in _LITERALS:
                out.append(_LITERALS[word])
            else:
                try:
                    out.append(strict_loads(word))
                except ValueError:
                    # An unquoted key ({a: 1}) is unambiguous; an unquoted value (undefined,
                    # 0.0.1, a URL cut at its colon) is a guess about meaning.
                    if not source[j:].lstrip().startswith(":"):
                        raise ValueError(f"unquoted value {word[:20]!r}") from None
                    out.append(word)
            i = j
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) or isinstance(b, tuple):
        return a is b
    return type(a) is type(b) and json.dumps(a) == json.dumps(b)


def unverified(data: Any, source: str) -> Any:
    """The first key or value of ``data`` that is not the next token of ``source``, or None.

    A syntax repair may change punctuation, quotes and literals' spelling, never the sequence
    of keys and values. Checking that sequence against our own tokenizer turns every
    json_repair guess that merged, split, unescaped or invented a value into a failure.
    """
    try:
        tokens = _tokens(source)
    except ValueError as exc:
        return f"<{exc}>"
    leaves = _leaves(data)
    for got, want in zip(leaves, tokens, strict=False):
        if not _same(got, want):
            return got
    if len(leaves) != len(tokens):
        return f"<{len(tokens)} keys and values in the text, {len(leaves)} after repair>"
    return None


def repair_syntax(raw: str, *, prefer: str | None = None, truncated: bool = False) -> Syntax:
    """Raw text -> JSON data, with every repair named; raises ``RepairFailure`` otherwise.

    Steps: strict parse (no repair); locate the value (strip fences and prose); strict parse
    of the located value; ``json_repair`` of a complete value; for a value the text ends
    inside, cut to the last complete value and close it (``close_truncated``).
    """
    try:
        return Syntax(strict_loads(raw))
    except ValueError:
        pass
    repairs: list[str] = []
    found = scan(raw, prefer)
    if found is None:
        raise RepairFailure("truncated" if truncated else "invalid_json",
                            "no JSON object or array in the output", repairs)
    before, after = raw[: found.start], raw[found.end :]
    if found.complete and (any(ch in after for ch in "{}[]") or '":' in after):
        # `{...}, {...}` or `{...}, "k": "v"}`: which part is the answer is a guess.
        raise RepairFailure("ambiguous_output", "more JSON-like text follows the first JSON value",
                            repairs)
    if "```" in before or "```" in after:
        repairs.append("strip_code_fence")
    if _strip_fences(before).strip() or _strip_fences(after).strip():
        repairs.append("strip_surrounding_text")
    candidate = raw[found.start : found.end]
    if found.complete:
        try:
            return Syntax(strict_loads(candidate), repairs)
        except ValueError:
            pass
    import json_repair

    cut = not found.complete and (truncated or not found.in_string
                                  or not _strip_fences(candidate).rstrip().endswith(("}", "]")))
    if not cut:
        # Complete, or a string left open in a text that still ends with a closer: broken
        # quoting, not a cut. json_repair gets the whole value; the token check judges it.
        source = candidate
        repairs.append("json_repair")
    else:
        source = raw[found.start : found.safe]
        tail = raw[found.safe :].strip().lstrip(",").strip()
        if tail:
            repairs.append("drop_truncated_tail")
        repairs.append("close_truncated")
    try:
        data = json_repair.loads(source, skip_json_loads=False)
    except Exception as exc:  # json_repair raises on some pathological inputs
        raise RepairFailure("invalid_json", f"json_repair failed: {exc}", repairs) from None
    if data in ("", None) or (isinstance(data, (dict, list)) and not data and not _is_empty_container(source)):
        raise RepairFailure("truncated" if (truncated or cut) else "invalid_json",
                            "nothing recoverable: the output is not JSON", repairs)
    if not isinstance(data, (dict, list)):
        raise RepairFailure("invalid_json", f"repair produced a {type(data).__name__}, not a JSON value",
                            repairs)
    invented = unverified(data, source)
    if invented is not None:
        raise RepairFailure("unverified_repair",
                            f"the repair changed content, not only syntax (at {invented!r}): "
                            "a merged, split, unescaped or duplicate value", repairs)
    return Syntax(data, repairs, truncated=cut)


def _strip_fences(text: str) -> str:
    return text.replace("```json", "").replace("```JSON", "").replace("```", "")


def _is_empty_container(source: str) -> bool:
    compact = "".join(source.split())
    return compact in ("{}", "[]", "{", "[")
