"""Every item of a document (extract_all, extract_iter, Extractor.run_all) on the real embedded model.

Small contexts (``n_ctx=256``) and output budgets (``max_tokens``) force chunking and cut
answers on short texts, so each test runs in seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from extract import (
    ConfigError,
    ExtractionFailed,
    Extractor,
    Regex,
    aextract_all,
    aextract_iter,
    extract_all,
    extract_iter,
)
from extract.runtime.chunking import plan_chunks
from extract.runtime.lists import item_list_spec, list_answer, partial_items

REPO = Path(__file__).resolve().parent.parent


class Born(BaseModel):
    """A person and the year they were born."""

    model_config = ConfigDict(json_schema_extra={"copy_from_input": True})

    name: str | None = Field(None, description="the person's full name")
    year: str | None = Field(None, pattern=r"^\d{4}$", description="year of birth")


class Speaker(BaseModel):
    """One speaker of a programme."""

    model_config = ConfigDict(json_schema_extra={"copy_from_input": True})

    name: str | None = Field(None, description="the person's full name")


PEOPLE = [("Ada Lovelace", "1815"), ("Alan Turing", "1912"), ("Grace Hopper", "1906"),
          ("Ada Lovelace", "1815"), ("Katherine Johnson", "1918")]
NAMES = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Katherine Johnson", "John von Neumann",
         "Emmy Noether", "Kurt Goedel", "Barbara Liskov"]


def _speakers(names: list[str]) -> str:
    return "Speakers\n" + "".join(f"- {n}, scientist\n" for n in names)


def _ok_spans(result: Any) -> list[tuple[int, int]]:
    return [(e["start"], e["end"]) for e in result.items if e["status"] == "ok"]


def _silent(text: str, result: Any) -> list[int]:
    """Places of letters and digits that lie in no entry of ``result.items`` (returned or named)."""
    covered = [(e["start"], e["end"]) for e in result.items]
    return [i for i, ch in enumerate(text) if ch.isalnum() and not any(s <= i < e for s, e in covered)]


def test_bad_input_is_a_clear_error() -> None:
    ex = Extractor(tiers=["local"])
    with pytest.raises(ConfigError, match="itself a list"):
        ex.run_all("a b", {"type": "array", "items": {"type": "string"}})
    with pytest.raises(ConfigError, match="no fields"):
        ex.run_all("a b", {"type": "object", "properties": {}})
    with pytest.raises(ConfigError, match="object spec"):
        ex.run_all("a b", Regex(r"\d+"))
    with pytest.raises(ConfigError, match="passes"):
        ex.run_all("a b", Born, passes=0)
    with pytest.raises(ConfigError, match="split"):
        ex.run_all("a b", Born, split="pages")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="empty"):
        extract_all("  \n ", Born, tiers=["local"])
    with pytest.raises(ConfigError, match="passes"):
        extract_iter("a b", Born, tiers=["local"], passes=0)  # raised before any call


def test_partial_items_keeps_every_complete_item_of_a_cut_answer() -> None:
    raw = '{"items":[{"name":"Ada"},{"name":"Alan, \\"A\\"]"},{"name":"Gra'
    assert partial_items(raw) == [{"name": "Ada"}, {"name": 'Alan, "A"]'}]
    assert partial_items('{"items":[]}') == []
    assert partial_items("") == []


def test_a_text_longer_than_the_context_yields_every_item_once_in_order() -> None:
    ex = Extractor(tiers=["local"], n_ctx=256)
    lines = ["Birth records"] + [f"{n} was born in {y} in London, England." for n, y in PEOPLE]
    text = "\n".join(lines) + "\n"
    _, list_spec = item_list_spec(Born, 64)
    assert plan_chunks(text, list_spec, ex.settings, ex.tiers) is not None  # the whole does not fit
    result = ex.run_all(text, Born)
    assert result.ok
    assert [(v.name, v.year) for v in result.value] == PEOPLE
    spans = _ok_spans(result)
    assert spans == sorted(spans) and len(spans) == len(result.value)
    # The two identical lines are two items, each read from its own place.
    ada = [s for s, v in zip(spans, result.value, strict=True) if v.name == "Ada Lovelace"]
    assert len(ada) == 2 and ada[0] != ada[1]
    line = "Ada Lovelace was born in 1815 in London, England."
    assert [text[s:e] for s, e in ada] == [line, line]  # a line read whole as one item spans the line
    # Result.fields: every item's values at /<item>/..., read back at their own places.
    names = [f for f in result.fields if f.path.endswith("/name")]
    assert [f.path for f in names] == [f"/{i}/name" for i in range(len(PEOPLE))]
    for f in result.fields:
        assert f.status == "exact" and [text[a:b] for a, b in f.spans] == [f.value]
        assert f.confidence is not None and 0 < f.confidence <= 1
    assert len({f.spans[0] for f in names if f.value == "Ada Lovelace"}) == 2
    assert not [e for e in result.items if e["status"] == "failed"]
    # The heading is read and named, not returned.
    assert any(e["status"] == "rejected" and e["start"] == 0 for e in result.items)


def test_an_item_across_a_chunk_boundary_is_found_once() -> None:
    names = [*NAMES, "Claude Shannon", "Edsger Dijkstra", "Donald Knuth", "Frances Allen",
                     "Tim Berners-Lee", "Margaret Hamilton"]
    text = _speakers(names)
    ex = Extractor(tiers=["local"], n_ctx=256)
    result = ex.run_all(text, Speaker, split="chunks")
    windows = sorted({(a.meta["window"], a.meta["window_start"] if a.meta["continuation"] == 0 else -1)
                      for a in result.attempts})
    starts = [s for _, s in windows if s >= 0]
    assert len(starts) >= 2, "the text must need more than one chunk"
    line_spans = []
    at = text.index("- ")
    for n in names:
        start = text.index(n, at)
        line_spans.append((start, text.index("\n", start)))
        at = start
    cut = [i for i, (s, e) in enumerate(line_spans) if any(s < w < e for w in starts[1:])]
    assert cut, "a chunk boundary must fall inside an item"
    spans = _ok_spans(result)
    assert spans == sorted(spans)
    lines_hit = [next(i for i, (s, e) in enumerate(line_spans) if s <= a < e + 1) for a, _ in spans]
    assert len(lines_hit) == len(set(lines_hit)), "an item was returned twice"
    for i in cut:  # read in both chunks, returned once
        assert lines_hit.count(i) == 1, names[i]
    assert len(spans) >= len(names) - 2  # the 135M model may skip an item in a long list
    # ... but never silently: what no item holds is named (empty, rejected or failed)
    assert _silent(text, result) == []


def test_a_list_cut_by_the_output_budget_continues_and_loses_nothing() -> None:
    ex = Extractor(tiers=["local"], max_tokens=30)
    result = ex.run_all(_speakers(NAMES), Speaker, split="chunks")
    assert [v.name.split(",")[0] for v in result.value] == NAMES
    cut = [a for a in result.attempts if a.finish_reason == "length"]
    assert len(cut) >= 2, "the budget must cut answers"
    assert max(a.meta["continuation"] for a in result.attempts) >= 1
    assert not [e for e in result.items if e["status"] == "failed"]


def test_the_iterator_yields_the_first_item_before_the_last_is_decoded() -> None:
    text = "\n".join(f"{n} was born in {y} in London, England." for n, y in PEOPLE) + "\n"
    Extractor(tiers=["local"]).run("Ada Lovelace was born in 1815.", Born)  # model loaded, grammar warm
    started = time.perf_counter()
    arrivals: list[float] = []
    items = []
    for item in extract_iter(text, Born, tiers=["local"]):
        arrivals.append(time.perf_counter() - started)
        items.append(item)
    assert [(v.name, v.year) for v in items] == PEOPLE
    # One line is read per window: the first item comes after one of five readings.
    assert arrivals[0] < 0.5 * arrivals[-1], arrivals


def test_a_document_without_items_is_an_empty_list() -> None:
    text = "Thank you for your letter.\nKind regards"
    assert extract_all(text, Born, tiers=["local"]) == []
    result = Extractor(tiers=["local"]).run_all(text, Born)
    assert result.ok and result.value == []
    assert {e["status"] for e in result.items} <= {"rejected", "empty"} and _silent(text, result) == []


def test_nothing_read_goes_silent() -> None:
    """Every letter of the text is in a returned item's span or in a named one: a heading, a
    line the model answers with no item, a closing."""
    text = ("Births\n\nGrace Hopper was born in 1906 in New York.\n"
            "The weather was fine that spring.\nAlan Turing was born in 1912 in London.\nEnd\n")
    result = Extractor(tiers=["local"]).run_all(text, Born)
    assert [(v.name, v.year) for v in result.value] == [("Grace Hopper", "1906"), ("Alan Turing", "1912")]
    assert _silent(text, result) == []
    # The one-word heading and closing cannot hold the two values an item needs: named, not sent.
    short = [(e["start"], e["end"]) for e in result.items if (e.get("error") or {}).get("type") == "too_short"]
    assert short == [(0, len("Births")), (text.index("End"), len(text) - 1)]
    assert not any(a.meta["window_start"] in (0, text.index("End")) for a in result.attempts)
    named = [e for e in result.items if e["status"] != "ok"]
    assert named and all(e.get("error") for e in named)


def test_run_all_with_an_examples_pool_shows_them_per_window() -> None:
    pool = [("Marie Curie was born in 1867 in Warsaw.", Born(name="Marie Curie", year="1867")),
            ("Born 1915: Edith Piaf, singer; Billie Holiday, singer.",
             [{"name": "Edith Piaf", "year": "1915"}, {"name": "Billie Holiday", "year": "1915"}])]
    text = "Grace Hopper was born in 1906 in New York.\nAlan Turing was born in 1912 in London.\n"
    bare = Extractor(tiers=["local"]).run_all(text, Born)
    result = Extractor(tiers=["local"], examples=pool, examples_k=1).run_all(text, Born)
    assert [(v.name, v.year) for v in result.value] == [("Grace Hopper", "1906"), ("Alan Turing", "1912")]
    assert all("all_keys" not in a.meta for a in result.attempts)  # examples were shown
    assert all(a.usage.input_tokens > b.usage.input_tokens
               for a, b in zip(result.attempts, bare.attempts, strict=True))
    # An answer that is not an item is the pool's ConfigError, naming the example.
    with pytest.raises(ConfigError, match=r"examples\[0\]"):
        Extractor(tiers=["local"], examples=[("Ada", {"name": 3})]).run_all(text, Born)


def test_list_answer_writes_a_pool_answer_as_a_window_answer() -> None:
    assert list_answer(Born, Born(name="Ada Lovelace")) == {"items": [{"name": "Ada Lovelace", "year": None}]}
    assert list_answer(Born, [{"name": "A"}, {"year": "1900"}]) == {
        "items": [{"name": "A", "year": None}, {"name": None, "year": "1900"}]}


def test_a_second_pass_reads_only_what_the_first_left() -> None:
    text = ("Ada Lovelace was born in 1815, and Alan Turing in 1912, in London.\n"
            "Grace Hopper was born in 1906, Emmy Noether in 1882, both abroad.\n")
    result = Extractor(tiers=["local"]).run_all(text, Born, passes=2)
    first = [(e["start"], e["end"]) for e in result.items if e["status"] == "ok" and e["pass"] == 1]
    second = [a for a in result.attempts if a.meta["pass"] == 2]
    assert first and second
    ok = [e for e in result.items if e["status"] == "ok"]
    names = [v.name for v, e in zip(result.value, ok, strict=True) if e["pass"] == 1 and v.name]
    for a in second:  # a second reading never sees an item the first one found: span-copy lets
        # the model write only the text it is shown, and the found spans are blanked out of it
        assert not any(f'"{n}"' in (a.raw or "") for n in names), a.raw
    spans = _ok_spans(result)
    assert len(spans) == len(result.value) and spans == sorted(spans)
    assert len(set(spans)) == len(spans)


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "extract", *args], input=stdin, capture_output=True,
                          cwd=REPO, env=env, timeout=300, check=False)


def test_cli_prints_a_line_per_item_and_a_batch_row_per_document(tmp_path: Path) -> None:
    text = "Grace Hopper was born in 1906 in New York.\nAlan Turing was born in 1912 in London.\n"
    done = _cli("run", "--all", "--schema", "tests.test_lists:Born", "-", stdin=text.encode())
    assert done.returncode == 0, done.stderr.decode()
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [(r["name"], r["year"]) for r in lines] == [("Grace Hopper", "1906"), ("Alan Turing", "1912")]
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"id": "a", "text": text}) + "\n"
                    + json.dumps({"id": "b", "text": "Kind regards"}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    args = ("run", "--all", "--schema", "tests.test_lists:Born", "--input", str(rows), "--output", str(out))
    done = _cli(*args)
    assert done.returncode == 0, done.stderr.decode()
    got = {r["id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert [v["name"] for v in got["a"]["value"]] == ["Grace Hopper", "Alan Turing"]
    assert [(e["start"], e["end"]) for e in got["a"]["items"] if e["status"] == "ok"] == [
        (0, text.index("\n")), (text.index("Alan"), len(text) - 1)]
    assert got["b"]["ok"] and got["b"]["value"] == []
    again = _cli(*args)  # resumable: both documents are done
    assert again.returncode == 0 and json.loads(again.stdout)["already_done"] == 2


def test_the_native_tier_reads_lists_from_the_server(llama_server: Any) -> None:
    text = "Grace Hopper was born in 1906 in New York.\nAlan Turing was born in 1912 in London.\n"
    ex = Extractor(tiers=["native"], base_url=llama_server.base_url)
    result = ex.run_all(text, Born)
    assert result.ok and {a.tier for a in result.attempts} == {"native"}
    assert [(v.name, v.year) for v in result.value] == [("Grace Hopper", "1906"), ("Alan Turing", "1912")]
    assert _ok_spans(result) == [(0, text.index("\n")), (text.index("Alan"), len(text) - 1)]


def test_the_async_forms() -> None:
    async def go() -> tuple[list[Any], list[Any]]:
        text = "Grace Hopper was born in 1906 in New York.\nKind regards"
        every = await aextract_all(text, Born, tiers=["local"])
        streamed = [v async for v in aextract_iter(text, Born, tiers=["local"])]
        return every, streamed

    every, streamed = asyncio.run(go())
    assert [(v.name, v.year) for v in every] == [("Grace Hopper", "1906")] == [(v.name, v.year) for v in streamed]


def test_a_span_that_cannot_be_read_is_named_not_dropped() -> None:
    text = "Grace Hopper was born in 1906 in New York.\nAlan Turing was born in 1912 in London.\n"
    with pytest.raises(ExtractionFailed, match=r"2 span\(s\) of the text could not be read") as info:
        extract_all(text, Born, tiers=["local"], max_tokens=8)  # no item can be complete in 8 tokens
    failed = [e for e in info.value.result.items if e["status"] == "failed"]
    assert [(e["start"], e["end"], e["error"]["type"]) for e in failed] == [
        (0, text.index("\n"), "truncated"), (text.index("Alan"), len(text) - 1, "truncated")]
