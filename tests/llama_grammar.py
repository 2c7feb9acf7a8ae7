"""llama.cpp's own grammar engine as a test oracle: does a GBNF grammar accept a string?

The converted GBNF is only worth sending if llama.cpp reads it as we mean it, so the tests ask
llama.cpp itself, through the sampler API llama-cpp-python binds: ``llama_sampler_init_grammar``
parses the GBNF exactly as the server does (NULL when it cannot), and the sampler's ``apply``
masks a token the grammar does not allow (logit -inf). A string is accepted when each of its
tokens, fed in turn, is allowed and accepted, and end-of-generation is allowed after the last:
the same test the server applies while decoding. Only the embedded model's vocabulary is
loaded (``vocab_only``: no weights, a few milliseconds).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from typing import Any

import llama_cpp

from extract.providers.local_model import embedded_model_path

__all__ = ["GrammarRejected", "LlamaGrammarOracle", "oracle"]


class GrammarRejected(ValueError):
    """llama.cpp could not parse the GBNF (the server would fail on it)."""


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _quiet(level: int, text: bytes, user_data: Any) -> None:
    """llama.cpp logs every grammar parse error and model-load line on stderr: keep tests quiet."""


class LlamaGrammarOracle:
    def __init__(self) -> None:
        llama_cpp.llama_log_set(_quiet, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = llama_cpp.llama_model_load_from_file(str(embedded_model_path()).encode(), params)
        if not self.model:
            raise RuntimeError("could not load the embedded model's vocabulary")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)

    def tokens(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        room = len(data) + 16
        out = (llama_cpp.llama_token * room)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), out, room, False, False)
        assert n >= 0, f"tokenization failed for {text!r}"
        toks = list(out[:n])
        assert b"".join(self.piece(t) for t in toks) == data, f"tokens do not spell {text!r}"
        return toks

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 256, 0, False)
        return buf.raw[:n]

    def check(self, gbnf: str) -> None:
        """Raise ``GrammarRejected`` when llama.cpp cannot parse ``gbnf``."""
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            raise GrammarRejected("llama.cpp could not parse the grammar")
        llama_cpp.llama_sampler_free(sampler)

    def accepts(self, gbnf: str, text: str) -> bool:
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            raise GrammarRejected("llama.cpp could not parse the grammar")
        try:
            for token in [*self.tokens(text), self.eos]:
                data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
                candidates = llama_cpp.llama_token_data_array(data, 1, -1, False)
                llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
                if data[0].logit == float("-inf"):
                    return False
                if token != self.eos:
                    llama_cpp.llama_sampler_accept(sampler, token)
            return True
        finally:
            llama_cpp.llama_sampler_free(sampler)


@lru_cache(maxsize=1)
def oracle() -> LlamaGrammarOracle:
    return LlamaGrammarOracle()
