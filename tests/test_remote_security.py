"""The API key is a secret: it reaches the server, and nothing else (no log line, exception
text, Attempt, report or settings dump)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import pytest
from pydantic import BaseModel

from extract.errors import ProviderError
from extract.pipeline import Extractor
from extract.providers.openai_compat import Connection, Endpoint
from extract.settings import Settings
from extract.testing.fault_proxy import FaultProxy

SENTINEL = "sk-SENTINEL-7f3a9c1e-do-not-print"


class Person(BaseModel):
    name: str
    age: int


def _everything_printed(caplog: pytest.LogCaptureFixture, *texts: str) -> str:
    return "\n".join([caplog.text, *(r.getMessage() for r in caplog.records), *texts])


def test_key_is_sent_but_never_printed(
    proxy: FaultProxy, remote_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy.configure(require_key=SENTINEL, next=["500"])
    settings = remote_settings(api_key=SENTINEL)
    extractor = Extractor(tiers=["native", "instructor"], **settings.model_dump(exclude={"tiers"}))
    result = extractor.run("Bob Smith is 42 years old.", Person)
    assert result.ok  # the server accepted the key: it was sent
    assert proxy.stats()["rejected"] == 0
    printed = _everything_printed(
        caplog,
        json.dumps(result.to_json_dict(), default=str),
        repr(result),
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(extractor.tiers),
    )
    assert SENTINEL not in printed


def test_wrong_key_is_a_clear_error_without_the_key(
    proxy: FaultProxy, remote_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy.configure(require_key="the-right-key")
    settings = remote_settings(api_key=SENTINEL)

    async def call() -> ProviderError:
        async with Connection(Endpoint.from_settings(settings)) as conn:
            try:
                await conn.chat(model="local", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            except ProviderError as exc:
                return exc
        raise AssertionError("a wrong key was accepted")

    exc = asyncio.run(call())
    assert exc.status == 401 and exc.transient is False
    assert "API key" in str(exc) and proxy.base_url in str(exc)
    assert exc.__cause__ is None and exc.__suppress_context__  # the openai error holds the request

    extractor = Extractor(tiers=["native", "instructor"], **settings.model_dump(exclude={"tiers"}))
    result = extractor.run("Bob Smith is 42 years old.", Person)
    assert not result.ok
    assert {a.error.type for a in result.attempts if a.error} == {"provider_error"}
    assert all(a.error and a.error.details[0]["status"] == 401 for a in result.attempts)
    printed = _everything_printed(
        caplog, str(exc), repr(exc), json.dumps(result.to_json_dict(), default=str)
    )
    assert SENTINEL not in printed
