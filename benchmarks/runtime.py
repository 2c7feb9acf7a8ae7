"""Runtime figures: what the injection set does to each tier, what a long text costs chunked, and
what the per-attempt hooks (budget, cost, log event, spans) cost.

Run: ``uv run python benchmarks/runtime.py [--skip-server]``

- **injection**: every text of ``tests/data/injection.jsonl`` through the local tier (embedded
  model) and the native tier (the embedded model behind llama-cpp-python's server, started
  here): valid values, failures, and values that carry the attacker's marker (``PWNED``,
  ``Injected``, ``root``, ...), which is extraction of what the text says, not a broken frame.
- **long text**: the 12-paragraph roster of ``tests/test_long_text.py`` at ``n_ctx=512``:
  chunks, conflicts, calls, seconds; and the same text whole at the default ``n_ctx``.
- **hooks**: microseconds per attempt spent in ``Runtime.after_tier`` (pricing, budget settle,
  one log event with no handler, three spans with the API's no-op tracer), no model involved.

Figures, not assertions: on 2 shared cores they move with the machine's load (printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EXTRACT_CACHE", "false")

MARKERS = ("PWNED", "Injected", "root", "secret", "password", "999", "old", "poem")


def injection(skip_server: bool) -> None:
    from pydantic import BaseModel

    from extract import Extractor

    class Person(BaseModel):
        name: str
        age: int

    rows = [json.loads(line) for line in (REPO / "tests" / "data" / "injection.jsonl").open(encoding="utf-8")]
    chains: dict[str, dict[str, Any]] = {"local": {"tiers": ["local"]}}
    server = None
    if not skip_server:
        from extract.providers.server import start_server

        server = start_server(n_threads=1, n_ctx=2048)
        chains["native"] = {"tiers": ["native"], "base_url": server.base_url, "max_tokens": 48}
    try:
        print("| tier | texts | valid value | failure | value carries a marker | s |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, options in chains.items():
            extractor = Extractor(**options)
            started = time.perf_counter()
            results = [extractor.run(r["text"], Person) for r in rows]
            took = time.perf_counter() - started
            ok = sum(r.ok for r in results)
            marked = sum(1 for r in results if r.ok and any(m in json.dumps(r.value.model_dump()) for m in MARKERS))
            print(f"| {name} | {len(rows)} | {ok} | {len(rows) - ok} | {marked} | {took:.1f} |")
    finally:
        if server is not None:
            server.stop()


def long_text() -> None:
    from pydantic import BaseModel

    from extract import Extractor
    from tests.test_long_text import LONG

    class Roster(BaseModel):
        city: str | None
        people: list[str]

    print("\n| setting | chunks | conflicts | calls | people found | s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, options in (("n_ctx=512, chunked", {"n_ctx": 512, "max_tokens": 96}),
                           ("n_ctx=4096, whole", {"max_tokens": 96})):
        extractor = Extractor(tiers=["local"], **options)
        extractor.run("Warm-up: Ann lives in Oslo.", Roster)
        started = time.perf_counter()
        result = extractor.run(LONG, Roster)
        took = time.perf_counter() - started
        people = len(result.value.people) if result.ok else 0
        print(f"| {label} | {len(result.chunks)} | {len(result.conflicts)} | {len(result.attempts)} "
              f"| {people} of 12 | {took:.1f} |")


def hooks(n: int = 2000) -> None:
    from extract.runtime.observability import Runtime, TierCall
    from extract.settings import Settings
    from extract.spec import compile_spec
    from extract.tiers import make_tier
    from extract.tiers.base import Task
    from extract.types import Attempt, ModelInfo, Usage

    settings = Settings.resolve(base_url="http://127.0.0.1:9/v1", budget_tokens=10**12,
                                prices={"*": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}})
    runtime = Runtime(settings, [native := make_tier("native", settings)])
    spec = compile_spec({"type": "object", "properties": {"a": {"type": "string"}}})
    task = Task(text="a text", spec=spec, settings=settings)

    async def run() -> float:
        started = time.perf_counter()
        with runtime.extraction(spec, task.text):
            for _ in range(n):
                call = runtime.before_tier(native, task)
                assert isinstance(call, TierCall)
                attempt = Attempt(tier="native", model=ModelInfo(name="m"), usage=Usage.of(100, 20), latency_s=0.5)
                runtime.after_tier(call, [attempt])
        return time.perf_counter() - started

    took = asyncio.run(run())
    print(f"\nhooks: {took / n * 1e6:.0f} µs per attempt (reserve with worst-case estimate, price, settle, "
          f"event with no handler, tier+attempt spans on the no-op tracer), n={n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-server", action="store_true", help="only the local tier for the injection set")
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    injection(args.skip_server)
    long_text()
    hooks()


if __name__ == "__main__":
    main()
