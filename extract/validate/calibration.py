"""Calibrated confidence: a model's raw value probabilities mapped so that 0.8 means right 80% of the time.

Why isotonic regression (pool-adjacent-violators): it assumes only that a higher raw
probability is not less often right, which holds for token probabilities while their scale
does not (a 135M model is sure of itself far too often). It is a step function, stored as
its breakpoints in a small JSON file, and needs no dependency beyond numpy. Maps are fitted
per field of the schema and apart for contested values (another field claims the same
characters) where each group has enough values: on usaddress zero-shot that lifted AUROC from
0.82 (one map for contested, one for the rest) to 0.88 (benchmarks/grounding.py).

A calibration belongs to one spec (its digest), one model (the weights' digest, or the served
model's name) and one prompt version: the same probability means something else under
another prompt or model, so applying it elsewhere is a ``ConfigError``, never a silent shift.

The metrics that judge a confidence (AUROC, expected calibration error, precision at a
coverage) live in ``extract.report.confidence``, where the compliance report computes them.
Imports ``errors`` only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extract.errors import ConfigError

__all__ = ["CALIBRATION_FORMAT", "MIN_GROUP", "Calibration", "field_key", "fit_isotonic"]

CALIBRATION_FORMAT = "extract-calibration-v1"
MIN_GROUP = 20


def fit_isotonic(scores: Sequence[float], labels: Sequence[bool]) -> tuple[list[float], list[float]]:
    """Pool-adjacent-violators: breakpoints ``(xs, ys)`` of the non-decreasing step function
    that fits ``labels`` (1 right, 0 wrong) from ``scores`` in least squares."""
    import numpy as np

    if len(scores) != len(labels) or not scores:
        raise ConfigError("fit_isotonic needs as many labels as scores, and at least one")
    order = np.argsort(np.asarray(scores, dtype=float), kind="stable")
    x = np.asarray(scores, dtype=float)[order]
    y = np.asarray(labels, dtype=float)[order]
    # Blocks: (sum of y, weight, largest x); merge while a block's mean is above the next one's.
    sums: list[float] = []
    weights: list[float] = []
    tops: list[float] = []
    for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
        sums.append(yi)
        weights.append(1.0)
        tops.append(xi)
        while len(sums) > 1 and sums[-2] / weights[-2] >= sums[-1] / weights[-1]:
            s, w, t = sums.pop(), weights.pop(), tops.pop()
            sums[-1] += s
            weights[-1] += w
            tops[-1] = t
    return [round(t, 6) for t in tops], [round(s / w, 6) for s, w in zip(sums, weights, strict=True)]


@dataclass(frozen=True)
class Calibration:
    """A fitted map from raw to calibrated confidence, and what it was fitted for."""

    spec_digest: str
    model_digest: str
    prompt_version: str
    xs: list[float]
    ys: list[float]
    tier: str = "local"
    fitted_on: dict[str, Any] = field(default_factory=dict)
    # A second map for contested values (FieldGrounding.contested: another field claims the
    # same characters); empty when too few were seen to fit one.
    contested_xs: list[float] = field(default_factory=list)
    contested_ys: list[float] = field(default_factory=list)
    # Per field of the schema (``field_key``: list indices wildcarded): its own maps, because
    # fields differ in how often a sure-looking value is right (zero-shot on usaddress a
    # post-directional is mostly invented, a ZIP code mostly right). Keys: "all", "clear",
    # "contested", each [xs, ys]; only groups with at least MIN_GROUP values are kept.
    by_field: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)

    def __call__(self, raw: float, contested: bool = False, path: str | None = None) -> float:
        """The calibrated confidence of ``raw``: the step the raw probability falls on, in the
        most specific map fitted (field and contested, field, contested, all)."""
        import bisect

        maps = self.by_field.get(field_key(path)) if path is not None else None
        xs, ys = self.xs, self.ys
        if contested and self.contested_xs:
            xs, ys = self.contested_xs, self.contested_ys
        if maps:
            group = "contested" if contested else "clear"
            xs, ys = maps.get(group) or maps.get("all") or [xs, ys]
        if not xs:
            return raw
        i = bisect.bisect_left(xs, raw)
        return ys[min(i, len(ys) - 1)]

    @classmethod
    def fit(cls, scores: Sequence[float], labels: Sequence[bool], *, spec_digest: str, model_digest: str,
            prompt_version: str, contested: Sequence[bool] | None = None, paths: Sequence[str] | None = None,
            tier: str = "local", fitted_on: dict[str, Any] | None = None) -> Calibration:
        """Fit on raw confidences and right/wrong labels. With ``contested`` flags, contested and
        clear values get a map each; with ``paths``, each field too (every group needs at
        least ``MIN_GROUP`` values, else the broader map serves it)."""
        flags = list(contested) if contested is not None else [False] * len(scores)
        clear = [(s, y) for s, y, c in zip(scores, labels, flags, strict=True) if not c]
        other = [(s, y) for s, y, c in zip(scores, labels, flags, strict=True) if c]
        if len(clear) >= MIN_GROUP and len(other) >= MIN_GROUP:
            xs, ys = fit_isotonic([s for s, _ in clear], [y for _, y in clear])
            cxs, cys = fit_isotonic([s for s, _ in other], [y for _, y in other])
        else:
            xs, ys = fit_isotonic(scores, labels)
            cxs, cys = [], []
        by_field: dict[str, dict[str, list[list[float]]]] = {}
        if paths is not None:
            groups: dict[str, list[tuple[float, bool, bool]]] = {}
            for s, y, c, p in zip(scores, labels, flags, paths, strict=True):
                groups.setdefault(field_key(p), []).append((s, y, c))
            for key, items in groups.items():
                maps: dict[str, list[list[float]]] = {}
                for name, chosen in (("all", items), ("clear", [i for i in items if not i[2]]),
                                     ("contested", [i for i in items if i[2]])):
                    if len(chosen) >= MIN_GROUP:
                        fx, fy = fit_isotonic([i[0] for i in chosen], [i[1] for i in chosen])
                        maps[name] = [fx, fy]
                if maps:
                    by_field[key] = maps
        return cls(spec_digest, model_digest, prompt_version, xs, ys, tier, dict(fitted_on or {}), cxs, cys,
                   by_field)

    def save(self, path: Path) -> None:
        if not path.parent.is_dir():
            raise ConfigError(f"cannot write the calibration to {path}: folder {path.parent} does not exist")
        path.write_text(json.dumps({"format": CALIBRATION_FORMAT, **self.__dict__}, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read calibration file {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ConfigError(f"calibration file {path} is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise ConfigError(f"{path} is not an extract calibration file (format {CALIBRATION_FORMAT!r})")
        try:
            cal = cls(str(data["spec_digest"]), str(data["model_digest"]), str(data["prompt_version"]),
                      [float(x) for x in data["xs"]], [float(y) for y in data["ys"]], str(data.get("tier", "local")),
                      dict(data.get("fitted_on") or {}), [float(x) for x in data.get("contested_xs", [])],
                      [float(y) for y in data.get("contested_ys", [])],
                      {str(k): {str(g): [[float(x) for x in m[0]], [float(y) for y in m[1]]] for g, m in v.items()}
                       for k, v in (data.get("by_field") or {}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"calibration file {path} is missing or has a bad field: {exc}") from None
        if len(cal.xs) != len(cal.ys) or len(cal.contested_xs) != len(cal.contested_ys):
            raise ConfigError(f"calibration file {path}: xs and ys differ in length")
        return cal

    def check_spec(self, spec_digest: str, where: str = "") -> None:
        if spec_digest != self.spec_digest:
            raise ConfigError(
                f"the calibration{where} was fitted for another schema (spec digest {self.spec_digest}, "
                f"this spec is {spec_digest}); fit one for this schema (benchmarks/grounding.py --fit)")

    def check_model(self, model_digest: str | None, prompt_version: str | None, where: str = "") -> None:
        if model_digest != self.model_digest:
            raise ConfigError(
                f"the calibration{where} was fitted for another model ({self.model_digest}, this one is "
                f"{model_digest}); fit one for this model")
        if prompt_version != self.prompt_version:
            raise ConfigError(
                f"the calibration{where} was fitted for prompt {self.prompt_version}, this run uses "
                f"{prompt_version}; fit it again")


def field_key(path: str | None) -> str:
    """A JSON pointer with list indices wildcarded: ``/authors/2/name`` -> ``/authors/*/name``."""
    return re.sub(r"/\d+(?=/|$)", "/*", path or "")
