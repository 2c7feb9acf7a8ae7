"""A text longer than the context is split by tokens with overlap, extracted per chunk on the real
local model, and merged by the schema: lists concatenated and de-duplicated, scalars by agreement
with the disagreements recorded."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from pydantic import BaseModel

from extract.errors import ConfigError
from extract.pipeline import Extractor
from extract.providers.local_model import load_local_model
from extract.runtime.chunking import merge_values, split_text


class Roster(BaseModel):
    city: str | None
    people: list[str]


NAMES = ["Alice Martin", "Bruno Costa", "Chen Wei", "Dana Levi", "Emeka Obi", "Fatima Zahra",
         "Goran Petrovic", "Hana Sato", "Ivan Horvat", "Julia Weber", "Kofi Mensah", "Lena Novak"]
LONG = " ".join(
    f"Paragraph {i + 1}. {name} joined the team in the spring and works on the logistics project; "
    f"colleagues describe {name.split()[0]} as careful, patient and quick to help with reports."
    for i, name in enumerate(NAMES)
)
SMALL: dict[str, Any] = {"n_ctx": 512, "max_tokens": 96}


def test_merge_rules() -> None:
    conflicts: list[dict[str, Any]] = []
    merged = merge_values([
        (0, {"city": "Leeds", "people": ["A", "B"], "boss": {"name": "X", "age": None}}),
        (1, {"city": None, "people": ["B", "C"], "boss": {"name": "Y", "age": 40}}),
        (2, {"city": "Leeds", "people": ["C", {"n": 1}], "boss": {"name": "Y", "age": 40}}),
        (3, {"city": "York", "people": [{"n": 1}], "boss": None}),
    ], "", conflicts)
    assert merged == {"city": "Leeds", "people": ["A", "B", "C", {"n": 1}], "boss": {"name": "Y", "age": 40}}
    assert conflicts == [
        {"path": "/city", "chosen": "Leeds",
         "values": [{"chunk": 0, "value": "Leeds"}, {"chunk": 2, "value": "Leeds"}, {"chunk": 3, "value": "York"}]},
        {"path": "/boss/name", "chosen": "Y",
         "values": [{"chunk": 0, "value": "X"}, {"chunk": 1, "value": "Y"}, {"chunk": 2, "value": "Y"}]},
    ]
    tie: list[dict[str, Any]] = []
    assert merge_values([(0, "a"), (1, "b")], "", tie) == "a" and tie[0]["path"] == "/"


def test_split_by_tokens_with_overlap() -> None:
    model = load_local_model(Extractor(tiers=["local"], **SMALL).settings)
    spans = split_text(LONG, model.count_tokens, room=120, overlap=20)
    assert len(spans) >= 3
    assert spans[0][0] == 0 and spans[-1][1] == len(LONG)
    for (s1, e1), (s2, e2) in itertools.pairwise(spans):
        assert s1 < s2 < e1 < e2  # progress, and neighbours overlap
        overlap = model.count_tokens(LONG[s2:e1])
        assert 5 <= overlap <= 40
    assert all(model.count_tokens(LONG[s:e]) <= 120 for s, e in spans)


def test_long_text_is_chunked_and_merged_on_the_local_model() -> None:
    extractor = Extractor(tiers=["local"], **SMALL)
    model = load_local_model(extractor.settings)
    assert model.count_tokens(LONG) + SMALL["max_tokens"] > SMALL["n_ctx"]  # it cannot fit whole
    result = extractor.run(LONG, Roster)

    assert len(result.chunks) >= 2
    spans = [(c.start, c.end) for c in result.chunks]
    assert spans[0][0] == 0 and spans[-1][1] == len(LONG)
    assert all(s2 < e1 for (_, e1), (s2, _) in itertools.pairwise(spans))
    # The document's attempts are the chunks' attempts, each tagged with its chunk, priced at 0.
    assert result.attempts == [a for c in result.chunks for a in c.result.attempts]
    for i, c in enumerate(result.chunks):
        assert all(a.meta["chunk"] == i and a.cost_usd == 0.0 for a in c.result.attempts)
        assert not any(a.truncated_input for a in c.result.attempts)  # each chunk fits: nothing cut

    ok = [(i, c.result.value.model_dump(mode="json")) for i, c in enumerate(result.chunks) if c.result.ok]
    assert ok, "no chunk produced a value"
    assert result.ok and isinstance(result.value, Roster)
    value = result.value.model_dump(mode="json")
    # Lists: every chunk's items, in text order, once.
    expected_people: list[str] = []
    for _, v in ok:
        expected_people += [p for p in v["people"] if p not in expected_people]
    assert value["people"] == expected_people
    # Scalars: the most common non-null value; a disagreement is recorded with every value.
    cities = [(i, v["city"]) for i, v in ok if v["city"] is not None]
    if len({c for _, c in cities}) > 1:
        (conflict,) = [c for c in result.conflicts if c["path"] == "/city"]
        assert conflict["values"] == [{"chunk": i, "value": c} for i, c in cities]
        assert conflict["chosen"] == value["city"]
    else:
        assert not [c for c in result.conflicts if c["path"] == "/city"]
        assert value["city"] == (cities[0][1] if cities else None)
    assert json.loads(json.dumps(result.to_json_dict(), default=str))["chunks"][0]["start"] == 0


def test_error_and_truncate_modes() -> None:
    with pytest.raises(ConfigError, match="does not fit the model's context"):
        Extractor(tiers=["local"], long_text="error", **SMALL).run(LONG, Roster)
    result = Extractor(tiers=["local"], long_text="truncate", **SMALL).run(LONG, Roster)
    assert not result.chunks
    assert result.attempts[0].truncated_input
    assert result.attempts[0].meta["original_chars"] == len(LONG) > result.attempts[0].meta["input_chars"]


def test_a_chunk_plan_counts_every_example_a_pool_may_show() -> None:
    from extract.examples import ExamplePool
    from extract.runtime.chunking import plan_chunks
    from extract.spec import compile_spec
    from extract.spec.prompt import build_messages
    from extract.tiers.base import prompt_fits

    ex = Extractor(tiers=["local"], **SMALL)
    spec = compile_spec(Roster)
    text = LONG[:1100]
    pool = ExamplePool([(LONG[1100:1500], {"city": None, "people": ["Emeka Obi"]}),
                        ("Alice Martin, Paris.", {"city": "Paris", "people": ["Alice Martin"]})], k=1,
                       n_ctx=SMALL["n_ctx"])
    shown = pool.largest(spec)
    assert [e.index for e in shown] == [0]  # the longest the pool can choose
    assert plan_chunks(text, spec, ex.settings, ex.tiers) is None  # the text alone fits
    spans = plan_chunks(text, spec, ex.settings, ex.tiers, shown)
    assert spans is not None and len(spans) >= 2  # with the example it does not
    model = load_local_model(ex.settings)
    for s, e in spans:  # every chunk fits with the example, by the one rule the tiers use
        tokens = model.count_tokens(model.render(build_messages(spec, text[s:e], shown)))
        assert prompt_fits(tokens, model.n_ctx, ex.settings)
