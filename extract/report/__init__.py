"""Compliance reporting: attempt rows -> figures per run and tier, tables, plots, one HTML page.

Fed ``Result``s (from the benchmark or from production, via ``rows_for_result``), it says how
often each tier produced valid output as generated and after repair, why it failed, what it
cost and, given gold, how right the fields were. It imports only ``extract.types``: a report
never needs a model.
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

__all__ = [
    "ItemOutcome",
    "RunFigures",
    "TierFigures",
    "aggregate",
    "failure_cause",
    "field_counts",
    "load_rows",
    "normalise",
    "percentile",
    "render",
    "rows_for_result",
    "summarise",
]
