"""The benchmark runner: bad input is named and recorded, never fatal; a killed run resumes.

The resume test is the real thing: a subprocess on the local tier is killed with SIGKILL
mid-run, a cut line is left at the end of ``attempts.jsonl`` as a crash would, and the rerun
must finish only the missing items and give the summary an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from extract.front.cli import app
from tests.conftest import DATA, REPO, read_jsonl

runner = CliRunner()


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "attempts.jsonl").read_text(encoding="utf-8").splitlines()]


def test_bad_rows_are_named_recorded_and_skipped(tmp_path: Path) -> None:
    data = _write_jsonl(tmp_path / "d.jsonl", [
        {"id": "ok", "text": "12 Main St, Springfield", "gold": {"StreetName": "Main", "Recipient": "x"}},
        {"id": "notext", "gold": {"StreetName": "Main"}},
        {"id": "badgold", "text": "12 Main St", "gold": {"Nope": "1"}},
        {"id": "goldlist", "text": "12 Main St", "gold": ["Main"]},
        "{oops",
    ])
    out = tmp_path / "out"
    # A remote policy and no endpoint: recorded as skipped, no model needed.
    res = runner.invoke(app, ["bench", "--data", str(data), "--schema", "schemas.address:Address",
                              "--policy", "native", "--out", str(out)])
    assert res.exit_code == 0, res.output
    by_item = {r["item"]: r for r in _rows(out)}
    assert set(by_item) == {"ok", "notext", "badgold", "goldlist", "line-5"}
    assert by_item["ok"]["skipped"] and by_item["ok"]["error"]["type"] == "unavailable"
    assert by_item["ok"]["gold"] == {"StreetName": "Main"}  # labels the schema lacks are not scored
    messages = {k: v["error"]["message"] for k, v in by_item.items() if v["error"]["type"] == "bad_row"}
    assert "row 2 (id 'notext') has no 'text'" in messages["notext"]
    assert "id 'badgold'" in messages["badgold"] and "Nope" in messages["badgold"]
    assert "'gold' is not an object" in messages["goldlist"]
    assert "line 5 is not JSON" in messages["line-5"]
    (run,) = json.loads((out / "summary.json").read_text(encoding="utf-8"))["runs"]
    assert run["n"] == 1 and run["skipped"] == 1 and run["bad_rows"] == 4
    assert run["failures"] == {"bad_row": 4, "unavailable": 1}


def test_schema_corpus_rows_and_schemas_that_do_not_load(tmp_path: Path) -> None:
    data = _write_jsonl(tmp_path / "corpus.jsonl", [
        {"id": "s1", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}},
        {"id": "s2", "schema": {"type": 12}},
    ])
    out = tmp_path / "out"
    res = runner.invoke(app, ["bench", "--data", str(data), "--policy", "native", "--out", str(out)])
    assert res.exit_code == 0, res.output
    by_item = {r["item"]: r for r in _rows(out)}
    assert by_item["s1"]["error"]["type"] == "unavailable" and by_item["s1"]["schema"] == "(row schema)"
    assert by_item["s2"]["error"]["type"] == "bad_row"
    assert "id 's2'" in by_item["s2"]["error"]["message"] and "does not load" in by_item["s2"]["error"]["message"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--policy", "nope"], "'nope'"),
        (["--policy", "local", "--schema", "no_such_module:Thing"], "no_such_module"),
        (["--policy", "local", "--schema", "missing.json"], "missing.json"),
        (["--policy", "local", "--sample", "0"], "--sample"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(tmp_path: Path, args: list[str], named: str) -> None:
    data = _write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "x"}])
    if "--schema" not in args:
        args = [*args, "--schema", "schemas.address:Address"]
    res = runner.invoke(app, ["bench", "--data", str(data), "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2
    assert named in res.output


def test_missing_data_file_is_named(tmp_path: Path) -> None:
    res = runner.invoke(app, ["bench", "--data", str(tmp_path / "none.jsonl"), "--schema",
                              "schemas.address:Address", "--policy", "local", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "none.jsonl" in res.output


def _bench(data: Path, out: Path, *args: str) -> Any:
    # A remote policy and no endpoint: every item is recorded as skipped, no model is loaded.
    return runner.invoke(app, ["bench", "--data", str(data), "--schema", "schemas.address:Address",
                               "--policy", "native", "--out", str(out), *args])


def test_provenance_is_recorded_and_another_draw_is_refused(tmp_path: Path) -> None:
    from extract.front.bench import current_prompts

    data = _write_jsonl(tmp_path / "d.jsonl", [{"id": f"r{i}", "text": f"{i} Main St"} for i in range(4)])
    out = tmp_path / "out"
    res = _bench(data, out, "--sample", "2", "--seed", "0")
    assert res.exit_code == 0, res.output
    prov = json.loads((out / "provenance.json").read_text(encoding="utf-8"))
    assert (prov["sample"], prov["seed"]) == (2, 0)
    (part,) = prov["parts"]
    assert part["prompts"] == current_prompts() and part["finished"] is not None
    assert part["git_commit"] is None or len(part["git_commit"]) == 40
    assert part["command"].startswith("extract ") and part["runs"] == [f"{data.parent.name}/d.jsonl"]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["provenance"]["recorded"] and summary["provenance"]["stale"] is False
    assert "Draw: --sample 2 --seed 0" in (out / "report.html").read_text(encoding="utf-8")
    rows_before = (out / "attempts.jsonl").read_text(encoding="utf-8")

    for other in (["--sample", "3", "--seed", "0"], ["--sample", "2", "--seed", "1"], []):
        refused = _bench(data, out, *other)
        assert refused.exit_code == 2, refused.output
        assert "--sample 2 --seed 0" in refused.output and "new --out" in refused.output
    assert (out / "attempts.jsonl").read_text(encoding="utf-8") == rows_before, "nothing was mixed in"

    again = _bench(data, out, "--sample", "2", "--seed", "0")  # the same draw: a second part
    assert again.exit_code == 0, again.output
    assert len(json.loads((out / "provenance.json").read_text(encoding="utf-8"))["parts"]) == 2
    assert len((out / "command.txt").read_text(encoding="utf-8").splitlines()) == 1


def test_a_folder_without_provenance_takes_no_new_rows(tmp_path: Path) -> None:
    data = _write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "1 Main St"}])
    out = tmp_path / "old"
    out.mkdir()
    (out / "attempts.jsonl").write_text('{"tier": "local"}\n', encoding="utf-8")
    refused = _bench(data, out)
    assert refused.exit_code == 2 and "recorded no --sample/--seed" in refused.output


def test_parts_run_apart_are_merged_only_from_the_same_draw(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "text": f"{i} Main St"} for i in range(3)]
    data = _write_jsonl(tmp_path / "d.jsonl", rows)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _bench(data, a, "--sample", "2").exit_code == 0
    res = runner.invoke(app, ["bench", "--data", str(data), "--schema", "schemas.address:Address",
                              "--policy", "instructor", "--out", str(b), "--sample", "2"])
    assert res.exit_code == 0, res.output
    assert _bench(data, c, "--sample", "1").exit_code == 0

    merged = runner.invoke(app, ["report", str(a), "--merge", str(b)])
    assert merged.exit_code == 0, merged.output
    policies = sorted({r["policy"] for r in _rows(a)})
    assert policies == ["instructor", "native"] and len(_rows(a)) == 4
    parts = json.loads((a / "provenance.json").read_text(encoding="utf-8"))["parts"]
    assert [p.get("merged_from") for p in parts] == [None, "b"]
    commands = (a / "command.txt").read_text(encoding="utf-8").splitlines()
    assert len(commands) == 2 and "--policy instructor" in commands[1]  # the part's command joins a's
    summary = json.loads((a / "summary.json").read_text(encoding="utf-8"))
    assert {r["policy"] for r in summary["runs"]} == {"instructor", "native"}

    again = runner.invoke(app, ["report", str(a), "--merge", str(b)])  # nothing new: nothing doubled
    assert again.exit_code == 0 and len(_rows(a)) == 4
    assert len(json.loads((a / "provenance.json").read_text(encoding="utf-8"))["parts"]) == 2
    refused = runner.invoke(app, ["report", str(a), "--merge", str(c)])
    assert refused.exit_code == 2 and "--sample 2 --seed 0" in refused.output and len(_rows(a)) == 4


def _comparable(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Everything but wall time, which differs between any two runs."""
    drop = {"latency_p50_s", "latency_p95_s"}
    runs = []
    for run in summary["runs"]:
        tiers = [{k: v for k, v in t.items() if k not in drop} for t in run["tiers"]]
        ci = {k: v for k, v in run["ci95"].items() if k not in drop}
        runs.append({**{k: v for k, v in run.items() if k not in drop}, "tiers": tiers, "ci95": ci})
    return runs


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_an_item(tmp_path: Path) -> None:
    data = _write_jsonl(tmp_path / "addr.jsonl", read_jsonl(DATA / "usaddress" / "dev.jsonl", limit=3))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "extract", "bench", "--data", str(data), "--schema", "schemas.address:Address",
            "--policy", "local", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "first.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    attempts = out / "attempts.jsonl"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if attempts.exists() and attempts.read_text(encoding="utf-8").count("\n") >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {log.read_text()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    first = _rows(out)
    assert 1 <= len(first) < 3, "the kill must land mid-run"
    with attempts.open("a", encoding="utf-8") as fh:
        fh.write('{"tier": "local", "raw": "cut by the kil')  # what a crash mid-write leaves

    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    rows = _rows(out)
    items = [r["item"] for r in rows]
    assert sorted(items) == sorted(r["id"] for r in read_jsonl(data)), "every item exactly once"
    assert rows[: len(first)] == first, "finished items were kept, not redone"
    resumed = json.loads((out / "summary.json").read_text(encoding="utf-8"))

    # The same items, uninterrupted, in this process: greedy decoding gives the same bytes.
    from extract.front.bench import BenchRun, run_bench
    from schemas.address import Address

    ref = run_bench([BenchRun(data=data, schema="schemas.address:Address", spec=Address, policies=["local"])],
                    tmp_path / "ref")
    assert _comparable(resumed) == _comparable(ref)
    assert resumed["runs"][0]["n"] == 3
