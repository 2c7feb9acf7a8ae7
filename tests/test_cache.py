"""The result cache: a repeated extraction issues no model call, on disk and on a real Redis.

Calls are counted by the real fault proxy in front of the real llama.cpp server (HTTP 200
completions delivered); Redis is Debian's ``redis-server``, started on a free loopback port in a
temporary directory for the session and stopped after it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from extract import ConfigError, Extractor, extract_many
from extract.providers.server import free_port
from extract.runtime import cache as cache_module
from extract.runtime.cache import (
    NEUTRAL_SETTINGS,
    PACKAGE_ROOT,
    cache_key,
    code_digest,
    model_identity,
    source_digest,
)
from extract.spec import compile_spec
from extract.testing.fault_proxy import FaultProxy

REPO = Path(__file__).resolve().parent.parent
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}}, "required": ["city"],
        "additionalProperties": False}
TEXTS = ["I live in Oslo.", "We moved to Rome.", "Greetings from Lyon."]


class Place(BaseModel):
    city: str = Field(max_length=24)



async def _key(chain: Extractor, spec: Any, text: str) -> str:
    """The key ``chain`` would look up: the cache receives its settings, tiers and pool identity."""
    pool = chain.examples.identity() if chain.examples is not None else None
    return await cache_key(spec, text, settings=chain.settings, tiers=chain.tiers, examples=pool)

def options(proxy: FaultProxy, tmp: Path, **extra: Any) -> dict[str, Any]:
    return {"tiers": ["native"], "base_url": proxy.base_url, "model": "local", "max_tokens": 12,
            "backoff_initial_s": 0.01, "cache": True, "cache_dir": tmp, **extra}


def model_calls(proxy: FaultProxy) -> int:
    return int(proxy.stats()["status"].get("200", 0))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        pytest.fail("redis-server is missing: apt-get install redis-server (CI installs it)")
    port = free_port("127.0.0.1")
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on port {port}")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_second_run_is_served_from_disk_without_a_model_call(proxy: FaultProxy, tmp_path: Path) -> None:
    first = extract_many(TEXTS, Place, **options(proxy, tmp_path))
    calls = model_calls(proxy)
    assert calls == len(TEXTS) and all(r.ok and not r.cache_hit for r in first)
    second = extract_many(TEXTS, Place, **options(proxy, tmp_path))
    assert model_calls(proxy) == calls  # not one call
    assert all(r.cache_hit for r in second)
    for a, b in zip(first, second, strict=True):
        assert isinstance(b.value, Place) and b.value == a.value and b.tier == a.tier
        (hit,) = b.attempts
        assert hit.tier == "cache" and hit.meta["tier"] == "native" and hit.raw == a.attempts[-1].raw
        assert b.usage.total_tokens == 0 and hit.meta["saved_usage"]["total_tokens"] == a.usage.total_tokens
    assert b.to_json_dict()["cache_hit"] is True
    # cache=False neither reads nor writes; a setting that changes output is a different key.
    extract_many(TEXTS[:1], Place, **options(proxy, tmp_path, cache=False))
    extract_many(TEXTS[:1], Place, **options(proxy, tmp_path, max_tokens=13))
    assert model_calls(proxy) == calls + 2
    # A setting that does not change output (a timeout) still hits.
    extract_many(TEXTS[:1], Place, **options(proxy, tmp_path, timeout_s=33.0))
    assert model_calls(proxy) == calls + 2


def test_failures_are_not_stored(proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.reset(rate=1.0, faults=["400"])
    (failed,) = extract_many(TEXTS[:1], CITY, **options(proxy, tmp_path))
    assert not failed.ok and failed.attempts[-1].error.type == "provider_error"  # type: ignore[union-attr]
    proxy.reset()
    (fresh,) = extract_many(TEXTS[:1], CITY, **options(proxy, tmp_path))
    assert fresh.ok and not fresh.cache_hit and model_calls(proxy) == 1


def test_key_covers_what_changes_output_and_nothing_else(tmp_path: Path) -> None:
    base = {"tiers": ["native"], "base_url": "http://127.0.0.1:9/v1", "model": "m", "cache_dir": tmp_path}
    spec = compile_spec(CITY)

    def key(text: str = "I live in Oslo.", spec: Any = spec, **changes: Any) -> str:
        return asyncio.run(_key(Extractor(**{**base, **changes}), spec, text))

    same = key()
    assert same == key() and len(same) == 64
    assert key(timeout_s=5.0) == same and key(max_retries=0) == same and key(api_key="sk-x") == same
    changed = {
        "text": key("I live in Rome."),
        "spec": key(spec=compile_spec({**CITY, "properties": {"city": {"type": "string"}}})),
        "model class": key(spec=compile_spec(Place)),
        "served model": key(model="other"),
        "endpoint": key(base_url="http://127.0.0.1:10/v1"),
        "tiers": key(tiers=["native", "instructor"]),
        "max_tokens": key(max_tokens=7),
        "examples": key(examples=[("I live in Nice.", {"city": "Nice"})]),
        "examples_k": key(examples=[("I live in Nice.", {"city": "Nice"}), ("Bonn!", {"city": "Bonn"})], examples_k=2),
    }
    assert len({same, *changed.values()}) == len(changed) + 1, changed
    assert {"timeout_s", "api_key", "cache_dir"} <= NEUTRAL_SETTINGS


def test_a_change_to_the_rules_changes_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A span-form rule edited without a prompt-version bump must not be served old results."""
    copy = tmp_path / "extract"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_digest(copy) == code_digest()
    rules = copy / "spec" / "span_copy.py"
    rules.write_text(rules.read_text(encoding="utf-8") + "\n# a changed rule\n", encoding="utf-8")
    edited = source_digest(copy)
    (copy / "spec" / "new_rules.py").write_text("", encoding="utf-8")
    assert len({code_digest(), edited, source_digest(copy)}) == 3
    spec = compile_spec(CITY)
    extractor = Extractor(tiers=["native"], base_url="http://127.0.0.1:9/v1", model="m", cache_dir=tmp_path)
    before = asyncio.run(_key(extractor, spec, "I live in Oslo."))
    monkeypatch.setattr(cache_module, "code_digest", lambda: edited)
    assert asyncio.run(_key(extractor, spec, "I live in Oslo.")) != before


def test_local_model_key_names_the_weights(tmp_path: Path) -> None:
    from extract.providers.local_model import embedded_model_path, file_digest

    chain = Extractor(tiers=["local"], cache_dir=tmp_path)
    spec = compile_spec(CITY)
    key = asyncio.run(_key(chain, spec, "I live in Oslo."))
    digest = file_digest(embedded_model_path())
    assert digest.startswith("sha256:")
    assert asyncio.run(model_identity(chain.tiers)) == [["local", "llamacpp", digest]]
    smaller = Extractor(tiers=["local"], n_ctx=1024, cache_dir=tmp_path)
    assert key != asyncio.run(_key(smaller, spec, "I live in Oslo."))


def test_redis_cache_is_shared_between_extractors(proxy: FaultProxy, tmp_path: Path, redis_url: str) -> None:
    import redis

    machine_a = Extractor(**options(proxy, tmp_path / "a", cache_url=redis_url))
    machine_b = Extractor(**options(proxy, tmp_path / "b", cache_url=redis_url))
    first = extract_many(TEXTS, CITY, extractor=machine_a)
    calls = model_calls(proxy)
    assert calls == len(TEXTS) and all(r.ok for r in first)
    second = extract_many(TEXTS, CITY, extractor=machine_b)
    assert model_calls(proxy) == calls and all(r.cache_hit for r in second)
    assert [r.value for r in second] == [r.value for r in first]
    assert second[0].attempts[0].meta["store"] == redis_url
    client = redis.Redis.from_url(redis_url)
    try:
        assert len(client.keys("extract:*")) >= len(TEXTS)
    finally:
        client.close()
    assert not (tmp_path / "b" / "results").exists()  # nothing went to disk
    with pytest.raises(ConfigError, match="redis://"):
        Extractor(**options(proxy, tmp_path, cache_url="http://127.0.0.1:1"))


def test_cli_batch_uses_the_cache_dir_and_no_cache_skips_it(proxy: FaultProxy, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    schema = tmp_path / "city.json"
    schema.write_text(json.dumps(CITY), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EXTRACT_BASE_URL": proxy.base_url, "EXTRACT_MODEL": "local",
           "EXTRACT_MAX_TOKENS": "12", "EXTRACT_CACHE": "true", "EXTRACT_CACHE_DIR": str(tmp_path / "cache")}

    def run(out: str, *extra: str) -> dict[str, Any]:
        proc = subprocess.run([sys.executable, "-m", "extract", "run", "--schema", str(schema), "--tier", "native",
                               "--input", str(source), "--output", str(tmp_path / out), *extra],
                              cwd=REPO, env=env, capture_output=True, timeout=180, check=False)
        assert proc.returncode == 0, proc.stderr.decode()
        summary: dict[str, Any] = json.loads(proc.stdout)
        return summary

    extract_many(TEXTS, CITY, **options(proxy, tmp_path / "cache"))  # fills the folder the CLI is pointed at
    assert model_calls(proxy) == len(TEXTS)
    assert run("b.jsonl")["cache_hits"] == len(TEXTS) and model_calls(proxy) == len(TEXTS)
    assert run("c.jsonl", "--no-cache")["cache_hits"] == 0 and model_calls(proxy) == 2 * len(TEXTS)
    assert (tmp_path / "cache" / "results").is_dir()
