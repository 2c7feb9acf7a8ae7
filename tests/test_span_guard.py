"""Span reuse: the decoder's guard against copying the same characters into two fields."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extract import Extractor
from extract.spec.span_copy import span_occurrences, word_spans
from extract.spec.span_guard import SpanGuard

TEXT = "2260 PEACHTREE RD ATLANTA GA 30309"


def fed(guard: SpanGuard, text: str) -> SpanGuard:
    guard.feed(text.encode())
    return guard


def test_occurrences_are_the_word_spans_with_their_offsets() -> None:
    text = "a b, a"
    occ = span_occurrences(text)
    assert sorted(occ) == word_spans(text)
    assert occ["a"] == [(0, 1), (5, 6)]
    assert occ["b"] == [(2, 3)]  # "b," without its comma
    for span, spots in occ.items():
        assert all(text[s:e] == span for s, e in spots)


def test_a_taken_span_cannot_be_copied_again() -> None:
    guard = fed(SpanGuard(TEXT, ["street", "city"]), '{"street":"ATLANTA","city":"')
    assert not guard.allows(b'ATLANTA"')
    assert not guard.allows(b"ATL")  # leads only to taken characters
    assert guard.allows(b"GA")
    assert guard.allows(b'GA"')


def test_overlapping_spans_are_refused_when_disjoint_and_allowed_when_distinct() -> None:
    prefix = '{"street":"PEACHTREE RD","city":"'
    assert not fed(SpanGuard(TEXT, ["street", "city"]), prefix).allows(b'RD"')
    distinct = fed(SpanGuard(TEXT, ["street", "city"], "distinct"), prefix)
    assert distinct.allows(b'RD"')
    assert not distinct.allows(b'PEACHTREE RD"')
    assert fed(SpanGuard(TEXT, ["street", "city"], "allow"), prefix).allows(b'PEACHTREE RD"')


def test_a_token_that_opens_the_value_is_judged_too() -> None:
    guard = fed(SpanGuard(TEXT, ["street", "city"]), '{"street":"GA","city":')
    assert not guard.allows(b'"GA')
    assert guard.allows(b'"AT')
    assert guard.allows(b"null")


def test_a_second_occurrence_of_the_same_words_is_still_free() -> None:
    text = "HUNTINGDON PIKE HUNTINGDON VY PA"
    guard = fed(SpanGuard(text, ["street", "city", "state"]), '{"street":"HUNTINGDON","city":"')
    assert guard.allows(b'HUNTINGDON VY"')
    assert guard.allows(b'HUNTINGDON"')  # the other occurrence
    guard.feed(b'HUNTINGDON","state":"')
    assert not guard.allows(b'HUNTINGDON"')  # both taken now


def test_unguarded_fields_and_nested_paths() -> None:
    guard = fed(SpanGuard(TEXT, ["street.name", "city"]), '{"street":{"name":"GA"},"note":"')
    assert guard.allows(b'GA"')  # "note" is not copied: free text
    guard.feed(b'x","city":"')
    assert not guard.allows(b'GA"')


def test_escaped_values_are_left_to_the_grammar() -> None:
    text = 'He said "hi" there'
    guard = fed(SpanGuard(text, ["a", "b"]), '{"a":"He","b":"said \\"')
    assert guard.allows(b'hi\\""')


@pytest.mark.parametrize("mode", ["disjoint", "allow"])
def test_the_local_tier_copies_no_characters_twice(mode: str, tmp_path: Any) -> None:
    """Through the product, on the real model: with ``disjoint`` no two copied values overlap
    in the input; ``allow`` (the default) lets them repeat."""
    schema = {"type": "object", "properties": {
        k: {"anyOf": [{"type": "string"}, {"type": "null"}]} for k in ("a", "b", "c", "d", "e")}}
    texts = ["2260 PEACHTREE RD NW CONDO D1 ATLANTA GA 30309", "9190 PRIORITY WAY WEST DR"]
    ex = Extractor(tiers=["local"], copy_from_input=True, span_reuse=mode, cache=False)
    overlaps = 0
    for text in texts:
        result = ex.run(text, schema)
        assert result.ok
        attempt = result.attempts[-1]
        if mode == "disjoint":
            assert attempt.meta["span_reuse"] == "disjoint"
        else:
            assert "span_reuse" not in attempt.meta
        taken: list[tuple[int, int]] = []
        occ = span_occurrences(text)
        for value in json.loads(attempt.raw).values():
            if value is None:
                continue
            free = [s for s in occ[value] if all(s[1] <= a or s[0] >= b for a, b in taken)]
            overlaps += not free
            taken.append(free[0] if free else occ[value][0])
    if mode == "disjoint":
        assert overlaps == 0
