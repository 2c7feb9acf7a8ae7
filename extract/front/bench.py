"""The schema benchmark runner: data rows × a spec × chain policies -> ``attempts.jsonl`` + report.

Each item's attempts are appended to ``OUT/attempts.jsonl`` in one write as soon as the item
is done, so a run killed at any moment loses at most the item in flight: on the next start
the file is read back, a cut last line or an item with missing rows is dropped, and every
item already finished for the same (data, schema, policy) is skipped, never redone.

A folder holds one run: one ``--sample``/``--seed`` draw of the data. Each invocation that adds
rows is a *part*, recorded in ``OUT/provenance.json`` with the code it came from (git commit,
prompt versions, model digests, settings, command line); ``summary.json`` and the page show
them. An invocation with another sample or seed is refused before any model runs: its items
would differ, and one report would mix two item sets. Parts run apart (another machine,
another folder) are joined with ``extract report OUT --merge PART``, under the same rule.

Bad input never stops a run: a row without ``text``, a gold that names fields the schema
does not have, a row schema that does not compile is recorded as a ``bad_row`` attempt
(naming the row) and the run goes on. A row schema that every tier refuses is the row's
compile-coverage failure (``unsupported``). Remote policies without an endpoint are recorded
as skipped (``unavailable``). Only the public API (``Extractor``, ``Result``) extracts; the
embedded llama.cpp server (``--serve``) is started as test infrastructure.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from extract.errors import ConfigError, ExtractError, UnsupportedSchema
from extract.pipeline import Extractor
from extract.report.aggregate import group_items, judged_values, rows_for_result
from extract.report.render import CORPUS_SCHEMA, PROVENANCE, load_rows, models_of, render
from extract.report.scoring import gold_for_schema, instance_valid
from extract.spec import compile_spec
from extract.types import Attempt, AttemptError
from extract.validate.calibration import Calibration

__all__ = ["CORPUS_PROMPT", "POLICIES", "BenchItem", "BenchRun", "check_draw", "code_provenance", "current_prompts",
           "done_keys", "fit_calibration", "item_rows", "log_command", "merge_parts", "read_suite", "record_part",
           "render_current", "run_bench"]

# A policy is one tier alone or the default chain (None: Settings.default_tiers()).
POLICIES: dict[str, list[str] | None] = {
    "native": ["native"],
    "instructor": ["instructor"],
    "local": ["local"],
    "repair": ["repair"],
    "chain": None,
}
REMOTE_POLICIES = frozenset({"native", "instructor", "repair", "chain"})
# The task for a schema-corpus row (JSONSchemaBench-style): any valid instance will do.
CORPUS_PROMPT = "Produce an example instance: a JSON value that is valid against the schema."


@dataclass
class BenchRun:
    """One data file against one spec (or the rows' own schemas) under some policies."""

    data: Path
    schema: str | None
    spec: Any
    policies: list[str]
    where: dict[str, str] = field(default_factory=dict)
    max_tokens: int | None = None

    @property
    def label(self) -> str:
        """A name that does not depend on the current directory: ``usaddress/dev.jsonl[k=v]``."""
        name = f"{self.data.parent.name}/{self.data.name}"
        if self.where:
            name += "[" + ",".join(f"{k}={v}" for k, v in sorted(self.where.items())) + "]"
        return name

    @property
    def schema_label(self) -> str:
        return self.schema if self.schema is not None else CORPUS_SCHEMA


def check_policies(policies: Sequence[str]) -> list[str]:
    """The policies, or a ConfigError naming the unknown one."""
    if not policies:
        raise ConfigError(f"give at least one --policy ({', '.join(POLICIES)})")
    for p in policies:
        if p not in POLICIES:
            raise ConfigError(f"--policy {p!r} is unknown; known policies: {', '.join(POLICIES)}")
    return list(dict.fromkeys(policies))


def read_suite(path: Path) -> list[dict[str, Any]]:
    """The ``[[run]]`` tables of a suite file, with ``data`` resolved against its ``base``."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        raise ConfigError("suite files need Python 3.11+ (tomllib)") from None
    if not path.is_file():
        raise ConfigError(f"--suite {path}: no such file")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--suite {path}: not TOML: {exc}") from None
    base = (path.parent / str(doc.get("base", "."))).resolve()
    runs = doc.get("run")
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"--suite {path}: no [[run]] tables")
    out = []
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or "data" not in run:
            raise ConfigError(f"--suite {path}: run {i + 1} has no 'data'")
        out.append({**run, "data": base / str(run["data"])})
    return out


@dataclass
class BenchItem:
    id: str
    line: int
    row: Any
    problem: str | None = None


def _read_items(run: BenchRun, sample: int | None, seed: int) -> list[BenchItem]:
    """The data rows (filtered by ``where``, then sampled with ``seed``), each with a stable id."""
    if not run.data.is_file():
        raise ConfigError(f"--data {run.data}: no such file")
    items: list[BenchItem] = []
    seen: set[str] = set()
    with run.data.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                items.append(BenchItem(f"line-{n}", n, None, f"line {n} is not JSON: {exc.msg}"))
                continue
            if not isinstance(row, dict):
                items.append(BenchItem(f"line-{n}", n, None, f"line {n} is not a JSON object"))
                continue
            if any(str(row.get(k)) != v for k, v in run.where.items()):
                continue
            ident = str(row.get("id") or row.get("name") or f"{row.get('file', 'line')}#{n}")
            if ident in seen:
                ident = f"{ident}#{n}"
            seen.add(ident)
            items.append(BenchItem(ident, n, row))
    if sample is not None and sample < len(items):
        picked = sorted(random.Random(seed).sample(range(len(items)), sample))
        items = [items[i] for i in picked]
    return items


def _schema_fields(spec: Any) -> set[str] | None:
    try:
        schema = compile_spec(spec).schema
    except ExtractError:
        return None
    props = (schema or {}).get("properties")
    return set(props) if isinstance(props, dict) else None


def _bad(run: BenchRun, policy: str, item: BenchItem, message: str, **details: Any) -> list[dict[str, Any]]:
    attempt = Attempt(
        tier=policy, skipped=True,
        error=AttemptError(type="bad_row", message=message, details=[{"line": item.line, **details}]),
    )
    return [{**attempt.model_dump(mode="json"), "data": run.label, "schema": run.schema_label,
             "policy": policy, "item": item.id, "index": 0, "of": 1, "item_ok": False,
             "item_tier": None, "item_value": None, "item_latency_s": 0.0, "gold": None}]


def _skipped(run: BenchRun, policy: str, item: BenchItem, attempts: list[Attempt],
             gold: Any = None) -> list[dict[str, Any]]:
    from extract.types import Result

    return rows_for_result(Result(attempts=attempts), data=run.label, schema=run.schema_label,
                           policy=policy, item=item.id, latency_s=0.0, gold=gold)


def item_rows(run: BenchRun, policy: str, extractor: Extractor | None, unavailable: list[Attempt],
              item: BenchItem) -> list[dict[str, Any]]:
    """The attempt rows of one item under one policy; never raises for a bad row.

    A schema-corpus item's last row also says whether its value validates against the full
    schema (``item_schema_valid``: empirical coverage, decided apart from the chain's own
    check) and whether the row shows an instance the schema admits (``item_witness``)."""
    rows = _item_rows(run, policy, extractor, unavailable, item)
    row = item.row
    last = rows[-1]
    if isinstance(row, dict) and "text" not in row and "schema" in row and not _is_bad_input(last):
        last["item_schema_valid"] = bool(last.get("item_ok")) and instance_valid(last.get("item_value"), row["schema"])
        last["item_witness"] = _witnessed(row)
    return rows


def _is_bad_input(row: Mapping[str, Any]) -> bool:
    """A ``bad_row`` that is the input's fault; one naming an exception is a crash of ours."""
    error = row.get("error") or {}
    return error.get("type") == "bad_row" and not any("exception" in d for d in error.get("details") or [])


def _item_rows(run: BenchRun, policy: str, extractor: Extractor | None, unavailable: list[Attempt],
               item: BenchItem) -> list[dict[str, Any]]:
    where = f"row {item.line} (id {item.id!r})"
    if item.problem is not None or not isinstance(item.row, dict):
        return _bad(run, policy, item, item.problem or f"{where} is not a JSON object")
    row: dict[str, Any] = item.row
    gold: Any = row.get("gold", row.get("slots"))
    if "text" not in row:
        if "schema" not in row:
            return _bad(run, policy, item, f"{where} has no 'text' (nor a 'schema' for the schema task)")
        spec: Any = row["schema"]
        text: Any = CORPUS_PROMPT
        gold = None
        try:
            compile_spec(spec)
        except UnsupportedSchema as exc:
            return _skipped(run, policy, item, [Attempt(
                tier=exc.tier, skipped=True,
                error=AttemptError(type="unsupported", message=str(exc),
                                   details=[{"feature": exc.feature, "path": exc.path}]))])
        except ConfigError as exc:
            return _bad(run, policy, item, f"{where}: its schema does not load: {exc}")
    else:
        spec, text = run.spec, row["text"]
        if spec is None:
            return _bad(run, policy, item, f"{where} has 'text' but no --schema was given")
        if not isinstance(text, str) or not text.strip():
            return _bad(run, policy, item, f"{where}: 'text' is empty or not a string")
        if gold is not None:
            if not isinstance(gold, dict):
                return _bad(run, policy, item, f"{where}: 'gold' is not an object")
            fields = _schema_fields(spec)
            if fields is not None and gold:
                # Score what the schema asks for: gold labels it has no field for (usaddress's
                # Recipient, say) are left out of field accuracy; 'container-title' is the
                # schema's 'container_title'. A gold with no field in common is the wrong schema.
                kept = gold_for_schema(gold, fields)
                if not kept:
                    return _bad(run, policy, item,
                                f"{where}: no gold field ({', '.join(sorted(gold))}) is in the schema "
                                f"{run.schema_label}", fields=sorted(gold))
                gold = kept
    if extractor is None:
        return _skipped(run, policy, item, list(unavailable), gold)
    started = time.perf_counter()
    try:
        result = extractor.run(text, spec)
    except UnsupportedSchema as exc:
        return _skipped(run, policy, item, [Attempt(
            tier=exc.tier, skipped=True,
            error=AttemptError(type="unsupported", message=str(exc),
                               details=[{"feature": exc.feature, "path": exc.path}]))], gold)
    except ConfigError as exc:
        return _bad(run, policy, item, f"{where}: {exc}")
    except Exception as exc:  # a crash on one row is recorded, never the end of the run
        return _bad(run, policy, item, f"{where}: {type(exc).__name__}: {exc}", exception=type(exc).__name__)
    return rows_for_result(result, data=run.label, schema=run.schema_label, policy=policy, item=item.id,
                           latency_s=time.perf_counter() - started, gold=gold)


def _witnessed(row: Mapping[str, Any]) -> bool | None:
    """Whether the corpus row itself shows an instance its schema admits (the test suite's
    ``tests`` marked valid, SchemaStore's ``instances``); None when it shows none either way."""
    tests = row.get("tests")
    if isinstance(tests, list):
        return any(isinstance(t, dict) and t.get("valid") is True for t in tests)
    instances = row.get("instances")
    if isinstance(instances, list):
        return bool(instances)
    return None


def _extractor(policy: str, options: Mapping[str, Any]) -> tuple[Extractor | None, list[Attempt]]:
    """The policy's Extractor, or None and the skipped attempts saying why it cannot run."""
    tiers = POLICIES[policy]
    try:
        extractor = Extractor(tiers=tiers, **options)
    except ConfigError as exc:
        return None, [Attempt(tier=policy, skipped=True, error=AttemptError(type="unavailable", message=str(exc)))]
    reasons = [(t.name, t.unavailable()) for t in extractor.tiers]
    if all(reason is not None for _, reason in reasons):
        return None, [Attempt(tier=name, skipped=True, error=AttemptError(type="unavailable", message=str(reason)))
                      for name, reason in reasons]
    return extractor, []


def _warm_up(extractor: Extractor) -> None:
    """One throw-away extraction, so model loading and the server's first request stay out of
    the first item's latency (measured: 40 s p95 on 3 items from the load alone)."""
    try:
        extractor.run("12 Main St, Springfield", {"type": "object", "properties": {"n": {"type": "string"}}})
    except Exception:  # a warm-up failure shows again, recorded, on the first real item
        return


def done_keys(path: Path) -> set[tuple[str, str, str, str]]:
    """Finished (data, schema, policy, item) keys; rewrites the file without a cut tail."""
    if not path.exists():
        return set()
    rows = load_rows(path)
    runs = group_items(rows)
    done = {(*key, o.item) for key, items in runs.items() for o in items}
    kept = [r for items in runs.values() for o in items for r in o.rows]
    with path.open("rb") as fh:
        lines = sum(1 for _ in fh)
    if len(kept) != lines:
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
        os.replace(tmp, path)
    return done


def log_command(out: Path, script: str, argv: Sequence[str]) -> None:
    """Append ``python SCRIPT ARGV`` to ``OUT/command.txt`` unless it is there already. Why: a
    results folder filled by several invocations (levers added one run at a time) is
    reproduced only by all of them, in order; the benchmarks that resume into one folder keep
    that list beside their rows."""
    command = " ".join(["python", script, *argv])
    log = out / "command.txt"
    seen = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    if command not in seen:
        log.write_text("".join(line + "\n" for line in [*seen, command]), encoding="utf-8")


def current_prompts() -> dict[str, str]:
    """The prompt versions this code writes on its attempts (``Attempt.prompt_version``)."""
    from extract.spec.prompt import GENERATE_PROMPT_VERSION, PROMPT_VERSION, REPAIR_PROMPT_VERSION

    return {"extract": PROMPT_VERSION, "repair": REPAIR_PROMPT_VERSION, "generate": GENERATE_PROMPT_VERSION}


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def code_provenance() -> dict[str, Any]:
    """The code a result comes from: git commit (and whether tracked files differ from it),
    prompt versions, the corpus task's text, and the versions of the packages that decide
    an output. Model digests are read from the attempts themselves."""
    from importlib.metadata import PackageNotFoundError, version

    packages: dict[str, str] = {}
    for dist in ("extract", "llama-cpp-python", "llguidance", "jsonschema", "pydantic", "openai"):
        try:
            packages[dist] = version(dist)
        except PackageNotFoundError:
            continue
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status),
            "prompts": current_prompts(), "corpus_prompt": CORPUS_PROMPT,
            "python": platform.python_version(), "packages": packages}


def _scrub(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as recorded: an absolute path keeps only its last part (no machine's layout in a
    committed file), secrets are already masked by pydantic."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, str) and os.path.isabs(value):
            value = f".../{Path(value).name}"
        out[key] = value
    return out


def _read_provenance(out: Path) -> dict[str, Any] | None:
    path = out / PROVENANCE
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc}); it says which draw the folder holds") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} is not a JSON object")
    return doc


def _write_provenance(out: Path, doc: Mapping[str, Any]) -> None:
    tmp = out / (PROVENANCE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / PROVENANCE)


def _draw(sample: int | None, seed: int) -> str:
    return f"--sample {sample if sample is not None else 'all'} --seed {seed}"


def check_draw(out: Path, sample: int | None, seed: int) -> dict[str, Any] | None:
    """The folder's provenance, or a ConfigError when adding ``sample``/``seed`` rows to it would
    mix two item sets (another draw, or rows from before draws were recorded)."""
    doc = _read_provenance(out)
    if doc is None:
        if (out / "attempts.jsonl").exists() and (out / "attempts.jsonl").stat().st_size:
            raise ConfigError(
                f"{out} holds rows from a run that recorded no --sample/--seed (made before provenance "
                f"was recorded), so rows drawn with {_draw(sample, seed)} could mix two item sets. "
                "Write this run to a new --out folder.")
        return None
    if (doc.get("sample"), doc.get("seed")) != (sample, seed):
        raise ConfigError(
            f"{out} holds a run drawn with {_draw(doc.get('sample'), int(doc.get('seed') or 0))}; this one asks "
            f"{_draw(sample, seed)}. Its items would differ and one report would mix the two. Use a new --out "
            "folder, or the folder's own --sample/--seed to add to its run.")
    return doc


def record_part(out: Path, part: Mapping[str, Any], *, sample: int | None, seed: int) -> int:
    """Append one part to the folder's provenance (checked with ``check_draw`` first); its index."""
    doc = check_draw(out, sample, seed) or {"sample": sample, "seed": seed, "parts": []}
    doc.setdefault("parts", []).append(dict(part))
    _write_provenance(out, doc)
    return len(doc["parts"]) - 1


def _finish_part(out: Path, index: int, **fields: Any) -> None:
    doc = _read_provenance(out)
    if doc is None or index >= len(doc.get("parts", [])):
        return
    doc["parts"][index].update(fields)
    _write_provenance(out, doc)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def merge_parts(out: Path, parts: Sequence[Path]) -> int:
    """Join result folders run apart into ``out``: the same draw only, items ``out`` already
    has are kept, the parts' provenance appended. Returns the number of items added."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "attempts.jsonl"
    done = done_keys(path)
    added = 0
    for part in parts:
        doc = _read_provenance(part)
        if doc is None:
            raise ConfigError(f"--merge {part}: no {PROVENANCE}, so its draw (--sample/--seed) is unknown; "
                              "it cannot be joined without risking a mix of item sets")
        sample, seed = doc.get("sample"), int(doc.get("seed") or 0)
        records = [{**p, "merged_from": part.name} for p in doc.get("parts", [])]
        mine = check_draw(out, sample, seed) or {"sample": sample, "seed": seed, "parts": []}
        rows: list[dict[str, Any]] = []
        for key, items in group_items(load_rows(part / "attempts.jsonl")).items():
            for o in items:
                if (*key, o.item) not in done:
                    rows += o.rows
                    done.add((*key, o.item))
                    added += 1
        with path.open("a", encoding="utf-8") as sink:
            sink.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        known = {p.get("id") for p in mine.get("parts", [])}
        mine.setdefault("parts", []).extend(r for r in records if r.get("id") is None or r["id"] not in known)
        _write_provenance(out, mine)
        # The part's commands join the folder's: command.txt still lists every run its rows came from.
        log, their_log = out / "command.txt", part / "command.txt"
        seen = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        theirs = their_log.read_text(encoding="utf-8").splitlines() if their_log.exists() else []
        lines = [*seen, *(c for c in theirs if c not in seen)]
        log.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return added


def fit_calibration(out: Path, runs: Sequence[BenchRun], path: Path) -> Calibration:
    """A calibration fitted on the local tier's values in ``out``'s rows with gold, written to
    ``path`` (``extract bench --fit-calibration``): the issue's "fitted by extract bench".

    A calibration belongs to one schema, model and prompt version, so this needs one run with
    a schema, and refuses values from several models or prompts. Right and wrong are judged
    as the report judges them (``judged_values``).
    """
    if len(runs) != 1 or runs[0].spec is None or runs[0].schema is None:
        raise ConfigError("--fit-calibration needs one run with --schema: a calibration belongs to one schema")
    run = runs[0]
    spec = compile_spec(run.spec)
    rows = [r for r in load_rows(out / "attempts.jsonl")
            if r.get("schema") == run.schema and Path(str(r.get("data"))).name == run.data.name]
    scores: list[float] = []
    labels: list[bool] = []
    contested: list[bool] = []
    paths: list[str] = []
    owners: set[tuple[str, str]] = set()
    for outcomes in group_items(rows).values():
        for winner, f, right in judged_values(outcomes):
            if winner.get("tier") != "local" or f.get("raw_confidence") is None:
                continue
            model = winner.get("model") or {}
            owners.add((str(model.get("digest") or model.get("name")), str(winner.get("prompt_version"))))
            scores.append(float(f["raw_confidence"]))
            labels.append(right)
            contested.append(bool(f.get("contested")))
            paths.append(str(f.get("path", "")))
    if not scores:
        raise ConfigError(f"no local-tier values with gold and a confidence in {out}: nothing to fit a calibration on")
    if len(owners) != 1:
        raise ConfigError(f"the values in {out} come from several models or prompt versions {sorted(owners)}: "
                          "a calibration belongs to one; use a fresh --out")
    model_digest, prompt_version = owners.pop()
    cal = Calibration.fit(scores, labels, contested=contested, paths=paths, spec_digest=spec.digest,
                          model_digest=model_digest, prompt_version=prompt_version,
                          fitted_on={"data": run.data.name, "schema": run.schema, "values": len(scores),
                                     "right": sum(labels)})
    cal.save(path)
    return cal


def render_current(out: Path, *, command: str | None = None) -> dict[str, Any]:
    """``render`` told which prompt versions today's code has, so a stale run says so."""
    return render(out, command=command, current_prompts=current_prompts())


def _progress(total: int) -> Any:
    """A rich progress bar with rate and ETA on a terminal; nothing at all otherwise."""
    from extract.front.batch import progress_bar

    return progress_bar()


def _plan(runs: Sequence[BenchRun], sample: int | None, seed: int) -> Iterator[tuple[BenchRun, list[BenchItem]]]:
    for run in runs:
        yield run, _read_items(run, sample, seed)


def run_bench(
    runs: Sequence[BenchRun],
    out: Path,
    *,
    sample: int | None = None,
    seed: int = 0,
    base_url: str | None = None,
    serve: bool = False,
    settings: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run every (run, policy, item) not already in ``out/attempts.jsonl``; then render the report."""
    for run in runs:
        check_policies(run.policies)
    if sample is not None and sample < 1:
        raise ConfigError(f"--sample must be at least 1, got {sample}")
    check_draw(out, sample, seed)  # before any model runs: never mix two draws in one folder
    out.mkdir(parents=True, exist_ok=True)
    if command:
        # Every command that added rows, in order: together they reproduce attempts.jsonl.
        log = out / "command.txt"
        seen = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        if command not in seen:
            log.write_text("".join(line + "\n" for line in [*seen, command]), encoding="utf-8")
    part = record_part(out, {"id": uuid.uuid4().hex[:12], "started": _now(), "finished": None, "command": command,
                             **code_provenance(),
                             "runs": [r.label for r in runs], "policies": sorted({p for r in runs for p in r.policies}),
                             "settings": {}}, sample=sample, seed=seed)
    written: list[dict[str, Any]] = []
    settings_by_policy: dict[str, Any] = {}
    path = out / "attempts.jsonl"
    done = done_keys(path)
    planned = list(_plan(runs, sample, seed))
    todo = sum(
        1 for run, items in planned for p in run.policies for it in items
        if (run.label, run.schema_label, p, it.id) not in done
    )
    with ExitStack() as stack:
        if serve and base_url is None and any(p in REMOTE_POLICIES for r in runs for p in r.policies) and todo:
            from extract.providers.server import start_server

            # One thread: on 2 shared cores llama.cpp's threads spin-wait for each other (measured).
            server = start_server(n_threads=1, n_ctx=4096)
            stack.callback(server.stop)
            base_url = server.base_url
            # The remote tiers' attempts name the server's alias only: the weights it served.
            from extract.providers.decoding import file_digest

            _finish_part(out, part, server_model=f"{server.model_path.name} {file_digest(server.model_path)}")
        progress = stack.enter_context(_progress(todo))
        task = progress.add_task("bench", total=todo)
        sink = stack.enter_context(path.open("a", encoding="utf-8"))
        warmed: set[str] = set()
        for run, items in planned:
            for policy in run.policies:
                pending = [it for it in items if (run.label, run.schema_label, policy, it.id) not in done]
                if not pending:
                    continue
                # A benchmark measures calls: never serve them from the result cache.
                options: dict[str, Any] = {"cache": False, **(settings or {}), "base_url": base_url}
                if run.max_tokens is not None:
                    options["max_tokens"] = run.max_tokens
                if run.spec is None and "EXTRACT_GENERATE" not in os.environ:
                    # A schema corpus: each row asks for an instance of its schema, there is no
                    # document (EXTRACT_GENERATE=false measures it as an extraction).
                    options.setdefault("generate", True)
                extractor, unavailable = _extractor(policy, options)
                if extractor is not None and policy not in settings_by_policy:
                    settings_by_policy[policy] = {
                        "tiers": extractor.tier_names,
                        **_scrub(extractor.settings.model_dump(mode="json", exclude_defaults=True))}
                if extractor is not None and policy not in warmed:
                    _warm_up(extractor)
                    warmed.add(policy)
                progress.update(task, description=f"{run.label} · {policy}")
                for item in pending:
                    rows = item_rows(run, policy, extractor, unavailable, item)
                    sink.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                    sink.flush()
                    os.fsync(sink.fileno())
                    done.add((run.label, run.schema_label, policy, item.id))
                    written += rows
                    progress.advance(task)
    _finish_part(out, part, finished=_now(), items=sum(1 for r in written if r.get("index") == r.get("of", 1) - 1),
                 models=models_of(written), settings=settings_by_policy)
    summary = render_current(out, command=command)
    if not sys.stderr.isatty():
        return summary
    print(f"report: {out / 'report.html'}", file=sys.stderr)
    return summary
