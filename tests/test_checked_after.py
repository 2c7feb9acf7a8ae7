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
from extract.settings import Settings
from extract.spec.compile import checked_after, compile_spec, local_constraint
from extract.spec.enforceable import enforceable
from extract.tiers.local import LocalTier
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


def test_a_node_of_any_type_is_bounded_one_level_deep() -> None:
    """``{}`` admits any JSON value, and the 135M model nested ``{"type":"json","data":{...``
    to the token limit. Every type stays allowed; values inside become bounded scalars."""
    constraint = json.loads(local_constraint(compile_spec({"allOf": [{}, {"minimum": 1}]}), "a b"))
    for branch in constraint["allOf"]:
        assert set(branch["type"]) == {"object", "array", "string", "number", "boolean", "null"}
        assert "object" not in branch["items"]["type"] and "array" not in branch["items"]["type"]
        assert branch["maxItems"] >= 8 and branch["maxLength"] >= 32
    # A key the schema requires but does not describe: a bounded scalar; listed ones: closed object.
    req = json.loads(local_constraint(compile_spec({"required": ["a"], "properties": {"b": True}}), "a b"))
    assert req["additionalProperties"]["type"] == ["string", "number", "boolean", "null"]
    assert "array" in req["properties"]["b"]["type"] and "array" not in req["properties"]["b"]["items"]["type"]
    # Typed schemas are untouched (a branch beside object keywords too: it may type them).
    typed = {"type": "object", "properties": {"a": {"type": "string"}}, "anyOf": [{"required": ["a"]}]}
    assert "type" not in json.loads(local_constraint(compile_spec(typed), "a b"))["anyOf"][0]


def test_a_schema_of_any_type_is_written_short_and_complete(local: Extractor) -> None:
    schemas: list[dict[str, Any]] = [{}, {"allOf": [{}, {}]}, {"anyOf": [{"type": "number"}, {}]},
                                     {"properties": {"foo": {}}}]
    for schema in schemas:
        res = local.run("Produce an example instance: a JSON value that is valid against the schema.", schema)
        attempt = res.attempts[0]
        assert attempt.finish_reason == "stop" and not attempt.repaired, (schema, attempt.raw)
        assert res.ok and attempt.usage is not None and attempt.usage.output_tokens < 200, (schema, attempt.raw)


def test_a_tightening_that_contradicts_the_schema_falls_back_instead_of_refusing() -> None:
    """Closing ``shared`` forbids the ``b`` that the object using it requires (SchemaStore
    schemas were refused as unsatisfiable): the constraint keeps that object open."""
    schema = {"type": "object", "definitions": {"shared": {"properties": {"a": {"type": "string"}}}},
              "allOf": [{"$ref": "#/definitions/shared"}], "properties": {"b": {"type": "string"}}, "required": ["b"]}
    tier = LocalTier(Settings.resolve())
    tier.check_support(compile_spec(schema))
    constraint = json.loads(local_constraint(compile_spec(schema), "a b"))
    assert "additionalProperties" not in constraint["definitions"]["shared"]
    assert constraint["properties"]["b"]["maxLength"] >= 32  # bounds kept


def test_integral_counts_and_dynamic_refs_do_not_refuse_the_schema() -> None:
    tier = LocalTier(Settings.resolve())
    tier.check_support(compile_spec({"type": "array", "maxItems": 2.0}))
    dynamic = {"type": "array", "items": {"$dynamicRef": "#items"},
               "$defs": {"foo": {"$dynamicAnchor": "items", "type": "string"}}}
    tier.check_support(compile_spec(dynamic))
    assert ("ref", "/items") in checked_after(compile_spec(dynamic))


def test_span_copy_leaves_nodes_of_any_type_alone() -> None:
    """Copying the input's spans into every bounded stand-in for ``{}`` made real-world schemas
    too large for llguidance; the typed string beside them is still copied."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "extra": {}, "more": {"items": {}}}}
    constraint = json.loads(local_constraint(compile_spec(schema), "Jane Doe lives here", copy_from_input="auto"))
    assert "$ref" in json.dumps(constraint["properties"]["name"])
    assert "$ref" not in json.dumps(constraint["properties"]["extra"])
    assert "$ref" not in json.dumps(constraint["properties"]["more"])
