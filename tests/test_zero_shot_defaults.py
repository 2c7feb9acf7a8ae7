"""Defaults for a schema a user just wrote: span-copy by default, shapes from names, computed
fields left free; and the benchmark's schema variants are what they claim to be."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from extract import Extractor
from extract.settings import Settings
from extract.spec import compile_spec
from extract.spec.shapes import shape_of, words_of
from extract.spec.span_copy import apply_span_copy, auto_copy, computed, copy_paths
from extract.tiers.local import LocalTier

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def nullable(description: str | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    if description:
        node["description"] = description
    return node


USER = {"type": "object", "properties": {
    "house_number": nullable("The number of the building."),
    "city": nullable(),
    "zip": nullable(),
    "word_count": nullable("The number of words in the text."),
    "mood": nullable("Summarize the tone in one word."),
    "kind": {"type": "string", "enum": ["home", "work"]},
    "floor": {"type": "integer"},
}}


def test_unmarked_schemas_copy_every_plain_string_except_computed_ones() -> None:
    assert auto_copy(USER, None) == "auto"
    assert copy_paths(USER, "auto") == ["house_number", "city", "zip"]
    assert copy_paths(USER, None) == []  # remote tiers: only marks or the setting
    assert auto_copy(USER, False) is False and copy_paths(USER, False) == []
    # The setting True copies every plain string, computed or not: the user asked for it.
    assert "word_count" in copy_paths(USER, True)


def test_a_field_mark_turns_copy_off_or_on_and_marks_mean_follow_the_marks() -> None:
    schema = json.loads(json.dumps(USER))
    schema["properties"]["city"]["copy_from_input"] = False
    assert auto_copy(schema, None) is None  # the schema has marks: follow them
    assert copy_paths(schema, None) == []
    assert "city" not in copy_paths(schema, "auto")
    schema["properties"]["word_count"]["copy_from_input"] = True
    assert copy_paths(schema, None) == ["word_count"]


def test_computed_descriptions() -> None:
    for text in ("The number of words in the text.", "How many people are invited?", "Summarize the letter.",
                 "Whether the sender is angry", "The total amount, computed from the lines."):
        assert computed(text), text
    for text in ("The number of the building on its street.", "The city or town.", None, "The postal ZIP code."):
        assert not computed(text), text


def test_shapes_from_names_and_descriptions() -> None:
    assert words_of("houseNumber") == ["house", "number"]
    assert shape_of("zip", {}) == "code"
    assert shape_of("zip_code", {}) == "code"
    assert shape_of("house_number", {}) == "number"
    assert shape_of("street_name", {}) == "words"
    assert shape_of("unit", {}) is None
    assert shape_of("e-mail", {}) == shape_of("contact_email", {}) == "email"
    assert shape_of("homepage", {}) == "url"
    assert shape_of("place", {"description": "The city where the publisher is."}) == "words"
    assert shape_of("time", {"description": "When: a date, a day or a period."}) is None


def spans_of(schema: dict[str, Any], field: str) -> list[str]:
    node = schema["properties"][field]
    refs = [b["$ref"] for b in node.get("anyOf", [node]) if "$ref" in b]
    assert refs, f"{field} is not span-copied"
    return list(schema["$defs"][refs[0].rsplit("/", 1)[-1]]["enum"])


def test_shapes_narrow_the_candidates_and_fall_back_when_nothing_fits() -> None:
    text = "2260 Peachtree Rd Atlanta GA 30309"
    shaped = apply_span_copy(USER, text, "auto", shapes=True)
    assert all(any(c.isdigit() for c in s) and " " not in s for s in spans_of(shaped, "zip"))
    assert all(any(c.isalpha() for c in s) for s in spans_of(shaped, "city"))
    assert "word_count" not in str(shaped["properties"]["word_count"].get("anyOf", ""))  # left free
    assert "$ref" not in json.dumps(shaped["properties"]["word_count"])
    # No span holds a digit: the ZIP code keeps every span rather than none.
    plain = apply_span_copy(USER, "Atlanta Georgia", "auto", shapes=True)
    assert spans_of(plain, "zip") == sorted(["Atlanta", "Georgia", "Atlanta Georgia"])


def test_the_local_tier_decodes_user_schemas_with_span_copy_and_leaves_computed_fields_free() -> None:
    tier = LocalTier(Settings())
    spec = compile_spec(USER)
    text = "Ship to 2260 Peachtree Rd, Atlanta GA 30309. Thanks!"
    grammar = json.loads(tier.grammar_for(spec, text, all_keys=True).text)
    assert "$ref" in json.dumps(grammar["properties"]["city"])
    assert "$ref" not in json.dumps(grammar["properties"]["word_count"])
    off = json.loads(LocalTier(Settings(copy_from_input=False)).grammar_for(spec, text).text)
    assert "$defs" not in off or not any(k.startswith("extract_input_span") for k in off["$defs"])
    # Through the product, on the real model: every copied value is a span of the text.
    result = Extractor(tiers=["local"], cache=False).run(text, USER)
    assert result.ok
    for key in ("house_number", "city", "zip"):
        value = result.value.get(key)
        assert value is None or value in text
    assert "span_reuse" not in result.attempts[-1].meta  # values may repeat unless asked otherwise


sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.skipif(not DATA.exists(), reason="the shared data folder is not beside the project")
def test_benchmark_variants_carry_no_patterns_or_flags_and_map_to_real_labels() -> None:
    from schema_variants import VARIANTS, gold_for

    labels: dict[str, set[str]] = {}
    for name in ("usaddress", "snips", "citations"):
        seen: set[str] = set()
        for line in (DATA / name / "dev.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            seen.update((row.get("gold") or row.get("slots") or {}).keys())
        labels[name] = seen
    roles = {}
    for v in VARIANTS:
        text = json.dumps(v.schema)
        for banned in ("pattern", "maxLength", "copy_from_input", "copy_in_order", "examples"):
            assert banned not in text, (v.name, banned)
        for spec in v.gold.values():
            options = spec if isinstance(spec, list) else [spec]
            for option in options:
                for label in (option,) if isinstance(option, str) else option:
                    assert label in labels[v.dataset], (v.name, label)
        roles.setdefault((v.dataset, v.intent), set()).add(v.role)
        assert gold_for(v, {}) == {}
    assert all(r == {"dev", "heldout"} for r in roles.values())
