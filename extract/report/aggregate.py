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
- *skipped* attempts (``unavailable``, ``unsupported``) are counted apart: they are not
  failures of generation, and an item whose every tier refused its schema is a
  compile-coverage failure;
- an item's *model calls* are its attempts that reached a model (not skipped, not stopped
  by the breaker or the deadline before the call);
- field accuracy is micro precision / recall / F1 over leaf fields, values compared after
  lower-casing, collapsing whitespace and trimming edge punctuation (the gold spans keep
  the text's punctuation, e.g. ``"(1994)."``), plus exact match: no missed and no extra leaf.

This module imports only the standard library and ``extract.types``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extract.report.confidence import auroc, expected_calibration_error, precision_at_coverage, reliability_bins
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
    "leaves",
    "normalise",
    "percentile",
    "rows_for_result",
]

# Errors recorded before any request left: not model calls.
NO_CALL = frozenset({"breaker_open", "deadline", "unavailable", "unsupported", "bad_row"})
_SKIP_TYPES = frozenset({"unavailable", "unsupported"})
_EDGE = re.compile(r"^[\W_]+|[\W_]+$")
_SPACE = re.compile(r"\s+")


def normalise(value: Any) -> str:
    """Case, whitespace and edge punctuation do not count against a value."""
    return _SPACE.sub(" ", _EDGE.sub("", str(value).lower())).strip()


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf fields as ``path -> value``; a list of scalars is one leaf, empty values are dropped."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for key, sub in value.items():
            out.update(leaves(sub, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
        for i, sub in enumerate(value):
            out.update(leaves(sub, f"{prefix}[{i}]"))
    elif value is not None and value != "" and value != []:
        out[prefix] = value
    return out


def _matches(predicted: Any, gold: Any) -> bool:
    """A scalar matches a gold scalar or any of a gold list's values (the datasets' alternatives);
    a predicted list matches when it holds the same values as the gold."""
    options = gold if isinstance(gold, list) else [gold]
    wanted = {normalise(o) for o in options}
    if isinstance(predicted, list):
        return {normalise(p) for p in predicted} == wanted
    return normalise(predicted) in wanted


def field_counts(predicted: Any, gold: Any) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) over leaf fields."""
    pred = leaves(predicted) if predicted is not None else {}
    want = leaves(gold) if gold is not None else {}
    tp = fp = 0
    for path, value in pred.items():
        if path in want and _matches(value, want[path]):
            tp += 1
        else:
            fp += 1
    fn = len(want) - tp
    return tp, fp, fn


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


def confidence_figures(outcomes: Iterable[ItemOutcome]) -> dict[str, dict[str, Any]]:
    """Per winning tier: how well the values' confidences tell right from wrong against gold
    (AUROC, ECE, precision over the surest 90/70/50%, reliability bins). Only items with gold
    and values with a confidence count; empty when there are none."""
    by_tier: dict[str, tuple[list[float], list[bool]]] = {}
    for o in outcomes:
        gold = o.last.get("gold")
        winner = o.winner()
        if gold is None or winner is None:
            continue
        for f in winner.get("fields") or []:
            conf = f.get("confidence")
            if conf is None:
                continue
            want = _gold_for(str(f.get("path", "")), gold)
            scores, labels = by_tier.setdefault(str(winner.get("tier")), ([], []))
            scores.append(float(conf))
            labels.append(want is not None and _matches(f.get("value"), want))
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

    @property
    def last(self) -> dict[str, Any]:
        return self.rows[-1]

    @property
    def bad(self) -> bool:
        return any((r.get("error") or {}).get("type") == "bad_row" for r in self.rows)

    @property
    def ok(self) -> bool:
        return bool(self.last.get("item_ok"))

    @property
    def all_skipped(self) -> bool:
        return all(r.get("skipped") for r in self.rows)

    @property
    def unsupported(self) -> bool:
        """Every tier refused the schema: a compile-coverage failure."""
        return self.all_skipped and any(
            (r.get("error") or {}).get("type") == "unsupported" for r in self.rows
        )

    def winner(self) -> dict[str, Any] | None:
        return next((r for r in self.rows if _row_ok(r)), None)


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
        calls = tokens = 0
        for o in ran:
            for r in o.rows:
                etype = (r.get("error") or {}).get("type", "")
                if not r.get("skipped") and etype not in NO_CALL:
                    calls += 1
                tokens += int((r.get("usage") or {}).get("total_tokens", 0))
        latencies = [float(o.last.get("item_latency_s") or 0.0) for o in ran]
        failures: Counter[str] = Counter()
        for o in good:
            if o.ok:
                continue
            if o.all_skipped:
                kinds = [str((r.get("error") or {}).get("type") or "skipped") for r in o.rows]
                failures["unsupported" if o.unsupported else kinds[0]] += 1
                continue
            last = next(r for r in reversed(o.rows) if r.get("error") and not r.get("skipped"))
            err = last["error"]
            failures[failure_cause(str(err["type"]), err.get("details") or [])] += 1
        for o in self.items:
            if o.bad:
                failures["bad_row"] += 1
        tp = fp = fn = exact = scored = 0
        for o in ran:
            gold = o.last.get("gold")
            if gold is None:
                continue
            scored += 1
            a, b, c = field_counts(o.last.get("item_value") if o.ok else None, gold)
            tp, fp, fn = tp + a, fp + b, fn + c
            exact += b == 0 and c == 0
        precision = _frac(tp, tp + fp)
        recall = _frac(tp, tp + fn)
        f1 = _frac(2 * tp, 2 * tp + fp + fn) if scored else None
        return {
            "data": self.data,
            "schema": self.schema,
            "policy": self.policy,
            "n": n,
            "ran": len(ran),
            "skipped": n - len(ran),
            "bad_rows": len(self.items) - n,
            "compile_coverage": _frac(sum(not o.unsupported for o in good), n),
            # JSONSchemaBench's "empirical coverage": valid results over every item, refusals included.
            "empirical_coverage": _frac(len(valid), n),
            "valid_json": _frac(sum(any(_valid_json(r.get("raw")) for r in o.rows) for o in ran), len(ran)),
            "schema_valid_generated": _frac(len(generated), len(ran)),
            "schema_valid_after_repair": _frac(len(valid), len(ran)),
            "field_precision": precision if scored else None,
            "field_recall": recall if scored else None,
            "field_f1": f1,
            "exact_match": _frac(exact, scored),
            "calls_per_valid": _frac(calls, len(valid)),
            "tokens_per_valid": _frac(tokens, len(valid)),
            "latency_p50_s": percentile(latencies, 50),
            "latency_p95_s": percentile(latencies, 95),
            "failures": dict(sorted(failures.items())),
            "tiers": [t.to_json() for t in self.tiers.values()],
            **({"confidence": conf} if (conf := confidence_figures(ran)) else {}),
        }


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
