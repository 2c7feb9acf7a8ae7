"""Batch throughput: documents/s as concurrency grows, on the local tier (default) or a llama.cpp server.

Local tier (``--mode local``, the default)::

    uv run python benchmarks/throughput.py [--data usaddress,citations] [--pool 0,6] [--n 16]
        [--levels 1,2,4,8,16] [--slots N] [--group 1,8]

``--group 8`` adds, with examples, a one-at-a-time row with ``examples_group=8``: groups of 8
similar documents share 5 of the 6 examples, in the prompt prefix the local tier evaluates once
per group, and each document adds its own most similar one.

``extract_many`` runs the same N evaluation rows (the first N of ``benchmarks/ablation.py``'s
seeded holdout, so no evaluated row is ever an example) at each concurrency level through one
Extractor, whose local tier decodes the documents in flight together in one llama.cpp batch
(``extract.providers.batch_engine``). ``--pool 6`` adds six worked examples per document,
chosen by similarity from the rows outside the holdout, as ablation's ``sim6``. A first row
runs the same documents one at a time on the single-sequence path (``local_slots=1``): what
concurrency bought before the engine. Per level: documents/s, output tokens/s, per-document
latency p50/p95 (the local attempt's latency, queueing for a slot included), field F1 against
the gold, and how many values are identical to concurrency 1's. Peak RSS, the cores and the
load average are printed with the table.

Server (``--mode server``): the embedded model behind llama-cpp-python's OpenAI-compatible
server and the native tier, the first N usaddress records, then a cached rerun.

Figures, not assertions: on 2 cores shared with other work they move with the machine's load.
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
    parser.add_argument("--mode", choices=["local", "server"], default="local")
    parser.add_argument("--n", type=int, default=16, help="documents per level")
    parser.add_argument("--offset", type=int, default=0,
                        help="local mode: skip this many holdout rows first (rows not looked at while tuning)")
    parser.add_argument("--levels", default="1,2,4,8,16", help="concurrency levels, comma-separated")
    parser.add_argument("--data", default="usaddress,citations", help="local mode: datasets")
    parser.add_argument("--pool", default="0,6", help="local mode: examples per document (0: zero-shot)")
    parser.add_argument("--slots", type=int, default=8,
                        help="local mode: local_slots of the engine rows (the setting's default, 1, is no engine)")
    parser.add_argument("--no-single", action="store_true", help="local mode: skip the one-at-a-time row")
    parser.add_argument("--group", default="1",
                        help="local mode, with examples: examples_group sizes to add as one-at-a-time rows "
                        "(groups of similar documents share k - 1 examples in their prompt prefix)")
    parser.add_argument("--threads", type=int, default=1, help="server mode: llama.cpp server threads")
    parser.add_argument("--max-tokens", type=int, default=96, help="server mode")
    args = parser.parse_args()
    if args.mode == "local":
        local(args)
    else:
        server(args)


def local(args: argparse.Namespace) -> None:
    """The local tier at each concurrency level; see the module docstring."""
    import resource

    from extract import Extractor
    from extract.report.aggregate import field_counts, percentile

    sys.path.insert(0, str(REPO / "benchmarks"))
    from ablation import _gold, pool_for, spec_for, split

    levels = [int(x) for x in args.levels.split(",") if x]  # "": no engine rows
    lines = []
    for dataset in args.data.split(","):
        rows, pool_rows = split(dataset, 200, 0)
        rows = rows[args.offset: args.offset + args.n]
        texts = [str(r["text"]) for r in rows]
        spec = spec_for(rows[0], dataset, "copy")
        pool = pool_for(pool_rows, dataset, rows[0])
        for k in (int(x) for x in args.pool.split(",")):
            options: dict[str, Any] = {"tiers": ["local"], "cache": False}
            if k:
                options.update(examples=pool, examples_k=k, examples_select="similar")
            runs: list[tuple[str, Any]] = []
            if not args.no_single:
                single = Extractor(**options, local_slots=1)
                single.run(texts[0], spec)  # warm-up: the model and the shared prefix
                runs.append(("1, one at a time", timed_with(single, texts, spec, 1)))
            for g in (int(x) for x in args.group.split(",")):
                if k and g > 1:
                    grouped = Extractor(**options, local_slots=1, examples_group=g)
                    grouped.run(texts[0], spec)
                    runs.append((f"1, groups of {g}", timed_with(grouped, texts, spec, 1)))
            extractor = Extractor(**options, local_slots=args.slots)
            extractor.run(texts[0], spec)
            for level in levels:
                runs.append((str(level), timed_with(extractor, texts, spec, level)))
            base_values = [json.dumps(r.value, sort_keys=True, default=str) for r in runs[0][1][1]]
            base_rate = args.n / runs[0][1][0]
            label = f"{dataset}, {'zero-shot' if not k else f'{k} examples'}"
            base_cpu = runs[0][1][2] / args.n
            for name, (seconds, results, cpu) in runs:
                latencies = [sum(a.latency_s or 0.0 for a in r.attempts) for r in results]
                out_tokens = sum(a.usage.output_tokens for r in results for a in r.attempts if a.usage)
                tp = fp = fn = 0
                for r, row in zip(results, rows, strict=True):
                    a, b, c = field_counts(r.value.model_dump() if hasattr(r.value, "model_dump") else r.value,
                                           _gold(row))
                    tp, fp, fn = tp + a, fp + b, fn + c
                f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
                same = sum(json.dumps(r.value, sort_keys=True, default=str) == v
                           for r, v in zip(results, base_values, strict=True))
                rate = args.n / seconds
                lines.append(f"| {label} | {name} | {rate:.2f} | {rate / base_rate:.2f}× | "
                             f"{out_tokens / seconds:.0f} | "
                             f"{percentile(latencies, 50) or 0:.2f} | {percentile(latencies, 95) or 0:.2f} | "
                             f"{cpu / args.n:.2f} | {base_cpu / (cpu / args.n):.2f}× | "
                             f"{f1:.3f} | {same}/{args.n} | {sum(r.ok for r in results)}/{args.n} |")
                print(lines[-1], flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{args.n} documents a level, local tier, embedded model, cache off; {os.cpu_count()} cores; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end; peak RSS {rss:.0f} MiB\n")
    print("| data | concurrency | docs/s | vs first row | output tok/s | p50 s | p95 s | CPU s / doc | "
          "docs per CPU s vs first row | field F1 | same values as first row | ok |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines))


def timed_with(extractor: Any, texts: list[str], spec: Any, concurrency: int) -> tuple[float, list[Any], float]:
    """Wall seconds, the results, and the CPU seconds this process used (every thread).

    Why the CPU seconds: on 2 cores shared with other work the wall time of a level moves
    with the neighbours' load; the CPU time it took moves much less."""
    from extract import extract_many

    started, cpu = time.perf_counter(), _cpu()
    results = extract_many(texts, spec, concurrency=concurrency, extractor=extractor)
    return time.perf_counter() - started, results, _cpu() - cpu


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def server(args: argparse.Namespace) -> None:
    """The native tier against the llama.cpp server, then a cached rerun."""
    from extract import Extractor
    from extract.providers.server import start_server
    from schemas.address import Address

    texts = [json.loads(line)["text"] for line in DATA.open(encoding="utf-8")][: args.n]
    levels = [int(x) for x in args.levels.split(",") if x]  # "": no engine rows
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
