"""Cold start: process start to printed value for the README's first command, with its stages.

Run: ``uv run python benchmarks/cold_start.py [--runs 5] [--python PATH]``

Two measurements, each a median over ``--runs`` fresh processes, result cache off, in a
cache folder of its own; both with the spec's evaluated prompt prefix saved by an earlier
process (``prefix_cache``, the default once any extraction of the spec has run on the
machine) and without it (``EXTRACT_PREFIX_CACHE=false``, a machine's very first run):

1. ``total``: wall time of the README's first command itself,
   ``extract run --schema schemas.address:Address schemas/examples/address.txt``, from
   process start to exit (the value is printed just before exit).
2. The stages of the same extraction, timed inside one process through the public API:
   ``import extract``, the schema import, everything before the model's first call (model
   load, chat template, spec compile, prompt), the attempt itself (prompt evaluation and
   decoding, from the Attempt's own latency), where the prefix's KV cache came from, the
   same process's second extraction of another address (a warm process), and which heavy
   modules the run imported (``outlines``, ``torch``): the fast path needs neither.

``--python`` points at another environment's interpreter (e.g. one made with plain
``uv sync``, without the transformers extra, to measure the default install). Figures, not
assertions: an idle machine gives the meaningful numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMAND = ["run", "--schema", "schemas.address:Address", "schemas/examples/address.txt"]

# Runs in the child: the same extraction as the README command, timed stage by stage.
STAGES = r"""
import json, sys, time
t0 = time.perf_counter()
import extract
t1 = time.perf_counter()
from schemas.address import Address
t2 = time.perf_counter()
text = open("schemas/examples/address.txt", encoding="utf-8").read()
res = extract.Extractor(tiers=["local"]).run(text, Address)
t3 = time.perf_counter()
attempt = res.attempts[0].latency_s
warm = extract.Extractor(tiers=["local"]).run("350 Fifth Avenue, New York, NY 10118", Address)
print(json.dumps({
    "import_extract_s": t1 - t0,
    "import_schema_s": t2 - t1,
    "load_and_compile_s": (t3 - t2) - attempt,
    "attempt_s": attempt,
    "warm_attempt_s": warm.attempts[0].latency_s,
    "prefix_kv": res.attempts[0].meta.get("prefix_kv"),
    "input_tokens": res.attempts[0].usage.input_tokens,
    "output_tokens": res.attempts[0].usage.output_tokens,
    "ok": res.ok,
    "imported_outlines": "outlines" in sys.modules,
    "imported_torch": "torch" in sys.modules,
}))
"""


_CACHE = tempfile.mkdtemp(prefix="extract-cold-start-")


def _env(prefix: bool) -> dict[str, str]:
    return {**os.environ, "EXTRACT_CACHE": "false", "HF_HUB_OFFLINE": "1", "OTEL_SDK_DISABLED": "true",
            "EXTRACT_CACHE_DIR": _CACHE, "EXTRACT_PREFIX_CACHE": str(prefix).lower()}


def total_run(python: str, prefix: bool) -> float:
    start = time.perf_counter()
    proc = subprocess.run([python, "-m", "extract", *COMMAND], cwd=REPO, env=_env(prefix),
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the README command failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def stage_run(python: str, prefix: bool) -> dict[str, float | bool | str]:
    start = time.perf_counter()
    proc = subprocess.run([python, "-c", STAGES], cwd=REPO, env=_env(prefix), capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the staged run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    stages: dict[str, float | bool | str] = json.loads(proc.stdout.strip().splitlines()[-1])
    stages["process_s"] = time.perf_counter() - start
    return stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--python", default=sys.executable, help="the interpreter of the environment to measure")
    args = ap.parse_args()
    torch_installed = subprocess.run(
        [args.python, "-c", "import importlib.util,sys; sys.exit(importlib.util.find_spec('torch') is None)"],
        check=False).returncode == 0
    total_run(args.python, True)  # saves the prefix (and the vocabulary) in this run's cache folder
    print(f"README command 1 (cache off), {args.runs} runs each, torch installed: {torch_installed}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    for prefix in (True, False):
        totals = [total_run(args.python, prefix) for _ in range(args.runs)]
        stages = [stage_run(args.python, prefix) for _ in range(args.runs)]
        label = "with the saved prompt prefix" if prefix else "without a saved prefix (EXTRACT_PREFIX_CACHE=false)"
        print(f"{label}:")
        print(f"  total, process start to printed value: median {statistics.median(totals):.2f} s "
              f"(min {min(totals):.2f}, max {max(totals):.2f})")
        print("  stages (median):")
        for key in ("import_extract_s", "import_schema_s", "load_and_compile_s", "attempt_s", "process_s",
                    "warm_attempt_s"):
            print(f"    {key:<20} {statistics.median(float(s[key]) for s in stages):.2f} s")
        last = stages[-1]
        print(f"  prompt {last['input_tokens']} tokens, output {last['output_tokens']} tokens, ok {last['ok']}, "
              f"prefix KV from: {last['prefix_kv']}")
        print(f"  imported outlines: {last['imported_outlines']}, imported torch: {last['imported_torch']}")

if __name__ == "__main__":
    main()
