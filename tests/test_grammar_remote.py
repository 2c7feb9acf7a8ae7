"""Grammar specs on the remote tiers, against the real llama.cpp server behind the real proxy:
the native tier's parse-error reask, the chain handing a failed grammar output to repair, and
grammar fields validated with lark after the fact (their parse error is what a reask carries).
The first two run with the proxy refusing the grammar request fields (``reject``), so the
native tier is on its plain-text rung: with the grammar enforced the first answer parses
(``tests/test_grammar_server.py``).

The embedded model is tiny, so nothing here asserts that a reask succeeds: only that it
happened, that it carried the parse error, and that every call is recorded with its cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated

from pydantic import BaseModel

from extract import Extractor, Grammar, compile_spec
from extract.settings import Settings
from extract.testing.fault_proxy import FaultProxy
from extract.tiers.base import Task
from extract.tiers.native import NativeTier

# A language the model will not guess: its first plain answer does not parse.
TICKET = Grammar.from_text('start: "ZQX-" /[0-9]{4}/\n', name="ticket", description="a code like ZQX-0000")
TEXT = "The ticket for the broken printer is 4821."


class Ticket(BaseModel):
    ticket: Annotated[str, TICKET]


def test_native_reasks_with_the_parse_error_and_records_every_call(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(reject=["grammar", "structured_outputs"])
    settings = remote_settings(grammar_max_reasks=2, max_tokens=24)
    task = Task(text=TEXT, spec=compile_spec(TICKET), settings=settings)
    attempts = asyncio.run(NativeTier(settings).attempts(task))
    first = attempts[0]
    # A cut answer is reported as truncated, with the same parse details.
    assert first.error is not None and first.error.type in ("parse_error", "truncated"), first
    detail = first.error.details[0]
    assert detail["line"] == 1 and detail["column"] >= 1 and detail["expected"] == ["'ZQX-'"]
    assert len(attempts) >= 2, "a parse error must be followed by a reask"
    assert len(attempts) == 3 or attempts[-1].ok  # stops at the first parse, else at the bound
    reask = attempts[1].meta["reask"]
    assert first.error.message in reask and "expected one of 'ZQX-'" in reask
    assert f"unexpected {detail['offending']!r}" in reask  # the offending text, as lark saw it
    for i, attempt in enumerate(attempts):
        assert attempt.tier == "native" and attempt.meta["mode"] == "prompt"
        assert attempt.meta["grammar_attempt"] == i + 1 and attempt.meta["http_tries"] >= 1
        assert attempt.raw is not None and attempt.latency_s > 0
        assert attempt.usage.input_tokens > 0 and attempt.usage.output_tokens > 0
        assert attempt.ok or attempt.error is not None
    # Each reask carries the conversation so far: the prompt grows.
    assert attempts[1].usage.input_tokens > first.usage.input_tokens
    assert [r["mode"] for r in first.meta["rejected_modes"]] == ["gbnf", "structured_outputs"]
    stats = proxy.stats()
    assert stats["status"].get("200", 0) >= len(attempts)
    if all(a.meta["http_tries"] == 1 for a in attempts):  # a timed-out try may still be billed
        assert stats["usage"]["prompt_tokens"] == sum(a.usage.input_tokens for a in attempts)
        assert stats["usage"]["completion_tokens"] == sum(a.usage.output_tokens for a in attempts)


def test_the_chain_skips_instructor_and_repair_regenerates_under_the_grammar(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(reject=["grammar", "structured_outputs"])
    settings = remote_settings(grammar_max_reasks=0, max_tokens=24)
    extractor = Extractor(tiers=["native", "instructor", "repair"], **settings.model_dump(
        include={"base_url", "timeout_s", "max_retries", "grammar_max_reasks", "max_tokens"}))
    result = extractor.run(TEXT, TICKET)
    by_tier = {a.tier: a for a in result.attempts}
    skipped = by_tier["instructor"]
    assert skipped.skipped and skipped.error is not None and skipped.error.type == "unsupported"
    assert skipped.error.details[0]["feature"] == "grammar"
    native = by_tier["native"]
    assert native.error is not None and native.error.type in ("parse_error", "truncated")
    repair = by_tier["repair"]
    assert repair.meta["repairing"] == "native" and repair.repaired
    assert result.ok and result.tier == "repair"  # constrained: it parses by construction
    TICKET.parser.parse(result.value)


def test_a_grammar_field_that_does_not_parse_is_a_validation_error_the_reask_carries(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(reject=["grammar", "structured_outputs"])  # no combined grammar: checked after
    settings = remote_settings(max_tokens=24, instructor_max_retries=1)
    native = Extractor(tiers=["native"], **settings.model_dump(
        include={"base_url", "timeout_s", "max_retries", "max_tokens"})).run(TEXT, Ticket)
    for attempt in native.attempts:
        if attempt.error is not None and attempt.error.type == "schema_violation":
            assert any(d["loc"] == ["ticket"] and "does not parse" in d["msg"] for d in attempt.error.details)
    bad = [a for a in native.attempts if a.error is not None]
    assert native.ok or bad[-1].error.type in ("schema_violation", "truncated")  # type: ignore[union-attr]
    result = Extractor(tiers=["instructor"], **settings.model_dump(
        include={"base_url", "timeout_s", "max_retries", "max_tokens", "instructor_max_retries"})).run(TEXT, Ticket)
    first = result.attempts[0]
    assert first.error is not None and "does not parse at line 1" in first.error.message, first
    assert len(result.attempts) == 2 and "does not parse at line 1" in result.attempts[1].meta["reask"]
