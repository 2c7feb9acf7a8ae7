"""Continuous batching for the llama.cpp backend: many documents decoded in one context.

Why: one llama.cpp context decodes one sequence at a time, so concurrent extractions on the
local tier queued behind each other (measured: ``extract_many`` at concurrency 8 ran at 0.95x
concurrency 1). A decode step of a small model on a CPU is bound by reading the weights, so
the next token of several sequences costs little more than one. ``BatchEngine`` owns a second
llama context (built from the already loaded weights, so no second copy of them) with one
sequence per slot and runs a loop on the model's one llama.cpp thread: each step is one
``llama_decode`` holding the next token of every active sequence, grammar-forced runs and
prompt chunks; a sequence that finishes frees its slot for the next waiting document at once.

Per sequence it keeps what ``LlamaCppModel._generate_fast`` keeps: its own llguidance matcher,
stop and budget, grammar-forced runs fed as one piece, and the chosen step through the same
``LlamaCppModel._pick`` (mask, null penalty, log-probability), so ``Generation`` comes out with
the same fields. The shared prompt prefix is held in its own sequence (evaluated once, or
loaded from the prefix store) and copied to each new sequence with ``llama_memory_seq_cp``:
the KV cache is unified, so the copy only tags the prefix's cells, nothing is evaluated again.

A document that cannot run (too long, a grammar llguidance rejects, a cancelled caller) fails
or leaves alone; its slot is freed and the others go on. Imports ``local_model`` (whose
``_pick`` and prefix store it shares), never a tier.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import ctypes
import os
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from extract.errors import ConfigError, ProviderError
from extract.providers.decoding import Constraint, Generation, TokenGuard
from extract.providers.local_model import LlamaCppModel, LocalModel
from extract.settings import Settings

__all__ = ["BatchEngine", "batch_engine", "default_slots", "engine_for"]

# Tokens one llama_decode may hold (llama-cpp-python's own n_batch default).
BATCH_TOKENS = 512
# KV cells of one sequence's stream; a longer document decodes alone on the model's own context.
SEQUENCE_CELLS = 2048
# A step of fewer tokens than this is decode work and runs on the decode thread count (one, for
# the embedded model), as _generate_fast runs its steps; a larger one is mostly prompt and
# runs on every core, as _generate_fast evaluates a prompt. Measured on 2 busy cores: a step
# of 8 tokens took 9 ms a token on one thread against 17 ms for a lone token, and seconds on
# two threads while other processes held the cores (OpenMP's passive waiting).
THREADED_STEP_TOKENS = 64


def default_slots(cores: int | None) -> int:
    """Sequences decoded together when the settings say nothing: four per core, at most 16.

    Decoding the embedded model is memory-bound, so a step of 8 tokens costs far less than 8
    steps; past a few per core the step becomes arithmetic-bound and more slots only add
    latency (benchmarks/throughput.py)."""
    return max(2, min(16, 4 * (cores or 1)))


@dataclass(eq=False)
class _Request:
    prompt: str
    grammar: Constraint | None
    max_tokens: int
    null_penalty: float
    prefix: str | None
    guard: TokenGuard | None
    close_bias: float = 0.0
    future: concurrent.futures.Future[Generation] = field(default_factory=concurrent.futures.Future)


@dataclass(eq=False)
class _Sequence:
    request: _Request
    slot: int
    steps: Generator[list[int], Any, Generation]
    prefix: tuple[int, ...]
    pending: list[int]
    pos: int
    row: int = -1  # the batch row whose logits it reads after this step, -1: none


class BatchEngine:
    """Decodes many ``generate`` calls of one ``LlamaCppModel`` together; see the module doc."""

    def __init__(self, model: LlamaCppModel, slots: int) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self.model = model
        self.slots = slots
        llm = model.llm
        # Same parameters as the model's own context (KV type, attention kernel, threads), so
        # a value decoded here matches one decoded there; only the shape differs. One KV
        # stream per sequence: in a unified cache every token attends over every sequence's
        # cells (masked), and a step of 8 tokens cost 8x one (measured, embedded model, the
        # CPU's arithmetic is the limit); per-stream attention costs what it costs alone.
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        self.seq_cells = min(model.n_ctx, SEQUENCE_CELLS)
        params.n_ctx = self.seq_cells * slots
        params.n_batch = params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = slots
        params.kv_unified = False
        self._ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self._batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, 1)
        self._mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._n_vocab = llm.n_vocab()
        self._lock = threading.Lock()
        self._waiting: collections.deque[_Request] = collections.deque()
        self._active: dict[int, _Sequence] = {}
        self._running = False
        # The shared prefix's KV state (from the prefix store or evaluated once), put into a
        # slot's sequence with llama_state_seq_set_data; and the prefix each slot still holds.
        self._prefix: tuple[tuple[int, ...], bytes] | None = None
        self._slot_prefix: dict[int, tuple[int, ...]] = {}
        self.steps = 0  # llama_decode calls, for the benchmark
        self.closed = False

    # -- the caller's side ---------------------------------------------------------------

    async def generate(self, prompt: str, grammar: Constraint | None, max_tokens: int,
                       null_penalty: float = 0.0, prefix: str | None = None,
                       guard: TokenGuard | None = None, close_bias: float = 0.0) -> Generation:
        """What ``LlamaCppModel.generate`` returns, decoded in a batch with the other callers'.

        Cancelling the awaiting task drops the sequence at the next step and frees its slot.
        """
        request = _Request(prompt, grammar, max_tokens, null_penalty, prefix, guard, close_bias)
        with self._lock:
            if self.closed:
                raise ProviderError("the batch engine is closed", endpoint="local")
            self._waiting.append(request)
            start = not self._running
            self._running = True
        if start:
            self.model.executor.submit(self._drive)
        return await asyncio.wrap_future(request.future)

    def busy_slots(self) -> int:
        """Slots holding a sequence now (0 once every caller is answered or gone)."""
        with self._lock:
            return len(self._active)

    def close(self) -> None:
        """Free the context; callers still waiting get a ``ProviderError``."""
        import llama_cpp

        with self._lock:
            if self.closed:
                return
            self.closed = True
        with contextlib.suppress(RuntimeError):  # an executor already shut down has no loop running
            self.model.executor.submit(lambda: None).result(timeout=60)  # after a running loop
        llama_cpp.llama_batch_free(self._batch)
        self._ctx.close()  # type: ignore[no-untyped-call]

    # -- the loop on the model's llama.cpp thread ----------------------------------------

    def _drive(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._waiting and not self._active:
                        self._running = False
                        return
                self._drop_cancelled()
                self._admit()
                if self._active:
                    self._step()
        except BaseException as exc:  # a bug in the loop: every caller hears of it, no slot stays taken
            with self._lock:
                waiting = list(self._waiting)
                self._waiting.clear()
                self._running = False
            for seq in list(self._active.values()):
                self._release(seq, exc)
            for request in waiting:
                _settle(request.future, exc)
            raise

    def _drop_cancelled(self) -> None:
        for seq in list(self._active.values()):
            if seq.request.future.cancelled():
                self._release(seq, None)

    def _admit(self) -> None:
        """Start waiting requests while a slot is free."""
        import llama_cpp

        model = self.model
        while len(self._active) < self.slots:
            with self._lock:
                if not self._waiting:
                    return
                request = self._waiting.popleft()
            if request.future.cancelled():
                continue
            slot: int | None = None
            try:
                tokens = model._tokenize(request.prompt)
                if len(tokens) + 1 > model.n_ctx:
                    raise ConfigError(
                        f"the prompt has {len(tokens)} tokens, more than the context of {model.n_ctx}")
                max_tokens = min(request.max_tokens, model.n_ctx - len(tokens))
                if len(tokens) + max_tokens > self.seq_cells:
                    # Longer than a slot's stream: decoded alone on the model's own context
                    # (it fits there; the batch waits for this one document).
                    _answer(request.future, model.generate(
                        request.prompt, request.grammar, request.max_tokens, request.null_penalty, request.prefix,
                        request.guard, close_bias=request.close_bias))
                    continue
                prefix = tuple(tokens[: model._prefix_length(tokens, request.prefix)])
                free = set(range(self.slots)) - set(self._active)
                holding = [s for s in free if prefix and self._slot_prefix.get(s) == prefix]
                slot = min(holding or free)
                source = self._place_prefix(slot, prefix) if prefix else "none"
                if not prefix:
                    llama_cpp.llama_memory_seq_rm(self._mem, slot, -1, -1)
                    self._slot_prefix.pop(slot, None)
                steps = self._decode(request, tokens, len(prefix), max_tokens, source, time.perf_counter())
                self._active[slot] = _Sequence(request, slot, steps, prefix, next(steps), len(prefix))
            except Exception as exc:  # this document's failure, recorded on its own
                if slot is not None:
                    llama_cpp.llama_memory_seq_rm(self._mem, slot, -1, -1)
                    self._slot_prefix.pop(slot, None)
                _settle(request.future, exc)

    def _place_prefix(self, slot: int, prefix: tuple[int, ...]) -> str:
        """Make ``slot``'s sequence exactly ``prefix`` evaluated; says where it came from, as
        ``_eval_prompt`` does ("memory": this process had it, "disk", "evaluated")."""
        import llama_cpp

        ctx = self._ctx.ctx
        if self._slot_prefix.get(slot) == prefix:
            return "memory"
        llama_cpp.llama_memory_seq_rm(self._mem, slot, -1, -1)
        self._slot_prefix.pop(slot, None)
        source = "memory"
        state = self._prefix[1] if self._prefix is not None and self._prefix[0] == prefix else None
        store = self.model._prefixes
        if state is None and store is not None:
            state = store.load(list(prefix))
            source = "disk"
        if state is not None:
            buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
            if llama_cpp.llama_state_seq_set_data(ctx, buf, len(state), slot) == len(state):
                self._prefix = (prefix, state)
                self._slot_prefix[slot] = prefix
                return source
            llama_cpp.llama_memory_seq_rm(self._mem, slot, -1, -1)
            if source == "disk" and store is not None:
                store.path(list(prefix)).unlink(missing_ok=True)  # another layout: rebuild it
        threads, decode_threads = self.model._threads
        llama_cpp.llama_set_n_threads(ctx, decode_threads, threads)
        for at in range(0, len(prefix), BATCH_TOKENS):
            chunk = prefix[at: at + BATCH_TOKENS]
            b = self._batch
            for i, tok in enumerate(chunk):
                b.token[i] = tok
                b.pos[i] = at + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = slot
                b.logits[i] = False
            b.n_tokens = len(chunk)
            if llama_cpp.llama_decode(ctx, b) != 0:
                llama_cpp.llama_memory_seq_rm(self._mem, slot, -1, -1)
                raise ProviderError("llama.cpp could not evaluate the shared prefix", endpoint="local")
        size = llama_cpp.llama_state_seq_get_size(ctx, slot)
        buf = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(ctx, buf, size, slot) == size:
            self._prefix = (prefix, bytes(buf))
            if store is not None:
                with contextlib.suppress(OSError):
                    store.save(list(prefix), self._prefix[1])
        self._slot_prefix[slot] = prefix
        return "evaluated"

    def _step(self) -> None:
        """One llama_decode over the next token of every sequence that has one token to feed,
        then one per sequence with a run (its prompt, a grammar-forced run).

        Why runs decode apart: a batch whose sequences feed different numbers of tokens is
        cut by llama.cpp into micro-batches of equal runs per KV stream, and a value then
        came out different from the same document decoded alone (1 in 16 usaddress
        documents); with only single tokens together every value matched. On a CPU the
        arithmetic of a run is the same alone or batched, so little is lost."""
        singles = sorted((s for s in self._active.values() if len(s.pending) == 1), key=lambda s: s.slot)
        if singles:
            self._feed(singles)
        for seq in sorted(self._active.values(), key=lambda s: s.slot):
            if len(seq.pending) > 1 and seq not in singles:
                self._feed([seq])

    def _feed(self, seqs: list[_Sequence]) -> None:
        """Decode ``seqs``' pending tokens (in slot order, up to a batch) and hand each its logits."""
        import llama_cpp
        import numpy as np

        b = self._batch
        n = 0
        for seq in seqs:
            take = seq.pending[: BATCH_TOKENS - n]
            for i, tok in enumerate(take):
                b.token[n] = tok
                b.pos[n] = seq.pos + i
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq.slot
                b.logits[n] = False
                n += 1
            seq.pos += len(take)
            seq.pending = seq.pending[len(take):]
            seq.row = -1
            if not seq.pending:
                b.logits[n - 1] = True
                seq.row = n - 1
        b.n_tokens = n
        threads, decode_threads = self.model._threads
        llama_cpp.llama_set_n_threads(self._ctx.ctx, decode_threads,
                                      threads if n >= THREADED_STEP_TOKENS else decode_threads)
        status = llama_cpp.llama_decode(self._ctx.ctx, b)
        self.steps += 1
        if status != 0:
            error = ProviderError(f"llama_decode failed ({status}) on a batch of {n} tokens",
                                  endpoint="local", transient=True)
            for seq in seqs:
                self._release(seq, error)
            return
        for seq in seqs:
            if seq.row < 0:
                continue
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(self._ctx.ctx, seq.row), shape=(self._n_vocab,))
            try:
                seq.pending = seq.steps.send(logits)
            except StopIteration as done:
                self._release(seq, None, done.value)
            except Exception as exc:
                self._release(seq, exc)

    def _release(self, seq: _Sequence, error: BaseException | None, result: Generation | None = None) -> None:
        """Free the slot (its KV cells) and answer the caller, unless the caller has gone."""
        import llama_cpp

        # The shared prefix stays in the slot for the next document that starts with it.
        llama_cpp.llama_memory_seq_rm(self._mem, seq.slot, len(seq.prefix) if seq.prefix else -1, -1)
        if not seq.prefix:
            self._slot_prefix.pop(seq.slot, None)
        self._active.pop(seq.slot, None)
        seq.steps.close()
        if error is not None:
            _settle(seq.request.future, error)
        elif result is not None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                seq.request.future.set_result(result)

    def _decode(self, request: _Request, tokens: list[int], prefix_len: int, max_tokens: int,
                source: str, started: float) -> Generator[list[int], Any, Generation]:
        """One sequence as ``_generate_fast`` decodes it: yields the tokens to evaluate next and
        receives the logits after the last of them."""
        import llguidance
        import llguidance.numpy as llg_np

        model = self.model
        guard = request.guard
        matcher = None
        bitmask = None
        if request.grammar is not None:
            matcher = llguidance.LLMatcher(model.llg_tokenizer, request.grammar.compile())
            if matcher.is_error():
                raise ProviderError(f"llguidance rejected the grammar: {matcher.get_error()}",
                                    endpoint="local")
            bitmask = llg_np.allocate_token_bitmask(1, model.llg_tokenizer.vocab_size)
        out: list[int] = []
        logprobs: list[float | None] = []
        forced = 0
        finish = "length"
        logits = yield tokens[prefix_len:]
        while len(out) < max_tokens:
            if matcher is not None:
                if matcher.is_stopped():
                    finish = "stop"
                    break
                ff = matcher.compute_ff_tokens()[: max_tokens - len(out)]
                if len(ff) > 1 and model.fast_forward:
                    matcher.consume_tokens(ff)
                    if guard is not None:
                        for t in ff:
                            guard.feed(model._spellings[t])
                    out.extend(ff)
                    logprobs.extend([None] * len(ff))
                    forced += len(ff)
                    if matcher.is_stopped():
                        finish = "stop"
                        break
                    logits = yield ff
                    continue
            tok, chosen_lp = model._pick(logits, matcher, bitmask, request.null_penalty, guard, request.close_bias)
            if tok in model._eos:
                finish = "stop"
                break
            if matcher is not None:
                matcher.consume_token(tok)
                if matcher.is_error():
                    raise ProviderError(f"llguidance matcher failed: {matcher.get_error()}", endpoint="local")
            out.append(tok)
            logprobs.append(chosen_lp)
            if guard is not None:
                guard.feed(model._spellings[tok])
            if len(out) < max_tokens and not (matcher is not None and matcher.is_stopped()):
                logits = yield [tok]
        text, ends = model._text_and_ends(out)
        return Generation(
            text=text,
            input_tokens=len(tokens),
            output_tokens=len(out),
            finish_reason=finish,
            seconds=time.perf_counter() - started,
            forced_tokens=forced,
            prefix_source=source,
            token_ends=ends,
            token_logprobs=logprobs if matcher is not None else [],
        )


def _answer(future: concurrent.futures.Future[Generation], result: Generation) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        future.set_result(result)


def _settle(future: concurrent.futures.Future[Generation], error: BaseException) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        future.set_exception(error)


_ENGINES: dict[tuple[int, int], BatchEngine] = {}
_ENGINES_LOCK = threading.Lock()


def batch_engine(model: LocalModel, settings: Settings) -> BatchEngine | None:
    """The engine that decodes ``model``'s concurrent extractions in one batch (one per model
    and slot count in a process), or None where each decodes alone: ``local_slots=1``, the
    outlines decoder, the transformers backend."""
    if not isinstance(model, LlamaCppModel) or settings.decoder != "fast":
        return None
    slots = settings.local_slots or default_slots(settings.n_threads or os.cpu_count())
    return engine_for(model, slots) if slots > 1 else None


def engine_for(model: LlamaCppModel, slots: int) -> BatchEngine:
    """The one engine of ``model`` with ``slots`` slots in this process (built on first use)."""
    key = (id(model), slots)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None or engine.closed:
            engine = _ENGINES[key] = BatchEngine(model, slots)
        return engine


def close_engines() -> None:
    """Free every engine's context now (at exit the model's own close frees them first:
    ``LlamaContext`` registers itself on the weights it borrows)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.close()
