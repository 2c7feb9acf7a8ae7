"""Lark grammars and regexes as GBNF (``extract.spec.gbnf``), checked by llama.cpp itself.

Each converted grammar is parsed by llama.cpp's grammar code (``tests/llama_grammar.py``, the
sampler API the server uses) and compared with its Lark source: every known-good sentence
(the ``grammars/*.examples.txt`` files, the benchmark's gold SQL) must be accepted, and every
mutant of one (a character dropped, added, swapped; a cut) that lark rejects must be rejected.
The converse is checked too: a mutant llama.cpp accepts must parse with lark, so what the
server lets the model write is always a sentence of the grammar. No model is run here.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
from pathlib import Path

import lark
import pytest

from extract import Grammar, Regex, compile_spec, sql_grammar_for_sqlite
from extract.errors import UnsupportedSchema
from extract.spec.gbnf import grammar_to_gbnf, regex_to_gbnf
from tests.llama_grammar import GrammarRejected, oracle

ROOT = Path(__file__).resolve().parent.parent
GRAMMARS = sorted((ROOT / "grammars").glob("*.lark"))
SHOP = """
CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, city TEXT);
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL, placed TEXT);
CREATE TABLE products(id INTEGER PRIMARY KEY, name TEXT, price REAL);
"""


def mutants(text: str, rng: random.Random, n: int) -> set[str]:
    out: set[str] = set()
    for _ in range(n):
        i = rng.randrange(len(text))
        kind = rng.choice(["drop", "add", "swap", "cut"])
        if kind == "drop":
            out.add(text[:i] + text[i + 1:])
        elif kind == "add":
            out.add(text[:i] + rng.choice("x9 ,(-;'.:/A") + text[i:])
        elif kind == "swap" and i + 1 < len(text):
            out.add(text[:i] + text[i + 1] + text[i] + text[i + 2:])
        else:
            out.add(text[:i])
    return {m for m in out if m}


def lark_accepts(grammar: Grammar, text: str) -> bool:
    try:
        grammar.parser.parse(text)
    except lark.exceptions.UnexpectedInput:
        return False
    return True


def agreement(grammar: Grammar, good: list[str], per_example: int) -> dict[str, list[str]]:
    gbnf = grammar_to_gbnf(grammar)
    llama = oracle()
    llama.check(gbnf)
    rng = random.Random(0)
    found: dict[str, list[str]] = {"good_refused": [], "bad_accepted": [], "narrower": [], "bad": []}
    for text in good:
        assert lark_accepts(grammar, text), f"not a sentence of {grammar.name}: {text!r}"
        if not llama.accepts(gbnf, text):
            found["good_refused"].append(text)
        for m in sorted(mutants(text, rng, per_example)):
            in_lark, in_gbnf = lark_accepts(grammar, m), llama.accepts(gbnf, m)
            if not in_lark:
                found["bad"].append(m)
            if in_gbnf and not in_lark:
                found["bad_accepted"].append(m)
            elif in_lark and not in_gbnf:
                found["narrower"].append(m)
    return found


def examples(path: Path) -> list[str]:
    return [line for line in path.with_suffix(".examples.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("path", GRAMMARS, ids=[p.stem for p in GRAMMARS])
def test_every_shipped_grammar_reads_the_same_in_llama_cpp(path: Path) -> None:
    grammar = Grammar.from_file(path)
    good = examples(path)
    found = agreement(grammar, good, per_example=3 if path.stem == "sql" else 8)
    assert found["good_refused"] == [], found["good_refused"]
    assert found["bad_accepted"] == [], found["bad_accepted"]
    assert len(found["bad"]) >= len(good), "too few rejected samples to mean anything"
    if path.stem == "sql":
        # Word tokens that touch ("FROMcustomers") are one IDENT to lark unless split by it;
        # the GBNF asks for a space there instead: narrower, never wider. Anything else is a bug.
        for text in found["narrower"]:
            assert re.search(r"[A-Za-z0-9_)][A-Za-z0-9_]", text), text
    else:
        assert found["narrower"] == []


def test_a_schema_aware_sql_grammar_reads_the_same(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    con = sqlite3.connect(db)
    con.executescript(SHOP)
    con.close()
    grammar = sql_grammar_for_sqlite(db)
    good = [json.loads(line)["sql"] for line in (ROOT / "benchmarks" / "text_to_sql.jsonl").read_text().splitlines()
            if line.strip()]
    good = [q for q in good if lark_accepts(grammar, q)]
    assert len(good) >= 6  # the gold queries the schema-aware grammar's shape covers
    found = agreement(grammar, good, per_example=4)
    assert found == {**found, "good_refused": [], "bad_accepted": [], "narrower": []}


def test_left_recursion_is_rewritten_and_whitespace_is_free() -> None:
    gbnf = grammar_to_gbnf(Grammar.from_file(ROOT / "grammars" / "arithmetic.lark"))
    assert "r-sum ::= (r-product) (" in gbnf  # sum: sum "+" product, as llama.cpp can read it
    llama = oracle()
    assert llama.accepts(gbnf, " 1 +  2*3 ")
    assert not llama.accepts(gbnf, "1 + + 2")


REGEXES = [
    (r"[A-Z]{3}-\d{4}", ["ABC-1234"], ["AB-1234", "ABC-12345", "abc-1234", "ABC-1234 "]),
    (r"^(?:\+|-)?\d+(\.\d{1,2})?$", ["12", "-3.5", "+0.25"], ["1.", ".5", "1.234", "--1"]),
    (r"(?i)yes|no", ["YES", "No", "nO"], ["yess", "n", ""]),
    (r"[^\s@]+@[^\s@]+\.[a-z]{2,}", ["a.b@c.org", "é@x.fr"], ["a b@c.org", "a@b", "a@@b.org"]),
    (r"\w+(?: \w+)*?\.", ["one two."], ["one  two.", "one two"]),
    (r"a.c", ["abc", "a-c"], ["a\nc", "ac"]),
]


@pytest.mark.parametrize(("pattern", "good", "bad"), REGEXES)
def test_regexes_read_the_same_in_llama_cpp(pattern: str, good: list[str], bad: list[str]) -> None:
    gbnf = regex_to_gbnf(pattern)
    llama = oracle()
    for text in good:
        assert re.fullmatch(pattern, text) and llama.accepts(gbnf, text), (pattern, text, gbnf)
    for text in bad:
        if text:
            assert not re.fullmatch(pattern, text) and not llama.accepts(gbnf, text), (pattern, text, gbnf)


@pytest.mark.parametrize(("pattern", "feature", "named"), [
    (r"(?<=x)\d+", "regex_lookaround", "lookaround"),
    (r"\d+(?!px)", "regex_lookaround", "lookaround"),
    (r"(a)b\1", "regex_backreference", "backreference"),
    (r"\bword\b", "regex_anchor", "word boundary"),
    (r"a++", "regex_possessive", "possessive"),
])
def test_regex_constructs_gbnf_cannot_say_are_refused_by_name(pattern: str, feature: str, named: str) -> None:
    with pytest.raises(UnsupportedSchema) as info:
        regex_to_gbnf(pattern)
    assert info.value.feature == feature and info.value.tier == "native"
    assert named in str(info.value) and pattern in str(info.value)


def test_indirect_left_recursion_is_refused_naming_the_rule() -> None:
    grammar = Grammar.from_text('start: a\na: b "x" | "y"\nb: a "z" | "w"\n', name="loop")
    with pytest.raises(UnsupportedSchema) as info:
        grammar_to_gbnf(grammar)
    assert info.value.feature == "grammar_left_recursion" and info.value.path in ("rule a", "rule b")
    direct = Grammar.from_text('start: a\na: a "x" | "y"\n', name="direct")
    assert oracle().accepts(grammar_to_gbnf(direct), "yxx")


def test_the_oracle_itself_refuses_what_llama_cpp_cannot_parse() -> None:
    with pytest.raises(GrammarRejected):
        oracle().check("root ::= (")
    with pytest.raises(GrammarRejected):
        oracle().check('root ::= a\na ::= a "x" | "y"')  # llama.cpp refuses left recursion


def test_the_native_tier_checks_a_gbnf_before_sending_it() -> None:
    # llama-cpp-python's server dies of a segfault on a grammar it cannot parse (measured), so
    # the tier asks llama.cpp's parser first, with no model loaded.
    from extract.providers.openai_compat import gbnf_refusal

    assert gbnf_refusal("root ::= (") is not None
    assert gbnf_refusal('root ::= a\na ::= a "x" | "y"') is not None
    for path in GRAMMARS:
        assert gbnf_refusal(grammar_to_gbnf(Grammar.from_file(path))) is None, path.name


def test_a_model_with_grammar_fields_becomes_one_gbnf() -> None:
    from typing import Annotated

    from pydantic import BaseModel

    from extract import compile_spec
    from extract.spec import local_constraint
    from extract.spec.gbnf import object_gbnf

    ticket = Grammar.from_text('start: "ZQX-" /[0-9]{4}/\n', name="ticket")
    arithmetic = Grammar.from_file(ROOT / "grammars" / "arithmetic.lark")

    class Form(BaseModel):
        ticket: Annotated[str, ticket]
        note: str
        expr: Annotated[str, arithmetic] | None = None

    gbnf = object_gbnf(local_constraint(compile_spec(Form), "a short input"))
    llama = oracle()
    assert llama.accepts(gbnf, '{"ticket": "ZQX-1234", "note": "hi", "expr": "1 + 2*3"}')
    assert llama.accepts(gbnf, '{"ticket":"ZQX-1234","note":"hi","expr":null}')
    assert not llama.accepts(gbnf, '{"ticket": "ZQX-12", "note": "hi", "expr": null}')
    assert not llama.accepts(gbnf, '{"ticket": "ZQX-1234", "note": "hi", "expr": "1 +"}')

    class Unsafe(BaseModel):  # sql.lark's STRING can hold a double quote: not inside JSON as is
        query: Annotated[str, Grammar.from_file(ROOT / "grammars" / "sql.lark")]

    with pytest.raises(UnsupportedSchema) as info:
        object_gbnf(local_constraint(compile_spec(Unsafe), "a short input"))
    assert info.value.feature == "grammar_field" and info.value.path == "/properties/query"


def test_a_runaway_is_its_repeated_tail_and_is_cut_before_the_loop() -> None:
    from extract.validate import check
    from extract.validate.grammar_check import cut_runaway, runaway

    arithmetic = Grammar.from_file(ROOT / "grammars" / "arithmetic.lark")
    loop = "1.0  + -  -   -   -   -   -   -   -   -   -   -   -   -   -"
    assert runaway(loop) == (8, 4)
    assert cut_runaway(loop, arithmetic.parse, (lark.exceptions.UnexpectedInput,))[0] == "1.0"  # type: ignore[index]
    # A prefix ends between tokens, never inside a number, and keeps one whole unit of the loop.
    numbers = "1.111111111111 - 2.111111111111 - 2.111111111111 - 2.111111111111 - "
    assert cut_runaway(numbers, arithmetic.parse, (lark.exceptions.UnexpectedInput,))[0] == (  # type: ignore[index]
        "1.111111111111 - 2.111111111111")
    assert runaway("SELECT name FROM customers WHERE city = 'Paris'") is None
    assert runaway("1 + 2 + 3") is None  # too short to be a loop
    spec = compile_spec(arithmetic)
    # Only an answer cut at the token limit is cut; the same text that ended by itself is an error.
    cut = check(loop, spec, truncated=True)
    assert cut.error is None and cut.value is not None and cut.repairs == ["cut_runaway"] and cut.repaired
    assert check(loop, spec).error is not None
    # A cut answer that is no loop stays truncated: its end may be the answer's.
    assert check("SELECT name FROM customers WHERE", compile_spec(Grammar.from_file(ROOT / "grammars" / "sql.lark")),
                 truncated=True).error.type == "truncated"  # type: ignore[union-attr]
    zip_code = compile_spec(Regex(r"[0-9]{5}(-[0-9]{4})?"))
    assert check("20500-0000-0000-0000-0000-", zip_code, truncated=True).value == "20500-0000"
