"""Scored span selection: each copied field's value chosen by the model's likelihood, jointly.

Why: greedy decoding fills a schema the 135M model has never seen one key at a time, and each
choice conditions the next. Measured on schemas users write (benchmarks/zero_shot.py), its
most common failure is a value repeated down the object: "ATLANTA" as street, type, unit,
city and state. Asking the same model a different question does better: for each field alone,
how likely is each span of the input as its value (and how likely is ``null``), and then give
every span to the one field that wants it most. A span cannot fill two fields; a field takes
nothing when ``null`` beats every span it could still take.

This module is the model-free half: which fields qualify, the candidate spans of each, the
joint decision, and the constraint that then writes the chosen values
(``pin_constraint``: each chosen leaf becomes a ``const``). The local model scores the spans
(``LlamaCppModel.score_spans``); ``extract.tiers.local`` joins the two.

Scope: strings span-copy constrains (``extract.spec.span_copy``) reached from the root through
object properties only (a list's items have no fixed place to ask about), that admit ``null``
or are required. Every other field is decoded as before, after the chosen ones.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from extract.spec.span_copy import MAX_SPAN_WORDS, MAX_SPANS, SPAN_DEF, span_occurrences
from extract.types import FieldScores, SpanQuery, SpanStart

__all__ = [
    "ADJUSTED_MARGIN",
    "NEUTRAL_LEAD",
    "Choice",
    "adjusted",
    "decide",
    "pin_constraint",
    "pointer",
    "queries_for",
]

_REF = "#/$defs/"
# The question naming no field that the PMI correction subtracts (``adjusted``; measured, not
# used by the local tier): a key any schema could have, so a span's score after it is what the
# model would write for this document whatever was asked.
NEUTRAL_LEAD = '{"value":'
# How far the scorer follows a field's spans when ``decide`` adjusts the scores (a length bonus
# or the PMI correction): down to this far below the field's best span and below its null plus
# the null bias. An adjustment can lift a span the plain decision would never take; on the dev
# variants (benchmarks/span_select_tune.py) the length bonus gained only with the floor lowered.
ADJUSTED_MARGIN = 6.0


@dataclass(frozen=True)
class Choice:
    """A field's decided value (None: null) and the probability behind it."""

    value: str | None
    span: tuple[int, int] | None
    confidence: float


def _span_list(node: dict[str, Any], defs: dict[str, Any]) -> tuple[list[str], bool] | None:
    """(the spans a copied leaf admits, whether it admits null); None for any other node."""
    union = node.get("anyOf")
    branches: list[Any] = union if isinstance(union, list) else [node]
    spans: list[str] | None = None
    nullable = False
    for branch in branches:
        if not isinstance(branch, dict):
            return None
        if branch.get("type") == "null" and len(branch) == 1:
            nullable = True
            continue
        ref = branch.get("$ref")
        if not (isinstance(ref, str) and ref.startswith(_REF + SPAN_DEF)) or spans is not None:
            return None
        target = defs.get(ref[len(_REF):])
        if not isinstance(target, dict) or not isinstance(target.get("enum"), list) or "pattern" in target:
            return None
        spans = [s for s in target["enum"] if isinstance(s, str)]
    return (spans, nullable) if spans is not None else None


def _leaves(node: dict[str, Any], defs: dict[str, Any],
            path: tuple[str, ...]) -> list[tuple[tuple[str, ...], list[str], bool]]:
    out: list[tuple[tuple[str, ...], list[str], bool]] = []
    props = node.get("properties")
    if not isinstance(props, dict):
        return out
    needed = set(node.get("required") or [])
    for key, child in props.items():
        # An object behind a ``$ref`` may stand in several places: pinning it would pin them all.
        if not isinstance(child, dict):
            continue
        here = (*path, key)
        found = _span_list(child, defs)
        if found is not None:
            spans, nullable = found
            # An optional field that cannot be null is left out: pinning it would force a value
            # where the schema lets the key be absent.
            if spans and (nullable or key in needed):
                out.append((here, spans, nullable))
        elif child.get("type") == "object" and "$ref" not in child:
            out.extend(_leaves(child, defs, here))
    return out


def _lead(path: tuple[str, ...]) -> str:
    """The compact JSON before the value at ``path`` when it is the first key written."""
    return "{" + "".join(json.dumps(k, ensure_ascii=False) + ":{" for k in path[:-1]) + json.dumps(
        path[-1], ensure_ascii=False) + ":"


def queries_for(constraint: dict[str, Any], text: str, max_words: int = MAX_SPAN_WORDS,
                trim_edges: bool = False) -> list[SpanQuery]:
    """The fields of a span-copy constraint (``local_constraint`` with span-copy on, and the
    same ``trim_edges``) to score on ``text``, in schema order; empty when none qualifies.
    A field's candidates are the word-run forms (``span_forms``) its enum admits, grouped by
    where they start: one evaluation of a start serves every length."""
    defs = constraint.get("$defs") or {}
    occurrences = span_occurrences(text, max_words, MAX_SPANS, trim_edges)
    queries = []
    for path, spans, nullable in _leaves(constraint, defs, ()):
        ends: dict[int, set[int]] = {}
        for form in spans:
            for start, end in occurrences.get(form, ()):
                ends.setdefault(start, set()).add(end - start)
        starts = tuple(SpanStart(st, text[st:st + max(lengths)], tuple(sorted(lengths)))
                       for st, lengths in sorted(ends.items()))
        if starts:
            queries.append(SpanQuery(path, _lead(path), nullable, starts))
    return queries


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


Rank = Literal["share", "margin", "raw"]


def adjusted(got: FieldScores, text: str, neutral: FieldScores | None = None,
             pmi: float = 0.0, pmi_null: bool = True, length_bonus: float = 0.0) -> FieldScores:
    """A field's scores as ``decide`` weighs them: each span less ``pmi`` times its score under
    the neutral question (``score_spans(neutral=...)``), plus ``length_bonus`` per word; null
    less ``pmi`` times the neutral null when ``pmi_null``.

    Why (domain-conditional PMI, Holtzman et al. 2021, "surface form competition"): the 135M
    model's likelihood favours short, frequent spans wherever it is asked (a year for a date,
    a first author for the author list, "a" for a state); what a field's key adds over a
    question naming no field is the evidence for that field. A span the neutral question did
    not score (the context ran out) is dropped. Measured on the dev variants
    (benchmarks/results/zero_shot/README.md), PMI lowered F1 (it rewards spans no question
    wants, such as "to") and the length bonus raised it on citations only, so the local tier
    applies only the bonus, and only when ``span_select_length_bonus`` is set."""
    base = neutral if pmi else None  # what the PMI correction subtracts, if it applies
    if base is None and not length_bonus:
        return got
    null = got.null
    if base is not None and null is not None and pmi_null and base.null is not None:
        null -= pmi * base.null
    spans = {span: score - (pmi * base.spans[span] if base is not None else 0.0)
             + length_bonus * len(text[span[0]:span[1]].split())
             for span, score in got.spans.items() if base is None or span in base.spans}
    return FieldScores(null, spans)


def decide(queries: Sequence[SpanQuery], scores: Sequence[FieldScores], text: str,
           null_bias: float, rank: Rank = "share", neutral: FieldScores | None = None,
           pmi: float = 0.0, pmi_null: bool = True, length_bonus: float = 0.0,
           ) -> dict[tuple[str, ...], Choice]:
    """Each field's value, decided jointly.

    A field's options are ``null`` (its log-probability plus ``null_bias``) and its scored
    spans; a span it scores below its null is never its value. Spans are handed out surest
    first: by the span's share of its field's distribution over the options, so a span
    both fields like goes to the field that is surer of it, and the other takes its next best.
    A span (or one overlapping it) is not handed out twice. A field left with no span it
    prefers to null is null; one that cannot be null takes its best remaining span.
    The confidence is that same share for the option the field got. ``rank`` exists to
    measure the alternatives (``benchmarks/span_select_tune.py``): ``"margin"`` hands out by
    the span's margin over null, ``"raw"`` by its log-probability; on the dev variants of
    benchmarks/zero_shot.py ranking by share did best. With ``neutral`` and ``pmi``, or
    ``length_bonus``, the scores are first ``adjusted``.
    """
    scores = [adjusted(got, text, neutral, pmi, pmi_null, length_bonus) for got in scores]
    pairs: list[tuple[float, int, tuple[int, int]]] = []
    totals: list[float | None] = []
    for n, (query, got) in enumerate(zip(queries, scores, strict=True)):
        null = got.null + null_bias if query.nullable and got.null is not None else None
        options = [*got.spans.values(), *([null] if null is not None else [])]
        total = _logsumexp(options) if options else None
        totals.append(total)
        if total is None:
            continue
        for span, score in got.spans.items():
            if null is None or score > null:
                key = {"share": score - total, "margin": score - null if null is not None else score,
                       "raw": score}[rank]
                pairs.append((key, n, span))
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    taken: list[tuple[int, int]] = []
    chosen: dict[int, tuple[int, int]] = {}
    for _, n, span in pairs:
        if n in chosen or any(span[0] < b and a < span[1] for a, b in taken):
            continue
        chosen[n] = span
        taken.append(span)
    out: dict[tuple[str, ...], Choice] = {}
    for n, (query, got) in enumerate(zip(queries, scores, strict=True)):
        total = totals[n]
        if total is None:
            continue
        picked = chosen.get(n)
        if picked is not None:
            share = math.exp(got.spans[picked] - total)
            out[query.path] = Choice(text[picked[0]:picked[1]], picked, share)
        elif query.nullable and got.null is not None:
            out[query.path] = Choice(None, None, math.exp(got.null + null_bias - total))
        # else: every span it could take went elsewhere and it cannot be null: decoded freely
    return out


def pin_constraint(constraint: dict[str, Any], choices: dict[tuple[str, ...], Choice]) -> dict[str, Any]:
    """The constraint with each decided leaf fixed to its value (``const``, or ``null``) and
    written: every object on the way to it requires the key, so the answer spells it."""
    out = copy.deepcopy(constraint)
    for path, choice in choices.items():
        node = out
        for key in path[:-1]:
            node.setdefault("required", [])
            if key not in node["required"]:
                node["required"].append(key)
            node = node["properties"][key]
        leaf = node["properties"][path[-1]]
        fixed: dict[str, Any] = {"type": "null"} if choice.value is None else {"const": choice.value}
        for k in ("description", "title"):
            if k in leaf:
                fixed[k] = leaf[k]
        node["properties"][path[-1]] = fixed
        node.setdefault("required", [])
        if path[-1] not in node["required"]:
            node["required"].append(path[-1])
    return out


def pointer(path: tuple[str, ...]) -> str:
    """The JSON pointer of ``path`` (``/street/name``), as ``Attempt.meta["confidence"]`` keys."""
    return "".join("/" + re.sub("~", "~0", k).replace("/", "~1") for k in path)
