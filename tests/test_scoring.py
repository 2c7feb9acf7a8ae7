"""The one scoring module: every definition checked against numbers worked out by hand.

Wilson's interval is checked against its closed form at n = 5 (the size of the historical
compliance run's rows); the bootstrap against its own seed and against a case whose answer
is known (every resample of identical items gives the same value).
"""

from __future__ import annotations

import math

import pytest

from extract.report.aggregate import aggregate, field_figures, group_items
from extract.report.scoring import (
    FieldCounts,
    bootstrap_interval,
    field_counts,
    field_path,
    field_tally,
    gold_for_schema,
    instance_valid,
    wilson_interval,
)
from tests.test_report import RUN, hand_made_rows


def test_wilson_interval_closed_form() -> None:
    # k = n = 5: the lower bound is n / (n + z^2) = 5 / 8.8415 = 0.5655; the upper is 1.
    lo, hi = wilson_interval(5, 5) or (0.0, 0.0)
    assert lo == pytest.approx(5 / (5 + 1.959963984540054**2), abs=1e-9) and hi == pytest.approx(1.0)
    lo, hi = wilson_interval(0, 5) or (1.0, 1.0)
    assert lo == pytest.approx(0.0) and hi == pytest.approx(1 - 5 / (5 + 1.959963984540054**2))
    # k = 25, n = 50: centred on 0.5, half-width z*sqrt(.25/50 + z^2/10000) / (1 + z^2/50).
    z = 1.959963984540054
    half = z * math.sqrt(0.25 / 50 + z * z / 10000) / (1 + z * z / 50)
    assert wilson_interval(25, 50) == pytest.approx((0.5 - half, 0.5 + half))
    assert wilson_interval(0, 0) is None


def test_bootstrap_is_seeded_and_brackets_the_statistic() -> None:
    items = [0.0] * 30 + [1.0] * 70

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    a = bootstrap_interval(items, mean, seed=3)
    assert a == bootstrap_interval(items, mean, seed=3)  # same rows, same report
    assert a is not None and a[0] < 0.7 < a[1] and a[1] - a[0] < 0.25
    assert bootstrap_interval([2.0] * 10, mean) == (2.0, 2.0)
    assert bootstrap_interval([], mean) is None
    # A statistic undefined on most resamples gives no interval rather than a made-up one.
    assert bootstrap_interval([0.0] * 9 + [1.0], lambda xs: None if sum(xs) < 3 else 1.0) is None


def test_field_counts_and_per_field_tally() -> None:
    gold = {"a": "X.", "b": ["q", "r"], "c": "z", "authors": [{"name": "Ann"}, {"name": "Bo"}]}
    pred = {"a": "x", "b": "r", "c": "y", "d": "extra", "authors": [{"name": "ann"}, {"name": "Cy"}]}
    tally = field_tally(pred, gold)
    assert tally == {"a": (1, 0, 0), "b": (1, 0, 0), "c": (0, 1, 1), "d": (0, 1, 0),
                     "authors[0].name": (1, 0, 0), "authors[1].name": (0, 1, 1)}
    assert field_counts(pred, gold) == (3, 3, 2)
    counts = FieldCounts(*field_counts(pred, gold))
    assert counts.f1 == pytest.approx(6 / (6 + 3 + 2)) and not counts.exact
    assert FieldCounts().f1 is None and FieldCounts().exact  # nothing wanted, nothing given
    assert field_path("authors[12].name") == "authors[].name"
    assert gold_for_schema({"container-title": "J", "Recipient": "x", "title": "T"},
                           {"container_title", "title"}) == {"container_title": "J", "title": "T"}


def test_field_figures_name_the_fields_most_often_wrong() -> None:
    (run,) = aggregate(hand_made_rows())
    scored = [o for o in run.items if not o.bad and not o.all_skipped and o.last.get("gold") is not None]
    by_field = {f["field"]: f for f in field_figures(scored)}
    # A: x right, z missed; B: x and y right ('Q.' ~ 'q'); C failed: x missed.
    assert by_field["x"] == {"field": "x", "gold": 3, "right": 2, "wrong": 0, "missed": 1, "extra": 0,
                             "f1": pytest.approx(4 / 5)}
    assert by_field["z"]["missed"] == 1 and by_field["z"]["f1"] == 0.0
    assert [f["field"] for f in field_figures(scored)] == ["x", "z", "y"]  # most errors first, then by name
    assert run.to_json()["fields"] == field_figures(scored)


def test_intervals_are_in_the_summary() -> None:
    (run,) = aggregate(hand_made_rows())
    ci = run.to_json()["ci95"]
    assert ci["schema_valid_after_repair"] == pytest.approx(list(wilson_interval(2, 3) or ()))
    assert ci["empirical_coverage"] == pytest.approx(list(wilson_interval(2, 4) or ()))
    lo, hi = ci["field_f1"]
    assert 0.0 <= lo <= 0.75 <= hi <= 1.0  # the point estimate 6/8 lies inside


def test_instance_valid_checks_the_full_schema_formats_and_draft() -> None:
    schema = {"type": "object", "properties": {"when": {"type": "string", "format": "date"}},
              "not": {"required": ["forbidden"]}}
    assert instance_valid({"when": "2024-02-29"}, schema)
    assert not instance_valid({"when": "yesterday"}, schema)  # formats are checked
    assert not instance_valid({"when": "2024-02-29", "forbidden": 1}, schema)  # `not` too
    # Draft-04's boolean exclusiveMaximum is read as draft-04 when the schema says so.
    d4 = {"$schema": "http://json-schema.org/draft-04/schema#", "maximum": 3, "exclusiveMaximum": True}
    assert instance_valid(2, d4) and not instance_valid(3, d4)
    assert not instance_valid(1, {"type": 12})  # an invalid schema validates nothing
    assert instance_valid("x", True) and not instance_valid("x", False)


def test_empirical_coverage_counts_the_full_schema_verdict_not_the_chains() -> None:
    rows = [r for r in hand_made_rows() if r["item"] in ("A", "B")]
    for r in rows:
        if r["index"] == r["of"] - 1:
            # A is valid by the chain but not against the full schema; B is valid both ways.
            r.update(gold=None, item_schema_valid=r["item"] == "B", item_witness=True)
    (run,) = aggregate(rows)
    fig = run.to_json()
    assert fig["schema_valid_after_repair"] == 1.0  # the chain's verdict
    assert fig["empirical_coverage"] == pytest.approx(1 / 2)  # the full schema's
    assert fig["empirical_coverage_generated"] == 0.0  # B needed a repair
    assert fig["schema_checked"] and fig["witnessed"] == 2
    assert set(group_items(rows)) == {tuple(RUN.values())}


def test_a_remote_ref_is_never_fetched() -> None:
    """A real loopback server holds the referenced schema; validation must not ask it for it."""
    import http.server
    import threading

    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = b'{"type": "integer"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/integer.json"
        assert not instance_valid(1, {"$ref": url})  # not resolvable offline: not covered
        assert asked == []
        assert instance_valid({}, {"$ref": "https://json-schema.org/draft/2020-12/schema"})  # bundled
    finally:
        server.shutdown()
        server.server_close()


def test_a_crash_counts_against_the_code_not_as_bad_input() -> None:
    rows = [r for r in hand_made_rows() if r["item"] in ("A", "E")]
    crash = {**next(r for r in rows if r["item"] == "E"), "item": "F"}
    crash["error"] = {"type": "bad_row", "message": "row 6: KeyError: 'x'",
                      "details": [{"line": 6, "exception": "KeyError"}]}
    (run,) = aggregate([*rows, crash])
    fig = run.to_json()
    assert fig["n"] == 2 and fig["ran"] == 2 and fig["bad_rows"] == 1  # A and F ran; E is bad input
    assert fig["failures"] == {"bad_row": 1, "crashed": 1}
    assert fig["schema_valid_after_repair"] == pytest.approx(1 / 2)
