"""Span-copy: string values that must be copied verbatim from the input.

A grammar makes a small model's output valid, not right: asked for a street name, a 135M
model will happily write one that is not in the address. When the task is span extraction
(every value is a piece of the text), the constraint can say so. ``apply_span_copy`` rewrites
the local constraint, per input, so each marked string is one of the input's word spans (an
``enum`` behind one ``$ref``, which llguidance compiles once per input in milliseconds even
for citation-length texts). The native tier sends the same rewrite where the server enforces
the schema by grammar (llama.cpp's ``json_object`` + schema; ``extract.tiers.native``). Other
remote rungs and tiers cannot be constrained that way, so ``copy_violations`` checks the
promise of marked strings after the fact, as a validator.

Which strings are marked: a field whose schema carries ``"copy_from_input": true``
(``Field(json_schema_extra={"copy_from_input": True})``), every plain string of a spec whose
root carries it (``model_config = ConfigDict(json_schema_extra={"copy_from_input": True})``),
or every plain string when the ``copy_from_input`` setting is True (False turns it all off).
A copyable string has no enum, const or format (those already say what is allowed); a
``pattern`` filters its spans.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from extract.spec.model import Spec
from extract.spec.shapes import SHAPES, shape_of
from extract.types import AttemptError

__all__ = [
    "COPY_KEY",
    "SPAN_DEF",
    "CopySetting",
    "apply_span_copy",
    "auto_copy",
    "computed",
    "copied_regex",
    "copy_paths",
    "copy_setting",
    "copy_violations",
    "open_pattern",
    "regex_spans",
    "span_alternatives",
    "span_forms",
    "span_occurrences",
    "strip_copy_marks",
    "word_spans",
]

COPY_KEY = "copy_from_input"
SPAN_DEF = "extract_input_span"
WORD = re.compile(r"\S+")
# Trailing separators a span may drop ("Arlington," -> "Arlington"): both forms are substrings.
TRAILING_PUNCTUATION = ",;:"
# What encloses or ends a value without being part of it (``_shed``): "(2014)" is the year 2014,
# '"Title".' the title, "Tenino?" the town. Only scored span selection offers these trimmed forms
# (``trim_edges``): greedy decoding on the shipped schemas was tuned, and is measured, without.
_PAIRS = {"(": ")", "[": "]", "{": "}", '"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019",
          "\u00ab": "\u00bb"}
_CLOSING = {v: k for k, v in _PAIRS.items()}
# A full stop is shed after a closing bracket or quote ('(2014).', '"Title".'), a digit
# ("2015.", "45-67.") or a run of words ("...contingency tables."), not after one word: there
# it may be the word's own ("St.") and, shed from a sentence's last word ("...to the Deep House
# playlist." -> "playlist"), it made a distractor the model took as a value. Measured on the dev
# variants (benchmarks/span_select_tune.py, 12 rows each): shedding every full stop took SNIPS
# AddToPlaylist from 0.48 to 0.36; shedding none kept citations at 0.34 instead of 0.50.
_ENDINGS = "?!" + TRAILING_PUNCTUATION
# Longest span in words, and the most spans per input: a citation title runs to ~20 words;
# 40 words x 24 lengths x 2 forms stays near 2,000 alternatives (measured: compile < 10 ms).
MAX_SPAN_WORDS = 24
MAX_SPANS = 4000
_CONSTRAINING = ("enum", "const", "format", "$ref")


def span_forms(text: str, start: int, end: int, trim_edges: bool = False) -> list[tuple[int, str]]:
    """The forms a word run ``text[start:end]`` may be copied in, each with where it starts: as
    written, without trailing separators and, with ``trim_edges``, without what encloses it."""
    span = text[start:end]
    forms = [(start, span), (start, span.rstrip(TRAILING_PUNCTUATION))]
    if trim_edges:
        lead, inner = _shed(span)
        forms.append((start + lead, inner))
    return forms


def _unbalanced(s: str, mark: str) -> bool:
    """Whether ``mark`` (an opening or closing bracket or quote) has no partner inside ``s``."""
    opener = _CLOSING.get(mark, mark)
    closer = _PAIRS[opener]
    if opener == closer:
        return s.count(mark) % 2 == 1
    return s.count(opener) != s.count(closer)


def _shed(span: str) -> tuple[int, str]:
    """``span`` without the sentence endings, enclosing pairs and stray brackets or quotes at its
    edges, and how many characters it lost at the front: '(2014).' -> '2014', '"A title".' ->
    'A title', '12(3):' -> '12(3)' (a pair inside the value stays)."""
    lead, out = 0, span
    while out:
        before = out
        out = out.rstrip(_ENDINGS)
        if len(out) >= 2 and out[-1] == "." and (out[-2] in _CLOSING or out[-2].isdigit() or len(out.split()) > 1):
            out = out[:-1]
        if len(out) >= 2 and _PAIRS.get(out[0]) == out[-1]:
            lead, out = lead + 1, out[1:-1]
        elif out[:1] in _PAIRS and _unbalanced(out, out[0]):
            lead, out = lead + 1, out[1:]
        elif out[-1:] in _CLOSING and _unbalanced(out, out[-1]):
            out = out[:-1]
        if out == before:
            break
    return lead, out


def span_occurrences(text: str, max_words: int = MAX_SPAN_WORDS, limit: int = MAX_SPANS,
                     trim_edges: bool = False) -> dict[str, list[tuple[int, int]]]:
    """Every run of 1..``max_words`` consecutive words of ``text``, as written, with where it stands.

    Each run also appears in its other forms (``span_forms``). Past ``limit`` spans the longest
    runs are dropped first, so very long inputs keep every short span. Values: the (start, end)
    character offsets of each occurrence, in text order.
    """
    words = [(m.start(), m.end()) for m in WORD.finditer(text)]
    seen: dict[str, list[tuple[int, int]]] = {}
    for length in range(1, max_words + 1):
        for i in range(0, len(words) - length + 1):
            for start, form in span_forms(text, words[i][0], words[i + length - 1][1], trim_edges):
                if form:
                    spot = (start, start + len(form))
                    spots = seen.setdefault(form, [])
                    if spot not in spots:
                        spots.append(spot)
        if len(seen) >= limit:
            break
    for spots in seen.values():
        spots.sort()
    return seen


def word_spans(text: str, max_words: int = MAX_SPAN_WORDS, limit: int = MAX_SPANS,
               trim_edges: bool = False) -> list[str]:
    """Every run of 1..``max_words`` consecutive words of ``text``, as written (sorted, unique).

    Each run also appears in its other forms (``span_forms``). Past ``limit`` spans the longest
    runs are dropped first, so very long inputs keep every short span.
    """
    return sorted(span_occurrences(text, max_words, limit, trim_edges))


def _copyable(node: dict[str, Any]) -> bool:
    """A string span-copy can constrain: no enum, const, format or ``$ref`` already fixes it.

    A ``pattern`` does not exclude it: the copied spans are filtered by the pattern, so
    the field gets the input's spans that the pattern admits (the strongest constraint both
    allow: a ZIP code pattern over an address leaves one or two candidates).
    """
    types = node.get("type")
    type_list = types if isinstance(types, list) else [types]
    # A node admitting nearly any type (the local constraint's bounded stand-in for ``{}``)
    # is not a string field: copying spans into every one of them made real-world schemas
    # too large for llguidance (SchemaStore: 6 of 150).
    return "string" in type_list and len(set(type_list)) < 4 and not any(k in node for k in _CONSTRAINING)


CopySetting = bool | Literal["auto"] | None

# A description that asks for something the text does not spell out: a count, a summary, a
# judgement. Span-copy by default ("auto") leaves such a string free; a field marked
# ``copy_from_input: true`` is copied all the same.
_COMPUTED = re.compile(
    r"\b(?:how many|number of \w+s|count of|total|sum of|average|summar\w*|translat\w*|classif\w*|"
    r"sentiment|whether|infer\w*|comput\w*|calculat\w*|estimat\w*|paraphras\w*|rewrit\w*|"
    r"normali[sz]\w*|in your own words|category|categories)\b",
    re.IGNORECASE,
)


def computed(description: Any) -> bool:
    """Whether a field's description asks for a value computed from the text, not copied."""
    return isinstance(description, str) and _COMPUTED.search(description) is not None


def auto_copy(schema: dict[str, Any] | None, setting: bool | None) -> CopySetting:
    """The span-copy setting a constraining tier decodes with: the user's, else the schema's
    marks when it has any, else ``"auto"`` (every plain string not asking for a computed value)."""
    if setting is not None or schema is None:
        return setting
    return None if COPY_KEY in json.dumps(schema) else "auto"


def copy_setting(spec: Spec, setting: bool | None, generate: bool = False) -> CopySetting:
    """Span-copy as a tier that can constrain values to spans decodes ``spec``: the user's
    ``setting``, else the schema's marks, else every plain string of a schema that has no
    marks (``auto_copy``). One rule for the local tier and the native tier on a server that
    enforces the schema, so a schema is copied the same way wherever it is enforced.

    Why by default: on schemas users wrote without patterns or flags, copying spans raised
    zero-shot field F1 (benchmarks/zero_shot.py). Never when generating (``generate``): the
    text is a request, and no value is in it to copy.
    """
    if generate:
        return False
    if spec.kind == "regex":
        return setting if setting is not None else open_pattern(spec.pattern or "")
    if not spec.is_json:
        return setting
    return auto_copy(spec.schema, setting)


def _sre_parse(pattern: str) -> Any:
    """Python's own parse of ``pattern`` (``re._parser``, the only regex parser at hand)."""
    import importlib

    return importlib.import_module("re._parser").parse(pattern)


_OPEN_OPS = {"IN", "ANY", "CATEGORY", "NOT_LITERAL"}
_ANYTHING = "Aa 1.!"  # letters, a space, a digit, punctuation: what only a free-text pattern matches whole
_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}


def open_pattern(pattern: str) -> bool:
    """Whether a regex spec stands for values found in a text (a character class, any
    character or a repeat: ``\\d{5}``, ``INV-\\d+``), not a choice among words written in it
    (``yes|no``, ``colou?r``) nor any text at all (``.+``): span-copy applies to the first
    kind only. A choice is often a judgement whose answer is not in the text, and one of its
    words may stand in the text by chance; a free-text pattern may ask for a summary; a pattern
    Python cannot read is left alone."""
    try:
        parsed = _sre_parse(pattern)
        if re.fullmatch(pattern, _ANYTHING):
            return False  # ".+", "[\\s\\S]*": a pattern that says nothing of the value's shape
    except (re.error, RecursionError, ValueError, ImportError):
        return False

    def walk(node: Any) -> bool:
        if isinstance(node, (list, tuple)) or hasattr(node, "data"):
            items = node.data if hasattr(node, "data") else node
            for item in items:
                if isinstance(item, tuple) and len(item) == 2 and hasattr(item[0], "name"):
                    op, arg = item
                    if op.name in _OPEN_OPS or (op.name in _REPEATS and arg[1] > 1):
                        return True
                    if walk(arg):
                        return True
                elif walk(item):
                    return True
        return False

    return walk(parsed)


def regex_spans(pattern: str, text: str, limit: int = MAX_SPANS) -> list[str]:
    """The distinct pieces of ``text`` that the whole of ``pattern`` matches, in text order: word
    runs in their copy forms (``span_forms``, edges shed) and matches starting anywhere that
    neither begin nor end inside a run of letters and digits ("20500" in "DC 20500-0003",
    never "12345" out of "123456"). At most ``limit``; empty when the pattern does not compile."""
    try:
        rx = re.compile(pattern)
    except re.error:
        return []
    found: dict[str, int] = {}

    def cuts(start: int, end: int) -> bool:
        """Whether [start, end) cuts through a run of letters and digits at either edge."""
        return (start > 0 and text[start - 1].isalnum() and text[start].isalnum()) or (
            end < len(text) and text[end - 1].isalnum() and text[end].isalnum())

    for form, spots in span_occurrences(text, limit=limit, trim_edges=True).items():
        if rx.fullmatch(form):
            found.setdefault(form, spots[0][0])
    for start in range(len(text)):
        if len(found) >= limit:
            break
        if start > 0 and text[start - 1].isalnum() and text[start].isalnum():
            continue
        m = rx.match(text, start)
        if m and m.end() > start and not cuts(start, m.end()) and rx.fullmatch(m.group()):
            found.setdefault(m.group(), start)
    return sorted(found, key=lambda piece: (found[piece], -len(piece)))[:limit]


# Regex metacharacters for llguidance's (Rust) regex syntax; everything else stands for itself.
_REGEX_META = re.compile(r"([\\.+*?()|\[\]{}^$#&\-~])")


def copied_regex(pattern: str, text: str, most: int = MAX_SPANS) -> str | None:
    """The regex a copying tier decodes under: one of ``regex_spans`` as written, or None when
    the text holds none or more than ``most`` (the value is then decoded under ``pattern``
    itself, as before; a server pays per alternative). Why: under the bare pattern the 135M
    model invents a value of the right shape ("10000" for the ZIP code in "The ZIP code is
    90210."; "1234-56-78" for the date in "Delivered 2021-03-04."); a value of the text is
    what an extraction wants."""
    pieces = regex_spans(pattern, text, limit=most + 1)
    if not pieces or len(pieces) > most:
        return None
    return "(?:" + "|".join(_REGEX_META.sub(r"\\\1", piece) for piece in pieces) + ")"


def _marked(schema: dict[str, Any], setting: CopySetting) -> bool:
    """Whether span-copy applies to the whole spec (the setting wins over the schema)."""
    if setting == "auto":
        mark = schema.get(COPY_KEY)
        return mark if isinstance(mark, bool) else True
    if setting is not None:
        return bool(setting)
    return bool(schema.get(COPY_KEY))


def _fits(span: str, bound: int | None, low: int, pattern: re.Pattern[str] | None) -> bool:
    return (bound is None or len(span) <= bound) and len(span) >= low and (
        pattern is None or pattern.search(span) is not None)


def _compiled(pattern: Any) -> re.Pattern[str] | None:
    """The field's pattern for Python's ``re`` (JSON Schema patterns search, unanchored);
    None when absent or when Python cannot read it (the span list is then unfiltered and
    the pattern stays for llguidance to enforce)."""
    if not isinstance(pattern, str):
        return None
    try:
        return re.compile(pattern)
    except re.error:
        return None


# A union branch no span of the input fits (dropped from its anyOf/oneOf).
_NOTHING: dict[str, Any] = {"enum": []}


class _Rewriter:
    """Replaces marked strings by references to per-input span lists.

    ``spans`` None only collects the paths (``copy_paths``); otherwise each marked string
    gets the spans that fit its bounds and pattern, one ``$defs`` entry per distinct list.
    """

    def __init__(self, setting: CopySetting, spans: list[str] | None, shapes: bool = False) -> None:
        self.auto = setting == "auto"
        self.setting: bool | None = None if self.auto else bool(setting) if setting is not None else None
        self.shapes = shapes
        self._descriptions: dict[str, Any] = {}
        self.spans = spans
        self.hits: list[str] = []
        self.defs: dict[str, dict[str, Any]] = {}
        self._by_values: dict[tuple[str, ...], str] = {}

    def _ref_for(self, node: dict[str, Any], path: str) -> str | None:
        """The ``$ref`` of the spans this string admits; None when none does."""
        assert self.spans is not None
        raw = node.get("pattern")
        pattern = _compiled(raw)  # None for a pattern Python cannot read: spans unfiltered
        fitting = [s for s in self.spans if _fits(s, node.get("maxLength"), int(node.get("minLength", 0)), pattern)]
        if not fitting:
            return None
        if self.shapes and raw is None and path:
            # A shape read from the field's name or description (extract.spec.shapes) narrows
            # the candidates; when no span of the input has that shape, all of them stay.
            shape = shape_of(path.rsplit(".", 1)[-1], {"description": self._descriptions.get(path)})
            if shape is not None:
                fit = re.compile(SHAPES[shape])
                fitting = [s for s in fitting if fit.search(s)] or fitting
        key = tuple(fitting)
        if key not in self._by_values:
            name = SPAN_DEF if not self._by_values else f"{SPAN_DEF}_{len(self._by_values)}"
            self._by_values[key] = name
            entry: dict[str, Any] = {"type": "string", "enum": fitting}
            if raw is not None and pattern is None:
                entry["pattern"] = raw  # left for llguidance to enforce
            self.defs[name] = entry
        return f"#/$defs/{self._by_values[key]}"

    def rewrite(self, node: Any, on: bool, path: str, in_union: bool = False) -> Any:
        """``node`` rewritten; inside ``anyOf``/``oneOf`` a string no span fits is dropped."""
        if isinstance(node, list):
            return [self.rewrite(v, on, path) for v in node]
        if not isinstance(node, dict):
            return node
        setting = self.setting
        mark = node.get(COPY_KEY)
        if setting is not None:
            here = setting
        elif self.auto:
            here = mark if isinstance(mark, bool) else on  # a field's own mark wins
        else:
            here = on or bool(mark)
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("enum", "const", "default", "examples", COPY_KEY):
                if key != COPY_KEY:
                    out[key] = value
                continue
            if key == "properties" and isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(v, dict):
                        self._descriptions[f"{path}.{k}" if path else k] = v.get("description")
                out[key] = {k: self.rewrite(v, here, f"{path}.{k}" if path else k) for k, v in value.items()}
            elif key in ("$defs", "definitions") and isinstance(value, dict):
                shared = here if setting is not None or self.auto else False
                out[key] = {k: self.rewrite(v, shared, path) for k, v in value.items()}
            elif key in ("anyOf", "oneOf") and isinstance(value, list):
                kept = [r for r in (self.rewrite(v, here, path, in_union=True) for v in value) if r is not _NOTHING]
                out[key] = kept or [self.rewrite(v, here, path) for v in value]
            else:
                out[key] = self.rewrite(value, here, path)
        if not (here and _copyable(out)):
            return out
        if self.auto and mark is not True and computed(self._descriptions.get(path)):
            return out  # asks for a value the text does not spell out: left free
        self.hits.append(path)
        if self.spans is None:
            return out
        types = out.get("type")
        others = [t for t in (types if isinstance(types, list) else [types]) if t != "string"]
        ref = self._ref_for(out, path)
        rest = {k: v for k, v in out.items() if k not in ("type", "maxLength", "minLength", "pattern")}
        if ref is None:
            # No span of this input fits: the field can only take its other types (null), or
            # its union's other branches; alone, it stays as the schema says (nothing to copy).
            if not others:
                return _NOTHING if in_union else out
            return {**rest, "type": others[0]} if len(others) == 1 else {**rest, "type": others}
        if not others:
            return {"$ref": ref}
        return {**rest, "anyOf": [{"$ref": ref}, *({"type": t} for t in others)]}


def copy_paths(schema: dict[str, Any], setting: CopySetting = None) -> list[str]:
    """Dotted paths of the strings span-copy constrains (empty: span-copy is off for this spec)."""
    rewriter = _Rewriter(setting, None)
    rewriter.rewrite(schema, _marked(schema, setting), "")
    return rewriter.hits


def strip_copy_marks(node: Any) -> Any:
    """The schema without ``copy_from_input`` keys (llguidance warns on keys it does not know)."""
    if isinstance(node, list):
        return [strip_copy_marks(v) for v in node]
    if not isinstance(node, dict):
        return node
    return {k: (v if k in ("enum", "const", "default", "examples") else strip_copy_marks(v))
            for k, v in node.items() if k != COPY_KEY}


def apply_span_copy(schema: dict[str, Any], text: str, setting: CopySetting = None,
                    shapes: bool = False, trim_edges: bool = False) -> dict[str, Any]:
    """``schema`` with every marked string constrained to a word span of ``text``.

    Returns a new schema; an unmarked schema comes back only without the marks. An input with
    no words leaves the strings as they were (an empty enum would admit nothing).
    """
    spans = word_spans(text, trim_edges=trim_edges)
    if not spans:
        return strip_copy_marks(schema)  # type: ignore[no-any-return]
    rewriter = _Rewriter(setting, spans, shapes)
    out = rewriter.rewrite(schema, _marked(schema, setting), "")
    if not rewriter.hits:
        return strip_copy_marks(schema)  # type: ignore[no-any-return]
    out["$defs"] = {**(out.get("$defs") or {}), **rewriter.defs}
    return out  # type: ignore[no-any-return]


def span_alternatives(schema: dict[str, Any]) -> int:
    """How many span values ``apply_span_copy`` put in ``schema``, over all its span lists:
    what a server's grammar has to hold (each value is one alternative of a rule)."""
    defs = schema.get("$defs") or {}
    return sum(len(node.get("enum") or []) for name, node in defs.items()
               if name.startswith(SPAN_DEF) and isinstance(node, dict))


def squash_spaces(s: str) -> str:
    return " ".join(s.split())


def _leaf(value: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(value, dict):
            value = value.get(part)
        else:
            value = getattr(value, part, None)
        if value is None:
            return None
    return value


def copy_violations(value: Any, spec: Spec, text: str, setting: bool | None = None) -> AttemptError | None:
    """A ``not_copied`` error naming each span-copy string of ``value`` absent from ``text``.

    The remote tiers' half of span-copy: they cannot be constrained per input, so the
    promise is checked. Whitespace runs compare equal (a model may re-flow a line break).
    """
    if spec.schema is None:
        return None
    paths = copy_paths(spec.schema, setting)
    if not paths:
        return None
    haystack = squash_spaces(text)
    details = []
    for path in paths:
        got = _leaf(value, path.split("."))
        if isinstance(got, str) and got and squash_spaces(got) not in haystack:
            details.append({"loc": path.split("."), "type": "not_copied",
                            "msg": "the value is not copied from the input"})
    if not details:
        return None
    return AttemptError(
        type="not_copied",
        message="not copied verbatim from the input: " + ", ".join(".".join(d["loc"]) for d in details),
        details=details,
    )
