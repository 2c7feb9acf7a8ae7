"""A result the README or a notebook presents as current must come from the prompts the code has.

A committed benchmark folder is quoted long after it was run. When a prompt changes, every
figure in a folder written by the old prompt describes code that no longer exists; presented
as current, it misleads. This test reads every mention of ``benchmarks/results/<folder>`` in
the README and the notebooks (markdown and code, ``"results" / "x"`` path joins included). A
mention is *historical* when the same paragraph (list item, table row) or notebook cell says
"historical"; every other
mention presents its folder as current, and that folder's attempts (every ``prompt_version``
in its JSONL rows) must all be prompt versions the code writes today. A folder whose rows
name no prompt version at all cannot be shown to be current and fails too.

No model is loaded: the folders and the prompt module are read as files and constants.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from extract.front.bench import current_prompts
from extract.report import load_rows, render
from tests.conftest import REPO

RESULTS = REPO / "benchmarks" / "results"
MENTION = re.compile(r"benchmarks/results/([A-Za-z0-9._-]+)")


def _blocks() -> list[tuple[str, str]]:
    """(where, text) for each README paragraph and notebook cell (path joins flattened)."""
    out: list[tuple[str, str]] = []
    for readme in (REPO / "README.md", REPO / "notebooks" / "README.md"):
        for n, para in enumerate(re.split(r"\n\s*\n", readme.read_text(encoding="utf-8"))):
            # A list item or a table row is a block of its own: "historical" in one bullet
            # says nothing about the next.
            for m, item in enumerate(re.split(r"\n(?=\s*(?:[-*]|\d+\.|\|)\s)", para)):
                out.append((f"{readme.relative_to(REPO)} paragraph {n + 1} item {m + 1}", item))
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        for n, cell in enumerate(json.loads(nb.read_text(encoding="utf-8"))["cells"]):
            text = "".join(cell["source"])
            text = re.sub(r'"\s*/\s*"', "/", text)  # REPO / "benchmarks" / "results" / "x"
            out.append((f"{nb.relative_to(REPO)} cell {n + 1}", text))
    return out


def presented_as_current() -> dict[str, list[str]]:
    """Folder -> where it is presented as current."""
    found: dict[str, list[str]] = {}
    for where, text in _blocks():
        if "historical" in text.lower():
            continue
        for name in MENTION.findall(text):
            found.setdefault(name.rstrip("."), []).append(where)
    return found


def prompt_versions(folder: Path) -> set[str]:
    """Every prompt version named by the folder's attempt rows."""
    versions: set[str] = set()
    for path in folder.rglob("*.jsonl"):
        versions |= {str(r["prompt_version"]) for r in load_rows(path) if r.get("prompt_version")}
    return versions


def test_every_result_presented_as_current_was_made_by_todays_prompts() -> None:
    current = set(current_prompts().values())
    stale = {}
    for name, where in sorted(presented_as_current().items()):
        folder = RESULTS / name
        assert folder.is_dir(), f"{where} names benchmarks/results/{name}, which does not exist"
        versions = prompt_versions(folder)
        if not versions or versions - current:
            stale[name] = (sorted(versions) or ["no prompt version recorded"], where)
    assert not stale, (
        f"results presented as current were made by prompts the code no longer has ({sorted(current)}): "
        f"{stale}. Regenerate them (the folder's command.txt), or say 'historical' where they are cited."
    )


def test_every_committed_stale_page_says_so() -> None:
    """A committed report page whose rows were written by a prompt the code no longer has opens
    with the stale banner (``extract report DIR`` re-renders it so)."""
    current = set(current_prompts().values())
    pages = [f for f in sorted(RESULTS.iterdir()) if (f / "report.html").exists() and (f / "attempts.jsonl").exists()]
    assert pages, "no committed report to check"
    for folder in pages:
        stale = bool(prompt_versions(folder) - current)
        page = (folder / "report.html").read_text(encoding="utf-8")
        assert ('class="stale"' in page) == stale, f"{folder.name}: stale={stale} but the page says otherwise"


def test_a_stale_report_says_so_at_the_top(tmp_path: Path) -> None:
    """Rows written by an old prompt, rendered against today's prompt versions: the page opens
    with the stale banner and the command to regenerate; the provenance says it was not
    recorded, never invented."""
    from tests.test_report import hand_made_rows

    rows = [{**r, "prompt_version": "extract-v0"} if r.get("prompt_version") else r for r in hand_made_rows()]
    rows[0]["prompt_version"] = "extract-v0"
    (tmp_path / "attempts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "command.txt").write_text("extract bench --data d.jsonl --policy chain --out OLD\n", encoding="utf-8")
    summary = render(tmp_path, current_prompts=current_prompts())
    prov = summary["provenance"]
    assert prov["stale"] is True and prov["recorded"] is False and prov["prompt_versions"] == ["extract-v0"]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    banner = page.index('class="stale"')
    assert banner < page.index("<h2>")  # before any figure
    text = page[banner:page.index("</p>", banner)]
    assert "extract-v0" in text and "extract bench --data d.jsonl" in text
    # The same rows under the same prompt versions: no banner.
    fresh = render(tmp_path, current_prompts={"extract": "extract-v0"})
    assert fresh["provenance"]["stale"] is False
    assert 'class="stale"' not in (tmp_path / "report.html").read_text(encoding="utf-8")
