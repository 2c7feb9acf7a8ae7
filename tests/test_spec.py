"""Spec compilation and the capability table, without a model (pure functions)."""

from __future__ import annotations

import datetime as dt
import enum
import json
from typing import Annotated, Any, Literal

import jsonschema
import pytest
from pydantic import BaseModel, Field

from extract import ConfigError, Regex, UnsupportedSchema, compile_spec
from extract.settings import Settings
from extract.spec import FEATURES, TIER_SUPPORT, detect_features, local_constraint, max_output_chars
from extract.spec.compile import length_bucket
from extract.tiers.local import LocalTier

# One schema per feature: the smallest that uses it.
FEATURE_SCHEMAS: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "null": {"type": "null"},
    "object": {"type": "object", "properties": {"a": {"type": "string"}}},
    "array": {"type": "array", "items": {"type": "integer"}},
    "array_bounds": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
    "optional": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    "enum": {"enum": ["a", "b"]},
    "const": {"const": "a"},
    "union": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
    "discriminated_union": {
        "oneOf": [
            {"type": "object", "properties": {"k": {"const": "a"}}, "required": ["k"]},
            {"type": "object", "properties": {"k": {"const": "b"}}, "required": ["k"]},
        ],
        "discriminator": {"propertyName": "k"},
    },
    "one_of": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    "string_pattern": {"type": "string", "pattern": "^[a-z]+$"},
    "string_length": {"type": "string", "minLength": 1, "maxLength": 4},
    "numeric_bounds": {"type": "integer", "minimum": 0, "maximum": 9},
    "multiple_of": {"type": "integer", "multipleOf": 3},
    "format_date": {"type": "string", "format": "date"},
    "format_date_time": {"type": "string", "format": "date-time"},
    "format_time": {"type": "string", "format": "time"},
    "format_other": {"type": "string", "format": "email"},
    "dict": {"type": "object", "additionalProperties": {"type": "integer"}},
    "required": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
    "default": {"type": "object", "properties": {"a": {"type": "string", "default": "x"}}},
    "ref": {"$defs": {"A": {"type": "string"}}, "$ref": "#/$defs/A"},
    "recursion": {
        "$defs": {"N": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/N"}}}}},
        "$ref": "#/$defs/N",
    },
    "tuple": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
    "unique_items": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
    "all_of": {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}}, {"required": ["a"]}]},
    "not": {"type": "object", "properties": {"a": {"not": {"type": "string"}}}},
    "conditional": {"type": "object", "properties": {"a": {"type": "string"}}, "if": {"required": ["a"]},
                    "then": {"required": ["a"]}},
    "pattern_properties": {"type": "object", "patternProperties": {"^a": {"type": "string"}}},
    "property_names": {"type": "object", "propertyNames": {"pattern": "^a"}},
    "dependent": {"type": "object", "properties": {"a": {"type": "string"}}, "dependentRequired": {"a": ["a"]}},
    "contains": {"type": "array", "items": {"type": "integer"}, "contains": {"const": 1}},
    "min_max_properties": {"type": "object", "additionalProperties": {"type": "string"}, "minProperties": 1},
    "unevaluated": {"type": "object", "properties": {"a": {"type": "string"}}, "unevaluatedProperties": False},
    "grammar_field": {"type": "object", "properties": {
        "a": {"type": "string", "x-grammar": {"lark": 'start: "x" "y"?\n', "start": "start"}}}},
}


def test_every_feature_has_a_sample_and_is_detected() -> None:
    assert set(FEATURE_SCHEMAS) == set(FEATURES) - {"regex", "grammar"}
    for feature, schema in FEATURE_SCHEMAS.items():
        assert feature in detect_features(schema), feature


@pytest.mark.parametrize("feature", sorted(FEATURE_SCHEMAS))
def test_local_tier_support_matches_the_table(feature: str) -> None:
    """The table is the truth about llguidance: supported compiles, unsupported is refused."""
    tier = LocalTier(Settings.resolve())
    spec = compile_spec(FEATURE_SCHEMAS[feature])
    if feature in TIER_SUPPORT["local"]:
        tier.check_support(spec)
    else:
        with pytest.raises(UnsupportedSchema) as info:
            tier.check_support(spec)
        assert info.value.feature == feature
        assert info.value.tier == "local"
        assert feature in str(info.value) and "local" in str(info.value)


def test_every_tier_names_only_known_features() -> None:
    for tier, features in TIER_SUPPORT.items():
        assert features <= set(FEATURES), tier


class Colour(enum.Enum):
    red = "red"
    blue = "blue"


class Inner(BaseModel):
    x: int


class Everything(BaseModel):
    s: str
    i: int = Field(ge=0, le=10)
    f: float
    b: bool
    inner: Inner
    items: list[int] = Field(min_length=1, max_length=3)
    maybe: str | None = None
    lit: Literal["a", "b"]
    colour: Colour
    code: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    day: dt.date
    when: dt.datetime
    scores: dict[str, int]


def test_pydantic_features_are_detected() -> None:
    spec = compile_spec(Everything)
    for feature in ("string", "integer", "number", "boolean", "object", "ref", "array_bounds",
                    "optional", "enum", "string_pattern", "numeric_bounds", "format_date",
                    "format_date_time", "dict", "required", "default"):
        assert feature in spec.features, feature


def test_compilation_is_cached_per_class_and_per_dict_keeping_its_key_order() -> None:
    assert compile_spec(Everything) is compile_spec(Everything)
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
    a = compile_spec(schema)
    assert compile_spec(dict(schema)) is a
    # Reordered: the model fills fields in the user's order, so that order is kept; the
    # digest (and so the result cache) does not depend on it.
    b = compile_spec({"properties": {"b": {"type": "integer"}, "a": {"type": "string"}}, "type": "object"})
    assert list((b.schema or {})["properties"]) == ["b", "a"] and list((a.schema or {})["properties"]) == ["a", "b"]
    assert a.digest == b.digest


def test_local_constraint_only_tightens_the_schema() -> None:
    """Closed objects, compact whitespace and bounds; every constrained instance stays valid."""
    spec = compile_spec(Everything)
    text = "some input of forty characters or so...."
    constraint = json.loads(local_constraint(spec, text))
    assert constraint["x-guidance"] == {"whitespace_flexible": False}
    assert constraint["additionalProperties"] is False
    assert constraint["properties"]["s"]["maxLength"] == length_bucket(len(text))
    assert list(constraint["properties"]) == list(Everything.model_fields)  # schema order kept
    assert constraint["properties"]["code"]["pattern"] == "^[A-Z]{3}$"  # kept, and bounded too
    assert "maxLength" in constraint["properties"]["code"]
    assert constraint["properties"]["scores"]["additionalProperties"] == {"type": "integer"}
    assert constraint["properties"]["scores"]["maxProperties"] >= 8
    # Free dict keys have no length bound llguidance enforces, so the budget is the context;
    # without them every part is bounded.
    assert max_output_chars(constraint) == 1 << 20
    del constraint["properties"]["scores"]
    assert max_output_chars(constraint) < 10_000


def test_length_bucket_is_a_power_of_two_at_least_the_input() -> None:
    for n in (0, 1, 31, 32, 33, 1000, 5000):
        b = length_bucket(n)
        assert b >= max(n, 32) and b & (b - 1) == 0


@pytest.mark.parametrize(
    "spec, message",
    [
        (42, "a spec must be a Pydantic model class"),
        ("not a schema", "a spec must be a Pydantic model class"),
        (Inner(x=1), "pass the class itself"),
        ({"type": "no-such-type"}, "not a valid JSON Schema"),
    ],
)
def test_bad_specs_raise_config_error(spec: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compile_spec(spec)


def test_invalid_regex_names_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"invalid regular expression '\(\[a-z\]': .*position"):
        Regex("([a-z]")


def test_regex_llguidance_cannot_honour_is_unsupported_on_local() -> None:
    tier = LocalTier(Settings.resolve())
    with pytest.raises(UnsupportedSchema) as info:
        tier.check_support(compile_spec(Regex(r"(\w+) \1")))  # a back-reference
    assert info.value.feature == "regex_syntax" and info.value.tier == "local"


def test_pydantic_schema_is_a_valid_json_schema() -> None:
    schema = compile_spec(Everything).schema
    assert schema is not None
    jsonschema.Draft202012Validator.check_schema(schema)
