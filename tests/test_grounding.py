"""Grounded values: offsets that read back in the caller's own string, honest not_found,
confidences from the real local model, review marks, abstention, calibration and the review page."""

from __future__ import annotations

import itertools
import json
import subprocess
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from extract import ConfigError, Extractor, Regex
from extract.report.confidence import auroc, expected_calibration_error, precision_at_coverage
from extract.report.review import doc_from_result, render_review
from extract.spec import compile_spec
from extract.spec.prompt import PROMPT_VERSION
from extract.validate.calibration import Calibration
from extract.validate.grounding import ground_value, json_leaf_spans, normalize, value_confidences
from tests.test_report_html import CHROMIUM_FLAGS, PAGE_ERRORS, _chromium


class Author(BaseModel):
    name: str
    city: str | None = None


class Paper(BaseModel):
    title: str
    authors: list[Author]
    year: int
    published: date
    tags: dict[str, str]


def _reads_back(text: str, field: Any) -> bool:
    f: dict[str, Any] = field if isinstance(field, dict) else field.model_dump()
    pieces = [text[a:b] for a, b in f["spans"]]
    if f["status"] == "exact":
        return pieces == [str(f["value"])]
    return normalize(" ".join(pieces)) == normalize(str(f["value"]))


def test_offsets_read_back_for_nested_models_lists_dicts_and_unicode() -> None:
    # Combining accent (e + U+0301), CJK, emoji (outside the BMP), right-to-left, CRLF, NUL and a lone
    # surrogate before the values: any offset bug shifts everything after them.
    text = ("Cafe\u0301 \u0000 \ud800 r\u00e9sum\u00e9\r\n\u6771\u4eac\u90fd \U0001F600 \u05e9\u05dc\u05d5\u05dd\r\n"
            "Title: Grounding Values Fast. Authors: Ana Lo\u0301pez (Z\u00fcrich), \u5c71\u7530\u592a\u90ce.\r\n"
            "Year 2,024? no: 2024, published March 5, 2024. Tag: \U0001F600 party \u05e9\u05dc\u05d5\u05dd")
    paper = Paper(title="grounding values fast", authors=[Author(name="Ana Lo\u0301pez", city="Z\u00fcrich"),
                                                         Author(name="\u5c71\u7530\u592a\u90ce")],
                  year=2024, published=date(2024, 3, 5),
                  tags={"mood": "\U0001F600 party", "word": "\u05e9\u05dc\u05d5\u05dd", "place": "\u6771\u4eac"})
    fields = {f.path: f for f in ground_value(paper, text)}
    assert set(fields) == {"/title", "/authors/0/name", "/authors/0/city", "/authors/1/name", "/year",
                           "/published", "/tags/mood", "/tags/word", "/tags/place"}
    assert fields["/title"].status == "normalized"  # case differs
    assert fields["/authors/0/name"].status == "exact"
    assert fields["/authors/1/name"].status == "exact"
    assert fields["/tags/mood"].status == "exact" and fields["/tags/place"].status == "exact"
    for f in fields.values():
        assert f.status != "not_found", f
        if f.path != "/published":  # a date stands in another written form (checked below)
            assert _reads_back(text, f), (f.path, [text[a:b] for a, b in f.spans])
    assert text[slice(*fields["/year"].spans[0])] == "2024"
    assert text[slice(*fields["/published"].spans[0])] == "March 5, 2024"
    assert all(f.confidence is None for f in fields.values())  # no tier gave probabilities: none invented


def test_invented_values_are_not_found_and_typos_fuzzy_with_split_spans() -> None:
    text = "Shipped to Springfeld, Illinois on Monday for John Q. Smith."
    fields = {f.path: f for f in ground_value(
        {"city": "Springfield", "company": "Globex", "who": "John Smith", "n": 17, "ok": True}, text)}
    assert fields["/company"].status == "not_found" and fields["/company"].spans == []
    assert fields["/company"].needs_review
    assert fields["/city"].status == "fuzzy" and 0.75 <= (fields["/city"].score or 0) < 1
    assert text[slice(*fields["/city"].spans[0])] == "Springfeld"
    who = fields["/who"]
    assert who.status == "fuzzy" and [text[a:b] for a, b in who.spans] == ["John", "Smith"]
    assert fields["/n"].status == "not_found" and fields["/ok"].status == "not_found"


def test_two_fields_on_the_same_characters_are_contested() -> None:
    fields = ground_value({"a": "Main", "b": "Main St", "c": "Oak"}, "12 Main St, Oak Park")
    assert [f.contested for f in fields] == [True, True, False]


def test_value_confidences_count_only_chosen_tokens() -> None:
    raw = '{"a":"xy","b":null,"c":[3]}'
    assert json_leaf_spans(raw) == {"/a": (5, 9), "/b": (14, 18), "/c/0": (24, 25)}
    # tokens: {"a":  "x  y"  ,"b":  null  ,"c":[  3  ]}
    ends = [5, 7, 9, 14, 18, 24, 25, 27]
    lps = [None, -0.5, -0.25, None, -1.0, None, None, None]
    conf = value_confidences(raw, ends, lps)
    assert conf["/a"] == pytest.approx(2.718281828 ** -0.75, rel=1e-4)
    assert conf["/b"] == pytest.approx(2.718281828 ** -1.0, rel=1e-4)
    assert conf["/c/0"] == 1.0  # forced: probability 1 under the constraint
    assert value_confidences("{not json", [9], [-1.0]) == {}


def test_calibration_metrics_and_files(tmp_path: Path) -> None:
    scores = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]
    labels = [False, False, True, False, True, True, True, True]
    assert auroc(scores, labels) == pytest.approx(14 / 15)
    assert precision_at_coverage(scores, labels, 0.5) == 1.0
    assert expected_calibration_error(scores, labels) is not None
    cal = Calibration.fit(scores, labels, spec_digest="s", model_digest="m", prompt_version="p")
    assert cal(0.05) == 0.0 and cal(0.95) == 1.0
    assert all(cal(a) <= cal(b) for a, b in itertools.pairwise(scores))  # monotone
    path = tmp_path / "cal.json"
    cal.save(path)
    assert Calibration.load(path) == cal
    with pytest.raises(ConfigError, match="another schema"):
        Calibration.load(path).check_spec("other")
    with pytest.raises(ConfigError, match="folder"):
        cal.save(tmp_path / "missing" / "cal.json")
    # Per field: a field whose sure-looking values are wrong gets its own (low) map.
    paths = ["/items/0/zip"] * 20 + ["/items/1/dir"] * 20
    by_field = Calibration.fit([0.9] * 40, [True] * 20 + [False] * 20, paths=paths, spec_digest="s",
                               model_digest="m", prompt_version="p")
    assert by_field(0.9, path="/items/7/zip") == 1.0 and by_field(0.9, path="/items/3/dir") == 0.0
    assert by_field(0.9, path="/other") == 0.5
    by_field.save(path)
    assert Calibration.load(path) == by_field


def test_thresholds_outside_zero_one_are_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="review_below"):
        Extractor(["local"], review_below=1.5)
    with pytest.raises(ConfigError, match="abstain_below"):
        Extractor(["local"], abstain_below=-0.1)


# --- the real embedded model ------------------------------------------------------------------

class Person(BaseModel):
    name: str
    city: str | None = None


class Team(BaseModel):
    people: list[Person]


TEXT = "Team: \u00c9lodie Dupont from Montr\u00e9al and \u7530\u4e2d from \u6771\u4eac.\r\nNUL\u0000 end"


def test_local_tier_values_are_grounded_with_deterministic_confidences() -> None:
    ex = Extractor(["local"], cache=False, copy_from_input=True)
    first = ex.run(TEXT, Team)
    second = ex.run(TEXT, Team)
    assert first.ok and first.fields, first.attempts
    winner = first.attempts[-1]
    assert winner.fields == first.fields
    for f in first.fields:
        assert f.path.startswith("/people/")
        assert f.status in ("exact", "normalized"), f  # span-copy: copied from the text
        assert _reads_back(TEXT, f), f
        assert f.confidence is not None and 0.0 < f.confidence <= 1.0
    assert [f.model_dump() for f in first.fields] == [f.model_dump() for f in second.fields]
    assert json.loads(json.dumps(first.to_json_dict()))["fields"] == [f.model_dump(mode="json") for f in first.fields]


def test_a_value_the_model_is_made_to_invent_is_not_found() -> None:
    result = Extractor(["local"], cache=False).run("The parcel left the depot on time.", Regex(r"ZQ-[0-9]{3}"))
    assert result.ok
    (field,) = result.fields
    assert field.path == "" and field.value.startswith("ZQ-")
    assert field.status == "not_found" and field.spans == [] and field.needs_review
    assert field.confidence is not None and 0.0 < field.confidence <= 1.0


def test_review_below_marks_and_abstain_below_withholds_only_nullable_values(tmp_path: Path) -> None:
    marked = Extractor(["local"], cache=False, copy_from_input=True, review_below=1.0).run(TEXT, Team)
    assert marked.fields and all(f.needs_review for f in marked.fields if (f.confidence or 1.0) < 1.0)
    held = Extractor(["local"], cache=False, copy_from_input=True, abstain_below=1.0).run(TEXT, Team)
    assert held.ok
    value = held.value.model_dump()
    for f in held.fields:
        index = int(f.path.split("/")[2])
        key = f.path.split("/")[3]
        if f.confidence is not None and f.confidence < 1.0:
            assert f.needs_review
            # city may be null: withheld; name may not: kept and only marked.
            assert f.withheld == (key == "city")
            assert value["people"][index][key] == (None if key == "city" else f.value)


def test_cache_keeps_fields_and_chunking_keeps_offsets_in_the_whole_text(tmp_path: Path) -> None:
    ex = Extractor(["local"], cache=True, cache_dir=tmp_path, copy_from_input=True)
    fresh = ex.run(TEXT, Team)
    hit = ex.run(TEXT, Team)
    assert hit.cache_hit and hit.fields == fresh.fields and hit.attempts[0].fields == fresh.fields
    long_text = ("Filler words about nothing at all. " * 60) + "Contact: Marta Ruiz from Sevilla."
    chunked = Extractor(["local"], cache=False, copy_from_input=True, n_ctx=512).run(long_text, Person)
    assert len(chunked.chunks) > 1
    for f in chunked.fields:
        assert f.status == "not_found" or _reads_back(long_text, f), f
    if any(f.value == "Marta Ruiz" for f in chunked.fields):
        (marta,) = [f for f in chunked.fields if f.value == "Marta Ruiz"]
        assert marta.spans == [(long_text.index("Marta Ruiz"), long_text.index("Marta Ruiz") + 10)]


def test_a_calibration_for_another_schema_or_model_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    Calibration.fit([0.2, 0.9], [False, True], spec_digest="not-this-spec", model_digest="m",
                    prompt_version=PROMPT_VERSION).save(path)
    with pytest.raises(ConfigError, match="another schema"):
        Extractor(["local"], cache=False, calibration=path).run(TEXT, Team)
    spec_digest = compile_spec(Team).digest
    Calibration.fit([0.2, 0.9], [False, True], spec_digest=spec_digest, model_digest="sha256:other",
                    prompt_version=PROMPT_VERSION).save(path)
    with pytest.raises(ConfigError, match="another model"):
        Extractor(["local"], cache=False, copy_from_input=True, calibration=path).run(TEXT, Team)
    result = Extractor(["local"], cache=False, copy_from_input=True).run(TEXT, Team)
    winner = result.attempts[-1]
    assert winner.model is not None
    Calibration.fit([0.0, 0.5, 0.51, 1.0], [False, False, True, True], spec_digest=spec_digest,
                    model_digest=str(winner.model.digest), prompt_version=PROMPT_VERSION).save(path)
    calibrated = Extractor(["local"], cache=False, copy_from_input=True, calibration=path).run(TEXT, Team)
    for f in calibrated.fields:
        assert f.raw_confidence is not None and f.confidence in (0.0, 1.0)
        assert f.confidence == (0.0 if f.raw_confidence <= 0.5 else 1.0)


def test_review_page_opens_in_chromium_and_shows_every_value(tmp_path: Path) -> None:
    result = Extractor(["local"], cache=False, copy_from_input=True).run(TEXT, Team)
    invented = {"path": "/people/9/name", "value": "Nobody Here", "spans": [], "status": "not_found",
                "confidence": 0.2, "needs_review": True}
    docs = [doc_from_result("team-1", TEXT, result),
            {"id": "second <doc>", "text": "Bob from Oslo", "tier": "native", "repaired": True,
             "fields": [{"path": "/people/0/name", "value": "Bob", "spans": [[0, 3]], "status": "exact",
                         "confidence": None}, invented]}]
    page = render_review(docs, tmp_path / "review.html")
    source = page.read_text(encoding="utf-8")
    assert "<script" not in source and "http://" not in source and "https://" not in source
    chromium = _chromium()
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "review.png"
    proc = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1000,900", "--enable-logging=stderr",
                           "--v=0", page.resolve().as_uri()], capture_output=True, timeout=120, check=False)
    log = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    assert not [line for line in log.splitlines() if PAGE_ERRORS.search(line)]
    from matplotlib.image import imread

    rgb = (imread(str(shot))[:, :, :3] * 255).round()
    assert len({tuple(p) for p in rgb[::10, ::10].reshape(-1, 3).tolist()}) > 10  # not blank: marks are coloured
    dom = subprocess.run([*common, "--dump-dom", page.resolve().as_uri()], capture_output=True, timeout=120,
                         check=False).stdout.decode()
    for f in result.fields:  # every located value is marked in the text, with its tooltip
        assert f'data-path="{f.path}' in dom or f" {f.path}" in dom, f.path
        assert f"path: {f.path}" in dom
    assert "Not found in the text" in dom and "Nobody Here" in dom
    assert 'href="#doc-2"' in dom and "second &lt;doc&gt;" in dom
    with pytest.raises(FileNotFoundError, match="does not exist"):
        render_review(docs, tmp_path / "no" / "review.html")


def test_cli_html_path_in_a_missing_folder_and_review_of_an_output_file(tmp_path: Path) -> None:
    from tests.test_cli import run_cli

    source = tmp_path / "address.txt"
    source.write_text("12 Oak Road, Springfield IL 62704", encoding="utf-8")
    missing = run_cli("run", "--schema", "schemas.address:Address", "--html", str(tmp_path / "nope" / "r.html"),
                      str(source))
    assert missing.returncode == 2 and missing.stdout == b""
    assert b"does not exist" in missing.stderr and b"nope" in missing.stderr
    rows = tmp_path / "out.jsonl"
    rows.write_text(json.dumps({"id": "a1", "ok": True, "tier": "local", "fields": [
        {"path": "/ZipCode", "value": "62704", "spans": [[28, 33]], "status": "exact", "confidence": 0.9}]}) + "\n",
        encoding="utf-8")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"id": "a1", "text": source.read_text(encoding="utf-8")}) + "\n", encoding="utf-8")
    page = tmp_path / "review.html"
    done = run_cli("review", str(rows), "--input", str(inputs), "--out", str(page))
    assert done.returncode == 0, done.stderr
    shown = page.read_text(encoding="utf-8")
    assert 'data-path="/ZipCode"' in shown and ">62704<span" in shown and "path: /ZipCode" in shown


def test_compliance_report_gains_confidence_figures_and_a_reliability_plot(tmp_path: Path) -> None:
    from extract.report import render

    fields = [{"path": "/zip", "value": "62704", "confidence": 0.9},
              {"path": "/city", "value": "Oak", "confidence": 0.3},
              {"path": "/tags/0", "value": "b", "confidence": 0.8},
              {"path": "/street", "value": "x", "confidence": None}]
    rows = [{"data": "d.jsonl", "schema": "s", "policy": "local", "item": str(i), "index": 0, "of": 1, "tier": "local",
             "error": None, "raw": "{}", "fields": fields, "item_ok": True, "item_value": {}, "usage": {},
             "gold": {"zip": "62704", "city": "Springfield", "tags": ["a", "b"]}} for i in range(3)]
    (tmp_path / "attempts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = render(tmp_path)
    conf = summary["runs"][0]["confidence"]["local"]
    assert conf["values"] == 9 and conf["precision"] == pytest.approx(2 / 3)
    assert conf["auroc"] == 1.0 and conf["precision_at_50"] == 1.0  # the wrong city is the least sure
    assert (tmp_path / "reliability.png").is_file()
    assert "Confidence of values" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_extract_bench_fits_a_calibration_the_extractor_accepts(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from extract.front.cli import app
    from schemas.address import Address

    rows = [{"id": f"a{i}", "text": text, "gold": gold} for i, (text, gold) in enumerate([
        ("12 Main St, Springfield, IL 62704",
         {"AddressNumber": "12", "StreetName": "Main", "PlaceName": "Springfield"}),
        ("400 Oak Avenue Apt 5, Denver, CO 80203", {"AddressNumber": "400", "StreetName": "Oak", "ZipCode": "80203"}),
        ("77 Elm Road, Austin, TX 78701", {"AddressNumber": "77", "StreetName": "Elm", "StateName": "TX"}),
    ])]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    runner = CliRunner()
    missing = runner.invoke(app, ["bench", "--data", str(data), "--schema", "schemas.address:Address", "--policy",
                                  "local", "--out", str(tmp_path / "o"), "--fit-calibration",
                                  str(tmp_path / "no" / "cal.json")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    assert not (tmp_path / "o" / "attempts.jsonl").exists()  # refused before any extraction
    cal_path = tmp_path / "cal.json"
    res = runner.invoke(app, ["bench", "--data", str(data), "--schema", "schemas.address:Address", "--policy",
                              "local", "--out", str(tmp_path / "o"), "--fit-calibration", str(cal_path)])
    assert res.exit_code == 0, res.output
    cal = Calibration.load(cal_path)
    assert cal.spec_digest == compile_spec(Address).digest and cal.prompt_version == PROMPT_VERSION
    assert cal.fitted_on["values"] >= 3 and cal.xs and len(cal.xs) == len(cal.ys)
    # The fitted file is for this schema, model and prompt: the Extractor takes it without complaint.
    result = Extractor(["local"], cache=False, calibration=cal_path).run(str(rows[0]["text"]), Address)
    assert result.ok and result.fields
    for f in result.fields:
        assert f.raw_confidence is not None and f.confidence is not None and 0.0 <= f.confidence <= 1.0
        assert f.confidence == cal(f.raw_confidence, f.contested, f.path)


def test_review_note_names_invented_values_first_and_says_when_there_is_no_confidence() -> None:
    """The stderr note of `extract run` (the CLI test runs it on the model): a value not in the
    text leads, whatever its confidence; values with no probability are never called sure."""
    from extract.report.review import review_note
    from extract.types import FieldGrounding, Result

    fields = [FieldGrounding(path="/city", value="Paris", spans=[(10, 15)], status="exact", confidence=0.3,
                             needs_review=True),
              FieldGrounding(path="/name", value="Bob", status="not_found", confidence=0.9, needs_review=True),
              FieldGrounding(path="/zip", value="75001", spans=[(0, 5)], status="exact", confidence=0.95)]
    head, *lines = review_note(Result(tier="local", value={}, fields=fields), 0.5)
    assert head.startswith("review: 2 of 3 values to doubt (confidence below 0.5 or not in the text)")
    assert lines == ['  /name = "Bob"  confidence 0.90, NOT in the text (likely invented)',
                     '  /city = "Paris"  confidence 0.30, in the text at 10-15']
    blind = [f.model_copy(update={"confidence": None, "needs_review": False}) for f in fields[::2]]
    assert review_note(Result(tier="native", value={}, fields=blind), 0.5) == [
        "review: no confidence for the 2 values (tier native gives no probabilities): none is known to be right"]
    assert review_note(Result(tier=None, fields=fields), 0.5) == []  # a failed run says why elsewhere
