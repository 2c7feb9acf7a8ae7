"""Lark grammars as output specs: the shipped grammars, bad grammars, checking, the local tier."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

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
from extract.spec.features import ensure_supported
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


def test_remote_tiers_refuse_grammar_specs_until_they_check_parse_errors() -> None:
    spec = compile_spec(Grammar.from_text(RANGE))
    for tier in ("native", "instructor", "repair"):
        with pytest.raises(UnsupportedSchema, match="grammar"):
            ensure_supported(spec.features, tier)
    ensure_supported(spec.features, "local")


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
