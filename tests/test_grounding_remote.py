"""Grounding on the remote tier against the real llama.cpp server the suite starts (through the proxy).

llama-cpp-python's server refuses ``logprobs`` unless started with ``logits_all`` (it answers
500), which makes it the real "endpoint without log-probabilities": confidences must be None,
the refusal learnt once per endpoint and never retried, and the extraction unharmed.
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


def _extractor(remote_settings: Callable[..., Settings], **extra: Any) -> Extractor:
    s = remote_settings(**extra)
    return Extractor(["native"], base_url=s.base_url, timeout_s=s.timeout_s, max_retries=s.max_retries,
                     backoff_initial_s=s.backoff_initial_s, backoff_max_s=s.backoff_max_s,
                     breaker_threshold=s.breaker_threshold, max_tokens=64, cache=False, **extra)


def test_remote_tier_without_logprobs_gives_none_and_remembers(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(record=10)
    ex = _extractor(remote_settings, remote_logprobs=True, redact_pii=True)
    first = ex.run(TEXT, Contact)
    assert first.ok, first.attempts
    assert first.fields and all(f.confidence is None and f.raw_confidence is None for f in first.fields)
    state = endpoint_state(Endpoint.from_settings(ex.settings))
    assert state.logprobs is False  # learnt from the server's refusal
    seen = proxy.stats()["seen"]
    second = ex.run("Name: Ali Khan\nEmail: ali.khan@example.org\n", Contact)
    assert second.ok
    assert proxy.stats()["seen"] == seen + 1  # no second probe: the answer is remembered
    bodies = proxy.requests()
    assert sum(1 for b in bodies if b.get("logprobs")) == 1  # only the probe ever asked
    # The server saw a placeholder for the email; the offsets still refer to the caller's text.
    assert all("dana.reyes@example.org" not in str(b.get("messages")) for b in bodies)
    for f in first.fields:
        if f.status in ("exact", "normalized"):
            assert TEXT[f.spans[0][0]:f.spans[-1][1]].lower().startswith(str(f.value).lower()[:3])
    email = [f for f in first.fields if f.path == "/email"]
    if email and email[0].value == "dana.reyes@example.org":
        assert email[0].status == "exact" and TEXT[slice(*email[0].spans[0])] == "dana.reyes@example.org"


def test_remote_logprobs_off_by_default_sends_no_probe(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(record=10)
    result = _extractor(remote_settings).run(TEXT, Contact)
    assert result.ok
    assert all(f.confidence is None for f in result.fields)
    assert not any(b.get("logprobs") for b in proxy.requests())
