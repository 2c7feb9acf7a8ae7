"""Each tier alone, and the chain, on real labelled data: how often, at what cost, how right.

    python benchmarks/tiers.py --sample 20

For SNIPS (one slot model per intent) and US addresses it runs every policy on the same
records and prints one row per (dataset, policy):

- ``valid%``: schema-valid as generated (the winning attempt needed no repair);
- ``+repair%``: valid at all, repairs included;
- ``calls/ok`` and ``tok/ok``: model calls and tokens spent per valid result, failed
  attempts (Instructor's reasks, earlier tiers) included;
- ``p50 s`` / ``p95 s``: wall time per extraction;
- ``valid%``/``+repair%`` and ``F1`` carry their 95% intervals (Wilson; bootstrap over records);
- ``F1``: micro field F1 against the gold spans, as ``extract.report.scoring`` defines it for
  every benchmark and the report (normalised: case, spaces, edge punctuation);
- ``failures``: the causes of the extractions that produced nothing.

The figures come from ``extract.report`` (the same arithmetic as ``extract bench``, which is
the full benchmark: every policy, schema corpora, resumable, with plots and an HTML page).

``--datasets grammar,regex`` adds the grammar/regex rows (own table): the shipped Lark grammars
(``grammars/*.lark``) on short hand-written requests, and a ZIP-code regex on US addresses,
per tier: parsed (or fully matched) on the first call, at all, right (a ZIP code equal to the
row's label, of the rows that have one), calls and tokens per parsed
result (a grammar rung's one-off probe call included; its tokens are in the attempt's usage), p50 wall time,
and the parsed results that needed a repair (``cut_runaway``: a loop cut at the token limit).

The remote tiers talk to llama-cpp-python's server on the embedded model, started here on a
free loopback port (or ``--base-url``); ``--fault-rate`` puts the fault proxy in between.
Only the public API (``Extractor``, ``Result``) is used to extract; the server and proxy are
test infrastructure.

``--preface N`` puts N characters of a neutral covering message before every record's text
(the gold values are unchanged): a short record inside a longer document, as most real inputs
are. Past 512 characters a string's length bound, which follows the input, is over what
llama.cpp's grammar parser takes, so this is the row that shows what the native tier does with
a long document. The result cache is off: every row is a fresh extraction.
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


# Requests whose answer is a sentence of a shipped grammar (what the model is asked is the
# document; the grammar's header comment tells it the language).
GRAMMAR_TEXTS: dict[str, list[str]] = {
    "arithmetic": ["The area is three times the sum of four and five.", "Half of twelve, minus two.",
                   "The square root of 144 plus 3.", "Ten divided by the sum of two and three."],
    "iso8601": ["The meeting is on March 5th, 2024 at half past two in the afternoon.",
                "The warranty lasts three years and six months.", "Delivery is due on 2023-11-30.",
                "The train leaves at 14:45 UTC."],
    "recipe_quantity": ["Add one and a half cups of flour to the bowl.", "Stir in 2 tbsp olive oil.",
                        "Season with a pinch of salt.", "Crack 3 eggs into the pan."],
    "sql": ["How many customers live in Paris?", "List the names of all products.",
            "What is the largest order total?", "Which customers placed an order over 15?"],
}
ZIP = r"[0-9]{5}(-[0-9]{4})?"
PREFACE = ("Hello, and thank you for your order. We have received your payment, and the parcel will leave our "
           "warehouse within two working days. If anything in this message is not right, reply to it and our team "
           "will correct it before the parcel is sent. Our opening hours are Monday to Friday, nine to five, and "
           "we answer every message within one working day. ")


def preface(text: str, chars: int) -> str:
    """``text`` after ``chars`` characters of ``PREFACE`` (repeated, cut at a word), or as it is."""
    if chars <= 0:
        return text
    words = (PREFACE * (chars // len(PREFACE) + 1))[:chars].rsplit(" ", 1)[0]
    return f"{words}\n\nThe details:\n{text}"


def grammar_records(dataset: str, sample: int) -> list[Record]:
    from extract import Grammar, Regex

    if dataset == "grammar":
        out = []
        for name, texts in GRAMMAR_TEXTS.items():
            grammar = Grammar.from_file(ROOT / "grammars" / f"{name}.lark")
            out += [Record(f"{name}-{i}", text, grammar, {}) for i, text in enumerate(texts)]
        return out[:sample] if sample < len(out) else out
    rows = [json.loads(line) for line in (DATA / "usaddress" / "dev.jsonl").open(encoding="utf-8")]
    zip_code = Regex(ZIP, name="zip_code")
    return [Record(r["id"], r["text"], zip_code, {"value": r["gold"].get("ZipCode")}) for r in rows[:sample]]


def grammar_table(results: list[tuple[str, str, Any, float, str, Any]]) -> str:
    """(dataset, policy, Result, latency, item, gold value or None) -> one Markdown row per
    (dataset, policy), and the items that did not parse. ``right %``: of the items with a gold
    value (the regex rows' ZIP codes), the share whose parse equals it."""
    import statistics

    from extract.report.scoring import matches

    groups: dict[tuple[str, str], list[tuple[Any, float]]] = {}
    golds: dict[tuple[str, str], list[bool]] = {}
    missed: list[str] = []
    for dataset, policy, result, latency, item, gold in results:
        groups.setdefault((dataset, policy), []).append((result, latency))
        if gold is not None:
            golds.setdefault((dataset, policy), []).append(result.ok and matches(result.value, gold))
        if not result.ok:
            missed.append(f"{dataset}/{policy}/{item}")
    lines = ["| dataset | policy | n | parsed 1st call % | parsed % | right % | calls/parsed | tok/parsed | p50 s "
             "| modes | failed calls | repaired |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (dataset, policy), items in groups.items():
        n = len(items)
        right = golds.get((dataset, policy))
        right_pct = f"{100 * sum(right) / len(right):.0f} ({len(right)})" if right else "-"
        calls = tokens = parsed = first = 0
        modes: dict[str, int] = {}
        failed: dict[str, int] = {}
        repaired: dict[str, int] = {}  # parsed results not valid as generated, by repair
        for result, _ in items:
            made = [a for a in result.attempts if not a.skipped]
            probes = [p for a in made for p in a.meta.get("probes", [])]
            calls += len(made) + len(probes)
            tokens += sum(a.usage.total_tokens or a.usage.input_tokens + a.usage.output_tokens for a in made)
            parsed += bool(result.ok)
            first += bool(made) and made[0].ok
            winner = next((a for a in made if a.ok), None)
            if winner is not None and winner.repaired:
                for step in winner.repairs or ["?"]:
                    repaired[step] = repaired.get(step, 0) + 1
            for a in made:
                mode = str(a.meta.get("mode", a.tier))
                modes[mode] = modes.get(mode, 0) + 1
                if a.error is not None:
                    failed[a.error.type] = failed.get(a.error.type, 0) + 1
        p50 = statistics.median(latency for _, latency in items)
        per_call = f"{calls / parsed:.1f}" if parsed else "-"
        per_token = f"{tokens / parsed:.1f}" if parsed else "-"
        lines.append(f"| {dataset} | {policy} | {n} | {100 * first / n:.0f} | {100 * parsed / n:.0f} | {right_pct} "
                     f"| {per_call} "
                     f"| {per_token} | {p50:.2f} | {', '.join(f'{k} {v}' for k, v in sorted(modes.items()))} "
                     f"| {', '.join(f'{k} {v}' for k, v in sorted(failed.items())) or '-'} "
                     f"| {', '.join(f'{k} {v}' for k, v in sorted(repaired.items())) or '-'} |")
    if missed:
        lines.append(f"\nnot parsed: {', '.join(missed)}")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    """The figures as one Markdown table (the same arithmetic as ``extract bench``'s report)."""
    figures = [run.to_json() for run in aggregate(rows)]
    header = ["dataset", "policy", "n", "valid%", "+repair%", "calls/ok", "tok/ok", "p50 s", "p95 s", "F1",
              "failures"]

    def pct(f: dict[str, Any], key: str) -> str:
        x, ci = f[key], f["ci95"].get(key)
        return "-" if x is None else f"{100 * x:.0f}" + (f" [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]" if ci else "")

    def num(x: float | None, digits: int, ci: list[float] | None = None) -> str:
        return "-" if x is None else f"{x:.{digits}f}" + (f" [{ci[0]:.{digits}f}-{ci[1]:.{digits}f}]" if ci else "")

    lines = [header] + [
        [f["data"], f["policy"], str(f["n"]), pct(f, "schema_valid_generated"), pct(f, "schema_valid_after_repair"),
         num(f["calls_per_valid"], 1), num(f["tokens_per_valid"], 0), num(f["latency_p50_s"], 2),
         num(f["latency_p95_s"], 2), num(f["field_f1"], 2, f["ci95"].get("field_f1")),
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
    # A grammar call on a one-thread server on 2 shared cores runs past 30 s (measured: two SQL
    # calls timed out at load ~9.5 and the breaker opened); the row should measure the grammar.
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--server-threads", type=int, default=1)
    parser.add_argument("--grammar-max-tokens", type=int, default=64,
                        help="output token cap for the grammar/regex rows")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--grammar-rows", type=Path, default=None,
                        help="write the grammar/regex rows here: a JSON line per record (value, gold, prompt version)")
    parser.add_argument("--preface", type=int, default=0,
                        help="characters of a neutral message put before each record's text")
    args = parser.parse_args(argv)

    policies = [p for p in args.policies.split(",") if p]
    datasets = [d for d in args.datasets.split(",") if d]
    rows: list[dict[str, Any]] = []
    grammar_results: list[tuple[str, str, Any, float, str]] = []
    with ExitStack() as stack:
        url = endpoint(args, stack)
        options: dict[str, Any] = {"base_url": url, "timeout_s": args.timeout, "max_retries": 4,
                                   "backoff_initial_s": 0.1, "backoff_max_s": 1.0, "cache": False}
        # Warm up (server's first request, local model load) outside the timings.
        for warm in ("native", "local"):
            if any(warm in POLICIES[p] for p in policies):
                Extractor(tiers=[warm], **options).run("12 Main St, Springfield, IL 62701", Address)
        for dataset in datasets:
            if dataset in ("grammar", "regex"):
                records = grammar_records(dataset, args.sample)
                for policy in policies:
                    extractor = Extractor(tiers=POLICIES[policy], **{**options, "max_tokens": args.grammar_max_tokens})
                    for record in records:
                        started = time.perf_counter()
                        result = extractor.run(record.text, record.spec)
                        latency = time.perf_counter() - started
                        grammar_results.append((dataset, policy, result, latency, record.id, record.gold.get("value")))
                        if args.grammar_rows is not None:
                            winner = next((a for a in reversed(result.attempts) if a.ok), None)
                            with args.grammar_rows.open("a", encoding="utf-8") as sink:
                                sink.write(json.dumps({
                                    "data": dataset, "policy": policy, "item": record.id, "text": record.text,
                                    "value": result.value if result.ok else None, "gold": record.gold.get("value"),
                                    "ok": result.ok, "copy_from_input": extractor.settings.copy_from_input,
                                    "prompt_version": winner.prompt_version if winner else None,
                                    "tokens": sum(a.usage.total_tokens for a in result.attempts),
                                    "latency_s": round(latency, 3)}, ensure_ascii=False, default=str) + "\n")
                    print(f"# {dataset} {policy}: done", file=sys.stderr, flush=True)
                continue
            records = load(dataset, args.sample)
            for policy in policies:
                extractor = Extractor(tiers=POLICIES[policy], **options)
                for record in records:
                    started = time.perf_counter()
                    result = extractor.run(preface(record.text, args.preface), record.spec)
                    rows += rows_for_result(result, data=dataset, schema=record.spec.__name__, policy=policy,
                                            item=record.id, latency_s=time.perf_counter() - started,
                                            gold=record.gold)
                print(f"# {dataset} {policy}: done", file=sys.stderr, flush=True)
    if rows:
        print(table(rows))
    if grammar_results:
        print(grammar_table(grammar_results))
    if args.json is not None:
        args.json.write_text(json.dumps(summarise(rows), indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
