"""Span reuse: a copied value may not take characters of the input another value already took.

Span-copy makes every copied string a span of the input, but not a different span for each
field. Measured on user-written address schemas (benchmarks/zero_shot.py, embedded 135M
model), the commonest error with span-copy was repetition: once a value is written the model
copies it into the next fields ("ATLANTA" as street, type, unit, city and state). A schema of
spans usually describes a segmentation: its fields take different pieces of the text.

JSON Schema cannot say "different from the other fields", and a grammar that tracked which
characters are taken would need a state per subset of the input. The decoder can: a
``SpanGuard`` follows the JSON as it is decoded, and while a copied string value is open it
answers whether a candidate token still leads to a span of the input that does not overlap
(``disjoint``) — or, more leniently, is not the same occurrence as (``distinct``) — the
characters earlier copied values took. A value takes the first occurrence of its text that
is still free. Only the paths span-copy constrains are guarded, so free-text fields and
computed values are never touched; ``null`` stays allowed wherever the schema allows it.

The guard is a decoding-time lever of the llama.cpp fast decoder (``LocalModel.generate``'s
``guard``); remote tiers are not constrained by it.
"""

from __future__ import annotations

import bisect
import codecs
import json
from typing import Literal

from extract.spec.span_copy import span_occurrences

__all__ = ["SpanGuard"]

ReuseMode = Literal["disjoint", "distinct", "allow"]


class _Frame:
    __slots__ = ("expect_key", "is_obj", "key")

    def __init__(self, is_obj: bool) -> None:
        self.is_obj = is_obj
        self.expect_key = is_obj
        self.key: str | None = None


class SpanGuard:
    """Follows decoded JSON text and vetoes tokens that would copy taken characters again.

    ``paths``: the dotted paths span-copy constrains (``span_copy.copy_paths``); list items
    share their list's path. The decoder calls ``feed`` with every token's bytes it keeps
    and ``allows`` with a candidate's bytes before taking it.
    """

    def __init__(self, text: str, paths: list[str], mode: ReuseMode = "disjoint") -> None:
        self.mode = mode
        self.paths = frozenset(paths)
        self.occurrences = span_occurrences(text)
        self.used: list[tuple[int, int]] = []
        self._spans = sorted(self.occurrences)  # every span, for bisecting by prefix
        self._available = self._spans
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stack: list[_Frame] = []
        self._in_string = False
        self._escape = False
        self._is_key = False
        self._buffer: list[str] = []  # the open string's raw (escaped) characters

    # --- following the JSON ------------------------------------------------------------
    def _path(self) -> str:
        return ".".join(f.key for f in self._stack if f.is_obj and f.key is not None)

    def feed(self, piece: bytes) -> None:
        for ch in self._decoder.decode(piece):
            self._char(ch)

    def _char(self, ch: str, dry: bool = False) -> bool:
        """Advance by one character; False when (``dry``) it closes a value on a taken span."""
        if self._in_string:
            if self._escape:
                self._escape = False
            elif ch == "\\":
                self._escape = True
            elif ch == '"':
                self._in_string = False
                return self._close_string("".join(self._buffer), dry)
            self._buffer.append(ch)
            return True
        top = self._stack[-1] if self._stack else None
        if ch == '"':
            self._in_string = True
            self._is_key = top is not None and top.is_obj and top.expect_key
            self._buffer = []
        elif ch in "{[":
            self._stack.append(_Frame(ch == "{"))
        elif ch in "}]":
            if self._stack:
                self._stack.pop()
        elif ch == "," and top is not None and top.is_obj:
            top.expect_key = True
        elif ch == ":" and top is not None and top.is_obj:
            top.expect_key = False
        return True

    def _guarded_value(self) -> bool:
        return self._in_string and not self._is_key and self._path() in self.paths

    def _close_string(self, raw: str, dry: bool) -> bool:
        top = self._stack[-1] if self._stack else None
        if self._is_key:
            if top is not None:
                top.key = _unescape(raw)
            return True
        if self._path() not in self.paths:
            return True
        value = _unescape(raw)
        if value is None:
            return True
        if dry:
            return self._free_span(value)
        spots = self.occurrences.get(value)
        if spots:
            free = [s for s in spots if self._free(s)]
            self.used.append(free[0] if free else spots[0])
            self._available = [s for s in self._spans if any(self._free(o) for o in self.occurrences[s])]
        return True

    def _free(self, spot: tuple[int, int]) -> bool:
        if self.mode == "distinct":
            return spot not in self.used
        return all(spot[1] <= a or spot[0] >= b for a, b in self.used)

    def _free_span(self, value: str) -> bool:
        i = bisect.bisect_left(self._available, value)
        return i < len(self._available) and self._available[i] == value

    def _clone(self) -> SpanGuard:
        twin = object.__new__(SpanGuard)
        twin.mode, twin.paths, twin.occurrences = self.mode, self.paths, self.occurrences
        twin.used, twin._spans, twin._available = self.used, self._spans, self._available
        twin._decoder = self._decoder
        twin._stack = []
        for f in self._stack:
            g = _Frame(f.is_obj)
            g.expect_key, g.key = f.expect_key, f.key
            twin._stack.append(g)
        twin._in_string, twin._escape, twin._is_key = self._in_string, self._escape, self._is_key
        twin._buffer = list(self._buffer)
        return twin

    # --- vetoing ---------------------------------------------------------------------------
    def allows(self, piece: bytes) -> bool:
        """Whether appending ``piece`` keeps every copied value on the way to a free span.

        The piece is played on a copy of the state, so a token that opens a value and starts
        it (``"DR``) or finishes it and goes on (``DR",``) is judged like any other.
        """
        if self.mode == "allow" or not self.used:
            return True
        try:
            added = piece.decode("utf-8")
        except UnicodeDecodeError:
            return True  # part of a character: judged with the next piece
        if not self._in_string and '"' not in added:
            return True
        sim = self._clone()
        for ch in added:
            if not sim._char(ch, dry=True):
                return False
        if not sim._guarded_value() or sim._escape or any("\\" in c for c in sim._buffer):
            return True  # no copied value open (or an escape: left to the grammar)
        prefix = "".join(sim._buffer)
        i = bisect.bisect_left(self._available, prefix)
        return i < len(self._available) and self._available[i].startswith(prefix)


def _unescape(raw: str) -> str | None:
    try:
        value = json.loads(f'"{raw}"')
    except ValueError:
        return None
    return value if isinstance(value, str) else None
