"""Evaluated prompt prefixes kept on disk, so a new process does not evaluate them again.

Every prompt for one spec starts with the same instructions, field list and the schema's own
examples; only the framed document (and pool examples) differ. On 2 cores llama.cpp evaluates
a prompt at ~230 tokens/s, so the ~330-token prefix of the shipped Address prompt is ~1.4 s of
a first extraction. A process keeps that prefix's KV cache in memory for its later documents
(``LlamaCppModel._eval_prompt``); this store keeps it across processes.

A file holds one sequence's KV state as llama.cpp serialises it (``llama_state_seq_get_data``)
behind a small header: the key, the prefix's tokens and a SHA-256 of the state. The key covers
the weights' digest, whether extra buffer types were on, the llama-cpp-python version (the
state layout is the build's) and the tokens themselves, so a prefix from other weights, another
build or another prompt wording is never used. A file whose header, tokens or checksum do not
match is deleted and rebuilt, never handed to llama.cpp.

This module imports nothing from llama.cpp: the model passes the bytes in and takes them out.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from array import array
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PrefixStore"]

_MAGIC = b"XPFXKV01"
# Files beyond this total are evicted oldest first: a prefix is ~23 KB a token for the
# embedded model, so this holds a few hundred specs' prefixes.
DEFAULT_LIMIT_BYTES = 512 * 2**20


class PrefixStore:
    """Saved KV states of prompt prefixes for one model, in one folder."""

    def __init__(self, root: Path, model_key: str, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
        self.root = root
        self.model_key = model_key
        self.limit_bytes = limit_bytes

    def key(self, tokens: Sequence[int]) -> str:
        h = hashlib.sha256(self.model_key.encode())
        h.update(array("i", tokens).tobytes())
        return h.hexdigest()[:32]

    def path(self, tokens: Sequence[int]) -> Path:
        return self.root / f"{self.key(tokens)}.kv"

    def load(self, tokens: Sequence[int]) -> bytes | None:
        """The saved state for exactly these tokens, or None (a bad file is removed)."""
        path = self.path(tokens)
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        state = self._parse(blob, tokens)
        if state is None:
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        return state

    def _parse(self, blob: bytes, tokens: Sequence[int]) -> bytes | None:
        head = len(_MAGIC) + 4
        if len(blob) < head or not blob.startswith(_MAGIC):
            return None
        (n,) = struct.unpack("<I", blob[len(_MAGIC):head])
        try:
            header = json.loads(blob[head:head + n])
        except ValueError:
            return None
        if not isinstance(header, dict):
            return None
        state = blob[head + n:]
        expected = {
            "model": self.model_key,
            "tokens": list(tokens),
            "sha256": hashlib.sha256(state).hexdigest(),
            "bytes": len(state),
        }
        if any(header.get(k) != v for k, v in expected.items()):
            return None
        return state

    def save(self, tokens: Sequence[int], state: bytes) -> Path:
        """Write atomically (a reader sees the old file or the whole new one), then evict."""
        self.root.mkdir(parents=True, exist_ok=True)
        header = json.dumps({
            "model": self.model_key,
            "tokens": list(tokens),
            "sha256": hashlib.sha256(state).hexdigest(),
            "bytes": len(state),
        }).encode()
        path = self.path(tokens)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".kv")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(_MAGIC + struct.pack("<I", len(header)) + header + state)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._evict(keep=path)
        return path

    def _evict(self, keep: Path) -> None:
        files = []
        for p in self.root.glob("*.kv"):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files, key=lambda f: f[0]):
            if total <= self.limit_bytes:
                break
            if p != keep:
                p.unlink(missing_ok=True)
                total -= size
