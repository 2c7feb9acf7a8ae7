"""The batched llama.cpp engine: many documents in one context, each as if decoded alone.

Real model, real prompts: the engine must give what the one-at-a-time path gives (values,
forced tokens, per-token probabilities), keep a bad document's failure to itself, and leave
no slot taken after an error or a cancelled caller.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from extract import Extractor, extract_many
from extract.errors import ConfigError
from extract.providers.batch_engine import BatchEngine, batch_engine
from extract.providers.local_model import Constraint, LlamaCppModel, load_local_model
from extract.settings import Settings
from extract.spec import compile_spec
from extract.spec.prompt import shared_prefix
from extract.tiers.local import LocalTier
from schemas.address import Address
from tests.conftest import DATA, read_jsonl

SLOTS = 4


def _texts(n: int) -> list[str]:
    return [row["text"] for row in read_jsonl(DATA / "usaddress" / "dev.jsonl", n)]


@pytest.fixture(scope="module")
def engine() -> BatchEngine:
    settings = Settings(local_slots=SLOTS)
    model = load_local_model(settings)
    assert isinstance(model, LlamaCppModel)
    found = batch_engine(model, settings)
    assert found is not None
    return found


def _requests(texts: list[str]) -> list[tuple[Any, ...]]:
    """What the local tier would pass to ``generate`` for each text (Address schema)."""

    settings = Settings(local_slots=SLOTS)
    tier = LocalTier(settings)
    model = load_local_model(settings)
    spec = compile_spec(Address)
    out = []
    for text in texts:
        prompt, cut_text, _cut = tier._fit(model, spec, text)
        all_keys = tier._all_keys(spec, ())
        grammar = tier.grammar_for(spec, cut_text, all_keys)
        budget = tier.output_tokens(spec, cut_text, model.n_ctx - model.count_tokens(prompt))
        prefix = shared_prefix(model.render, spec, ())
        out.append((prompt, grammar, budget, settings.null_penalty if all_keys else 0.0, prefix))
    return out


def test_a_batch_gives_what_one_at_a_time_gives(engine: BatchEngine) -> None:
    requests = _requests(_texts(SLOTS))
    alone = [engine.model.generate(*r) for r in requests]

    async def together() -> list[Any]:
        return await asyncio.gather(*(engine.generate(*r) for r in requests))

    batched = asyncio.run(together())
    for one, many in zip(alone, batched, strict=True):
        assert many.text == one.text
        assert many.finish_reason == one.finish_reason
        assert many.forced_tokens == one.forced_tokens
        assert many.token_ends == one.token_ends
        # The same hooks on the same logits: the same per-token probabilities.
        assert many.token_logprobs == one.token_logprobs
    assert {g.prefix_source for g in batched} <= {"memory", "disk", "evaluated"}
    assert engine.busy_slots() == 0


def test_extract_many_uses_the_engine_and_keeps_values() -> None:
    texts = _texts(3)
    one = extract_many(texts, Address, concurrency=1, tiers=["local"], local_slots=1)
    many = extract_many(texts, Address, concurrency=3, tiers=["local"], local_slots=SLOTS)
    assert all(r.ok for r in many)
    assert [r.value for r in many] == [r.value for r in one]
    assert all(r.attempts[-1].meta["prefix_kv"] in ("memory", "disk", "evaluated") for r in many)


def test_a_document_longer_than_the_context_fails_alone(engine: BatchEngine) -> None:
    requests = _requests(_texts(2))
    prompt, grammar, budget, penalty, prefix = requests[0]
    long_prompt = prompt + " word" * (engine.model.n_ctx + 10)

    async def run() -> list[Any]:
        return await asyncio.gather(
            engine.generate(*requests[0]),
            engine.generate(long_prompt, grammar, budget, penalty, prefix),
            engine.generate(*requests[1]),
            return_exceptions=True,
        )

    first, long_one, second = asyncio.run(run())
    assert isinstance(long_one, ConfigError)
    assert "more than the context" in str(long_one)
    assert first.text == engine.model.generate(*requests[0]).text
    assert second.text == engine.model.generate(*requests[1]).text
    assert engine.busy_slots() == 0


def test_a_long_document_in_extract_many_is_its_own_failed_result() -> None:
    texts = _texts(2)
    texts.insert(1, "12 Main St " * 3000)
    results = extract_many(texts, Address, concurrency=3, tiers=["local"], local_slots=SLOTS, long_text="error")
    assert [r.ok for r in results] == [True, False, True]


def test_slots_are_freed_after_an_error(engine: BatchEngine) -> None:
    requests = _requests(_texts(1))
    prompt, _grammar, budget, penalty, prefix = requests[0]
    bad = Constraint("lark", "start: undefined_rule")

    async def run() -> list[Any]:
        return await asyncio.gather(
            engine.generate(prompt, bad, budget, penalty, prefix),
            engine.generate(*requests[0]),
            return_exceptions=True,
        )

    failed, ok = asyncio.run(run())
    assert isinstance(failed, Exception)
    assert not isinstance(ok, BaseException) and ok.text
    assert engine.busy_slots() == 0


def test_slots_are_freed_after_cancellation(engine: BatchEngine) -> None:
    requests = _requests(_texts(3))

    async def run() -> tuple[Any, list[Any]]:
        tasks = [asyncio.ensure_future(engine.generate(*r)) for r in requests]
        await asyncio.sleep(0.3)  # every request is in a slot or about to be
        tasks[1].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        return tasks[1], done

    cancelled, done = asyncio.run(run())
    assert cancelled.cancelled()
    assert not isinstance(done[0], BaseException) and not isinstance(done[2], BaseException)
    assert engine.busy_slots() == 0
    # The engine still serves: a cancelled caller leaves nothing behind in the batch.
    assert asyncio.run(engine.generate(*requests[1])).text == engine.model.generate(*requests[1]).text


def test_one_slot_keeps_the_single_sequence_path() -> None:
    settings = Settings(local_slots=1)
    assert batch_engine(load_local_model(settings), settings) is None
    result = Extractor(tiers=["local"], local_slots=1).run(_texts(1)[0], Address)
    assert result.ok
