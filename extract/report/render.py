"""Compliance figures -> ``summary.json``, ``report.md``, PNG plots and one ``report.html``.

Everything is rebuilt from ``attempts.jsonl`` (``extract report DIR``), so a report never
disagrees with the rows it came from. The HTML page embeds its plots as base64 PNGs and
carries no script or external link: it opens offline, from a mail attachment or a CI
artifact. Plots use matplotlib's object API (``Figure``), never ``pyplot``: no global state,
no GUI backend. This module imports only ``extract.types`` and ``extract.report``.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from extract.report.aggregate import RunFigures, aggregate
from extract.report.reference import JSONSCHEMABENCH

__all__ = ["CORPUS_SCHEMA", "PLOTS", "load_rows", "render", "summarise"]

# The ``schema`` a run records when every row brings its own schema (a schema corpus).
CORPUS_SCHEMA = "(row schema)"
PLOTS = {
    "compliance.png": "Schema-valid as generated and after repair, per data set and policy",
    "cost.png": "Cost vs compliance: tokens per valid result against valid after repair",
    "latency.png": "Latency per item (seconds), per data set and policy",
    "reliability.png": "Reliability of the values' confidence: share right per confidence bin",
}
CONFIDENCE_HEADER = ["data", "schema", "policy", "winning tier", "values", "precision", "AUROC", "ECE",
                     "precision @90%", "@70%", "@50%"]


def _confidence_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for r in runs:
        for tier, c in (r.get("confidence") or {}).items():
            rows.append([str(r["data"]), str(r["schema"]), str(r["policy"]), tier, str(c["values"]),
                         _num(c["precision"], 2), _num(c["auroc"], 3), _num(c["ece"], 3),
                         _num(c["precision_at_90"], 2), _num(c["precision_at_70"], 2), _num(c["precision_at_50"], 2)])
    return rows


def load_rows(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of ``attempts.jsonl``; a cut last line (a killed run) is ignored."""
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def summarise(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``summary.json`` document: ``{"runs": [...]}``, fractions in 0..1."""
    runs = aggregate(rows)
    return {"runs": [r.to_json() for r in runs]}


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.0f}%"


def _num(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _failures(failures: Mapping[str, int], limit: int = 4) -> str:
    top = sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return ", ".join(f"{k} {v}" for k, v in top) or "–"


def _label(run: Mapping[str, Any]) -> str:
    return f"{run['data']} · {run['policy']}"


RUN_HEADER = ["data", "schema", "policy", "n", "valid JSON", "valid as generated", "valid after repair",
              "field F1", "exact", "calls/valid", "tokens/valid", "p50 s", "p95 s", "failures"]
TIER_HEADER = ["data", "policy", "tier", "attempts", "skipped", "valid JSON", "as generated",
               "after repair", "calls/valid", "tokens/valid", "p50 s", "p95 s", "failures", "skips"]


def _run_cells(r: Mapping[str, Any]) -> list[str]:
    return [
        str(r["data"]), str(r["schema"]), str(r["policy"]), str(r["n"]), _pct(r["valid_json"]),
        _pct(r["schema_valid_generated"]), _pct(r["schema_valid_after_repair"]), _num(r["field_f1"], 2),
        _pct(r["exact_match"]), _num(r["calls_per_valid"]), _num(r["tokens_per_valid"], 0),
        _num(r["latency_p50_s"], 2), _num(r["latency_p95_s"], 2), _failures(r["failures"]),
    ]


def _tier_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [str(r["data"]), str(r["policy"]), str(t["tier"]), str(t["attempts"]), str(t["skipped"]),
         _pct(t["valid_json"]), _pct(t["schema_valid_generated"]), _pct(t["schema_valid_after_repair"]),
         _num(t["calls_per_valid"]), _num(t["tokens_per_valid"], 0), _num(t["latency_p50_s"], 2),
         _num(t["latency_p95_s"], 2), _failures(t["failures"]), _failures(t["skips"])]
        for r in runs for t in r["tiers"]
    ]


def _corpus_rows(runs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    engines: list[str] = list(JSONSCHEMABENCH["engines"])
    header = ["corpus", "policy", "n", "compile coverage", "empirical coverage (ours)",
              "their collection", *[f"{e} (theirs)" for e in engines]]
    rows = []
    for r in runs:
        if r["schema"] != CORPUS_SCHEMA:
            continue
        theirs_name = next((v for k, v in JSONSCHEMABENCH["ours"].items() if k in str(r["data"])), "–")
        theirs = JSONSCHEMABENCH["collections"].get(theirs_name, {})
        cells = [_pct(theirs[e]) if e in theirs else "n/a" for e in engines]
        rows.append([str(r["data"]), str(r["policy"]), str(r["n"]), _pct(r["compile_coverage"]),
                     _pct(r["empirical_coverage"]), theirs_name, *cells])
    return header, rows


def _reference_rows() -> tuple[list[str], list[list[str]]]:
    engines: list[str] = list(JSONSCHEMABENCH["engines"])
    rows = []
    for name, figures in JSONSCHEMABENCH["collections"].items():
        if "note" in figures:
            rows.append([name, *(["–"] * len(engines)), str(figures["note"])])
        else:
            rows.append([name, *[_pct(figures.get(e)) for e in engines], ""])
    return ["collection", *engines, "note"], rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plots(runs: Sequence[Mapping[str, Any]], figures: Sequence[RunFigures], out: Path) -> list[str]:
    """Write the PNG plots; returns the file names written."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    from matplotlib.figure import Figure

    labels = [_label(r) for r in runs]
    height = max(3.0, 0.45 * len(runs) + 1.5)
    written: list[str] = []

    fig = Figure(figsize=(9, height), layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(len(runs)))
    gen = [100 * (r["schema_valid_generated"] or 0) for r in runs]
    rep = [100 * (r["schema_valid_after_repair"] or 0) for r in runs]
    ax.barh([y + 0.2 for y in ys], gen, height=0.4, label="valid as generated", color="#4c72b0")
    ax.barh([y - 0.2 for y in ys], rep, height=0.4, label="valid after repair", color="#dd8452")
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of items that ran")
    ax.set_title("Compliance by data set and policy")
    ax.legend(loc="lower right")
    fig.savefig(out / "compliance.png", dpi=100)
    written.append("compliance.png")

    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    for r in runs:
        x = r["tokens_per_valid"]
        if x is None:
            continue
        ax.scatter([x], [100 * (r["schema_valid_after_repair"] or 0)], s=40)
        ax.annotate(_label(r), (x, 100 * (r["schema_valid_after_repair"] or 0)), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("tokens per valid result")
    ax.set_ylabel("% valid after repair")
    ax.set_ylim(-5, 105)
    ax.set_title("Cost vs compliance")
    fig.savefig(out / "cost.png", dpi=100)
    written.append("cost.png")

    fig = Figure(figsize=(9, height), layout="constrained")
    ax = fig.add_subplot()
    series = [
        [float(o.last.get("item_latency_s") or 0.0) for o in f.items if not o.bad and not o.all_skipped] or [0.0]
        for f in figures
    ]
    ax.boxplot(series, orientation="horizontal", tick_labels=labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per item")
    ax.set_title("Latency distribution")
    fig.savefig(out / "latency.png", dpi=100)
    written.append("latency.png")

    curves = [(f"{_label(r)} · {tier}", c["reliability"])
              for r in runs for tier, c in (r.get("confidence") or {}).items()]
    if curves:
        fig = Figure(figsize=(6, 6), layout="constrained")
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color="#999", linestyle="--", label="perfectly calibrated")
        for name, bins in curves:
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (bin mean)")
        ax.set_ylabel("share of values right")
        ax.set_title("Reliability of value confidence")
        ax.legend(loc="upper left", fontsize=7)
        fig.savefig(out / "reliability.png", dpi=100)
        written.append("reliability.png")
    return written


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#f0f0f0} img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
.note{color:#555;font-size:13px}
"""


def render(out: Path, *, command: str | None = None) -> dict[str, Any]:
    """(Re)write ``summary.json``, ``report.md``, the plots and ``report.html`` from ``out/attempts.jsonl``."""
    rows = load_rows(out / "attempts.jsonl")
    figures = aggregate(rows)
    runs = [f.to_json() for f in figures]
    summary = {"runs": runs}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plots = _plots(runs, figures, out) if runs else []
    if command is None and (out / "command.txt").exists():
        command = (out / "command.txt").read_text(encoding="utf-8").strip()

    run_rows = [_run_cells(r) for r in runs]
    tier_rows = _tier_rows(runs)
    corpus_header, corpus_rows = _corpus_rows(runs)
    ref_header, ref_rows = _reference_rows()
    definitions = (
        "Rates are over items that ran (skipped: every tier unavailable or refused the schema). "
        "*Valid as generated*: the winning attempt needed no repair; *valid after repair*: any "
        "valid result. Calls and tokens count every attempt of the item (failed ones included) "
        "per valid result. Field F1 is micro over leaf fields, values compared after lower-casing, "
        "collapsing whitespace and trimming edge punctuation."
    )
    md = ["# Compliance report", ""]
    if command:
        md += ["Command:", "", f"    {command}", ""]
    md += [definitions, "", "## Per data set and policy", "", _md_table(RUN_HEADER, run_rows), "",
           "## Per tier", "", _md_table(TIER_HEADER, tier_rows), ""]
    if corpus_rows:
        md += ["## Schema corpora: compile coverage and compliance, with the published reference", "",
               _md_table(corpus_header, corpus_rows), "",
               f"Reference columns: {JSONSCHEMABENCH['source']}. Their figures, on their models.", "",
               _md_table(ref_header, ref_rows), ""]
    confidence_rows = _confidence_rows(runs)
    if confidence_rows:
        md += ["## Confidence of values (right vs wrong against gold)", "",
               _md_table(CONFIDENCE_HEADER, confidence_rows), ""]
    md += ["## Plots", ""] + [f"![{PLOTS[p]}]({p})" for p in plots] + [""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")

    imgs = "".join(
        f'<figure><img alt="{html.escape(PLOTS[p])}" src="data:image/png;base64,'
        f'{base64.b64encode((out / p).read_bytes()).decode("ascii")}"><figcaption>{html.escape(PLOTS[p])}'
        "</figcaption></figure>"
        for p in plots
    )
    corpus_html = ""
    if corpus_rows:
        corpus_html = (
            "<h2>Schema corpora, with the published reference</h2>"
            + _html_table(corpus_header, corpus_rows)
            + f'<p class="note">Reference: {html.escape(str(JSONSCHEMABENCH["source"]))}. '
            "Their figures, on their models.</p>" + _html_table(ref_header, ref_rows)
        )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Compliance report</title>'
        f"<style>{_CSS}</style></head><body><h1>Compliance report</h1>"
        + (f"<p>Command: <code>{html.escape(command)}</code></p>" if command else "")
        + f'<p class="note">{html.escape(definitions.replace("*", ""))}</p>'
        + "<h2>Per data set and policy</h2>" + _html_table(RUN_HEADER, run_rows)
        + "<h2>Per tier</h2>" + _html_table(TIER_HEADER, tier_rows)
        + corpus_html
        + ("<h2>Confidence of values (right vs wrong against gold)</h2>"
           + _html_table(CONFIDENCE_HEADER, confidence_rows) if confidence_rows else "")
        + "<h2>Plots</h2>" + imgs + "</body></html>"
    )
    (out / "report.html").write_text(page, encoding="utf-8")
    return summary
