"""The chain: run tiers in order until one attempt validates, and keep every attempt.

``Extractor.arun`` is the one async core; ``run``, ``extract`` and ``aextract`` wrap it.
Inputs are checked here, once, before any tier sees them: a caller mistake is a
``ConfigError`` or ``UnsupportedSchema``; bad model output is an ``Attempt`` with an error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import queue
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import Any, Literal, TypeVar

from extract.errors import ConfigError, ExtractionFailed, ProviderError, UnsupportedSchema
from extract.examples import ExamplePool, schema_examples, shown_examples
from extract.runtime.cache import lookup as cache_lookup
from extract.runtime.cache import open_store
from extract.runtime.chunking import run_chunked
from extract.runtime.grounding import ground, ground_merged, judge
from extract.runtime.lists import ItemRun, Split, failed_spans, list_answer
from extract.runtime.observability import Runtime
from extract.settings import Settings
from extract.spec import Spec, compile_spec
from extract.tiers import Task, Tier, make_tier
from extract.tiers.base import answer_listener
from extract.types import Attempt, AttemptError, Result

__all__ = ["Extractor", "aextract", "aextract_all", "aextract_iter", "extract", "extract_all", "extract_iter"]

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, even inside a running loop (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def clean_text(text: Any, max_chars: int) -> str:
    """The text as a str, or a ConfigError that says what to do."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"the text is not valid UTF-8 (byte {exc.start}: {bytes(text)[exc.start:exc.start + 4]!r}); "
                "decode it yourself, e.g. data.decode('latin-1'), and pass a str"
            ) from None
    if not isinstance(text, str):
        raise ConfigError(f"the text must be a str (or UTF-8 bytes), got {type(text).__name__}")
    if not text.strip():
        raise ConfigError("the text is empty or only whitespace: there is nothing to extract from")
    if len(text) > max_chars:
        raise ConfigError(
            f"the text has {len(text)} characters, over the limit of {max_chars} "
            "(raise max_input_chars / EXTRACT_MAX_INPUT_CHARS)"
        )
    return text


class Extractor:
    """A configured chain of tiers; reuse one for many texts (models load once per process).

    ``tiers`` is the policy: a list of tier names in order (``["local"]``, ``["native",
    "instructor", "local"]``...). ``examples`` is a pool of (text, answer) pairs; for each text
    the ``examples_k`` most similar are shown to every tier (``examples_select="fixed"``: the
    first k), see ``extract.examples``; ``examples_group=N``: in a batch, groups of N similar
    texts share k - 1 of them (evaluated once per group on the local tier). Every other
    keyword is a ``Settings`` field and overrides the ``EXTRACT_*`` environment.
    """

    def __init__(self, tiers: Sequence[str] | None = None, *, examples: Sequence[Any] | None = None,
                 examples_k: int | None = None, examples_select: Literal["similar", "fixed"] = "similar",
                 examples_group: int = 1, **settings: Any) -> None:
        if isinstance(tiers, str):
            tiers = [tiers]
        if tiers is not None and not tiers:
            raise ConfigError("tiers is empty: name at least one tier, e.g. tiers=['local']")
        self.settings = Settings.resolve(tiers=list(tiers) if tiers else None, **settings)
        self.tier_names = self.settings.default_tiers()
        self.tiers: list[Tier] = [make_tier(name, self.settings) for name in self.tier_names]
        self.runtime = Runtime(self.settings, self.tiers)  # budget, PII, cost, logs, spans
        for name, unset in (("examples_k", examples_k is None), ("examples_group", examples_group == 1)):
            if examples is None and not unset:
                raise ConfigError(f"{name} is set but no examples pool was given (examples=[(text, answer), ...])")
        self.examples = (ExamplePool(examples, examples_k, select=examples_select, n_ctx=self.settings.n_ctx,
                                     group=examples_group)
                         if examples is not None else None)
        self.cache = open_store(self.settings)  # None with cache=False (extract.runtime.cache)

    def _plan(self, spec: Spec) -> tuple[list[Tier], list[Attempt]]:
        """Tiers that can run this spec, and a skipped Attempt for each that cannot."""
        usable: list[Tier] = []
        skipped: list[Attempt] = []
        refusals: list[UnsupportedSchema] = []
        for tier in self.tiers:
            reason = tier.unavailable()
            if reason is not None:
                skipped.append(Attempt(tier=tier.name, skipped=True,
                                       error=AttemptError(type="unavailable", message=reason)))
                continue
            try:
                tier.check_support(spec)
            except UnsupportedSchema as exc:
                refusals.append(exc)
                skipped.append(Attempt(tier=tier.name, skipped=True,
                                       error=AttemptError(type="unsupported", message=str(exc),
                                                          details=[{"feature": exc.feature, "path": exc.path}])))
                continue
            usable.append(tier)
        if not usable:
            if refusals:
                raise refusals[0]
            raise ConfigError(
                "no tier in the chain can run: "
                + "; ".join(f"{a.tier}: {a.error.message}" for a in skipped if a.error)
            )
        return usable, skipped

    async def arun(self, text: str | bytes, spec: Any) -> Result:
        """Run the chain on one text; never raises for bad model output.

        ``self.runtime`` (``extract.runtime.observability``) wraps it in a span and applies the budget,
        PII redaction, prices and one log event per attempt; a text longer than the context
        is split into chunks that each run this method (``extract.runtime.chunking``).
        """
        compiled = compile_spec(spec)
        clean = clean_text(text, self.settings.max_input_chars)
        # Worked examples are validated here, once per spec: a bad one is a ConfigError before
        # any model loads, and every prompt after this shows them as given.
        own = schema_examples(compiled)
        if self.examples is not None:
            self.examples.prepare(compiled)
        with self.runtime.extraction(compiled, clean):
            largest = self.examples.largest(compiled) if self.examples is not None else []
            chunked = await run_chunked(self, clean, compiled, [*own, *largest])
            result = ground_merged(chunked, clean) if chunked is not None else await self._chain(compiled, clean)
            # Calibration, review marks and abstention: after the cache, which keeps the model's own values.
            return self.runtime.finish(judge(result, compiled, self.settings))

    async def _chain(self, compiled: Spec, clean: str) -> Result:
        cached = await cache_lookup(self.cache, compiled, clean, settings=self.settings, tiers=self.tiers,
                                    examples=self.examples.identity() if self.examples is not None else None)
        if cached.result is not None:
            return cached.result  # no model call: the same work was done before
        usable, skipped = self._plan(compiled)
        shown = shown_examples(compiled, clean, self.examples)
        result = Result(attempts=list(skipped))
        deadline = (
            time.monotonic() + self.settings.deadline_s if self.settings.deadline_s is not None else None
        )
        for tier in usable:
            task = Task(text=clean, spec=compiled, settings=self.settings,
                        history=list(result.attempts), deadline=deadline, examples=shown,
                        on_text=answer_listener.get())
            call = self.runtime.before_tier(tier, task)
            if isinstance(call, Attempt):  # skipped: the budget cannot cover this tier's worst case
                result.attempts.append(call)
                continue
            started = time.perf_counter()
            try:
                attempts = await tier.attempts(call.task)
            except ProviderError as exc:
                attempts = [Attempt(
                    tier=tier.name,
                    latency_s=time.perf_counter() - started,
                    error=AttemptError(type="provider_error", message=str(exc),
                                       details=[{"endpoint": exc.endpoint, "transient": exc.transient,
                                                 "status": exc.status}]),
                )]
            attempts = self.runtime.after_tier(call, attempts)
            result.attempts.extend(attempts)
            winner = next((a for a in attempts if a.ok), None)
            if winner is not None:
                result.value = winner.value
                result.tier = winner.tier
                result.fields = ground(winner, clean)  # offsets into the caller's text
                break
        cached.save(result)
        return result

    def run(self, text: str | bytes, spec: Any) -> Result:
        """Sync wrapper of ``arun``."""
        return run_sync(self.arun(text, spec))

    def item_run(self, text: str | bytes, item: Any, *, passes: int = 1, split: Split = "lines",
                 min_fields: int = 2) -> ItemRun:
        """A list extraction of every ``item`` in ``text`` (``extract.runtime.lists``), not started.

        With an examples pool, each pair's answer is one item (or a list of the items its text
        holds) and becomes the answer of a list window (``lists.list_answer``); the pool then
        chooses the examples per window, as it does per text for ``run``."""
        clean = clean_text(text, self.settings.max_input_chars)
        chain = self
        if self.examples is not None:
            pool = self.examples
            chain = copy.copy(self)  # the same tiers, budget, cache and logs; a pool of list answers
            chain.examples = ExamplePool([(t, list_answer(item, a)) for t, a in pool.raw], pool.k,
                                         select=pool.select, measure=pool.measure, n_ctx=self.settings.n_ctx)
        return ItemRun(chain, clean, item, passes=passes, split=split, min_fields=min_fields,
                       plan_examples=chain.examples.largest if chain.examples is not None else None)

    async def arun_all(self, text: str | bytes, item: Any, *, passes: int = 1, split: Split = "lines",
                       min_fields: int = 2) -> Result:
        """Every ``item`` in ``text``: ``value`` the list in document order, ``items`` each one's span
        (and every span that failed or was read as no item); never raises for bad model output."""
        run = self.item_run(text, item, passes=passes, split=split, min_fields=min_fields)
        async for _ in run.stream(as_written=False):
            pass
        return run.result()

    def run_all(self, text: str | bytes, item: Any, *, passes: int = 1, split: Split = "lines",
                min_fields: int = 2) -> Result:
        """Sync wrapper of ``arun_all``."""
        return run_sync(self.arun_all(text, item, passes=passes, split=split, min_fields=min_fields))


async def aextract(text: str | bytes, spec: Any, **options: Any) -> Any:
    """The validated value for ``spec`` from ``text``, or ``ExtractionFailed`` with the Result."""
    result = await Extractor(**options).arun(text, spec)
    if not result.ok:
        raise ExtractionFailed(result)
    return result.value


def extract(text: str | bytes, spec: Any, **options: Any) -> Any:
    """Sync ``aextract``: options are ``Extractor`` arguments (``tiers=``, ``examples=``, settings fields)."""
    return run_sync(aextract(text, spec, **options))


_LIST_OPTIONS = ("passes", "split", "min_fields")


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    lists = {k: options.pop(k) for k in _LIST_OPTIONS if k in options}
    return lists, options


async def aextract_all(text: str | bytes, item: Any, **options: Any) -> list[Any]:
    """Every ``item`` in ``text``, in document order (``passes``, ``split``, ``min_fields``, and any
    ``Extractor`` argument). ``ExtractionFailed`` (with the Result, found items included) when a
    span of the text could not be read; a text without items is an empty list."""
    lists, rest = _split_options(dict(options))
    result = await Extractor(**rest).arun_all(text, item, **lists)
    failed = failed_spans(result)
    if not result.ok and not failed:
        raise ExtractionFailed(result)
    if failed:
        exc = ExtractionFailed(result)
        where = ", ".join(f"[{e['start']}:{e['end']}] {e.get('error', {}).get('type', '?')}" for e in failed[:5])
        exc.args = (f"{len(failed)} span(s) of the text could not be read ({where}); "
                    f"{len(result.value)} item(s) were: see the exception's result",)
        raise exc
    return list(result.value)


def extract_all(text: str | bytes, item: Any, **options: Any) -> list[Any]:
    """Sync ``aextract_all``."""
    return run_sync(aextract_all(text, item, **options))


async def aextract_iter(text: str | bytes, item: Any, **options: Any) -> AsyncIterator[Any]:
    """Each ``item`` of ``text`` as soon as it validates (document order within a pass); a span
    that failed is skipped here: use ``Extractor.item_run`` for the Result."""
    lists, rest = _split_options(dict(options))
    run = Extractor(**rest).item_run(text, item, **lists)
    async for value in run.stream():
        yield value


_DONE = object()


def extract_iter(text: str | bytes, item: Any, **options: Any) -> Iterator[Any]:
    """Sync ``aextract_iter``: the extraction runs on a thread and each item is handed over as it
    validates, so the first arrives after one window, not after the document."""
    lists, rest = _split_options(dict(options))
    run = Extractor(**rest).item_run(text, item, **lists)  # bad input raises here, before any call
    return iter_sync(run.stream())


def iter_sync(agen: AsyncIterator[Any]) -> Iterator[Any]:
    """Drive ``agen`` on a thread of its own and yield what it yields; closing the iterator
    stops the producer at its next item."""
    out: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    async def pump() -> None:
        try:
            async for value in agen:
                if stop.is_set():
                    break
                out.put(value)
        except BaseException as exc:  # handed to the consumer, raised there
            out.put(exc)
            return
        out.put(_DONE)

    worker = threading.Thread(target=lambda: asyncio.run(pump()), daemon=True)
    worker.start()
    try:
        while True:
            value = out.get()
            if value is _DONE:
                return
            if isinstance(value, BaseException):
                raise value
            yield value
    finally:
        stop.set()
        worker.join()
