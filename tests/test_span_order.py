"""Span-copy filtered by patterns, ordered span-copy, and every key written zero-shot (issue 13).

The grammar tests parse candidate answers with lark itself (the same Lark text llguidance
compiles), so what the local tier admits is checked answer by answer; the model tests run
the embedded model.
"""

from __future__ import annotations

import json
from typing import Any

import lark
import pytest
from pydantic import BaseModel, ConfigDict, Field

from extract import Extractor
from extract.providers.local_model import Constraint
from extract.spec import compile_spec, local_constraint
from extract.spec.span_copy import apply_span_copy
from extract.spec.span_order import order_violations, ordered_fields, ordered_lark
from schemas.address import Address

TEXT = "Attn Bob 1200 Business 190 ste 13, COVINGTON, LA 70433"
GOLD = {"AddressNumber": "1200", "StreetNamePreType": "Business", "StreetName": "190", "OccupancyType": "ste",
        "OccupancyIdentifier": "13", "PlaceName": "COVINGTON", "StateName": "LA", "ZipCode": "70433"}


def _admits(grammar: str, value: dict[str, Any]) -> bool:
    parser = lark.Lark(grammar, parser="earley", lexer="dynamic")
    try:
        parser.parse(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    except lark.exceptions.LarkError:
        return False
    return True


def test_a_pattern_filters_the_copied_spans() -> None:
    schema = {"type": "object", "copy_from_input": True, "properties": {
        "zip": {"anyOf": [{"type": "string", "pattern": r"^\d{5}$", "maxLength": 10}, {"type": "null"}]},
        "word": {"type": "string", "maxLength": 5},
        "box": {"anyOf": [{"type": "string", "pattern": "^[Bb]ox$"}, {"type": "null"}]},
    }}
    out = apply_span_copy(schema, "213 grand avenue al 35967, x")
    defs = out["$defs"]
    zip_ref = out["properties"]["zip"]["anyOf"][0]["$ref"].rsplit("/", 1)[-1]
    assert defs[zip_ref]["enum"] == ["35967"]  # the only five-digit span (its comma dropped)
    word_ref = out["properties"]["word"]["$ref"].rsplit("/", 1)[-1]
    assert "grand" in defs[word_ref]["enum"] and "avenue" not in defs[word_ref]["enum"]  # maxLength 5
    # No span matches the box pattern: the field can only be null on this input.
    assert out["properties"]["box"] == {"anyOf": [{"type": "null"}]}


def test_the_address_schema_offers_each_field_only_its_kind_of_span() -> None:
    constraint = json.loads(local_constraint(compile_spec(Address), TEXT))
    defs = constraint["$defs"]

    def spans(field: str) -> list[str]:
        node = constraint["properties"][field]
        refs = [b["$ref"] for b in node.get("anyOf", [node]) if "$ref" in b]
        return defs[refs[0].rsplit("/", 1)[-1]]["enum"] if refs else []

    assert spans("ZipCode") == ["70433"]
    assert spans("StateName") == ["LA"]
    assert spans("OccupancyType") == ["ste"]
    assert set(spans("AddressNumber")) == {"1200", "13", "190", "70433"}
    assert spans("USPSBoxType") == []


def test_ordered_grammar_admits_answers_in_input_order_only() -> None:
    spec = compile_spec(Address)
    constraint = local_constraint(spec, TEXT)
    fields = ordered_fields(spec.schema or {})
    assert fields[0] == "AddressNumber" and fields[-1] == "ZipCode"
    grammar = ordered_lark(constraint, TEXT, fields)
    assert grammar is not None and Constraint("lark", grammar).problems() == []
    assert _admits(grammar, GOLD)
    assert _admits(grammar, {}) and _admits(grammar, {"ZipCode": "70433"})
    assert not _admits(grammar, {"ZipCode": "70433", "StateName": "LA"})  # keys out of schema order
    assert not _admits(grammar, {"PlaceName": "LA", "StateName": "LA"})  # one span, two fields
    assert not _admits(grammar, {"AddressNumber": "190", "StreetName": "Business"})  # spans out of order
    assert not _admits(grammar, {"PlaceName": "Boston"})  # not in the input
    # A gap bound: nothing may be skipped between one value and the next (the first may start anywhere).
    tight = ordered_lark(constraint, TEXT, fields, gap=0)
    assert tight is not None and _admits(tight, GOLD)
    assert not _admits(tight, {"AddressNumber": "1200", "PlaceName": "COVINGTON"})
    # Every key written: absent fields are null, and leaving one out is refused.
    every = ordered_lark(constraint, TEXT, fields, all_keys=True)
    assert every is not None
    assert _admits(every, {name: GOLD.get(name) for name in Address.model_fields})
    assert not _admits(every, GOLD)


class Segments(BaseModel):
    """Two copied fields in input order around a field that is not copied."""

    model_config = ConfigDict(json_schema_extra={"copy_from_input": True, "copy_in_order": True})

    first: str | None = Field(None, max_length=20)
    count: int = Field(0, ge=0)
    second: str | None = Field(None, max_length=20)


def test_ordered_grammar_keeps_fields_that_are_not_copied_under_their_schema() -> None:
    spec = compile_spec(Segments)
    text = "alpha beta gamma"
    grammar = ordered_lark(local_constraint(spec, text), text, ordered_fields(spec.schema or {}))
    assert grammar is not None and "%json" in grammar and Constraint("lark", grammar).problems() == []


def test_remote_order_check_names_the_field_out_of_order() -> None:
    spec = compile_spec(Address)  # copied, but not marked copy_in_order: the setting turns it on
    assert order_violations(GOLD, spec, TEXT, setting=True) is None
    error = order_violations({"AddressNumber": "190", "StreetName": "Business"}, spec, TEXT, setting=True)
    assert error is not None and error.type == "out_of_order"
    assert error.details[0]["loc"] == ["StreetName"] and "AddressNumber" in error.message
    # The same span twice overlaps itself: refused too.
    assert order_violations({"PlaceName": "LA", "StateName": "LA"}, spec, TEXT, setting=True) is not None
    assert order_violations({"PlaceName": "LA", "StateName": "LA"}, spec, TEXT) is None
    marked = compile_spec(Segments)  # marked in the schema: on without the setting
    assert order_violations({"first": "gamma", "second": "alpha"}, marked, "alpha beta gamma") is not None


@pytest.mark.parametrize("text", ["1200 Business 190 ste 13, COVINGTON, LA 70433", "PO Box 40, Bend OR 97709"])
def test_zero_shot_the_local_tier_writes_every_key_in_order_from_the_input(local: Extractor, text: str) -> None:
    result = local.run(text, Address)
    attempt = result.attempts[-1]
    assert result.ok, attempt.error
    assert attempt.meta.get("all_keys") is True and attempt.meta.get("null_penalty") == 4.0
    raw = json.loads(attempt.raw or "")
    assert list(raw) == list(Address.model_fields)  # every key, in schema order
    values = [v for v in raw.values() if v is not None]
    assert values and all(v in text for v in values)


def test_with_examples_absent_fields_are_left_out_as_the_examples_show() -> None:
    pool = [("PO Box 12, Dayton OH 45401", {"USPSBoxType": "PO Box", "USPSBoxID": "12", "PlaceName": "Dayton",
                                            "StateName": "OH", "ZipCode": "45401"})]
    result = Extractor(tiers=["local"], examples=pool, examples_k=1).run("PO Box 40, Bend OR 97709", Address)
    attempt = result.attempts[-1]
    assert result.ok, attempt.error
    assert "all_keys" not in attempt.meta
    raw = json.loads(attempt.raw or "")
    assert "AddressNumber" not in raw and raw.get("ZipCode") == "97709"
    # Forced on, every key appears even with examples.
    forced = Extractor(tiers=["local"], examples=pool, examples_k=1, all_keys=True, null_penalty=0.0)
    attempt = forced.run("PO Box 40, Bend OR 97709", Address).attempts[-1]
    assert list(json.loads(attempt.raw or "")) == list(Address.model_fields)
    assert attempt.meta["null_penalty"] == 0.0
