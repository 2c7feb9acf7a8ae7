"""Ordered span-copy: the copied fields appear in the input in the schema's order.

Span-copy alone lets a small model copy one span into several fields, or the last words of
an address into its first field: measured on usaddress with the 135M model, PlaceName and
StreetName were wrong in most answers even when every value was a span of the input. Many
span schemas describe a segmentation (an address is house number, street, unit, city,
state, ZIP, left to right), and then the schema can promise more: each copied field's span
starts after the previous copied field's span ends, and no two overlap.

JSON Schema cannot say that (it relates two fields), so on the local tier ``ordered_lark``
writes one Lark grammar per input whose states are (field, position in the input): a field
is null (position unchanged) or an occurrence of one of its allowed spans at or after the
position (position moves to the span's end). Fields that are not copied keep their JSON
Schema under ``%json`` and do not move the position. Every key is written, in schema order,
null where absent: a subset of what the schema admits. Remote tiers cannot be constrained
that way, so ``order_violations`` checks the same promise after the fact.

Marked by ``"copy_in_order": true`` at the root of the schema
(``model_config = ConfigDict(json_schema_extra={"copy_from_input": True, "copy_in_order": True})``)
or the ``copy_in_order`` setting (which wins).
"""

from __future__ import annotations

import json
from typing import Any

from extract.spec.grammar import lark_literal
from extract.spec.model import Spec
from extract.spec.span_copy import (
    MAX_SPAN_WORDS,
    SPAN_DEF,
    TRAILING_PUNCTUATION,
    WORD,
    CopySetting,
    copy_paths,
    copy_violations,
    squash_spaces,
)
from extract.types import AttemptError

__all__ = ["ORDER_KEY", "order_violations", "ordered_fields", "ordered_lark", "span_violations", "wants_order"]

ORDER_KEY = "copy_in_order"
# Beyond this many words the per-input grammar (fields x positions x span lengths) grows past
# what is worth compiling per call; such inputs fall back to unordered span-copy.
MAX_WORDS = 400


def wants_order(schema: dict[str, Any] | None, setting: bool | None = None, copy_setting: CopySetting = None) -> bool:
    """Whether this spec's copied top-level fields must follow the input's order."""
    if schema is None or schema.get("type") != "object" or not schema.get("properties"):
        return False
    on = setting if setting is not None else bool(schema.get(ORDER_KEY))
    return on and bool(ordered_fields(schema, copy_setting))


def ordered_fields(schema: dict[str, Any], copy_setting: CopySetting = None) -> list[str]:
    """The top-level fields the order applies to: the span-copied ones, in schema order."""
    top = set(p for p in copy_paths(schema, copy_setting) if "." not in p)
    return [name for name in (schema.get("properties") or {}) if name in top]


def _allowed(node: dict[str, Any], defs: dict[str, Any]) -> tuple[set[str] | None, bool]:
    """(the spans a rewritten field admits, or None when it is not a span field; nullable)."""
    union = node.get("anyOf")
    branches: list[Any] = union if isinstance(union, list) else [node]
    spans: set[str] | None = None
    nullable = False
    for branch in branches:
        if not isinstance(branch, dict):
            continue
        ref = str(branch.get("$ref", ""))
        if ref.startswith(f"#/$defs/{SPAN_DEF}"):
            entry = defs.get(ref.rsplit("/", 1)[-1]) or {}
            if "pattern" in entry:  # a pattern llguidance must still enforce: not a plain list
                return None, False
            spans = (spans or set()) | set(entry.get("enum") or [])
        elif branch.get("type") == "null":
            nullable = True
        else:
            return None, False
    if spans is None and nullable and len(branches) == 1:
        return set(), True  # span field no span of this input fits: null only
    return spans, nullable


def _occurrences(text: str) -> list[tuple[int, int, str]]:
    """(start word, end word, form) for every word run of the input, as ``word_spans`` cuts it
    (a run longer than any allowed span is never in a field's allowed set, so harmless)."""
    words = [(m.start(), m.end()) for m in WORD.finditer(text)]
    out = []
    for s in range(len(words)):
        for e in range(s + 1, min(len(words), s + MAX_SPAN_WORDS) + 1):
            span = text[words[s][0]:words[e - 1][1]]
            for form in dict.fromkeys((span, span.rstrip(TRAILING_PUNCTUATION))):
                if form:
                    out.append((s, e, form))
    return out


def ordered_lark(constraint: str, text: str, fields: list[str], gap: int | None = None,
                 all_keys: bool = False) -> str | None:
    """The Lark grammar (llguidance dialect) for the span-copied ``constraint`` with ``fields``
    in input order; None when the constraint is not a flat object this can express.

    ``gap`` bounds the words skipped between one copied value and the next (None: any); the
    first value may start anywhere. ``all_keys`` writes every key, null where absent;
    otherwise an absent optional field is left out, as worked examples show it.
    """
    schema = json.loads(constraint)
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        return None
    defs = dict(schema.get("$defs") or {})
    guidance = schema.get("x-guidance", {"whitespace_flexible": False})
    names = list(props)
    spans: dict[int, tuple[set[str], bool]] = {}
    for i, name in enumerate(names):
        if name in fields:
            allowed, nullable = _allowed(props[name], defs)
            if allowed is not None:
                spans[i] = (allowed, nullable)
    if not spans:
        return None
    n_words = len(WORD.findall(text))
    if n_words > MAX_WORDS:
        return None
    by_start: dict[int, list[tuple[int, str]]] = {}
    for s, e, form in _occurrences(text):
        by_start.setdefault(s, []).append((e, form))
    last = len(names)
    required = set(names) if all_keys else set(schema.get("required") or [])

    # viable[i][p]: fields i.. can be finished from position p; later[i][p]: field i has a span
    # starting at p or later after which the rest is viable; some[i][p]: fields i.. can write
    # at least one more key. One backward sweep each.
    viable = [[True] * (n_words + 1) for _ in range(last + 1)]
    later = [[False] * (n_words + 2) for _ in range(last + 1)]
    some = [[False] * (n_words + 1) for _ in range(last + 1)]
    here: dict[tuple[int, int], list[tuple[int, str]]] = {}
    def skips(p: int) -> int | None:
        """How many words field values may skip from position p (None: any; the first may)."""
        return None if gap is None or p == 0 else gap

    def can(i: int, p: int, k: int | None) -> bool:
        """Field i has a viable span starting within k words of p (k None: anywhere after)."""
        if k is None:
            return later[i][p]
        return any((i, s) in here for s in range(p, min(n_words, p + k) + 1))

    for i in range(last - 1, -1, -1):
        if i in spans:
            allowed = spans[i][0]
            for p in range(n_words, -1, -1):
                starts = [(e, f) for e, f in by_start.get(p, []) if f in allowed and viable[i + 1][e]]
                if starts:
                    here[(i, p)] = starts
                later[i][p] = bool(starts) or later[i][p + 1]
        for p in range(n_words, -1, -1):
            if i not in spans:
                viable[i][p] = viable[i + 1][p]
                some[i][p] = True
                continue
            nullable = spans[i][1]
            skip = names[i] not in required or nullable
            reach = can(i, p, skips(p))
            viable[i][p] = (skip and viable[i + 1][p]) or reach
            some[i][p] = reach or (names[i] in required and nullable) or (skip and some[i + 1][p])
    if not viable[0][0]:
        return None

    def key(i: int, first: bool) -> str:
        return lark_literal(("" if first else ",") + json.dumps(names[i], ensure_ascii=False) + ":")

    def after(i: int, p: int) -> str:
        """What may follow a written field: the rest from field i, optional when it may be empty."""
        if i == last or not some[i][p]:
            return ""
        can_stop = all(names[j] not in required and j in spans for j in range(i, last))
        return f"e{i}_{p}_0" + ("?" if can_stop else "")

    rules: dict[str, str] = {}
    json_rules: dict[int, str] = {}
    todo = [("e", 0, 0, 1)]
    while todo:
        kind, i, p, first = todo.pop()
        name = f"{kind}{i}_{p}_" + ("u" if first < 0 else str(first))
        if name in rules:
            continue
        alts: list[str] = []
        nxt: list[tuple[str, int, int, int]] = []
        if kind == "e" and i not in spans:
            sub = {**props[names[i]], **({"$defs": defs} if defs else {}), "x-guidance": guidance}
            json_rules[i] = f"j{i}: %json {json.dumps(sub, ensure_ascii=False)}"
            alts.append(f"{key(i, bool(first))} j{i} {after(i + 1, p)}")
            nxt.append(("e", i + 1, p, 0))
        elif kind == "e":
            nullable = spans[i][1]
            k = skips(p)
            if can(i, p, k):
                alts.append(f"{key(i, bool(first))} c{i}_{p}_{'u' if k is None else k}")
                nxt.append(("c", i, p, -1 if k is None else k))
            if names[i] in required and nullable and viable[i + 1][p]:
                alts.append(f'{key(i, bool(first))} "null" {after(i + 1, p)}')
                nxt.append(("e", i + 1, p, 0))
            if names[i] not in required and i + 1 < last and some[i + 1][p] and viable[i + 1][p]:
                alts.append(f"e{i + 1}_{p}_{first}")
                nxt.append(("e", i + 1, p, first))
        else:  # "c": field i's span at p, or up to `first` words later (-1: any)
            for e, form in here.get((i, p), []):
                alts.append(f"{lark_literal(json.dumps(form, ensure_ascii=False))} {after(i + 1, e)}")
                nxt.append(("e", i + 1, e, 0))
            rest_k = None if first < 0 else first - 1
            if (rest_k is None or rest_k >= 0) and can(i, p + 1, rest_k) if p + 1 <= n_words else False:
                alts.append(f"c{i}_{p + 1}_{'u' if rest_k is None else rest_k}")
                nxt.append(("c", i, p + 1, -1 if rest_k is None else rest_k))
        rules[name] = " | ".join(a.strip() for a in alts)
        todo.extend(t for t in nxt if t[1] < last and (t[0] == "c" or some[t[1]][t[2]]))
    can_be_empty = all(n not in required and j in spans for j, n in enumerate(names))
    head = 'start: "{" e0_0_1' + ("?" if can_be_empty else "") + ' "}"' if some[0][0] else 'start: "{}"'
    body = [f"{name}: {alts}" for name, alts in rules.items()]
    return "\n".join([head, *body, *json_rules.values()]) + "\n"


def order_violations(value: Any, spec: Spec, text: str, setting: bool | None = None,
                     copy_setting: bool | None = None) -> AttemptError | None:
    """An ``out_of_order`` error when the copied fields of ``value`` cannot be found in the
    input one after another, in schema order, without overlapping (the remote tiers' check).

    Greedy earliest occurrence is exact here: taking each value's first occurrence after the
    previous one leaves the most room for the rest.
    """
    if not wants_order(spec.schema, setting, copy_setting):
        return None
    assert spec.schema is not None
    haystack = squash_spaces(text)
    pos = 0
    previous = None
    for name in ordered_fields(spec.schema, copy_setting):
        got = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
        if not isinstance(got, str) or not got:
            continue
        at = haystack.find(squash_spaces(got), pos)
        if at < 0:
            if squash_spaces(got) not in haystack:
                continue  # not copied at all: span-copy's own check names it
            where = f"after {previous!r}" if previous else "there"
            return AttemptError(
                type="out_of_order",
                message=f"{name} is not found in the input {where}: the copied fields must appear "
                        "in the input in the schema's order without overlapping",
                details=[{"loc": [name], "type": "out_of_order",
                          "msg": "the value does not follow the previous field in the input"}],
            )
        pos = at + len(squash_spaces(got))
        previous = name
    return None


def span_violations(value: Any, spec: Spec, text: str, copy_setting: bool | None = None,
                    order_setting: bool | None = None) -> AttemptError | None:
    """The remote tiers' check of both span promises: copied (``not_copied``), then in order
    (``out_of_order``); None when the value keeps them."""
    return copy_violations(value, spec, text, copy_setting) or order_violations(
        value, spec, text, order_setting, copy_setting)
