"""Every item of a document: windows read one after another, items located by their span.

``Extractor.run_all`` / ``extract_all`` / ``extract_iter`` ask for a list of ``Item`` and
return each item with the span of text it was read from. The request is the list wrapper
``{"items": [Item, ...]}`` run through the whole chain (so budget, cache, logs, PII and
every tier apply), one *window* of the text at a time:

- ``split="lines"`` (the default): every non-blank line is a window (a line with fewer words
  than the values an item needs, such as a one-word heading, is named and not sent). A bibliography, an
  invoice's lines, a letter's paragraphs: one line holds a few items at most, and a 135M
  model asked for the list of a whole page repeats its first item (measured: 8 references
  in, one title repeated 40 times out), while asked for one line's list it answers that
  line. A line longer than the context is chunked by ``extract.runtime.chunking``.
- ``split="chunks"``: token chunks with overlap, planned by ``chunking.plan_chunks`` (the
  one place that sizes a prompt against the context, with the model's own tokenizer), for
  items that run across lines and models that can list a page.

Within a window, an answer cut by the output limit (``finish_reason == "length"``) or
holding as many distinct items as the list allows is not the end: every complete item is
kept (the raw array is parsed item by item) and the window is read again from the end of
the last complete item's span, each continuation its own call with its own Attempts.

Items are located by their string values (span-copy makes them substrings of the text): an
item's span runs from its first to its last located value (in lines mode a line read whole
as one item spans the line). Two items are the same when
their spans overlap by more than half of the shorter one, so an item seen twice in a chunk
overlap is kept once (the copy from the window that holds it whole) while two identical
references at different places stay two items. An item with fewer than ``min_fields``
distinct values (default 2: a heading, a salutation) is rejected, not returned; windows
whose call failed are named as failed spans; what is left of a window that was read, outside
every span, and holds a letter or a digit is named ``empty`` (measured on the native tier: a
reference line answered with ``{"items": []}``, which was neither returned nor named before).
``Result.items`` lists every span with its status (``ok``, ``rejected``, ``failed``,
``empty``), named spans less what the kept items hold, so no text that was read is dropped
silently; its ``ok`` entries line up one to one with ``Result.value``.

``passes=2`` reads the text again with every found item's span blanked out (offsets are
kept), so a second item on a line, or an item the first reading merged into its neighbour,
gets its own reading; only items whose spans are new are added. A window whose text is
unchanged is not read again (greedy decoding would repeat itself).

Like chunking, this module gets the Extractor passed in and imports no concrete tier.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from extract.errors import ConfigError
from extract.runtime.chunking import plan_chunks
from extract.runtime.grounding import ground_items
from extract.settings import Settings
from extract.spec import Spec, compile_spec
from extract.spec.prompt import Example
from extract.tiers.base import Tier, answer_listener
from extract.types import AttemptError, Chunk, Result
from extract.validate import check

__all__ = ["ItemRun", "Split", "failed_spans", "item_list_spec", "list_answer", "locate", "partial_items"]

Split = Literal["lines", "chunks"]
# ``empty``: text that was read and in which no item was found (an answer with no item there).
Status = Literal["ok", "rejected", "failed", "empty"]
# The most items one call may return: a line holds a few at most; a chunk up to a page.
LINE_MAX_ITEMS = 2
CHUNK_MAX_ITEMS = 64
_LINE = re.compile(r"[^\n]+")
_WORD = re.compile(r"\w+")


class _Chain(Protocol):
    settings: Settings
    tiers: list[Tier]

    async def arun(self, text: str, spec: Any) -> Result: ...


def item_list_spec(item: Any, max_items: int) -> tuple[Spec, Spec]:
    """(the item's Spec, the list wrapper's Spec) for ``item``, or a ConfigError naming why
    ``item`` cannot be an item (a regex or grammar, a list, an object without fields)."""
    spec = compile_spec(item)
    if not spec.is_json or spec.schema is None:
        raise ConfigError(f"extract_all needs an object spec for one item (a Pydantic model or a JSON Schema "
                          f"object); got a {spec.kind} spec")
    schema = spec.schema
    if schema.get("type") == "array" or ("items" in schema and "properties" not in schema):
        raise ConfigError("the item spec is itself a list: pass the spec of ONE item "
                          "(extract_all returns the list)")
    if not isinstance(schema.get("properties"), dict) or not schema["properties"]:
        raise ConfigError(f"the item spec {spec.name!r} has no fields (no 'properties'): there is nothing "
                          "to extract for an item")
    inner = copy.deepcopy(schema)
    defs = inner.pop("$defs", {})
    # Every nullable field is written (null where absent), as the local tier does for one object
    # zero-shot (``all_keys``): left to choose keys, the small model writes one or two and stops.
    required = list(inner.get("required", []))
    required += [k for k, v in inner["properties"].items() if k not in required and _nullable(v)]
    inner["required"] = required
    name = "ExtractItem"
    while name in defs:
        name += "_"
    wrapper: dict[str, Any] = {
        "type": "object",
        "title": f"list of {schema.get('title', spec.name)}",
        "description": "every item the document holds, in document order",
        "properties": {"items": {"type": "array", "items": {"$ref": f"#/$defs/{name}"}, "maxItems": max_items}},
        "required": ["items"],
        "$defs": {**defs, name: inner},
    }
    if inner.get("copy_from_input"):
        wrapper["copy_from_input"] = True  # span-copy marks sit on the root
    return spec, compile_spec(wrapper)


def list_answer(item: Any, answer: Any) -> Any:
    """A worked example's answer for ``run``, given as one item (a model instance or a dict)
    or as the list of the items its text holds, as the answer of a list window:
    ``{"items": [...]}`` with every nullable field written, as the list spec asks (a missing
    required field is left for the pool's validation to name)."""
    spec, _ = item_list_spec(item, LINE_MAX_ITEMS)
    assert spec.schema is not None
    props = spec.schema["properties"]

    def full(one: Any) -> Any:
        data = one.model_dump(mode="json") if isinstance(one, BaseModel) else one
        if not isinstance(data, dict):
            return data
        return {**data, **{k: None for k, v in props.items() if k not in data and _nullable(v)}}

    return {"items": [full(one) for one in answer] if isinstance(answer, list) else [full(answer)]}


def _nullable(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    t = node.get("type")
    if t == "null" or (isinstance(t, list) and "null" in t):
        return True
    return any(_nullable(s) for s in node.get("anyOf", []) + node.get("oneOf", []))


def partial_items(raw: str | None) -> list[Any]:
    """Every complete element of the ``items`` array in ``raw``, even when ``raw`` was cut
    inside a later element (a cut element is left out, never closed by guesswork)."""
    if not raw:
        return []
    m = re.search(r'"items"\s*:\s*\[', raw)
    if m is None:
        return []
    decoder = json.JSONDecoder()
    out: list[Any] = []
    i = m.end()
    while True:
        while i < len(raw) and raw[i] in " \t\r\n,":
            i += 1
        if i >= len(raw) or raw[i] == "]":
            return out
        try:
            value, i = decoder.raw_decode(raw, i)
        except json.JSONDecodeError:
            return out
        out.append(value)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _distinct_values(value: Any) -> int:
    leaves: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif v is not None and not (isinstance(v, str) and not v.strip()):
            leaves.add(json.dumps(v, ensure_ascii=False))

    walk(value)
    return len(leaves)


def _free(at: int, n: int, claimed: list[tuple[int, int]]) -> bool:
    return not any(at < e and s < at + n for s, e in claimed)


def locate(value: Any, text: str, start: int, end: int, floor: int,
           claimed: list[tuple[int, int]] | None = None) -> tuple[tuple[int, int] | None, list[tuple[int, int]]]:
    """Where in ``text[start:end]`` an item was read: (its span, the places of its values).

    Each distinct string value is taken at its first place at or after ``floor`` that no
    other item of the same answer holds (``claimed``), else at its first free place in the
    window; a value with no free place is not located. The span runs from the first to the
    last located value; None when no value is located (a value the model did not copy).
    """
    claimed = claimed or []
    places: list[tuple[int, int]] = []
    for s in dict.fromkeys(_strings(value)):
        at = -1
        for lo in (max(floor, start), start):
            at = text.find(s, lo, end)
            while at != -1 and not _free(at, len(s), claimed):
                at = text.find(s, at + 1, end)
            if at != -1:
                break
        if at != -1:
            places.append((at, at + len(s)))
    if not places:
        return None, []
    return (min(p[0] for p in places), max(p[1] for p in places)), places


@dataclass
class Found:
    """One span of the document and what became of it."""

    start: int
    end: int
    status: Status
    value: Any = None
    window: int = 0
    pass_: int = 1
    whole: bool = True  # the window holds the span with room on both sides (not cut by its edge)
    located: bool = True
    error: AttemptError | None = None

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {"start": self.start, "end": self.end, "status": self.status,
                               "window": self.window, "pass": self.pass_}
        if not self.located:
            out["located"] = False
        if self.error is not None:
            out["error"] = self.error.model_dump(mode="json")
        return out


def _uncovered(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The stretches of ``text[start:end]`` outside every span that hold a letter or a digit
    (punctuation and space between two items is no item), trimmed of surrounding space."""
    out: list[tuple[int, int]] = []
    at = start
    for s, e in sorted([*spans, (end, end)]):
        if s > at:
            piece = text[at:min(s, end)]
            if any(ch.isalnum() for ch in piece):
                lead = len(piece) - len(piece.lstrip())
                out.append((at + lead, at + len(piece.rstrip())))
        at = max(at, e)
        if at >= end:
            break
    return out


def _overlaps(a: Found, b: Found) -> bool:
    if not (a.located and b.located):  # a window-wide span says nothing: the same value twice is one
        return (a.start, a.end) == (b.start, b.end) and _json_of(a.value) == _json_of(b.value)
    inter = min(a.end, b.end) - max(a.start, b.start)
    shorter = max(1, min(a.end - a.start, b.end - b.start))
    return inter > shorter / 2 or (a.start, a.end) == (b.start, b.end)


def _json_of(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


class _Reading:
    """One answer's items judged in order: each is checked against the item spec, located in
    the window (at or after the previous item's place, at places no earlier item of this
    answer holds) and kept, rejected or failed. The same judgement runs on a streamed answer
    element by element (``_Listener``) and on the whole answer after the call, so an item
    handed out early is the item the window keeps."""

    def __init__(self, run: ItemRun, text: str, cursor: int, ws: int, we: int, index: int, pass_: int) -> None:
        self.run, self.text, self.cursor, self.ws, self.we = run, text, cursor, ws, we
        self.index, self.pass_ = index, pass_
        self.floor = cursor
        self.claimed: list[tuple[int, int]] = []  # places of the text this answer's items hold
        self.step: list[Found] = []

    def add(self, raw_item: Any) -> Found | None:
        """Judge the next item of the answer; the Found when it is a new entry of ``step``."""
        text, cursor, ws, we, index, pass_ = self.text, self.cursor, self.ws, self.we, self.index, self.pass_
        need = self.run.need_fields
        checked = check(json.dumps(raw_item, ensure_ascii=False), self.run.item_spec)
        span, places = locate(raw_item, text, cursor, we, self.floor, self.claimed)
        located = span is not None
        s, e = span if span is not None else (cursor, we)
        # Values the text holds only once count once: an item made of places another
        # item already holds is a repetition (a small model's loop), not an item.
        fresh = len(places) + _distinct_values(raw_item) - len(set(_strings(raw_item)))
        if not any(text.find(v, cursor, we) != -1 for v in _strings(raw_item)):
            fresh = _distinct_values(raw_item)  # nothing copied: the places say nothing
        if checked.error is not None:
            f = Found(s, e, "failed", window=index, pass_=pass_, located=located, error=checked.error)
        elif fresh < need:
            f = Found(s, e, "rejected", checked.value, index, pass_, located=located, error=AttemptError(
                type="too_few_fields",
                message=f"fewer than {need} distinct values at places no other item "
                "holds: read as no item (a heading, a salutation, a repetition)"))
        else:
            f = Found(s, e, "ok", checked.value, index, pass_, located=located)
            self.claimed += places
        f.whole = (s > ws or ws == 0) and (e < we or we == len(text))
        if located:
            self.floor = max(self.floor, s + 1)
        if any(_overlaps(f, g) for g in self.step if g.status == f.status):
            return None
        self.step.append(f)
        return f

    def again(self) -> _Reading:
        """The same window, judged from its first item (a new answer to it)."""
        return _Reading(self.run, self.text, self.cursor, self.ws, self.we, self.index, self.pass_)


class _Listener:
    """Hears a tier's answer as it is written (``Task.on_text``, on the event loop) and hands
    every newly complete element of its ``items`` array, judged, to ``early``. An answer that
    does not go on from the last one heard is a new attempt (a retry, the next tier): its
    elements are judged afresh."""

    def __init__(self, reading: _Reading, early: Callable[[Found], None]) -> None:
        self.reading = reading
        self.early = early
        self.heard = ""
        self.elements = 0

    def hear(self, raw: str) -> None:
        if not raw.startswith(self.heard):
            self.reading = self.reading.again()
            self.elements = 0
        elif "}" not in raw[len(self.heard):]:  # no element can have ended since
            self.heard = raw
            return
        self.heard = raw
        items = partial_items(raw)
        for raw_item in items[self.elements:]:
            f = self.reading.add(raw_item)
            if f is not None:
                self.early(f)
        self.elements = len(items)


class _Handout:
    """The items of one window handed out while its answer is still being written (the
    ``early`` of ``_read_window``): an ``ok`` item goes out at once when nothing the rest of
    the document holds can change it, i.e. no later window reaches it, no item before it is
    still held back, and it starts after the last item handed out (document order). The
    others wait for the window's end, as without streaming."""

    def __init__(self, run: ItemRun, pass_: int, nxt_start: int, held: list[Found]) -> None:
        self.run, self.pass_, self.nxt_start, self.held = run, pass_, nxt_start, held
        self.ready: asyncio.Queue[Found] = asyncio.Queue()
        self.handed: list[Found] = []

    def __call__(self, f: Found) -> None:
        run = self.run
        if (f.status != "ok" or not f.located or self.held or f.end > self.nxt_start or f.start < run._last_start
                or (self.pass_ > 1 and any(_overlaps(f, g) for g in run.kept))):
            return
        if run._keep(f) is f:
            self.handed.append(f)
            self.ready.put_nowait(f)
            run._last_start = f.start


@dataclass
class ItemRun:
    """One ``run_all``: iterate ``stream()`` for items as they validate, then ``result()``."""

    chain: _Chain
    text: str
    item: Any
    passes: int = 1
    split: Split = "lines"
    min_fields: int = 2
    # The largest choice of worked examples a window's prompt may show (an Extractor's pool),
    # counted when a line is sized against the context.
    plan_examples: Callable[[Spec], list[Example]] | None = None
    kept: list[Found] = field(default_factory=list)
    dropped: list[Found] = field(default_factory=list)
    calls: list[Chunk] = field(default_factory=list)
    skipped_windows: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.passes, int) or isinstance(self.passes, bool) or self.passes < 1:
            raise ConfigError(f"passes must be a whole number of at least 1, got {self.passes!r}")
        if self.split not in ("lines", "chunks"):
            raise ConfigError(f"split must be 'lines' or 'chunks', got {self.split!r}")
        if not isinstance(self.min_fields, int) or self.min_fields < 1:
            raise ConfigError(f"min_fields must be a whole number of at least 1, got {self.min_fields!r}")
        self.max_items = LINE_MAX_ITEMS if self.split == "lines" else CHUNK_MAX_ITEMS
        self.item_spec, self.list_spec = item_list_spec(self.item, self.max_items)
        assert self.item_spec.schema is not None
        self.need_fields = min(self.min_fields, len(self.item_spec.schema["properties"]))
        self._read: set[tuple[int, str]] = set()  # (start, text) read (a rereading repeats itself)
        self._last_start = -1  # where the last item handed out in this pass starts

    def _bound(self, piece: str) -> int:
        """The most items one answer on ``piece`` may hold: a few per line. A small model that
        repeats an item runs to the bound, so a tight bound is time saved; an answer that
        reaches it is read on from its last item, so a tight bound loses nothing."""
        if self.split == "lines":
            return LINE_MAX_ITEMS
        lines = sum(1 for line in piece.splitlines() if line.strip())
        return min(CHUNK_MAX_ITEMS, max(4, LINE_MAX_ITEMS * lines))

    def _spec_for(self, piece: str) -> Spec:
        bound = self._bound(piece)
        if bound == self.max_items:
            return self.list_spec
        return item_list_spec(self.item, bound)[1]

    # -- windows -------------------------------------------------------------------------
    async def _windows(self, text: str) -> list[tuple[int, int]]:
        examples = self.plan_examples(self.list_spec) if self.plan_examples is not None else []
        if self.split == "lines":
            out = []
            for m in _LINE.finditer(text):
                s, e = m.start(), m.end()
                while s < e and text[s].isspace():
                    s += 1
                while e > s and text[e - 1].isspace():
                    e -= 1
                if e > s:
                    out.append((s, e))
            # A line longer than the context is read in overlapping token chunks like a text.
            windows: list[tuple[int, int]] = []
            for s, e in self._too_short(text, out):
                sub = await asyncio.to_thread(plan_chunks, text[s:e], self.list_spec, self.chain.settings,
                                              self.chain.tiers, examples)
                windows += [(s + a, s + b) for a, b in sub] if sub is not None else [(s, e)]
            return windows
        spans = await asyncio.to_thread(plan_chunks, text, self.list_spec, self.chain.settings,
                                        self.chain.tiers, examples)
        return spans if spans is not None else [(0, len(text))]

    def _too_short(self, text: str, lines: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """``lines`` less those with fewer words than the ``need_fields`` values an item needs
        (a one-word heading): those are named ``empty`` (``too_short``) and not sent. Read
        alone, such a line cost a call before the first reference, and the time to the first
        item doubled (measured on the native tier: 2.17x one single extraction); read with
        the next line, the 135M model took the heading for the item's name."""
        out = []
        for s, e in lines:
            if len(_WORD.findall(text, s, e)) >= self.need_fields:
                out.append((s, e))
            else:
                self._keep(Found(s, e, "empty", error=AttemptError(
                    type="too_short", message=f"fewer words than the {self.need_fields} values an item "
                    "needs: not sent to the model")))
        return out

    # -- one window --------------------------------------------------------------------
    async def _read_window(self, text: str, index: int, ws: int, we: int, pass_: int,
                           early: Callable[[Found], None] | None = None) -> list[Found]:
        """Every item of ``text[ws:we]``, continuing after a cut answer; appends to ``calls``.

        ``early`` is handed each item the answer holds as soon as its element is written and
        judged (``ok`` or not), before the call returns, where a tier streams its answer."""
        found: list[Found] = []
        cursor, continuation = ws, 0
        read = False
        while cursor < we and text[cursor:we].strip():
            piece = text[cursor:we]
            if (cursor, piece) in self._read:  # an earlier pass read this very text here
                self.skipped_windows += 1
                break
            self._read.add((cursor, piece))
            read = True
            listening = None
            if early is not None:  # items judged as the answer is written, the same way as below
                listening = answer_listener.set(_Listener(_Reading(self, text, cursor, ws, we, index, pass_),
                                                          early).hear)
            try:
                res = await self.chain.arun(piece, self._spec_for(piece))
            finally:
                if listening is not None:
                    answer_listener.reset(listening)
            for a in res.attempts:
                a.meta.update({"window": index, "window_start": cursor, "window_end": we,
                               "continuation": continuation, "pass": pass_})
            self.calls.append(Chunk(start=cursor, end=we, result=res))
            source = next((a for a in res.attempts if a.ok), None)
            if source is None:
                source = next((a for a in reversed(res.attempts) if a.raw and not a.skipped), None)
            cut = source is not None and (source.finish_reason == "length"
                                          or (source.error is not None and source.error.type == "truncated"))
            if res.ok and not cut:
                raws = [_json_of(v) for v in _json_of(res.value)["items"]]
            elif cut and source is not None:
                raws = partial_items(source.raw)
            else:
                last = res.attempts[-1] if res.attempts else None
                found.append(Found(cursor, we, "failed", window=index, pass_=pass_, error=(
                    last.error if last is not None and last.error is not None
                    else AttemptError(type="no_value", message="no tier produced a value"))))
                break
            reading = _Reading(self, text, cursor, ws, we, index, pass_)
            for raw_item in raws:
                reading.add(raw_item)
            step = reading.step
            oks = [f for f in step if f.status == "ok"]
            if self.split == "lines" and not cut and len(oks) == 1 and continuation == 0:
                # A line read whole as one item is that item's text: its span is the line, not
                # just first to last value (a reference's author the model left out is still
                # part of it), so a second pass does not read the rest of it as a new item.
                oks[0].start, oks[0].end = ws, we
                step = [f for f in step if f is oks[0] or not _overlaps(f, oks[0])]
            found.extend(step)
            complete = [f for f in step if f.located]
            if not (cut or sum(f.status == "ok" for f in step) >= self._bound(piece)):
                break
            if not complete:
                found.append(Found(cursor, we, "failed", window=index, pass_=pass_, error=AttemptError(
                    type="truncated", message="the answer was cut before its first item was complete; "
                    "raise max_tokens")))
                break
            nxt = max(f.end for f in complete)
            # The item's span runs from its first to its last value; what is left of its line
            # when that is shorter than the item is its tail (" in London."), not a new item,
            # and a reading that starts inside it sends a small model astray.
            eol = text.find("\n", nxt, we)
            tail = max(complete, key=lambda f: f.end)
            if eol != -1 and eol - nxt < tail.end - tail.start:
                nxt = eol + 1
            if nxt <= cursor:
                break
            cursor, continuation = nxt, continuation + 1
        if read:  # what no answer placed an item on is named too: nothing goes silently
            found += [Found(a, b, "empty", window=index, pass_=pass_, error=AttemptError(
                type="no_item", message="read, but no item was found in this text"))
                for a, b in _uncovered(text, ws, we, [(f.start, f.end) for f in found])]
        return found

    def _keep(self, f: Found) -> Found | None:
        """Add ``f`` unless an item with its span is kept; the copy a window holds whole wins.
        Returns the item it replaced or ``f`` itself when kept, None when ``f`` was a duplicate."""
        if f.status != "ok":
            if not any((f.start, f.end, f.status) == (g.start, g.end, g.status) for g in self.dropped):
                self.dropped.append(f)
            return None
        for i, g in enumerate(self.kept):
            if _overlaps(f, g):
                if f.whole and not g.whole:
                    self.kept[i] = f
                    return g
                return None
        self.kept.append(f)
        return f

    # -- the run -----------------------------------------------------------------------
    async def stream(self, *, as_written: bool = True) -> AsyncIterator[Any]:
        """Each item's value as soon as its window (or the next window's overlap) settles it,
        in document order within a pass.

        ``as_written``: where a tier streams its answer (the local fast decoder; a remote
        endpoint, which is then asked for a streamed response), an item is handed out as soon
        as its element is written and judged, before the window's call returns (``_Handout``).
        ``run_all`` passes False: nobody reads before the end, so no endpoint streams."""
        text = self.text
        for pass_ in range(1, self.passes + 1):
            if pass_ > 1:
                text = self._masked()
                if not text.strip():
                    break
            windows = await self._windows(text)
            held: list[Found] = []
            self._last_start = -1
            for index, (ws, we) in enumerate(windows):
                nxt_start = windows[index + 1][0] if index + 1 < len(windows) else len(text)
                handout = _Handout(self, pass_, nxt_start, held)
                ready, handed = handout.ready, handout.handed
                reading = asyncio.ensure_future(self._read_window(text, index, ws, we, pass_,
                                                                  handout if as_written else None))
                try:
                    while True:
                        get = asyncio.ensure_future(ready.get())
                        await asyncio.wait({reading, get}, return_when=asyncio.FIRST_COMPLETED)
                        if not get.done():
                            get.cancel()
                            break
                        yield get.result().value
                    while not ready.empty():
                        yield ready.get_nowait().value
                    found = reading.result()
                finally:
                    if not reading.done():  # the caller stopped reading: stop the window's call
                        reading.cancel()
                for f in found:
                    twin = next((g for g in handed if f.status == "ok" and _overlaps(f, g)
                                 and _json_of(f.value) == _json_of(g.value)), None)
                    if twin is not None:  # handed out already: the window's reading settles its span
                        twin.start, twin.end, twin.whole = f.start, f.end, f.whole
                        continue
                    if f.status == "ok" and pass_ > 1 and any(_overlaps(f, g) for g in self.kept):
                        continue
                    outcome = self._keep(f)
                    if outcome is f:
                        held.append(f)
                    elif outcome is not None and outcome in held:  # replaced by a whole copy
                        held[held.index(outcome)] = f
                held.sort(key=lambda g: g.start)
                while held and held[0].end <= nxt_start:
                    self._last_start = held[0].start
                    yield held.pop(0).value
            for f in sorted(held, key=lambda g: g.start):
                yield f.value

    def _masked(self) -> str:
        chars = list(self.text)
        for f in self.kept:
            for i in range(f.start, f.end):
                if chars[i] != "\n":
                    chars[i] = " "
        return "".join(chars)

    def _named(self, kept: list[Found]) -> list[Found]:
        """Every span that was read but gave no item, less what the kept items hold: a failed
        window, a rejected item or an empty stretch is named by what is left of it (a window
        that failed beside an item found in the next window's overlap still names the rest
        of its text). Empty stretches found by overlapping windows are merged, and left out
        where a failed or rejected entry already names the text."""
        taken = [(f.start, f.end) for f in kept]
        out: list[Found] = []
        for f in self.dropped:
            if f.status == "empty":
                continue
            for a, b in _uncovered(self.text, f.start, f.end, taken):
                out.append(dataclasses.replace(f, start=a, end=b))
        empties = sorted((f for f in self.dropped if f.status == "empty"), key=lambda f: f.start)
        merged: list[Found] = []
        for f in empties:
            if merged and f.start <= merged[-1].end:
                merged[-1].end = max(merged[-1].end, f.end)
            else:
                merged.append(dataclasses.replace(f))
        named = taken + [(f.start, f.end) for f in out]
        for f in merged:
            for a, b in _uncovered(self.text, f.start, f.end, named):
                out.append(dataclasses.replace(f, start=a, end=b))
        return sorted(out, key=lambda f: f.start)

    def result(self) -> Result:
        """The Result: ``value`` the items in document order, ``items`` every span's fate,
        ``fields`` every item's values with their places in the text."""
        kept = sorted(self.kept, key=lambda f: f.start)
        dropped = self._named(kept)
        attempts = [a for c in self.calls for a in c.result.attempts]
        tiers = sorted({c.result.tier for c in self.calls if c.result.tier})
        any_ok = any(c.result.ok for c in self.calls)
        entries = sorted([f.entry() for f in kept] + [f.entry() for f in dropped],
                         key=lambda e: (e["start"], e["status"] != "ok"))
        # Each item's values aligned inside its span: ``fields`` at /<item>/..., offsets into the text.
        return ground_items(Result(
            value=[f.value for f in kept],
            tier="+".join(tiers) if any_ok or not self.calls else None,
            attempts=attempts,
            chunks=self.calls,
            items=entries,
        ), self.text)


def failed_spans(result: Result) -> list[dict[str, Any]]:
    """The spans of ``result`` whose reading failed (not rejected: those were read as no item)."""
    return [e for e in result.items if e["status"] == "failed"]

