"""Tune scored span selection's decision on the dev variants' tune rows, without re-decoding.

    python benchmarks/span_select_tune.py score --sample 20 [--variant V ...]   # the model's scores
    python benchmarks/span_select_tune.py sweep [--sample N] [--out FILE]        # F1 per rank x null bias

``score`` runs the product's ``LlamaCppModel.score_spans`` on each record (the prompt and
candidates exactly as the local tier builds them) and stores every field's scores in
``benchmarks/results/zero_shot/span_scores.jsonl``; ``sweep`` then replays the joint decision
under each ranking (``share``: the span's share of its field's options, the one
``extract.spec.span_select.decide`` uses; ``margin``: its margin over null; ``raw``: its
log-probability) and null bias, and prints field F1 per variant. Only ``--rows tune`` of
``--role dev`` variants are meant for this: the held-out variants are run once by
``benchmarks/zero_shot.py --rows report --role heldout``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from schema_variants import VARIANTS, gold_for  # noqa: E402
from zero_shot import labels_of, rows_for  # noqa: E402

from extract.report.scoring import FieldCounts, field_counts  # noqa: E402
from extract.spec.span_select import Rank, decide, queries_for  # noqa: E402
from extract.types import FieldScores, SpanQuery  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "zero_shot" / "span_scores.jsonl"


def score(args: argparse.Namespace) -> None:
    from extract.providers.local_model import load_local_model
    from extract.settings import Settings
    from extract.spec.compile import compile_spec
    from extract.spec.prompt import build_messages, shared_prefix
    from extract.tiers.local import LocalTier

    settings = Settings(tiers=["local"], cache=False)
    tier = LocalTier(settings)
    model: Any = load_local_model(settings)
    out = Path(args.out)
    done = {(json.loads(line)["variant"], json.loads(line)["id"]) for line in out.open()} if out.exists() else set()
    with out.open("a", encoding="utf-8") as sink:
        for variant in VARIANTS:
            if (args.variant and variant.name not in args.variant) or (not args.variant and variant.role != "dev"):
                continue
            spec = compile_spec(variant.schema)
            for row in rows_for(variant, args.rows, 0)[: args.sample]:
                if (variant.name, row["id"]) in done:
                    continue
                text = str(row["text"])
                prompt = model.render(build_messages(spec, text))
                constraint, queries = tier.span_queries(spec, text, trim_edges=not args.no_trim)
                started = time.perf_counter()
                scores, tokens = model.score_spans(prompt, queries, shared_prefix(model.render, spec),
                                                   null_bias=args.null_bias)
                sink.write(json.dumps({
                    "variant": variant.name, "id": row["id"], "rows": args.rows, "text": text,
                    "gold": gold_for(variant, labels_of(row)), "constraint": json.dumps(constraint, ensure_ascii=False),
                    "trim_edges": not args.no_trim,
                    "scores": [[s.null, {f"{a},{b}": x for (a, b), x in s.spans.items()}] for s in scores],
                    "tokens": tokens, "seconds": round(time.perf_counter() - started, 3),
                }, ensure_ascii=False) + "\n")
                sink.flush()


def replay(queries: list[SpanQuery], scores: list[FieldScores], text: str, bias: float, rank: Rank) -> dict[str, Any]:
    """The product's joint decision under ``rank``, as the answer it would pin."""
    value: dict[str, Any] = {}
    for path, choice in decide(queries, scores, text, bias, rank).items():
        if choice.value is None:
            continue
        node = value
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = choice.value
    return value


def sweep(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in Path(args.out).open()]
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for r in rows:  # the first --sample rows of each variant: files scored to different depths compare alike
        seen[r["variant"]] += 1
        if seen[r["variant"]] <= args.sample:
            kept.append(r)
    rows = kept
    results: dict[str, dict[tuple[str, float], list[tuple[int, int, int]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        queries = queries_for(json.loads(r["constraint"]), r["text"], trim_edges=r.get("trim_edges", False))
        scores = [FieldScores(null, {(int(k.split(",")[0]), int(k.split(",")[1])): v for k, v in spans.items()})
                  for null, spans in r["scores"]]
        for rank in ("share", "margin", "raw"):
            for bias in (-10.0, -8.0, -6.0, -4.0, -2.0, 0.0):
                results[r["variant"]][(rank, bias)].append(
                    field_counts(replay(queries, scores, r["text"], bias, rank), r["gold"]))
    pooled: dict[tuple[str, float], list[float]] = defaultdict(list)
    print("| variant | n | " + " | ".join(f"{r} {b:g}" for r, b in sorted(next(iter(results.values())))) + " |")
    for variant, by in results.items():
        cells = []
        for key in sorted(by):
            f1 = FieldCounts.total(by[key]).f1 or 0.0
            pooled[key].append(f1)
            cells.append(f"{f1:.3f}")
        print(f"| {variant} | {len(next(iter(by.values())))} | " + " | ".join(cells) + " |")
    print("| mean | | " + " | ".join(f"{sum(pooled[k]) / len(pooled[k]):.3f}" for k in sorted(pooled)) + " |")
    print("| worst | | " + " | ".join(f"{min(pooled[k]):.3f}" for k in sorted(pooled)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["score", "sweep"])
    parser.add_argument("--variant", action="append")
    parser.add_argument("--rows", default="tune", choices=["tune", "report"])
    parser.add_argument("--sample", type=int, default=20, help="rows per variant (score: to score; sweep: to replay)")
    parser.add_argument("--null-bias", type=float, default=None,
                        help="score: stop following spans below null + this (None: follow all)")
    parser.add_argument("--no-trim", action="store_true",
                        help="score: candidates only as written (no spans shed of enclosing punctuation)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    score(args) if args.command == "score" else sweep(args)


if __name__ == "__main__":
    main()
