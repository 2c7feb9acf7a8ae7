"""Text-to-SQL per tier and for the chain: how many generated queries parse, run and answer?

Run: ``uv run python benchmarks/text_to_sql.py [--db shop.sqlite] [--questions q.jsonl]
[--with-server] [--n 12]``

Over a SQLite database and a JSONL file of ``{"question": ..., "sql": ...}`` pairs (``gold``
is accepted for ``sql``), each question is asked under ``sql_grammar_for_sqlite(db)`` (only
that database's tables and columns) by:

- ``local``: constrained decoding on the embedded model (valid by construction);
- ``local, generic sql.lark``: the same, under the schema-blind grammar, for comparison;
- with ``--with-server`` (starts the real llama.cpp server on the embedded model):
  ``native`` (the grammar sent as GBNF in llama.cpp's ``grammar`` field once a probe shows
  it enforced, the answer parsed with lark and reasked with the parse error up to
  ``grammar_max_reasks`` times), ``native, plain text`` (the same endpoint with the grammar
  field refused by the fault proxy: parse and reask only, the old behaviour) and the
  ``chain`` native -> instructor -> local -> repair (instructor refuses grammars and is
  skipped, recorded).

Figures per row: parses (a value came back: it parsed with lark), parses on the first call,
runs without a SQLite
error, execution accuracy (same result rows as the gold query, as a multiset), model calls
and tokens per parsed query (all calls, failed ones included, divided by the queries that
parsed), latency p50. Without ``--db`` a small shop database is built in a temporary
directory for the default question file. Written to ``benchmarks/results/text_to_sql.json``
and printed as Markdown. Figures, not assertions; uses only the public API.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUESTIONS = Path(__file__).with_name("text_to_sql.jsonl")
RESULTS = Path(__file__).with_name("results") / "text_to_sql.json"

SHOP = """
CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, city TEXT);
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL, placed TEXT);
CREATE TABLE products(id INTEGER PRIMARY KEY, name TEXT, price REAL);
INSERT INTO customers VALUES (1, 'Ann', 'Paris'), (2, 'Bob', 'Rome'), (3, 'Cy', 'Paris');
INSERT INTO orders VALUES (1, 1, 10.5, '2024-01-01'), (2, 2, 20, '2024-02-01'), (3, 1, 7, '2024-03-01');
INSERT INTO products VALUES (1, 'tea', 3.5), (2, 'coffee', 6), (3, 'cake', 4.25);
"""


def rows(con: sqlite3.Connection, query: str) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(r) for r in con.execute(query).fetchall())


def load_questions(path: Path, n: int | None) -> list[dict[str, str]]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        item = json.loads(line)
        gold = item.get("sql", item.get("gold"))
        if not isinstance(item.get("question"), str) or not isinstance(gold, str):
            raise SystemExit(f"{path}:{i}: each line needs a \"question\" and a \"sql\" string")
        out.append({"question": item["question"], "sql": gold})
    return out[:n] if n else out


@contextmanager
def database(path: str | None) -> Iterator[Path]:
    """The given database, or the shop database built in a temporary directory."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise SystemExit(f"no SQLite database at {p}")
        yield p
        return
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "shop.db"
        con = sqlite3.connect(db)
        con.executescript(SHOP)
        con.commit()
        con.close()
        yield db


def score(run: Callable[[str], Any], questions: list[dict[str, str]], con: sqlite3.Connection) -> dict[str, Any]:
    """One row of the table: every question through ``run`` (an Extractor's run + spec)."""
    records = []
    for q in questions:
        started = time.perf_counter()
        result = run(q["question"])
        latency = time.perf_counter() - started
        calls = [a for a in result.attempts if not a.skipped]
        # A grammar rung's probe (once per endpoint and process) is a real call: counted here
        # (its tokens are already in the attempt's usage).
        probes = [p for a in calls for p in a.meta.get("probes", [])]
        runs, correct, error = False, False, None
        if result.ok and isinstance(result.value, str):
            try:
                correct = rows(con, result.value) == rows(con, q["sql"])
                runs = True
            except sqlite3.Error as exc:
                error = str(exc)
        records.append({
            "question": q["question"], "sql": result.value if result.ok else (calls[-1].raw if calls else None),
            "tier": result.tier, "parses": result.ok, "runs": runs, "correct": correct, "sqlite_error": error,
            "first_call_parses": bool(calls) and calls[0].ok,
            "modes": [a.meta.get("mode") for a in calls],
            "calls": len(calls) + len(probes),
            "tokens": sum(a.usage.total_tokens or a.input_tokens + a.output_tokens for a in calls),
            "errors": [a.error.type for a in calls if a.error is not None], "latency_s": round(latency, 3),
        })
    k = len(records) or 1
    parsed = sum(r["parses"] for r in records)
    return {
        "parses": sum(r["parses"] for r in records) / k,
        "first_call_parses": sum(r["first_call_parses"] for r in records) / k,
        "runs": sum(r["runs"] for r in records) / k,
        "execution_accuracy": sum(r["correct"] for r in records) / k,
        "calls_per_parsed": sum(r["calls"] for r in records) / parsed if parsed else None,
        "tokens_per_parsed": sum(r["tokens"] for r in records) / parsed if parsed else None,
        "latency_p50_s": statistics.median(r["latency_s"] for r in records) if records else None,
        "records": records,
    }


def _shown(path: Path) -> str:
    """``path`` relative to the repo when inside it, so a committed result names no machine's folders."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def run(db_path: str | None, questions_path: Path, n: int | None, with_server: bool, max_tokens: int) -> dict[str, Any]:
    from extract import Extractor, Grammar, sql_grammar_for_sqlite

    questions = load_questions(questions_path, n)
    out: dict[str, Any] = {"questions": len(questions), "question_file": _shown(questions_path),
                           "database": db_path or "built-in shop database", "max_tokens": max_tokens, "rows": {}}
    with database(db_path) as db:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        aware = sql_grammar_for_sqlite(db)
        # The generic grammar gets the same schema description, so only the constraint differs.
        generic = Grammar.from_text(Grammar.from_file(REPO / "grammars" / "sql.lark").text, name="sql",
                                    description=aware.description)
        local = Extractor(tiers=["local"], max_tokens=max_tokens)
        rows_: dict[str, Any] = out["rows"]
        rows_["local"] = score(lambda q: local.run(q, aware), questions, con)
        rows_["local, generic sql.lark"] = score(lambda q: local.run(q, generic), questions, con)
        if with_server:
            from extract.providers.server import start_server

            server = start_server(n_threads=1, n_ctx=2048)
            try:
                native = Extractor(tiers=["native"], base_url=server.base_url, max_tokens=max_tokens)
                rows_["native"] = score(lambda q: native.run(q, aware), questions, con)
                from extract.testing.fault_proxy import FaultProxy

                with FaultProxy.start(server.url, reject=["grammar", "structured_outputs"]) as proxy:
                    plain = Extractor(tiers=["native"], base_url=proxy.base_url, max_tokens=max_tokens)
                    rows_["native, plain text"] = score(lambda q: plain.run(q, aware), questions, con)
                chain = Extractor(tiers=["native", "instructor", "local", "repair"], base_url=server.base_url,
                                  max_tokens=max_tokens)
                rows_["chain"] = score(lambda q: chain.run(q, aware), questions, con)
                winners = Counter(r["tier"] for r in rows_["chain"]["records"])
                rows_["chain"]["won_by"] = dict(winners)
            finally:
                server.stop()
        con.close()
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--db", help="a SQLite database (default: a small shop database built here)")
    parser.add_argument("--questions", type=Path, default=QUESTIONS, help="JSONL of {question, sql}")
    parser.add_argument("--n", type=int, default=None, help="only the first N questions")
    parser.add_argument("--with-server", action="store_true",
                        help="also start the llama.cpp server and run the native tier and the chain")
    parser.add_argument("--max-tokens", type=int, default=96, help="output token cap for every tier")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    out = run(args.db, args.questions, args.n, args.with_server, args.max_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"n={out['questions']} questions, {out['database']}, max_tokens={out['max_tokens']}\n")
    print("| tier | parses | parses on 1st call | runs without error | execution accuracy | calls / parsed "
          "| tokens / parsed | p50 s |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in out["rows"].items():
        print(f"| {label} | {_pct(r['parses'])} | {_pct(r['first_call_parses'])} | {_pct(r['runs'])} "
              f"| {_pct(r['execution_accuracy'])} "
              f"| {_num(r['calls_per_parsed'])} | {_num(r['tokens_per_parsed'])} | {r['latency_p50_s']:.2f} |")
    if "chain" in out["rows"]:
        print(f"\nchain answers by tier: {out['rows']['chain']['won_by']}")


if __name__ == "__main__":
    main()
