"""Content-addressed result cache: the same work is never paid for twice.

A key is the SHA-256 of everything that can change an extraction's output: the spec's
canonical form (its digest, and the class name of a Pydantic spec, whose validators are code),
the text, the tier chain, each model's identity (the weights' digest for a local model, the
endpoint and the model it serves for a remote one), the prompt versions, the digest of the
package's own code (``code_digest``: the rules that build constraints, prompts and repairs
change outputs without a prompt version being bumped), the sampling parameters, the
worked-examples pool and every setting that is not known to be output-neutral (a new setting
is in the key until it is listed in ``NEUTRAL_SETTINGS``: a needless miss is cheap, a wrong
hit is not).

Only successful Results are stored, as JSON (never pickle: a shared Redis must not be able to
run code in its readers). A hit issues no model call; it comes back as a Result with
``cache_hit=True`` whose one attempt (tier ``cache``) carries the original winner's raw output,
model and prompt version, and zero usage, since nothing was spent.

Two stores behind one small interface: ``diskcache`` in ``Settings.cache_dir``/results (or the
user's cache directory) with a size limit, the default; Redis (``cache_url=redis://...``) for
work spread over several machines. The chain hands in its settings, its tiers (each declares
which model it runs: ``Tier.identity``) and its examples pool's identity; this module imports
no concrete tier and not the pipeline.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from extract.errors import ConfigError, ProviderError
from extract.settings import Settings
from extract.spec.model import Spec
from extract.spec.prompt import GENERATE_PROMPT_VERSION, PROMPT_VERSION, REPAIR_PROMPT_VERSION
from extract.tiers.base import Tier
from extract.types import Attempt, Result

__all__ = ["NEUTRAL_SETTINGS", "CacheLookup", "ResultStore", "cache_key", "code_digest", "lookup", "model_identity",
           "open_store", "result_from_json", "result_to_json", "source_digest"]

# Bump when the stored form or the key's recipe changes: old entries then simply miss.
CACHE_FORMAT = "extract-cache-v1"
# The tiers decode greedily (temperature 0, top_k 1, seed 0): part of every key, so a future
# sampling option changes keys instead of serving greedy answers for sampled requests.
SAMPLING = {"temperature": 0, "top_k": 1, "seed": 0}
# Settings that change how (or whether) calls are made, never what a successful one returns.
NEUTRAL_SETTINGS = frozenset({
    "api_key", "timeout_s", "max_retries", "backoff_initial_s", "backoff_max_s", "retry_after_max_s",
    "breaker_threshold", "breaker_cooldown_s", "deadline_s", "n_threads", "endpoints", "base_url", "model",
    "cache", "cache_dir", "cache_url", "cache_size_limit", "prices", "budget_tokens", "budget_usd",
    "tiers",
    # Applied to a Result after the cache (extract.pipeline): the stored Result is the model's own.
    "review_below", "abstain_below", "calibration",
})


class ResultStore(Protocol):
    """Bytes by key; ``diskcache`` and Redis both fit in a few lines."""

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes) -> None: ...


class DiskStore:
    """A ``diskcache.Cache`` directory: safe across threads and processes on one machine."""

    def __init__(self, directory: Path, size_limit: int) -> None:
        import diskcache

        directory.mkdir(parents=True, exist_ok=True)
        self.cache = diskcache.Cache(str(directory), size_limit=size_limit)
        self.where = str(directory)

    def get(self, key: str) -> bytes | None:
        value = self.cache.get(key)
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes) -> None:
        self.cache.set(key, value)


class RedisStore:
    """A Redis server shared by several machines; its own ``maxmemory`` policy bounds its size."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0)
        scheme, _, rest = url.partition("://")
        self.where = f"{scheme}://{rest.split('@')[-1]}"  # never the password of redis://:pw@host

    def get(self, key: str) -> bytes | None:
        value = self.client.get(f"extract:{key}")
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes) -> None:
        self.client.set(f"extract:{key}", value)


_STORES: dict[tuple[str, str, int], ResultStore] = {}


def open_store(settings: Settings) -> ResultStore | None:
    """The process's store for these settings (one per location), or None when caching is off."""
    if not settings.cache:
        return None
    url = settings.cache_url
    if url is not None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"cache_url must be a redis:// URL, got {url.split('@')[-1][:40]!r}")
        ident = ("redis", url, 0)
    else:
        ident = ("disk", str(settings.cache_root() / "results"), settings.cache_size_limit)
    store = _STORES.get(ident)
    if store is None:
        store = RedisStore(ident[1]) if ident[0] == "redis" else DiskStore(Path(ident[1]), ident[2])
        _STORES[ident] = store
    return store


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, (set, frozenset)):
        return sorted(map(str, obj))
    return str(obj)


# The package whose code decides what an extraction returns.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def code_digest() -> str:
    """The digest of this installed package's code (``source_digest`` of it, once per process).

    Why: a change to how a constraint, a span form or a repair is built changes outputs, and
    a prompt version is bumped by hand only for prompt text; a cached result from the old rules
    would then be served as if the new ones made it. Keying on the code itself makes every
    installed version (and every edit of a working copy) its own cache, at the price of a
    miss after an upgrade."""
    return source_digest(PACKAGE_ROOT)


def source_digest(root: Path) -> str:
    """SHA-256 over every Python source file under ``root`` (relative path and bytes, by path)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


async def model_identity(tiers: Sequence[Tier]) -> list[Any]:
    """Which model each tier of the chain runs, as the tier declares it (``Tier.identity``)."""
    return [[tier.name, "unavailable"] if tier.unavailable() is not None else await tier.identity()
            for tier in tiers]


async def cache_key(spec: Spec, text: str, *, settings: Settings, tiers: Sequence[Tier], examples: Any) -> str:
    """The content address of extracting ``spec`` from ``text`` with this chain.

    ``examples`` is the examples pool's identity (``ExamplePool.identity``), None without one.
    """
    kept = {k: v for k, v in settings.model_dump(mode="json").items() if k not in NEUTRAL_SETTINGS}
    parts = {
        "format": CACHE_FORMAT,
        "spec": [spec.kind, spec.digest, spec.name,
                 f"{spec.model.__module__}.{spec.model.__qualname__}" if spec.model is not None else None],
        "text": text,
        "tiers": [tier.name for tier in tiers],
        "models": await model_identity(tiers),
        "prompts": [PROMPT_VERSION, REPAIR_PROMPT_VERSION, GENERATE_PROMPT_VERSION],
        "code": code_digest(),
        "sampling": SAMPLING,
        "examples": examples,
        "settings": kept,
    }
    payload = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_jsonable)
    return hashlib.sha256(payload.encode()).hexdigest()


def result_from_json(data: dict[str, Any], spec: Spec) -> Result:
    """A Result back from its JSON form, the value re-validated into the spec's own type."""
    result = Result.model_validate(data)
    if result.value is not None and spec.model is not None:
        result.value = spec.model.model_validate(result.value)
    return result


def result_to_json(result: Result) -> dict[str, Any]:
    """The lossless JSON form (``result_from_json`` reverses it)."""
    data = result.model_dump(mode="json")
    if isinstance(result.value, BaseModel):
        data["value"] = result.value.model_dump(mode="json")
    return data


@dataclass
class CacheLookup:
    """One lookup: the hit (if any), and where a fresh successful Result is to be stored."""

    store: ResultStore | None
    key: str | None
    spec: Spec
    result: Result | None = None

    def save(self, result: Result) -> None:
        """Store ``result`` if it succeeded and was not itself a hit; a failing store is not fatal."""
        if self.store is None or self.key is None or not result.ok or result.cache_hit:
            return
        try:
            self.store.set(self.key, json.dumps(result_to_json(result), ensure_ascii=False).encode())
        except Exception:  # a full disk or a gone Redis must not lose the result
            return


def _hit(data: dict[str, Any], spec: Spec, key: str, started: float, where: str) -> Result:
    stored = result_from_json(data, spec)
    winner = next((a for a in reversed(stored.attempts) if a.ok), None)
    attempt = Attempt(
        tier="cache",
        model=winner.model if winner else None,
        prompt_version=winner.prompt_version if winner else None,
        raw=winner.raw if winner else None,
        value=stored.value,
        repaired=winner.repaired if winner else False,
        repairs=list(winner.repairs) if winner else [],
        latency_s=time.perf_counter() - started,
        fields=list(stored.fields),
        meta={"cache": "hit", "key": key[:16], "store": where, "tier": stored.tier,
              "saved_usage": stored.usage.model_dump(), "attempts": len(stored.attempts)},
    )
    return stored.model_copy(update={"attempts": [attempt], "cache_hit": True})


async def lookup(store: ResultStore | None, spec: Spec, text: str, *, settings: Settings,
                 tiers: Sequence[Tier], examples: Any) -> CacheLookup:
    """The cached Result for this work, or an empty lookup to ``save`` the fresh one into.

    Grammar specs are not cached (a transformer may build any Python object). A key that
    cannot be computed (the endpoint does not answer /models) or a store that fails is a miss:
    the chain then runs and records what went wrong.
    """
    if store is None or spec.kind == "grammar":
        return CacheLookup(None, None, spec)
    started = time.perf_counter()
    try:
        key = await cache_key(spec, text, settings=settings, tiers=tiers, examples=examples)
    except (ProviderError, ConfigError):
        return CacheLookup(None, None, spec)
    try:
        raw = store.get(key)
    except Exception:  # an unreachable cache is a miss, not a failed extraction
        return CacheLookup(store, key, spec)
    if raw is None:
        return CacheLookup(store, key, spec)
    try:
        hit = _hit(json.loads(raw), spec, key, started, str(getattr(store, "where", "")))
    except (ValueError, TypeError):  # an entry from an older format or a changed spec class
        return CacheLookup(store, key, spec)
    return CacheLookup(store, key, spec, hit)
