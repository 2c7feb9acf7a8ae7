"""The console script, run as a user would: a real subprocess, stdout holding only JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXTRACT = [sys.executable, "-m", "extract"]


def run_cli(*args: str, stdin: bytes | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """The console script in the repository's root; ``env`` adds to (a review threshold of the
    caller's own left out of) the environment."""
    env = {**{k: v for k, v in os.environ.items() if k != "EXTRACT_REVIEW_BELOW"}, "HF_HUB_OFFLINE": "1",
           **(env or {})}
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


# One line of `extract run`'s review note on stderr (extract.report.review.review_note).
_DOUBT = re.compile(r"^  (?P<path>/\S+) = (?P<value>.+)  confidence (?P<conf>\d\.\d\d|none), "
                    r"(?P<where>in the text at \d+-\d+|NOT in the text \(likely invented\)|near the text at .+)$")


def _doubts(stderr: bytes) -> tuple[str, dict[str, tuple[object, float | None]]]:
    """The note's first line, and each listed path with its value and confidence."""
    lines = [line for line in stderr.decode().splitlines() if line.startswith(("review:", "  /"))]
    assert lines and lines[0].startswith("review: "), stderr.decode()
    listed = {}
    for line in lines[1:]:
        m = _DOUBT.match(line)
        assert m, line
        listed[m["path"]] = (json.loads(m["value"]), None if m["conf"] == "none" else float(m["conf"]))
    return lines[0], listed


def test_run_lists_the_values_to_doubt_on_stderr_and_keeps_stdout_the_value() -> None:
    """The README's first command with --review-below: every value the Result marks is listed
    with its confidence (in 0..1, under the threshold) and where it stands in the text, and
    stdout is still exactly the value as JSON."""
    args = ("run", "--schema", "schemas.address:Address", "--review-below", "0.6", "schemas/examples/address.txt")
    whole = run_cli(*args[:-1], "--result", args[-1])
    assert whole.returncode == 0, whole.stderr.decode()
    result = json.loads(whole.stdout)
    marked = {f["path"]: f for f in result["fields"] if f["needs_review"]}
    assert marked, "the 135M model is unsure of some address part here (measured: 5 of 11 under 0.6)"
    head, listed = _doubts(whole.stderr)
    assert head.startswith(f"review: {len(marked)} of {len(result['fields'])} values to doubt") and "0.6" in head
    assert listed.keys() == marked.keys()
    for path, (value, conf) in listed.items():
        assert value == marked[path]["value"] == result["value"][path.lstrip("/")]
        assert conf is not None and 0.0 <= conf < 0.6 and abs(conf - marked[path]["confidence"]) <= 0.005
    assert all(f["path"] in listed for f in result["fields"] if f["confidence"] is not None and f["confidence"] < 0.6)

    plain = run_cli(*args)
    assert plain.returncode == 0, plain.stderr.decode()
    assert json.loads(plain.stdout) == result["value"]  # stdout: the value alone, as before
    assert _doubts(plain.stderr)[1] == listed


def test_run_review_threshold_defaults_to_half_and_follows_the_environment() -> None:
    """Without the flag one text is judged at REVIEW_BELOW (0.5); EXTRACT_REVIEW_BELOW wins over
    that default, and the flag over both."""
    from extract.front.cli import REVIEW_BELOW

    src = ("run", "--schema", "schemas.address:Address", "schemas/examples/address.txt")
    head, listed = _doubts(run_cli(*src).stderr)
    assert f"confidence below {REVIEW_BELOW:g} " in head
    assert all(c is not None and c < REVIEW_BELOW for _, c in listed.values())
    head, listed = _doubts(run_cli(*src, env={"EXTRACT_REVIEW_BELOW": "1"}).stderr)
    assert "confidence below 1 " in head and len(listed) >= 5
    head, listed = _doubts(run_cli(*src[:-1], "--review-below", "0", src[-1], env={"EXTRACT_REVIEW_BELOW": "1"}).stderr)
    assert head.startswith("review: none of ") and not listed


def test_run_regex() -> None:
    proc = run_cli("run", "--regex", r"\d{5}", "-", stdin=b"The ZIP code is 90210.")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout) == "90210"  # the text's, not one of the model's (tests/test_regex_copy.py)


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
