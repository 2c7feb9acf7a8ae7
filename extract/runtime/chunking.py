"""Texts longer than the context: split by tokens with overlap, extract per chunk, merge per schema.

With ``Settings.long_text="chunk"`` (the default) a text whose prompt would leave less than the
output allowance free in the context is cut into chunks that fit, each run through the whole
chain as its own extraction (so the budget, cache, logs and spans see every chunk), and the
chunk values are merged:

- **lists** are concatenated in text order and de-duplicated (items compared as canonical
  JSON), so the overlap does not count an item twice;
- **objects** merge field by field, recursively;
- **scalars** go by agreement: nulls are ignored (a chunk that does not mention a field says
  nothing about it), the value most chunks gave wins (a tie goes to the earliest chunk), and
  every disagreement is recorded in ``Result.conflicts`` with each chunk's value.

The merged value is validated against the spec again (a concatenated list can pass
``maxItems``); a merge that fails is a failure (an Attempt of tier ``merge``), never an
unvalidated value. ``Result.chunks`` holds each chunk's span and its own Result.

Why chunking is the default: "error" stops a batch on its first long document and
"truncate" drops the end of the text without a failure to show for it; chunking loses
nothing, costs calls only for texts that need it, and records what it did.

The context is the local model's ``n_ctx`` when the chain has a local tier (tokens counted by
that model's tokenizer, exactly), else ``remote_context_tokens`` when set (tokens estimated at
3 characters each: BPE tokenizers average about 4 on English, so a chunk is a little smaller
than it could be; a chunk the server still refuses is a ``provider_error`` attempt). With
neither, remote texts go whole. Worked examples are counted: the schema's own, and the largest
choice an ``Extractor(examples=...)`` pool can make. Whether a prompt fits is
``tiers.base.prompt_fits``, the rule the local tier's truncation uses too.

This module imports no concrete tier and not the pipeline (the Extractor is passed in); whether a
tier is local is what the tier declares (``Tier.remote``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any, Protocol

from pydantic import BaseModel

from extract.settings import Settings
from extract.spec import Spec
from extract.spec.prompt import Example, build_messages
from extract.tiers.base import Tier, output_reserve, prompt_fits
from extract.types import Attempt, AttemptError, Chunk, Result
from extract.validate import check

__all__ = ["current_chunk", "merge_values", "plan_chunks", "run_chunked", "split_text"]

_CHUNK: ContextVar[int | None] = ContextVar("extract_chunk", default=None)
# Tokens kept free beyond the counted text: a chunk's tokens inside the prompt can differ
# from its tokens alone by a merge at each edge.
_EDGE_TOKENS = 8
_TEMPLATE_TOKENS = 16  # role markers per message, more than any chat template we ship adds


def current_chunk() -> int | None:
    """The index of the chunk being extracted in this task, or None outside chunking."""
    return _CHUNK.get()


class _Chain(Protocol):
    settings: Settings
    tiers: list[Tier]

    async def arun(self, text: str, spec: Any) -> Result: ...


def split_text(text: str, count: Callable[[str], int], room: int, overlap: int) -> list[tuple[int, int]]:
    """Spans of ``text`` of at most ``room`` tokens each (by ``count``), neighbours sharing about
    ``overlap`` tokens, cut at whitespace when there is some in the second half of a chunk."""
    if room < 1:
        raise ValueError("room must be at least one token")
    spans: list[tuple[int, int]] = []
    start, n = 0, len(text)
    while start < n:
        if count(text[start:]) <= room:
            spans.append((start, n))
            break
        lo, hi = start + 1, n  # the longest end whose chunk fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(text[start:mid]) <= room:
                lo = mid
            else:
                hi = mid - 1
        end = lo
        cut = max(text.rfind(" ", start + (end - start) // 2, end), text.rfind("\n", start + (end - start) // 2, end))
        if cut > start:
            end = cut + 1
        spans.append((start, end))
        chars_per_token = (end - start) / max(1, count(text[start:end]))
        back = min(int(overlap * chars_per_token), (end - start) // 2)
        nxt = end - back
        space = text.find(" ", nxt, end)
        if back and space != -1:
            nxt = space + 1
        start = max(nxt, start + 1)
    return spans


def plan_chunks(text: str, spec: Spec, settings: Settings, tiers: Sequence[Tier],
                examples: Sequence[Example] = ()) -> list[tuple[int, int]] | None:
    """The chunk spans for ``text``, or None when it fits (or chunking is off).

    ``examples`` are every worked example a prompt may show: the schema's own and, for a
    pool, the largest choice it can make (``ExamplePool.largest``; the choice depends on the
    chunk, so the plan counts the worst case).
    """
    if settings.long_text != "chunk" or settings.truncate:
        return None
    count: Callable[[str], int]
    if any(not tier.remote for tier in tiers):
        # A token is at least one byte: a prompt with fewer bytes than the context fits, and
        # the model (and its load) is not needed to know it.
        messages = build_messages(spec, text, examples)
        upper = sum(len(m["content"].encode("utf-8")) + _TEMPLATE_TOKENS for m in messages)
        if prompt_fits(upper, settings.n_ctx, settings):
            return None
        from extract.providers.local_model import load_local_model

        model = load_local_model(settings)
        context = model.n_ctx

        def count(s: str) -> int:
            return model.count_tokens(s)

        def prompt_tokens(s: str) -> int:
            return model.count_tokens(model.render(build_messages(spec, s, examples)))
    elif settings.remote_context_tokens is not None:
        from extract.providers.openai_compat import estimate_tokens

        context = settings.remote_context_tokens
        count = estimate_tokens

        def prompt_tokens(s: str) -> int:
            return sum(count(m["content"]) for m in build_messages(spec, s, examples))
    else:
        return None
    if prompt_fits(prompt_tokens(text), context, settings):
        return None
    room = context - prompt_tokens("") - output_reserve(settings, context) - _EDGE_TOKENS
    if room < 32:
        return None  # no chunk would fit: let the tier say so as it does today
    overlap = min(settings.chunk_overlap_tokens, room // 4)
    return split_text(text, count, room, overlap)


def _jsonable(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def merge_values(values: list[tuple[int, Any]], path: str = "", conflicts: list[dict[str, Any]] | None = None) -> Any:
    """Merge (chunk index, JSON value) pairs: lists concatenated and de-duplicated, objects by
    field, scalars by agreement; disagreements are appended to ``conflicts``."""
    if conflicts is None:
        conflicts = []
    present = [(i, v) for i, v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, dict) for _, v in present):
        keys: list[str] = []
        for _, v in present:
            keys += [k for k in v if k not in keys]
        return {
            k: merge_values([(i, v[k]) for i, v in present if k in v], f"{path}/{k}", conflicts)
            for k in keys
        }
    if all(isinstance(v, list) for _, v in present):
        seen: set[str] = set()
        out: list[Any] = []
        for _, v in present:
            for item in v:
                key = _canonical(item)
                if key not in seen:
                    seen.add(key)
                    out.append(item)
        return out
    tally: dict[str, int] = {}
    for _, v in present:
        tally[_canonical(v)] = tally.get(_canonical(v), 0) + 1
    winner = max(tally, key=lambda k: tally[k])  # first maximum: the earliest chunk on a tie
    chosen = next(v for _, v in present if _canonical(v) == winner)
    if len(tally) > 1:
        conflicts.append({"path": path or "/", "chosen": chosen,
                          "values": [{"chunk": i, "value": v} for i, v in present]})
    return chosen


def merge_results(spec: Spec, spans: list[tuple[int, int]], results: list[Result]) -> Result:
    """One Result for the whole text from the chunks' Results (see the module docstring)."""
    attempts = [a for r in results for a in r.attempts]
    chunks = [Chunk(start=s, end=e, result=r) for (s, e), r in zip(spans, results, strict=True)]
    ok = [(i, r) for i, r in enumerate(results) if r.ok]
    if not ok:
        return Result(attempts=attempts, chunks=chunks)
    conflicts: list[dict[str, Any]] = []
    if spec.is_json:
        merged = merge_values([(i, _jsonable(r.value)) for i, r in ok], "", conflicts)
        raw = json.dumps(merged, ensure_ascii=False)
    else:  # a regex or grammar answer is one string: agreement over the winners' raw text
        winners = [(i, next(a.raw for a in r.attempts if a.ok)) for i, r in ok]
        raw = str(merge_values(winners, "", conflicts))
    checked = check(raw, spec)
    if checked.error is not None:
        attempts.append(Attempt(tier="merge", raw=raw, error=AttemptError(
            type="merge_invalid",
            message="the merged chunk values fail the spec: " + checked.error.message,
            details=checked.error.details,
        )))
        return Result(attempts=attempts, chunks=chunks, conflicts=conflicts)
    tiers = sorted({r.tier for _, r in ok if r.tier})
    return Result(value=checked.value, tier="+".join(tiers), attempts=attempts, chunks=chunks, conflicts=conflicts)


async def run_chunked(chain: _Chain, text: str, spec: Spec, examples: Sequence[Example] = ()) -> Result | None:
    """The merged Result when ``text`` needs chunks, else None (the caller runs the chain).

    Chunks run one after another: the local model serves one generation at a time anyway, and
    in order the budget stops at a chunk boundary rather than at a random one.
    """
    if _CHUNK.get() is not None:
        return None  # already a chunk: it fits by construction
    spans = await asyncio.to_thread(plan_chunks, text, spec, chain.settings, chain.tiers, examples)
    if spans is None:
        return None
    results: list[Result] = []
    for i, (start, end) in enumerate(spans):
        token = _CHUNK.set(i)
        try:
            results.append(await chain.arun(text[start:end], spec))
        finally:
            _CHUNK.reset(token)
    return merge_results(spec, spans, results)
