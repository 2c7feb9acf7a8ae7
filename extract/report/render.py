"""Compliance figures -> ``summary.json``, ``report.md``, PNG plots and one ``report.html``.

Everything is rebuilt from ``attempts.jsonl`` (``extract report DIR``), so a report never
disagrees with the rows it came from. The page leads with the answer: per schema, how often
the chain returned a valid object, how right it was and at what cost, each with its 95%
interval; then each policy, each tier inside the chains, the failures (every cause opens onto
its attempts: raw output, error, repairs), per-field accuracy, the schema corpora beside the
published reference, and the plots. It says where it came from (``provenance.json``: commit,
prompt versions, models, settings, command) and, when the rows were written by prompt
versions the code no longer has, says first that it is stale.

The page embeds its plots as base64 PNGs; its one script is inline (sorting a table by a
clicked column) and nothing is fetched: it opens offline, from a mail attachment or a CI
artifact. Plots use matplotlib's object API (``Figure``), never ``pyplot``: no global state,
no GUI backend. This module imports only ``extract.types`` and ``extract.report``.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extract.report.aggregate import ItemOutcome, RunFigures, aggregate
from extract.report.reference import JSONSCHEMABENCH, TEST_SUITE_COVERAGE, TEST_SUITE_ENGINES, best_published

__all__ = ["CORPUS_SCHEMA", "PLOTS", "PROVENANCE", "load_rows", "models_of", "provenance_lines", "provenance_of",
           "render", "stale_text", "summarise"]

# The ``schema`` a run records when every row brings its own schema (a schema corpus).
CORPUS_SCHEMA = "(row schema)"
# Which draw a folder holds and the code each part of it came from (written by the benchmark).
PROVENANCE = "provenance.json"
PLOTS = {
    "compliance.png": "Schema-valid as generated and after repair, per data set and policy",
    "cost.png": "Cost vs compliance: tokens per valid result against valid after repair",
    "latency.png": "Latency per item (seconds), per data set and policy",
    "reliability.png": "Reliability of the values' confidence: share right per confidence bin",
}
CONFIDENCE_HEADER = ["data", "schema", "policy", "winning tier", "values", "precision", "AUROC", "ECE",
                     "precision @90%", "@70%", "@50%"]
# Failed items listed under one cause on the page; the rest are in attempts.jsonl.
FAILURES_SHOWN = 25
RAW_SHOWN = 1500


@dataclass(frozen=True)
class Cell:
    """One table cell: its text (Markdown and HTML), optional HTML in its place, and the value a
    click on the column header sorts by."""

    text: str
    sort: float | None = None
    markup: str | None = None

    @property
    def html(self) -> str:
        return self.markup if self.markup is not None else html.escape(self.text)


def _confidence_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[Cell]]:
    rows = []
    for r in runs:
        for tier, c in (r.get("confidence") or {}).items():
            rows.append([Cell(str(r["data"])), Cell(str(r["schema"])), Cell(str(r["policy"])), Cell(tier),
                         _count(c["values"]), _num(c["precision"], 2), _num(c["auroc"], 3), _num(c["ece"], 3),
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
    """The ``summary.json`` document's figures: ``{"runs": [...]}``, fractions in 0..1."""
    runs = aggregate(rows)
    return {"runs": [r.to_json() for r in runs]}


def models_of(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Per tier, the models its attempts name (``name digest``)."""
    seen: dict[str, set[str]] = {}
    for r in rows:
        model = r.get("model") or {}
        if model.get("name") or model.get("digest"):
            seen.setdefault(str(r.get("tier")), set()).add(f"{model.get('name')} {model.get('digest') or ''}".strip())
    return {tier: sorted(names) for tier, names in sorted(seen.items())}


def provenance_of(out: Path, rows: Sequence[Mapping[str, Any]],
                  current_prompts: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Where a folder's figures came from: the recorded parts (``provenance.json``), and what the
    rows themselves say (prompt versions, models). Given today's prompt versions, ``stale`` says
    whether some row was written by a prompt the code no longer has."""
    path = out / PROVENANCE
    doc: dict[str, Any] | None = None
    if path.exists():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            doc = loaded if isinstance(loaded, dict) else None
        except ValueError:
            doc = None
    observed = sorted({str(r["prompt_version"]) for r in rows if r.get("prompt_version")})
    prov: dict[str, Any] = {"recorded": doc is not None, "prompt_versions": observed, "models": models_of(rows)}
    if doc is not None:
        prov.update(sample=doc.get("sample"), seed=doc.get("seed"), parts=doc.get("parts", []))
    elif (out / "command.txt").exists():
        prov["commands"] = (out / "command.txt").read_text(encoding="utf-8").splitlines()
    if current_prompts is not None:
        current = sorted(set(current_prompts.values()))
        prov["current_prompts"] = current
        prov["stale"] = bool(set(observed) - set(current))
    return prov


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.0f}%"


def _ci(r: Mapping[str, Any], key: str) -> list[float] | None:
    ci = (r.get("ci95") or {}).get(key)
    return ci if isinstance(ci, list) and len(ci) == 2 else None


def _rate(r: Mapping[str, Any], key: str) -> Cell:
    """A proportion with its 95% interval: ``62% [48–74]``."""
    value = r.get(key)
    ci = _ci(r, key)
    text = _pct(value)
    if value is None or ci is None:
        return Cell(text, None if value is None else float(value))
    interval = f"[{100 * ci[0]:.0f}–{100 * ci[1]:.0f}]"
    return Cell(f"{text} {interval}", float(value), f'{text} <span class="ci">{interval}</span>')


def _stat(r: Mapping[str, Any], key: str, digits: int) -> Cell:
    """A number with its bootstrap interval: ``0.48 [0.41–0.55]``."""
    value = r.get(key)
    ci = _ci(r, key)
    text = "–" if value is None else f"{float(value):.{digits}f}"
    if value is None or ci is None:
        return Cell(text, None if value is None else float(value))
    interval = f"[{ci[0]:.{digits}f}–{ci[1]:.{digits}f}]"
    return Cell(f"{text} {interval}", float(value), f'{text} <span class="ci">{interval}</span>')


def _num(value: Any, digits: int = 1) -> Cell:
    return Cell("–" if value is None else f"{float(value):.{digits}f}", None if value is None else float(value))


def _count(value: int) -> Cell:
    return Cell(str(value), float(value))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _failures(failures: Mapping[str, int], anchor: str | None = None, limit: int = 4) -> Cell:
    """The top causes; on the page each links to its attempts (``anchor`` + cause)."""
    top = sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    text = ", ".join(f"{k} {v}" for k, v in top) or "–"
    if anchor is None or not top:
        return Cell(text, float(sum(failures.values())))
    links = ", ".join(f'<a href="#{anchor}-{_slug(k)}">{html.escape(k)} {v}</a>' for k, v in top)
    return Cell(text, float(sum(failures.values())), links)


def _label(run: Mapping[str, Any]) -> str:
    return f"{run['data']} · {run['policy']}"


HEADLINE_HEADER = ["data", "schema", "policy", "n", "valid (after repair)", "valid as generated", "field F1",
                   "exact", "calls/valid", "tokens/valid", "p50 s", "failures"]
RUN_HEADER = ["data", "schema", "policy", "n", "valid JSON", "valid as generated", "valid after repair",
              "field F1", "exact", "calls/valid", "tokens/valid", "p50 s", "p95 s", "failures"]
TIER_HEADER = ["data", "policy", "tier", "attempts", "skipped", "valid JSON", "as generated",
               "after repair", "calls/valid", "tokens/valid", "p50 s", "p95 s", "failures", "skips"]


def _headline_runs(runs: Sequence[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    """Per (data, schema): its chain run; a schema with no chain run shows every policy it has."""
    out: list[tuple[int, Mapping[str, Any]]] = []
    keys = list(dict.fromkeys((str(r["data"]), str(r["schema"])) for r in runs))
    for key in keys:
        mine = [(i, r) for i, r in enumerate(runs) if (str(r["data"]), str(r["schema"])) == key]
        chain = [(i, r) for i, r in mine if r["policy"] == "chain"]
        out += chain or mine
    return out


def _headline_cells(i: int, r: Mapping[str, Any]) -> list[Cell]:
    return [
        Cell(str(r["data"])), Cell(str(r["schema"])), Cell(str(r["policy"])), _count(int(r["n"])),
        _rate(r, "schema_valid_after_repair"), _rate(r, "schema_valid_generated"), _stat(r, "field_f1", 2),
        _rate(r, "exact_match"), _stat(r, "calls_per_valid", 1), _stat(r, "tokens_per_valid", 0),
        _stat(r, "latency_p50_s", 2), _failures(r["failures"], f"f{i}"),
    ]


def _run_cells(i: int, r: Mapping[str, Any]) -> list[Cell]:
    return [
        Cell(str(r["data"])), Cell(str(r["schema"])), Cell(str(r["policy"])), _count(int(r["n"])),
        Cell(_pct(r["valid_json"]), r["valid_json"]), _rate(r, "schema_valid_generated"),
        _rate(r, "schema_valid_after_repair"), _stat(r, "field_f1", 2), _rate(r, "exact_match"),
        _stat(r, "calls_per_valid", 1), _stat(r, "tokens_per_valid", 0), _stat(r, "latency_p50_s", 2),
        _num(r["latency_p95_s"], 2), _failures(r["failures"], f"f{i}"),
    ]


def _tier_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[Cell]]:
    return [
        [Cell(str(r["data"])), Cell(str(r["policy"])), Cell(str(t["tier"])), _count(t["attempts"]),
         _count(t["skipped"]), Cell(_pct(t["valid_json"]), t["valid_json"]),
         Cell(_pct(t["schema_valid_generated"]), t["schema_valid_generated"]),
         Cell(_pct(t["schema_valid_after_repair"]), t["schema_valid_after_repair"]),
         _num(t["calls_per_valid"]), _num(t["tokens_per_valid"], 0), _num(t["latency_p50_s"], 2),
         _num(t["latency_p95_s"], 2), _failures(t["failures"]), _failures(t["skips"])]
        for r in runs for t in r["tiers"]
    ]


FIELD_HEADER = ["field", "gold values", "right", "wrong", "missed", "extra", "F1"]


def _field_tables(runs: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str], list[list[Cell]]]]:
    """Per schema with gold: its headline run's fields, most often wrong first, with the F1
    every other policy got on the same field."""
    tables = []
    for _, r in _headline_runs(runs):
        fields = r.get("fields") or []
        if not fields:
            continue
        others = [o for o in runs if (o["data"], o["schema"]) == (r["data"], r["schema"]) and o is not r
                  and o.get("fields")]
        f1_by = [{f["field"]: f["f1"] for f in o["fields"]} for o in others]
        header = [*FIELD_HEADER[:-1], f"F1 ({r['policy']})", *[f"F1 ({o['policy']})" for o in others]]
        rows = [[Cell(f["field"]), _count(f["gold"]), _count(f["right"]), _count(f["wrong"]), _count(f["missed"]),
                 _count(f["extra"]), _num(f["f1"], 2), *[_num(m.get(f["field"]), 2) for m in f1_by]]
                for f in fields]
        tables.append((f"{r['data']} · {r['schema']} · {r['policy']}", header, rows))
    return tables


def _corpus_rows(runs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Cell]]]:
    header = ["corpus", "policy", "n", "compile coverage", "valid as generated (full schema)",
              "empirical coverage (full schema)", "over schemas with a known instance", "their collection",
              "best published engine (theirs)"]
    rows = []
    for r in runs:
        if r["schema"] != CORPUS_SCHEMA:
            continue
        theirs_name = next((v for k, v in JSONSCHEMABENCH["ours"].items() if k in str(r["data"])), "–")
        best = best_published(theirs_name)
        witnessed = r.get("empirical_coverage_witnessed")
        rows.append([Cell(str(r["data"])), Cell(str(r["policy"])), _count(int(r["n"])),
                     Cell(_pct(r["compile_coverage"]), r["compile_coverage"]),
                     _rate(r, "empirical_coverage_generated"), _rate(r, "empirical_coverage"),
                     Cell("–" if witnessed is None else f"{_pct(witnessed)} of {r.get('witnessed')}", witnessed),
                     Cell(theirs_name), Cell(best or "not read from a primary source")])
    return header, rows


def _per_file(figures: Sequence[RunFigures]) -> tuple[list[str], list[list[Cell]]]:
    """The JSON Schema Test Suite per file: our empirical coverage per policy (items are named
    ``file.json#line``) beside the fraction of cases each published engine passed."""
    suite = [f for f in figures if f.schema == CORPUS_SCHEMA and "json-schema-test-suite" in f.data]
    if not suite:
        return [], []
    ours: dict[str, dict[str, list[bool]]] = {}
    for fig in suite:
        checked = any("item_schema_valid" in o.last for o in fig.items)
        for o in fig.items:
            if o.bad:
                continue
            name = o.item.split("#")[0].removesuffix(".json")
            ours.setdefault(name, {}).setdefault(fig.policy, []).append(o.covered(checked))
    policies = list(dict.fromkeys(f.policy for f in suite))
    header = ["file", "cases (ours)", *[f"ours: {p}" for p in policies], *[f"{e} (theirs)" for e in TEST_SUITE_ENGINES]]
    rows = []
    for name in sorted(ours):
        got = ours[name]
        n = max(len(v) for v in got.values())
        theirs = TEST_SUITE_COVERAGE.get(name)
        rows.append([Cell(name), _count(n),
                     *[Cell(f"{sum(got[p])}/{len(got[p])}", sum(got[p]) / len(got[p])) if got.get(p) else Cell("–")
                       for p in policies],
                     *[_num(v, 2) for v in (theirs or (None,) * len(TEST_SUITE_ENGINES))]])
    return header, rows


def _reference_tables() -> list[tuple[str, list[str], list[list[Cell]]]]:
    out = []
    for table in JSONSCHEMABENCH["tables"]:
        rows = [[Cell(str(c)) for c in row] for row in table["rows"]]
        out.append((f"{table['title']} — {table['source']}", list(table["header"]), rows))
    return out


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c.text) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Cell]], *, table_id: str = "") -> str:
    head = "".join(f'<th title="sort">{html.escape(h)}</th>' for h in header)
    body = "".join(
        "<tr>" + "".join(
            (f'<td class="n" data-v="{c.sort!r}">' if c.sort is not None else "<td>") + c.html + "</td>" for c in row
        ) + "</tr>"
        for row in rows
    )
    ident = f' id="{table_id}"' if table_id else ""
    return f'<table class="sortable"{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _attempt_html(row: Mapping[str, Any]) -> str:
    err = row.get("error") or {}
    raw = row.get("raw")
    parts = [f"<b>{html.escape(str(row.get('tier')))}</b>"]
    if err:
        parts.append(f"{html.escape(str(err.get('type')))}: {html.escape(str(err.get('message', ''))[:400])}")
    elif row.get("skipped"):
        parts.append("skipped")
    else:
        parts.append("valid")
    if row.get("repairs"):
        parts.append("repairs: " + html.escape(", ".join(map(str, row["repairs"]))))
    out = " · ".join(parts)
    if raw:
        cut = str(raw)[:RAW_SHOWN]
        more = f" … ({len(str(raw)) - RAW_SHOWN} more characters)" if len(str(raw)) > RAW_SHOWN else ""
        out += f"<pre>{html.escape(cut)}{html.escape(more)}</pre>"
    return f"<li>{out}</li>"


def _failure_details(figures: Sequence[RunFigures]) -> str:
    """Per run and cause, a collapsible list of the failed items with every attempt of each."""
    blocks = []
    for i, fig in enumerate(figures):
        by_cause: dict[str, list[ItemOutcome]] = {}
        for o in fig.items:
            if not o.ok:
                by_cause.setdefault(o.cause(), []).append(o)
        for cause, items in sorted(by_cause.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            entries = "".join(
                f"<li><code>{html.escape(o.item)}</code><ol>" + "".join(_attempt_html(r) for r in o.rows)
                + "</ol></li>"
                for o in items[:FAILURES_SHOWN]
            )
            rest = (f"<p class=note>{len(items) - FAILURES_SHOWN} more in attempts.jsonl</p>"
                    if len(items) > FAILURES_SHOWN else "")
            blocks.append(
                f'<details id="f{i}-{_slug(cause)}"><summary>{html.escape(fig.data)} · {html.escape(fig.schema)} · '
                f"{html.escape(fig.policy)} — <b>{html.escape(cause)}</b>: {len(items)} item(s)</summary>"
                f"<ol>{entries}</ol>{rest}</details>"
            )
    return "".join(blocks)


def provenance_lines(prov: Mapping[str, Any]) -> list[str]:
    """Plain sentences: the draw, the code and the models behind the figures."""
    lines = []
    if not prov.get("recorded"):
        lines.append("Provenance was not recorded for this run (made before the benchmark recorded it); "
                     "what its rows say is below.")
    else:
        sample = prov.get("sample")
        lines.append(f"Draw: --sample {sample if sample is not None else 'all'} --seed {prov.get('seed')}; "
                     f"{len(prov.get('parts', []))} part(s).")
        for n, part in enumerate(prov.get("parts", []), start=1):
            commit = str(part.get("git_commit") or "unknown")[:12]
            dirty = " (with uncommitted changes)" if part.get("git_dirty") else ""
            prompts = ", ".join(f"{k} {v}" for k, v in (part.get("prompts") or {}).items())
            served = f"; server model {part['server_model']}" if part.get("server_model") else ""
            lines.append(f"Part {n}: commit {commit}{dirty}; prompts {prompts}{served}; started {part.get('started')}, "
                         f"finished {part.get('finished') or 'not (killed or running)'}; "
                         f"command: {part.get('command') or '–'}")
    lines.append("Prompt versions on the attempts: " + (", ".join(prov.get("prompt_versions", [])) or "none"))
    models = prov.get("models") or {}
    if models:
        lines.append("Models: " + "; ".join(f"{tier}: {', '.join(names)}" for tier, names in models.items()))
    for command in prov.get("commands", []):
        lines.append(f"Command (command.txt): {command}")
    return lines


def stale_text(prov: Mapping[str, Any], command: str | None) -> str | None:
    if not prov.get("stale"):
        return None
    old = ", ".join(v for v in prov.get("prompt_versions", []) if v not in prov.get("current_prompts", []))
    again = (f" Regenerate it with its command, given a new --out folder: {command}" if command
             else " Regenerate it with extract bench into a new folder.")
    return (f"Stale: these figures were produced by prompt {old}; the code now has "
            f"{', '.join(prov.get('current_prompts', []))}. They do not describe today's code.{again}")


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f0;cursor:pointer;user-select:none} th.asc:after{content:" ▲"} th.desc:after{content:" ▼"}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
.note{color:#555;font-size:13px} .stale{background:#fde2e1;border:2px solid #c0392b;padding:.7em 1em;
font-weight:600;color:#7b1d14} td.n{white-space:nowrap} .ci{color:#777;font-size:11px}
.prov{font-size:13px;color:#333;background:#f4f6f8;padding:.4em .8em;border-left:3px solid #4c72b0}
details{margin:.3em 0;font-size:13px} pre{white-space:pre-wrap;word-break:break-all;
background:#f7f7f7;padding:.4em;max-height:16em;overflow:auto;font-size:12px}
"""
# Click a header to sort its table by that column (numbers by their value), again to reverse.
_SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var i = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = !th.classList.contains("asc");
    table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
    th.classList.add(asc ? "asc" : "desc");
    function key(r) {
      var c = r.cells[i]; if (!c) return "";
      var v = c.getAttribute("data-v"); return v === null ? c.textContent : parseFloat(v);
    }
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      var d = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return asc ? d : -d;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""
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




def _definitions() -> str:
    return (
        "Rates are over items that ran (skipped: every tier unavailable or refused the schema), with "
        "95% intervals in brackets: Wilson's for a proportion, a seeded bootstrap over items for F1, "
        "cost and latency. *Valid as generated*: the winning attempt needed no repair; *valid after "
        "repair*: any valid result. Calls and tokens count every attempt of the item (failed ones "
        "included) per valid result. Field F1 is micro over leaf fields, values compared after "
        "lower-casing, collapsing whitespace and trimming edge punctuation (extract.report.scoring)."
    )


def render(out: Path, *, command: str | None = None,
           current_prompts: Mapping[str, str] | None = None) -> dict[str, Any]:
    """(Re)write ``summary.json``, ``report.md``, the plots and ``report.html`` from ``out/attempts.jsonl``.

    ``current_prompts`` (the prompt versions today's code writes; ``extract report`` passes
    them) turns on the stale check: a run written by another prompt says so at the top.
    """
    rows = load_rows(out / "attempts.jsonl")
    figures = aggregate(rows)
    runs = [f.to_json() for f in figures]
    prov = provenance_of(out, rows, current_prompts)
    summary = {"provenance": prov, "runs": runs}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plots = _plots(runs, figures, out) if runs else []
    if command is None and (out / "command.txt").exists():
        command = " && ".join((out / "command.txt").read_text(encoding="utf-8").split("\n")).strip(" &")
    stale = stale_text(prov, command)
    prov_lines = provenance_lines(prov)

    headline = [_headline_cells(i, r) for i, r in _headline_runs(runs)]
    run_rows = [_run_cells(i, r) for i, r in enumerate(runs)]
    tier_rows = _tier_rows(runs)
    field_tables = _field_tables(runs)
    corpus_header, corpus_rows = _corpus_rows(runs)
    reference = _reference_tables()
    file_header, file_rows = _per_file(figures)
    confidence_rows = _confidence_rows(runs)
    definitions = _definitions()

    md = ["# Compliance report", ""]
    if stale:
        md += [f"> **{stale}**", ""]
    if command:
        md += ["Command:", "", f"    {command}", ""]
    md += ["## Where these figures come from", "", *[f"- {line}" for line in prov_lines], ""]
    md += [definitions, "", "## The answer: per schema", "", _md_table(HEADLINE_HEADER, headline), "",
           "## Per data set and policy (each tier alone, and the chain)", "", _md_table(RUN_HEADER, run_rows), "",
           "## Per tier inside each policy", "", _md_table(TIER_HEADER, tier_rows), ""]
    if field_tables:
        md += ["## Per-field accuracy (most often wrong first)", ""]
        for title, header, rows_ in field_tables:
            md += [f"### {title}", "", _md_table(header, rows_), ""]
    if corpus_rows:
        md += ["## Schema corpora: coverage, with the published reference", "",
               _md_table(corpus_header, corpus_rows), ""]
        if file_rows:
            md += ["### JSON Schema Test Suite, per file (ours beside theirs)", "",
                   _md_table(file_header, file_rows), ""]
        for title, header, rows_ in reference:
            md += [f"{title}", "", _md_table(header, rows_), ""]
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
    fields_html = "".join(f"<h3>{html.escape(title)}</h3>" + _html_table(header, rows_)
                          for title, header, rows_ in field_tables)
    corpus_html = ""
    if corpus_rows:
        corpus_html = (
            "<h2>Schema corpora: coverage, with the published reference</h2>"
            + _html_table(corpus_header, corpus_rows)
            + '<p class="note">Empirical coverage: an instance that validates against the full schema '
            "(jsonschema, formats checked), over every schema, refusals included. Their figures are on "
            "their models and their collections; ours on ours.</p>"
            + (f"<h3>JSON Schema Test Suite, per file</h3><p class=note>Ours: cases with a valid instance "
               f"(full schema) of those drawn. Theirs: {html.escape(str(JSONSCHEMABENCH['tables'][0]['source']))}, "
               "the fraction of each file's cases an engine passed, on their models.</p>"
               + _html_table(file_header, file_rows) if file_rows else "")
            + "".join(f"<details><summary>{html.escape(title)}</summary>" + _html_table(header, rows_) + "</details>"
                      for title, header, rows_ in reference)
        )
    failures = _failure_details(figures)
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Compliance report</title>'
        f"<style>{_CSS}</style></head><body><h1>Compliance report</h1>"
        + (f'<p class="stale" id="stale">{html.escape(stale)}</p>' if stale else "")
        + f'<p class="prov">{"<br>".join(html.escape(line) for line in prov_lines[:3])}'
        + ' (<a href="#provenance">more</a>)</p>'
        + (f"<p>Command: <code>{html.escape(command)}</code></p>" if command else "")
        + f'<p class="note">{html.escape(definitions.replace("*", ""))}</p>'
        + "<h2>The answer: per schema</h2>" + _html_table(HEADLINE_HEADER, headline, table_id="headline")
        + "<h2>Per data set and policy (each tier alone, and the chain)</h2>" + _html_table(RUN_HEADER, run_rows)
        + "<h2>Per tier inside each policy</h2>" + _html_table(TIER_HEADER, tier_rows)
        + ("<h2>Failures: every cause, with its attempts</h2>" + failures if failures else "")
        + ("<h2>Per-field accuracy (most often wrong first)</h2>" + fields_html if fields_html else "")
        + corpus_html
        + ("<h2>Confidence of values (right vs wrong against gold)</h2>"
           + _html_table(CONFIDENCE_HEADER, confidence_rows) if confidence_rows else "")
        + "<h2>Plots</h2>" + imgs
        + '<h2 id="provenance">Where these figures come from</h2><ul class="note">'
        + "".join(f"<li>{html.escape(line)}</li>" for line in prov_lines) + "</ul>"
        + ("<details><summary>Every part as recorded (settings, package versions)</summary><pre>"
           + html.escape(json.dumps(prov.get("parts"), indent=1, ensure_ascii=False)) + "</pre></details>"
           if prov.get("parts") else "")
        + f"<script>{_SORT_JS}</script></body></html>"
    )
    (out / "report.html").write_text(page, encoding="utf-8")
    return summary
