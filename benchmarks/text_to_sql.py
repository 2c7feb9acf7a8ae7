"""Text-to-SQL on the local tier: does a schema-aware grammar make every query runnable?

Run: ``uv run python benchmarks/text_to_sql.py [--n 12]``

Builds a small shop database (customers, orders, products) in a temporary directory, asks
the local tier each question in ``text_to_sql.jsonl`` twice, once under the generic
``grammars/sql.lark`` (any identifier) and once under ``sql_grammar_for_sqlite`` (only this
database's tables and columns), and runs every generated query. Figures per grammar: parses
(valid as generated), runs without error, execution accuracy (same rows as the gold query,
as a multiset), latency p50. Written to ``benchmarks/results/text_to_sql.json`` and printed
as Markdown. Figures, not assertions; uses only the public API.
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


def run(n: int) -> dict[str, Any]:
    from extract import Extractor, Grammar, sql_grammar_for_sqlite

    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()][:n]
    out: dict[str, Any] = {"questions": len(questions), "grammars": {}}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "shop.db"
        con = sqlite3.connect(db)
        con.executescript(SHOP)
        con.commit()
        generic = Grammar.from_file(REPO / "grammars" / "sql.lark")
        aware = sql_grammar_for_sqlite(db)
        # The generic grammar gets the same schema description, so only the constraint differs.
        generic = Grammar.from_text(generic.text, name="sql", description=aware.description)
        extractor = Extractor(tiers=["local"])
        for label, grammar in (("generic sql.lark", generic), ("schema-aware", aware)):
            records = []
            for q in questions:
                started = time.perf_counter()
                result = extractor.run(q["question"], grammar)
                latency = time.perf_counter() - started
                raw = result.attempts[-1].raw if result.attempts else None
                runs, correct, error = False, False, None
                if result.ok and isinstance(result.value, str):
                    try:
                        correct = rows(con, result.value) == rows(con, q["gold"])
                        runs = True
                    except sqlite3.Error as exc:
                        error = str(exc)
                records.append({"question": q["question"], "sql": raw, "parses": result.ok,
                                "runs": runs, "correct": correct, "sqlite_error": error,
                                "latency_s": round(latency, 3)})
            k = len(records) or 1
            out["grammars"][label] = {
                "parses": sum(r["parses"] for r in records) / k,
                "runs": sum(r["runs"] for r in records) / k,
                "execution_accuracy": sum(r["correct"] for r in records) / k,
                "latency_p50_s": statistics.median(r["latency_s"] for r in records) if records else None,
                "records": records,
            }
        con.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=12)
    args = parser.parse_args()
    out = run(args.n)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"| grammar | parses | runs | execution accuracy | p50 s |  (n={out['questions']})")
    print("|---|---|---|---|---|")
    for label, g in out["grammars"].items():
        print(f"| {label} | {g['parses']:.0%} | {g['runs']:.0%} | {g['execution_accuracy']:.0%} "
              f"| {g['latency_p50_s']:.2f} |")


if __name__ == "__main__":
    main()
