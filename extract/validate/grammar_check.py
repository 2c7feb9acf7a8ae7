"""Checking a grammar spec's output: parse with ``lark`` (then the transformer), or say why not.

The local tier's output is valid by construction, but the remote tiers' is not, and lark is
the reference reading of the grammar either way: a parse error becomes a recorded
``parse_error`` with the line, column, expected tokens and the offending text, so a reask or
a report can show exactly where the output left the language. A cut at the token limit is
always a ``truncated`` error, even when the prefix happens to parse: a query cut before its
``WHERE`` is a sentence of the grammar, but not the answer.

One exception, a **runaway**: an answer cut at the token limit whose tail is one short unit
written again and again (``1.0 + - - - - ...``, ``SELECT a, a, a, ...``). What was cut is the
loop, not more answer, and greedy decoding writes the same loop when asked again (measured:
the native and local tiers on "Ten divided by the sum of two and three." with the arithmetic
grammar, the first call and both reasks identical). The answer is then the longest prefix
that parses, keeping at most one whole unit of the loop, recorded as the repair ``cut_runaway``
(``Attempt.repaired``: not valid as generated). This module imports no tier and no provider.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from extract.spec.grammar import describe_parse_error
from extract.spec.model import Spec
from extract.types import AttemptError
from extract.validate.outcome import Checked

if TYPE_CHECKING:
    import lark

__all__ = ["check_grammar", "cut_runaway", "describe_parse_error", "runaway"]

_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n(.*?)\n?```", re.S)


# A runaway: the tail repeats a unit of at most this many characters at least this many
# times, over at least this many characters (a loop of one character must be long to count).
RUNAWAY_MAX_UNIT = 32
RUNAWAY_MIN_REPEATS = 3
RUNAWAY_MIN_CHARS = 12


def runaway(text: str) -> tuple[int, int] | None:
    """(where the repeated tail of ``text`` starts, the length of its unit), or None when the
    tail is not a runaway: the earliest periodic suffix over units of up to
    ``RUNAWAY_MAX_UNIT`` characters that holds ``RUNAWAY_MIN_REPEATS`` units and a non-space."""
    n = len(text)
    best: tuple[int, int] | None = None
    for unit in range(1, min(RUNAWAY_MAX_UNIT, n // RUNAWAY_MIN_REPEATS) + 1):
        j = n - 1
        while j >= unit and text[j] == text[j - unit]:
            j -= 1
        start = j - unit + 1 if j >= unit else 0  # text[start:] has period ``unit``
        if (n - start >= max(RUNAWAY_MIN_REPEATS * unit, RUNAWAY_MIN_CHARS)
                and text[start:start + unit].strip() and (best is None or start < best[0])):
            best = (start, unit)
    return best


def cut_runaway(raw: str, accepts: Callable[[str], Any],
                refusals: tuple[type[Exception], ...] = (ValueError,)) -> tuple[str, Any] | None:
    """The longest prefix of ``raw`` (space-trimmed, ending between two tokens at most two
    units into its runaway tail: one whole unit, whatever the rotation the periodic tail was
    found at) that ``accepts`` takes, with what it returned; None when ``raw`` is no runaway or
    no such prefix is accepted. ``accepts`` refuses by raising one of ``refusals``."""
    loop = runaway(raw)
    if loop is None:
        return None
    start, unit = loop
    head = raw[:start + 2 * unit]
    for end in range(len(head), 0, -1):
        text = head[:end].strip()
        if not text or not _boundary(raw, end):
            continue
        try:
            return text, accepts(text)
        except refusals:
            continue
    return None


def _boundary(text: str, at: int) -> bool:
    """Whether ``at`` may fall between two tokens of ``text``: at a space, or between a word
    character and punctuation other than ``.`` (``2|.5`` and ``t|.id`` are one token each)."""
    if at >= len(text):
        return True
    before, after = text[at - 1], text[at]
    return (before.isspace() or after.isspace()
            or (before.isalnum() != after.isalnum() and "." not in (before, after)))


def check_grammar(raw: str | None, spec: Spec, truncated: bool = False) -> Checked:
    """Raw text -> the grammar's value (the transformer's result, or the text), or the error."""
    assert spec.grammar is not None, "check_grammar needs a grammar spec"
    grammar = spec.grammar
    if raw is None:
        return Checked(error=AttemptError(type="empty_output", message="the model returned no text"))
    candidates: list[tuple[str, list[str]]] = [(raw, [])]
    if raw.strip() != raw:
        candidates.append((raw.strip(), ["strip_whitespace"]))
    fenced = _FENCE.search(raw)
    if fenced is not None and fenced.group(1).strip():
        # Chat models wrap code in a Markdown fence (measured: 2 of 12 SQL answers on the
        # native tier); the fence is a repair, so the answer counts as valid after repair.
        candidates.append((fenced.group(1).strip(), ["strip_fences"]))
    import lark

    value: Any = None
    repairs: list[str] | None = None
    first: lark.exceptions.UnexpectedInput | None = None
    for text, steps in candidates:
        try:
            value = grammar.parse(text)
        except lark.exceptions.UnexpectedInput as exc:
            first = first or exc
            continue
        except lark.exceptions.VisitError as visit:
            return _transform_failed(visit, truncated)
        repairs = steps
        break
    if truncated:
        cut = cut_runaway(raw, grammar.parse, (lark.exceptions.UnexpectedInput, lark.exceptions.VisitError))
        if cut is not None:
            return Checked(value=cut[1], repaired=True, repairs=["cut_runaway"])
    if repairs is None:
        assert first is not None
        message, details = describe_parse_error(first, raw, grammar.parser)
        if truncated:
            return Checked(error=AttemptError(
                type="truncated", message="cut at the token limit; " + message, details=[details]))
        return Checked(error=AttemptError(type="parse_error", message=message, details=[details]))
    if truncated:
        return Checked(error=AttemptError(
            type="truncated",
            message="cut at the token limit; the prefix parses but may not be the whole answer"))
    return Checked(value=value, repaired=bool(repairs), repairs=repairs)


def _transform_failed(exc: lark.exceptions.VisitError, truncated: bool) -> Checked:
    """The text parsed but the transformer refused it (e.g. a Pydantic validation error)."""
    cause = exc.orig_exc
    return Checked(error=AttemptError(
        type="truncated" if truncated else "schema_violation",
        message=f"the transformer failed on rule {exc.obj.data if hasattr(exc.obj, 'data') else exc.obj!r}: "
        f"{type(cause).__name__}: {cause}",
    ))
