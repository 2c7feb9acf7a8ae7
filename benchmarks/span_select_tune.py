"""Tune scored span selection's decision on the dev variants' tune rows, without re-decoding.

    python benchmarks/span_select_tune.py score --sample 20 [--variant V ...]   # the model's scores
    python benchmarks/span_select_tune.py sweep [--sample N] [--out FILE]        # F1 per rank x null bias
    python benchmarks/span_select_tune.py oracle [--sample N] [--out FILE]       # what any decision could reach

``score`` runs the product's ``LlamaCppModel.score_spans`` on each record (the prompt and
candidates exactly as the local tier builds them) and stores every field's scores in
``benchmarks/results/zero_shot/span_scores.jsonl``; ``sweep`` then replays the joint decision
under each ranking (``share``: the span's share of its field's options, the one
``extract.spec.span_select.decide`` uses; ``margin``: its margin over null; ``raw``: its
log-probability) and null bias, and prints field F1 per variant (``--grid pmi``: the PMI and
length-bonus corrections; ``--grid column``: the column share). ``oracle`` bounds every such
decision: F1 when told which fields are filled, and with the model's best k spans.
``score --ask question`` scores the same candidates after a plain question per field instead
of the answer's JSON key. Tuning uses only ``--rows tune`` of ``--role dev`` variants: the
held-out variants are run once by ``benchmarks/zero_shot.py --rows report --role heldout``.
``oracle`` chooses nothing, so its bound may also be read on held-out rows
(``score --rows report --variant addr-unlike ...``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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

from extract.report.confidence import auroc  # noqa: E402
from extract.report.scoring import FieldCounts, field_counts, leaves, matches  # noqa: E402
from extract.spec.span_select import NEUTRAL_LEAD, Rank, _logsumexp, decide, queries_for  # noqa: E402
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
                constraint, queries = tier.span_queries(spec, text, trim_edges=not args.no_trim)
                prefix: str | None = shared_prefix(model.render, spec)
                if args.ask == "question":
                    prompt, queries = as_questions(model, variant.schema, text, queries)
                    prefix = None
                else:
                    prompt = model.render(build_messages(spec, text))
                started = time.perf_counter()
                scores, neutral, tokens = model.score_spans(
                    prompt, queries, prefix, margin=args.margin,
                    null_bias=args.null_bias, neutral=(args.neutral or None) if args.ask == "json" else None)
                sink.write(json.dumps({
                    "variant": variant.name, "id": row["id"], "rows": args.rows, "text": text,
                    "gold": gold_for(variant, labels_of(row)), "constraint": json.dumps(constraint, ensure_ascii=False),
                    "trim_edges": not args.no_trim, "ask": args.ask,
                    "scores": [stored(s) for s in scores],
                    "margin": args.margin, "null_bias": args.null_bias,
                    **({"neutral_lead": args.neutral, "neutral": stored(neutral)} if neutral is not None else {}),
                    "tokens": tokens, "seconds": round(time.perf_counter() - started, 3),
                }, ensure_ascii=False) + "\n")
                sink.flush()


_MARK = "\x00QUESTION\x00"


def as_questions(model: Any, schema: dict[str, Any], text: str,
                 queries: list[SpanQuery]) -> tuple[str, list[SpanQuery]]:
    """The prompt and queries of ``score --ask question``: the document alone in the user's
    turn, then per field a plain question (its name's words, its description) closing that
    turn, so the span is scored as the assistant's answer instead of as a JSON value after the
    field's key. Why measured: an instruct model is trained on questions, not on keys like
    ``"num":``; the candidates are the same, so the answer cannot run on past a span."""
    from extract.spec.prompt import SYSTEM, frame_text
    from extract.spec.shapes import words_of

    rendered = model.render([{"role": "system", "content": SYSTEM},
                             {"role": "user", "content": frame_text(text) + "\n\n" + _MARK}])
    prompt, tail = rendered.split(_MARK)
    asked = []
    for query in queries:
        node = schema
        for key in query.path:
            node = node["properties"][key]
        name = " ".join(w for key in query.path for w in words_of(key))
        about = f" ({node['description'].rstrip('.')})" if node.get("description") else ""
        lead = (f"What is the {name}?{about} Copy the answer from the document in double quotes, "
                f"or write null if it does not say.{tail}")
        asked.append(dataclasses.replace(query, lead=lead))
    return prompt, asked


def prior(args: argparse.Namespace) -> None:
    """Add to each stored row the spans' scores after the prompt with no document (``--neutral``
    lead, every span some field scored): the surface prior a PMI correction would subtract
    instead of the document's neutral question. Written to ``--prior-out``."""
    from extract.providers.local_model import _neutral_query, load_local_model
    from extract.settings import Settings
    from extract.spec.compile import compile_spec
    from extract.spec.prompt import build_messages, shared_prefix

    settings = Settings(tiers=["local"], cache=False)
    model: Any = load_local_model(settings)
    by_name = {v.name: v for v in VARIANTS}
    out = Path(args.prior_out)
    done = {(json.loads(line)["variant"], json.loads(line)["id"]) for line in out.open()} if out.exists() else set()
    with out.open("a", encoding="utf-8") as sink:
        for line in Path(args.out).open():
            r = json.loads(line)
            if (r["variant"], r["id"]) in done:
                continue
            spec = compile_spec(by_name[r["variant"]].schema)
            queries = queries_for(json.loads(r["constraint"]), r["text"], trim_edges=r.get("trim_edges", False))
            query = _neutral_query(args.neutral, queries, [parse(x) for x in r["scores"]])
            empty = model.render(build_messages(spec, ""))
            got, _, tokens = model.score_spans(empty, [query], shared_prefix(model.render, spec), margin=math.inf)
            r["prior"] = stored(got[0])
            r["prior_tokens"] = tokens
            sink.write(json.dumps(r, ensure_ascii=False) + "\n")
            sink.flush()


def replay(queries: list[SpanQuery], scores: list[FieldScores], text: str, bias: float, rank: Rank,
           **adjust: Any) -> dict[str, Any]:
    """The product's joint decision under ``rank`` (and ``decide``'s PMI / length bonus
    arguments), as the answer it would pin."""
    value: dict[str, Any] = {}
    for path, choice in decide(queries, scores, text, bias, rank, **adjust).items():
        if choice.value is None:
            continue
        node = value
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = choice.value
    return value


def pruned(got: FieldScores, margin: float, floor: float | None) -> FieldScores:
    """What ``score_spans`` at ``margin`` (and a nullable field's floor ``null + floor``) would
    certainly have kept of scores stored at a wider margin: every span within ``margin`` of the
    best and above the floor (it may keep a few more, met before the best was)."""
    if not got.spans:
        return got
    cut = max(got.spans.values()) - margin
    if got.null is not None and floor is not None:
        cut = max(cut, got.null + floor)
    return FieldScores(got.null, {k: v for k, v in got.spans.items() if v >= cut})


def stored(got: FieldScores) -> list[Any]:
    """A field's scores as a row keeps them: [null, {"start,end": score}] (``parse`` reverses it)."""
    return [got.null, {f"{a},{b}": x for (a, b), x in got.spans.items()}]


def parse(row: list[Any]) -> FieldScores:
    null, spans = row
    return FieldScores(null, {(int(k.split(",")[0]), int(k.split(",")[1])): v for k, v in spans.items()})


def sweep_pmi(rows: list[dict[str, Any]]) -> None:
    """Field F1 per variant under the PMI correction (weight x null corrected or not x margin)
    and, as the baseline, a per-word length bonus, each with a few null biases; rank share."""
    # (label, decide's adjustment, null bias, scorer margin, scorer floor below null). "w": the
    # scorer follows spans 6 nats below the best and below null + bias (as stored), else as shipped.
    settings: list[tuple[str, dict[str, Any], float, float, float]] = [("off b-4", {}, -4.0, 4.0, -4.0)]
    for wide in (False, True):
        margin, below = (6.0, -6.0) if wide else (4.0, 0.0)
        tag = "w" if wide else ""
        for bias in (-6.0, -4.0, -2.0, 0.0, 2.0):
            for beta in (0.5, 1.0, 2.0):
                settings.append((f"len{beta:g}{tag} b{bias:g}", {"length_bonus": beta}, bias, margin, bias + below))
            for lam in (0.25, 0.5, 0.75, 1.0):
                for null in (True, False):
                    settings.append((f"pmi{lam:g}{'' if null else 'x'}{tag} b{bias:g}",
                                     {"pmi": lam, "pmi_null": null}, bias, margin, bias + below))
    # Clipped PMI: a span's neutral score taken as at least the neutral null + clip, so a span the
    # neutral question finds very unlikely ("in", "the") is not rewarded for it, only a span it
    # likes (a year, a frequent name) penalised.
    for wide in (False, True):
        margin, below = (6.0, -6.0) if wide else (4.0, 0.0)
        for clip in (-8.0, -4.0, -2.0, 0.0):
            for lam in (0.5, 1.0):
                for bias in (-4.0, -2.0, 0.0):
                    settings.append((f"clip{clip:g} pmi{lam:g}{'w' if wide else ''} b{bias:g}",
                                     {"pmi": lam, "clip": clip}, bias, margin, bias + below))
    for beta in (0.25, 0.75):
        for bias in (-5.0, -4.0, -3.0):
            settings.append((f"len{beta:g}w b{bias:g}", {"length_bonus": beta}, bias, 6.0, bias - 6.0))
    for m in (5.0, 8.0):
        settings.append((f"len0.5m{m:g} b-4", {"length_bonus": 0.5}, -4.0, m, -4.0 - m))
    if all("prior" in r for r in rows):  # PMI against the no-document prior (``prior``)
        for lam in (0.05, 0.1, 0.2, 0.3):
            for bias in (-6.0, -4.0, -2.0):
                for wide in (False, True):
                    margin, below = (6.0, -6.0) if wide else (4.0, 0.0)
                    settings.append((f"prior{lam:g}{'w' if wide else ''} b{bias:g}",
                                     {"pmi": lam, "prior": True}, bias, margin, bias + below))
    for margin, below in ((4.0, 0.0), (4.0, -1.0), (4.0, -2.0), (5.0, -2.0), (5.0, -3.0), (6.0, -3.0)):
        settings.append((f"len0.25 m{margin:g}f{below:g} b-4", {"length_bonus": 0.25}, -4.0, margin, -4.0 + below))
    for bias in (-5.0, -4.0, -3.0, -2.0):
        settings.append((f"offw b{bias:g}", {}, bias, 6.0, bias - 6.0))
        settings.append((f"off b{bias:g}" if bias != -4.0 else "off b-4 (again)", {}, bias, 4.0, bias))
        settings.append((f"len0.25w b{bias:g} ", {"length_bonus": 0.25}, bias, 6.0, bias - 6.0))
        settings.append((f"len0.375w b{bias:g}", {"length_bonus": 0.375}, bias, 6.0, bias - 6.0))
    # The scorer's pruning under the length bonus: margin below the best, floor below null + bias.
    for margin, below in ((4.0, 0.0), (5.0, 0.0), (6.0, 0.0), (5.0, -2.0), (6.0, -2.0), (6.0, -4.0), (5.0, -5.0)):
        for beta in (0.5, 0.75):
            settings.append((f"len{beta:g} m{margin:g}f{below:g} b-4", {"length_bonus": beta},
                             -4.0, margin, -4.0 + below))
    results: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        queries = queries_for(json.loads(r["constraint"]), r["text"], trim_edges=r.get("trim_edges", False))
        scores = [parse(x) for x in r["scores"]]
        neutral = parse(r["neutral"])
        for label, adjust, bias, margin, floor in settings:
            kept = [pruned(s, margin, floor) for s in scores]
            adjust = dict(adjust)
            clip = adjust.pop("clip", None)
            seen = parse(r["prior"]) if adjust.pop("prior", False) else neutral
            if clip is not None and neutral.null is not None:
                least = neutral.null + clip
                seen = FieldScores(neutral.null, {k: max(v, least) for k, v in neutral.spans.items()})
            results[label][r["variant"]].append(field_counts(
                replay(queries, kept, r["text"], bias, "share",
                       **({"neutral": seen} if "pmi" in adjust else {}), **adjust), r["gold"]))
    _print_grid(results)


def column_normalised(scores: list[FieldScores], alpha: float) -> list[FieldScores]:
    """Each span's score plus ``alpha`` times its log-share among the fields that scored it (a
    field that did not is taken at its own worst stored span): how much more this field wants
    the span than the others do. Why measured: a field that likes every proper noun (``place``)
    took the town from ``city``; the row share (``decide``) cannot see that, a column share can."""
    spans = set().union(*(s.spans for s in scores))
    worst = [min(s.spans.values()) if s.spans else None for s in scores]
    column = {span: _logsumexp([s.spans.get(span, w) for s, w in zip(scores, worst, strict=True) if w is not None])
              for span in spans}
    return [FieldScores(s.null, {span: v + alpha * (v - column[span]) for span, v in s.spans.items()})
            for s in scores]


def sweep_column(rows: list[dict[str, Any]]) -> None:
    """Field F1 per variant with the column share added (``column_normalised``) x null bias,
    under the shipped pruning (4 nats below the best, none below null + bias)."""
    results: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        queries = queries_for(json.loads(r["constraint"]), r["text"], trim_edges=r.get("trim_edges", False))
        scores = [parse(x) for x in r["scores"]]
        for alpha in (0.0, 0.5, 1.0, 2.0):
            for bias in (-6.0, -4.0, -2.0, 0.0):
                kept = column_normalised([pruned(s, 4.0, bias) for s in scores], alpha)
                results[f"column {alpha:g} b{bias:g}"][r["variant"]].append(
                    field_counts(replay(queries, kept, r["text"], bias, "share"), r["gold"]))
    _print_grid(results)


def _print_grid(results: dict[str, dict[str, list[Any]]]) -> None:
    variants = list(next(iter(results.values())))
    print("| setting | " + " | ".join(variants) + " | mean | worst |")
    print("|---" * (len(variants) + 3) + "|")
    for label in results:
        f1 = [FieldCounts.total(results[label][v]).f1 or 0.0 for v in variants]
        print(f"| {label} | " + " | ".join(f"{x:.3f}" for x in f1) + f" | {sum(f1) / len(f1):.3f} | {min(f1):.3f} |")


def first_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The first ``--sample`` stored rows of each variant in ``--out``: files scored to
    different depths compare alike."""
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for line in Path(args.out).open():
        r = json.loads(line)
        seen[r["variant"]] += 1
        if seen[r["variant"]] <= args.sample:
            kept.append(r)
    return kept


def sweep(args: argparse.Namespace) -> None:
    rows = first_rows(args)
    if args.grid in ("pmi", "column"):
        {"pmi": sweep_pmi, "column": sweep_column}[args.grid](rows)
        return
    results: dict[str, dict[tuple[str, float], list[tuple[int, int, int]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        queries = queries_for(json.loads(r["constraint"]), r["text"], trim_edges=r.get("trim_edges", False))
        scores = [parse(x) for x in r["scores"]]
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


def oracle(args: argparse.Namespace) -> None:
    """How far any decision over the stored scores could go, per variant. Why: a decision rule
    (null bias, hand-out, a correction of the scores) only chooses among what the model ranks;
    if the model's best span is wrong for a field whose value is known to be there, or its
    scores do not tell a filled field from an empty one, no rule reaches a target above that.

    - ``shipped``: the shipped decision (share, null bias -4, the shipped pruning);
    - ``presence``: the same rule, told which fields are filled (the others null);
    - ``top1``, ``top3``, ``top5``: told which are filled, each takes the model's best span (or
      counts as right if any of its k best is right: the bound for a re-ranker of the model's
      shortlist), no hand-out;
    - ``any``: every stored span counts (the candidates' own bound);
    - ``AUROC``: how well the field's best span's margin over its null tells filled fields from
      empty ones (0.5: not at all) -- what a null calibration has to work with.
    """
    counts: dict[str, dict[str, list[tuple[int, int, int]]]] = defaultdict(lambda: defaultdict(list))
    margins: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for r in first_rows(args):
        queries = queries_for(json.loads(r["constraint"]), r["text"], trim_edges=r.get("trim_edges", False))
        scores = [parse(x) for x in r["scores"]]
        want = leaves(r["gold"])
        shipped = [pruned(s, 4.0, -4.0) for s in scores]
        counts[r["variant"]]["shipped"].append(field_counts(replay(queries, shipped, r["text"], -4.0, "share"),
                                                            r["gold"]))
        filled = [n for n, q in enumerate(queries) if ".".join(q.path) in want]
        told = replay([queries[n] for n in filled], [FieldScores(None, shipped[n].spans) for n in filled],
                      r["text"], -4.0, "share")
        counts[r["variant"]]["presence"].append(field_counts(told, r["gold"]))
        for query, got in zip(queries, scores, strict=True):
            if got.spans and got.null is not None:
                margins[r["variant"]].append((max(got.spans.values()) - got.null, ".".join(query.path) in want))
        for label, k in (("top1", 1), ("top3", 3), ("top5", 5), ("any", 10**9)):
            tp = fp = fn = 0
            for query, got in zip(queries, scores, strict=True):
                gold = want.get(".".join(query.path))
                if gold is None:
                    continue  # told it is empty: null, no false positive
                best = sorted(got.spans.items(), key=lambda kv: -kv[1])[:k]
                if any(matches(r["text"][a:b], gold) for (a, b), _ in best):
                    tp += 1
                else:
                    fp, fn = fp + bool(best), fn + 1
            counts[r["variant"]][label].append((tp, fp, fn))
    labels = ["shipped", "presence", "top1", "top3", "top5", "any"]
    print("| variant | n | " + " | ".join(labels) + " | AUROC |")
    print("|---|---:|" + "---:|" * (len(labels) + 1))
    for variant, by in counts.items():
        cells = [f"{FieldCounts.total(by[x]).f1 or 0.0:.3f}" for x in labels]
        area = auroc([m for m, _ in margins[variant]], [filled for _, filled in margins[variant]])
        print(f"| {variant} | {len(by['top1'])} | " + " | ".join(cells) + f" | {area or math.nan:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["score", "prior", "sweep", "oracle"])
    parser.add_argument("--variant", action="append")
    parser.add_argument("--rows", default="tune", choices=["tune", "report"])
    parser.add_argument("--sample", type=int, default=20, help="rows per variant (score: to score; sweep: to replay)")
    parser.add_argument("--null-bias", type=float, default=None,
                        help="score: stop following spans below null + this (None: follow all)")
    parser.add_argument("--margin", type=float, default=4.0,
                        help="score: give a span up this far below the field's best (score_spans)")
    parser.add_argument("--neutral", default=NEUTRAL_LEAD,
                        help="score: the field-less lead scored once per record ('' for none)")
    parser.add_argument("--grid", default="rank",
                        choices=["rank", "pmi", "column"],
                        help="sweep: ranks x null biases, PMI / length bonus, or the column share")
    parser.add_argument("--ask", default="json", choices=["json", "question"],
                        help="score: each field as the JSON key the answer begins with (as shipped), "
                             "or as a plain question after the document")
    parser.add_argument("--no-trim", action="store_true",
                        help="score: candidates only as written (no spans shed of enclosing punctuation)")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--prior-out", help="prior: where to write the rows with the no-document scores")
    args = parser.parse_args()
    {"score": score, "prior": prior, "sweep": sweep, "oracle": oracle}[args.command](args)


if __name__ == "__main__":
    main()
