"""The native tier against llama.cpp's real server: capability ladder, usage, model name,
named endpoints, and the breaker handing over to the next tier in the chain."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pydantic import BaseModel

from extract.pipeline import Extractor
from extract.providers.openai_compat import (
    Endpoint,
    detect_capabilities,
    endpoint_state,
)
from extract.providers.server import ModelServer
from extract.settings import Settings
from extract.spec import compile_spec
from extract.testing.fault_proxy import FaultProxy
from extract.tiers import make_tier
from extract.tiers.base import Task
from extract.tiers.native import NativeTier
from extract.types import Attempt

TEXT = "Bob Smith is 42 years old."


class Person(BaseModel):
    name: str
    age: int


def _run(tier: NativeTier, settings: Settings, text: str = TEXT) -> list[Attempt]:
    return asyncio.run(tier.attempts(Task(text=text, spec=compile_spec(Person), settings=settings)))


def test_detection_finds_json_object_with_schema_on_llama_cpp(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    ladder = asyncio.run(detect_capabilities(Endpoint.from_settings(remote_settings())))
    assert ladder.current() == "json_object_schema"
    assert ladder.confirmed == "json_object_schema"
    # llama.cpp answers json_schema with a 500 that names response_format.
    assert "500" in ladder.rejected["json_schema"]
    assert "response_format" in ladder.rejected["json_schema"]


def test_native_extraction_records_mode_model_usage_and_endpoint(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    settings = remote_settings()
    (attempt,) = _run(NativeTier(settings), settings)
    assert attempt.error is None, attempt.error
    assert isinstance(attempt.value, Person) and attempt.value.age == 42
    assert attempt.meta["mode"] == "json_object_schema"
    assert [r["mode"] for r in attempt.meta["rejected_modes"]] == ["json_schema"]
    # llama-cpp-python's 500 carries a Python traceback: its message is kept, its frames are not.
    (reason,) = [r["reason"] for r in attempt.meta["rejected_modes"]]
    assert "json_object" in reason and 'File "' not in reason and "site-packages" not in reason
    assert attempt.model is not None
    assert attempt.model.name == "local"  # no model configured: the first one /v1/models lists
    assert attempt.model.backend == "openai-compatible"
    assert attempt.meta["endpoint"] == proxy.base_url
    usage = proxy.stats()["usage"]
    assert attempt.usage.input_tokens == usage["prompt_tokens"]
    assert attempt.usage.output_tokens == usage["completion_tokens"]
    assert attempt.latency_s > 0
    assert attempt.prompt_version


def test_a_rejected_mode_is_remembered_per_endpoint(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    settings = remote_settings()
    _run(NativeTier(settings), settings)
    seen = proxy.stats()["seen"]
    (second,) = _run(NativeTier(settings), settings, "Ann is 7.")
    assert "rejected_modes" not in second.meta
    assert proxy.stats()["seen"] == seen + 1  # straight to the remembered mode


def test_proxy_rejecting_json_schema_with_400_steps_down(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(reject=["json_schema", "json_object_schema"])
    settings = remote_settings()
    (attempt,) = _run(NativeTier(settings), settings)
    assert [r["mode"] for r in attempt.meta["rejected_modes"]] == ["json_schema", "json_object_schema"]
    assert all("HTTP 400" in r["reason"] for r in attempt.meta["rejected_modes"])
    assert attempt.meta["mode"] == "json_object"
    assert proxy.stats()["rejected"] == 2
    ladder = endpoint_state(Endpoint.from_settings(settings)).ladder
    assert ladder.current() == "json_object"
    # A rejected mode is not an extraction failure: the attempt stands on its own output.
    # (The 135M model's json_object output may still be bad; what matters is that the error
    # is about the output, never about the mode.)
    assert attempt.error is None or attempt.error.type in (
        "schema_violation", "invalid_json", "truncated", "unverified_repair", "ambiguous_output",
    )


def test_breaker_open_moves_the_chain_to_the_backup_endpoint(
    proxy: FaultProxy, llama_server: ModelServer, remote_settings: Callable[..., Settings]
) -> None:
    settings = remote_settings(
        max_retries=1,
        breaker_threshold=2,
        breaker_cooldown_s=60,
        endpoints={"backup": {"base_url": llama_server.base_url, "model": "local"}},
        model="local",
    )
    proxy.configure(next=["500"] * 4)
    extractor = Extractor(tiers=["native", "native@backup"], **settings.model_dump(exclude={"tiers"}))
    first = extractor.run(TEXT, Person)
    assert [a.tier for a in first.attempts] == ["native", "native@backup"]
    assert first.attempts[0].error is not None
    assert first.attempts[0].error.type == "provider_error"
    assert first.tier == "native@backup"
    assert first.attempts[1].meta["endpoint"].startswith("backup (")

    second = extractor.run("Ann is 7.", Person)
    assert second.attempts[0].error is not None
    assert second.attempts[0].error.type == "breaker_open"
    assert "circuit breaker open" in second.attempts[0].error.message
    assert second.tier == "native@backup"
    assert proxy.stats()["seen"] == 2  # the open breaker sent nothing


def test_make_tier_names_endpoint_tiers(remote_settings: Callable[..., Settings]) -> None:
    settings = remote_settings(endpoints={"backup": {"base_url": "http://127.0.0.1:9/v1"}})
    assert make_tier("native@backup", settings).name == "native@backup"
    assert make_tier("instructor@backup", settings).name == "instructor@backup"
    assert make_tier("native@backup", settings).unavailable() is None
    assert NativeTier(Settings.resolve()).unavailable() == (
        "no base_url configured (set EXTRACT_BASE_URL or base_url=)"
    )


def test_a_copied_span_holding_a_quote_does_not_take_the_server_down(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    """llama-cpp-python's server turns the schema into GBNF with its own converter, which writes a
    double quote inside an enum string unescaped: the grammar does not parse and the server
    process dies. Span-copy enums hold such quotes whenever the text quotes a title."""
    settings = remote_settings()
    text = 'Russell, Alison. "Deconstructing The New York Trilogy." Critique 31 (1990): 71-84.'
    schema = {"type": "object", "copy_from_input": True,
              "properties": {"author": {"type": "string"}, "title": {"type": "string"}}}
    (attempt,) = asyncio.run(NativeTier(settings).attempts(
        Task(text=text, spec=compile_spec(schema), settings=settings)))
    assert attempt.meta["mode"] == "json_object_schema"
    assert attempt.meta["widened_for_server"] == ["/$defs/extract_input_span"]  # the span enum
    assert attempt.error is None or attempt.error.type != "provider_error", attempt.error
    # The server is still up and enforcing schemas.
    (after,) = _run(NativeTier(settings), settings)
    assert after.error is None and isinstance(after.value, Person), after.error
