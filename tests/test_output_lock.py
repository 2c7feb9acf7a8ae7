"""One writer per output file: a second ``extract run --output F`` is refused naming the first;
a writer killed with ``kill -9`` leaves a lock file that blocks nobody.

Real processes and the real embedded model (``local`` tier), no mocks. A holder that must stay
alive for as long as a test needs is a helper process taking the lock through ``hold_output``,
the context manager ``run_jsonl`` itself uses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from extract import ConfigError, Extractor
from extract.front.batch import OutputLocked, hold_output, run_jsonl
from tests.test_batch import CITY

REPO = Path(__file__).resolve().parent.parent
CITIES = ["Paris", "Lyon", "Berlin", "Madrid", "Rome", "Oslo"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "EXTRACT_CACHE": "false"}


def _batch(tmp_path: Path, n: int) -> tuple[list[str], Path, Path, list[str]]:
    """Ids, input, output and the ``extract run`` arguments of an ``n``-row local-tier batch."""
    schema, source, out = tmp_path / "city.json", tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    schema.write_text(json.dumps(CITY), encoding="utf-8")
    ids = [f"doc-{i}" for i in range(n)]
    source.write_text("".join(json.dumps({"id": ident, "text": f"I live in {CITIES[i % len(CITIES)]}."}) + "\n"
                              for i, ident in enumerate(ids)), encoding="utf-8")
    args = ["--schema", str(schema), "--tier", "local", "--no-cache", "--concurrency", "1",
            "--input", str(source), "--output", str(out)]
    return ids, source, out, args


def _cli(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "extract", "run", *args], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _lock_record(out: Path) -> dict[str, Any]:
    lock = out.with_name(out.name + ".lock")
    try:
        record = json.loads(lock.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _wait_for(proc: subprocess.Popen[bytes], ready: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"exited before {what}: {proc.communicate()[1].decode()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


def _ids(out: Path) -> list[str]:
    return [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()]


HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from extract.front.batch import hold_output

    with hold_output(Path(sys.argv[1])):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes stdin, or kills this process
""")


def _holder(out: Path) -> subprocess.Popen[str]:
    """A process holding ``out`` through the library's own lock until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=REPO, env=ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n", proc.communicate()[1]
    return proc


def test_a_second_run_on_the_same_output_exits_2_naming_the_first_which_completes(tmp_path: Path) -> None:
    ids, _, out, args = _batch(tmp_path, 3)
    first = _cli(args)
    try:
        _wait_for(first, lambda: _lock_record(out).get("pid") == first.pid, "the first run's lock")
        # Stopped, the first stays alive (and the holder) for as long as the second takes to start,
        # however loaded the machine is.
        first.send_signal(signal.SIGSTOP)
        second = _cli(args)
        stdout, stderr = second.communicate(timeout=120)
        first.send_signal(signal.SIGCONT)
        message = stderr.decode()
        assert second.returncode == 2, message
        assert stdout == b""
        assert f"being written by another process: pid {first.pid}" in message, message
        assert "extract run" in message and "writing since" in message, message

        stdout, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
        first.communicate()
    assert first.returncode == 0, stderr.decode()
    assert json.loads(stdout)["done"] == len(ids)
    assert sorted(_ids(out)) == sorted(ids)  # each id exactly once: only the first wrote
    assert not out.with_name("out.jsonl.lock").exists()  # released on a normal exit


def test_kill_9_leaves_a_stale_lock_that_the_rerun_takes_and_resumes_past(tmp_path: Path) -> None:
    ids, _, out, args = _batch(tmp_path, 4)
    first = _cli(args)
    try:
        _wait_for(first, lambda: out.exists() and len(out.read_bytes().splitlines()) >= 1, "a first row")
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    done_before = _ids(out)
    assert 1 <= len(done_before) < len(ids), "the kill came too late to test a resume"
    assert _lock_record(out)["pid"] == first.pid  # the stale lock file is still there
    with out.open("a", encoding="utf-8") as fh:  # and a writer killed mid-line leaves a torn tail
        fh.write('{"id": "doc-99", "ok": tr')

    second = _cli(args)
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr.decode()
    summary = json.loads(stdout)
    assert summary["already_done"] == len(done_before) and summary["done"] == len(ids) - len(done_before)
    assert sorted(_ids(out)) == sorted(ids)  # every id exactly once, the torn tail cut
    assert not out.with_name("out.jsonl.lock").exists()


def test_the_library_refuses_before_touching_the_output_and_a_killed_holder_blocks_nothing(
        tmp_path: Path) -> None:
    _, source, out, _ = _batch(tmp_path, 2)
    torn = b'{"id": "doc-0", "ok": tr'
    out.write_bytes(torn)
    extractor = Extractor(tiers=["local"], cache=False)  # the model loads lazily: never here
    holder = _holder(out)
    try:
        with pytest.raises(OutputLocked) as refused:
            run_jsonl(source, out, CITY, extractor, progress=False)
        assert isinstance(refused.value, ConfigError)
        assert refused.value.pid == holder.pid and refused.value.path == out
        assert "-c" in (refused.value.command or "") and refused.value.started
        assert out.read_bytes() == torn  # the lock comes before the torn-line cut
    finally:
        holder.kill()
        holder.communicate()
    assert _lock_record(out)["pid"] == holder.pid  # stale, and ignored:
    with hold_output(out):
        assert _lock_record(out)["pid"] == os.getpid()
        with pytest.raises(OutputLocked, match=rf"another run in this process \(pid {os.getpid()}\)"):
            run_jsonl(source, out, CITY, extractor, progress=False)
    assert out.read_bytes() == torn and not out.with_name("out.jsonl.lock").exists()


def test_a_symlink_to_the_output_shares_its_lock(tmp_path: Path) -> None:
    out, link = tmp_path / "out.jsonl", tmp_path / "link.jsonl"
    out.touch()
    link.symlink_to(out)
    with hold_output(out), pytest.raises(OutputLocked), hold_output(link):
        pass
