"""The transformers backend: any model directory, or a GGUF dequantized through transformers.

Optional (``pip install 'extract[transformers]'``): it is what brings torch in. A GGUF is
converted once (about 26 s for the embedded model, fp32, ~0.6 GB) and the converted model is
saved under the user's cache directory keyed by the file's digest, so the next load reads
safetensors instead of dequantizing again. Decoding goes through Outlines' Transformers model
with an llguidance logits processor, greedy.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from extract.errors import ConfigError
from extract.providers.decoding import Constraint, Generation, TokenGuard, file_digest, outlines_processor
from extract.settings import Settings
from extract.types import ModelInfo

__all__ = ["TransformersModel", "converted_cache_dir"]


def converted_cache_dir(settings: Settings, digest: str) -> Path:
    """Where a GGUF converted by transformers is kept between processes."""
    return settings.cache_root() / "transformers" / digest.replace(":", "-")


class TransformersModel:
    """A transformers causal LM behind the LocalModel interface."""

    def __init__(self, path: Path, settings: Settings) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # torch.compile inside outlines costs 15-20 s on the first token and gains nothing.
        os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
        try:
            import outlines
            import torch
            import transformers
            from outlines.backends.llguidance import LLGuidanceBackend
        except ImportError as exc:
            raise ConfigError(
                f"the transformers backend needs the optional extra ({exc.name} is missing): "
                "pip install 'extract[transformers]'  (or: uv sync --extra transformers)"
            ) from None
        self.n_ctx = settings.n_ctx
        self._lock = threading.Lock()
        self.executor: concurrent.futures.Executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="transformers"
        )
        digest = file_digest(path)
        self.info = ModelInfo(name=path.name, digest=digest, backend="transformers")
        if path.is_file() and path.suffix == ".gguf":
            cached = converted_cache_dir(settings, digest)
            if (cached / "config.json").exists():
                hf_model = transformers.AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
                tokenizer = transformers.AutoTokenizer.from_pretrained(cached)
            else:
                try:
                    import gguf  # noqa: F401
                except ImportError:
                    raise ConfigError(
                        "loading a GGUF through transformers needs the 'gguf' package: "
                        "pip install 'extract[transformers]'"
                    ) from None
                hf_model = transformers.AutoModelForCausalLM.from_pretrained(
                    path.parent, gguf_file=path.name, dtype=torch.float32
                )
                tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
                cached.mkdir(parents=True, exist_ok=True)
                hf_model.save_pretrained(cached)
                tokenizer.save_pretrained(cached)
        elif path.is_dir():
            hf_model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        else:
            raise ConfigError(f"{path} is neither a GGUF file nor a transformers model directory")
        hf_model.eval()
        if settings.n_threads:
            torch.set_num_threads(settings.n_threads)
        self.tokenizer = tokenizer
        self.outlines_model = outlines.from_transformers(hf_model, tokenizer)
        # We render the chat template ourselves; stop Outlines from wrapping it again.
        self.outlines_model.type_adapter.has_chat_template = False  # type: ignore[attr-defined]
        self._backend = LLGuidanceBackend(self.outlines_model)
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"{path} has no chat template")

    def render(self, messages: list[dict[str, str]]) -> str:
        prompt: str = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return prompt

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompt: str, grammar: Constraint | None, max_tokens: int,
                 null_penalty: float = 0.0, prefix: str | None = None,
                 guard: TokenGuard | None = None, on_text: Callable[[str], None] | None = None,
                 save_prefix: bool = True, close_bias: float = 0.0) -> Generation:
        """Greedy decoding under Outlines' llguidance processor; ``null_penalty``, ``close_bias``, ``prefix``,
        ``guard`` and ``on_text`` are llama.cpp fast-decoder levers (logit penalty, prefix KV
        reuse, span-reuse veto, the text as it is written), not applied here: the answer comes
        in one piece.

        transformers' ``generate`` is called with the processor Outlines would pass, asking for
        the processed scores: under a constraint, each chosen token's log-probability among the
        tokens the grammar allowed is recorded (``token_logprobs``, a forced token scores 0),
        as the llama.cpp decoder records it, so values get a confidence on this backend too.
        """
        import torch

        start = time.perf_counter()
        n_in = self.count_tokens(prompt)
        if n_in + 1 > self.n_ctx:
            raise ConfigError(f"the prompt has {n_in} tokens, more than the context of {self.n_ctx}")
        max_tokens = min(max_tokens, self.n_ctx - n_in)
        processor: Any = None
        if grammar is not None:
            processor = outlines_processor(self._backend, grammar)
        om: Any = self.outlines_model
        with self._lock:
            _, inputs = om._prepare_model_inputs(prompt, False)
            out = om.model.generate(
                **inputs, logits_processor=om.type_adapter.format_output_type(processor),
                max_new_tokens=max_tokens, do_sample=False, output_scores=True, return_dict_in_generate=True,
            )
        ids = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        special = set(self.tokenizer.all_special_ids)
        kept = [i for i in ids if i not in special]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        ends: list[int] = []
        logprobs: list[float | None] = []
        if processor is not None and len(out.scores) == len(ids):
            # Where each kept token ends in ``text``: the decoded length of the prefix (outputs
            # are short; a token that completes a multi-byte character moves the end, one that
            # starts it does not).
            pos = 0
            for tok, scores in zip(ids, out.scores, strict=True):
                if tok in special:
                    continue
                pos += 1
                ends.append(len(self.tokenizer.decode(kept[:pos], skip_special_tokens=True)))
                logprobs.append(float(torch.log_softmax(scores[0].float(), dim=-1)[tok]))
            if not ends or ends[-1] != len(text):
                ends, logprobs = [], []
        stopped = bool(ids) and ids[-1] in special
        return Generation(
            text=text,
            input_tokens=n_in,
            output_tokens=len(kept),
            finish_reason="length" if len(ids) >= max_tokens and not stopped else "stop",
            seconds=time.perf_counter() - start,
            token_ends=ends,
            token_logprobs=logprobs,
        )
