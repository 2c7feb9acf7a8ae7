"""Which accuracy lever buys what: prompt, descriptions, bounds, span-copy, worked examples.

    python benchmarks/ablation.py --data usaddress --sample 60 --config plain --config desc ...
    python benchmarks/ablation.py --table            # print the table of what is already run

Each dataset file is split once, by a seeded shuffle of its rows: the first ``--holdout``
rows (200) are the evaluation rows, and examples are only ever drawn from the other rows
(``--sample n`` evaluates the first n of the holdout). Every configuration of a dataset
therefore sees the same records, and no evaluated record is ever shown as an example.

Configurations (each adds to the previous unless it says otherwise):

- ``plain``: field names and types only (descriptions, patterns and the schema's length bounds
  removed), no span-copy, no input-derived bounds;
- ``desc``: + the field descriptions;
- ``bounds``: + string bounds (the schema's and the input-length bucket) and its patterns;
- ``copy``: + span-copy (every string a word span of the input, filtered by its pattern): the
  schema alone, as shipped. Zero-shot the local tier writes every key, null discounted
  (``all_keys``, ``null_penalty``);
- ``fixedK`` / ``simK``: + K examples from the pool, the first K (fixed) or the K most similar
  (``extract.examples``); ``simK-nocopy`` without span-copy;
- ``simK-words`` / ``simK-char3``: the similarity measure swapped;
- ablations of one lever: ``-nopatterns`` (the schema's patterns removed), ``-optkeys`` (absent
  keys left out zero-shot), ``-nopenalty`` (null not discounted), ``-order`` / ``-noorder``
  (ordered span-copy forced on / off, ``extract.spec.span_order``).

Rows go to ``OUT/attempts.jsonl`` in ``extract bench``'s format (policy = ``tier:config``),
so ``extract report`` renders them; re-running skips finished items. Only the public API
(``Extractor``) extracts; for the native tier the embedded llama.cpp server is started here.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extract import Extractor  # noqa: E402
from extract.front.bench import BenchItem, BenchRun, done_keys, item_rows, log_command  # noqa: E402
from extract.report import aggregate  # noqa: E402
from extract.report.render import load_rows  # noqa: E402
from schemas.address import Address  # noqa: E402
from schemas.citation import Citation  # noqa: E402
from schemas.snips import model_for_intent  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FILES = {"usaddress": "usaddress/dev.jsonl", "snips": "snips/dev.jsonl", "citations": "citations/dev.jsonl"}
CONFIGS = ["plain", "desc", "bounds", "copy", "fixed1", "fixed3", "fixed6", "sim1", "sim3", "sim6",
           "sim6-nocopy", "sim6-words", "sim6-char3", "sim3-nocopy", "copy-req", "sim6-req", "desc-req",
           "copy-noorder", "sim6-noorder", "copy-order", "sim6-order", "copy-optkeys", "copy-nopenalty",
           "copy-nopatterns", "sim6-nopatterns"]


def _strip(node: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_strip(v, keys) for v in node]
    if not isinstance(node, dict):
        return node
    return {k: (v if k == "properties" else _strip(v, keys)) if k != "properties"
            else {p: _strip(s, keys) for p, s in v.items()} for k, v in node.items() if k not in keys}


def spec_for(row: dict[str, Any], dataset: str, config: str) -> Any:
    """The spec a configuration asks with: the schema class itself, or a stripped copy."""
    model: Any = (Address if dataset == "usaddress" else Citation if dataset == "citations"
                  else model_for_intent(str(row["intent"])))
    if config in ("plain", "desc"):
        schema = copy.deepcopy(model.model_json_schema())
        drop: tuple[str, ...] = ("maxLength", "copy_from_input", "copy_in_order", "pattern")
        if config == "plain":
            drop += ("description",)
        return _strip(schema, drop)
    if config.endswith("-nopatterns"):
        return _strip(copy.deepcopy(model.model_json_schema()), ("pattern",))
    if config.endswith("-req"):
        # Every key required (nullable fields stay nullable): the model answers each in turn.
        schema = copy.deepcopy(model.model_json_schema())
        schema["required"] = list(schema["properties"])
        return schema
    return model


def options_for(config: str, pool: list[tuple[str, Any]]) -> dict[str, Any]:
    """Extractor keyword arguments of a configuration."""
    # cache=False: every figure is a fresh model call, never a stored result.
    opts: dict[str, Any] = {"copy_from_input": False, "bound_strings": config not in ("plain", "desc"),
                            "cache": False}
    if not opts["bound_strings"]:
        # Unbounded, a run-on answer would decode to the end of the context (~3,800 tokens,
        # two minutes); 256 tokens is twice the longest gold answer and still shows the cut.
        opts["max_tokens"] = 256
    if config.startswith("copy") or config.startswith(("fixed", "sim")):
        opts["copy_from_input"] = "nocopy" not in config
    if "noorder" in config:
        opts["copy_in_order"] = False
    if "order" in config.split("-"):
        opts["copy_in_order"] = True
    if "optkeys" in config:
        opts["all_keys"] = False
    if "nopenalty" in config:
        opts["null_penalty"] = 0.0
    if config.startswith(("fixed", "sim")):
        k = int(config.removeprefix("fixed").removeprefix("sim").split("-")[0])
        opts.update(examples=pool, examples_k=k, examples_select="fixed" if config.startswith("fixed") else "similar")
    return opts


def split(dataset: str, holdout: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(evaluation rows, pool rows): a seeded shuffle, the first ``holdout`` rows evaluated."""
    rows = [json.loads(line) for line in (DATA / FILES[dataset]).read_text(encoding="utf-8").splitlines() if line]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[:holdout]], [rows[i] for i in order[holdout:]]


def _gold(row: dict[str, Any]) -> dict[str, Any]:
    gold = row.get("gold", row.get("slots")) or {}
    return {k.replace("-", "_"): v for k, v in gold.items()}


def pool_for(pool_rows: list[dict[str, Any]], dataset: str, row: dict[str, Any]) -> list[tuple[str, Any]]:
    """The pool pairs that validate against this row's schema (SNIPS: the same intent only).

    A pool row whose gold the schema cannot hold (a label the schema has no field for, an
    over-long value) is left out here, not passed on: the Extractor rejects a bad example.
    """
    model: Any = (Address if dataset == "usaddress" else Citation if dataset == "citations"
                  else model_for_intent(str(row["intent"])))
    fields = set(model.model_fields)
    out: list[tuple[str, Any]] = []
    for r in pool_rows:
        if dataset == "snips" and r["intent"] != row["intent"]:
            continue
        gold = {k: v for k, v in _gold(r).items() if k in fields}
        gold = {k: (v[0] if isinstance(v, list) else v) for k, v in gold.items()}
        try:
            model.model_validate(gold)
        except ValueError:
            continue
        out.append((str(r["text"]), gold))
    return out


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "attempts.jsonl"
    done = done_keys(path)
    server = None
    base_url = None
    if "native" in args.tier:
        from extract.providers.server import start_server

        server = start_server(n_threads=1, n_ctx=4096)
        base_url = server.base_url
    try:
        with path.open("a", encoding="utf-8") as sink:
            for dataset in args.data:
                evaluated, pool_rows = split(dataset, args.holdout, args.seed)
                items = evaluated[: args.sample]
                pools: dict[str, list[tuple[str, Any]]] = {}
                for tier in args.tier:
                    for config in args.config:
                        policy = f"{tier}:{config}"
                        extractors: dict[str, Extractor] = {}
                        started = time.perf_counter()
                        for n, row in enumerate(items):
                            group = str(row.get("intent", dataset))
                            label = f"{dataset}/dev.jsonl"
                            key = (label, f"ablation:{dataset}", policy, str(row["id"]))
                            if key in done:
                                continue
                            if group not in pools:
                                pools[group] = pool_for(pool_rows, dataset, row)
                            if group not in extractors:
                                extractors[group] = Extractor(
                                    tiers=[tier], base_url=base_url, n_threads=args.threads,
                                    **options_for(config, pools[group]))
                            spec = spec_for(row, dataset, config)
                            bench_run = BenchRun(data=Path(label), schema=f"ablation:{dataset}", spec=spec,
                                                 policies=[policy])
                            bench_run_rows = item_rows(bench_run, policy, extractors[group], [],
                                                  BenchItem(str(row["id"]), n + 1, {**row, "gold": _gold(row)}))
                            for r in bench_run_rows:
                                r["data"] = label
                            sink.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in bench_run_rows))
                            sink.flush()
                            done.add(key)
                        print(f"{dataset} {policy}: {len(items)} items, {time.perf_counter() - started:.0f} s",
                              file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    # Every command that added rows, in order: together they reproduce attempts.jsonl.
    log_command(out, "benchmarks/ablation.py", sys.argv[1:])


def table(out: Path) -> str:
    """The markdown table of every (dataset, policy) in ``out/attempts.jsonl``."""
    lines = ["| data | tier:config | n | field F1 [95%] | exact [95%] | schema-valid | tokens/rec | s/rec |",
             "|---|---|---|---|---|---|---|---|"]
    for fig in aggregate(load_rows(out / "attempts.jsonl")):
        j = fig.to_json()
        ran = [o for o in fig.items if not o.bad and not o.all_skipped]
        tokens = sum(int((r.get("usage") or {}).get("total_tokens", 0)) for o in ran for r in o.rows)
        secs = sum(float(o.last.get("item_latency_s") or 0.0) for o in ran)
        n = max(1, len(ran))

        def f(key: str, j: dict[str, Any] = j) -> str:
            # The report's figures and intervals (extract.report.scoring), not a second F1.
            v, ci = j[key], j["ci95"].get(key)
            return "–" if v is None else f"{v:.2f}" + (f" [{ci[0]:.2f}–{ci[1]:.2f}]" if ci else "")

        lines.append(f"| {j['data'].split('/')[0]} | {j['policy']} | {j['n']} | {f('field_f1')} | "
                     f"{f('exact_match')} | {100 * (j['schema_valid_after_repair'] or 0):.0f}% | "
                     f"{tokens / n:.0f} | {secs / n:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", choices=list(FILES), help="dataset (repeat); default all")
    parser.add_argument("--config", action="append", choices=CONFIGS, help="configuration (repeat)")
    parser.add_argument("--tier", action="append", choices=["local", "native"], help="default: local")
    parser.add_argument("--sample", type=int, default=60, help="evaluate the first N holdout rows")
    parser.add_argument("--holdout", type=int, default=200, help="rows reserved for evaluation, never examples")
    parser.add_argument("--seed", type=int, default=0)
    # One thread: on 2 shared cores llama.cpp's threads spin-wait for each other (measured:
    # 30 s a record with 2 threads beside other jobs, against ~8 s with one).
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ablation"))
    parser.add_argument("--table", action="store_true", help="only print the table of what is already run")
    args = parser.parse_args()
    if args.sample > args.holdout:
        parser.error("--sample cannot exceed --holdout (the rows beyond it are the example pool)")
    args.data = args.data or list(FILES)
    args.config = args.config or ["desc", "copy", "sim6"]
    args.tier = args.tier or ["local"]
    if not args.table:
        run(args)
    print(table(Path(args.out)))


if __name__ == "__main__":
    main()
