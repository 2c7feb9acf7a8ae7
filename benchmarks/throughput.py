"""Batch throughput: documents/s against the real llama.cpp server as concurrency grows, and a cached rerun.

Run: ``uv run python benchmarks/throughput.py [--n 16] [--levels 1,2,4,8] [--threads 1]``

The embedded model is served by llama-cpp-python's OpenAI-compatible server (started here,
as the tests start it) and the native tier extracts the shipped ``Address`` schema from the
first N real usaddress records with ``extract_many``. Each concurrency level runs the same
documents with the cache off, after one warm-up call; then a cache-on pass fills a fresh
cache directory and a second pass is served from it. Figures, not assertions: on 2 cores
shared with other work they move with the machine's load (printed with the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = REPO.parent / "shared" / "data" / "usaddress" / "dev.jsonl"


def timed(texts: list[str], spec: Any, concurrency: int, options: dict[str, Any]) -> tuple[float, list[Any]]:
    from extract import extract_many

    started = time.perf_counter()
    results = extract_many(texts, spec, concurrency=concurrency, **options)
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=16, help="documents per level")
    parser.add_argument("--levels", default="1,2,4,8", help="concurrency levels, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp server threads")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()

    from extract import Extractor
    from extract.providers.server import start_server
    from schemas.address import Address

    texts = [json.loads(line)["text"] for line in DATA.open(encoding="utf-8")][: args.n]
    levels = [int(x) for x in args.levels.split(",")]
    server = start_server(n_threads=args.threads, n_ctx=4096)
    rows: list[tuple[str, int, float, int]] = []
    try:
        options: dict[str, Any] = {"tiers": ["native"], "base_url": server.base_url, "model": "local",
                                   "max_tokens": args.max_tokens, "cache": False,
                                   "timeout_s": 300.0}  # a loaded machine is slow, not faulty
        Extractor(**options).run(texts[0], Address)  # warm-up: the server's first request is slow
        for level in levels:
            seconds, results = timed(texts, Address, level, options)
            rows.append((f"concurrency {level}, no cache", level, seconds, sum(r.ok for r in results)))
        with tempfile.TemporaryDirectory() as cache_dir:
            cached = {**options, "cache": True, "cache_dir": cache_dir}
            level = max(levels)
            seconds, cold = timed(texts, Address, level, cached)
            rows.append((f"concurrency {level}, cache on, cold", level, seconds, sum(r.ok for r in cold)))
            seconds, results = timed(texts, Address, level, cached)
            # Every document that succeeded cold is a hit; a cold failure (not stored) is called again.
            assert all(r.cache_hit for r, c in zip(results, cold, strict=True) if c.ok)
            name = f"concurrency {level}, cache on, rerun ({sum(r.cache_hit for r in results)} hits)"
            rows.append((name, level, seconds, sum(r.ok for r in results)))
    finally:
        server.stop()

    base = args.n / rows[0][2]
    print(f"{args.n} usaddress documents, Address schema, native tier, llama.cpp server with "
          f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f} at the end\n")
    print("| run | docs/s | seconds | valid | speed-up vs concurrency 1 |")
    print("|---|---:|---:|---:|---:|")
    for name, _level, seconds, ok in rows:
        rate = args.n / seconds
        print(f"| {name} | {rate:.2f} | {seconds:.2f} | {ok}/{args.n} | {rate / base:.1f}× |")


if __name__ == "__main__":
    main()
