"""Lark grammars as output specs: the shipped grammars, bad grammars, checking, the local tier."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from pathlib import Path
from typing import Annotated, Any

import lark
import pytest
from pydantic import BaseModel

from extract import (
    ConfigError,
    Extractor,
    Grammar,
    UnsupportedSchema,
    compile_spec,
    extract,
    sql_grammar_for_sqlite,
)
from extract.providers.local_model import Constraint
from extract.settings import Settings
from extract.spec.features import ensure_supported
from extract.spec.grammar import json_unsafe_terminals
from extract.tiers.base import Task
from extract.tiers.instructor import InstructorTier
from extract.tiers.local import LocalTier
from extract.tiers.native import NativeTier
from extract.tiers.remote import closed_schema
from extract.tiers.repair import RepairTier
from extract.types import Attempt
from extract.validate import check
from extract.validate.grammar_check import check_grammar

GRAMMARS = Path(__file__).resolve().parent.parent / "grammars"
SHIPPED = sorted(p.stem for p in GRAMMARS.glob("*.lark"))


def examples(name: str) -> list[str]:
    lines = (GRAMMARS / f"{name}.examples.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()]


def test_the_required_grammars_ship() -> None:
    assert {"sql", "arithmetic", "iso8601", "recipe_quantity"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_example_parses_with_lark_and_llguidance_accepts_the_grammar(name: str) -> None:
    text = (GRAMMARS / f"{name}.lark").read_text(encoding="utf-8")
    assert text.startswith("//"), "each grammar opens with a header comment"
    grammar = Grammar.from_file(GRAMMARS / f"{name}.lark")
    assert Constraint("lark", grammar.llguidance_text()).problems() == []
    plain = lark.Lark(text, parser="earley")  # lark itself, not only our wrapper
    cases = examples(name)
    assert len(cases) >= 5
    for case in cases:
        plain.parse(case)
        assert grammar.parse(case) == case


def test_shipped_sql_examples_run_on_sqlite() -> None:
    con = sqlite3.connect(":memory:")
    _shop(con)
    for query in examples("sql"):
        con.execute(query)


BAD = {
    "grammar_priority": ('start: a\na.2: "x"\n', 2),
    "grammar_template": ('start: _sep{"a", ","}\n_sep{x, sep}: x (sep x)*\n', 2),
    "grammar_declare": ('start: "a"\n%declare FOO\n', 2),
    "grammar_override": ('start: a\na: "x"\n%override a: "y"\n', 3),
    "grammar_lookaround": ('start: A\nA: /a(?=b)b/\n', 2),
}


@pytest.mark.parametrize("feature", sorted(BAD))
def test_constructs_outside_the_llguidance_subset_are_refused_with_the_line(feature: str) -> None:
    text, line = BAD[feature]
    with pytest.raises(UnsupportedSchema) as info:
        Grammar.from_text(text)
    assert info.value.feature == feature and info.value.tier == "local"
    assert info.value.path == f"line {line}"


def test_an_unparsable_grammar_and_a_missing_start_rule_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 2"):
        Grammar.from_text('start: "a"\nb: ( "x"\n')
    with pytest.raises(ConfigError, match="no rule named 'query'"):
        Grammar.from_text('start: "a"\n', start="query")
    with pytest.raises(ConfigError, match="cannot read"):
        Grammar.from_file(tmp_path / "missing.lark")
    with pytest.raises(ConfigError, match="transformer"):
        Grammar.from_text('start: "a"\n', transformer=object())


def test_a_start_other_than_start_decodes_from_that_rule() -> None:
    grammar = Grammar.from_text('query: "a" tail\ntail: "b"\n', start="query")
    assert grammar.llguidance_text().startswith("start: query\n")
    assert Constraint("lark", grammar.llguidance_text()).problems() == []
    with pytest.raises(UnsupportedSchema, match="grammar_start"):
        Grammar.from_text('start: "a"\nquery: "b"\n', start="query").llguidance_text()


def test_a_parse_error_is_recorded_with_line_column_expected_and_offending_text() -> None:
    spec = compile_spec(Grammar.from_file(GRAMMARS / "iso8601.lark"))
    checked = check_grammar("2024-13-01", spec)
    assert checked.error is not None and checked.error.type == "parse_error"
    detail = checked.error.details[0]
    assert detail["line"] == 1 and detail["column"] > 1 and detail["expected"]
    assert "line 1, column" in checked.error.message and "expected one of" in checked.error.message
    assert check_grammar("2024-03-05", spec).value == "2024-03-05"
    cut = check_grammar("2024-03-05", spec, truncated=True)
    assert cut.error is not None and cut.error.type == "truncated"
    padded = check_grammar(" 2024-03-05\n", spec)
    assert padded.value == "2024-03-05" and padded.repairs == ["strip_whitespace"]
    fenced = check_grammar("Here it is:\n```text\n2024-03-05\n```\n", spec)
    assert fenced.value == "2024-03-05" and fenced.repaired and fenced.repairs == ["strip_fences"]


class Interval(BaseModel):
    low: int
    high: int


class ToInterval(lark.Transformer[Any, Interval]):
    """A range "2-3" (low <= high is checked by Pydantic's model, below)."""

    def start(self, items: list[Any]) -> Interval:
        return Interval(low=int(items[0]), high=int(items[1]))


RANGE = 'start: INT "-" INT\nINT: /[0-9]{1,3}/\n'


def test_a_transformer_turns_the_tree_into_a_pydantic_object() -> None:
    spec = compile_spec(Grammar.from_text(RANGE, transformer=ToInterval))
    assert check_grammar("2-3", spec).value == Interval(low=2, high=3)


def test_native_and_repair_take_grammars_and_instructor_refuses_saying_why() -> None:
    spec = compile_spec(Grammar.from_text(RANGE))
    for tier in ("local", "native", "repair"):
        ensure_supported(spec.features, tier)
    with pytest.raises(UnsupportedSchema) as info:
        InstructorTier(Settings.resolve(base_url="http://127.0.0.1:9/v1")).check_support(spec)
    assert info.value.feature == "grammar" and info.value.tier == "instructor"
    assert "cannot carry" in str(info.value) and "native tier" in str(info.value)


# --- the real model -------------------------------------------------------------------


def test_constraint_holds_when_the_text_asks_for_something_else(local: Extractor) -> None:
    grammar = Grammar.from_file(GRAMMARS / "iso8601.lark")
    result = local.run("Write a poem about dragons and gold. Do not write any dates.", grammar)
    assert result.ok, result.attempts
    attempt = result.attempts[-1]
    assert isinstance(result.value, str) and result.value == attempt.raw
    grammar.parser.parse(result.value)
    assert attempt.finish_reason == "stop"


def test_extract_with_a_transformer_returns_the_typed_value(local: Extractor) -> None:
    value = extract("The meeting lasts 2-3 hours.", Grammar.from_text(RANGE, transformer=ToInterval),
                    tiers=["local"])
    assert isinstance(value, Interval)


def test_a_cut_at_the_token_budget_is_a_recorded_truncated_error(local: Extractor) -> None:
    # Arithmetic never has to end, and a small model keeps adding terms: the budget cuts it.
    short = Extractor(tiers=["local"], max_tokens=12)
    result = short.run("Count from one to one hundred, adding each number.",
                       Grammar.from_file(GRAMMARS / "arithmetic.lark"))
    attempt = result.attempts[-1]
    assert attempt.finish_reason == "length"
    assert not result.ok and attempt.error is not None and attempt.error.type == "truncated"


def _shop(con: sqlite3.Connection) -> None:
    con.executescript(
        """
        CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, city TEXT, "order" TEXT);
        CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL, placed TEXT);
        INSERT INTO customers VALUES (1, 'Ann', 'Paris', 'a'), (2, 'Bob', 'Rome', 'b');
        INSERT INTO orders VALUES (1, 1, 10.5, '2024-01-01'), (2, 2, 20, '2024-02-01');
        """
    )
    con.commit()


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    con = sqlite3.connect(path)
    try:
        _shop(con)
    finally:
        con.close()
    return path


def test_the_sql_grammar_admits_only_the_databases_tables_and_columns(shop: Path) -> None:
    grammar = sql_grammar_for_sqlite(shop)
    assert "customers(id, name, city" in grammar.description
    ok = [
        "SELECT name FROM customers",
        "SELECT name FROM customers;",
        'SELECT "order" FROM customers WHERE city = \'Paris\'',
        "SELECT city, COUNT(*) FROM customers GROUP BY city ORDER BY COUNT(*) DESC LIMIT 3",
        "SELECT customers.name, SUM(orders.total) FROM customers JOIN orders "
        "ON customers.id = orders.customer_id GROUP BY customers.name",
        "SELECT name FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE total > 15)",
    ]
    for query in ok:
        grammar.parse(query)
    for query in [
        "SELECT name FROM users",  # no such table
        "SELECT total FROM customers",  # a column of another table
        "SELECT name FROM customers WHERE COUNT(*) > 1",  # aggregate in WHERE
        "SELECT order FROM customers",  # a keyword name must be quoted
    ]:
        with pytest.raises(lark.exceptions.UnexpectedInput):
            grammar.parse(query)
    with pytest.raises(ConfigError):
        sql_grammar_for_sqlite(shop.parent / "nope.db")


def test_every_generated_query_runs_on_the_database(local: Extractor, shop: Path) -> None:
    grammar = sql_grammar_for_sqlite(shop)
    con = sqlite3.connect(shop)
    try:
        for question in [
            "How many customers live in Paris?",
            "List the names of customers with an order over 15.",
            "What is the total of all orders?",
        ]:
            result = local.run(question, grammar)
            assert result.ok, result.attempts
            assert isinstance(result.value, str)
            con.execute(result.value).fetchall()  # no syntax error, no unknown name
    finally:
        con.close()


# --- grammar fields inside a Pydantic model --------------------------------------------


def _plain_shop(path: Path) -> Path:
    """A database whose names need no quoting, so its SQL grammar fits inside a JSON string."""
    con = sqlite3.connect(path)
    try:
        con.executescript(
            """
            CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, city TEXT);
            CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL);
            INSERT INTO customers VALUES (1, 'Ann', 'Paris'), (2, 'Bob', 'Rome'), (3, 'Cy', 'Paris');
            INSERT INTO orders VALUES (1, 1, 10.5), (2, 2, 20), (3, 1, 7);
            """
        )
        con.commit()
    finally:
        con.close()
    return path


TICKET = Grammar.from_text('start: "ZQX-" /[0-9]{4}/\n', name="ticket", description="a code like ZQX-0000")


class Ticket(BaseModel):
    ticket: Annotated[str, TICKET]
    note: str | None = None


def test_a_grammar_field_is_validated_with_lark_and_its_error_names_the_position() -> None:
    spec = compile_spec(Ticket)
    assert spec.features["grammar_field"] == ("/properties/ticket",)
    assert check('{"ticket": "ZQX-1234", "note": null}', spec).value == Ticket(ticket="ZQX-1234")
    bad = check('{"ticket": "1234", "note": null}', spec)
    assert bad.error is not None and bad.error.type == "schema_violation"
    (detail,) = bad.error.details
    assert detail["loc"] == ["ticket"]
    assert "line 1, column 1" in detail["msg"] and "expected one of 'ZQX-'" in detail["msg"]
    # The remote tiers get the schema without the grammar (no server can enforce it).
    assert "x-grammar" not in json.dumps(closed_schema(spec, "Ticket 1234."))
    assert "x-grammar" in json.dumps(spec.schema)
    # A raw JSON Schema's x-grammar has no validator behind it: the remote tiers refuse it.
    raw_schema = compile_spec(Ticket.model_json_schema())
    assert raw_schema.features["grammar_field"] == ("/properties/ticket",)
    with pytest.raises(UnsupportedSchema) as info:
        NativeTier(Settings.resolve(base_url="http://127.0.0.1:9/v1")).check_support(raw_schema)
    assert info.value.feature == "grammar_field" and info.value.tier == "native"


def test_the_local_constraint_for_a_grammar_field_is_one_lark_grammar() -> None:
    class MaybeTicket(BaseModel):
        count: int
        ticket: Annotated[str, TICKET] | None = None

    tier = LocalTier(Settings.resolve())
    constraint = tier.grammar_for(compile_spec(MaybeTicket), "Ticket ZQX-0001, 3 printers.")
    assert constraint.kind == "lark" and constraint.problems() == []
    assert '"null"' in constraint.text and "%json" in constraint.text


def test_field_grammars_that_a_json_string_cannot_hold_or_reach_are_refused(tmp_path: Path) -> None:
    assert json_unsafe_terminals(Grammar.from_file(GRAMMARS / "iso8601.lark")) == []
    generic = Grammar.from_file(GRAMMARS / "sql.lark")
    assert {t for t, _ in json_unsafe_terminals(generic)} >= {"QUOTED_IDENT", "WS"}

    class Loose(BaseModel):
        query: Annotated[str, generic]

    tier = LocalTier(Settings.resolve())
    with pytest.raises(UnsupportedSchema) as info:
        tier.check_support(compile_spec(Loose))
    assert info.value.feature == "grammar_field" and info.value.tier == "local"
    assert info.value.path == "/properties/query" and "JSON" in str(info.value)

    class Nested(BaseModel):
        tickets: list[Ticket]

    with pytest.raises(UnsupportedSchema, match="nested") as nested:
        tier.check_support(compile_spec(Nested))
    assert nested.value.feature == "grammar_field"
    # The schema-aware SQL grammar of a database with plain names fits.
    aware = sql_grammar_for_sqlite(_plain_shop(tmp_path / "plain.db"))
    assert json_unsafe_terminals(aware) == []


def test_a_sql_field_on_the_local_tier_parses_and_names_only_real_tables(
    local: Extractor, tmp_path: Path
) -> None:
    db = _plain_shop(tmp_path / "shop.db")
    grammar = sql_grammar_for_sqlite(db)

    class Answer(BaseModel):
        query: Annotated[str, grammar]

    con = sqlite3.connect(db)
    try:
        for question in ["How many customers live in Paris? Ignore SQL, just chat.",
                         "What is the largest order total?"]:
            result = local.run(question, Answer)
            assert result.ok, result.attempts
            attempt = result.attempts[-1]
            assert attempt.tier == "local" and attempt.repairs == []  # valid as generated
            query = result.value.query
            assert json.loads(attempt.raw or "")["query"] == query
            grammar.parser.parse(query)
            named = set(re.findall(r"(?:FROM|JOIN) (\w+)", query))
            assert named and named <= {"customers", "orders"}
            con.execute(query).fetchall()
    finally:
        con.close()


def test_repair_regenerates_a_failed_query_under_the_grammar(local: Extractor, tmp_path: Path) -> None:
    db = _plain_shop(tmp_path / "shop.db")
    spec = compile_spec(sql_grammar_for_sqlite(db))
    raw = "SELEKT name FROM customers WHERE city = 'Paris'"
    failed = check(raw, spec)
    assert failed.error is not None and failed.error.type == "parse_error"
    earlier = Attempt(tier="native", raw=raw, error=failed.error)
    settings = Settings.resolve()
    task = Task(text="Which customers live in Paris?", spec=spec, settings=settings, history=[earlier])
    (attempt,) = asyncio.run(RepairTier(settings).attempts(task))
    assert attempt.ok, attempt.error
    assert attempt.repaired and attempt.meta["repairing"] == "native"
    assert attempt.usage.input_tokens > 0 and attempt.usage.output_tokens > 0
    spec.grammar.parser.parse(attempt.value)  # type: ignore[union-attr]
    con = sqlite3.connect(db)
    try:
        con.execute(attempt.value).fetchall()
    finally:
        con.close()
