"""The instructor tier against llama.cpp's real server: reasks carry the validation error,
every call inside Instructor's loop is an Attempt, and the tokens add up to what the server
reported."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, field_validator

from extract.pipeline import Extractor
from extract.settings import Settings
from extract.spec import compile_spec
from extract.testing.fault_proxy import FaultProxy
from extract.tiers.base import Task
from extract.tiers.instructor import InstructorTier
from extract.types import Attempt, Result


class Person(BaseModel):
    name: str
    age: int


class Ticket(BaseModel):
    code: str

    @field_validator("code")
    @classmethod
    def _always_wrong(cls, v: str) -> str:
        raise ValueError("code must be the word PINEAPPLE in capitals")


def _run(settings: Settings, text: str, spec: Any) -> list[Attempt]:
    task = Task(text=text, spec=compile_spec(spec), settings=settings)
    return asyncio.run(InstructorTier(settings).attempts(task))


def _server_usage(proxy: FaultProxy) -> dict[str, int]:
    usage: dict[str, int] = proxy.stats()["usage"]
    return usage


def test_forced_tool_call_extracts(proxy: FaultProxy, remote_settings: Callable[..., Settings]) -> None:
    (attempt,) = _run(remote_settings(), "Bob Smith is 42 years old.", Person)
    assert attempt.error is None, attempt.error
    assert isinstance(attempt.value, Person) and attempt.value.age == 42
    assert attempt.meta["mode"] == "tools"
    assert attempt.finish_reason == "tool_calls"
    assert attempt.model is not None and attempt.model.name == "local"
    usage = _server_usage(proxy)
    assert attempt.usage.total_tokens == usage["total_tokens"]


def test_reasks_carry_the_validation_error_and_tokens_add_up(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    attempts = _run(remote_settings(instructor_max_retries=2), "The code is banana.", Ticket)
    assert len(attempts) == 3
    assert [a.meta["instructor_attempt"] for a in attempts] == [1, 2, 3]
    for attempt in attempts:
        assert attempt.error is not None and attempt.error.type == "schema_violation"
        assert attempt.usage.input_tokens > 0 and attempt.usage.output_tokens > 0
        assert attempt.latency_s > 0
    assert "reask" not in attempts[0].meta
    for attempt in attempts[1:]:
        assert "PINEAPPLE" in attempt.meta["reask"]
    # Each reask sends the conversation so far: prompts grow.
    assert attempts[0].usage.input_tokens < attempts[1].usage.input_tokens < attempts[2].usage.input_tokens
    usage = _server_usage(proxy)
    total = Result(attempts=attempts).usage
    assert (total.input_tokens, total.output_tokens, total.total_tokens) == (
        usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"],
    )


def test_transport_retries_inside_instructor_are_not_extra_attempts(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(next=["500", "cut"])
    (attempt,) = _run(remote_settings(), "Ann Lee is 7.", Person)
    assert attempt.meta["http_tries"] == 3
    assert attempt.usage.total_tokens == _server_usage(proxy)["total_tokens"]


def test_json_schema_dict_spec(proxy: FaultProxy, remote_settings: Callable[..., Settings]) -> None:
    schema = {
        "title": "Place",
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    (attempt,) = _run(remote_settings(), "I live in Paris.", schema)
    assert attempt.error is None, attempt.error
    assert isinstance(attempt.value, dict) and set(attempt.value) == {"city"}


def test_refused_tools_step_down_to_json_mode(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(reject=["tools"])
    (attempt,) = _run(remote_settings(), "Bob Smith is 42 years old.", Person)
    assert attempt.meta["mode"] == "json"
    assert [r["mode"] for r in attempt.meta["rejected_modes"]] == ["tools"]
    assert attempt.error is None or attempt.error.type == "schema_violation"


def test_chain_usage_equals_server_usage(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    """Native then instructor on one endpoint: Result.usage is what the server reported."""
    settings = remote_settings(instructor_max_retries=1)
    extractor = Extractor(tiers=["native", "instructor"], **settings.model_dump(exclude={"tiers"}))
    result = extractor.run("The code is banana.", Ticket)
    assert not result.ok
    assert [a.tier for a in result.attempts] == ["native", "instructor", "instructor"]
    usage = _server_usage(proxy)
    assert result.usage.total_tokens == usage["total_tokens"]
    assert result.usage.input_tokens == usage["prompt_tokens"]


def test_a_copied_span_holding_a_quote_reaches_the_server_widened(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    """The tool's schema is turned into GBNF by the server's own converter, which cannot write a
    quote inside an enum string (the server process died on it): such enums go as plain strings."""
    settings = remote_settings(instructor_max_retries=0)
    text = 'Russell, Alison. "Deconstructing The New York Trilogy." Critique 31 (1990): 71-84.'
    schema = {"type": "object", "copy_from_input": True,
              "properties": {"author": {"type": "string"}, "title": {"type": "string"}}}
    attempts = asyncio.run(InstructorTier(settings).attempts(
        Task(text=text, spec=compile_spec(schema), settings=settings)))
    assert attempts and all(a.meta.get("widened_for_server") == ["/$defs/extract_input_span"] for a in attempts)
    assert all(a.error is None or a.error.type != "provider_error" for a in attempts), attempts[-1].error
