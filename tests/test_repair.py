"""parse_output on near-misses: repaired to the same value, or a recorded failure - never a
silently different value and never an invalid one. Pure tests (no model), property-based."""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from extract import Checked, compile_spec, parse_output
from extract.validate.check import check
from tests.conftest import DATA, read_jsonl

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "ok": {"type": "boolean"},
        "note": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "addr": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "ok"],
    "additionalProperties": False,
}
SPEC = compile_spec(SCHEMA)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
FAULTS = ("fence", "prose", "trailing_commas", "single_quotes", "comments", "python_literals")


def _finite(obj: Any) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    return True


def _str(s: str, quote: str) -> str:
    body = json.dumps(s, ensure_ascii=False)[1:-1]
    if quote == "'":
        body = body.replace('\\"', '"').replace("'", "\\'")
    return quote + body + quote


def dump(obj: Any, faults: frozenset[str]) -> str:
    """Serialize ``obj`` as a sloppy model would: each fault is one habit of real outputs."""
    quote = "'" if "single_quotes" in faults else '"'
    trail = "," if "trailing_commas" in faults else ""
    if obj is None:
        return "None" if "python_literals" in faults else "null"
    if isinstance(obj, bool):
        word = str(obj)
        return word if "python_literals" in faults else word.lower()
    if isinstance(obj, (int, float)):
        return json.dumps(obj)
    if isinstance(obj, str):
        return _str(obj, quote)
    if isinstance(obj, list):
        items = [dump(v, faults) for v in obj]
        return "[" + ", ".join(items) + (trail if items else "") + "]"
    members = [f"{_str(k, quote)}: {dump(v, faults)}" for k, v in obj.items()]
    sep = ", // a comment\n" if "comments" in faults else ", "
    head = "{ /* generated */ " if "comments" in faults else "{"
    return head + sep.join(members) + (trail if members else "") + "}"


def wrap(text: str, faults: frozenset[str]) -> str:
    if "fence" in faults:
        text = f"```json\n{text}\n```"
    if "prose" in faults:
        text = f"Sure! Here is the extracted data:\n{text}\nLet me know if you need anything else."
    return text


def same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def part_of(got: Any, original: Any) -> bool:
    """``got`` keeps only whole values of ``original``: dropped members, never altered ones."""
    if isinstance(original, dict):
        return isinstance(got, dict) and all(k in original and part_of(v, original[k]) for k, v in got.items())
    if isinstance(original, list):
        return (isinstance(got, list) and len(got) <= len(original)
                and all(part_of(g, o) for g, o in zip(got, original, strict=False)))
    return same(got, original)


def assert_honest(checked: Checked, original: Any) -> None:
    if checked.error is not None:
        assert checked.value is None
        assert checked.error.type
        return
    VALIDATOR.validate(checked.value)  # never an invalid object
    if same(checked.value, original):
        return
    # A different value is only acceptable as a recorded truncation, and then it holds
    # whole values of the original only (no half-written string, no cut number).
    assert "close_truncated" in checked.repairs, (checked.value, original, checked.repairs)
    assert checked.repaired
    assert part_of(checked.value, original), (checked.value, original)


# hypothesis-jsonschema 0.23 breaks on this Hypothesis (it reaches into private internals:
# "'many' object has no attribute 'more'"), so the instances are drawn by hand from SCHEMA.
_text = st.text(max_size=24)
_numbers = st.one_of(st.integers(min_value=-(10**20), max_value=10**20),
                     st.floats(allow_nan=False, allow_infinity=False))
instances = st.fixed_dictionaries(
    {"name": _text, "age": st.integers(min_value=-(10**20), max_value=10**20), "ok": st.booleans()},
    optional={
        "score": _numbers,
        "note": st.none() | _text,
        "tags": st.lists(_text, max_size=4),
        "addr": st.fixed_dictionaries({"city": _text}, optional={"zip": _text}),
    },
).filter(_finite)
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(instances)
def test_strict_json_that_validates_comes_back_unchanged_and_unrepaired(original: dict[str, Any]) -> None:
    for raw in (json.dumps(original), json.dumps(original, indent=2, ensure_ascii=False)):
        checked = parse_output(raw, SPEC)
        assert checked.ok and not checked.repaired and checked.repairs == []
        assert same(checked.value, original)


@PROPS
@given(instances, st.frozensets(st.sampled_from(FAULTS), min_size=1))
def test_injected_faults_repair_to_the_original_or_fail_on_record(original: dict[str, Any],
                                                                  faults: frozenset[str]) -> None:
    raw = wrap(dump(original, faults), faults)
    checked = parse_output(raw, SPEC)
    assert_honest(checked, original)
    if checked.ok:
        assert checked.repaired and checked.repairs, raw
        assert "close_truncated" not in checked.repairs


@PROPS
@given(instances, st.frozensets(st.sampled_from(FAULTS), max_size=3), st.data())
def test_truncation_never_keeps_a_cut_value(original: dict[str, Any], faults: frozenset[str],
                                            data: st.DataObject) -> None:
    full = dump(original, faults)
    cut = data.draw(st.integers(min_value=1, max_value=max(1, len(full) - 1)))
    # A cut text ends where the model stopped: prose may come before it, never after.
    raw = ("Sure! Here is the data: " if "prose" in faults else "") + full[:cut]
    checked = parse_output(raw, SPEC, truncated=data.draw(st.booleans()))
    assert_honest(checked, original)


def test_fault_rates_are_mostly_repairs_not_failures() -> None:
    """The honesty above must not come from refusing everything: these all repair exactly."""
    original = {"name": "Ada 'the' \"first\"", "age": 36, "ok": True, "note": None,
                "tags": ["a, b", "c // d"], "addr": {"city": "London /* x */"}}
    for fault in FAULTS:
        faults = frozenset({fault})
        checked = parse_output(wrap(dump(original, faults), faults), SPEC)
        assert checked.ok, (fault, checked.error)
        assert same(checked.value, original) and checked.repaired, fault


@pytest.mark.parametrize(
    "raw, repairs",
    [
        ('{"name":"x","age":3,"ok":true}', []),
        ('```json\n{"name":"x","age":3,"ok":true}\n```', ["strip_code_fence"]),
        ('Here: {"name":"x","age":3,"ok":true} done', ["strip_surrounding_text"]),
        ('{"name":"x","age":3,"ok":true,}', ["json_repair"]),
        ('{"name":"x","age":3,"ok":true,"tags":["a","b"', ["close_truncated"]),
        ('{"name":"x","age":3,"ok":true,"note":"half wr', ["drop_truncated_tail", "close_truncated"]),
    ],
)
def test_each_repair_is_named_in_order(raw: str, repairs: list[str]) -> None:
    checked = parse_output(raw, SPEC)
    assert checked.ok, checked.error
    assert checked.repairs == repairs and checked.repaired == bool(repairs)


@pytest.mark.parametrize(
    "raw",
    [
        '{"name":"x","ok":true,"age":12',  # 12 of 123? a cut number is dropped, age is required
        '{"age":3,"ok":true,"name":"Main St',  # a half-written required string
        '{"name":"x","age":3,"ok":tr',  # a cut literal
    ],
)
def test_a_cut_required_value_is_a_recorded_truncation_failure(raw: str) -> None:
    checked = parse_output(raw, SPEC)
    assert not checked.ok and checked.error is not None
    assert checked.error.type == "truncated"
    assert "close_truncated" in checked.repairs


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str
    qty: int


def test_lax_coercion_is_a_recorded_repair_and_strict_json_is_not() -> None:
    spec = compile_spec(Item)
    assert parse_output('{"sku":"A1","qty":2}', spec).repairs == []
    coerced = parse_output('{"sku":"A1","qty":"2"}', spec)
    assert coerced.ok and coerced.value == Item(sku="A1", qty=2)
    assert coerced.repairs == ["coerce_types"]
    assert check is parse_output  # every tier's entry point is this one function


def test_empty_and_non_json_outputs_are_recorded_failures() -> None:
    assert parse_output("", SPEC).error is not None
    assert parse_output("I cannot help with that.", SPEC).error is not None
    cut = parse_output("Sure, here it is:", SPEC, truncated=True)
    assert cut.error is not None and cut.error.type == "truncated"


Y_CASES = [r for r in read_jsonl(DATA / "json-repair" / "jsontestsuite.jsonl")
           if r["expect"] == "y" and "text" in r]


@pytest.mark.parametrize("case", Y_CASES, ids=[r["name"] for r in Y_CASES])
def test_every_valid_jsontestsuite_document_parses_unchanged(case: dict[str, Any]) -> None:
    checked = parse_output(case["text"], compile_spec({}))
    assert checked.ok, checked.error
    assert not checked.repaired and checked.repairs == []
    assert same(checked.value, json.loads(case["text"]))
