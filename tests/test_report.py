"""The compliance aggregator's arithmetic, checked figure by figure on hand-made attempts.

Every number asserted here was worked out by hand from the attempts below (the comments say
how), so a change in a definition shows up as a failing figure, not a silent drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extract import Attempt, AttemptError, Result, Usage
from extract.report import aggregate, failure_cause, field_counts, normalise, percentile, render, rows_for_result
from extract.report.render import load_rows

RUN = {"data": "d", "schema": "s", "policy": "chain"}


def _err(kind: str, *details: dict[str, Any]) -> AttemptError:
    return AttemptError(type=kind, message=kind, details=list(details))


def hand_made_rows() -> list[dict[str, Any]]:
    """Five items: A (local wins after a native failure), B (native wins after repair),
    C (both fail), D (every tier skipped: unsupported) and E (a bad row)."""
    a = Result(value={"x": "A ", "y": None}, tier="local", attempts=[
        Attempt(tier="native", raw="{bad", error=_err("invalid_json"), usage=Usage.of(10, 5), latency_s=1.0),
        Attempt(tier="local", raw='{"x":"A "}', value={"x": "A "}, usage=Usage.of(20, 10), latency_s=2.0),
    ])
    b = Result(value={"x": "b", "y": "q"}, tier="native", attempts=[
        Attempt(tier="native", raw='```json\n{"x":"b","y":"q"}\n```', value={"x": "b", "y": "q"},
                repaired=True, repairs=["strip_code_fence"], usage=Usage.of(7, 5), latency_s=1.5),
    ])
    c = Result(attempts=[
        Attempt(tier="native", raw='{"x":"toolong"}', usage=Usage.of(5, 3), latency_s=0.5,
                error=_err("schema_violation", {"loc": ["x"], "type": "string_too_long"})),
        Attempt(tier="local", raw='{"x":"ab', error=_err("truncated"), usage=Usage.of(30, 10), latency_s=3.0),
    ])
    d = Result(attempts=[
        Attempt(tier="native", skipped=True, error=_err("unavailable")),
        Attempt(tier="local", skipped=True, error=_err("unsupported", {"feature": "recursion"})),
    ])
    rows = []
    rows += rows_for_result(a, **RUN, item="A", latency_s=3.5, gold={"x": "a", "z": "c"})
    rows += rows_for_result(b, **RUN, item="B", latency_s=1.6, gold={"x": "b", "y": "Q."})
    rows += rows_for_result(c, **RUN, item="C", latency_s=5.0, gold={"x": "c"})
    rows += rows_for_result(d, **RUN, item="D", latency_s=0.0)
    bad = Attempt(tier="chain", skipped=True, error=_err("bad_row", {"line": 5})).model_dump(mode="json")
    rows.append({**bad, **RUN, "item": "E", "index": 0, "of": 1, "item_ok": False, "item_tier": None,
                 "item_value": None, "item_latency_s": 0.0, "gold": None})
    # Round-trip through JSON, as attempts.jsonl does.
    return [json.loads(json.dumps(r)) for r in rows]


def test_run_figures_every_one() -> None:
    (run,) = aggregate(hand_made_rows())
    fig = run.to_json()
    assert (fig["data"], fig["schema"], fig["policy"]) == ("d", "s", "chain")
    assert fig["n"] == 4  # A B C D; E is a bad row, counted apart
    assert fig["ran"] == 3 and fig["skipped"] == 1 and fig["bad_rows"] == 1
    assert fig["compile_coverage"] == pytest.approx(3 / 4)  # D: every tier refused its schema
    assert fig["empirical_coverage"] == pytest.approx(2 / 4)  # A and B valid, over all four
    # valid JSON as generated: A (local raw), C (native raw); B's raw is fenced.
    assert fig["valid_json"] == pytest.approx(2 / 3)
    assert fig["schema_valid_generated"] == pytest.approx(1 / 3)  # A only; B needed repair
    assert fig["schema_valid_after_repair"] == pytest.approx(2 / 3)  # A and B
    # Leaf fields: A tp 1 (x) fn 1 (z); B tp 2 ('Q.' ~ 'q'); C fn 1 (failed, nothing predicted).
    assert fig["field_precision"] == pytest.approx(1.0)
    assert fig["field_recall"] == pytest.approx(3 / 5)
    assert fig["field_f1"] == pytest.approx(2 * 3 / (2 * 3 + 0 + 2))
    assert fig["exact_match"] == pytest.approx(1 / 3)  # B
    # Calls: A 2, B 1, C 2 = 5; tokens 15 + 30 + 12 + 8 + 40 = 105; over 2 valid results.
    assert fig["calls_per_valid"] == pytest.approx(5 / 2)
    assert fig["tokens_per_valid"] == pytest.approx(105 / 2)
    # Item latencies 3.5, 1.6, 5.0: p50 3.5; p95 at rank 1.9 -> 3.5 + 0.9 * 1.5.
    assert fig["latency_p50_s"] == pytest.approx(3.5)
    assert fig["latency_p95_s"] == pytest.approx(4.85)
    assert fig["failures"] == {"bad_row": 1, "truncated": 1, "unsupported": 1}


def test_tier_figures_every_one() -> None:
    (run,) = aggregate(hand_made_rows())
    tiers = {t["tier"]: t for t in run.to_json()["tiers"]}
    assert set(tiers) == {"native", "local"}
    native, local = tiers["native"], tiers["local"]
    assert (native["attempts"], native["skipped"]) == (4, 1)
    assert native["valid_json"] == pytest.approx(1 / 3)  # C's raw only
    assert native["schema_valid_generated"] == 0.0
    assert native["schema_valid_after_repair"] == pytest.approx(1 / 3)  # B, repaired
    assert native["calls_per_valid"] == pytest.approx(3.0)
    assert native["tokens_per_valid"] == pytest.approx(15 + 12 + 8)
    assert native["latency_p50_s"] == pytest.approx(1.0)
    assert native["latency_p95_s"] == pytest.approx(1.0 + 0.9 * 0.5)
    assert native["failures"] == {"invalid_json": 1, "schema_violation:string_too_long": 1}
    assert native["skips"] == {"unavailable": 1}

    assert (local["attempts"], local["skipped"]) == (3, 1)
    assert local["valid_json"] == pytest.approx(1 / 2)
    assert local["schema_valid_generated"] == pytest.approx(1 / 2)
    assert local["schema_valid_after_repair"] == pytest.approx(1 / 2)
    assert local["calls_per_valid"] == pytest.approx(2.0)
    assert local["tokens_per_valid"] == pytest.approx(70.0)
    assert local["latency_p50_s"] == pytest.approx(2.5)
    assert local["latency_p95_s"] == pytest.approx(2.0 + 0.95 * 1.0)
    assert local["failures"] == {"truncated": 1}
    assert local["skips"] == {"unsupported": 1}


def test_no_valid_result_gives_none_not_zero_division() -> None:
    c = Result(attempts=[Attempt(tier="local", raw="x", error=_err("invalid_json"), usage=Usage.of(1, 1))])
    (run,) = aggregate(rows_for_result(c, **RUN, item="C", latency_s=1.0))
    fig = run.to_json()
    assert fig["calls_per_valid"] is None and fig["tokens_per_valid"] is None
    assert fig["field_f1"] is None and fig["exact_match"] is None  # no gold given
    assert fig["schema_valid_after_repair"] == 0.0


def test_incomplete_item_is_not_counted() -> None:
    rows = hand_made_rows()
    cut = [r for r in rows if not (r["item"] == "A" and r["index"] == 1)]  # A lost its last row
    (run,) = aggregate(cut)
    assert {o.item for o in run.items} == {"B", "C", "D", "E"}


@pytest.mark.parametrize(
    ("kind", "details", "cause"),
    [
        ("invalid_json", [], "invalid_json"),
        ("empty_output", [], "invalid_json"),
        ("schema_violation", [{"type": "required"}], "schema_violation:required"),
        ("schema_violation", [], "schema_violation"),
        ("deadline", [], "timeout"),
        ("provider_error", [], "provider_error"),
        ("breaker_open", [], "provider_error"),
        ("validator_failed", [], "validator"),
        ("truncated", [], "truncated"),
        ("unsupported", [], "unsupported"),
    ],
)
def test_failure_causes(kind: str, details: list[dict[str, Any]], cause: str) -> None:
    assert failure_cause(kind, details) == cause


def test_field_counts_and_normalising() -> None:
    assert normalise("  (1994).  ") == "1994"
    assert normalise("New\t York") == "new york"
    # Nested leaves, a list of scalars as one leaf, gold alternatives, empty values ignored.
    pred = {"a": {"b": "X"}, "tags": ["p", "q"], "c": "", "d": None, "e": "wrong"}
    gold = {"a": {"b": "x."}, "tags": ["Q", "P"], "e": ["right", "also right"], "f": "missed"}
    assert field_counts(pred, gold) == (2, 1, 2)
    assert field_counts(None, {"a": "1"}) == (0, 0, 1)
    assert field_counts({"a": "1"}, None) == (0, 1, 0)


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([4.0], 95) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)


def test_render_writes_every_output_and_rerenders_the_same(tmp_path: Path) -> None:
    path = tmp_path / "attempts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in hand_made_rows()) + '{"cut', encoding="utf-8")
    assert len(load_rows(path)) == len(hand_made_rows())  # the cut last line is ignored
    summary = render(tmp_path, command="extract bench --data d.jsonl")
    for name in ("summary.json", "report.md", "report.html", "compliance.png", "cost.png", "latency.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    written = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(summary))
    keys = {"data", "schema", "policy", "n", "valid_json", "schema_valid_generated", "schema_valid_after_repair",
            "field_f1", "exact_match", "calls_per_valid", "tokens_per_valid", "latency_p50_s", "latency_p95_s",
            "failures"}
    assert keys <= set(written["runs"][0])
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "extract bench --data d.jsonl" in md and "| d | s | chain | 4 |" in md
    assert render(tmp_path) == summary


def test_an_item_every_tier_skipped_is_counted_by_its_skip_reason() -> None:
    r = Result(attempts=[Attempt(tier="repair", skipped=True, error=_err("nothing_to_repair"))])
    (run,) = aggregate(rows_for_result(r, **RUN, item="R", latency_s=0.0))
    fig = run.to_json()
    assert (fig["n"], fig["ran"], fig["skipped"]) == (1, 0, 1)
    assert fig["failures"] == {"nothing_to_repair": 1}
    assert fig["compile_coverage"] == 1.0 and fig["schema_valid_after_repair"] is None
    assert fig["tiers"][0]["skips"] == {"nothing_to_repair": 1}
