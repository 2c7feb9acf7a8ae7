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

import re
from typing import TYPE_CHECKING, Any

from extract.spec.grammar import describe_parse_error
from extract.spec.model import Spec
from extract.types import AttemptError
from extract.validate.outcome import Checked

if TYPE_CHECKING:
    import lark

__all__ = ["check_grammar", "describe_parse_error"]

_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n(.*?)\n?```", re.S)


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
