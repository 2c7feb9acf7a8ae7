"""The budget stops issuing calls before it is exceeded, counted at the real proxy in front of the
real server, with concurrent extractions sharing one Extractor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from pydantic import BaseModel

from extract.errors import ConfigError
from extract.pipeline import Extractor
from extract.runtime.budget import worst_case
from extract.settings import Settings
from extract.spec import compile_spec
from extract.testing.fault_proxy import FaultProxy
from extract.tiers import make_tier
from extract.types import Result

# Two shared cores can be this busy: a retry after a client timeout spends tokens twice.
SLOW_OK = 120.0


class Person(BaseModel):
    name: str
    age: int


TEXTS = [f"Note {i}: Ann Lee is {20 + i} years old and lives in Leeds." for i in range(8)]


def _warm(proxy: FaultProxy, settings: Settings) -> None:
    """Learn the endpoint's model name and structured mode, then zero the proxy's counts: from
    here on one attempt is one model call (the ladder's first refusals are not the budget's)."""
    assert Extractor(tiers=["native"], **settings.model_dump(exclude={"tiers"})).run(TEXTS[0], Person).attempts
    proxy.reset()


def _gather(extractor: Extractor) -> list[Result]:
    async def batch() -> list[Result]:
        return list(await asyncio.gather(*(extractor.arun(t, Person) for t in TEXTS)))

    return asyncio.run(batch())


def test_token_budget_stops_calls_under_concurrency(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    spec = compile_spec(Person)
    worst = max(worst_case(make_tier("native", s := remote_settings(timeout_s=SLOW_OK)), s, spec, t)[0] for t in TEXTS)
    cap = worst * 5 // 2  # room for two calls' worst case held at once, not three
    _warm(proxy, remote_settings(timeout_s=SLOW_OK))
    settings = remote_settings(timeout_s=SLOW_OK, budget_tokens=cap)
    extractor = Extractor(tiers=["native"], **settings.model_dump(exclude={"tiers"}))
    results = _gather(extractor)

    assert len(results) == len(TEXTS)
    ran = [a for r in results for a in r.attempts if not a.skipped]
    skipped = [a for r in results for a in r.attempts if a.skipped]
    stats = proxy.stats()
    # Every model call the server saw is an attempt; the skipped ones made none.
    assert stats["chat"] == len(ran) == 2
    assert len(skipped) == len(TEXTS) - 2
    assert all(a.error is not None and a.error.type == "budget" for a in skipped)
    assert all(not r.ok for r in results if all(a.skipped for a in r.attempts))
    # What the server reported spending is within the cap, and is what the budget charged.
    served = stats["usage"]["total_tokens"]
    assert 0 < served <= cap
    budget = extractor.runtime.budget
    assert budget.spent_tokens == served and budget.reserved_tokens == 0

    # The budget is the Extractor's: later texts see what earlier ones spent and keep going
    # only while the next worst case fits.
    before = budget.spent_tokens
    more = extractor.run(TEXTS[0], Person)
    fits = before + worst_case(extractor.tiers[0], extractor.settings, spec, TEXTS[0])[0] <= cap
    assert more.ok == fits
    assert (proxy.stats()["chat"] == 3) == fits
    assert budget.spent_tokens <= cap


def test_dollar_budget_and_unpriced_tier(proxy: FaultProxy, remote_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match=r"budget_usd is set but tier 'native' has no price"):
        Extractor(tiers=["native"], **remote_settings(timeout_s=SLOW_OK, budget_usd=1.0).model_dump(exclude={"tiers"}))

    price = {"input_per_mtok": 2.0, "output_per_mtok": 8.0}
    base = remote_settings(timeout_s=SLOW_OK, prices={"default": price})
    _, worst_usd = worst_case(make_tier("native", base), base, compile_spec(Person), TEXTS[0])
    assert worst_usd > 0
    # One worst case fits; after any real spend, a second no longer does.
    settings = remote_settings(timeout_s=SLOW_OK, prices={"default": price}, budget_usd=worst_usd * 1.0001)
    _warm(proxy, settings)
    extractor = Extractor(tiers=["native"], **settings.model_dump(exclude={"tiers"}))
    first = extractor.run(TEXTS[0], Person)
    assert first.attempts[0].cost_usd is not None and first.attempts[0].cost_usd > 0
    second = extractor.run(TEXTS[1], Person)
    assert [a.error.type for a in second.attempts if a.error] == ["budget"]
    assert proxy.stats()["chat"] == 1
    assert extractor.runtime.budget.spent_usd == pytest.approx(first.cost_usd)
