"""Batches: every input accounted for through real faults, and a killed run resumed without redoing work.

The model is the real llama.cpp server behind the real fault proxy (tests/remote_fixtures.py).
Model calls are counted where they happen: the proxy's tally of HTTP 200 answers from
``/v1/chat/completions`` (the model name is configured, so no ``/v1/models`` call is made).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from extract import ConfigError, Extractor, aextract_many, extract_many
from extract.testing.fault_proxy import FaultProxy

REPO = Path(__file__).resolve().parent.parent
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24}},
    "required": ["city"],
    "additionalProperties": False,
}
CITIES = ["Paris", "Lyon", "Berlin", "Madrid", "Rome", "Oslo", "Vienna", "Prague", "Dublin", "Lisbon"]
# Every fault that answers without a full, valid completion (the 5 s 'delay' would only slow the run).
FAULTS = ["429", "500", "503", "reset", "cut", "malformed", "truncated", "content_type"]


def options(proxy: FaultProxy, **extra: Any) -> dict[str, Any]:
    return {"tiers": ["native"], "base_url": proxy.base_url, "model": "local", "max_tokens": 12,
            "timeout_s": 20.0, "max_retries": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.05,
            "breaker_threshold": 1000, "cache": False, **extra}


def settled_calls(proxy: FaultProxy) -> int:
    """``model_calls`` once every request the proxy has seen has had its answer."""
    deadline = time.monotonic() + 60
    while (stats := proxy.stats())["seen"] != stats["forwarded"] + stats["rejected"] + sum(stats["faults"].values()):
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)
    return model_calls(proxy)


def model_calls(proxy: FaultProxy) -> int:
    """Completions the server answered and the proxy delivered (a refused mode is a 500, not counted)."""
    return int(proxy.stats()["status"].get("200", 0))


@pytest.mark.slow
def test_200_documents_through_30_percent_faults_all_come_back(proxy: FaultProxy) -> None:
    texts: list[str | bytes] = [f"Note {i}: I moved to {CITIES[i % len(CITIES)]} last year." for i in range(200)]
    texts[17] = "   "  # bad inputs inside the batch: recorded, never the end of it
    texts[150] = b"\xff\xfe not utf-8"
    proxy.reset(rate=0.3, seed=9, faults=FAULTS, retry_after=0)
    results = extract_many(texts, CITY, concurrency=4, **options(proxy))
    stats = proxy.stats()
    assert len(results) == 200
    assert sum(stats["faults"].values()) >= 40, stats  # the proxy really was hostile
    for i, result in enumerate(results):
        if result.ok:
            jsonschema.validate(result.value, CITY)
            assert result.attempts and result.attempts[-1].ok
        else:
            assert result.attempts and all(a.error is not None for a in result.attempts), (i, result)
    # In order: the two bad inputs are where they were put, with their own cause.
    assert [a.error.type for a in results[17].attempts if a.error] == ["bad_input"]
    assert "UTF-8" in results[150].attempts[0].error.message  # type: ignore[union-attr]
    failed = [i for i, r in enumerate(results) if not r.ok]
    assert {17, 150} <= set(failed)
    assert len(failed) < 20, failed  # three transport retries absorb almost every fault
    # A faulted call was retried and recorded: some attempts carry the transport errors they survived.
    assert any(a.meta.get("transport_errors") or a.meta.get("http_tries", 1) > 1
               for r in results for a in r.attempts), "no retry was recorded on any attempt"


def test_one_result_per_input_in_order_and_caller_mistakes_raise(proxy: FaultProxy) -> None:
    texts = ["I live in Oslo.", "", "We moved to Rome.", "Greetings from Lyon."]
    results = extract_many(texts, CITY, concurrency=3, rate_limit=20.0, **options(proxy))
    assert [r.ok for r in results] == [True, False, True, True]
    for r in results:
        if r.ok:
            jsonschema.validate(r.value, CITY)
    assert results[1].attempts[0].tier == "input" and results[1].attempts[0].error.type == "bad_input"  # type: ignore[union-attr]
    assert model_calls(proxy) == 3  # the empty text cost no call
    with pytest.raises(ConfigError, match="concurrency"):
        extract_many(texts, CITY, concurrency=0, **options(proxy))
    with pytest.raises(ConfigError, match="rate_limit"):
        extract_many(texts, CITY, rate_limit=-1, **options(proxy))
    with pytest.raises(ConfigError, match="engine"):
        extract_many(texts, CITY, engine="spark", **options(proxy))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not both"):
        extract_many(texts, CITY, extractor=Extractor(**options(proxy)), max_tokens=3)


def test_rate_limit_spaces_the_starts(proxy: FaultProxy) -> None:
    import asyncio

    chain = Extractor(**options(proxy))
    texts = ["   "] * 6  # no model call: the limiter alone sets the pace
    started = time.perf_counter()
    results = asyncio.run(aextract_many(texts, CITY, extractor=chain, concurrency=6, rate_limit=10.0))
    assert len(results) == 6 and time.perf_counter() - started >= 0.45


def _write_input(path: Path, n: int) -> list[Any]:
    """n rows: JSON {id, text} rows and a few plain text lines (their id is their line number)."""
    ids: list[Any] = []
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            line_no = i + 1
            if i % 5 == 4:
                fh.write(f"Plain line {i}: I moved to {CITIES[i % len(CITIES)]}.\n")
                ids.append(line_no)
            else:
                text = f"Doc {i}: I live in {CITIES[i % len(CITIES)]}."
                fh.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")
                ids.append(f"doc-{i}")
    return ids


def _cli(args: list[str], proxy: FaultProxy, **env: str) -> subprocess.Popen[bytes]:
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "EXTRACT_BASE_URL": proxy.base_url, "EXTRACT_MODEL": "local",
               "EXTRACT_MAX_TOKENS": "12", "EXTRACT_CACHE": "false", **env}
    return subprocess.Popen([sys.executable, "-m", "extract", "run", *args], cwd=REPO, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_kill_9_mid_batch_then_rerun_completes_without_redoing_an_input(proxy: FaultProxy, tmp_path: Path) -> None:
    schema = tmp_path / "city.json"
    schema.write_text(json.dumps(CITY), encoding="utf-8")
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = _write_input(source, 10)
    args = ["--schema", str(schema), "--tier", "native", "--input", str(source), "--output", str(out),
            "--concurrency", "2"]
    first = _cli(args, proxy)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 3):
        assert first.poll() is None, first.communicate()[1].decode()
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL
    done_before = [row["id"] for row in _rows(out)]
    assert 3 <= len(done_before) < len(ids), "the kill came too late to test a resume"
    with out.open("a", encoding="utf-8") as fh:  # a writer killed mid-line leaves a torn tail
        fh.write('{"id": "doc-99", "ok": tr')
    calls_before = settled_calls(proxy)  # the killed client's request in flight still reaches the server

    second = _cli(args, proxy)
    stdout, stderr = second.communicate(timeout=180)
    assert second.returncode == 0, stderr.decode()
    summary = json.loads(stdout)
    rows = _rows(out)  # every line is whole JSON again: the torn tail was cut
    assert sorted(map(json.dumps, (r["id"] for r in rows))) == sorted(map(json.dumps, ids))  # each id once
    assert all(r["ok"] for r in rows)
    assert summary["already_done"] == len(done_before) and summary["done"] == len(ids) - len(done_before)
    # The server answered exactly one completion per input the rerun had left to do.
    assert model_calls(proxy) - calls_before == len(ids) - len(done_before)
    assert rows[: len(done_before)] == [r for r in rows if r["id"] in done_before]  # appended, not rewritten
    assert {r["id"] for r in rows if isinstance(r["id"], int)} == {5, 10}


def test_batch_cli_rejects_duplicate_ids_and_half_a_batch(proxy: FaultProxy, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "a b"}\n{"id": 1, "text": "c d"}\n', encoding="utf-8")
    proc = _cli(["--regex", "[a-z]", "--input", str(source), "--output", str(tmp_path / "o.jsonl")], proxy)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "appears twice" in stderr.decode()
    proc = _cli(["--regex", "[a-z]", "--input", str(source)], proxy)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--output" in stderr.decode()
    assert model_calls(proxy) == 0
