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

The figures come from ``extract.report`` (the same arithmetic as ``extract bench``, which is
the full benchmark: every policy, schema corpora, resumable, with plots and an HTML page).

The remote tiers talk to llama-cpp-python's server on the embedded model, started here on a
free loopback port (or ``--base-url``); ``--fault-rate`` puts the fault proxy in between.
Only the public API (``Extractor``, ``Result``) is used to extract; the server and proxy are
test infrastructure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extract import Extractor  # noqa: E402
from extract.report import aggregate, rows_for_result, summarise  # noqa: E402
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


def table(rows: list[dict[str, Any]]) -> str:
    """The figures as one Markdown table (the same arithmetic as ``extract bench``'s report)."""
    figures = [run.to_json() for run in aggregate(rows)]
    header = ["dataset", "policy", "n", "valid%", "+repair%", "calls/ok", "tok/ok", "p50 s", "p95 s", "F1",
              "failures"]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f}"

    def num(x: float | None, digits: int) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    lines = [header] + [
        [f["data"], f["policy"], str(f["n"]), pct(f["schema_valid_generated"]), pct(f["schema_valid_after_repair"]),
         num(f["calls_per_valid"], 1), num(f["tokens_per_valid"], 0), num(f["latency_p50_s"], 2),
         num(f["latency_p95_s"], 2), num(f["field_f1"], 2),
         ", ".join(f"{k} {v}" for k, v in sorted(f["failures"].items(), key=lambda kv: -kv[1])[:3]) or "-"]
        for f in figures
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
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
    rows: list[dict[str, Any]] = []
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
                for record in records:
                    started = time.perf_counter()
                    result = extractor.run(record.text, record.spec)
                    rows += rows_for_result(result, data=dataset, schema=record.spec.__name__, policy=policy,
                                            item=record.id, latency_s=time.perf_counter() - started,
                                            gold=record.gold)
                print(f"# {dataset} {policy}: done", file=sys.stderr, flush=True)
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(summarise(rows), indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
