"""The pure parts of the remote policy: ladder, breaker, error classification, settings."""

from __future__ import annotations

import json

import pytest

from extract.errors import ConfigError, ProviderError
from extract.providers.openai_compat import (
    LADDER,
    CapabilityLadder,
    CircuitBreaker,
    CircuitOpen,
    Endpoint,
    is_mode_rejection,
    normalise,
    redact_url,
    response_format_for,
)
from extract.settings import Settings
from extract.tiers import make_tier


def test_ladder_steps_down_once_per_mode() -> None:
    ladder = CapabilityLadder()
    assert ladder.current() == LADDER[0] == "json_schema"
    ladder.reject("json_schema", "500")
    ladder.reject("json_schema", "again")
    assert ladder.rejected == {"json_schema": "500"}
    assert ladder.current() == "json_object_schema"
    for mode in LADDER:
        ladder.reject(mode, "no")
    assert ladder.current() == "prompt"  # the floor is never rejected


def test_response_formats() -> None:
    schema = {"type": "object"}
    assert response_format_for("json_schema", schema, "P") == {
        "type": "json_schema", "json_schema": {"name": "P", "strict": True, "schema": schema},
    }
    assert response_format_for("json_object_schema", schema, "P") == {"type": "json_object", "schema": schema}
    assert response_format_for("json_object", schema, "P") == {"type": "json_object"}
    assert response_format_for("prompt", schema, "P") is None


def test_breaker_cycle_with_a_fake_clock() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown_s=10, clock=lambda: now[0])
    breaker.before_call("e")
    breaker.failure("x")
    assert breaker.state == "closed"
    breaker.failure("x")
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen) as info:
        breaker.before_call("e")
    assert info.value.transient and info.value.retry_after == 10
    now[0] = 10.0
    assert breaker.state == "half_open"
    breaker.before_call("e")  # the probe
    with pytest.raises(CircuitOpen):
        breaker.before_call("e")  # only one probe at a time
    breaker.success()
    assert breaker.state == "closed" and breaker.failures == 0


@pytest.mark.parametrize(
    ("status", "message", "rejected"),
    [
        (400, "response_format not supported", True),
        (400, "unknown field", True),
        (400, "this request exceeds the context window", False),
        (500, "Input should be 'text' or 'json_object' at response_format.type", True),
        (500, "injected fault 500", False),
        (401, "response_format", False),
    ],
)
def test_mode_rejection(status: int, message: str, rejected: bool) -> None:
    assert is_mode_rejection(ProviderError(message, status=status)) is rejected


def test_body_errors_are_transient() -> None:
    endpoint = Endpoint.from_settings(Settings.resolve(base_url="http://127.0.0.1:9/v1"))
    try:
        json.loads('{"a": ')
    except json.JSONDecodeError as exc:
        err = normalise(exc, endpoint)
    assert err.transient and "not JSON" in str(err) and "http://127.0.0.1:9/v1" in str(err)


def test_urls_are_redacted() -> None:
    assert redact_url("https://user:secret@host.example:8443/v1?key=abc") == "https://host.example:8443/v1"


def test_endpoint_settings() -> None:
    settings = Settings.resolve(
        base_url="http://127.0.0.1:1/v1/",
        timeout_s=9,
        endpoints={"backup": {"base_url": "http://127.0.0.1:2/v1", "model": "m", "max_retries": 0}},
    )
    assert settings.base_url == "http://127.0.0.1:1/v1"
    backup = Endpoint.from_settings(settings, "backup")
    assert (backup.model, backup.max_retries, backup.timeout_s) == ("m", 0, 9)
    assert backup.label == "backup (http://127.0.0.1:2/v1)"
    with pytest.raises(ConfigError, match="unknown endpoint"):
        Endpoint.from_settings(settings, "nope")
    with pytest.raises(ConfigError, match="http"):
        Settings.resolve(base_url="127.0.0.1:8765/v1")
    with pytest.raises(ConfigError, match="does not talk to an endpoint"):
        make_tier("local@backup", settings)
    with pytest.raises(ConfigError, match=r"not in settings\.endpoints"):
        make_tier("native@nope", settings)


def test_endpoints_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    value = '{"backup": {"base_url": "http://127.0.0.1:2/v1", "api_key": "sk-zq9"}}'
    monkeypatch.setenv("EXTRACT_ENDPOINTS", value)
    settings = Settings.resolve()
    assert settings.endpoints["backup"].base_url == "http://127.0.0.1:2/v1"
    assert "sk-zq9" not in repr(settings.endpoints["backup"])
    assert settings.endpoints["backup"].api_key is not None
