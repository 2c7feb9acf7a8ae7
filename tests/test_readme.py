"""Every Python snippet and every command block in README.md runs as written.

The blocks are read from README.md when the tests are collected, so what is tested is the
README as it stands: edit a snippet and its test changes with it. Each block is one test,
named after its language, its section and its place in the section (``python-using-it-1``).

- A ```python block runs in a fresh interpreter, in a scratch copy of the repository's root
  (its top-level entries symlinked, so files a snippet writes land in the scratch folder), with
  the repository on ``PYTHONPATH``. A block that names ``EXTRACT_BASE_URL`` gets the session's
  llama.cpp server (``tests/remote_fixtures.py``) as that endpoint; no other block sees one.
- A ```bash block runs line by line (``\\`` continuations joined) with ``bash``, in the same
  kind of scratch root, beside a ``../shared`` that is the real shared data folder. The test
  runs inside the project environment already, so ``python3 -m pip install -q uv &&`` and the
  ``uv run`` / ``python3 -m uv run`` prefix are dropped and ``extract`` is the environment's own
  console script. Every line must exit 0. Three more rewrites keep the run fast and
  collision-free, and nothing else is changed: port 8765 becomes a free port, ``--sample N``
  becomes ``--sample 2``, and a line running ``extract serve`` is started in the background,
  waited for until ``/v1/models`` answers, and stopped when the block ends.
- A block that is only illustrative carries ``<!-- readme-test: skip (reason) -->`` on the line
  before its fence, and is reported as skipped with that reason.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from extract.providers.server import free_port

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DATA = REPO.parent / "shared"
BIN = Path(sys.executable).parent

_SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>.+)\)\s*-->")
_SETUP = re.compile(r"python3 -m pip install -q uv\s*&&\s*")
_UV_RUN = re.compile(r"\b(?:python3 -m )?uv run (?:--all-extras )?")
_SERVE = re.compile(r"\bextract serve\b")
_SAMPLE = re.compile(r"--sample \d+")
_README_PORT = "8765"
# Blocks that take over a minute on 2 shared cores (a server to start, Ray to boot).
_SLOW = re.compile(r"\bextract (?:serve|bench)\b|engine=\"ray\"")


@dataclass(frozen=True)
class Block:
    """One fenced block of README.md."""

    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    section: str
    index: int  # 1-based place among the blocks of its language in its section
    skip: str | None

    @property
    def id(self) -> str:
        words = re.sub(r"[^a-z0-9]+", " ", self.section.lower()).split()[:3]
        slug = "-".join(words) or "top"
        return f"{self.lang}-{slug}-{self.index}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, each with its section and skip marker."""
    blocks: list[Block] = []
    section, fence, body, start, skip = "", None, [], 0, None
    counts: dict[tuple[str, str], int] = {}
    previous = ""
    for n, line in enumerate(text.splitlines(), 1):
        if fence is not None:
            if line.strip() == "```":
                key = (fence, section)
                counts[key] = counts.get(key, 0) + 1
                blocks.append(Block(fence, "\n".join(body) + "\n", start, section, counts[key], skip))
                fence, body = None, []
            else:
                body.append(line)
            continue
        if line.startswith("```"):
            fence, start = line[3:].strip() or "text", n
            marker = _SKIP.search(previous)
            skip = marker.group("reason") if marker else None
        elif line.startswith("#"):
            section = line.lstrip("#").strip()
        if line.strip():
            previous = line
    assert fence is None, f"README.md: the fence opened on line {start} is never closed"
    return blocks


BLOCKS = [b for b in readme_blocks(README.read_text(encoding="utf-8")) if b.lang in ("python", "bash")]


def _params(lang: str) -> list[Any]:
    params = []
    for block in BLOCKS:
        if block.lang != lang:
            continue
        marks: list[Any] = []
        if block.skip is not None:
            marks.append(pytest.mark.skip(reason=f"README.md line {block.line}: {block.skip}"))
        if _SLOW.search(block.code):
            marks.append(pytest.mark.slow)
        params.append(pytest.param(block, id=block.id, marks=marks))
    return params


def _scratch_root(tmp_path: Path) -> Path:
    """A folder that looks like the repository's root (and has ``../shared``) but is writable."""
    root = tmp_path / "repo"
    root.mkdir()
    for entry in REPO.iterdir():
        if not entry.name.startswith("."):
            (root / entry.name).symlink_to(entry)
    (tmp_path / "shared").symlink_to(DATA)
    return root


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EXTRACT_BASE_URL"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    # Under the suite's own `uv run` (the README's test command), Ray sees `uv run` among a
    # snippet's parent processes and would start its workers with `uv run` in the snippet's
    # folder, which refuses a scratch folder whose pyproject.toml is a link to the repository's.
    # The workers then use this interpreter, as for a user who runs the snippet from the root.
    env["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    env.update(extra)
    return env


def _command_lines(code: str) -> list[str]:
    """The block's commands, continuations joined, with the rewrites the module docstring lists."""
    lines = []
    for line in code.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        line = _UV_RUN.sub("", _SETUP.sub("", line))
        lines.append(_SAMPLE.sub("--sample 2", line))
    return lines


def _failure(what: str, proc: subprocess.CompletedProcess[str]) -> str:
    return f"{what}\nexit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as resp:
            return bool(json.loads(resp.read()).get("data"))
    except (OSError, ValueError):
        return False


def _start_background(line: str, port: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = (cwd / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{line!r} exited with {proc.returncode} before answering:\n"
                        + (cwd / f"serve-{port}.log").read_text(errors="replace")[-3000:])
        if _answers(f"http://127.0.0.1:{port}"):
            return proc
        time.sleep(0.5)
    _stop(proc)
    pytest.fail(f"{line!r} did not answer /v1/models within 180 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("block", _params("python"))
def test_python_snippet(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    root = _scratch_root(tmp_path)
    extra = {}
    if "EXTRACT_BASE_URL" in block.code:
        extra["EXTRACT_BASE_URL"] = request.getfixturevalue("llama_server").base_url
    script = root / "snippet.py"
    script.write_text(block.code, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=root, env=_env(**extra), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, _failure(f"README.md line {block.line}:\n{block.code}", proc)


@pytest.mark.parametrize("block", _params("bash"))
def test_bash_block(block: Block, tmp_path: Path) -> None:
    root = _scratch_root(tmp_path)
    port = str(free_port())
    env = _env()
    background: list[subprocess.Popen[bytes]] = []
    try:
        for line in _command_lines(block.code.replace(_README_PORT, port)):
            if _SERVE.search(line):
                background.append(_start_background(line, port, root, env))
                continue
            proc = subprocess.run(["bash", "-c", f"set -euo pipefail\n{line}"], cwd=root, env=env,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, _failure(f"README.md line {block.line}: {line}", proc)
    finally:
        for server in background:
            _stop(server)


def test_the_readme_blocks_are_found() -> None:
    """The reader above sees the README's blocks, and every skip marker sits on a fence."""
    ids = [b.id for b in BLOCKS]
    assert len(ids) == len(set(ids)), ids
    assert sum(b.lang == "python" for b in BLOCKS) >= 5
    commands = [line for b in BLOCKS if b.lang == "bash" for line in _command_lines(b.code)]
    assert any(line.startswith("extract run ") for line in commands)
    lines = README.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if _SKIP.search(line):
            following = next((x for x in lines[n + 1:] if x.strip()), "")
            assert following.startswith("```"), f"README.md line {n + 1}: a skip marker not followed by a fence"


def test_the_rewrites_keep_the_commands() -> None:
    code = ("python3 -m pip install -q uv && python3 -m uv run extract run --schema s:S f.txt\n"
            "uv run extract bench --data d.jsonl \\\n    --serve --sample 20 --out out/   # comment\n"
            "# a comment line\n\n")
    assert _command_lines(code) == [
        "extract run --schema s:S f.txt",
        "extract bench --data d.jsonl      --serve --sample 2 --out out/   # comment",
    ]


def test_the_reader_names_blocks_by_section_and_keeps_skip_reasons() -> None:
    text = ("# extract\n\n## Using it\n\n```python\nx = 1\n```\n\n"
            "<!-- readme-test: skip (needs a GPU) -->\n```bash\nextract serve\n```\n\n"
            "```python\n# not a heading\ny = 2\n```\n")
    blocks = readme_blocks(text)
    assert [(b.id, b.line, b.skip) for b in blocks] == [
        ("python-using-it-1", 5, None), ("bash-using-it-1", 10, "needs a GPU"), ("python-using-it-2", 14, None)]
    assert blocks[2].code == "# not a heading\ny = 2\n"
