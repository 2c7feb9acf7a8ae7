"""Checking a grammar spec's output: parse with ``lark`` (then the transformer), or say why not.

The local tier's output is valid by construction, but the remote tiers' is not, and lark is
the reference reading of the grammar either way: a parse error becomes a recorded
``parse_error`` with the line, column, expected tokens and the offending text, so a reask or
a report can show exactly where the output left the language. A cut at the token limit is
always a ``truncated`` error, even when the prefix happens to parse: a query cut before its
``WHERE`` is a sentence of the grammar, but not the answer. This module imports no tier and
no provider.
"""

from __future__ import annotations

from typing import Any

import lark

from extract.spec.model import Spec
from extract.types import AttemptError
from extract.validate.check import Checked

__all__ = ["check_grammar", "describe_parse_error"]

_MAX_EXPECTED = 12


def describe_parse_error(exc: lark.exceptions.UnexpectedInput, raw: str) -> tuple[str, dict[str, Any]]:
    """A one-line message and structured details for a lark parse error."""
    line, column = getattr(exc, "line", -1), getattr(exc, "column", -1)
    expected: list[str] = []
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        expected = sorted(exc.allowed or ())
        pos = exc.pos_in_stream if exc.pos_in_stream is not None else 0
        offending = raw[pos:pos + 20]
    elif isinstance(exc, lark.exceptions.UnexpectedEOF):
        expected = sorted(str(t.name) if hasattr(t, "name") else str(t) for t in exc.expected)
        offending = "(end of text)"
    elif isinstance(exc, lark.exceptions.UnexpectedToken):
        expected = sorted(exc.expected or ())
        offending = str(exc.token)
    else:  # pragma: no cover - lark's three subclasses cover every parse error
        offending = ""
    where = f"line {line}, column {column}" if line and line > 0 else "the end of the text"
    shown = ", ".join(expected[:_MAX_EXPECTED]) + (" ..." if len(expected) > _MAX_EXPECTED else "")
    message = f"does not parse at {where}: unexpected {offending!r}" + (
        f"; expected one of {shown}" if shown else ""
    )
    details = {"line": line, "column": column, "expected": expected, "offending": offending}
    return message, details


def check_grammar(raw: str | None, spec: Spec, truncated: bool = False) -> Checked:
    """Raw text -> the grammar's value (the transformer's result, or the text), or the error."""
    assert spec.grammar is not None, "check_grammar needs a grammar spec"
    grammar = spec.grammar
    if raw is None:
        return Checked(error=AttemptError(type="empty_output", message="the model returned no text"))
    repairs: list[str] = []
    text = raw
    try:
        value = grammar.parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        stripped = raw.strip()
        first = exc
        value = None
        if stripped != raw:
            try:
                value = grammar.parse(stripped)
                text, repairs = stripped, ["strip_whitespace"]
            except lark.exceptions.UnexpectedInput:
                value = None
            except lark.exceptions.VisitError as visit:
                return _transform_failed(visit, truncated)
        if not repairs:
            message, details = describe_parse_error(first, raw)
            if truncated:
                return Checked(error=AttemptError(
                    type="truncated", message="cut at the token limit; " + message,
                    details=[details]))
            return Checked(error=AttemptError(type="parse_error", message=message, details=[details]))
    except lark.exceptions.VisitError as visit:
        return _transform_failed(visit, truncated)
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
