"""The evaluated prompt prefix kept on disk: reused by a new process, never used when it does not fit.

A fresh process pays for evaluating the spec's instructions before its first value; the
prefix store (``extract.providers.prefix_cache``) keeps that KV state keyed by the weights,
the llama.cpp build and the prefix's tokens. These tests run real processes on the embedded
model: the second process loads what the first saved and prints the same value, a changed
prompt misses, and a corrupt file is discarded and rebuilt, not handed to llama.cpp.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from extract.providers.prefix_cache import PrefixStore

REPO = Path(__file__).resolve().parent.parent

# One extraction in a process of its own; prints the raw output and where the prefix came from.
CHILD = r"""
import json, sys
from extract import Extractor
schema = {"type": "object", "description": sys.argv[2],
          "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}}
res = Extractor(tiers=["local"], cache_dir=sys.argv[1]).run("Mail it to Springfield, IL 62701.", schema)
a = res.attempts[0]
print(json.dumps({"raw": a.raw, "prefix_kv": a.meta["prefix_kv"], "ok": res.ok}))
"""


def _run(cache: Path, about: str = "a place") -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(cache), about], capture_output=True, text=True,
                          cwd=REPO, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    cache = tmp_path_factory.mktemp("prefix-cache")
    first = _run(cache)
    return cache, first


def test_a_new_process_loads_the_saved_prefix_and_gets_the_same_value(
        saved: tuple[Path, dict[str, object]]) -> None:
    cache, first = saved
    assert first["ok"] and first["prefix_kv"] == "evaluated"
    files = list((cache / "prefix-kv").glob("*.kv"))
    assert len(files) == 1
    second = _run(cache)
    assert second["prefix_kv"] == "disk"
    assert second["raw"] == first["raw"]


def test_a_changed_prompt_misses_the_saved_prefix(saved: tuple[Path, dict[str, object]]) -> None:
    cache, _ = saved
    other = _run(cache, about="a postal place")  # other wording in the instructions
    assert other["prefix_kv"] == "evaluated"
    assert len(list((cache / "prefix-kv").glob("*.kv"))) == 2


def test_a_corrupt_prefix_is_discarded_and_rebuilt(saved: tuple[Path, dict[str, object]]) -> None:
    cache, first = saved
    corrupt = {}
    for path in (cache / "prefix-kv").glob("*.kv"):
        blob = bytearray(path.read_bytes())
        blob[-100] ^= 0xFF  # one flipped byte in the KV data: the checksum no longer matches
        path.write_bytes(bytes(blob))
        corrupt[path] = bytes(blob)
    again = _run(cache)
    assert again["prefix_kv"] == "evaluated" and again["raw"] == first["raw"]
    assert sum(path.read_bytes() != blob for path, blob in corrupt.items()) == 1  # its file rebuilt
    assert _run(cache)["prefix_kv"] == "disk"


def test_other_weights_or_tokens_never_read_a_saved_state(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, "sha256:aaaa|extra_buffers=False|llama_cpp=0.3.36")
    store.save([1, 2, 3], b"state-bytes")
    assert store.load([1, 2, 3]) == b"state-bytes"
    assert store.load([1, 2, 4]) is None  # another prefix
    other = PrefixStore(tmp_path, "sha256:bbbb|extra_buffers=False|llama_cpp=0.3.36")
    assert other.load([1, 2, 3]) is None  # other weights: another key, and the header is checked
    # A file renamed onto another key's name is refused by its header, then removed.
    store.path([1, 2, 3]).rename(other.path([1, 2, 3]))
    assert other.load([1, 2, 3]) is None
    assert not other.path([1, 2, 3]).exists()


def test_the_store_evicts_the_oldest_beyond_its_limit(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, "m", limit_bytes=2500)
    for i in range(4):
        store.save([i], bytes(1000))
    kept = sorted(p.name for p in tmp_path.glob("*.kv"))
    assert len(kept) == 2
    assert store.load([3]) is not None and store.load([0]) is None


def test_the_weights_digest_is_remembered_by_file_identity_and_redone_when_the_file_changes(tmp_path: Path) -> None:
    from extract.providers.decoding import file_digest

    weights = tmp_path / "w.gguf"
    weights.write_bytes(b"GGUF" + b"\x01" * 1000)
    store = tmp_path / "cache" / "digests.json"
    first = file_digest(weights, store)
    assert first == file_digest(weights) and store.exists()
    # A remembered digest is read back, not recomputed (the entry is what the store says).
    (key,) = json.loads(store.read_text(encoding="utf-8"))
    store.write_text(json.dumps({key: "sha256:remembered"}), encoding="utf-8")
    assert file_digest(weights, store) == "sha256:remembered"
    # New content (and so a new change time): hashed again, never the old entry.
    weights.write_bytes(b"GGUF" + b"\x02" * 1000)
    assert file_digest(weights, store) == file_digest(weights) != first
    store.write_text("not json", encoding="utf-8")  # a corrupt store is rebuilt, not an error
    assert file_digest(weights, store) == file_digest(weights)
