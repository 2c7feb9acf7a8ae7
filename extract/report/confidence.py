"""How well a confidence tells right values from wrong ones: AUROC, ECE, reliability, precision at coverage.

One place for these metrics: the compliance report computes them per run and winning tier from
the attempt rows' ``fields`` and gold, ``benchmarks/grounding.py`` and the tests import them
from here. Imports nothing from the package.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["auroc", "expected_calibration_error", "precision_at_coverage", "reliability_bins"]


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Probability that a right value scores above a wrong one (ties count half); None
    without both classes."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    ranked = sorted((s, i) for i, s in enumerate(scores))
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[ranked[k][1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def reliability_bins(scores: Sequence[float], labels: Sequence[bool], bins: int = 10) -> list[dict[str, float]]:
    """Equal-width bins: each bin's mean confidence, share right and count (empty bins left out)."""
    out: list[dict[str, float]] = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, s in enumerate(scores) if lo <= s < hi or (b == bins - 1 and s == 1.0)]
        if idx:
            out.append({"lo": lo, "hi": hi, "confidence": sum(scores[i] for i in idx) / len(idx),
                        "accuracy": sum(1 for i in idx if labels[i]) / len(idx), "count": float(len(idx))})
    return out


def expected_calibration_error(scores: Sequence[float], labels: Sequence[bool], bins: int = 10) -> float | None:
    """Count-weighted mean gap between confidence and accuracy over equal-width bins."""
    if not scores:
        return None
    return sum(b["count"] * abs(b["confidence"] - b["accuracy"]) for b in reliability_bins(scores, labels, bins)) / len(
        scores)


def precision_at_coverage(scores: Sequence[float], labels: Sequence[bool], coverage: float) -> float | None:
    """Share right among the ``coverage`` fraction of values with the highest confidence."""
    if not scores:
        return None
    n = max(1, round(len(scores) * coverage))
    top = sorted(range(len(scores)), key=lambda i: -scores[i])[:n]
    return sum(1 for i in top if labels[i]) / n
