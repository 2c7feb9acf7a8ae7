"""Scored span selection (extract.spec.span_select): which fields it asks about, the joint
decision, the pinned constraint, and the whole path through the local tier on the real model."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extract import Extractor
from extract.errors import ConfigError
from extract.providers.decoding import Constraint
from extract.providers.local_model import LlamaCppModel, load_local_model
from extract.settings import Settings
from extract.spec import compile_spec, local_constraint
from extract.spec.model import Spec
from extract.spec.prompt import build_messages, shared_prefix
from extract.spec.span_copy import span_forms
from extract.spec.span_select import decide, pin_constraint, pointer, queries_for
from extract.tiers.local import LocalTier
from extract.types import FieldScores, SpanQuery
from extract.validate import check


def nullable(description: str | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    if description:
        node["description"] = description
    return node


USER = {"type": "object", "properties": {
    "house_number": nullable("The number of the building."),
    "street": {"type": "object", "properties": {"name": nullable(), "kind": nullable()}},
    "city": nullable(),
    "word_count": nullable("The number of words in the text."),
    "tags": {"type": "array", "items": {"type": "string"}},
    "floor": {"type": "integer"},
}}
TEXT = "2260 Peachtree Rd, Atlanta GA 30309"


def constraint_for(schema: dict[str, Any], text: str) -> dict[str, Any]:
    spec = compile_spec(schema)
    return json.loads(local_constraint(spec, text, copy_from_input="auto", bounds=True, shapes=True))  # type: ignore[no-any-return]


def test_queries_cover_copied_strings_through_objects_only() -> None:
    queries = queries_for(constraint_for(USER, TEXT), TEXT)
    paths = [q.path for q in queries]
    # Nested object leaves are asked about; a computed field (left free), a list's items and
    # a number are not.
    assert paths == [("house_number",), ("street", "name"), ("street", "kind"), ("city",)]
    lead = {q.path: q.lead for q in queries}
    assert lead[("street", "name")] == '{"street":{"name":'
    assert all(q.nullable for q in queries)
    for query in queries:
        for start in query.starts:
            assert TEXT[start.offset:].startswith(start.segment)
            assert start.ends and max(start.ends) == len(start.segment)
            # Every candidate end is a span the constraint admits for this field.
            for end in start.ends:
                assert TEXT[start.offset:start.offset + end].strip()
    # "Rd," may end without its comma.
    street = next(q for q in queries if q.path == ("street", "name"))
    ends = {TEXT[s.offset:s.offset + e] for s in street.starts for e in s.ends}
    assert "Peachtree Rd" in ends and "Peachtree Rd," in ends


@pytest.mark.parametrize(("written", "shed"), [
    ("(2014).", "2014"), ('"A title".', "A title"), ("12(3):", "12(3)"), ("(RAR) ortholog", "(RAR) ortholog"),
    ("Tenino?", "Tenino"), ("[199]", "199"), ("\u201cQuoted\u201d,", "Quoted"), ("'90s", "90s"),
    # A full stop after one word may be its own; after a number, a closer or a run of words not.
    ("St.", "St."), ("playlist.", "playlist."), ("2015.", "2015"), ("contingency tables.", "contingency tables"),
])
def test_a_span_sheds_what_encloses_it_but_keeps_a_pair_inside(written: str, shed: str) -> None:
    text = f"see {written} here"
    forms = span_forms(text, 4, 4 + len(written), trim_edges=True)
    start, form = forms[-1]
    assert form == shed and text[start:start + len(form)] == shed
    # Without trim_edges the forms are the span and the span without trailing separators only.
    assert [f for _, f in span_forms(text, 4, 4 + len(written))] == [written, written.rstrip(",;:")]


def test_trimmed_candidates_are_offered_only_with_trim_edges_and_read_back() -> None:
    text = 'Smith, J. (2014). "Graphs". Will it rain in Tenino?'
    schema = {"type": "object", "properties": {"year": nullable(), "title": nullable(), "town": nullable()}}
    spec = compile_spec(schema)
    plain = queries_for(constraint_for(schema, text), text)
    trimmed_constraint = json.loads(local_constraint(spec, text, copy_from_input="auto", bounds=True, shapes=True,
                                                     trim_edges=True))
    trimmed = queries_for(trimmed_constraint, text, trim_edges=True)

    def candidates(queries: list[Any]) -> set[str]:
        return {text[s.offset:s.offset + e] for q in queries for s in q.starts for e in s.ends}

    assert {"2014", "Graphs", "Tenino"} <= candidates(trimmed)
    assert not {"2014", "Graphs", "Tenino"} & candidates(plain)
    assert candidates(plain) <= candidates(trimmed)
    # A trimmed form the constraint does not admit (the plain constraint) is not asked about.
    assert not {"2014", "Tenino"} & candidates(queries_for(constraint_for(schema, text), text, trim_edges=True))


def test_a_required_string_must_take_a_span_and_an_optional_one_that_cannot_be_null_is_left_alone() -> None:
    schema = {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "nick": {"type": "string"}, "city": nullable()}}
    queries = queries_for(constraint_for(schema, TEXT), TEXT)
    assert [(q.path, q.nullable) for q in queries] == [(("name",), False), (("city",), True)]


def test_a_span_goes_to_the_field_that_wants_it_most_and_null_wins_below_the_bias() -> None:
    text = "Atlanta GA"
    queries = queries_for(constraint_for({"type": "object", "properties": {
        "city": nullable(), "state": nullable(), "street": nullable()}}, text), text)
    atlanta, ga = (0, 7), (8, 10)
    scores = [
        FieldScores(-20.0, {atlanta: -3.0, ga: -9.0}),   # city: Atlanta, by far
        FieldScores(-20.0, {atlanta: -2.0, ga: -4.0}),   # state: likes Atlanta more, yet less surely
        FieldScores(-4.0, {atlanta: -6.0, ga: -7.0}),    # street: null beats every span
    ]
    choices = decide(queries, scores, text, null_bias=0.0)
    assert choices[("city",)].value == "Atlanta"
    assert choices[("state",)].value == "GA"  # Atlanta is taken: its next best
    assert choices[("street",)].value is None
    for choice in choices.values():
        assert 0.0 <= choice.confidence <= 1.0
    # A lower null bias lets the street take what is left; nothing is given twice.
    looser = decide(queries, scores, text, null_bias=-10.0)
    taken = [c.span for c in looser.values() if c.span is not None]
    assert len(taken) == len(set(taken))


def test_the_pinned_constraint_writes_the_chosen_values_and_compiles() -> None:
    text = TEXT
    constraint = constraint_for(USER, text)
    queries = queries_for(constraint, text)
    scores = [FieldScores(-1.0, {}) for _ in queries]
    scores[0] = FieldScores(-30.0, {(0, 4): -1.0})
    at = text.index("Atlanta")
    scores[3] = FieldScores(-30.0, {(at, at + len("Atlanta")): -1.0})
    choices = decide(queries, scores, text, null_bias=0.0)
    assert choices[("house_number",)].value == "2260" and choices[("city",)].value == "Atlanta"
    assert choices[("street", "name")].value is None
    pinned = pin_constraint(constraint, choices)
    assert pinned["properties"]["house_number"]["const"] == "2260"
    assert pinned["properties"]["street"]["properties"]["name"] == {"type": "null"}
    assert "street" in pinned["required"] and "name" in pinned["properties"]["street"]["required"]
    text_schema = json.dumps(pinned)
    assert Constraint("json_schema", text_schema).problems() == []
    assert constraint["properties"]["house_number"] != pinned["properties"]["house_number"]  # a copy
    assert pointer(("street", "name")) == "/street/name" and pointer(("a/b",)) == "/a~1b"


def _scoring_case() -> tuple[LlamaCppModel, Spec, str, str, str, dict[str, Any], list[SpanQuery]]:
    """The embedded model, a user's address schema, a text, then the prompt, its shared prefix,
    the span-copy constraint and the queries the local tier scores for them."""
    settings = Settings(tiers=["local"], cache=False)
    model = load_local_model(settings)
    assert isinstance(model, LlamaCppModel)
    spec = compile_spec(USER)
    text = "Ship to 2260 Peachtree Rd, Atlanta GA 30309 before Friday."
    constraint, queries = LocalTier(settings).span_queries(spec, text)
    prompt = model.render(build_messages(spec, text))
    return model, spec, text, prompt, shared_prefix(model.render, spec), constraint, queries


def test_the_answer_after_scoring_starts_from_the_scored_prompt_and_equals_a_fresh_evaluation() -> None:
    model, spec, _, prompt, prefix, constraint, queries = _scoring_case()
    grammar = Constraint("json_schema", json.dumps(constraint))

    model.score_spans(prompt, queries, prefix, null_bias=-4.0)
    kept = model.generate(prompt, grammar, 64, prefix=prefix)
    assert kept.prefix_source == "memory"
    # The same answer when the prompt is evaluated afresh (another prompt ran in between)...
    model.generate(model.render(build_messages(spec, "Room 12, Oslo")), grammar, 8, prefix=prefix)
    fresh = model.generate(prompt, grammar, 64, prefix=prefix)
    assert (kept.text, kept.token_logprobs) == (fresh.text, fresh.token_logprobs)
    # ...also when the same prompt was scored twice (the second scoring starts from the kept
    # prompt and must keep its logits, not the context's last scored span's)...
    model.score_spans(prompt, queries, prefix, null_bias=-4.0)
    model.score_spans(prompt, queries, prefix, null_bias=-4.0)
    twice = model.generate(prompt, grammar, 64, prefix=prefix)
    assert (twice.text, twice.token_logprobs) == (fresh.text, fresh.token_logprobs)
    # ...and the kept prompt is taken once only: a second decode of it evaluates it again.
    model.score_spans(prompt, queries, prefix, null_bias=-4.0)
    model.generate(prompt, grammar, 8, prefix=prefix)
    assert model._scored_prompt is None


def test_scored_selection_through_the_local_tier() -> None:
    extractor = Extractor(tiers=["local"], cache=False, span_select="scored")
    text = "Ship to 2260 Peachtree Rd, Atlanta GA 30309 before Friday."
    result = extractor.run(text, USER)
    assert result.ok, result.attempts[-1].error
    attempt = result.attempts[-1]
    meta = attempt.meta["span_select"]
    assert meta["fields"] == 4 and meta["scored_tokens"] > 0
    assert attempt.usage.input_tokens > meta["scored_tokens"]  # scoring is counted as input
    value = result.value
    copied = [value["house_number"], value["street"]["name"], value["street"]["kind"], value["city"]]
    spans = []
    for v in copied:
        assert v is None or v in text
        if v is not None:
            spans.append(text.index(v))
    assert check(attempt.raw, compile_spec(USER)).error is None
    confidence = attempt.meta["confidence"]
    for path in ("/house_number", "/street/name", "/street/kind", "/city"):
        assert 0.0 <= confidence[path] <= 1.0
    # The same input decides the same way.
    again = extractor.run(text, USER)
    assert again.value == value


def test_auto_scores_unmarked_schemas_zero_shot_only() -> None:
    text = "Rex is a dog, 3 years old, from Lyon."
    pet = {"type": "object", "properties": {"name": nullable(), "city": nullable()}}
    auto = Extractor(tiers=["local"], cache=False).run(text, pet)
    assert "span_select" in auto.attempts[-1].meta
    greedy = Extractor(tiers=["local"], cache=False, span_select="greedy").run(text, pet)
    assert "span_select" not in greedy.attempts[-1].meta
    # With worked examples the model imitates them: decoded greedily.
    pool = [("Tom is a cat from Paris.", {"name": "Tom", "city": "Paris"}),
            ("Bo, a parrot, lives in Oslo.", {"name": "Bo", "city": "Oslo"})]
    shown = Extractor(tiers=["local"], cache=False, examples=pool, examples_k=1).run(text, pet)
    assert shown.ok and "span_select" not in shown.attempts[-1].meta
    # A schema written with span-copy marks keeps the greedy decoder it was tuned with.
    marked = {**pet, "copy_from_input": True}
    assert "span_select" not in Extractor(tiers=["local"], cache=False).run(text, marked).attempts[-1].meta
    with pytest.raises((ConfigError, ValueError)):
        Settings(span_select="beam")  # type: ignore[arg-type]


def test_pmi_corrects_a_short_frequent_span_and_off_is_the_plain_decision() -> None:
    text = "Due November the 7th, 2024 at noon."
    schema = {"type": "object", "properties": {"due": nullable(), "place": nullable()}}
    constraint = constraint_for(schema, text)
    queries = queries_for(constraint, text)
    year = (text.index("2024"), text.index("2024") + 4)
    date = (text.index("November"), year[1])
    noon = (text.index("noon"), text.index("noon") + 4)
    # The field's own question prefers the year by 2 nats; a question naming no field prefers
    # it by 5: the key adds 3 nats of evidence for the whole date. "noon" is what the model
    # writes anywhere (neutral -1), and the place question likes it no more than that.
    scores = [FieldScores(-6.0, {year: -3.0, date: -5.0}), FieldScores(-3.0, {noon: -2.0})]
    neutral = FieldScores(-2.0, {year: -4.0, date: -9.0, noon: -1.0})
    plain = decide(queries, scores, text, null_bias=-4.0)
    assert plain[("due",)].value == "2024" and plain[("place",)].value == "noon"
    # Weight 0, or no neutral scores, is exactly the decision without the correction.
    assert decide(queries, scores, text, null_bias=-4.0, neutral=neutral, pmi=0.0) == plain
    assert decide(queries, scores, text, null_bias=-4.0, pmi=1.0) == plain
    pmi = decide(queries, scores, text, null_bias=-4.0, neutral=neutral, pmi=1.0)
    assert pmi[("due",)].value == "November the 7th, 2024"
    # place: span -2 - (-1) = -1 against null -3 - (-2) - 4 = -5: the correction keeps a span
    # the field is about as sure of as the neutral question is...
    assert pmi[("place",)].value == "noon"
    # ...and drops one the neutral question is far surer of than of null (the span's -2 + 0.2
    # is below the corrected null's -3 + 6 - 4).
    strong = FieldScores(-6.0, {year: -4.0, date: -9.0, noon: -0.2})
    assert decide(queries, scores, text, null_bias=-4.0, neutral=strong, pmi=1.0)[("place",)].value is None
    # The per-word length bonus: 4 words at 1 nat each lift the date (-5 + 4) over the year (-3 + 1).
    longer = decide(queries, scores, text, null_bias=-4.0, length_bonus=1.0)
    assert longer[("due",)].value == "November the 7th, 2024" and longer[("place",)].value == "noon"
    assert decide(queries, scores, text, null_bias=-4.0, length_bonus=0.5)[("due",)].value == "2024"
    # A span the neutral question did not score is not taken under the correction.
    partial = FieldScores(-2.0, {year: -4.0, noon: -1.0})
    assert decide(queries, scores, text, null_bias=-4.0, neutral=partial, pmi=1.0)[("due",)].value == "2024"


def test_the_neutral_question_is_asked_once_over_every_scored_span() -> None:
    model, _, text, prompt, prefix, _, queries = _scoring_case()
    scores, none, plain = model.score_spans(prompt, queries, prefix, null_bias=-4.0)
    assert none is None
    again, neutral, with_neutral = model.score_spans(prompt, queries, prefix, null_bias=-4.0, neutral='{"value":')
    # The fields' scores do not change; the neutral question scores null and exactly the spans
    # some field scored...
    assert again == scores
    assert neutral is not None and neutral.null is not None and neutral.null < 0
    assert set(neutral.spans) == set().union(*(s.spans for s in scores))
    assert all(v < 0 for v in neutral.spans.values())
    # ...in one question: its lead once, and each start's text once, to the longest span scored there.
    longest: dict[int, int] = {}
    for a, b in neutral.spans:
        longest[a] = max(longest.get(a, 0), b)
    as_null = model._tokenize('{"value":null')
    as_string = model._tokenize('{"value":"')
    shared = next(i for i, (a, b) in enumerate(zip(as_null, as_string, strict=False)) if a != b)
    spans = sum(model.count_tokens(text[a:b]) for a, b in longest.items())
    # What null and the quote share is evaluated once.
    assert with_neutral - plain == len(as_null) + (len(as_string) - shared) + spans


def test_the_length_bonus_knob_through_the_local_tier() -> None:
    text = "Ship to 2260 Peachtree Rd, Atlanta GA 30309 before Friday."
    assert Settings().span_select_length_bonus == 0.0  # opt-in (README, "Accuracy")
    on = Extractor(tiers=["local"], cache=False, span_select="scored", span_select_length_bonus=0.25).run(text, USER)
    off = Extractor(tiers=["local"], cache=False, span_select="scored").run(text, USER)
    assert off.ok and on.ok
    meta = [r.attempts[-1].meta["span_select"] for r in (off, on)]
    assert "length_bonus" not in meta[0] and meta[1]["length_bonus"] == 0.25
    # With the bonus the scorer follows spans further: more tokens, counted as input.
    assert meta[1]["scored_tokens"] > meta[0]["scored_tokens"]
    # Off (the default) is the decision without the bonus: the scorer's default pruning, plain decide.
    settings = Settings(tiers=["local"], cache=False)
    model = load_local_model(settings)
    spec = compile_spec(USER)
    prompt = model.render(build_messages(spec, text))
    _, queries = LocalTier(settings).span_queries(spec, text)
    scores, _, evaluated = model.score_spans(prompt, queries, shared_prefix(model.render, spec), null_bias=-4.0)
    assert evaluated == meta[0]["scored_tokens"]
    expected = {path: c.value for path, c in decide(queries, scores, text, -4.0).items()}
    value = off.value
    assert expected[("house_number",)] == value["house_number"] and expected[("city",)] == value["city"]
    assert expected[("street", "name")] == value["street"]["name"]
    assert expected[("street", "kind")] == value["street"]["kind"]
