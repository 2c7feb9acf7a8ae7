"""How honest and how lenient deterministic repair is, on public broken/expected JSON pairs.

On ``pairs.jsonl`` (the test suites of json_repair and jsonrepair): repaired to the expected
value %, valid but different %, rejected %, and mean time per input. On JSONTestSuite's ``n_``
cases (documents every parser must reject): how many ``parse_output`` turns into something,
with examples, so the leniency is known. Uses only the public API; the spec is ``{}`` (any
JSON), so only syntax repair is measured.

    .venv/bin/python benchmarks/repair.py [--data ../shared/data/json-repair]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from extract import compile_spec, parse_output

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "json-repair"


def _rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    spec = compile_spec({})

    counts = {"exact": 0, "different": 0, "rejected": 0}
    by_source: dict[str, dict[str, int]] = {}
    different: list[tuple[str, Any, str]] = []
    elapsed = 0.0
    pairs = _rows(args.data / "pairs.jsonl")
    for row in pairs:
        try:
            expected = json.loads(row["expected"])
            has_expected = True
        except ValueError:
            expected, has_expected = None, False  # expected "not JSON": only a rejection matches
        started = time.perf_counter()
        checked = parse_output(row["broken"], spec)
        elapsed += time.perf_counter() - started
        if not checked.ok:
            outcome = "rejected"
        elif has_expected and _same(checked.value, expected):
            outcome = "exact"
        else:
            outcome = "different"
            different.append((row["broken"], checked.value, row["expected"]))
        counts[outcome] += 1
        src = "must stay equal" if "must stay equal" in row["source"] else row["source"].split()[0]
        by_source.setdefault(src, {"exact": 0, "different": 0, "rejected": 0})[outcome] += 1

    n = len(pairs)
    print(f"## pairs.jsonl ({n} inputs, spec = any JSON)\n")
    print("| source | n | repaired to expected | valid but different | rejected |")
    print("|---|---:|---:|---:|---:|")
    for src, c in sorted(by_source.items()):
        t = sum(c.values())
        print(f"| {src} | {t} | {100 * c['exact'] / t:.1f}% | {100 * c['different'] / t:.1f}% "
              f"| {100 * c['rejected'] / t:.1f}% |")
    print(f"| **all** | {n} | {100 * counts['exact'] / n:.1f}% | {100 * counts['different'] / n:.1f}% "
          f"| {100 * counts['rejected'] / n:.1f}% |")
    print(f"\nmean time per input: {1000 * elapsed / n:.3f} ms")
    print("\nvalid but different, first 8 (broken -> ours | expected):")
    for broken, got, want in different[:8]:
        print(f"  {broken[:60]!r} -> {json.dumps(got)[:50]} | {want[:50]}")

    cases = [r for r in _rows(args.data / "jsontestsuite.jsonl") if r["expect"] == "n" and "text" in r]
    accepted = []
    for r in cases:
        checked = parse_output(r["text"], spec)
        if checked.ok:
            accepted.append((r["name"], r["text"], checked.value, checked.repairs))
    print(f"\n## JSONTestSuite n_ (must-reject) cases: {len(cases)}\n")
    print(f"'repaired' into a value: {len(accepted)} ({100 * len(accepted) / len(cases):.1f}%), "
          f"rejected: {len(cases) - len(accepted)}")
    print("examples:")
    for name, text, value, repairs in accepted[:12]:
        print(f"  {name}: {text[:40]!r} -> {json.dumps(value)[:40]} {repairs}")


if __name__ == "__main__":
    main()
