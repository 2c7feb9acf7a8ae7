"""The transformers backend on the same embedded GGUF, dequantized through transformers.

Each test runs in its own process: torch and llama.cpp each bring an OpenMP runtime, and
keeping them apart keeps the rest of the suite's timings honest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.transformers, pytest.mark.slow]


def run_py(code: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TORCHDYNAMO_DISABLE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=900, check=False)


def test_transformers_backend_extracts_under_the_constraint(tmp_path: Path) -> None:
    code = """
import json, re
from extract import Extractor, Regex
from schemas.address import Address
ex = Extractor(tiers=["local"], backend="transformers", n_threads=2, cache=False)
date = ex.run("The parcel arrived on the 3rd of March 2021.", Regex(r"\\d{4}-\\d{2}-\\d{2}"))
schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
pet = ex.run("Rex is a dog, 3 years old.", schema)
again = ex.run("Rex is a dog, 3 years old.", schema)
conf = lambda r: [(f.path, f.raw_confidence) for f in r.fields]
print(json.dumps({"date": date.value, "date_ok": date.ok, "model": date.attempts[-1].model.model_dump(),
                  "pet": pet.value, "pet_raw": pet.attempts[-1].raw, "date_conf": conf(date),
                  "pet_conf": conf(pet), "again_conf": conf(again)}))
"""
    proc = run_py(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["date_ok"]
    assert len(out["date"]) == 10 and out["date"][4] == "-" and out["date"][7] == "-"
    assert out["model"]["backend"] == "transformers"
    assert out["model"]["digest"].startswith("sha256:")
    assert isinstance(out["pet"]["age"], int)
    assert out["pet_raw"] == json.dumps(out["pet"], separators=(",", ":"))  # compact, as generated
    # Confidences from the scores under the constraint, as on llama.cpp: in range, and the same
    # on a second run (the cache is off).
    for path, c in out["date_conf"] + out["pet_conf"]:
        assert c is not None and 0.0 < c <= 1.0, (path, c)
    assert [p for p, _ in out["pet_conf"]] == ["/age"] and out["again_conf"] == out["pet_conf"]


def test_a_missing_extra_names_the_extra_to_install(tmp_path: Path) -> None:
    code = """
import sys
sys.modules["torch"] = None  # as if the transformers extra were not installed
from extract import Extractor, ConfigError
try:
    Extractor(tiers=["local"], backend="transformers").run("some text", {"type": "string"})
except ConfigError as exc:
    print(exc)
"""
    proc = run_py(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "extract[transformers]" in proc.stdout
