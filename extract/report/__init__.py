"""Compliance reporting: attempt rows -> figures per run and tier, tables, plots, one HTML page.

Fed ``Result``s (from the benchmark or from production, via ``rows_for_result``), it says how
often each tier produced valid output as generated and after repair, why it failed, what it
cost and, given gold, how right the fields were (``scoring``: every score's one definition,
which the benchmarks import too). It imports only ``extract.types``: a report never needs a
model.
"""

from extract.report.aggregate import (
    ItemOutcome,
    RunFigures,
    TierFigures,
    aggregate,
    failure_cause,
    field_counts,
    normalise,
    percentile,
    rows_for_result,
)
from extract.report.render import load_rows, render, summarise
from extract.report.scoring import (
    FieldCounts,
    bootstrap_interval,
    field_tally,
    instance_valid,
    leaves,
    matches,
    wilson_interval,
)

__all__ = [
    "FieldCounts",
    "ItemOutcome",
    "RunFigures",
    "TierFigures",
    "aggregate",
    "bootstrap_interval",
    "failure_cause",
    "field_counts",
    "field_tally",
    "instance_valid",
    "leaves",
    "load_rows",
    "matches",
    "normalise",
    "percentile",
    "render",
    "rows_for_result",
    "summarise",
    "wilson_interval",
]
