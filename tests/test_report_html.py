"""The HTML report opens in a real headless Chromium (Debian's package) and shows its plots.

The page must be self-contained (its one script inline, no network): the screenshot is taken
from a ``file://`` URL with the network features off, so a plot that is not embedded would be
missing from it. CI installs Chromium (``.ci/run``); a machine without it fails here rather
than skipping, on purpose.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from extract.report import render
from tests.test_report import hand_made_rows

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# What Chromium logs when a page itself goes wrong (a script error, a resource it cannot load).
PAGE_ERRORS = re.compile(r"CONSOLE|Uncaught|Failed to load|Not allowed to load|net::ERR_", re.IGNORECASE)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is not installed: apt-get install -y chromium (.ci/run does this in CI)")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    (out / "attempts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hand_made_rows()), encoding="utf-8")
    render(out, command="extract bench --data d.jsonl --schema s --policy chain --out OUT")
    return out


def test_report_html_is_self_contained(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 3
    # One inline script (column sorting); nothing loaded from anywhere.
    assert page.count("<script") == 1 and "<script src" not in page and "<script>" in page
    assert "http://" not in page and "https://" not in page


def test_report_opens_in_headless_chromium_and_shows_the_plots(report_dir: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    url = (report_dir / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    proc = subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,2000", "--enable-logging=stderr", "--v=0", url],
        capture_output=True, timeout=120, check=False,
    )
    log = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    page_errors = [line for line in log.splitlines() if PAGE_ERRORS.search(line)]
    assert not page_errors, page_errors

    from matplotlib.image import imread

    pixels = imread(str(shot))
    assert pixels.shape[:2] == (2000, 1200)
    rgb = (pixels[:, :, :3] * 255).round()
    # The compliance plot's "valid as generated" bars are #4c72b0: present only if the
    # embedded PNG was decoded and drawn.
    bar = (abs(rgb[:, :, 0] - 0x4C) <= 3) & (abs(rgb[:, :, 1] - 0x72) <= 3) & (abs(rgb[:, :, 2] - 0xB0) <= 3)
    assert bar.sum() > 500, "the compliance plot is not visible in the screenshot"
    assert len({tuple(p) for p in rgb[::20, ::20].reshape(-1, 3).tolist()}) > 20  # not a blank page

    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, timeout=120, check=False)
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-3000:]
    html = dom.stdout.decode()
    assert "<h1>Compliance report</h1>" in html
    assert html.count("<img") == 3 and "Per tier" in html


def test_the_page_leads_with_the_answer_and_every_failure_opens_onto_its_attempts(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    order = ["The answer: per schema", "Per data set and policy", "Per tier inside each policy",
             "Failures: every cause", "Per-field accuracy", "<h2>Plots", "Where these figures come from"]
    positions = [page.index(h) for h in order]
    assert positions == sorted(positions)
    headline = page[page.index('id="headline"'):page.index("</table>", page.index('id="headline"'))]
    assert '<span class="ci">[' in headline  # intervals beside the rates
    links = re.findall(r'href="#(f\d+-[a-z0-9-]+)"', page)
    assert {"f0-truncated", "f0-unsupported", "f0-bad-row"} <= set(links)
    for anchor in links:
        assert f'<details id="{anchor}">' in page, anchor
    truncated = page[page.index('<details id="f0-truncated">'):]
    truncated = truncated[:truncated.index("</details>")]
    # Item C: both attempts, their errors and the raw output, escaped.
    assert "<code>C</code>" in truncated and "schema_violation" in truncated and "truncated" in truncated
    assert "{&quot;x&quot;:&quot;ab</pre>" in truncated
    fields = page[page.index("Per-field accuracy"):page.index("<h2>Plots")]
    assert "<td>x</td>" in fields and "<td>z</td>" in fields


def test_a_click_on_a_header_sorts_its_table_in_chromium(report_dir: Path, tmp_path: Path) -> None:
    """The inline script, run by a real browser: one click on "attempts" in the per-tier table
    puts local (3 attempts) before native (4), the reverse of the rows' order."""
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    click = ('<script>var t=document.querySelectorAll("table.sortable")[2];'
             't.tHead.rows[0].cells[3].click();</script></body>')
    clicked = tmp_path / "clicked.html"
    clicked.write_text(page.replace("</body>", click), encoding="utf-8")
    chromium = _chromium()
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    before = page[page.index("Per tier inside each policy"):]
    assert before.index("<td>native</td>") < before.index("<td>local</td>")
    dom = subprocess.run([*common, "--dump-dom", clicked.resolve().as_uri()], capture_output=True, timeout=120,
                         check=False)
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-3000:]
    html = dom.stdout.decode()
    after = html[html.index("Per tier inside each policy"):]
    assert after.index("<td>local</td>") < after.index("<td>native</td>")
    assert 'class="asc"' in after[:after.index("</thead>")]
