"""The review page: each source text with every extracted value highlighted where it stands.

One self-contained HTML file (no script, no external link, like ``report.html``): per
document the text with each value's spans marked and coloured by confidence (red unsure,
green sure, grey where the tier gave no probability); hovering or focusing (click, Tab) a mark
shows the value's path, value, confidence, status, tier and whether the answer was repaired.
Values not found in the text are listed apart: they are the likely inventions. A contents
list links every document, doubtful ones first flagged, so many documents stay navigable.

``review_note`` is the same judgement as a few lines of plain text, for a person at a terminal:
``extract run`` prints it on stderr for one text, so stdout stays the value alone.

Fed plain dicts (``ReviewDoc``): ``id``, ``text``, ``tier``, ``repaired`` and ``fields`` (the
JSON form of ``Result.fields``). ``docs_from_rows`` builds them from benchmark or batch rows.
Imports only ``extract.types``.
"""

from __future__ import annotations

import html
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from extract.types import FieldGrounding, Result

__all__ = ["doc_from_result", "docs_from_rows", "render_review", "review_note"]

_STYLE = """
body{font:14px/1.5 system-ui,sans-serif;margin:0;display:flex}
nav{width:230px;flex:none;height:100vh;overflow:auto;position:sticky;top:0;border-right:1px solid #ccc;
padding:8px;box-sizing:border-box;background:#f7f7f7}
nav a{display:block;color:#124;text-decoration:none;padding:1px 0;white-space:nowrap;overflow:hidden;
text-overflow:ellipsis}
nav a.doubt::before{content:"\\25CF ";color:#c0392b}
main{padding:12px 24px;max-width:1000px}
section{border-bottom:1px solid #ddd;padding-bottom:16px;margin-bottom:16px}
pre.src{white-space:pre-wrap;word-break:break-word;font:15px/1.9 ui-monospace,monospace;background:#fcfcfc;
border:1px solid #e3e3e3;padding:10px}
mark{position:relative;border-radius:3px;padding:1px 0;color:#000;cursor:pointer;outline:none}
mark .tip{display:none;position:absolute;left:0;top:1.9em;z-index:5;background:#222;color:#fff;
font:12px/1.4 system-ui,sans-serif;padding:6px 8px;border-radius:4px;white-space:pre;min-width:220px}
mark:hover .tip,mark:focus .tip{display:block}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:middle}
.legend span{margin-right:10px}
"""


def _colour(conf: float | None) -> str:
    """Red (0) through yellow to green (1); light grey when there is no confidence."""
    if conf is None:
        return "hsl(210,15%,82%)"
    return f"hsl({round(120 * max(0.0, min(1.0, conf)))},75%,72%)"


def _conf(conf: Any) -> str:
    return "none (no probabilities)" if conf is None else f"{float(conf):.2f}"


def _where(f: FieldGrounding) -> str:
    """Whether the value is grounded: where it stands in the text, or that it does not."""
    at = ", ".join(f"{a}-{b}" for a, b in f.spans)
    if f.status == "not_found" or not f.spans:
        return "NOT in the text (likely invented)"
    if f.status == "fuzzy":
        return f"near the text at {at} (fuzzy match {f.score or 0.0:.2f})"
    return f"in the text at {at}" + (" (written differently)" if f.status == "normalized" else "")


def review_note(result: Result, review_below: float | None) -> list[str]:
    """Which values of ``result`` to doubt, one line each: path, value, confidence, grounding.

    Lists the fields the Result marks ``needs_review`` (confidence under ``review_below``, the
    threshold the Result was judged with, or not found in the text), worst first. Being in the
    text is not being right: with span-copy every value is a span of the text, so the line says
    where it stands and the confidence says how sure the model was. The first line always
    says that a value above the threshold can still be wrong, because measured on usaddress it
    often is (see ``extract.front.cli.REVIEW_BELOW``). Empty for a failed or valueless Result.
    """
    fields = result.fields
    if not result.ok or not fields:
        return []
    values = f"{len(fields)} value" + ("s" if len(fields) != 1 else "")
    why = "marked for review" if review_below is None else f"confidence below {review_below:g} or not in the text"
    caveat = "" if review_below is None else f"; a value above {review_below:g} can still be wrong"
    flagged = sorted((f for f in fields if f.needs_review),
                     key=lambda f: (f.status != "not_found", -1.0 if f.confidence is None else f.confidence))
    if not flagged:
        if all(f.confidence is None for f in fields):
            return [f"review: no confidence for the {values} (tier {result.tier} gives no probabilities): "
                    "none is known to be right"]
        return [f"review: none of {values} to doubt ({why}){caveat}"]
    lines = [f"review: {len(flagged)} of {values} to doubt ({why}){caveat}:"]
    for f in flagged:
        value = json.dumps(f.value, ensure_ascii=False)
        value = value if len(value) <= 60 else value[:57] + "..."
        conf = "none" if f.confidence is None else f"{f.confidence:.2f}"
        lines.append(f"  {f.path or '/'} = {value}  confidence {conf}, {_where(f)}")
    return lines


def doc_from_result(ident: Any, text: str, result: Result) -> dict[str, Any]:
    """The review form of one Result and the text it was extracted from."""
    winner = next((a for a in reversed(result.attempts) if a.ok), None)
    return {"id": ident, "text": text, "tier": result.tier, "repaired": bool(winner and winner.repaired),
            "ok": result.ok, "fields": [f.model_dump(mode="json") for f in result.fields]}


def _tip(f: Mapping[str, Any], doc: Mapping[str, Any]) -> str:
    lines = [f"path: {f.get('path') or '/'}", f"value: {json.dumps(f.get('value'), ensure_ascii=False)}",
             f"confidence: {_conf(f.get('confidence'))}", f"status: {f.get('status')}"
             + (f" (score {f['score']:.2f})" if f.get("status") == "fuzzy" and f.get("score") is not None else ""),
             f"tier: {doc.get('tier')}", f"repaired: {'yes' if doc.get('repaired') else 'no'}"]
    if f.get("needs_review"):
        lines.append("needs review")
    if f.get("withheld"):
        lines.append("withheld (returned as null)")
    return "\n".join(lines)


def _marked_text(doc: Mapping[str, Any]) -> str:
    """The text with every located field's spans wrapped in a mark (overlaps share a segment)."""
    text = str(doc.get("text") or "")
    fields = [f for f in doc.get("fields") or [] if f.get("spans")]
    cuts = {0, len(text)}
    for f in fields:
        for a, b in f["spans"]:
            if 0 <= a < b <= len(text):
                cuts.update((a, b))
    bounds = sorted(cuts)
    out: list[str] = []
    for a, b in itertools.pairwise(bounds):
        piece = html.escape(text[a:b])
        covering = [f for f in fields if any(s <= a and b <= e for s, e in f["spans"])]
        if not covering:
            out.append(piece)
            continue
        confs = [f.get("confidence") for f in covering]
        known = [c for c in confs if c is not None]
        colour = _colour(min(known) if known else None)
        tip = "\n\n".join(_tip(f, doc) for f in covering)
        paths = " ".join(str(f.get("path")) for f in covering)
        out.append(f'<mark tabindex="0" data-path="{html.escape(paths)}" style="background:{colour}">{piece}'
                   f'<span class="tip">{html.escape(tip)}</span></mark>')
    return "".join(out)


def _fields_table(doc: Mapping[str, Any]) -> str:
    rows = []
    for f in doc.get("fields") or []:
        spans = ", ".join(f"{a}–{b}" for a, b in f.get("spans") or []) or "–"
        flags = " ".join(x for x, on in (("review", f.get("needs_review")), ("withheld", f.get("withheld")),
                                         ("contested", f.get("contested"))) if on)
        value = html.escape(json.dumps(f.get("value"), ensure_ascii=False))
        rows.append(
            f"<tr><td>{html.escape(str(f.get('path')))}</td><td>{value}</td><td>{html.escape(str(f.get('status')))}</td><td>{spans}</td>"
            f"<td><span class=\"swatch\" style=\"background:{_colour(f.get('confidence'))}\"></span> "
            f"{_conf(f.get('confidence'))}</td><td>{flags}</td></tr>")
    if not rows:
        return "<p>No values.</p>"
    return ("<table><tr><th>path</th><th>value</th><th>status</th><th>spans</th><th>confidence</th><th></th></tr>"
            + "".join(rows) + "</table>")


def _doubtful(doc: Mapping[str, Any]) -> bool:
    return any(f.get("needs_review") or f.get("status") == "not_found" for f in doc.get("fields") or [])


def render_review(docs: Sequence[Mapping[str, Any]], out: Path, *, title: str = "Extraction review") -> Path:
    """Write the review page for ``docs`` to ``out`` (its folder must exist)."""
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"cannot write the review page {out}: folder {out.parent} does not exist")
    nav: list[str] = []
    body: list[str] = []
    for n, doc in enumerate(docs):
        anchor = f"doc-{n + 1}"
        fields = doc.get("fields") or []
        missing = [f for f in fields if f.get("status") == "not_found"]
        label = html.escape(str(doc.get("id", n + 1)))
        nav.append(f'<a href="#{anchor}" class="{"doubt" if _doubtful(doc) else ""}">{label}</a>')
        head = (f"<h2>{label}</h2><p>tier: {html.escape(str(doc.get('tier')))} · repaired: "
                f"{'yes' if doc.get('repaired') else 'no'} · {len(fields)} values, {len(missing)} not found</p>")
        if doc.get("text") is None:
            src = "<p><em>The source text is not available for this document.</em></p>"
        else:
            src = f'<pre class="src">{_marked_text(doc)}</pre>'
        lost = ""
        if missing:
            items = "".join(f"<li><code>{html.escape(str(f.get('path')))}</code> = "
                            f"{html.escape(json.dumps(f.get('value'), ensure_ascii=False))} "
                            f"(confidence {_conf(f.get('confidence'))})</li>" for f in missing)
            lost = f'<div class="notfound"><h3>Not found in the text</h3><ul>{items}</ul></div>'
        body.append(f'<section id="{anchor}">{head}{src}{lost}<details><summary>All values</summary>'
                    f"{_fields_table(doc)}</details></section>")
    legend = '<p class="legend">' + "".join(
        f'<span><span class="swatch" style="background:{_colour(c)}"></span> {name}</span>'
        for c, name in ((0.1, "unsure"), (0.5, "middling"), (0.95, "sure"), (None, "no confidence"))) + "</p>"
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><nav><strong>{len(docs)} documents</strong>{''.join(nav)}</nav>"
            f"<main><h1>{html.escape(title)}</h1>{legend}{''.join(body)}</main></body></html>\n")
    out.write_text(page, encoding="utf-8")
    return out


def _texts(path: Path) -> dict[str, str]:
    """id -> text of a JSONL data file (``{"id", "text"}`` rows); empty when it cannot be read."""
    out: dict[str, str] = {}
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and "text" in row and "id" in row:
                    out[str(row["id"])] = str(row["text"])
    except OSError:
        return {}
    return out


def docs_from_rows(rows: Iterable[Mapping[str, Any]], *, texts: Mapping[str, str] | None = None,
                   base: Path | None = None) -> list[dict[str, Any]]:
    """Review documents from output rows: benchmark ``attempts.jsonl`` rows (the winning
    attempt's ``fields``; the text looked up in the row's ``data`` file, relative to ``base``
    or the working directory) or batch output rows (``id`` and ``fields``; texts from
    ``texts``, e.g. the batch's input file). A row carrying its own ``text`` uses it."""
    docs: dict[str, dict[str, Any]] = {}
    data_texts: dict[str, dict[str, str]] = {}
    for row in rows:
        if "item" in row:  # a benchmark attempt row: one per attempt, the last carries the item
            key = f"{row.get('data')}|{row.get('policy')}|{row['item']}"
            ident = f"{row['item']} · {row.get('policy')}"
            doc = docs.setdefault(key, {"id": ident, "text": row.get("text"), "tier": None, "repaired": False,
                                        "fields": []})
            if row.get("fields") and not row.get("error") and not row.get("skipped"):
                doc.update(fields=row["fields"], tier=row.get("tier"), repaired=bool(row.get("repaired")))
            if doc["text"] is None and row.get("data"):
                src = str(row["data"])
                if src not in data_texts:
                    candidates = [Path(src)] + ([base / src, base.parent / src] if base is not None else [])
                    data_texts[src] = next((t for t in (_texts(p) for p in candidates if p.is_file()) if t), {})
                doc["text"] = data_texts[src].get(str(row["item"]))
        elif "id" in row:  # a batch output row (or one written with its text)
            ident = str(row["id"])
            fields = row.get("fields") or []
            winner: Mapping[str, Any] = next((a for a in reversed(row.get("attempts") or []) if not a.get("error")
                           and not a.get("skipped")), {})
            docs[ident] = {"id": row["id"], "text": row.get("text", (texts or {}).get(ident)),
                           "tier": row.get("tier"), "repaired": bool(winner.get("repaired")), "fields": fields}
    return list(docs.values())
