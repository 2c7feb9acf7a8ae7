"""The repair tier on the real local model: a broken earlier output becomes a valid object."""

from __future__ import annotations

from pydantic import BaseModel

from extract import Attempt, AttemptError, Extractor, Settings, compile_spec
from extract.spec.prompt import REPAIR_PROMPT_VERSION
from extract.tiers import Task, make_tier
from extract.tiers.repair import best_attempt
from extract.validate import check


class Pet(BaseModel):
    name: str
    age: int


def _broken(raw: str, tier: str = "native") -> Attempt:
    checked = check(raw, compile_spec(Pet))
    assert checked.error is not None
    return Attempt(tier=tier, raw=raw, error=checked.error)


async def test_repair_fixes_a_broken_output_with_the_local_model() -> None:
    settings = Settings.resolve()
    tier = make_tier("repair", settings)
    broken = _broken('{"name": "Rex", "age": "three years"}')
    task = Task(text="Rex is a dog, 3 years old.", spec=compile_spec(Pet), settings=settings,
                history=[Attempt(tier="local", skipped=True), broken])
    attempts = await tier.attempts(task)
    assert 1 <= len(attempts) <= settings.repair_max_calls
    last = attempts[-1]
    assert last.ok, last.error
    assert isinstance(last.value, Pet)
    assert last.tier == "repair" and last.repaired and last.repairs[0] == "llm_repair"
    assert last.prompt_version == REPAIR_PROMPT_VERSION and last.meta["repairing"] == "native"
    assert last.usage.total_tokens > 0 and last.model is not None


async def test_nothing_to_repair_is_a_recorded_skip_not_an_exception() -> None:
    settings = Settings.resolve()
    task = Task(text="x", spec=compile_spec(Pet), settings=settings, history=[])
    (attempt,) = await make_tier("repair", settings).attempts(task)
    assert attempt.skipped and attempt.error is not None and attempt.error.type == "nothing_to_repair"


def test_best_attempt_prefers_output_with_fewest_errors() -> None:
    two = Attempt(tier="a", raw="{}", error=AttemptError(type="schema_violation", message="",
                                                         details=[{"loc": ["x"]}, {"loc": ["y"]}]))
    one = Attempt(tier="b", raw='{"x":1}', error=AttemptError(type="schema_violation", message="",
                                                              details=[{"loc": ["y"]}]))
    assert best_attempt([two, one, Attempt(tier="c", skipped=True)]) is one
    assert best_attempt([Attempt(tier="c", raw=None)]) is None


def test_default_chain_ends_with_repair() -> None:
    assert Settings.resolve().default_tiers() == ["local", "repair"]
    remote = Settings.resolve(base_url="http://127.0.0.1:1/v1").default_tiers()
    assert remote == ["native", "instructor", "local", "repair"]
    assert Extractor().tier_names[-1] == "repair"
