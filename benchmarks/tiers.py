"""Each tier alone, and the chain, on real labelled data: how often, at what cost, how right.

    python benchmarks/tiers.py --sample 20

For SNIPS (one slot model per intent) and US addresses it runs every policy on the same
records and prints one row per (dataset, policy):

- ``valid%``: schema-valid as generated (the winning attempt needed no repair);
- ``+repair%``: valid at all, repairs included;
- ``calls/ok`` and ``tok/ok``: model calls and tokens spent per valid result, failed
  attempts (Instructor's reasks, earlier tiers) included;
- ``p50 s`` / ``p95 s``: wall time per extraction;
- ``F1``: field-level F1 against the gold spans (normalised: case, spaces, edge punctuation);
- ``failures``: the causes of the extractions that produced nothing.

The remote tiers talk to llama-cpp-python's server on the embedded model, started here on a
free loopback port (or ``--base-url``); ``--fault-rate`` puts the fault proxy in between.
Only the public API (``Extractor``, ``Result``) is used to extract; the server and proxy are
test infrastructure.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extract import Extractor, Result  # noqa: E402
from schemas.address import Address  # noqa: E402
from schemas.snips import INTENT_MODELS  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
POLICIES: dict[str, list[str]] = {
    "native": ["native"],
    "instructor": ["instructor"],
    "local": ["local"],
    "chain": ["native", "instructor", "local"],
}
# Attempts that never reached a model: not counted as calls.
_NO_CALL = {"breaker_open", "deadline", "unavailable", "unsupported"}


@dataclass
class Record:
    id: str
    text: str
    spec: Any
    gold: dict[str, Any]


def load(dataset: str, sample: int) -> list[Record]:
    """The first ``sample`` records (SNIPS: round-robin over intents, so all seven appear)."""
    if dataset == "usaddress":
        rows = [json.loads(line) for line in (DATA / "usaddress" / "dev.jsonl").open(encoding="utf-8")]
        return [Record(r["id"], r["text"], Address, r["gold"]) for r in rows[:sample]]
    if dataset == "snips":
        rows = [json.loads(line) for line in (DATA / "snips" / "dev.jsonl").open(encoding="utf-8")]
        by_intent: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_intent.setdefault(r["intent"], []).append(r)
        picked: list[dict[str, Any]] = []
        while len(picked) < sample and any(by_intent.values()):
            for intent in sorted(by_intent):
                if by_intent[intent] and len(picked) < sample:
                    picked.append(by_intent[intent].pop(0))
        return [Record(r["id"], r["text"], INTENT_MODELS[r["intent"]], r["slots"]) for r in picked]
    raise SystemExit(f"unknown dataset {dataset!r}")


_EDGE = re.compile(r"^[\W_]+|[\W_]+$")


def norm(value: Any) -> str:
    return re.sub(r"\s+", " ", _EDGE.sub("", str(value).lower())).strip()


def field_counts(predicted: dict[str, Any], gold: dict[str, Any]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) over (field, value) pairs."""
    tp = fp = 0
    matched: set[str] = set()
    for name, value in predicted.items():
        if value in (None, ""):
            continue
        wanted = gold.get(name)
        options = wanted if isinstance(wanted, list) else [wanted] if wanted is not None else []
        if any(norm(value) == norm(o) for o in options):
            tp += 1
            matched.add(name)
        else:
            fp += 1
    fn = sum(1 for name in gold if name not in matched)
    return tp, fp, fn


@dataclass
class Row:
    dataset: str
    policy: str
    n: int = 0
    valid_as_generated: int = 0
    valid: int = 0
    calls: int = 0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    tp: int = 0
    fp: int = 0
    fn: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def add(self, result: Result, gold: dict[str, Any], seconds: float) -> None:
        self.n += 1
        self.latencies.append(seconds)
        self.calls += sum(
            1 for a in result.attempts if not a.skipped and not (a.error and a.error.type in _NO_CALL)
        )
        self.tokens += result.usage.total_tokens
        predicted: dict[str, Any] = {}
        if result.ok:
            self.valid += 1
            winner = next(a for a in result.attempts if a.ok)
            if not winner.repaired:
                self.valid_as_generated += 1
            value = result.value
            predicted = value.model_dump() if hasattr(value, "model_dump") else dict(value)
        else:
            last = next((a for a in reversed(result.attempts) if a.error), None)
            self.failures[last.error.type if last and last.error else "none"] += 1
        tp, fp, fn = field_counts(predicted, gold)
        self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn

    def cells(self) -> list[str]:
        def pct(k: int) -> str:
            return f"{100 * k / self.n:.0f}" if self.n else "-"

        def per_ok(total: int, digits: int) -> str:
            return f"{total / self.valid:.{digits}f}" if self.valid else "-"

        lat = sorted(self.latencies)
        p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))] if lat else 0.0
        f1 = 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp + self.fp + self.fn else 0.0
        fails = ", ".join(f"{k} {v}" for k, v in self.failures.most_common(3)) or "-"
        return [
            self.dataset, self.policy, str(self.n), pct(self.valid_as_generated), pct(self.valid),
            per_ok(self.calls, 1), per_ok(self.tokens, 0),
            f"{statistics.median(lat):.2f}" if lat else "-", f"{p95:.2f}", f"{f1:.2f}", fails,
        ]

    def to_json(self) -> dict[str, Any]:
        keys = ["dataset", "policy", "n", "valid%", "+repair%", "calls/ok", "tok/ok", "p50_s", "p95_s",
                "F1", "failures"]
        return dict(zip(keys, self.cells(), strict=True))


HEADER = ["dataset", "policy", "n", "valid%", "+repair%", "calls/ok", "tok/ok", "p50 s", "p95 s", "F1",
          "failures"]


def table(rows: list[Row]) -> str:
    lines = [HEADER, *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def endpoint(args: argparse.Namespace, stack: ExitStack) -> str:
    """The base URL to use: given, or a server started here (behind the proxy if asked)."""
    if args.base_url:
        url = args.base_url
    else:
        from extract.providers.server import start_server

        server = start_server(n_threads=args.server_threads)
        stack.callback(server.stop)
        url = server.base_url
        print(f"# server: {server.model_path.name} at {url}", file=sys.stderr)
    if args.fault_rate > 0:
        from extract.testing.fault_proxy import FaultProxy

        proxy = FaultProxy.start(url.removesuffix("/v1"), rate=args.fault_rate, seed=args.seed,
                                 retry_after=0.2, delay_s=args.timeout + 1)
        stack.callback(proxy.stop)
        url = proxy.base_url
        print(f"# fault proxy at {url}, rate {args.fault_rate}, seed {args.seed}", file=sys.stderr)
    return url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=20, help="records per dataset")
    parser.add_argument("--datasets", default="snips,usaddress")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--base-url", default=None, help="use this endpoint instead of starting one")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    policies = [p for p in args.policies.split(",") if p]
    datasets = [d for d in args.datasets.split(",") if d]
    rows: list[Row] = []
    with ExitStack() as stack:
        url = endpoint(args, stack)
        options: dict[str, Any] = {"base_url": url, "timeout_s": args.timeout, "max_retries": 4,
                                   "backoff_initial_s": 0.1, "backoff_max_s": 1.0}
        # Warm up (server's first request, local model load) outside the timings.
        for warm in ("native", "local"):
            if any(warm in POLICIES[p] for p in policies):
                Extractor(tiers=[warm], **options).run("12 Main St, Springfield, IL 62701", Address)
        for dataset in datasets:
            records = load(dataset, args.sample)
            for policy in policies:
                extractor = Extractor(tiers=POLICIES[policy], **options)
                row = Row(dataset, policy)
                for record in records:
                    started = time.perf_counter()
                    result = extractor.run(record.text, record.spec)
                    row.add(result, record.gold, time.perf_counter() - started)
                rows.append(row)
                print(f"# {dataset} {policy}: done", file=sys.stderr, flush=True)
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_json() for r in rows], indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
