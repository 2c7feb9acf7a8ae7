"""Schema coverage of result folders beside the published engines: the closing table of issue 24.

    python benchmarks/coverage.py benchmarks/results/coverage-schemastore \\
        benchmarks/results/coverage-json-schema-test-suite-2026-12-02

Per folder and policy: empirical coverage (an instance valid against the full schema, over
every item, refusals and crashes counted) as generated and after repair, with 95% Wilson
intervals, from ``extract.report.summarise`` (the report's own figures). For JSON Schema Test
Suite rows it also restricts to the cases in files that JSONSchemaBench's per-file figure
covers and prints each published engine's rate weighted by those cases
(``extract.report.reference.TEST_SUITE_COVERAGE``), since the figure has no aggregate.
Nothing is run; the folders are read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from extract.report import load_rows, summarise  # noqa: E402
from extract.report.reference import TEST_SUITE_COVERAGE, TEST_SUITE_ENGINES, best_published  # noqa: E402
from extract.report.render import CORPUS_SCHEMA  # noqa: E402


def _rate(run: dict[str, Any], key: str) -> str:
    lo, hi = run["ci95"][key]
    return f"{run[key]:.2f} [{lo:.2f}–{hi:.2f}]"


def _table(rows: list[dict[str, Any]], label: str) -> None:
    for run in summarise(rows)["runs"]:
        if run["schema"] != CORPUS_SCHEMA:
            continue  # an extraction run (one schema for every row): not a coverage figure
        corpus = str(run["data"]).split("/")[0]
        print(f"| {label} {corpus} | {run['policy']} | {run['n']} | {run['compile_coverage']:.2f} | "
              f"{_rate(run, 'empirical_coverage_generated')} | {_rate(run, 'empirical_coverage')} |")


def _test_suite_file(item: str) -> str:
    return item.split("#")[0].removesuffix(".json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    print("| rows | policy | n | compile coverage | valid as generated | valid after repair |")
    print("|---|---|---|---|---|---|")
    published: list[str] = []
    for folder in args.folders:
        rows = load_rows(folder / "attempts.jsonl")
        data = sorted({str(r.get("data")) for r in rows if r.get("schema") == CORPUS_SCHEMA})
        _table(rows, f"{folder.name} (all)")
        for name in data:
            collection = name.split("/")[0]
            ref = best_published(collection)
            published.append(f"{collection}: best published engine = {ref or 'not read from a primary source'}")
        cases = sorted({str(r["item"]) for r in rows if str(r.get("data", "")).startswith("json-schema-test-suite")})
        covered = {i for i in cases if _test_suite_file(i) in TEST_SUITE_COVERAGE}
        if covered:
            _table([r for r in rows if r["item"] in covered], f"{folder.name} (files in the figure)")
            weighted = ", ".join(
                f"{name} {sum(TEST_SUITE_COVERAGE[_test_suite_file(i)][e] for i in covered) / len(covered):.2f}"
                for e, name in enumerate(TEST_SUITE_ENGINES))
            published.append(f"{folder.name}: {len(covered)} of {len(cases)} cases in files of "
                             f"Test_Suite_coverage.png; published per-file rates weighted by them: {weighted}")
    print()
    for line in published:
        print(line)


if __name__ == "__main__":
    main()
