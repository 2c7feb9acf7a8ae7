"""``extract check`` / ``check_spec``: the report for every shipped schema and grammar, refusals
named by feature, practical warnings, and bad input as exit code 2 — all without a model call."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from extract import ConfigError, check_spec, compile_spec
from extract.front.cli import app
from extract.spec.features import TIER_SUPPORT
from extract.tiers import REGISTRY

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _schema_targets() -> list[str]:
    """``module:Class`` for every Pydantic model defined in a module of schemas/."""
    targets = []
    for path in sorted((REPO / "schemas").glob("*.py")):
        if path.stem == "__init__":
            continue
        module = importlib.import_module(f"schemas.{path.stem}")
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseModel) and obj.__module__ == module.__name__:
                targets.append(f"{module.__name__}:{name}")
    return targets


SCHEMAS = _schema_targets()
GRAMMARS = sorted(str(p.relative_to(REPO)) for p in (REPO / "grammars").glob("*.lark"))


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def test_the_listings_are_not_empty() -> None:
    assert len(SCHEMAS) >= 4 and "schemas.address:Address" in SCHEMAS
    assert {"grammars/sql.lark", "grammars/arithmetic.lark"} <= set(GRAMMARS)


@pytest.mark.parametrize("target", SCHEMAS)
def test_every_schema_gets_a_full_report(target: str) -> None:
    spec = _load(target)
    report = check_spec(spec, tiers=["local"])
    assert report.ok and report.exit_code == 0, report.render()
    assert [t.tier for t in report.tiers] == list(REGISTRY)
    local = next(t for t in report.tiers if t.tier == "local")
    assert local.configured and local.supported and local.can_run
    # The feature table is the spec's own features, each with a verdict for every tier.
    assert {f.feature for f in report.features} == set(compile_spec(spec).features)
    assert all(set(f.tiers) == set(REGISTRY) for f in report.features)
    assert report.local_max_tokens is not None and report.local_max_tokens > 0
    assert report.compile is not None and report.compile.error is None
    assert report.compile.cold_s is not None and report.compile.cold_s > 0
    text = report.render()
    assert all(name in text for name in REGISTRY) and "verdict: ok" in text
    assert json.loads(json.dumps(report.to_json_dict()))["ok"] is True


@pytest.mark.parametrize("path", GRAMMARS)
def test_every_grammar_gets_a_full_report(path: str) -> None:
    report = check_spec(REPO / path, tiers=["local"])
    assert report.kind == "grammar" and report.grammar is not None
    assert report.grammar.parses_with_lark and not report.grammar.subset_problems
    assert report.grammar.llguidance_error is None
    assert report.ok, report.render()
    assert report.compile is not None and report.compile.cold_s is not None and report.compile.warm_s is not None
    # A shipped grammar compiles, so each tier's verdict is its capability-table row.
    assert {t.tier: t.supported for t in report.tiers} == {t: "grammar" in TIER_SUPPORT[t] for t in REGISTRY}
    assert "parses with lark: yes" in report.render()


def test_cli_reports_a_schema_as_json() -> None:
    res = runner.invoke(app, ["check", "schemas.invoice:Invoice", "--tier", "local", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["ok"] is True and doc["spec"] == "Invoice"
    assert {t["tier"]: t["can_run"] for t in doc["tiers"]}["local"] is True
    assert "enum" in {f["feature"] for f in doc["features"]}


UNSUPPORTED = {
    "type": "object",
    "properties": {
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 5,
                 "uniqueItems": True, "description": "distinct tags"},
    },
    "required": ["tags"],
}


def test_local_checks_unique_items_after_and_refuses_what_llguidance_cannot_compile(tmp_path: Path) -> None:
    report = check_spec(UNSUPPORTED, tiers=["local"])
    local = next(t for t in report.tiers if t.tier == "local")
    assert local.supported and report.exit_code == 0
    assert [(c.feature, c.where) for c in report.checked_after] == [("unique_items", "/properties/tags")]
    # Overlapping patternProperties: llguidance cannot compile them, and nothing can be left out.
    overlapping = {"type": "object", "patternProperties": {"^a": {"type": "string"}, "^ab": {"type": "integer"}}}
    report = check_spec(overlapping, tiers=["local"])
    local = next(t for t in report.tiers if t.tier == "local")
    assert not local.supported and local.feature == "json_schema"
    assert local.reason is not None and "not disjoint" in local.reason
    assert not report.ok and report.exit_code == 1
    # The remote tiers validate after the fact: their capability row honours it.
    native = next(t for t in report.tiers if t.tier == "native")
    assert native.supported and not native.configured
    path = tmp_path / "overlap.json"
    path.write_text(json.dumps(overlapping), encoding="utf-8")
    res = runner.invoke(app, ["check", str(path), "--tiers", "local"])
    assert res.exit_code == 1
    assert "not disjoint" in res.stdout and "NO configured tier" in res.stdout
    path.write_text(json.dumps(UNSUPPORTED), encoding="utf-8")
    res = runner.invoke(app, ["check", str(path), "--tiers", "local"])
    assert res.exit_code == 0 and "validated against the whole schema" in res.stdout


def test_not_is_checked_after_by_local_and_repair() -> None:
    schema = {"type": "object", "properties": {"x": {"not": {"type": "null"}}}}
    report = check_spec(schema, tiers=["local", "repair"])
    assert all(t.supported for t in report.tiers)
    assert [(c.feature, c.where) for c in report.checked_after] == [("not", "/properties/x")]
    assert report.exit_code == 0


class Node(BaseModel):
    name: str
    children: list[Node] = []


class Loose(BaseModel):
    title: str
    colour: str = Field(pattern=r"^[a-z]+\b", description="a colour word")
    code: str = Field(json_schema_extra={"enum": [f"C{i:03d}" for i in range(100)]}, description="a code")
    words: list[str] = Field(description="all words")


def test_practical_warnings_name_the_field() -> None:
    report = check_spec(Loose, tiers=["local"], measure_compile=False)
    by_code: dict[str, list[str]] = {}
    for w in report.warnings:
        by_code.setdefault(w.code, []).append(f"{w.path} {w.message}")
    assert any("/properties/title" in m for m in by_code["unbounded_string"])
    assert any("/properties/words" in m for m in by_code["unbounded_list"])
    assert any("title" in m for m in by_code["no_description"])
    assert any("word boundary" in m and "/properties/colour" in m for m in by_code["regex_unsupported"])
    assert any("100 values" in m for m in by_code["huge_enum"])
    assert "optional_fields" not in by_code  # every field of Loose is required
    from schemas.address import Address

    address = check_spec(Address, tiers=["local"], measure_compile=False)
    assert any(w.code == "optional_fields" and "ZipCode" in w.message for w in address.warnings)
    lookahead = {"type": "object", "properties": {"c": {"type": "string", "pattern": "^(?!grey)[a-z]{1,9}$"}}}
    local = check_spec(lookahead, tiers=["local"], measure_compile=False)
    assert any(w.code == "regex_unsupported" and "lookahead" in w.message for w in local.warnings)
    assert next(t for t in local.tiers if t.tier == "local").supported  # decoded without it, checked after
    assert [(c.feature, c.where) for c in local.checked_after] == [("string_pattern", "/properties/c")]
    recursive = check_spec(Node, tiers=["local"], measure_compile=False)
    assert "recursion" in {w.code for w in recursive.warnings}


def test_a_tight_schema_has_no_budget_or_description_warnings() -> None:
    class Tight(BaseModel):
        year: int = Field(ge=1800, le=2030, description="year of publication")
        kind: str = Field(max_length=12, description="article or book")

    report = check_spec(Tight, tiers=["local"], measure_compile=False)
    assert report.warnings == []
    assert report.max_output_chars is not None and report.max_output_chars < 200


def test_a_grammar_outside_the_llguidance_subset_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "prio.lark"
    path.write_text('start: a\n// a comment\na.2: "x"\n', encoding="utf-8")
    report = check_spec(path, tiers=["local"])
    assert report.grammar is not None and report.grammar.parses_with_lark
    assert report.grammar.subset_problems[0]["line"] == 3
    assert all(not t.supported and t.feature == "grammar_priority" for t in report.tiers)
    res = runner.invoke(app, ["check", str(path)])
    assert res.exit_code == 1 and "line 3" in res.stdout


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        ('{"name": "x", "version": 1}', ".json", "not a schema"),
        ("this is not json", ".json", "is not JSON"),
        ('{"type": 12}', ".json", "not a valid JSON Schema"),
        ("start: a\na: \"x\" |\n)", ".lark", "does not parse with lark: line 3"),
        ('start: b\n', ".lark", "does not parse with lark"),
        ("1600 Pennsylvania Avenue", ".txt", "expected module:Class or a .json file"),
    ],
)
def test_bad_files_exit_2_with_a_clear_message(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    path = tmp_path / f"spec{suffix}"
    path.write_text(content, encoding="utf-8")
    res = runner.invoke(app, ["check", str(path)])
    assert res.exit_code == 2, res.output
    assert message in res.stderr and res.stdout == ""


@pytest.mark.parametrize(
    "target, message",
    [
        ("no_such_module_xyz:Model", "cannot import 'no_such_module_xyz'"),
        ("schemas.address:NoSuchClass", "has no attribute 'NoSuchClass'"),
        ("schemas.address:__doc__", "a spec must be"),
        ("grammars/missing.lark", "missing.lark"),
    ],
)
def test_bad_targets_exit_2(target: str, message: str) -> None:
    res = runner.invoke(app, ["check", target])
    assert res.exit_code == 2, res.output
    assert message in res.stderr


def test_check_spec_raises_config_error_for_a_json_object_that_is_not_a_schema() -> None:
    with pytest.raises(ConfigError, match="not a schema"):
        check_spec({"name": "x"})


# parse_output takes a spec as the user writes it (the README calls it with a model class),
# not only the compiled Spec the tiers pass.


class _Pet(BaseModel):
    name: str
    age: int


def test_parse_output_takes_a_model_class() -> None:
    from extract import parse_output

    checked = parse_output('Sure! ```json\n{"name": "Rex", "age": 3}\n```', _Pet)
    assert checked.ok and checked.value == _Pet(name="Rex", age=3)
    assert checked.repaired and checked.repairs == ["strip_code_fence", "strip_surrounding_text"]
    assert parse_output('{"name": "Rex"}', _Pet).error.type == "schema_violation"  # type: ignore[union-attr]
    # Compiled once: the model class and the Spec the tiers pass are the same cached Spec.
    assert compile_spec(_Pet) is compile_spec(_Pet)


def test_parse_output_takes_a_json_schema_dict() -> None:
    from extract import parse_output

    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    checked = parse_output('{"age": 3}', schema)
    assert checked.ok and checked.value == {"age": 3} and not checked.repaired
    assert parse_output('{"age": "old"}', schema).error.type == "schema_violation"  # type: ignore[union-attr]
    assert compile_spec(dict(schema)) is compile_spec(schema)


def test_parse_output_takes_a_regex() -> None:
    from extract import Regex, parse_output

    spec = Regex(r"\d{4}-\d{2}-\d{2}")
    assert parse_output("2021-03-04", spec).value == "2021-03-04"
    stripped = parse_output(" 2021-03-04\n", spec)
    assert stripped.value == "2021-03-04" and stripped.repairs == ["strip_whitespace"]
    assert parse_output("March 4th", spec).error.type == "regex_mismatch"  # type: ignore[union-attr]


def test_parse_output_takes_a_grammar() -> None:
    from extract import Grammar, parse_output

    grammar = Grammar.from_text('start: "SELECT " NAME\nNAME: /[a-z]+/\n')
    assert parse_output("SELECT name", grammar).value == "SELECT name"
    assert parse_output("DELETE name", grammar).error.type == "parse_error"  # type: ignore[union-attr]


def test_parse_output_refuses_what_is_not_a_spec() -> None:
    from extract import parse_output

    with pytest.raises(ConfigError, match="a spec must be"):
        parse_output("{}", "not a spec")


def test_a_fragment_into_a_remote_ref_is_checked_as_far_as_it_can_be_not_raised() -> None:
    """Offline, a remote document reads as ``{}``; a ``$ref`` into it used to raise
    ``PointerToNowhere`` out of ``Extractor.run`` (JSON Schema Test Suite, refRemote.json)."""
    from extract import parse_output

    schema = {"type": "object", "properties": {
        "n": {"$ref": "http://localhost:1234/draft2020-12/subSchemas.json#/$defs/integer"},
        "name": {"type": "string"}}, "required": ["name"]}
    spec = compile_spec(schema)
    assert parse_output('{"n": 1, "name": "x"}', spec).error is None
    bad = parse_output('{"n": 1}', spec).error
    assert bad is not None and bad.type == "schema_violation"
