"""Fixtures for the remote tiers: one real llama.cpp server and one real fault proxy per session.

Registered from ``tests/conftest.py`` with ``pytest_plugins = ["tests.remote_fixtures"]``.
The server runs the embedded model with one thread: on 2 cores shared with other work,
llama.cpp with 2 threads took 57 s for a 14-token answer that 1 thread does in 0.9 s
(measured; its threads spin-wait for each other). Each test gets the proxy reset to no
faults and every endpoint's ladder, breaker and model name forgotten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from extract.providers.openai_compat import reset_endpoint_states
from extract.providers.server import ModelServer, start_server
from extract.settings import Settings
from extract.testing.fault_proxy import FaultProxy

__all__ = ["fault_proxy", "llama_server", "proxy", "remote_settings"]


@pytest.fixture(scope="session")
def llama_server() -> Iterator[ModelServer]:
    server = start_server(n_threads=1, n_ctx=2048)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fault_proxy(llama_server: ModelServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy.start(llama_server.url)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture()
def proxy(fault_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The session proxy with no faults, zeroed stats and a clean view of every endpoint."""
    fault_proxy.reset()
    reset_endpoint_states()
    yield fault_proxy
    fault_proxy.reset()
    reset_endpoint_states()


@pytest.fixture()
def remote_settings(proxy: FaultProxy) -> Callable[..., Settings]:
    """Settings pointing at the proxy, with waits short enough for a test run."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "base_url": proxy.base_url,
            "timeout_s": 20.0,
            "max_retries": 3,
            "backoff_initial_s": 0.02,
            "backoff_max_s": 0.1,
            "breaker_threshold": 50,
            "breaker_cooldown_s": 0.5,
            "max_tokens": 48,
        }
        values.update(overrides)
        return Settings.resolve(**values)

    return make
