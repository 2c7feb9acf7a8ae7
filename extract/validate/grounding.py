"""Grounding: every leaf value of a result located in the caller's text, with its confidence.

Why here: it reads a validated value and the text it came from, like ``check``; it needs no
model. Alignment runs in three passes so that the common case is cheap and the rare one is not
quadratic:

1. **exact**: ``str.find`` of the value as written (C speed);
2. **normalized**: the same search in a normalized copy of the text (NFKD, combining marks
   dropped, casefolded, every run of whitespace, punctuation or control characters one space)
   built once per text with a map from each normalized character back to its original offsets,
   so a match reads back to the caller's own string even with combining accents, CJK, emoji,
   lone surrogates, NUL bytes and CRLF;
3. **fuzzy**, only for what is left: candidate windows anchored on the text's words that equal,
   or share trigrams with, a word of the value (an inverted index, never a scan of every
   window), scored with ``difflib``; the spans are the words that matched, so a value assembled
   from words that stand apart gets several spans.

Numbers are found where a number with the same value is written (``1,200`` for 1200), dates
where one of their usual written forms stands, booleans where ``true``/``yes`` or
``false``/``no`` does; otherwise they are ``not_found`` like an invented string.

Confidence comes from the tier (``value_confidences`` maps per-token log-probabilities of the
raw JSON output onto JSON pointers); grounding never invents one.

Imports only ``types``.
"""

from __future__ import annotations

import difflib
import enum
import json
import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime, time
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from extract.types import FieldGrounding

__all__ = [
    "FUZZY_MIN_SCORE",
    "TextIndex",
    "ground_value",
    "json_leaf_spans",
    "leaves",
    "pointer",
    "token_confidences",
    "value_confidences",
]

# Below this difflib ratio a candidate window is not the value: measured on usaddress values
# with one typo (0.8-0.95) against neighbouring unrelated words (< 0.6).
FUZZY_MIN_SCORE = 0.75
# A value with more occurrences than this is located at the first unused ones among them.
_MAX_OCCURRENCES = 64
_MAX_CANDIDATES = 24
_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"(?<![\w.,])[-+]?\d[\d,. \u00a0']*\d(?![\d])|(?<![\w.,])[-+]?\d")
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]


def pointer(parts: Sequence[str | int]) -> str:
    """The JSON pointer (RFC 6901) of ``parts``."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def leaves(value: Any) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every non-null, non-empty leaf of ``value`` with its path (models by alias, lists, dicts)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True)
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    out: list[tuple[tuple[str | int, ...], Any]] = []
    while stack:
        path, node = stack.pop()
        if isinstance(node, BaseModel):
            node = node.model_dump(by_alias=True)
        if isinstance(node, dict):
            stack.extend(((*path, str(k)), v) for k, v in reversed(list(node.items())))
        elif isinstance(node, (list, tuple)):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(node))))
        elif node is not None and node != "":
            out.append((path, node.value if isinstance(node, enum.Enum) else node))
    yield from out


class TextIndex:
    """A text prepared for alignment once: its normalized copy, offset maps, word and number indexes."""

    def __init__(self, text: str) -> None:
        self.text = text
        chars: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        space = True  # leading separators are dropped
        for i, ch in enumerate(text):
            for piece in _fold(ch):
                if piece == " ":
                    if not space:
                        chars.append(" ")
                        starts.append(i)
                        ends.append(i + 1)
                        space = True
                    continue
                if piece == "":  # a combining mark: part of the character before it
                    if ends and not space:
                        ends[-1] = i + 1
                    continue
                chars.append(piece)
                starts.append(i)
                ends.append(i + 1)
                space = False
        self.norm = "".join(chars)
        self.starts = starts
        self.ends = ends
        self._words: dict[str, list[int]] | None = None
        self._word_spans: list[tuple[int, int]] = []
        self._trigrams: dict[str, set[str]] | None = None
        self._numbers: dict[float, list[tuple[int, int]]] | None = None

    def original(self, a: int, b: int) -> tuple[int, int]:
        """The span of the caller's text that normalized ``[a, b)`` came from."""
        return self.starts[a], self.ends[b - 1]

    # --- indexes built on first use -------------------------------------------------------
    def words(self) -> dict[str, list[int]]:
        """Normalized word -> word numbers (positions in ``_word_spans``)."""
        if self._words is None:
            self._words = defaultdict(list)
            for n, m in enumerate(_WORD.finditer(self.norm)):
                self._word_spans.append((m.start(), m.end()))
                self._words[m.group()].append(n)
        return self._words

    def similar_words(self, word: str, limit: int = 3) -> list[str]:
        """The text's words sharing the most trigrams with ``word`` (misspellings)."""
        if self._trigrams is None:
            self._trigrams = defaultdict(set)
            for w in self.words():
                for g in _grams(w):
                    self._trigrams[g].add(w)
        counts: dict[str, int] = defaultdict(int)
        for g in _grams(word):
            for w in self._trigrams.get(g, ()):
                counts[w] += 1
        best = sorted(counts, key=lambda w: (-counts[w], w))[:limit]
        return [w for w in best if difflib.SequenceMatcher(None, word, w).ratio() >= 0.6]

    def numbers(self) -> dict[float, list[tuple[int, int]]]:
        """Every number written in the text, by value, with its original span."""
        if self._numbers is None:
            self._numbers = defaultdict(list)
            for m in _NUMBER.finditer(self.text):
                written = m.group().rstrip(" \u00a0'.,")
                for v in _readings(written):
                    self._numbers[v].append((m.start(), m.start() + len(written)))
        return self._numbers


@lru_cache(maxsize=1 << 16)
def _fold(ch: str) -> tuple[str, ...]:
    """What one character becomes in the normalized text: pieces, " " (separator) or "" (mark).

    Cached: a text repeats few distinct characters, so this is a dict lookup per character.
    """
    if ch.isspace():
        return (" ",)
    cat = unicodedata.category(ch)
    if cat[0] == "P" or cat in ("Cc", "Cf", "Zl", "Zp", "Zs"):
        return (" ",)
    if cat == "Cs":  # a lone surrogate: kept as itself
        return (ch,)
    if cat[0] == "M":
        return ("",)
    out: list[str] = []
    for d in unicodedata.normalize("NFKD", ch):
        if unicodedata.category(d)[0] == "M":
            continue
        out.extend(d.casefold())
    return tuple(out) or ("",)


def normalize(s: str) -> str:
    """``s`` as ``TextIndex`` normalizes a text (the form values are searched in)."""
    out: list[str] = []
    space = True
    for ch in s:
        for piece in _fold(ch):
            if piece == " ":
                if not space:
                    out.append(" ")
                    space = True
            elif piece:
                out.append(piece)
                space = False
    return "".join(out).strip()


def _grams(word: str) -> set[str]:
    w = f" {word} "
    return {w[i:i + 3] for i in range(len(w) - 2)}


def _readings(written: str) -> set[float]:
    """The values a written number can mean (``1,200`` is 1200; ``3,5`` is 3.5 or 35)."""
    s = written.replace("\u00a0", " ").replace("'", "")
    out: set[float] = set()
    for thousands, decimal in ((",", "."), (".", ","), (" ", "."), (" ", ",")):
        t = s.replace(thousands, "").replace(decimal, ".")
        try:
            out.add(float(t))
        except ValueError:
            pass
    try:
        out.add(float(s.replace(" ", "")))
    except ValueError:
        pass
    return {v for v in out if math.isfinite(v)}


def _written_forms(value: Any) -> list[str]:
    """Strings under which a non-string value may stand in a text, most likely first."""
    if isinstance(value, bool):
        return ["true", "yes"] if value else ["false", "no"]
    if isinstance(value, datetime):
        return [value.isoformat(), value.strftime("%Y-%m-%d %H:%M"), *_date_forms(value.date())]
    if isinstance(value, date):
        return _date_forms(value)
    if isinstance(value, time):
        return [value.isoformat(), value.strftime("%H:%M")]
    return [str(value)]


def _date_forms(d: date) -> list[str]:
    month = _MONTHS[d.month - 1]
    return [d.isoformat(), f"{month} {d.day}, {d.year}", f"{d.day} {month} {d.year}", f"{month[:3]} {d.day}, {d.year}",
            f"{d.day} {month[:3]} {d.year}", f"{d.month}/{d.day}/{d.year}", f"{d.day}/{d.month}/{d.year}",
            f"{d.month:02d}/{d.day:02d}/{d.year}", f"{d.day:02d}.{d.month:02d}.{d.year}", f"{month} {d.year}"]


_DATE_FORMATS = ("%Y-%m-%d", "%B %d, %Y", "%b %d, %Y", "%d %B %Y", "%d %b %Y", "%m/%d/%Y", "%d.%m.%Y")


def _as_date(s: str) -> date | None:
    """The date a string value spells in one of the usual forms, else None."""
    if not (6 <= len(s) <= 20) or not any(c.isdigit() for c in s):
        return None
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(s.strip(), fmt).date()
        except ValueError:
            continue
    return None


class _Aligner:
    """One text's alignment state: which occurrences earlier values already took."""

    def __init__(self, index: TextIndex) -> None:
        self.index = index
        self.used: set[tuple[int, int]] = set()

    def _pick(self, spans: list[tuple[int, int]]) -> tuple[int, int] | None:
        """The first span no earlier value took, else the first (two fields may share words)."""
        if not spans:
            return None
        for span in spans:
            if span not in self.used:
                self.used.add(span)
                return span
        return spans[0]

    def exact(self, needle: str) -> tuple[int, int] | None:
        return self._search(self.index.text, needle, None)

    def _search(self, hay: str, needle: str, index: TextIndex | None) -> tuple[int, int] | None:
        """The first occurrence of ``needle`` in ``hay`` at word boundaries that no earlier value
        took (else the first bounded one, else the first), as an original span; stops there."""
        first: tuple[int, int] | None = None
        first_bounded: tuple[int, int] | None = None
        start = hay.find(needle)
        seen = 0
        while start != -1 and seen < _MAX_OCCURRENCES:
            seen += 1
            end = start + len(needle)
            span = (start, end) if index is None else index.original(start, end)
            first = first or span
            if _boundary(hay, start, end):
                if span not in self.used:
                    self.used.add(span)
                    return span
                first_bounded = first_bounded or span
            start = hay.find(needle, start + 1)
        return first_bounded or first

    def normalized(self, needle: str) -> tuple[int, int] | None:
        norm = normalize(needle)
        if not norm:
            return None
        return self._search(self.index.norm, norm, self.index)

    def number(self, value: float) -> tuple[int, int] | None:
        """Where a number with this value is written, as JSON writes it first (``2024``
        before ``2,024``)."""
        spans = self.index.numbers().get(float(value), [])
        written = _json_scalar(value)
        text = self.index.text
        return self._pick(sorted(spans, key=lambda s: text[s[0]:s[1]] != written))

    def fuzzy(self, needle: str) -> tuple[list[tuple[int, int]], float] | None:
        """The best window of the text's words for ``needle`` (score >= FUZZY_MIN_SCORE)."""
        norm = normalize(needle)
        vwords = _WORD.findall(norm)
        if not vwords:
            return None
        index = self.index
        words = index.words()
        spans = index._word_spans
        anchors: dict[int, int] = {}  # window start (word number) -> anchoring hits
        for offset, vw in enumerate(vwords):
            for w in [vw] if vw in words else index.similar_words(vw):
                for n in words.get(w, [])[:_MAX_OCCURRENCES]:
                    anchors[n - offset] = anchors.get(n - offset, 0) + 1
        best: tuple[float, int, int] | None = None
        for s in sorted(anchors, key=lambda s: (-anchors[s], s))[:_MAX_CANDIDATES]:
            for length in {len(vwords) - 1, len(vwords), len(vwords) + 1}:
                a, b = max(0, s), min(len(spans), s + max(1, length))
                if a >= b:
                    continue
                window = index.norm[spans[a][0]:spans[b - 1][1]]
                matcher = difflib.SequenceMatcher(None, norm, window, autojunk=False)
                bar = FUZZY_MIN_SCORE if best is None else max(FUZZY_MIN_SCORE, best[0])
                if matcher.real_quick_ratio() < bar or matcher.quick_ratio() < bar:
                    continue  # cheap upper bounds: this window cannot win
                score = matcher.ratio()
                if best is None or score > best[0]:
                    best = (score, a, b)
        if best is None or best[0] < FUZZY_MIN_SCORE:
            return None
        score, a, b = best
        # The words of the window that match a word of the value, merged where adjacent.
        picked: list[tuple[int, int]] = []
        last = -2
        for n in range(a, b):
            w = index.norm[spans[n][0]:spans[n][1]]
            if any(difflib.SequenceMatcher(None, w, vw).ratio() >= 0.75 for vw in vwords):
                o = index.original(*spans[n])
                if last == n - 1 and _adjacent(index, n):
                    picked[-1] = (picked[-1][0], o[1])
                else:
                    picked.append(o)
                last = n
        if not picked:
            picked = [index.original(spans[a][0], spans[b - 1][1])]
        return picked, round(score, 4)


def _adjacent(index: TextIndex, n: int) -> bool:
    """Whether word ``n`` follows word ``n - 1`` with only one separator between them."""
    spans = index._word_spans
    return spans[n][0] - spans[n - 1][1] <= 1


def _boundary(s: str, a: int, b: int) -> bool:
    return (a == 0 or not s[a - 1].isalnum() or not s[a].isalnum()) and (
        b == len(s) or not s[b].isalnum() or not s[b - 1].isalnum())


def ground_value(value: Any, text: str | TextIndex, confidences: Mapping[str, float | None] | None = None,
                 tier: str | None = None) -> list[FieldGrounding]:
    """One ``FieldGrounding`` per leaf of ``value`` (see the module docstring).

    ``confidences`` maps JSON pointers to the tier's probabilities; a path it lacks gets None.
    """
    index = text if isinstance(text, TextIndex) else TextIndex(text)
    aligner = _Aligner(index)
    confidences = confidences or {}
    out: list[FieldGrounding] = []
    for parts, leaf in leaves(value):
        path = pointer(parts)
        spans: list[tuple[int, int]] = []
        status = "not_found"
        score: float | None = None
        if isinstance(leaf, str):
            day = _as_date(leaf)
            forms = [leaf, *(f for f in _date_forms(day) if f != leaf)] if day else [leaf]
            hit = None
            for form in forms:
                hit = aligner.exact(form)
                if hit is not None:
                    # Another written form of the same date is a normalization, not the value as written.
                    spans, status, score = [hit], "exact" if form == leaf else "normalized", 1.0
                    break
            if hit is not None:
                pass
            else:
                hit = next((h for h in (aligner.normalized(f) for f in forms) if h), None)
                if hit is not None:
                    spans, status, score = [hit], "normalized", 1.0
                else:
                    fz = aligner.fuzzy(leaf)
                    if fz is not None:
                        spans, score = fz
                        status = "fuzzy"
        elif isinstance(leaf, (int, float)) and not isinstance(leaf, bool):
            hit = aligner.number(leaf)
            if hit is not None:
                spans, score = [hit], 1.0
                status = "exact" if index.text[hit[0]:hit[1]] == _json_scalar(leaf) else "normalized"
        else:
            for form in _written_forms(leaf):
                hit = aligner.exact(form)
                status = "exact"
                if hit is None:
                    hit = aligner.normalized(form)
                    status = "normalized"
                if hit is not None:
                    spans, score = [hit], 1.0
                    break
            else:
                status = "not_found"
        conf = confidences.get(path)
        out.append(FieldGrounding(
            path=path, value=_jsonable(leaf), spans=spans, status=status,  # type: ignore[arg-type]
            score=score, confidence=conf, raw_confidence=conf, needs_review=status == "not_found",
        ))
    _mark_contested(out)
    return out


def _mark_contested(fields: list[FieldGrounding]) -> None:
    """Set ``contested`` on every field whose spans overlap another field's (one sweep)."""
    spans = sorted((a, b, n) for n, f in enumerate(fields) for a, b in f.spans)
    reach, owner = -1, -1
    for a, b, n in spans:
        if a < reach and owner != n:
            fields[n].contested = fields[owner].contested = True
        if b > reach:
            reach, owner = b, n


def _json_scalar(v: Any) -> str:
    return json.dumps(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (date, datetime, time)):
        return v.isoformat()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


# --- confidences from token log-probabilities ------------------------------------------------

def json_leaf_spans(raw: str) -> dict[str, tuple[int, int]] | None:
    """JSON pointer -> ``(start, end)`` in ``raw`` of every scalar (strings with their quotes,
    ``null`` included); None when ``raw`` is not one complete JSON value."""
    out: dict[str, tuple[int, int]] = {}
    decoder = json.JSONDecoder()
    n = len(raw)

    def ws(i: int) -> int:
        while i < n and raw[i] in " \t\r\n":
            i += 1
        return i

    def parse(i: int, path: tuple[str | int, ...]) -> int:
        i = ws(i)
        if i >= n:
            raise ValueError("end of output")
        ch = raw[i]
        if ch == "{":
            i = ws(i + 1)
            if i < n and raw[i] == "}":
                return i + 1
            while True:
                key, i = decoder.raw_decode(raw, ws(i))
                i = ws(i)
                if raw[i] != ":":
                    raise ValueError("expected ':'")
                i = parse(i + 1, (*path, str(key)))
                i = ws(i)
                if raw[i] == ",":
                    i += 1
                    continue
                if raw[i] == "}":
                    return i + 1
                raise ValueError("expected ',' or '}'")
        if ch == "[":
            i = ws(i + 1)
            if i < n and raw[i] == "]":
                return i + 1
            k = 0
            while True:
                i = ws(parse(i, (*path, k)))
                k += 1
                if raw[i] == ",":
                    i += 1
                    continue
                if raw[i] == "]":
                    return i + 1
                raise ValueError("expected ',' or ']'")
        _, end = decoder.raw_decode(raw, i)
        out[pointer(path)] = (i, end)
        return int(end)

    try:
        end = parse(0, ())
    except (ValueError, IndexError):
        return None
    if raw[end:].strip():
        return None
    return out


def value_confidences(raw: str, token_ends: Sequence[int],
                      token_logprobs: Sequence[float | None]) -> dict[str, float | None]:
    """JSON pointer -> the probability the model gave the value written there.

    ``token_ends[i]`` is where output token ``i`` ends in ``raw``; ``token_logprobs[i]`` its
    log-probability under the allowed-token distribution, or None for a token the grammar
    forced (it carries no information and is never counted). A value's confidence is the
    product of the probabilities of the chosen tokens that overlap it, quotes included (the
    first of them decided null against a string, the last where the string stops); a value
    made only of forced tokens has probability 1 under the constraint.
    """
    spans = json_leaf_spans(raw)
    if spans is None or len(token_ends) != len(token_logprobs):
        return {}
    starts = [0, *token_ends[:-1]]
    out: dict[str, float | None] = {}
    for path, (a, b) in spans.items():
        total = 0.0
        for s, e, lp in zip(starts, token_ends, token_logprobs, strict=True):
            if e <= a:
                continue
            if s >= b:
                break
            if lp is not None:
                total += lp
        out[path] = _probability(total)
    return out


def token_confidences(raw: str, token_ends: Sequence[int], token_logprobs: Sequence[float | None],
                      is_json: bool) -> dict[str, float | None]:
    """``value_confidences`` for a JSON output; for any other output (a regex match) the one
    root value's probability: every chosen token of it. Empty when the backend recorded none."""
    if not token_logprobs or len(token_ends) != len(token_logprobs):
        return {}
    if is_json:
        return value_confidences(raw, token_ends, token_logprobs)
    return {"": _probability(sum(lp for lp in token_logprobs if lp is not None))}


def _probability(logprob: float) -> float:
    """``exp(logprob)`` to six significant digits: short to store, and never rounded to 0, which
    would tie every unlikely value (a server's unconstrained log-probabilities of grammar-forced
    tokens make values of 1e-9 common) and blind the ranking among them."""
    return float(f"{math.exp(logprob):.6g}")
