"""Grounding on the remote tier against the real llama.cpp server the suite starts (through the proxy).

llama-cpp-python's server returns token log-probabilities when asked with ``logprobs`` and
``top_logprobs`` (``logprobs`` alone gets ``null``): with ``remote_logprobs=True`` its values
must carry confidences in [0, 1], the same on every run. An endpoint without them is made real by the fault proxy
(a server that ignores the fields: they are dropped before forwarding; one that refuses them:
HTTP 400): confidences must be None, never a number, what the endpoint does learnt from the
first call and remembered, and the extraction unharmed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from extract import Extractor
from extract.providers.openai_compat import Endpoint, endpoint_state
from extract.settings import Settings
from extract.testing.fault_proxy import FaultProxy


class Contact(BaseModel):
    name: str
    email: str | None = None


TEXT = "Name: Dana Reyes\nEmail: dana.reyes@example.org\n"
SECOND = "Name: Ali Khan\nEmail: ali.khan@example.org\n"


def _extractor(remote_settings: Callable[..., Settings], **extra: Any) -> Extractor:
    # llama-cpp-python computes log-probabilities slowly (it sorts the vocabulary per output
    # token: ~7x the time of a call without them), past the suite's 20 s under load.
    timeout = 120.0 if extra.get("remote_logprobs") else None
    s = remote_settings(**extra, **({"timeout_s": timeout} if timeout else {}))
    return Extractor(["native"], base_url=s.base_url, timeout_s=s.timeout_s, max_retries=s.max_retries,
                     backoff_initial_s=s.backoff_initial_s, backoff_max_s=s.backoff_max_s,
                     breaker_threshold=s.breaker_threshold, max_tokens=64, cache=False, **extra)


def _asked(body: dict[str, Any]) -> bool:
    return bool(body.get("logprobs"))


def test_remote_tier_with_logprobs_gives_deterministic_confidences(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(record=10)
    ex = _extractor(remote_settings, remote_logprobs=True, redact_pii=True)
    first = ex.run(TEXT, Contact)
    assert first.ok, first.attempts
    assert first.fields
    for f in first.fields:
        assert f.raw_confidence is not None and 0.0 <= f.raw_confidence <= 1.0, f
    assert endpoint_state(Endpoint.from_settings(ex.settings)).logprobs is True
    again = ex.run(TEXT, Contact)
    assert [(f.path, f.value, f.raw_confidence) for f in again.fields] == \
        [(f.path, f.value, f.raw_confidence) for f in first.fields]
    bodies = proxy.requests()
    # Every call asked (the first run also tried the json_schema rung, which this server refuses).
    assert all(_asked(b) and b.get("top_logprobs") == 1 for b in bodies)
    # The server saw a placeholder for the email; the offsets still refer to the caller's text.
    assert all("dana.reyes@example.org" not in str(b.get("messages")) for b in bodies)
    for f in first.fields:
        if f.status in ("exact", "normalized"):
            assert TEXT[f.spans[0][0]:f.spans[-1][1]].lower().startswith(str(f.value).lower()[:3])
    email = [f for f in first.fields if f.path == "/email"]
    if email and email[0].value == "dana.reyes@example.org":
        assert email[0].status == "exact" and TEXT[slice(*email[0].spans[0])] == "dana.reyes@example.org"


def test_an_endpoint_that_ignores_logprobs_gives_none_and_is_not_asked_again(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(record=10, strip=["logprobs", "top_logprobs"])
    ex = _extractor(remote_settings, remote_logprobs=True, redact_pii=True)  # (it names Dana Reyes on this prompt)
    first = ex.run(TEXT, Contact)
    assert first.ok, first.attempts
    assert first.fields and all(f.confidence is None and f.raw_confidence is None for f in first.fields)
    assert endpoint_state(Endpoint.from_settings(ex.settings)).logprobs is False
    first_bodies = proxy.requests()
    assert first_bodies and all(_asked(b) for b in first_bodies)  # asked on the real calls, no probe
    second = ex.run(SECOND, Contact)
    assert second.ok and all(f.confidence is None for f in second.fields)
    later = proxy.requests()[len(first_bodies):]
    assert len(later) == 1 and not _asked(later[0])  # learnt from the first answer: not asked again


def test_an_endpoint_that_refuses_logprobs_is_asked_again_without(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(record=10, reject=["logprobs"])
    ex = _extractor(remote_settings, remote_logprobs=True, redact_pii=True)  # (it names Dana Reyes on this prompt)
    first = ex.run(TEXT, Contact)
    assert first.ok, first.attempts
    assert all(f.confidence is None and f.raw_confidence is None for f in first.fields)
    winner = first.attempts[-1]
    assert "logprobs" in winner.meta["logprobs_refused"]
    # The refusal did not step the mode ladder down (this server itself refuses only json_schema).
    assert all("logprobs" not in r["reason"] for r in winner.meta.get("rejected_modes", []))
    second = ex.run(SECOND, Contact)
    assert second.ok
    bodies = proxy.requests()
    assert [_asked(b) for b in bodies].count(True) == 1 and _asked(bodies[0])  # refused once, never asked again
    assert proxy.stats()["rejected"] == 1


def test_remote_logprobs_off_by_default_asks_for_none(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(record=10)
    result = _extractor(remote_settings, redact_pii=True).run(TEXT, Contact)
    assert result.ok
    assert result.fields and all(f.confidence is None for f in result.fields)
    assert not any(_asked(b) for b in proxy.requests())
