"""Around each Result: its values located in the caller's text, calibrated, marked for review, withheld.

The chain calls ``ground`` on the winning attempt (against the text the caller passed, never
a redacted or cut copy, so offsets always refer to the caller's string), ``ground_merged``
after chunking (the merged value aligned against the whole text, each value keeping the
confidence the chunk that produced it gave), and ``judge`` last, after the result cache: a
calibration, ``review_below`` and ``abstain_below`` change how a stored Result is presented,
never what the model said, so they stay out of the cache key.

Imports ``validate`` (alignment, calibration, check), ``spec``, ``settings``, ``errors`` and
``types``; no tier.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from extract.errors import ConfigError
from extract.settings import Settings
from extract.spec import Spec
from extract.types import Attempt, FieldGrounding, Result
from extract.validate import check
from extract.validate.calibration import Calibration
from extract.validate.grounding import ground_value

__all__ = ["ground", "ground_items", "ground_merged", "judge", "load_calibration"]


def ground(attempt: Attempt, text: str) -> list[FieldGrounding]:
    """The winning attempt's leaves located in ``text``, with the tier's confidences (if any)."""
    confidence = attempt.meta.get("confidence")
    try:
        fields = ground_value(attempt.value, text, confidence if isinstance(confidence, dict) else None)
    except (TypeError, ValueError, RecursionError):  # a grammar spec's transformer may build anything
        return []
    attempt.fields = fields
    return fields


_INDEX = re.compile(r"/\d+(?=/|$)")


def _shape(path: str) -> str:
    """The path with list indices wildcarded: a merged list renumbers its items."""
    return _INDEX.sub("/*", path)


def _key(path: str, value: Any) -> tuple[str, str]:
    return _shape(path), json.dumps(value, sort_keys=True)


def _chunk_confidences(result: Result, holder: str = "") -> dict[tuple[str, str], float]:
    """The highest confidence any chunk's answer gave each value at each place in the schema
    (list indices wildcarded); ``holder``: the path the chunks' answers hold the values under
    (``/items/*`` for a list window's answer)."""
    known: dict[tuple[str, str], float] = {}
    for chunk in result.chunks:
        for f in chunk.result.fields:
            if f.raw_confidence is not None:
                key = _key(_shape(f.path).removeprefix(holder), f.value)
                known[key] = max(known.get(key, 0.0), f.raw_confidence)
    return known


def ground_merged(result: Result, text: str) -> Result:
    """A chunked Result's value aligned against the whole text; each value keeps the highest
    confidence a chunk gave the same value at the same place in the schema."""
    if not result.ok:
        return result
    known = _chunk_confidences(result)
    fields = ground_value(result.value, text)
    for f in fields:
        f.confidence = f.raw_confidence = known.get(_key(f.path, f.value))
    result.fields = fields
    return result


def ground_items(result: Result, text: str) -> Result:
    """A list Result's ``fields``: each item's leaves aligned inside the span it was read from
    (``Result.items``), at paths ``/<item>/...`` with offsets into ``text``. A value keeps the
    highest confidence a window's answer gave the same value at the same place in an item."""
    known = _chunk_confidences(result, "/items/*")  # /items/3/name -> /name
    spans = [(e["start"], e["end"]) for e in result.items if e["status"] == "ok"]
    fields = []
    for i, (value, (start, end)) in enumerate(zip(result.value or [], spans, strict=False)):
        for f in ground_value(value, text[start:end]):
            f.confidence = f.raw_confidence = known.get(_key(f.path, f.value))
            f.spans = [(a + start, b + start) for a, b in f.spans]
            f.path = f"/{i}{f.path}"
            fields.append(f)
    result.fields = fields
    return result


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> Calibration:
    return Calibration.load(Path(path))


def load_calibration(path: Path) -> Calibration:
    """The calibration at ``path`` (read once per file version)."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"cannot read calibration file {path}: {exc.strerror or exc}") from None
    return _load(str(path), mtime)


def _winner(result: Result) -> Attempt | None:
    return next((a for a in reversed(result.attempts) if a.ok), None)


def judge(result: Result, spec: Spec, settings: Settings) -> Result:
    """Calibrate each field's confidence, set ``needs_review`` and withhold what is under
    ``abstain_below`` (only where the spec still validates with null there)."""
    if not result.fields:
        return result
    if settings.calibration is not None:
        cal = load_calibration(settings.calibration)
        cal.check_spec(spec.digest, f" in {settings.calibration}")
        winner = _winner(result)
        if winner is not None and winner.model is not None and any(f.raw_confidence is not None for f in result.fields):
            cal.check_model(winner.model.digest or winner.model.name, winner.prompt_version,
                            f" in {settings.calibration}")
        for f in result.fields:
            f.confidence = None if f.raw_confidence is None else cal(f.raw_confidence, f.contested, f.path)
    for f in result.fields:
        low = settings.review_below is not None and f.confidence is not None and f.confidence < settings.review_below
        f.needs_review = f.status == "not_found" or low
    if settings.abstain_below is not None and spec.is_json:
        _abstain(result, spec, settings.abstain_below)
    return result


def _set(doc: Any, path: str, value: Any) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    node = doc
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _abstain(result: Result, spec: Spec, threshold: float) -> None:
    value = result.value
    doc = value.model_dump(mode="json", by_alias=True) if isinstance(value, BaseModel) else json.loads(
        json.dumps(value, default=str))
    changed = False
    for f in result.fields:
        if f.confidence is None or f.confidence >= threshold or not f.path:
            continue
        trial = json.loads(json.dumps(doc))
        _set(trial, f.path, None)
        checked = check(json.dumps(trial, ensure_ascii=False), spec)
        if checked.error is None:  # null is allowed here: withhold the value
            doc, changed = trial, True
            f.withheld = True
        f.needs_review = True
    if changed:
        checked = check(json.dumps(doc, ensure_ascii=False), spec)
        if checked.error is None:
            result.value = checked.value
