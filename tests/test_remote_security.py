"""The API key is a secret: it reaches the server, and nothing else (no log line, exception
text, Attempt, report or settings dump)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

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


def test_key_never_in_event_log_traces_or_bench_report(
    proxy: FaultProxy, remote_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """The sentinel as the API key and a named endpoint's key, with faults on the way so error
    paths log too: nothing the event log, the spans or a bench report wrote holds it. (A key in
    a URL is found and redacted from our events, but httpx's own DEBUG log prints request URLs
    whole: keys belong in api_key.)"""
    import io

    from typer.testing import CliRunner

    from extract.front.cli import app
    from extract.runtime.observability import EVENT_LOGGER, REDACTED, enable_event_log, redact_secrets, secrets_of
    from tests.otel_spans import span_exporter, span_text

    caplog.set_level(logging.DEBUG)
    spans = span_exporter()
    stream = io.StringIO()
    handler = enable_event_log(stream)
    try:
        proxy.configure(require_key=SENTINEL, next=["500", "401"])
        settings = remote_settings(
            api_key=SENTINEL,
            endpoints={"backup": {"base_url": proxy.base_url, "api_key": SENTINEL}},
        )
        in_urls = remote_settings(base_url=f"http://u:{SENTINEL}@127.0.0.1:9/v1?token={SENTINEL}x",
                                  cache_url=f"redis://:{SENTINEL}y@127.0.0.1:6379/0")
        assert set(secrets_of(in_urls)) == {SENTINEL, SENTINEL + "x", SENTINEL + "y"}
        # The redactor is what keeps it out, whatever carries it:
        assert redact_secrets({"e": [f"boom {SENTINEL}"]}, secrets_of(settings)) == {"e": [f"boom {REDACTED}"]}
        extractor = Extractor(tiers=["native@backup", "native", "instructor"],
                              **settings.model_dump(exclude={"tiers"}))
        result = extractor.run("Bob Smith is 42 years old.", Person)
        assert any(a.error for a in result.attempts) and result.ok  # faults were logged, a key was sent
        assert proxy.stats()["rejected"] == 0

        monkeypatch.setenv("EXTRACT_API_KEY", SENTINEL)
        data = tmp_path / "d.jsonl"
        data.write_text(json.dumps({"id": "a", "text": "12 Main St, Springfield",
                                    "gold": {"StreetName": "Main"}}) + "\n", encoding="utf-8")
        out = tmp_path / "bench"
        res = CliRunner().invoke(app, ["bench", "--data", str(data), "--schema", "schemas.address:Address",
                                       "--policy", "native", "--out", str(out), "--base-url", proxy.base_url])
        assert res.exit_code == 0, res.output
        report = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in out.rglob("*") if p.is_file())
        assert "native" in report
    finally:
        logging.getLogger(EVENT_LOGGER).removeHandler(handler)
        logging.getLogger(EVENT_LOGGER).setLevel(logging.NOTSET)
    events = stream.getvalue()
    assert events.count('"event": "attempt"') >= len(result.attempts)
    traced = span_text(spans.get_finished_spans())
    assert '"extract.tier": "native@backup"' in traced
    printed = _everything_printed(caplog, events, traced, report, res.output,
                                  json.dumps(result.to_json_dict(), default=str))
    assert SENTINEL not in printed
