"""guardrails-ai validators on fields: they fire, and fix / filter / exception / reask map onto
our policies; a reask with no further tier is a recorded failure, never a pass. Offline."""

from __future__ import annotations

from typing import Annotated

from guardrails_ai.regex_match import RegexMatch
from guardrails_ai.valid_range import ValidRange
from pydantic import BaseModel, field_validator

from extract import Extractor, compile_spec, parse_output


class Fix(BaseModel):
    qty: Annotated[int, ValidRange(min=1, max=10, on_fail="fix")]


class Filter(BaseModel):
    name: str
    code: Annotated[str | None, RegexMatch(regex=r"[A-Z]{3}", on_fail="filter")] = None


class FilterRequired(BaseModel):
    code: Annotated[str, RegexMatch(regex=r"[A-Z]{3}", on_fail="filter")]


class Exception_(BaseModel):
    qty: Annotated[int, ValidRange(min=1, max=10, on_fail="exception")]


class Reask(BaseModel):
    qty: Annotated[int, ValidRange(min=1, max=10, on_fail="reask")]


class PydanticToo(BaseModel):
    word: str

    @field_validator("word")
    @classmethod
    def _lower(cls, v: str) -> str:
        if v != v.lower():
            raise ValueError("must be lowercase")
        return v


def test_a_passing_value_is_untouched() -> None:
    checked = parse_output('{"qty": 5}', compile_spec(Fix))
    assert checked.ok and checked.value == Fix(qty=5) and checked.repairs == []


def test_fix_applies_the_fix_value_as_a_recorded_repair() -> None:
    checked = parse_output('{"qty": 12}', compile_spec(Fix))
    assert checked.ok and checked.value == Fix(qty=10)
    assert checked.repaired and checked.repairs == ["guardrails_fix:qty"]


def test_filter_drops_an_optional_field_and_fails_a_required_one() -> None:
    checked = parse_output('{"name": "x", "code": "abc"}', compile_spec(Filter))
    assert checked.ok and checked.value == Filter(name="x", code=None)
    assert checked.repairs == ["guardrails_filter:code"]
    required = parse_output('{"code": "abc"}', compile_spec(FilterRequired))
    assert not required.ok and required.error is not None
    assert required.error.type == "validator_failed"


def test_exception_is_a_recorded_failure() -> None:
    checked = parse_output('{"qty": 0}', compile_spec(Exception_))
    assert not checked.ok and checked.error is not None
    assert checked.error.type == "validator_failed" and "less than 1" in checked.error.message


def test_reask_never_passes_the_fix_value() -> None:
    """guardrails itself, with no LLM, would silently apply the fix on reask; we must not."""
    checked = parse_output('{"qty": 99}', compile_spec(Reask))
    assert not checked.ok and checked.value is None and checked.error is not None
    assert checked.error.type == "validator_reask"
    assert checked.error.details[0]["validator"] == "guardrails/valid_range"


def test_pydantic_field_validators_run_too() -> None:
    assert parse_output('{"word": "ok"}', compile_spec(PydanticToo)).ok
    bad = parse_output('{"word": "OK"}', compile_spec(PydanticToo))
    assert bad.error is not None and "lowercase" in bad.error.message


class Never(BaseModel):
    name: Annotated[str, RegexMatch(regex=r"ZZZ-[0-9]{9}-never", on_fail="reask")]


def test_reask_with_no_further_tier_ends_as_a_recorded_failure(local: Extractor) -> None:
    result = local.run("Rex is a dog.", Never)
    assert not result.ok and result.value is None
    last = result.attempts[-1]
    assert last.tier == "local" and last.error is not None
    assert last.error.type == "validator_reask" and last.raw


class Line(BaseModel):
    qty: Annotated[int, ValidRange(min=1, max=10, on_fail="fix")]


class Order(BaseModel):
    lines: list[Line]
    first: Line


def test_validators_on_nested_models_run_too() -> None:
    checked = parse_output('{"lines": [{"qty": 5}, {"qty": 50}], "first": {"qty": 0}}', compile_spec(Order))
    assert checked.ok and checked.value == Order(lines=[Line(qty=5), Line(qty=10)], first=Line(qty=1))
    assert checked.repairs == ["guardrails_fix:lines.1.qty", "guardrails_fix:first.qty"]
