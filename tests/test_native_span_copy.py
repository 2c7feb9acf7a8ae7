"""Span-copy on the native tier, against llama.cpp's real server: a schema a user wrote gets its
strings constrained to spans of the text where the server enforces the schema (json_object +
schema), with the local tier's defaults and switches; strict json_schema and span lists too
large for the server get the free strings, the reason recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from extract.settings import Settings
from extract.spec import compile_spec
from extract.spec.span_copy import SPAN_DEF
from extract.testing.fault_proxy import FaultProxy
from extract.tiers.base import Task
from extract.tiers.native import SERVER_MAX_SPANS, NativeTier
from extract.types import Attempt

TEXT = "Maria Lopez moved to 18 Elm Street, Salem MA 01970 last spring."


def user_schema(**extra: dict[str, Any]) -> dict[str, Any]:
    """An object schema as a user writes one: required plain strings, no marks, no patterns."""
    props: dict[str, Any] = {
        "person": {"type": "string", "description": "Who moved."},
        "city": {"type": "string", "description": "The city they moved to."},
        **extra,
    }
    return {"type": "object", "properties": props, "required": list(props)}


def run(settings: Settings, schema: dict[str, Any], text: str = TEXT) -> Attempt:
    (attempt,) = asyncio.run(NativeTier(settings).attempts(
        Task(text=text, spec=compile_spec(schema), settings=settings)))
    return attempt


def sent(proxy: FaultProxy, mode: str) -> dict[str, Any]:
    """The schema of the last recorded request on ``mode``."""
    bodies = [b for b in proxy.requests() if b.get("response_format")]
    wanted = "json_schema" if mode == "json_schema" else "json_object"
    fmt = [b["response_format"] for b in bodies if b["response_format"]["type"] == wanted][-1]
    schema: dict[str, Any] = fmt["json_schema"]["schema"] if mode == "json_schema" else fmt["schema"]
    return schema


def test_an_unmarked_schema_gets_spans_of_the_text_from_the_native_tier(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(record=8)
    attempt = run(remote_settings(), user_schema())
    assert attempt.error is None, attempt.error
    assert attempt.meta["mode"] == "json_object_schema"
    assert attempt.meta["span_copy"]["fields"] == 2 and attempt.meta["span_copy"]["spans"] > 50
    assert "span_copy_off" not in attempt.meta
    schema = sent(proxy, "json_object_schema")
    spans = [v for k, d in schema["$defs"].items() if k.startswith(SPAN_DEF) for v in d["enum"]]
    assert "Salem" in spans and "Maria Lopez" in spans
    assert all(schema["properties"][k] == {"$ref": schema["properties"][k]["$ref"]} for k in ("person", "city"))
    # The server enforced it: each (required) value is a span of the text.
    assert isinstance(attempt.value, dict)
    for key in ("person", "city"):
        assert attempt.value[key] and attempt.value[key] in TEXT, attempt.value
    # The strict rung llama.cpp refused first was sent the free strings (module docstring).
    strict = sent(proxy, "json_schema")
    assert "$defs" not in strict and strict["properties"]["city"]["type"] == "string"


def test_copy_from_input_false_and_field_marks_work_as_on_the_local_tier(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(record=4)
    off = run(remote_settings(copy_from_input=False), user_schema())
    assert off.error is None, off.error
    assert off.meta["mode"] == "json_object_schema"
    assert "span_copy" not in off.meta and "span_copy_off" not in off.meta
    assert "$defs" not in sent(proxy, "json_object_schema")

    # A schema with marks follows them: city marked off, person marked on.
    marked = user_schema()
    marked["properties"]["city"]["copy_from_input"] = False
    marked["properties"]["person"]["copy_from_input"] = True
    attempt = run(remote_settings(), marked)
    assert attempt.meta["span_copy"]["fields"] == 1
    props = sent(proxy, "json_object_schema")["properties"]
    assert "$ref" in props["person"] and props["city"]["type"] == "string" and "$ref" not in props["city"]


def test_a_computed_field_stays_free_on_the_native_tier(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(record=4)
    schema = user_schema(word_count={"type": "string", "description": "The number of words in the text."})
    attempt = run(remote_settings(), schema)
    assert attempt.meta["span_copy"]["fields"] == 2
    props = sent(proxy, "json_object_schema")["properties"]
    assert "$ref" in props["city"] and "$ref" not in props["word_count"]
    assert props["word_count"]["type"] == "string" and props["word_count"]["maxLength"] > 0


def test_a_long_document_falls_back_to_free_strings_with_the_reason(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(record=4)
    # 100 more distinct words: over 2,000 spans, past what one request may carry.
    text = TEXT + " " + " ".join(f"w{i}" for i in range(100))
    attempt = run(remote_settings(), user_schema(), text)
    assert attempt.meta["mode"] == "json_object_schema"
    assert "span_copy" not in attempt.meta
    assert f"over the server limit of {SERVER_MAX_SPANS}" in attempt.meta["span_copy_off"]
    assert "$defs" not in sent(proxy, "json_object_schema") and "schema_dropped" not in attempt.meta
    # Degraded, not failed: whatever the model wrote is checked as before.
    assert attempt.error is None or attempt.error.type != "provider_error", attempt.error


def test_sent_schema_keeps_span_lists_to_the_json_object_schema_rung() -> None:
    tier = NativeTier(Settings.resolve(base_url="http://127.0.0.1:9/v1"))
    spec = compile_spec(user_schema())
    meta: dict[str, Any] = {}
    assert tier.sent_schema(spec, TEXT, "json_schema", meta) is None
    assert meta == {"span_copy_off": "not sent on the json_schema rung (only json_object + schema takes span lists)"}
    copied = tier.sent_schema(spec, TEXT, "json_object_schema", meta)
    assert copied is not None and "span_copy_off" not in meta and meta["span_copy"]["fields"] == 2
    # copy_from_input=True copies every plain string, a computed one too (the user asked).
    forced = NativeTier(Settings.resolve(base_url="http://127.0.0.1:9/v1", copy_from_input=True))
    counted = compile_spec(user_schema(word_count={"type": "string", "description": "The number of words."}))
    assert forced.sent_schema(counted, TEXT, "json_object_schema", meta) is not None
    assert meta["span_copy"]["fields"] == 3
    # Generating an instance, nothing is copied (the text is a request): as on the local tier.
    generating = NativeTier(Settings.resolve(base_url="http://127.0.0.1:9/v1", generate=True))
    assert generating.sent_schema(spec, TEXT, "json_object_schema", meta) is None and meta == {}


def test_a_long_document_keeps_its_schema_with_the_long_bounds_dropped(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    """Free strings are bounded by the input (1,024 characters for a text over 512), and
    llama.cpp's parser refuses a repetition over 1,000: the bounds go, the schema stays
    enforced, and the attempt says which bounds were dropped (it used to send no schema)."""
    proxy.configure(record=4)
    text = TEXT + " " + " ".join(f"w{i}" for i in range(120))
    assert len(text) > 512
    attempt = run(remote_settings(copy_from_input=False), user_schema(), text)
    assert attempt.meta["mode"] == "json_object_schema" and "schema_dropped" not in attempt.meta
    assert attempt.meta["widened_for_server"] == ["/properties/person", "/properties/city"]
    schema = sent(proxy, "json_object_schema")
    assert schema["required"] == ["person", "city"] and schema["additionalProperties"] is False
    assert all("maxLength" not in node for node in schema["properties"].values())
    assert attempt.ok, attempt.error  # the server enforced it: both keys, strings
    assert set(attempt.value) == {"person", "city"}


def test_a_schema_llama_cpp_cannot_parse_is_recorded_as_dropped(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    """A pattern repeating past 1,000 converts to a GBNF that llama.cpp's parser refuses, and
    no widening mends it: the request goes without a schema, and the attempt says so."""
    proxy.configure(record=4)
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[a-z]{1,2000}$"}},
              "required": ["code"]}
    attempt = run(remote_settings(copy_from_input=False), schema)
    assert attempt.meta["mode"] == "json_object_schema"
    assert "refuses the converted schema" in attempt.meta["schema_dropped"]
    assert proxy.requests()[-1]["response_format"] == {"type": "json_object"}
