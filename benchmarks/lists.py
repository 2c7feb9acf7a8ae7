"""Every item of a document: reference lists and letters, on the local or the native tier (``extract_all``).

Run: ``uv run python benchmarks/lists.py [--refs 10,50,200] [--letters 5] [--passes 1,2] [--seed 0]
[--tier native]`` (``native``: the embedded model behind llama.cpp's server, started for the run on
127.0.0.1)

- **references**: documents of N references drawn (``--seed``) from
  ``../shared/data/citations/dev.jsonl``, one a line under a "References" heading, read with
  ``schemas.citation:Citation``;
- **letters**: letters of 4 addresses from ``../shared/data/usaddress/dev.jsonl``, each in a
  sentence of its own between a salutation and a closing, read with ``schemas.address:Address``.

Per document set and number of passes: item recall and precision (a returned item matches a
gold item when their spans overlap by more than half of the shorter; one to one), gold items
not returned but named in ``Result.items`` (rejected or failed) and gold items not returned
and not named (``silent``), field F1 of matched items (micro over the leaf fields the schema
has, as ``extract.report.scoring`` defines it for every benchmark), time to the first item
(``Extractor.item_run(...).stream()``), seconds per 1,000 characters; and one
single-reference extraction (``Extractor.run``), the yardstick for the time to the first item.
The yardstick is timed again right before each document (a reference not in it), and
``x single`` is the mean over documents of first item / the single just before: on 2 shared
cores the load moves within a run (measured: the warm-up single at 5.9 s, then 15-21 s
singles an hour later), so a yardstick timed once at the start says more about the load than
about the list. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EXTRACT_CACHE", "false")
DATA = REPO.parent / "shared" / "data"

from extract.report.scoring import FieldCounts, field_counts, gold_for_schema  # noqa: E402

LETTER_LINES = ["Please deliver the first order to {} before Friday.",
                "The invoice goes to our office at {} as usual.",
                "Returns are handled at {} on weekdays.",
                "Our new warehouse, {} opens in May."]


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def ref_doc(rows: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int, dict[str, Any]]]]:
    text, gold = "References\n\n", []
    for r in rows:
        gold.append((len(text), len(text) + len(r["text"]), r["gold"]))
        text += r["text"] + "\n"
    return text, gold


def letter_doc(rows: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int, dict[str, Any]]]]:
    text, gold = "Dear Sir or Madam,\n\n", []
    for line, r in zip(LETTER_LINES, rows, strict=False):
        head = line.split("{}")[0]
        gold.append((len(text) + len(head), len(text) + len(head) + len(r["text"]), r["gold"]))
        text += line.format(r["text"]) + "\n"
    return text + "\nKind regards,\nThe shipping team\n", gold


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    inter = min(a[1], b[1]) - max(a[0], b[0])
    return inter > max(1, min(a[1] - a[0], b[1] - b[0])) / 2


def score(result: Any, gold: list[tuple[int, int, dict[str, Any]]], fields: set[str]) -> dict[str, Any]:
    """Item matching by span, then the matched items' leaf fields scored as every benchmark scores
    them (``extract.report.scoring``: one normalisation, gold lists as alternatives); the
    counts are summed over documents into one micro F1."""
    ok = [e for e in result.items if e["status"] == "ok"]
    named = [e for e in result.items if e["status"] != "ok"]
    preds = [((e["start"], e["end"]), v.model_dump() if hasattr(v, "model_dump") else v)
             for e, v in zip(ok, result.value, strict=True)]
    used: set[int] = set()
    counts: list[tuple[int, int, int]] = []
    matched = 0
    silent = 0
    for gs, ge, labels in gold:
        hit = next((i for i, (span, _) in enumerate(preds) if i not in used and overlaps(span, (gs, ge))), None)
        if hit is None:
            if not any(overlaps((e["start"], e["end"]), (gs, ge)) for e in named):
                silent += 1
            continue
        used.add(hit)
        matched += 1
        counts.append(field_counts(preds[hit][1], gold_for_schema(labels, fields)))
    return {"gold": len(gold), "returned": len(preds), "matched": matched, "silent": silent,
            "named": len(gold) - matched - silent, "counts": counts}


async def timed(ex: Any, text: str, item: Any, passes: int) -> tuple[Any, float, float]:
    run = ex.item_run(text, item, passes=passes)
    started = time.perf_counter()
    first = None
    async for _ in run.stream():
        if first is None:
            first = time.perf_counter() - started
    return run.result(), first if first is not None else float("nan"), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--refs", default="10,50,200", help="references per document, comma-separated")
    parser.add_argument("--letters", type=int, default=5, help="letters of 4 addresses (0: none)")
    parser.add_argument("--passes", default="1,2", help="numbers of passes, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tier", default="local", choices=["local", "native"],
                        help="the tier that reads the lists (native: a llama.cpp server started for the run)")
    args = parser.parse_args()
    server = None
    options: dict[str, Any] = {"tiers": [args.tier], "cache": False}
    if args.tier == "native":
        from extract.providers.server import start_server

        server = start_server(n_ctx=4096)
        options.update(base_url=server.base_url, model="local", timeout_s=300.0)
    try:
        run(args, options)
    finally:
        if server is not None:
            server.stop()


def run(args: argparse.Namespace, options: dict[str, Any]) -> None:

    from extract import Extractor
    from schemas.address import Address
    from schemas.citation import Citation

    rng = random.Random(args.seed)
    cites = read(DATA / "citations" / "dev.jsonl")
    addrs = read(DATA / "usaddress" / "dev.jsonl")
    ex = Extractor(**options)
    print(f"tier: {options['tiers'][0]}")
    singles = []
    for r in rng.sample(cites, 4):
        t = time.perf_counter()
        ex.run(r["text"], Citation)
        singles.append(time.perf_counter() - t)
    single = sorted(singles[1:])[1]  # the median of three warm extractions (the first loads the model)
    print(f"one single-reference extraction (median of 3, warm, at the start): {single:.2f} s")
    pool = random.Random(args.seed + 1).sample(cites, 64)  # yardsticks; its own draw: the documents stay the same
    sets: list[tuple[str, Any, list[tuple[str, list[tuple[int, int, dict[str, Any]]]]]]] = []
    for n in [int(x) for x in args.refs.split(",") if x]:
        sets.append((f"{n} references", Citation, [ref_doc(rng.sample(cites, n))]))
    if args.letters:
        letters = [letter_doc(rng.sample(addrs, 4)) for _ in range(args.letters)]
        sets.append((f"{args.letters} letters x 4 addresses", Address, letters))
    print("| documents | passes | gold | returned | recall | precision | named, not returned | silent "
          "| field F1 | first item s | x single (timed before each doc) | s / 1k chars |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, item, docs in sets:
        for passes in [int(x) for x in args.passes.split(",") if x]:
            tot = {"gold": 0, "returned": 0, "matched": 0, "silent": 0, "named": 0}
            counts: list[tuple[int, int, int]] = []
            firsts: list[float] = []
            ratios: list[float] = []
            secs, chars = 0.0, 0
            causes: dict[str, int] = {}
            for text, gold in docs:
                yardstick = next(r for r in pool if r["text"] not in text)
                pool.remove(yardstick)
                t = time.perf_counter()
                ex.run(yardstick["text"], Citation)
                near = time.perf_counter() - t
                result, first, total = asyncio.run(timed(ex, text, item, passes))
                ratios.append(first / near)
                s = score(result, gold, set(item.model_fields))
                for e in result.items:
                    if e["status"] == "failed":
                        cause = (e.get("error") or {}).get("type", "?")
                        causes[cause] = causes.get(cause, 0) + 1
                for k in tot:
                    tot[k] += int(s[k])
                counts += s["counts"]
                firsts.append(first)
                secs += total
                chars += len(text)
            recall = tot["matched"] / max(1, tot["gold"])
            precision = tot["matched"] / max(1, tot["returned"])
            first = sum(firsts) / len(firsts)
            f1 = FieldCounts.total(counts).f1 or 0.0
            print(f"| {name} | {passes} | {tot['gold']} | {tot['returned']} | {recall:.3f} | {precision:.3f} "
                  f"| {tot['named']} | {tot['silent']} | {f1:.3f} | {first:.2f} "
                  f"| {sum(ratios) / len(ratios):.2f} | {1000 * secs / chars:.2f} |", flush=True)
            if causes:
                print(f"  ({name}, {passes} pass(es): failed spans by cause: {causes})", flush=True)


if __name__ == "__main__":
    main()
