"""Transport reliability against a real server behind the real fault proxy: which faults are
retried, that Retry-After is honoured, that the breaker opens and half-opens, the deadline,
and that connection-level mistakes become clear ProviderErrors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from extract.errors import ProviderError
from extract.providers.openai_compat import (
    CircuitOpen,
    Connection,
    DeadlineExceeded,
    Endpoint,
    endpoint_state,
)
from extract.providers.server import free_port
from extract.settings import Settings
from extract.testing.fault_proxy import FAULT_KINDS, FaultProxy

MESSAGES = [{"role": "user", "content": "Say OK."}]

TRANSIENT = ["429", "500", "503", "delay", "reset", "cut", "malformed", "truncated", "content_type"]
PERMANENT = ["400", "401", "403"]


def test_every_fault_kind_is_classified() -> None:
    assert set(TRANSIENT) | set(PERMANENT) == set(FAULT_KINDS)


async def _chat(settings: Settings, deadline: float | None = None) -> tuple[Any, Connection]:
    async with Connection(Endpoint.from_settings(settings), deadline) as conn:
        try:
            resp = await conn.chat(model="local", messages=MESSAGES, max_tokens=4, temperature=0)
        except ProviderError as exc:
            return exc, conn
        return resp, conn


@pytest.mark.parametrize("fault", TRANSIENT)
def test_transient_fault_is_retried(
    fault: str, proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(next=[fault], retry_after=0.1, delay_s=2.0)
    result, conn = asyncio.run(_chat(remote_settings(timeout_s=1.0)))
    assert not isinstance(result, ProviderError), result
    assert result.choices[0].message.content is not None
    assert conn.http_tries == 2
    assert len(conn.transport_errors) == 1
    assert proxy.stats()["faults"] == {fault: 1}


@pytest.mark.parametrize("fault", PERMANENT)
def test_permanent_fault_is_not_retried(
    fault: str, proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(next=[fault])
    result, conn = asyncio.run(_chat(remote_settings()))
    assert isinstance(result, ProviderError)
    assert result.transient is False
    assert result.status == int(fault)
    assert proxy.url.split("//")[1] in result.endpoint
    assert conn.http_tries == 1
    assert proxy.stats()["seen"] == 1


def test_retry_after_is_respected(proxy: FaultProxy, remote_settings: Callable[..., Settings]) -> None:
    proxy.configure(next=["429"], retry_after=1.0)
    started = time.monotonic()
    result, conn = asyncio.run(_chat(remote_settings(backoff_max_s=0.05)))
    elapsed = time.monotonic() - started
    assert not isinstance(result, ProviderError)
    assert conn.http_tries == 2
    assert elapsed >= 1.0, "the retry came before Retry-After said"


def test_retry_after_longer_than_the_cap_fails_fast(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(next=["429"], retry_after=30)
    started = time.monotonic()
    result, conn = asyncio.run(_chat(remote_settings(retry_after_max_s=2.0)))
    assert isinstance(result, ProviderError)
    assert result.transient is True and result.status == 429 and result.retry_after == 30
    assert conn.http_tries == 1
    assert time.monotonic() - started < 2.0


def test_retries_stop_at_max_retries(proxy: FaultProxy, remote_settings: Callable[..., Settings]) -> None:
    proxy.configure(next=["500"] * 10)
    result, conn = asyncio.run(_chat(remote_settings(max_retries=2)))
    assert isinstance(result, ProviderError) and result.transient and result.status == 500
    assert conn.http_tries == 3
    assert proxy.stats()["seen"] == 3


def test_breaker_opens_then_half_opens(proxy: FaultProxy, remote_settings: Callable[..., Settings]) -> None:
    settings = remote_settings(max_retries=0, breaker_threshold=2, breaker_cooldown_s=0.5)
    proxy.configure(next=["503", "503", "503"], retry_after=0)
    first, _ = asyncio.run(_chat(settings))
    second, _ = asyncio.run(_chat(settings))
    assert isinstance(first, ProviderError) and isinstance(second, ProviderError)
    breaker = endpoint_state(Endpoint.from_settings(settings)).breaker
    assert breaker.state == "open"

    # Open: fails fast, the server never sees the call.
    third, conn = asyncio.run(_chat(settings))
    assert isinstance(third, CircuitOpen)
    assert conn.http_tries == 0
    assert proxy.stats()["seen"] == 2

    # Half-open after the cool-down: one probe goes through; it fails, so open again.
    time.sleep(0.55)
    assert breaker.state == "half_open"
    probe, _ = asyncio.run(_chat(settings))
    assert isinstance(probe, ProviderError) and not isinstance(probe, CircuitOpen)
    assert breaker.state == "open"

    # Next cool-down: the probe succeeds and the breaker closes.
    time.sleep(0.55)
    ok, _ = asyncio.run(_chat(settings))
    assert not isinstance(ok, ProviderError)
    assert breaker.state == "closed"
    assert breaker.times_opened == 2


def test_deadline_stops_a_slow_call(proxy: FaultProxy, remote_settings: Callable[..., Settings]) -> None:
    proxy.configure(next=["delay"] * 5, delay_s=5.0)
    started = time.monotonic()
    result, _ = asyncio.run(_chat(remote_settings(timeout_s=30.0), deadline=time.monotonic() + 1.0))
    assert isinstance(result, DeadlineExceeded)
    assert time.monotonic() - started < 2.0


def test_refused_connection_is_a_transient_provider_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    settings = Settings.resolve(base_url=url, max_retries=1, backoff_initial_s=0.01, backoff_max_s=0.02)
    result, conn = asyncio.run(_chat(settings))
    assert isinstance(result, ProviderError)
    assert result.transient is True
    assert "refused" in str(result) and url in str(result)
    assert conn.http_tries == 2


def test_wrong_base_url_path_is_a_permanent_provider_error(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    result, conn = asyncio.run(_chat(remote_settings(base_url=proxy.url + "/nope/v1")))
    assert isinstance(result, ProviderError)
    assert result.transient is False and result.status == 404
    assert "base_url" in str(result)
    assert conn.http_tries == 1
