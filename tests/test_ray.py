"""Scale-out: ``extract_many(engine="ray")`` on a real local Ray instance equals the local run.

One Ray instance for the module (its start is the cost here: ~10-30 s on 2 shared cores),
two CPUs, no dashboard; shut down at the end. Calls go through the real fault proxy to the
real llama.cpp server, from Ray's worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, Field

from extract import extract_many
from extract.testing.fault_proxy import FaultProxy

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed")


class Place(BaseModel):
    city: str = Field(max_length=24)


TEXTS: list[str | bytes] = ["I live in Oslo.", "We moved to Rome.", "", "Greetings from Lyon.", b"\xff bad bytes",
                            "Our office is in Madrid."]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def options(proxy: FaultProxy) -> dict[str, Any]:
    return {"tiers": ["native"], "base_url": proxy.base_url, "model": "local", "max_tokens": 12,
            "backoff_initial_s": 0.01, "cache": False}


def outcome(results: list[Any]) -> list[tuple[Any, ...]]:
    return [(r.ok, r.tier, r.value, [(a.tier, a.error.type if a.error else None, a.raw) for a in r.attempts])
            for r in results]


def test_ray_run_equals_the_local_run(ray_cluster: None, proxy: FaultProxy) -> None:
    local = extract_many(TEXTS, Place, concurrency=2, **options(proxy))
    local_calls = proxy.stats()["status"].get("200", 0)
    on_ray = extract_many(TEXTS, Place, concurrency=2, engine="ray", **options(proxy))
    assert len(on_ray) == len(TEXTS)
    assert outcome(on_ray) == outcome(local)  # values, tiers, raw outputs and failure causes, in order
    assert all(isinstance(r.value, Place) for r in on_ray if r.ok)
    assert [r.attempts[0].error.type for r in on_ray if not r.ok] == ["bad_input", "bad_input"]  # type: ignore[union-attr]
    assert proxy.stats()["status"].get("200", 0) == 2 * local_calls  # the work really ran again, on Ray
