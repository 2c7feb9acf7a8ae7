"""The schema benchmark runner: data rows × a spec × chain policies -> ``attempts.jsonl`` + report.

Each item's attempts are appended to ``OUT/attempts.jsonl`` in one write as soon as the item
is done, so a run killed at any moment loses at most the item in flight: on the next start
the file is read back, a cut last line or an item with missing rows is dropped, and every
item already finished for the same (data, schema, policy) is skipped, never redone.

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
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extract.errors import ConfigError, ExtractError, UnsupportedSchema
from extract.pipeline import Extractor
from extract.report.aggregate import group_items, rows_for_result
from extract.report.render import CORPUS_SCHEMA, load_rows, render
from extract.spec import compile_spec
from extract.types import Attempt, AttemptError

__all__ = ["CORPUS_PROMPT", "POLICIES", "BenchItem", "BenchRun", "done_keys", "item_rows", "read_suite", "run_bench"]

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
    """The attempt rows of one item under one policy; never raises for a bad row."""
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
                by_name = {f.replace("-", "_"): f for f in fields}
                kept = {by_name[k.replace("-", "_")]: v for k, v in gold.items() if k.replace("-", "_") in by_name}
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
    out.mkdir(parents=True, exist_ok=True)
    if command:
        (out / "command.txt").write_text(command + "\n", encoding="utf-8")
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
                extractor, unavailable = _extractor(policy, options)
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
                    progress.advance(task)
    summary = render(out, command=command)
    if not sys.stderr.isatty():
        return summary
    print(f"report: {out / 'report.html'}", file=sys.stderr)
    return summary
