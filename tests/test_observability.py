"""One structured log event and one span per attempt, nested extraction > tier > attempt, with
the cost from the price table; against the real server behind the real fault proxy."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from extract.pipeline import Extractor
from extract.runtime.observability import EVENT_LOGGER, attempt_fields, enable_event_log
from extract.settings import Settings
from extract.testing.fault_proxy import FaultProxy
from tests.otel_spans import span_exporter

FIELDS = {"tier", "model", "input_tokens", "output_tokens", "latency_s", "cost_usd", "cache_hit",
          "outcome", "error_type", "prompt_version", "endpoint", "repaired", "chunk"}
PRICE = {"input_per_mtok": 1.5, "output_per_mtok": 4.0}

# Two shared cores can be this busy: a retry after a client timeout spends tokens twice.
SLOW_OK = 120.0


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture()
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = span_exporter()
    yield exporter
    exporter.clear()


@pytest.fixture()
def events() -> Iterator[io.StringIO]:
    """The attempt events as the CLI would print them (stderr is not a TTY under pytest: JSON)."""
    stream = io.StringIO()
    handler = enable_event_log(stream)
    yield stream
    logger = logging.getLogger(EVENT_LOGGER)
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_one_event_and_one_span_per_attempt_with_cost(
    proxy: FaultProxy, remote_settings: Callable[..., Settings],
    spans: InMemorySpanExporter, events: io.StringIO,
) -> None:
    # native gets a permanent 401 (one failed attempt), instructor then succeeds.
    proxy.configure(next=["401"])
    settings = remote_settings(timeout_s=SLOW_OK, prices={"default": PRICE})
    extractor = Extractor(tiers=["native", "instructor"], **settings.model_dump(exclude={"tiers"}))
    result = extractor.run("Bob Smith is 42 years old.", Person)
    assert result.ok and result.tier == "instructor"
    assert [a.tier for a in result.attempts][:2] == ["native", "instructor"]

    # cost: the price table applied to the tokens the server reported, summed on the Result
    for a in result.attempts:
        expected = (a.usage.input_tokens * 1.5 + a.usage.output_tokens * 4.0) / 1e6
        assert a.cost_usd == pytest.approx(expected)
    served = proxy.stats()["usage"]
    retried = any(int(a.meta.get("http_tries", 1)) > 1 + len(a.meta.get("rejected_modes", ())) for a in result.attempts)
    if not retried:  # a request retried after a client timeout is served (and counted) twice
        assert result.usage.input_tokens == served["prompt_tokens"] > 0
        assert result.cost_usd == pytest.approx(
            (served["prompt_tokens"] * 1.5 + served["completion_tokens"] * 4.0) / 1e6)

    # logs: one JSON line per attempt, with the fields, in order
    lines = _lines(events)
    assert [line["event"] for line in lines] == ["attempt"] * len(result.attempts)
    for line, attempt in zip(lines, result.attempts, strict=True):
        assert FIELDS <= set(line)
        assert {k: line[k] for k in FIELDS} == json.loads(json.dumps(attempt_fields(attempt)))
    assert lines[0]["outcome"] == "error" and lines[0]["error_type"] == "provider_error"
    assert lines[-1]["outcome"] == "ok" and lines[-1]["cost_usd"] > 0 and lines[-1]["cache_hit"] is False

    # spans: extraction > tier > attempt, with the same attributes
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    (root,) = [s for s in finished if s.name == "extraction"]
    tiers = [s for s in finished if s.name == "tier"]
    attempts = [s for s in finished if s.name == "attempt"]
    assert [dict(t.attributes or {})["extract.tier"] for t in tiers] == ["native", "instructor"]
    assert all(t.parent is not None and t.parent.span_id == root.context.span_id for t in tiers)
    assert len(attempts) == len(result.attempts)
    for span, attempt in zip(attempts, result.attempts, strict=True):
        assert span.parent is not None
        parent = by_id[span.parent.span_id]
        assert parent.name == "tier" and dict(parent.attributes or {})["extract.tier"] == attempt.tier
        attributes = {f"extract.{k}": v for k, v in attempt_fields(attempt).items() if v is not None}
        assert dict(span.attributes or {}) == attributes
        assert span.start_time is not None and span.end_time is not None
        assert span.end_time - span.start_time == int(attempt.latency_s * 1e9)
    top = dict(root.attributes or {})
    assert top["extract.ok"] is True and top["extract.winner"] == "instructor"
    assert top["extract.cost_usd"] == pytest.approx(result.cost_usd)


def test_unpriced_remote_cost_is_unknown_and_local_is_free(
    proxy: FaultProxy, remote_settings: Callable[..., Settings], events: io.StringIO
) -> None:
    settings = remote_settings(timeout_s=SLOW_OK)
    result = Extractor(tiers=["native"], **settings.model_dump(exclude={"tiers"})).run("Ann is 30.", Person)
    assert result.attempts[0].usage.total_tokens > 0
    assert result.cost_usd is None  # no price: unknown, not free
    # "*" prices every remote model; a planned skip (an unsupported schema is not one here,
    # an unreachable endpoint is) is logged too: one event per attempt, whatever its outcome.
    settings = remote_settings(prices={"*": PRICE}, endpoints={"gone": {"base_url": "http://127.0.0.1:9/v1"}},
                               max_retries=0, timeout_s=2.0)
    extractor = Extractor(tiers=["native@gone", "native"], **settings.model_dump(exclude={"tiers"}))
    result = extractor.run("Ann is 30.", Person)
    assert [a.tier for a in result.attempts] == ["native@gone", "native"]
    assert result.attempts[0].error is not None and result.attempts[0].cost_usd == 0.0
    assert result.attempts[1].cost_usd == pytest.approx(
        (result.attempts[1].usage.input_tokens * 1.5 + result.attempts[1].usage.output_tokens * 4.0) / 1e6)
    lines = _lines(events)
    assert [line["tier"] for line in lines] == ["native", "native@gone", "native"]
