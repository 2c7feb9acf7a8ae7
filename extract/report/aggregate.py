"""Attempt rows -> compliance figures, per run (data × schema × policy) and per tier.

A *row* is one ``Attempt`` dumped as JSON (``Attempt.model_dump(mode="json")``) with the
item it belongs to added: ``data``, ``schema``, ``policy``, ``item``, ``index`` (its place
among the item's attempts) and ``of`` (how many the item has). The last row of an item also
carries the item's outcome (``item_ok``, ``item_tier``, ``item_value``, ``item_latency_s``)
and its ``gold`` when there is one. The benchmark writes these rows to ``attempts.jsonl``;
production code can build the same rows with ``rows_for_result`` and feed them here, so the
figures in a report are computed one way only.

The definitions, once (the DESIGN's, made exact):

- *valid as generated*: an attempt with no error, not skipped, not ``repaired``;
- *valid after repair*: an attempt with no error, repaired or not;
- *valid JSON*: an attempt that reached a model and whose ``raw`` parses as JSON as it is;
- an item whose extraction raised (a ``bad_row`` naming the exception) *crashed*: it ran and
  failed, and counts in every rate, unlike bad input;
- *skipped* attempts (``unavailable``, ``unsupported``) are counted apart: they are not
  failures of generation, and an item whose every tier refused its schema is a
  compile-coverage failure;
- an item's *model calls* are its attempts that reached a model (not skipped, not stopped
  by the breaker or the deadline before the call);
- field accuracy (micro F1 over leaf fields, exact match), the 95% intervals and the schema
  corpora's compile and empirical coverage are ``extract.report.scoring``'s, defined there
  once for every benchmark. A corpus item's last row carries ``item_schema_valid``: whether its
  value validates against the full schema (``scoring.instance_valid``); empirical coverage
  counts that, not the chain's own verdict.

This module imports only the standard library, ``extract.types`` and ``extract.report``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from extract.report.confidence import auroc, expected_calibration_error, precision_at_coverage, reliability_bins
from extract.report.scoring import (
    FieldCounts,
    bootstrap_interval,
    field_counts,
    field_path,
    field_tally,
    leaves,
    matches,
    normalise,
    wilson_interval,
)
from extract.types import Attempt, Result

__all__ = [
    "NO_CALL",
    "ItemOutcome",
    "RunFigures",
    "TierFigures",
    "aggregate",
    "confidence_figures",
    "failure_cause",
    "field_counts",
    "judged_values",
    "leaves",
    "normalise",
    "percentile",
    "rows_for_result",
]

# Errors recorded before any request left: not model calls.
NO_CALL = frozenset({"breaker_open", "deadline", "unavailable", "unsupported", "bad_row"})
_SKIP_TYPES = frozenset({"unavailable", "unsupported"})


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _gold_for(path: str, gold: Any) -> Any:
    """The gold value at a JSON pointer (``leaves`` naming: ``a.b``, ``a[0].b``); a list of
    scalars is one leaf, so an item of it is matched against the whole list (alternatives)."""
    want = leaves(gold) if isinstance(gold, Mapping) else {}
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    dotted = ""
    for part in parts:
        dotted = f"{dotted}[{part}]" if part.isdigit() else (f"{dotted}.{part}" if dotted else part)
        if dotted in want:
            return want[dotted]
    return None


def judged_values(outcomes: Iterable[ItemOutcome]) -> Iterator[tuple[dict[str, Any], dict[str, Any], bool]]:
    """Every value of a winning attempt on an item with gold: (winning row, field, right).
    One rule for what "right" means, shared by the report's figures and ``extract bench
    --fit-calibration``."""
    for o in outcomes:
        gold = o.last.get("gold")
        winner = o.winner()
        if gold is None or winner is None:
            continue
        for f in winner.get("fields") or []:
            want = _gold_for(str(f.get("path", "")), gold)
            yield winner, f, want is not None and matches(f.get("value"), want)


def confidence_figures(outcomes: Iterable[ItemOutcome]) -> dict[str, dict[str, Any]]:
    """Per winning tier: how well the values' confidences tell right from wrong against gold
    (AUROC, ECE, precision over the surest 90/70/50%, reliability bins). Only items with gold
    and values with a confidence count; empty when there are none."""
    by_tier: dict[str, tuple[list[float], list[bool]]] = {}
    for winner, f, right in judged_values(outcomes):
        conf = f.get("confidence")
        if conf is None:
            continue
        scores, labels = by_tier.setdefault(str(winner.get("tier")), ([], []))
        scores.append(float(conf))
        labels.append(right)
    return {
        tier: {"values": len(s), "precision": sum(y) / len(y), "auroc": auroc(s, y),
               "ece": expected_calibration_error(s, y),
               **{f"precision_at_{c}": precision_at_coverage(s, y, c / 100) for c in (90, 70, 50)},
               "reliability": reliability_bins(s, y)}
        for tier, (s, y) in by_tier.items()
    }


def failure_cause(error_type: str, details: Sequence[Mapping[str, Any]] = ()) -> str:
    """The cause a report counts: schema violations split by the keyword that failed."""
    if error_type in ("invalid_json", "empty_output"):
        return "invalid_json"
    if error_type == "schema_violation":
        keyword = next((str(d["type"]) for d in details if d.get("type")), "")
        return f"schema_violation:{keyword}" if keyword else "schema_violation"
    if error_type in ("deadline", "timeout"):
        return "timeout"
    if error_type in ("provider_error", "breaker_open"):
        return "provider_error"
    if error_type.startswith("validator"):
        return "validator"
    return error_type


def _valid_json(raw: str | None) -> bool:
    if raw is None:
        return False
    try:
        json.loads(raw)
    except (ValueError, TypeError):
        return False
    return True


def rows_for_result(
    result: Result,
    *,
    data: str,
    schema: str,
    policy: str,
    item: str,
    latency_s: float,
    gold: Any = None,
) -> list[dict[str, Any]]:
    """The attempt rows of one ``Result`` (what ``attempts.jsonl`` holds, one per line)."""
    dumped = result.to_json_dict()
    attempts: list[dict[str, Any]] = dumped["attempts"] or [
        Attempt(tier=policy, skipped=True).model_dump(mode="json")
    ]
    rows: list[dict[str, Any]] = []
    for index, attempt in enumerate(attempts):
        row = {**attempt, "data": data, "schema": schema, "policy": policy, "item": item,
               "index": index, "of": len(attempts)}
        if index == len(attempts) - 1:
            row.update(item_ok=result.ok, item_tier=result.tier, item_value=dumped["value"],
                       item_latency_s=latency_s, gold=gold)
        rows.append(row)
    return rows


@dataclass
class TierFigures:
    """One tier's attempts within one run."""

    tier: str
    attempts: int = 0
    skipped: int = 0
    valid_json: int = 0
    valid_generated: int = 0
    valid_after_repair: int = 0
    calls: int = 0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    skips: Counter[str] = field(default_factory=Counter)

    @property
    def ran(self) -> int:
        """Attempts that were not skipped: the denominator of every rate."""
        return self.attempts - self.skipped

    def to_json(self) -> dict[str, Any]:
        ran = self.ran
        return {
            "tier": self.tier,
            "attempts": self.attempts,
            "skipped": self.skipped,
            "valid_json": _frac(self.valid_json, ran),
            "schema_valid_generated": _frac(self.valid_generated, ran),
            "schema_valid_after_repair": _frac(self.valid_after_repair, ran),
            "calls_per_valid": _frac(self.calls, self.valid_after_repair),
            "tokens_per_valid": _frac(self.tokens, self.valid_after_repair),
            "latency_p50_s": percentile(self.latencies, 50),
            "latency_p95_s": percentile(self.latencies, 95),
            "failures": dict(sorted(self.failures.items())),
            "skips": dict(sorted(self.skips.items())),
        }


@dataclass
class ItemOutcome:
    """One item's attempts and outcome, rebuilt from its rows."""

    item: str
    rows: list[dict[str, Any]]
    _counts: tuple[int, int, int] | None = field(default=None, repr=False, compare=False)

    @property
    def last(self) -> dict[str, Any]:
        return self.rows[-1]

    @property
    def bad(self) -> bool:
        """Bad input (a row without text, a schema that does not load): counted apart."""
        return not self.crashed and any((r.get("error") or {}).get("type") == "bad_row" for r in self.rows)

    @property
    def crashed(self) -> bool:
        """The extraction raised (the benchmark records the exception's name): a failure of the
        code under test, counted against it like any other failure, never as bad input."""
        return any((r.get("error") or {}).get("type") == "bad_row"
                   and any("exception" in d for d in (r.get("error") or {}).get("details") or [])
                   for r in self.rows)

    @property
    def ok(self) -> bool:
        return bool(self.last.get("item_ok"))

    @property
    def all_skipped(self) -> bool:
        return not self.crashed and all(r.get("skipped") for r in self.rows)

    @property
    def unsupported(self) -> bool:
        """Every tier refused the schema: a compile-coverage failure."""
        return self.all_skipped and any(
            (r.get("error") or {}).get("type") == "unsupported" for r in self.rows
        )

    def winner(self) -> dict[str, Any] | None:
        return next((r for r in self.rows if _row_ok(r)), None)

    @cached_property
    def calls(self) -> int:
        """Attempts that reached a model."""
        return sum(1 for r in self.rows
                   if not r.get("skipped") and (r.get("error") or {}).get("type", "") not in NO_CALL)

    @cached_property
    def tokens(self) -> int:
        return sum(int((r.get("usage") or {}).get("total_tokens", 0)) for r in self.rows)

    def cause(self) -> str:
        """Why an item that produced nothing failed: its last real attempt's cause, or why
        every tier was skipped."""
        if self.bad:
            return "bad_row"
        if self.crashed:
            return "crashed"
        if self.all_skipped:
            kinds = [str((r.get("error") or {}).get("type") or "skipped") for r in self.rows]
            return "unsupported" if self.unsupported else kinds[0]
        last = next((r for r in reversed(self.rows) if r.get("error") and not r.get("skipped")), None)
        if last is None:
            return "no_result"
        return failure_cause(str(last["error"]["type"]), last["error"].get("details") or [])

    def field_counts(self) -> tuple[int, int, int]:
        """(tp, fp, fn) of the item's value against its gold; a failed item predicts nothing."""
        if self._counts is None:
            self._counts = field_counts(self.last.get("item_value") if self.ok else None, self.last.get("gold"))
        return self._counts

    def covered(self, checked: bool) -> bool:
        """Empirical coverage: a value that validates against the full schema (when the rows
        say so), else the chain's own verdict."""
        if self.bad or self.all_skipped or not self.ok:
            return False
        return bool(self.last.get("item_schema_valid")) if checked else True


def _row_ok(row: Mapping[str, Any]) -> bool:
    return row.get("error") is None and not row.get("skipped")


def _frac(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass
class RunFigures:
    """Everything ``summary.json`` says about one (data, schema, policy) run."""

    data: str
    schema: str
    policy: str
    items: list[ItemOutcome] = field(default_factory=list)
    tiers: dict[str, TierFigures] = field(default_factory=dict)

    def add_item(self, outcome: ItemOutcome) -> None:
        self.items.append(outcome)
        if outcome.bad:
            return
        if outcome.crashed:
            tier = self.tiers.setdefault(self.policy, TierFigures(self.policy))
            tier.attempts += 1
            tier.failures["crashed"] += 1
            return
        for row in outcome.rows:
            name = str(row.get("tier") or self.policy)
            tier = self.tiers.setdefault(name, TierFigures(name))
            tier.attempts += 1
            error = row.get("error") or None
            etype = str(error["type"]) if error else ""
            if row.get("skipped") or etype in _SKIP_TYPES:
                tier.skipped += 1
                tier.skips[etype or "skipped"] += 1
                continue
            if etype not in NO_CALL:
                tier.calls += 1
            tier.tokens += int((row.get("usage") or {}).get("total_tokens", 0))
            tier.latencies.append(float(row.get("latency_s") or 0.0))
            if _valid_json(row.get("raw")):
                tier.valid_json += 1
            if error is None:
                tier.valid_after_repair += 1
                if not row.get("repaired"):
                    tier.valid_generated += 1
            else:
                tier.failures[failure_cause(etype, error.get("details") or [])] += 1

    def to_json(self) -> dict[str, Any]:
        good = [o for o in self.items if not o.bad]
        ran = [o for o in good if not o.all_skipped]
        n = len(good)
        valid = [o for o in ran if o.ok]
        generated = [o for o in valid if not (o.winner() or {}).get("repaired")]
        failures: Counter[str] = Counter()
        for o in good:
            if not o.ok:
                failures[o.cause()] += 1
        for o in self.items:
            if o.bad:
                failures["bad_row"] += 1
        scored = [o for o in ran if o.last.get("gold") is not None]
        counts = FieldCounts.total(o.field_counts() for o in scored)
        # A schema corpus: the full schema decides, checked apart from the chain's verdict.
        checked = any("item_schema_valid" in o.last for o in good)
        covered = [o for o in good if o.covered(checked)]
        covered_generated = [o for o in covered if not (o.winner() or {}).get("repaired")]
        witnessed = [o for o in good if o.last.get("item_witness")]
        latencies = [float(o.last.get("item_latency_s") or 0.0) for o in ran]
        out: dict[str, Any] = {
            "data": self.data,
            "schema": self.schema,
            "policy": self.policy,
            "n": n,
            "ran": len(ran),
            "skipped": n - len(ran),
            "bad_rows": len(self.items) - n,
            "compile_coverage": _frac(sum(not o.unsupported for o in good), n),
            # JSONSchemaBench's "empirical coverage": valid results over every item, refusals included.
            "empirical_coverage": _frac(len(covered), n),
            "empirical_coverage_generated": _frac(len(covered_generated), n),
            "valid_json": _frac(sum(any(_valid_json(r.get("raw")) for r in o.rows) for o in ran), len(ran)),
            "schema_valid_generated": _frac(len(generated), len(ran)),
            "schema_valid_after_repair": _frac(len(valid), len(ran)),
            "field_precision": counts.precision if scored else None,
            "field_recall": counts.recall if scored else None,
            "field_f1": counts.f1 if scored else None,
            "exact_match": _frac(sum(FieldCounts(*o.field_counts()).exact for o in scored), len(scored)),
            "calls_per_valid": _per_valid(ran, _calls),
            "tokens_per_valid": _per_valid(ran, _tokens),
            "latency_p50_s": percentile(latencies, 50),
            "latency_p95_s": percentile(latencies, 95),
            "failures": dict(sorted(failures.items())),
            "tiers": [t.to_json() for t in self.tiers.values()],
        }
        if checked:
            out["schema_checked"] = True
            if witnessed:
                # Over the schemas known to admit an instance (the test suite lists one for most).
                out["witnessed"] = len(witnessed)
                out["empirical_coverage_witnessed"] = _frac(sum(o in covered for o in witnessed), len(witnessed))
        out["ci95"] = self._intervals(n, ran, valid, generated, scored, covered, covered_generated)
        fields = field_figures(scored)
        if fields:
            out["fields"] = fields
        if conf := confidence_figures(ran):
            out["confidence"] = conf
        return out

    @staticmethod
    def _intervals(n: int, ran: list[ItemOutcome], valid: list[ItemOutcome], generated: list[ItemOutcome],
                   scored: list[ItemOutcome], covered: list[ItemOutcome],
                   covered_generated: list[ItemOutcome]) -> dict[str, list[float] | None]:
        """95% intervals: Wilson for every proportion, a seeded item bootstrap for the rest."""

        def interval(value: tuple[float, float] | None) -> list[float] | None:
            return list(value) if value is not None else None

        def f1_of(items: Sequence[ItemOutcome]) -> float | None:
            return FieldCounts.total(o.field_counts() for o in items).f1

        return {
            "empirical_coverage": interval(wilson_interval(len(covered), n)),
            "empirical_coverage_generated": interval(wilson_interval(len(covered_generated), n)),
            "schema_valid_generated": interval(wilson_interval(len(generated), len(ran))),
            "schema_valid_after_repair": interval(wilson_interval(len(valid), len(ran))),
            "exact_match": interval(wilson_interval(
                sum(FieldCounts(*o.field_counts()).exact for o in scored), len(scored))),
            "field_f1": interval(bootstrap_interval(scored, f1_of)),
            "calls_per_valid": interval(bootstrap_interval(ran, lambda s: _per_valid(s, _calls))),
            "tokens_per_valid": interval(bootstrap_interval(ran, lambda s: _per_valid(s, _tokens))),
            "latency_p50_s": interval(bootstrap_interval(
                ran, lambda s: percentile([float(o.last.get("item_latency_s") or 0.0) for o in s], 50))),
        }


def _calls(o: ItemOutcome) -> int:
    return o.calls


def _tokens(o: ItemOutcome) -> int:
    return o.tokens


def _per_valid(items: Sequence[ItemOutcome], cost: Callable[[ItemOutcome], int]) -> float | None:
    """Cost summed over every item (failed ones included) per valid result."""
    valid = sum(o.ok for o in items)
    return sum(cost(o) for o in items) / valid if valid else None


def field_figures(scored: Iterable[ItemOutcome]) -> list[dict[str, Any]]:
    """Per field (list positions folded): gold values, right, wrong, missed and extra, and F1;
    the fields most often wrong first."""
    tally: dict[str, list[int]] = {}
    for o in scored:
        for path, (tp, fp, fn) in field_tally(o.last.get("item_value") if o.ok else None,
                                             o.last.get("gold")).items():
            t = tally.setdefault(field_path(path), [0, 0, 0, 0, 0])  # gold, right, wrong, missed, extra
            t[0] += tp or fn
            t[1] += tp
            t[2] += fp and fn
            t[3] += fn and not fp
            t[4] += fp and not fn
    out = []
    for name, (gold, right, wrong, missed, extra) in tally.items():
        counts = FieldCounts(right, wrong + extra, wrong + missed)
        out.append({"field": name, "gold": gold, "right": right, "wrong": wrong, "missed": missed,
                    "extra": extra, "f1": counts.f1})
    return sorted(out, key=lambda f: (-(f["wrong"] + f["missed"] + f["extra"]), f["field"]))


def group_items(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], list[ItemOutcome]]:
    """Rows -> complete items per run key, in first-seen order; incomplete items are dropped."""
    pending: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    runs: dict[tuple[str, str, str], list[ItemOutcome]] = {}
    for row in rows:
        key = (str(row["data"]), str(row["schema"]), str(row["policy"]))
        ikey = (*key, str(row["item"]))
        if row.get("index", 0) == 0:
            pending[ikey] = []
        bucket = pending.setdefault(ikey, [])
        bucket.append(dict(row))
        if len(bucket) == int(row.get("of", 1)):
            runs.setdefault(key, []).append(ItemOutcome(str(row["item"]), bucket))
            del pending[ikey]
    return runs


def aggregate(rows: Iterable[Mapping[str, Any]]) -> list[RunFigures]:
    """Rows (as in ``attempts.jsonl``) -> one ``RunFigures`` per (data, schema, policy)."""
    out: list[RunFigures] = []
    for (data, schema, policy), items in group_items(rows).items():
        run = RunFigures(data, schema, policy)
        for item in items:
            run.add_item(item)
        out.append(run)
    return out
