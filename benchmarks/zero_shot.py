"""Zero-shot accuracy on schemas we did not tune: dataset x schema variant x lever.

    python benchmarks/zero_shot.py --rows tune --role dev --lever default --sample 30
    python benchmarks/zero_shot.py --rows report --role heldout --lever default --sample 60
    python benchmarks/zero_shot.py --table [--out DIR]          # print what is already run
    python benchmarks/zero_shot.py --tier native --rows report --role heldout --lever nocopy --lever default

``--tier native`` runs the native tier against the embedded model behind llama-cpp-python's
server, started here on loopback (as ``benchmarks/grounding.py --tier native``), and writes
under ``results/zero_shot/native`` unless ``--out`` says otherwise; its ``nocopy`` lever is
span-copy off, ``default`` span-copy as shipped (sent where the server enforces the schema).

The schemas are ``benchmarks/schema_variants.py``: four per dataset (usaddress, SNIPS
AddToPlaylist and GetWeather, citations), written as users write them, with no patterns,
bounds, examples or flags. Only this benchmark maps their fields to the gold labels.

Rows: each dataset (each SNIPS intent) is shuffled once with ``--seed``; the first 100 rows
(50 of a SNIPS intent's 100) are the **report** rows, never looked at while tuning; as many
next ones are the **tune** rows.
Levers are tuned on ``--rows tune --role dev``; the figures to quote are ``--rows report``,
and for what a user's schema gets, ``--role heldout`` (variants not run while tuning).

A lever is a set of Extractor options on top of the project's defaults (``default`` is the
defaults as shipped, so its row is what a user gets). Each row of ``OUT/rows.jsonl`` is one
record: the predicted and gold answers in the variant's shape, the field counts, validity,
tokens and seconds; re-running skips what is done. Field F1 is micro over the variant's
mapped leaf fields (``extract.report.scoring.field_counts``: case, whitespace and edge
punctuation do not count); exact match is every mapped field right and nothing extra.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from schema_variants import VARIANTS, Variant, gold_for  # noqa: E402

from extract import Extractor  # noqa: E402
from extract.front.bench import log_command  # noqa: E402
from extract.report.confidence import auroc, precision_at_coverage  # noqa: E402
from extract.report.scoring import field_counts, field_tally, leaves  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FILES = {"usaddress": "usaddress/dev.jsonl", "snips": "snips/dev.jsonl", "citations": "citations/dev.jsonl"}
REPORT_ROWS = 100

# Extractor options of each lever, on top of the defaults. "default" is what a user gets.
LEVERS: dict[str, dict[str, Any]] = {
    "default": {},
    "nocopy": {"copy_from_input": False},
    # Scored span selection (extract.spec.span_select), the default since it was measured here
    # ("auto" picks it for these unmarked schemas), and the greedy decoder it replaced: the
    # "default" rows in results/zero_shot were recorded before it and equal "greedy".
    "scored": {"span_select": "scored"},
    "greedy": {"span_select": "greedy"},
    # Scored selection with the opt-in per-word length bonus (benchmarks/span_select_tune.py
    # sweep --grid pmi chose 0.25 on the dev variants).
    "scored-len0.25": {"span_select": "scored", "span_select_length_bonus": 0.25},
    "copy-allow": {"copy_from_input": True, "span_reuse": "allow"},
    "copy-disjoint": {"copy_from_input": True, "span_reuse": "disjoint"},
    "copy-allow-noshape": {"copy_from_input": True, "span_reuse": "allow", "infer_shapes": False},
    "copy-disjoint-noshape": {"copy_from_input": True, "span_reuse": "disjoint", "infer_shapes": False},
    "copy-distinct-noshape": {"copy_from_input": True, "span_reuse": "distinct", "infer_shapes": False},
    "copy-disjoint-pen2-noshape": {"copy_from_input": True, "span_reuse": "disjoint", "infer_shapes": False,
                                   "null_penalty": 2.0},
    "copy-order-allow-noshape": {"copy_from_input": True, "copy_in_order": True, "span_reuse": "allow",
                                 "infer_shapes": False},
}


def rows_for(variant: Variant, which: str, seed: int) -> list[dict[str, Any]]:
    """The report or tune rows of a variant's dataset (its SNIPS intent only), in a fixed order."""
    rows = [json.loads(line) for line in (DATA / FILES[variant.dataset]).read_text(encoding="utf-8").splitlines()
            if line]
    if variant.intent is not None:
        rows = [r for r in rows if r.get("intent") == variant.intent]
    random.Random(seed).shuffle(rows)
    half = min(REPORT_ROWS, len(rows) // 2)  # a SNIPS intent has 100 rows: 50 and 50
    return rows[:half] if which == "report" else rows[half:2 * half]


def labels_of(row: dict[str, Any]) -> dict[str, Any]:
    return dict(row.get("gold") or row.get("slots") or {})


def mapped(value: Any, variant: Variant) -> Any:
    """Only the variant's mapped leaves of a predicted answer (a field the benchmark cannot
    score, such as a computed one, neither helps nor hurts)."""
    if not isinstance(value, dict):
        return value
    keep = set(variant.gold)
    out: dict[str, Any] = {}
    for path, leaf in leaves(value).items():
        if path in keep:
            node = out
            *parents, last = path.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = leaf
    return out


def record(extractor: Extractor, variant: Variant, lever: str, which: str, row: dict[str, Any]) -> dict[str, Any]:
    """One scored row; a native row also says what the server was sent (rung, span-copy)."""
    gold = gold_for(variant, labels_of(row))
    started = time.perf_counter()
    result = extractor.run(str(row["text"]), variant.schema)
    seconds = time.perf_counter() - started
    value = result.value if result.ok else None
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    pred = mapped(value, variant)
    tp, fp, fn = field_counts(pred, gold)
    usage = result.usage
    # The model's confidence in each mapped value it returned (Attempt.meta["confidence"] is
    # keyed by JSON pointer): what the confidence table reads.
    said = (result.attempts[-1].meta.get("confidence") or {}) if result.ok and result.attempts else {}
    confidence = {path: said.get("/" + path.replace(".", "/")) for path, leaf in leaves(pred).items()
                  if leaf is not None}
    return {
        "variant": variant.name, "dataset": variant.dataset, "intent": variant.intent, "role": variant.role,
        "lever": lever, "rows": which, "id": row["id"], "text": row["text"],
        "pred": pred, "gold": gold, "tp": tp, "fp": fp, "fn": fn, "confidence": confidence,
        "valid": result.ok, "tier": result.tier,
        "prompt_version": result.attempts[-1].prompt_version if result.attempts else None,
        "tokens": usage.input_tokens + usage.output_tokens, "output_tokens": usage.output_tokens,
        "seconds": round(seconds, 3),
        "raw": result.attempts[-1].raw if result.attempts else None,
        **({key: result.attempts[-1].meta[key] for key in ("mode", "span_copy", "span_copy_off", "schema_dropped",
                                                            "widened_for_server")
            if key in result.attempts[-1].meta} if result.attempts and result.tier != "local" else {}),
    }


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rows.jsonl"
    done: set[tuple[str, ...]] = set()
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            done.add((r["variant"], r["lever"], r["rows"], r["id"]))
    chosen = [v for v in VARIANTS if (args.role == "all" or v.role == args.role)
              and (not args.variant or v.name in args.variant)
              and (not args.data or v.dataset in args.data)]
    remote: dict[str, Any] = {}
    server = None
    if args.tier == "native":
        from extract.providers.server import start_server

        server = start_server(n_threads=args.threads, n_ctx=4096)
        # A constrained call on a one-thread server on 2 shared cores can run past the default
        # 30 s under load (benchmarks/grounding.py): the rows should measure the model.
        remote = {"base_url": server.base_url, "timeout_s": 300.0, "breaker_threshold": 1000}
    try:
        _run_levers(args, chosen, path, done, remote)
    finally:
        if server is not None:
            server.stop()
    log_command(out, "benchmarks/zero_shot.py", sys.argv[1:])


def _run_levers(args: argparse.Namespace, chosen: list[Variant], path: Path, done: set[tuple[str, ...]],
                remote: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as sink:
        for lever in args.lever:
            for variant in chosen:
                extractor = Extractor(tiers=[args.tier], cache=False, n_threads=args.threads, **remote,
                                      **LEVERS[lever])
                started = time.perf_counter()
                n = 0
                for row in rows_for(variant, args.rows, args.seed)[: args.sample]:
                    key = (variant.name, lever, args.rows, row["id"])
                    if key in done:
                        continue
                    sink.write(json.dumps(record(extractor, variant, lever, args.rows, row), ensure_ascii=False)
                               + "\n")
                    sink.flush()
                    done.add(key)
                    n += 1
                print(f"{variant.name} {lever} {args.rows}: {n} new, {time.perf_counter() - started:.0f} s",
                      file=sys.stderr)


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def table(out: Path, sample: int | None = None) -> str:
    """Markdown: one line per (rows, variant, lever), then per (rows, dataset, lever) over variants."""
    path = out / "rows.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    order = {v.name: i for i, v in enumerate(VARIANTS)}
    for r in rows:
        groups[(r["rows"], r["variant"], r["lever"])].append(r)
    lines = ["| rows | variant | role | lever | n | field F1 | exact | valid | tokens/rec | s/rec |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    per_data: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for key in sorted(groups, key=lambda k: (k[0], order.get(k[1], 99), k[2])):
        items = groups[key][:sample] if sample else groups[key]
        tp, fp, fn = (sum(int(r[k]) for r in items) for k in ("tp", "fp", "fn"))
        exact = sum(1 for r in items if r["fp"] == 0 and r["fn"] == 0) / len(items)
        valid = sum(1 for r in items if r["valid"]) / len(items)
        tokens = sum(int(r["tokens"]) for r in items) / len(items)
        secs = sum(float(r["seconds"]) for r in items) / len(items)
        lines.append(f"| {key[0]} | {key[1]} | {items[0]['role']} | {key[2]} | {len(items)} | {_f1(tp, fp, fn):.3f} | "
                     f"{exact:.2f} | {100 * valid:.0f}% | {tokens:.0f} | {secs:.2f} |")
        dataset = items[0]["intent"] or items[0]["dataset"]
        per_data[(key[0], dataset, key[2])].extend(items)
    lines += ["", "| rows | dataset | lever | n | field F1 (pooled over variants) | worst variant F1 |",
              "|---|---|---|---|---|---|"]
    for key in sorted(per_data):
        items = per_data[key]
        tp, fp, fn = (sum(int(r[k]) for r in items) for k in ("tp", "fp", "fn"))
        by_variant: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for r in items:
            c = by_variant[r["variant"]]
            c[0] += r["tp"]
            c[1] += r["fp"]
            c[2] += r["fn"]
        worst = min(_f1(*c) for c in by_variant.values())
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {len(items)} | {_f1(tp, fp, fn):.3f} | {worst:.3f} |")
    return "\n".join(lines)


def confidence_table(out: Path) -> str:
    """Markdown: per (rows, variant, lever) with recorded confidences, whether the model's
    confidence tells a right value from a wrong one (``extract.report.confidence``)."""
    path = out / "rows.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    groups: dict[tuple[str, str, str], tuple[list[float], list[bool]]] = defaultdict(lambda: ([], []))
    for r in rows:
        if "confidence" not in r:
            continue
        right = {k for k, (tp, _, _) in field_tally(r["pred"], r["gold"]).items() if tp}
        scores, labels = groups[(r["rows"], r["variant"], r["lever"])]
        for leaf, conf in r["confidence"].items():
            if conf is not None:
                scores.append(float(conf))
                labels.append(leaf in right)
    lines = ["| rows | variant | lever | values | precision | AUROC | precision, surest 50% |",
             "|---|---|---|---|---|---|---|"]
    for key in sorted(groups):
        scores, labels = groups[key]
        if not scores:
            continue
        area = auroc(scores, labels)
        half = precision_at_coverage(scores, labels, 0.5)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {len(scores)} | {sum(labels) / len(labels):.2f} | "
                     f"{'–' if area is None else f'{area:.2f}'} | {'–' if half is None else f'{half:.2f}'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lever", action="append", choices=list(LEVERS), help="lever (repeat); default: default")
    parser.add_argument("--role", choices=["dev", "heldout", "all"], default="dev")
    parser.add_argument("--rows", choices=["tune", "report"], default="tune")
    parser.add_argument("--variant", action="append", help="only these variants (repeat)")
    parser.add_argument("--data", action="append", choices=list(FILES), help="only these datasets (repeat)")
    parser.add_argument("--sample", type=int, default=30, help="rows per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    parser.add_argument("--tier", choices=["local", "native"], default="local",
                        help="native: the embedded model behind llama-cpp-python's server, started here")
    parser.add_argument("--out", help="default: results/zero_shot (local), results/zero_shot/native (native)")
    parser.add_argument("--table", action="store_true", help="only print the table of what is already run")
    args = parser.parse_args()
    args.lever = args.lever or ["default"]
    results = ROOT / "benchmarks" / "results" / "zero_shot"
    args.out = args.out or str(results / "native" if args.tier == "native" else results)
    if not args.table:
        run(args)
    print(table(Path(args.out)))
    confidences = confidence_table(Path(args.out))
    if confidences.count("\n") > 1:  # rows recorded with their confidences
        print("\n" + confidences)


if __name__ == "__main__":
    main()
