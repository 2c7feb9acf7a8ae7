"""What every local backend shares: the constraint, its llguidance compilation, the
generation record, the weights' digest and Outlines' logits processor.

Its own module so that each backend (``local_model``'s llama.cpp, ``transformers_model``)
imports it and neither imports the other: ``local_model.load_local_model`` picks a backend,
the backends do not know the registry. Imports no tier.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = ["Constraint", "Generation", "GrammarKind", "TokenGuard", "clear_compiled_grammars", "file_digest",
           "outlines_processor"]

GrammarKind = Literal["json_schema", "regex", "lark"]


class TokenGuard(Protocol):
    """A veto on sampled tokens beyond the grammar (``extract.spec.span_guard.SpanGuard``):
    ``feed`` sees every kept token's bytes, ``allows`` a candidate's before it is taken."""

    def feed(self, piece: bytes) -> None: ...

    def allows(self, piece: bytes) -> bool: ...


@lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()[:16]


def file_digest(path: Path, store: Path | None = None) -> str:
    """A digest of the weights, so each result is tied to the exact file that produced it.

    ``store``: a JSON file remembering the digests of files already read, keyed by path, size,
    inode and modification and change times (the change time cannot be set back by a user), so
    a new process does not read the 100 MB of the embedded model again (0.07 s of a first
    extraction). Without it, or when it cannot be read or written, the file is hashed.
    """
    if path.is_dir():
        parts = sorted(p for p in path.rglob("*") if p.is_file())
        h = hashlib.sha256()
        for p in parts:
            h.update(p.name.encode())
            h.update(_digest(str(p), p.stat().st_size, p.stat().st_mtime_ns).encode())
        return "sha256:" + h.hexdigest()[:16]
    st = path.stat()
    if store is None:
        return _digest(str(path), st.st_size, st.st_mtime_ns)
    key = f"{path.resolve()}|{st.st_size}|{st.st_ino}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    known: dict[str, str] = {}
    try:
        loaded = json.loads(store.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            known = {str(k): str(v) for k, v in loaded.items()}
    except (OSError, ValueError):
        pass
    if key in known:
        return known[key]
    digest = _digest(str(path), st.st_size, st.st_mtime_ns)
    known[key] = digest
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, sort_keys=True), encoding="utf-8")
        os.replace(tmp, store)
    except OSError:
        pass
    return digest


@dataclass(frozen=True)
class Constraint:
    """A constraint in one of the three forms llguidance compiles."""

    kind: GrammarKind
    text: str

    def compile(self) -> str:
        """The llguidance grammar for this constraint (cached; raises on an invalid one)."""
        return _compile_grammar(self.kind, self.text)

    def problems(self) -> list[str]:
        """Why llguidance cannot enforce this constraint fully; empty when it can.

        A key llguidance does not implement is only a warning to llguidance (it decodes
        without enforcing it), but an unenforced keyword is a broken promise to the user,
        so both errors and "Unimplemented keys" warnings count.
        """
        return list(_grammar_problems(self.kind, self.text))


@lru_cache(maxsize=512)
def _grammar_problems(kind: GrammarKind, text: str) -> tuple[str, ...]:
    import llguidance

    try:
        compiled = _compile_grammar(kind, text)
    except (ValueError, RuntimeError) as exc:
        return (str(exc),)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(compiled)
    if is_error:
        return tuple(messages) or ("llguidance rejected the grammar",)
    return tuple(m for m in messages if "Unimplemented" in m or "unimplemented" in m)


@lru_cache(maxsize=512)
def _compile_grammar(kind: GrammarKind, text: str) -> str:
    import llguidance

    if kind == "json_schema":
        grammar: str = llguidance.LLMatcher.grammar_from_json_schema(text)
    elif kind == "regex":
        grammar = llguidance.LLMatcher.grammar_from_regex(text)
    else:
        grammar = llguidance.LLMatcher.grammar_from_lark(text)
    return grammar


@dataclass
class Generation:
    """What one decode produced."""

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str  # "stop" (EOS or grammar complete) or "length"
    seconds: float
    forced_tokens: int = 0
    # Where the KV cache of the prompt's shared prefix came from: "memory" (this process),
    # "disk" (the prefix store), "evaluated", or "none" (no prefix given, or not llama.cpp).
    prefix_source: str = "none"
    # Per output token: where it ends in ``text`` (characters), and its log-probability under
    # the allowed-token distribution when the model chose it (None: the grammar allowed only
    # that token, so it says nothing about the model). Empty when the backend records none.
    token_ends: list[int] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)


def outlines_processor(backend: Any, grammar: Constraint) -> Any:
    """Outlines' llguidance logits processor for ``grammar`` (the ``decoder="outlines"`` path)."""
    if grammar.kind == "json_schema":
        return backend.get_json_schema_logits_processor(grammar.text)
    if grammar.kind == "regex":
        return backend.get_regex_logits_processor(grammar.text)
    return backend.get_cfg_logits_processor(grammar.text)


def clear_compiled_grammars() -> None:
    """Forget every compiled grammar (the benchmark's cold-compile measurement)."""
    _compile_grammar.cache_clear()
    _grammar_problems.cache_clear()
