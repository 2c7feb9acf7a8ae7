"""What a merge can leave behind unnoticed: conflict markers inside a string or a Markdown
file parse and lint clean (one sat in ``benchmarks/lists.py``'s docstring for a session)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^(<{7} |={7}$|>{7} )", re.MULTILINE)


def test_no_merge_conflict_markers_are_committed() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for name in files:
        path = REPO / name
        if path.suffix not in {".py", ".md", ".toml", ".txt", ".ipynb", ".json", ".yaml", ".yml", ".lark", ""}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        hits += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}" for m in MARKER.finditer(text)]
    assert hits == [], f"merge conflict markers: {hits}"
