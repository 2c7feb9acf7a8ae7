"""The console script, run as a user would: a real subprocess, stdout holding only JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXTRACT = [sys.executable, "-m", "extract"]


def run_cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*EXTRACT, *args], input=stdin, capture_output=True, cwd=REPO, env=env,
                          timeout=300, check=False)


def test_run_prints_only_the_value_as_json() -> None:
    proc = run_cli("run", "--schema", "schemas.address:Address", "schemas/examples/address.txt")
    assert proc.returncode == 0, proc.stderr.decode()
    value = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    from schemas.address import Address

    Address.model_validate(value)


def test_run_result_prints_attempts_and_reads_stdin() -> None:
    proc = run_cli("run", "--schema", "schemas.address:Address", "--result", "-",
                   stdin=b"221B Baker Street, London")
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert result["ok"] is True and result["tier"] == "local"
    attempt = result["attempts"][-1]
    assert attempt["model"]["digest"].startswith("sha256:")
    assert attempt["usage"]["total_tokens"] > 0 and attempt["raw"]


def test_run_regex() -> None:
    proc = run_cli("run", "--regex", r"\d{5}", "-", stdin=b"The ZIP code is 90210.")
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(json.loads(proc.stdout)) == 5


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["run", "--schema", "no_such_module:X", "-"], b"text", "cannot import 'no_such_module'"),
        (["run", "--schema", "schemas.address:Nope", "-"], b"text", "has no attribute 'Nope'"),
        (["run", "--schema", "schemas.address:Address", "-"], b"   ", "empty or only whitespace"),
        (["run", "--schema", "schemas.address:Address", "missing.txt"], None, "does not exist"),
        (["run", "--regex", "([", "-"], b"text", "invalid regular expression"),
        (["run", "--schema", "schemas.address:Address", "--model-path", "nope.gguf", "-"], b"x y",
         "does not exist"),
        (["run", "--schema", "schemas.address:Address", "--examples", "nope.jsonl", "-"], b"x y",
         "examples file nope.jsonl does not exist"),
        (["run", "--schema", "schemas.address:Address", "--examples", "schemas/examples/address.txt", "-"],
         b"x y", "address.txt:1: not JSON"),
        (["run", "--schema", "schemas.address:Address", "--examples-k", "3", "-"], b"x y",
         "examples_k is set but no examples pool"),
        (["run", "--schema", "schemas.address:Address", "--examples", "schemas/examples/address_pool.jsonl",
          "--examples-k", "99", "-"], b"x y", "examples_k"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_nothing_on_stdout(args: list[str], stdin: bytes | None,
                                                              message: str) -> None:
    proc = run_cli(*args, stdin=stdin)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert message in proc.stderr.decode()


def test_run_shows_worked_examples_from_a_file(tmp_path: Path) -> None:
    proc = run_cli("run", "--schema", "schemas.address:Address", "--examples", "schemas/examples/address_pool.jsonl",
                   "--examples-k", "2", "--result", "-", stdin=b"PO Box 77, Austin, TX 78701")
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert result["value"]["USPSBoxID"] == "77" and result["value"]["ZipCode"] == "78701"
    # An answer that breaks the schema is named by its index before any model runs.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "12 Main St", "value": {"ZipCode": "twelve"}}\n', encoding="utf-8")
    proc = run_cli("run", "--schema", "schemas.address:Address", "--examples", str(bad), "-", stdin=b"x y")
    assert proc.returncode == 2 and "examples[0] does not validate" in proc.stderr.decode()
