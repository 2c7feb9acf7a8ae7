"""Keywords the local constraint cannot enforce: decoded under the rest, checked after.

A real-world schema with one ``not`` or ``uniqueItems`` deep in a definition used to be
refused whole by the local tier. Now the constraint leaves such keywords out (a superset of
the schema), the output is validated against the whole schema, and each keyword left out is
named with its place, on the Attempt and by ``extract check``.
"""

from __future__ import annotations

import json
from typing import Any

from extract import Extractor
from extract.front.authoring import check_spec
from extract.spec.compile import checked_after, compile_spec, local_constraint
from extract.spec.enforceable import enforceable
from extract.validate.check import parse_output


def test_each_unenforced_keyword_is_left_out_and_named_with_its_place() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "kind": {"oneOf": [{"const": "a"}, {"const": "b"}]},
            "code": {"type": "string", "pattern": "^(?!x)[a-z]+$", "format": "no-such-format"},
            "other": {"$ref": "https://example.invalid/other.json"},
        },
        "not": {"required": ["forbidden"]},
        "if": {"required": ["kind"]},
        "then": {"required": ["tags"]},
    }
    relaxed, removed = enforceable(schema)
    assert set(removed) == {
        ("unique_items", "/properties/tags"), ("one_of", "/properties/kind"),
        ("string_pattern", "/properties/code"), ("format_other", "/properties/code"),
        ("ref", "/properties/other"), ("not", "/"), ("conditional", "/"),
    }
    assert relaxed["properties"]["kind"] == {"anyOf": [{"const": "a"}, {"const": "b"}]}
    assert "not" not in relaxed and "if" not in relaxed and "uniqueItems" not in relaxed["properties"]["tags"]
    assert schema["not"] == {"required": ["forbidden"]}  # the user's schema is untouched
    # What llguidance does enforce stays: a pattern it can compile, a format it knows.
    kept, gone = enforceable({"type": "string", "pattern": "^[a-z]+$", "format": "email"})
    assert gone == () and kept["pattern"] == "^[a-z]+$" and kept["format"] == "email"


def test_branches_of_a_union_are_not_closed() -> None:
    """Closing an anyOf branch that lists only the keys it constrains made schemas unsatisfiable."""
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        "anyOf": [{"properties": {"a": {"minLength": 1}}}, {"properties": {"b": {"minLength": 1}}}],
        "required": ["a"],
    }
    constraint = json.loads(local_constraint(compile_spec(schema), "a b"))
    assert all("additionalProperties" not in branch for branch in constraint["anyOf"])


def test_an_impossible_checked_keyword_fails_as_a_schema_violation_on_the_attempt(local: Extractor) -> None:
    # Two items from a one-value enum can never be unique: the constraint cannot see it, the check does.
    schema = {"type": "array", "items": {"enum": ["a"]}, "minItems": 2, "maxItems": 2, "uniqueItems": True}
    res = local.run("a a", schema)
    attempt = res.attempts[0]
    assert attempt.tier == "local"
    assert attempt.error is not None and attempt.error.type == "schema_violation"
    assert "unique" in attempt.error.message
    assert attempt.meta["checked_after"] == ["unique_items"]


def test_a_schema_with_checked_keywords_is_decoded_and_valid(local: Extractor) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
        "required": ["city"],
        "not": {"required": ["forbidden"]},
        "propertyNames": {"enum": ["city", "zip"]},
    }
    res = local.run("Ship it to Springfield, 62701.", schema)
    assert res.ok and res.tier == "local", res.attempts[-1].error
    assert res.attempts[0].meta["checked_after"] == ["not", "property_names"]
    assert checked_after(compile_spec(schema)) == (("not", "/"), ("property_names", "/"))


def test_a_remote_ref_is_never_fetched_when_checking() -> None:
    schema = {"type": "object", "properties": {"x": {"$ref": "https://json.schemastore.org/no-such.json"}}}
    checked = parse_output('{"x": 1}', schema)
    assert checked.ok


def test_extract_check_says_which_keywords_are_checked_after() -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    report = check_spec(schema)
    local = next(t for t in report.tiers if t.tier == "local")
    assert local.supported
    assert ("unique_items", "/") in [(c.feature, c.where) for c in report.checked_after]
