"""Batches that lose nothing: many texts, one Extractor, one Result per input.

``aextract_many`` is the async core: a fixed pool of ``concurrency`` workers pulls inputs,
an optional ``rate_limit`` spaces the starts of extractions, and every input comes back as a
Result, in input order. An input that raises (an empty text is a ``ConfigError``) becomes a
failed Result whose one attempt (tier ``input``) records why, so one bad row never costs the
rest. A spec that does not compile is the caller's mistake for the whole batch and raises
before any call. One Extractor serves the whole batch, so its budget and its cache are
batch-wide.

``run_jsonl`` is what ``extract run --input --output`` does: rows ``{"id", "text"}`` (a plain
text line is its own text, its line number its id), each finished row appended, flushed and
fsynced at once, and a rerun that skips every id already in the output (a torn last line from a
``kill -9`` is cut off first). One process writes an output at a time: ``hold_output`` takes an
``flock`` on ``<output>.lock`` before the torn-line cut, and a second writer gets ``OutputLocked``
naming the holder. The kernel drops the lock with its holder, so a killed run never blocks its
resume. ``engine="ray"`` runs the same work as Ray tasks, each a local batch over its share of
the inputs (Ray is imported only then).

This module imports the pipeline, never a tier or a provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from extract.errors import ConfigError, ProviderError, UnsupportedSchema
from extract.examples import ExamplePool, group_examples
from extract.pipeline import Extractor, run_sync
from extract.runtime.cache import result_from_json, result_to_json
from extract.spec import Spec, compile_spec
from extract.spec.prompt import Example
from extract.types import Attempt, AttemptError, Result

__all__ = [
    "BatchStats",
    "OutputLocked",
    "aextract_many",
    "extract_many",
    "failed_result",
    "hold_output",
    "progress_bar",
    "run_jsonl",
]

Engine = Literal["local", "ray"]


def failed_result(exc: BaseException) -> Result:
    """The Result of an input that raised: one attempt saying what the input's problem was."""
    if isinstance(exc, UnsupportedSchema):
        error = AttemptError(type="unsupported", message=str(exc),
                             details=[{"feature": exc.feature, "path": exc.path, "tier": exc.tier}])
    elif isinstance(exc, ConfigError):
        error = AttemptError(type="bad_input", message=str(exc))
    elif isinstance(exc, ProviderError):
        error = AttemptError(type="provider_error", message=str(exc),
                             details=[{"endpoint": exc.endpoint, "transient": exc.transient, "status": exc.status}])
    else:  # a bug or a crashed worker: still recorded, still one Result for this input
        error = AttemptError(type="crash", message=f"{type(exc).__name__}: {exc}",
                             details=[{"exception": type(exc).__name__}])
    return Result(attempts=[Attempt(tier="input", skipped=True, error=error)])


class RateLimit:
    """At most ``per_s`` extraction starts per second, evenly spaced (no bursts)."""

    def __init__(self, per_s: float) -> None:
        self.interval = 1.0 / per_s
        self.next = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


def _check_pool(concurrency: int, rate_limit: float | None) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be an integer of at least 1, got {concurrency!r}")
    if rate_limit is not None and not rate_limit > 0:
        raise ConfigError(f"rate_limit must be a positive number of extractions per second, got {rate_limit!r}")


async def _one(extractor: Extractor, spec: Spec, text: Any, all_items: bool = False,
               shared: tuple[Example, ...] = ()) -> Result:
    if isinstance(text, Exception):  # a row already known to be bad (read_inputs)
        return failed_result(text)
    token = group_examples.set(shared)
    try:
        if all_items:  # every item of the document: one Result holding the list
            return await extractor.arun_all(text, spec)
        return await extractor.arun(text, spec)
    except Exception as exc:  # one input's failure is recorded, never the batch's end
        return failed_result(exc)
    finally:
        group_examples.reset(token)


# Inputs read ahead to form groups from (``examples_group``): similar inputs are looked for
# among this many groups' worth, so a file of millions of rows is still read lazily.
GROUP_WINDOW_GROUPS = 8


def _grouped(pool: ExamplePool, spec: Spec, source: Iterator[tuple[Any, Any]]
             ) -> Iterator[tuple[Any, Any, tuple[Example, ...]]]:
    """``(key, text, shared examples)`` for every item, in the order to run them: each window
    of inputs put in groups of similar texts (``ExamplePool.groups``), a group's members one
    after another so that the local tier evaluates their shared prefix once."""
    while True:
        window = list(itertools.islice(source, pool.group * GROUP_WINDOW_GROUPS))
        if not window:
            return
        texts = [t if isinstance(t, str) else t.decode("utf-8", "replace") if isinstance(t, bytes) else ""
                 for _, t in window]
        for members in pool.groups(texts):
            shared = pool.choose_shared([texts[m] for m in members], spec)
            for m in members:
                yield (*window[m], shared)


async def astream(
    extractor: Extractor,
    spec: Spec,
    items: Iterable[tuple[Any, Any]],
    *,
    concurrency: int = 4,
    rate_limit: float | None = None,
    all_items: bool = False,
) -> AsyncIterator[tuple[Any, Result]]:
    """``(key, Result)`` for every ``(key, text)`` item, as each finishes (not in order).

    Items are pulled lazily, ``concurrency`` at a time, so a file of millions of rows is never
    held in memory. ``all_items``: each text's Result holds the list of every item
    (``Extractor.arun_all``).
    """
    _check_pool(concurrency, rate_limit)
    pool = extractor.examples
    source: Iterator[tuple[Any, Any, tuple[Example, ...]]]
    if pool is not None and pool.group > 1 and not all_items:
        source = _grouped(pool, spec, iter(items))
    else:
        source = ((key, text, ()) for key, text in items)
    limit = RateLimit(rate_limit) if rate_limit is not None else None
    done: asyncio.Queue[tuple[Any, Result] | None] = asyncio.Queue()

    async def worker() -> None:
        try:
            for key, text, shared in source:  # one shared iterator: each item goes to exactly one worker
                if limit is not None:
                    await limit.wait()
                await done.put((key, await _one(extractor, spec, text, all_items, shared)))
        finally:
            await done.put(None)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        running = len(workers)
        while running:
            got = await done.get()
            if got is None:
                running -= 1
                continue
            yield got
        for w in workers:
            await w  # surface an error of the item iterator itself
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


def _extractor_for(extractor: Extractor | None, options: dict[str, Any]) -> Extractor:
    if extractor is None:
        return Extractor(**options)
    if options:
        raise ConfigError(f"give either extractor= or Extractor options ({', '.join(sorted(options))}), not both")
    return extractor


async def aextract_many(
    texts: Iterable[str | bytes],
    spec: Any,
    *,
    concurrency: int = 4,
    rate_limit: float | None = None,
    engine: Engine = "local",
    extractor: Extractor | None = None,
    **options: Any,
) -> list[Result]:
    """One Result per text, in input order; never raises for a bad text or bad model output.

    ``options`` are ``Extractor`` arguments (``tiers=``, settings fields); or pass a ready
    ``extractor``. ``rate_limit`` is extraction starts per second; ``engine="ray"`` spreads the
    texts over Ray tasks (the ``ray`` extra).
    """
    compiled = compile_spec(spec)  # a bad spec is the caller's, for the whole batch: raise now
    _check_pool(concurrency, rate_limit)
    if engine not in ("local", "ray"):
        raise ConfigError(f"engine must be 'local' or 'ray', got {engine!r}")
    chain = _extractor_for(extractor, options)
    items = list(enumerate(texts))
    if engine == "ray":
        return await asyncio.to_thread(_ray_many, chain, spec, compiled, items, concurrency, rate_limit)
    results: list[Result | None] = [None] * len(items)
    async for index, result in astream(chain, compiled, items, concurrency=concurrency, rate_limit=rate_limit):
        results[index] = result
    return [r if r is not None else failed_result(RuntimeError("no result")) for r in results]


def extract_many(
    texts: Iterable[str | bytes],
    spec: Any,
    *,
    concurrency: int = 4,
    rate_limit: float | None = None,
    engine: Engine = "local",
    extractor: Extractor | None = None,
    **options: Any,
) -> list[Result]:
    """Sync ``aextract_many`` (works inside a running loop too, e.g. in a notebook)."""
    return run_sync(aextract_many(texts, spec, concurrency=concurrency, rate_limit=rate_limit,
                                   engine=engine, extractor=extractor, **options))


# -- Ray ------------------------------------------------------------------------------------


def _rebuild_options(extractor: Extractor) -> dict[str, Any]:
    """Keyword arguments that build an equal Extractor in another process."""
    options: dict[str, Any] = extractor.settings.model_dump()
    options["tiers"] = list(extractor.tier_names)
    pool = getattr(extractor, "examples", None)
    if pool is not None:
        options.update(examples=pool.raw, examples_k=pool.k, examples_select=pool.select, examples_group=pool.group)
    return options


def _ray_chunk(options: dict[str, Any], spec: Any, items: list[tuple[int, Any]], concurrency: int,
               rate_limit: float | None) -> list[tuple[int, dict[str, Any]]]:
    """One Ray task: a local batch over its share of the inputs, Results as JSON.

    JSON, not pickled Results: a spec class defined in the caller's ``__main__`` need not be
    importable in the worker for the answer to travel back.
    """
    chain = Extractor(**options)
    compiled = compile_spec(spec)

    async def go() -> list[tuple[int, dict[str, Any]]]:
        out = []
        async for index, result in astream(chain, compiled, items, concurrency=concurrency, rate_limit=rate_limit):
            out.append((index, result_to_json(result)))
        return out

    return asyncio.run(go())


def _ray_many(extractor: Extractor, spec: Any, compiled: Spec, items: list[tuple[int, Any]],
              concurrency: int, rate_limit: float | None) -> list[Result]:
    """The batch as Ray tasks, one per share of the inputs; each input still gets one Result."""
    try:
        import ray
    except ImportError:
        raise ConfigError("engine='ray' needs Ray: install the extra, pip install 'extract[ray]'") from None
    if not items:
        return []
    if not ray.is_initialized():
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))  # type: ignore[no-untyped-call]
    shares = min(len(items), cpus)
    per_task_rate = rate_limit / shares if rate_limit is not None else None
    task = ray.remote(num_cpus=1, max_retries=0)(_ray_chunk)
    options = _rebuild_options(extractor)
    # The budget is the batch's: each task may spend its share, so together they stay within it.
    if options.get("budget_tokens"):
        options["budget_tokens"] = max(1, int(options["budget_tokens"]) // shares)
    if options.get("budget_usd"):
        options["budget_usd"] = float(options["budget_usd"]) / shares
    chunks = [items[i::shares] for i in range(shares)]
    refs = [task.remote(options, spec, chunk, concurrency, per_task_rate) for chunk in chunks]
    results: list[Result | None] = [None] * len(items)
    for chunk, ref in zip(chunks, refs, strict=True):
        try:
            for index, data in ray.get(ref):
                results[index] = result_from_json(data, compiled)
        except Exception as exc:  # a dead worker fails its inputs, recorded
            for index, _ in chunk:
                if results[index] is None:
                    results[index] = failed_result(exc)
    return [r if r is not None else failed_result(RuntimeError("no result")) for r in results]


# -- JSONL in, JSONL out, resumable -------------------------------------------------------------


@dataclass
class BatchStats:
    """What a ``run_jsonl`` call did: the progress bar's figures and the CLI's summary."""

    total: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    cache_hits: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    ids: list[Any] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "already_done": self.skipped, "done": self.done, "failed": self.failed,
                "cache_hits": self.cache_hits, "tokens": self.tokens, "cost_usd": round(self.cost_usd, 6),
                "seconds": round(self.seconds, 3)}


def read_inputs(path: Path) -> Iterator[tuple[Any, Any]]:
    """``(id, text)`` per non-blank line: a JSON object's ``id``/``text``, else the line itself.

    A JSON object without ``text`` yields the problem as its text's stand-in: an exception
    instance, which the batch records as that row's failure instead of stopping.
    """
    if not path.is_file():
        raise ConfigError(f"input file {path} does not exist")
    seen: set[str] = set()
    with path.open(encoding="utf-8", errors="strict") as fh:
        n = 0
        while True:
            try:
                line = fh.readline()
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{path} is not UTF-8 text (after line {n}): {exc.reason}") from None
            if not line:
                return
            n += 1
            if not line.strip():
                continue
            ident: Any = n
            text: Any = line.rstrip("\r\n")
            if line.lstrip().startswith("{"):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None  # a plain text line that happens to start with a brace
                if isinstance(row, dict):
                    ident = row.get("id", n)
                    text = row["text"] if "text" in row else ConfigError(f"line {n} has no 'text'")
            key = json.dumps(ident)
            if key in seen:
                raise ConfigError(f"{path} line {n}: the id {ident!r} appears twice; ids must be unique to resume")
            seen.add(key)
            yield ident, text


class OutputLocked(ConfigError):
    """Another live writer holds the output file: another process, or another call in this one.

    ``path`` is the output, ``pid`` the holder's process id, ``command`` its command line and
    ``started`` when it took the file (ISO 8601); each is None when the holder had not written
    it yet.
    """

    def __init__(self, path: Path, pid: int | None, command: str | None, started: str | None) -> None:
        self.path = path
        self.pid = pid
        self.command = command
        self.started = started
        if pid is None:
            who = "another process"
        elif pid == os.getpid():
            who = f"another run in this process (pid {pid})"
        else:
            who = f"another process: pid {pid}"
        details = ", ".join(part for part in (
            f"command {command}" if command else "", f"writing since {started}" if started else "") if part)
        super().__init__(
            f"{path} is being written by {who}{f' ({details})' if details else ''}; wait for it to finish or "
            "stop it, then rerun to resume (a killed writer releases the file by itself)")


def _lock_path(output: Path) -> Path:
    """``<output>.lock`` beside the real file, so a symlink and its target share one lock."""
    real = output.resolve()
    return real.with_name(real.name + ".lock")


def _holder(fd: int) -> dict[str, Any]:
    """What the holder wrote into the lock file; it writes just after locking, so wait a moment."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            record = json.loads(os.pread(fd, 65536, 0))
            if isinstance(record, dict):
                return record
        except ValueError:
            pass
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.02)


@contextlib.contextmanager
def hold_output(path: Path) -> Iterator[None]:
    """Be the one writer of ``path`` for the block, or raise ``OutputLocked`` naming the holder.

    An ``flock`` on ``<path>.lock``, which records the holder's pid, command line and start
    time. The kernel releases it when the holder exits however it exits, so a stale file left by
    ``kill -9`` blocks nobody. On Windows (no ``fcntl``) the block runs unguarded.
    """
    if sys.platform == "win32":
        yield
        return
    import fcntl

    lock_path = _lock_path(path)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            pid = holder.get("pid")
            raise OutputLocked(path, pid if isinstance(pid, int) else None, holder.get("command"),
                               holder.get("started")) from None
        # The last holder unlinks the file on release; if that happened between our open and our
        # lock, ours is a lock on a file nobody else will open: take the one now at the path.
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        record = {"pid": os.getpid(), "command": shlex.join(sys.orig_argv)[:500],
                  "started": datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # while still holding it: see the check above
        os.close(fd)


def done_ids(path: Path) -> set[str]:
    """Ids already in an output file, after cutting a torn last line (a killed writer's)."""
    if not path.exists():
        return set()
    with path.open("rb+") as fh:
        data = fh.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            fh.truncate(end)
    from extract.report.render import load_rows

    return {json.dumps(row["id"]) for row in load_rows(path) if "id" in row}


async def _run_rows(extractor: Extractor, spec: Spec, items: Iterable[tuple[Any, Any]], sink: Any,
                    stats: BatchStats, concurrency: int, rate_limit: float | None,
                    tick: Callable[[BatchStats], None], all_items: bool = False) -> None:
    async for ident, result in astream(extractor, spec, items, concurrency=concurrency, rate_limit=rate_limit,
                                       all_items=all_items):
        sink.write(json.dumps({"id": ident, **result.to_json_dict()}, ensure_ascii=False) + "\n")
        sink.flush()
        os.fsync(sink.fileno())
        stats.done += 1
        stats.failed += 0 if result.ok else 1
        stats.cache_hits += 1 if result.cache_hit else 0
        stats.tokens += result.usage.total_tokens
        stats.cost_usd += result.usage.cost_usd or 0.0
        tick(stats)


def run_jsonl(
    input_path: Path,
    output_path: Path,
    spec: Any,
    extractor: Extractor,
    *,
    concurrency: int = 4,
    rate_limit: float | None = None,
    progress: bool = True,
    all_items: bool = False,
) -> BatchStats:
    """Extract every input row not already in ``output_path``, appending each as it finishes.

    ``all_items``: ``spec`` is one item and each row holds the list of every item of its
    document (``Extractor.arun_all``), with each item's span in ``items``.

    Raises ``OutputLocked`` (a ``ConfigError``) when another live writer holds ``output_path``.
    """
    compiled = compile_spec(spec)
    _check_pool(concurrency, rate_limit)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    # Held from before the torn-line cut and the resume scan: both must see a file nobody else writes.
    with hold_output(output_path):
        return _run_held(input_path, output_path, compiled, extractor, concurrency, rate_limit, progress,
                         all_items)


def _run_held(input_path: Path, output_path: Path, compiled: Spec, extractor: Extractor, concurrency: int,
              rate_limit: float | None, progress: bool, all_items: bool = False) -> BatchStats:
    finished = done_ids(output_path)
    stats = BatchStats()
    started = time.perf_counter()

    def todo() -> Iterator[tuple[Any, Any]]:
        for ident, text in read_inputs(input_path):
            stats.total += 1
            if json.dumps(ident) in finished:
                stats.skipped += 1
                continue
            yield ident, text

    # A first pass counts the work and finds duplicate ids before any call is made.
    remaining = sum(1 for ident, _ in read_inputs(input_path) if json.dumps(ident) not in finished)
    items = todo()
    bar = progress_bar(
        "[red]{task.fields[failed]}[/] failed",
        "{task.fields[tokens]} tok", "${task.fields[cost]:.4f}", unit="docs",
    ) if progress else None
    with output_path.open("a", encoding="utf-8") as sink:
        if bar is None:
            run_sync(_run_rows(extractor, compiled, items, sink, stats, concurrency, rate_limit, lambda s: None,
                               all_items))
        else:
            with bar:
                task = bar.add_task("extract", total=remaining, failed=0, tokens=0, cost=0.0)

                def tick(s: BatchStats) -> None:
                    bar.update(task, completed=s.done, failed=s.failed, tokens=s.tokens, cost=s.cost_usd)

                run_sync(_run_rows(extractor, compiled, items, sink, stats, concurrency, rate_limit, tick,
                                   all_items))
    stats.seconds = time.perf_counter() - started
    return stats


def progress_bar(*fields: str, unit: str = "it") -> Any:
    """A rich progress bar on stderr with rate and ETA when stderr is a terminal; silent otherwise.

    ``fields`` are extra ``TextColumn`` templates (``"{task.fields[failed]} failed"``). Shared
    by the benchmark and batch runs.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Task as ProgressTask
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: ProgressTask) -> Text:
            speed = task.finished_speed or task.speed
            return Text("–/s" if speed is None else f"{speed:.2f} {unit}/s")

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *(TextColumn(f) for f in fields),
        RateColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, disable=not console.is_terminal, transient=False,
    )
