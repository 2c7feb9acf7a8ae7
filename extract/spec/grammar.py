"""Lark grammars as output specs: ``Grammar.from_file`` / ``Grammar.from_text``.

A grammar spec asks for text in a language (SQL, arithmetic, ISO-8601 dates) rather than a
JSON object. The same grammar is used twice: llguidance constrains decoding with it on the
local tier, and ``lark`` parses the output to check it (and, with a ``Transformer``, turns the
parse tree into a typed value). Both must read the same text, so a grammar is refused here,
before any model call, when it leaves the Lark subset llguidance accepts (no priorities,
templates, ``%declare``, ``%override`` or lookaround) or when ``lark`` cannot build it.

Without a transformer the extracted value is the generated text itself (a ``str`` known to
parse): a SQL query is wanted as a string to run, and a bare ``lark.Tree`` is neither
serialisable into reports nor what a caller expects. With one, the value is what the
transformer returns (e.g. a Pydantic object).

A grammar can also constrain one string field of a Pydantic model:
``query: Annotated[str, Grammar.from_file("grammars/x.lark")]``. The annotation adds a
Pydantic validator (lark parses the value, so every tier's validation, and so every reask,
carries the parse error) and an ``x-grammar`` key in the field's JSON Schema, from which
``object_lark`` builds one Lark grammar for the whole object for the local tier: the JSON
around the field through llguidance's ``%json``, the field itself as the sub-grammar between
quotes. The sub-grammar's text goes into a JSON string verbatim, so a grammar whose
terminals can produce ``"``, a backslash or a control character is refused for fields
(``json_unsafe_terminals``): escaping would make the JSON value differ from the sentence.

This module imports no tier and no provider.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from extract.errors import ConfigError, UnsupportedSchema

if TYPE_CHECKING:
    import lark

__all__ = [
    "Grammar",
    "describe_parse_error",
    "grammar_problems",
    "json_unsafe_terminals",
    "object_lark",
    "sql_grammar_for_sqlite",
]

# Constructs lark accepts but llguidance does not: found by line, named in the error.
UNSUPPORTED_CONSTRUCTS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("grammar_priority", re.compile(r"^\s*[?!]?[A-Za-z_][A-Za-z0-9_]*\.-?\d+\s*:"),
     "rule/terminal priorities (name.N:)"),
    ("grammar_template", re.compile(r"^\s*[?!]?_?[A-Za-z][A-Za-z0-9_]*\{[^}]*\}\s*:"),
     "rule templates (name{x}:)"),
    ("grammar_declare", re.compile(r"^\s*%declare\b"), "%declare"),
    ("grammar_override", re.compile(r"^\s*%(override|extend)\b"), "%override / %extend"),
    ("grammar_lookaround", re.compile(r"\(\?<?[=!]"), "lookaround in a regular expression"),
)

# A field's description is one line of the prompt, not a grammar listing.
_FIELD_ABOUT_CHARS = 400

_RULE_DEF = re.compile(r"^\s*[?!]?([a-z_][a-z0-9_]*)\s*:", re.MULTILINE)


def grammar_problems(text: str) -> list[tuple[str, int, str]]:
    """(feature, line number, line) for every construct outside the llguidance subset."""
    found: list[tuple[str, int, str]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("//"):
            continue  # a comment may name what it avoids
        for feature, pattern, _ in UNSUPPORTED_CONSTRUCTS:
            if pattern.search(line):
                found.append((feature, n, line.strip()))
    return found


@dataclass(frozen=True, eq=False)
class Grammar:
    """An output that must be a sentence of a Lark grammar.

    ``start`` names the rule a whole output must match. ``transformer`` (a
    ``lark.Transformer`` instance or class) turns the parse tree into the extracted value;
    without one the value is the generated text. ``description`` is what the prompt tells
    the model about the language (the grammar's header comment, or its text, when empty).
    """

    text: str
    start: str = "start"
    transformer: Any = None
    name: str = "grammar"
    description: str = ""
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        import lark

        if not isinstance(self.text, str) or not self.text.strip():
            raise ConfigError("Grammar needs a non-empty Lark grammar text")
        where = f" in {self.source}" if self.source else ""
        for feature, n, line in grammar_problems(self.text):
            label = next(lbl for f, _, lbl in UNSUPPORTED_CONSTRUCTS if f == feature)
            raise UnsupportedSchema(
                feature, "local", path=f"line {n}",
                detail=f"{label} is outside the Lark subset llguidance accepts{where}: {line!r}",
            )
        if self.start not in set(_RULE_DEF.findall(self.text)):
            raise ConfigError(f"the grammar{where} has no rule named {self.start!r} (start=)")
        if self.transformer is not None and not (
            isinstance(self.transformer, lark.visitors.Transformer)
            or (isinstance(self.transformer, type) and issubclass(self.transformer, lark.visitors.Transformer))
        ):
            raise ConfigError("transformer= must be a lark.Transformer instance or subclass")
        _ = self.parser  # build now: a broken grammar fails here, not at the first output

    @classmethod
    def from_text(cls, text: str, *, start: str = "start", transformer: Any = None,
                  name: str = "grammar", description: str = "") -> Grammar:
        """A grammar from Lark text."""
        return cls(text=text, start=start, transformer=transformer, name=name,
                   description=description)

    @classmethod
    def from_file(cls, path: str | Path, *, start: str = "start", transformer: Any = None,
                  name: str | None = None, description: str = "") -> Grammar:
        """A grammar from a ``.lark`` file; its name defaults to the file's stem."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the grammar file {p}: {exc.strerror}") from None
        return cls(text=text, start=start, transformer=transformer, name=name or p.stem,
                   description=description, source=str(p))

    @cached_property
    def parser(self) -> lark.Lark:
        """lark's Earley parser for this grammar: the most permissive lark parser, so it
        accepts every grammar llguidance does (LALR would refuse ambiguous ones)."""
        import lark

        where = f" {self.source}" if self.source else ""
        try:
            return lark.Lark(self.text, start=self.start, parser="earley")
        except lark.exceptions.GrammarError as exc:
            raise ConfigError(f"the grammar{where} is invalid: {exc}") from None
        except lark.exceptions.UnexpectedInput as exc:
            raise ConfigError(
                f"the grammar{where} does not parse at line {exc.line}, column {exc.column}: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        except lark.exceptions.LarkError as exc:
            raise ConfigError(f"the grammar{where} is invalid: {exc}") from None

    def parse(self, text: str) -> Any:
        """Parse ``text``; the transformed value with a transformer, else the text.

        Raises lark's ``UnexpectedInput`` on a parse error and ``VisitError`` when the
        transformer fails; ``check_grammar`` turns both into recorded errors.
        """
        tree = self.parser.parse(text)
        if self.transformer is None:
            return text
        t = self.transformer() if isinstance(self.transformer, type) else self.transformer
        return t.transform(tree)

    def about(self, limit: int = 2000) -> str:
        """What the prompt says the language is: the description, else the grammar's header
        comment, else its text (cut at ``limit``). A header is a few dozen tokens where the
        grammar can be hundreds, and prompt tokens are most of a small model's latency."""
        if self.description:
            return self.description
        header = []
        for line in self.text.splitlines():
            if not line.lstrip().startswith("//") or line.strip() == "//":
                break  # a bare "//" ends the part written for readers of the output
            header.append(line.lstrip()[2:].strip())
        if header:
            return "text in this language: " + " ".join(h for h in header if h)
        return (f"text in the language of this Lark grammar (start rule {self.start!r}):\n"
                + self.text[:limit])

    # --- as the annotation of a Pydantic string field ------------------------------------

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        """``Annotated[str, grammar]``: the field's value must parse with lark."""
        return core_schema.no_info_after_validator_function(self.validate_field, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """The field's JSON Schema carries the grammar, for the local tier's constraint."""
        out = handler.resolve_ref_schema(handler(schema))
        out["x-grammar"] = self.schema_entry()
        # The prompt lists fields with their descriptions: say what language this one is in.
        out.setdefault("description", self.about(_FIELD_ABOUT_CHARS))
        return out

    def schema_entry(self) -> dict[str, str]:
        """What ``x-grammar`` holds: enough to rebuild this grammar (``from_schema_entry``)."""
        return {"name": self.name, "start": self.start, "lark": self.text}

    @staticmethod
    def from_schema_entry(entry: Any) -> Grammar:
        """The grammar an ``x-grammar`` key names (cached: one parser per grammar text)."""
        if not isinstance(entry, dict) or not isinstance(entry.get("lark"), str):
            raise ConfigError('x-grammar must be {"lark": <grammar text>, "start": <rule>, "name": ...}')
        return _grammar_from_entry(entry["lark"], str(entry.get("start") or "start"),
                                   str(entry.get("name") or "grammar"))

    def validate_field(self, value: str) -> str:
        """A field's value as the grammar reads it; a parse error is a ``ValueError`` whose
        message (line, column, expected tokens, offending text) Pydantic reports and a
        reask carries. The value stays the text: a field's type is ``str``."""
        import lark

        try:
            self.parser.parse(value)
        except lark.exceptions.UnexpectedInput as exc:
            message, _ = describe_parse_error(exc, value, self.parser)
            raise ValueError(f"the {self.name} grammar: {message}") from None
        return value

    def llguidance_text(self) -> str:
        """The grammar as llguidance reads it: decoding always starts at ``start``."""
        if self.start == "start":
            return self.text
        if "start" in set(_RULE_DEF.findall(self.text)):
            raise UnsupportedSchema(
                "grammar_start", "local",
                detail=f"start={self.start!r} in a grammar that also defines 'start': llguidance "
                "always decodes from 'start'; rename that rule",
            )
        return f"start: {self.start}\n{self.text}"


@lru_cache(maxsize=64)
def _grammar_from_entry(text: str, start: str, name: str) -> Grammar:
    return Grammar(text=text, start=start, name=name)


_MAX_EXPECTED = 12


def describe_parse_error(
    exc: lark.exceptions.UnexpectedInput, raw: str, parser: lark.Lark | None = None
) -> tuple[str, dict[str, Any]]:
    """A one-line message and structured details (line, column, expected, offending) for a
    lark parse error: what a reask tells the model and a report shows. With the ``parser``,
    expected terminals are shown as the text they match (``'SELECT '``) rather than lark's
    internal names (``__ANON_3``), which mean nothing to a model."""
    import lark

    line, column = getattr(exc, "line", -1), getattr(exc, "column", -1)
    expected: list[str] = []
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        expected = sorted(exc.allowed or ())
        pos = exc.pos_in_stream if exc.pos_in_stream is not None else 0
        offending = raw[pos:pos + 20]
    elif isinstance(exc, lark.exceptions.UnexpectedEOF):
        expected = sorted(str(t.name) if hasattr(t, "name") else str(t) for t in exc.expected)
        offending = "(end of text)"
    elif isinstance(exc, lark.exceptions.UnexpectedToken):
        expected = sorted(exc.expected or ())
        offending = str(exc.token)
    else:  # pragma: no cover - lark's three subclasses cover every parse error
        offending = ""
    if parser is not None:
        expected = sorted({_shown_terminal(parser, name) for name in expected})
    where = f"line {line}, column {column}" if line and line > 0 else "the end of the text"
    shown = ", ".join(expected[:_MAX_EXPECTED]) + (" ..." if len(expected) > _MAX_EXPECTED else "")
    message = f"does not parse at {where}: unexpected {offending!r}" + (
        f"; expected one of {shown}" if shown else ""
    )
    details = {"line": line, "column": column, "expected": expected, "offending": offending}
    return message, details


def _shown_terminal(parser: lark.Lark, name: str) -> str:
    import lark

    try:
        pattern = parser.get_terminal(name).pattern
    except KeyError:
        return name
    if isinstance(pattern, lark.lexer.PatternStr):
        return repr(pattern.value)
    return name if not name.startswith("__") else f"/{pattern.value}/"


# --- grammar fields: one Lark grammar for a JSON object with a grammar-constrained string ---

# Characters a JSON string cannot hold unescaped.
_JSON_UNSAFE = frozenset({'"', "\\"} | {chr(c) for c in range(32)})
# Named in this order when several are possible: the likely culprits first.
_UNSAFE_ORDER = ('"', "\\", "\n", "\t", *(chr(c) for c in range(32) if chr(c) not in "\n\t"))


def _regex_alphabet_unsafe(pattern: str, flags: int) -> str | None:
    """One character ``pattern`` can produce that a JSON string cannot hold raw, or None.

    Walks Python's parse of the regex (the alphabet, not the language: every branch is
    taken to be reachable, which only ever refuses more)."""
    import re._constants as c  # the parser's opcodes
    import re._parser as sre

    def in_class(ch: str, items: list[tuple[Any, Any]]) -> bool:
        code = ord(ch)
        negate = False
        hit = False
        for op, av in items:
            if op is c.NEGATE:
                negate = True
            elif op is c.LITERAL and av == code:
                hit = True
            elif op is c.RANGE and av[0] <= code <= av[1]:
                hit = True
            elif op is c.CATEGORY and re.fullmatch(_CATEGORIES.get(str(av), "(?!)"), ch):
                hit = True
        return hit != negate

    def walk(sub: Any) -> str | None:
        for op, av in sub:
            found: str | None = None
            if op is c.LITERAL:
                found = chr(av) if chr(av) in _JSON_UNSAFE else None
            elif op in (c.ANY, c.NOT_LITERAL):
                found = '"'
            elif op is c.IN:
                found = next((ch for ch in _UNSAFE_ORDER if in_class(ch, av)), None)
            elif op is c.BRANCH:
                found = next((f for f in (walk(b) for b in av[1]) if f), None)
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
                found = walk(av[2])
            elif op is c.SUBPATTERN:
                found = walk(av[-1])
            elif op is getattr(c, "ATOMIC_GROUP", None):
                found = walk(av)
            if found:
                return found
        return None

    return walk(sre.parse(pattern, flags))


_CATEGORIES = {
    "CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S", "CATEGORY_WORD": r"\w", "CATEGORY_NOT_WORD": r"\W",
}


def json_unsafe_terminals(grammar: Grammar) -> list[tuple[str, str]]:
    """(terminal, character) for each terminal that can produce a character a JSON string
    must escape; empty when every sentence can sit between quotes as it is."""
    import lark

    found: list[tuple[str, str]] = []
    for term in grammar.parser.terminals:
        pattern = term.pattern
        if isinstance(pattern, lark.lexer.PatternStr):
            bad = next((ch for ch in pattern.value if ch in _JSON_UNSAFE), None)
        else:
            flags = sum(getattr(re, f.upper(), 0) for f in pattern.flags)
            bad = _regex_alphabet_unsafe(pattern.value, flags)
        if bad is not None:
            found.append((str(term.name), bad))
    return found


_TOKEN = re.compile(
    r'(?P<comment>//[^\n]*)|(?P<string>"(?:[^"\\\n]|\\.)*"i?)|(?P<regex>/(?!/)(?:[^/\\\n]|\\.)+/[imslux]*)'
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<other>.)",
    re.S,
)
_TERM_DEF = re.compile(r"^\s*([A-Z_][A-Z0-9_]*)(?:\.-?\d+)?\s*:", re.MULTILINE)
_IMPORT = re.compile(r"^\s*%import\s+([\w.]+)(?:\s*->\s*(\w+))?\s*$")


def _prefixed(grammar: Grammar, n: int) -> tuple[str, str]:
    """The grammar's text with every rule and terminal it defines renamed (``g{n}_rule``,
    ``G{n}_TERM``), so several grammars can share one Lark text; and its renamed start."""
    text = grammar.text
    names = set(_RULE_DEF.findall(text)) | set(_TERM_DEF.findall(text))
    imports: dict[int, tuple[str, str]] = {}
    for i, line in enumerate(text.splitlines()):
        m = _IMPORT.match(line)
        if m:
            imports[i] = (m.group(1), m.group(2) or m.group(1).rsplit(".", 1)[-1])
            names.add(imports[i][1])
        elif line.lstrip().startswith("%import"):
            raise UnsupportedSchema("grammar_field", "local", detail=(
                f"the field grammar {grammar.name!r} imports several names on one line "
                f"({line.strip()!r}); import one name per line"))

    def new_name(word: str) -> str:
        return f"G{n}_{word}" if word.lstrip("_")[:1].isupper() else f"g{n}_{word}"

    def rename(m: re.Match[str]) -> str:
        word = m.group("name")
        return new_name(word) if word is not None and word in names else m.group(0)

    out = [
        f"%import {imports[i][0]} -> {new_name(imports[i][1])}" if i in imports else _TOKEN.sub(rename, line)
        for i, line in enumerate(text.splitlines())
    ]
    return "\n".join(out), new_name(grammar.start)


def _field_grammar(node: Any) -> tuple[Grammar, bool] | None:
    """(grammar, nullable) when ``node`` is a grammar field (``x-grammar`` on a string, or an
    Optional of one); None when it is an ordinary field."""
    if not isinstance(node, dict):
        return None
    if "x-grammar" in node:
        return Grammar.from_schema_entry(node["x-grammar"]), False
    branches = node.get("anyOf") or node.get("oneOf")
    if isinstance(branches, list):
        marked = [b for b in branches if isinstance(b, dict) and "x-grammar" in b]
        rest = [b for b in branches if b not in marked]
        if len(marked) == 1 and len(rest) == 1 and rest[0].get("type") == "null":
            return Grammar.from_schema_entry(marked[0]["x-grammar"]), True
    return None


def _nested_grammar_fields(node: Any, path: str) -> list[str]:
    if isinstance(node, dict):
        here = [path] if "x-grammar" in node else []
        return here + [p for k, v in node.items() for p in _nested_grammar_fields(v, f"{path}/{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _nested_grammar_fields(v, f"{path}/{i}")]
    return []


@lru_cache(maxsize=256)
def object_lark(constraint: str) -> str:
    """One Lark grammar (llguidance dialect) for the object ``constraint`` describes (the
    local tier's tightened JSON Schema text), with each top-level grammar field decoded under
    its own grammar between quotes and every other field under ``%json``.

    Properties come in schema order, all of them (an optional one as its schema allows,
    e.g. null): a subset of what the schema admits, never more. A grammar field anywhere
    else (in a nested model, a list, a union) cannot be reached from ``%json`` and is
    refused, as is a grammar whose sentences a JSON string cannot hold unescaped.
    """
    schema = json.loads(constraint)
    props = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(props, dict) or not props:
        raise UnsupportedSchema("grammar_field", "local", detail=(
            "a grammar field needs a top-level object with named properties"))
    defs = {k: schema[k] for k in ("$defs", "definitions") if k in schema}
    guidance = schema.get("x-guidance", {"whitespace_flexible": False})
    rules: list[str] = []
    parts: list[str] = []
    subs: list[str] = []
    for i, (name, node) in enumerate(props.items()):
        key = lark_literal(("," if i else "") + json.dumps(name, ensure_ascii=False) + ":")
        found = _field_grammar(node)
        if found is None:
            nested = _nested_grammar_fields(node, f"/properties/{name}")
            if nested:
                raise UnsupportedSchema("grammar_field", "local", path=nested[0], detail=(
                    "a grammar field inside a nested model, list or union cannot be constrained "
                    "(llguidance's %json cannot embed a Lark grammar); make it a top-level field"))
            sub = {**node, **defs, "x-guidance": guidance}
            rules.append(f"p{i}: %json {json.dumps(sub, ensure_ascii=False)}")
        else:
            grammar, nullable = found
            unsafe = json_unsafe_terminals(grammar)
            if unsafe:
                term, ch = unsafe[0]
                raise UnsupportedSchema("grammar_field", "local", path=f"/properties/{name}", detail=(
                    f"the grammar {grammar.name!r} can produce {ch!r} (terminal {term}), which a JSON "
                    "string must escape, so the field's JSON value would differ from the sentence; "
                    "exclude quotes, backslashes and control characters from its terminals"))
            text, start = _prefixed(grammar, i)
            subs.append(text)
            rules.append(f'p{i}: "\\"" {start} "\\""' + (' | "null"' if nullable else ""))
        parts.append(f"{key} p{i}")
    for path in _nested_grammar_fields(defs, ""):
        raise UnsupportedSchema("grammar_field", "local", path=path, detail=(
            "a grammar field inside a nested model cannot be constrained; make it a top-level field"))
    head = 'start: "{" ' + " ".join(parts) + ' "}"'
    return "\n".join([head, *rules, *subs]) + "\n"


# Words SQLite would read as keywords: such a name is quoted, like any non-identifier.
_SQL_KEYWORDS = frozenset("""
ABORT ACTION ADD AFTER ALL ALTER AND AS ASC BETWEEN BY CASE CAST CHECK COLLATE COLUMN COMMIT
CONSTRAINT CREATE CROSS CURRENT DEFAULT DELETE DESC DISTINCT DROP ELSE END ESCAPE EXCEPT EXISTS
FOREIGN FROM FULL GLOB GROUP HAVING IF IN INDEX INNER INSERT INTERSECT INTO IS ISNULL JOIN KEY
LEFT LIKE LIMIT MATCH NATURAL NOT NOTNULL NULL OF OFFSET ON OR ORDER OUTER PRIMARY REFERENCES
RIGHT ROW SELECT SET TABLE THEN TO UNION UNIQUE UPDATE USING VALUES WHEN WHERE WITH
""".split())

# The shared tail of every schema-aware grammar. Spaces are literal (no %ignore): on a small
# model, free whitespace loops until the token limit (see DESIGN, pitfalls), and one spelling
# per query is all a caller needs. Strings and numbers are bounded for the same reason.
# String literals hold no double quote, backslash or control character, so a query can sit
# verbatim inside a JSON string (a grammar field, see ``object_lark``).
_SQL_COMMON = r"""
value: NUMBER | STRING | "NULL"
CMP: " = " | " != " | " < " | " <= " | " > " | " >= "
AGG: "SUM" | "AVG" | "MIN" | "MAX" | "COUNT"
NUMBER: /-?[0-9]{1,9}(\.[0-9]{1,6})?/
STRING: /'[^'"\\\x00-\x1f]{0,40}'/
LIMIT_N: /[1-9][0-9]{0,3}/
limit: " LIMIT " LIMIT_N
dir: " ASC" | " DESC"
"""


def _sql_ident(name: str) -> str:
    """``name`` as SQLite reads it: bare when it is a plain identifier, else double-quoted."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and name.upper() not in _SQL_KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def lark_literal(s: str) -> str:
    """A Lark string literal for ``s`` (JSON escaping is a subset of Lark's)."""
    return json.dumps(s, ensure_ascii=False)


def _rule_id(i: int) -> str:
    return f"t{i}"


def _more(sep: str, item: str, n: int) -> str:
    """Up to ``n`` more ``item``s after the first: every list is bounded, because a small
    model repeats a column until the token budget cuts the query (measured: 7 of 12 questions
    ran away under unbounded lists)."""
    # Nested optionals, not ``~0..n``: the same language, but lark builds it ~5x faster.
    return "".join(f" ({sep} {item}" for _ in range(n)) + ")?" * n


def _sql_rules(tables: dict[str, list[str]], links: list[tuple[str, str, str, str]]) -> str:
    """Lark rules for single-table queries per table and two-table joins per foreign key.

    Columns are scoped by construction: a single-table query names only that table's
    columns (bare), a join names only its two tables' columns (qualified, so never
    ambiguous), and a sub-select names only its own table's columns. Aggregates appear only
    in the select list, HAVING and ORDER BY, never in WHERE (a runtime error in SQLite), and
    a sub-select returns exactly one column, as IN and scalar comparisons require. Joins
    follow the database's links (declared foreign keys, or ``x_id`` naming table ``x``/``xs``)
    with the ON clause fixed, so the model cannot join unrelated tables.
    """
    names = list(tables)
    ids = {name: _rule_id(i) for i, name in enumerate(names)}
    out: list[str] = []
    queries: list[str] = []
    for table in names:
        t = ids[table]
        tid = _sql_ident(table)
        k = min(len(tables[table]), 6) - 1
        cols = " | ".join(lark_literal(_sql_ident(c)) for c in tables[table])
        qcols = " | ".join(lark_literal(f"{tid}.{_sql_ident(c)}") for c in tables[table])
        queries.append(f"q_{t}")
        out += [
            f"col_{t}: {cols}",
            f"qcol_{t}: {qcols}",
            f'agg_{t}: "COUNT(*)" | AGG "(" col_{t} ")" | "COUNT(DISTINCT " col_{t} ")"',
            f"item_{t}: col_{t} | agg_{t}",
            f'sel_{t}: "*" | "DISTINCT " cols_{t} | items_{t}',
            f'cols_{t}: col_{t}{_more(chr(34) + ",", chr(34) + " col_" + t, k)}',
            f'items_{t}: item_{t}{_more(chr(34) + ",", chr(34) + " item_" + t, k)}',
            f"from_{t}: \" FROM \" {lark_literal(tid)}",
            f"cond_{t}: col_{t} CMP value | col_{t} CMP \"(\" scalar \")\""
            f" | col_{t} \" IN (\" sub \")\" | col_{t} \" NOT IN (\" sub \")\""
            f" | col_{t} \" IS NULL\" | col_{t} \" IS NOT NULL\" | col_{t} \" LIKE \" STRING"
            f" | col_{t} \" BETWEEN \" value \" AND \" value",
            f'where_{t}: " WHERE " cond_{t} ((" AND " | " OR ") cond_{t} ((" AND " | " OR ") cond_{t})?)?',
            f'group_{t}: " GROUP BY " col_{t} (", " col_{t})? (" HAVING " agg_{t} CMP value)?',
            f'order_{t}: " ORDER BY " item_{t} dir? (", " item_{t} dir?)?',
            f'q_{t}: "SELECT " sel_{t} from_{t} where_{t}? group_{t}? order_{t}? limit?',
            f'sub_{t}: "SELECT " col_{t} from_{t} where_{t}?',
            f'scalar_{t}: "SELECT " agg_{t} from_{t} where_{t}?',
        ]
    out.append("sub: " + " | ".join(f"sub_{ids[n]}" for n in names))
    out.append("scalar: " + " | ".join(f"scalar_{ids[n]}" for n in names))
    seen: set[tuple[str, str]] = set()
    for a, a_col, b, b_col in links:
        for (x, x_col, y, y_col) in ((a, a_col, b, b_col), (b, b_col, a, a_col)):
            if (x, y) in seen or x == y:
                continue
            seen.add((x, y))
            tx, ty = ids[x], ids[y]
            p = f"{tx}_{ty}"
            k = min(len(tables[x]) + len(tables[y]), 6) - 1
            on = lark_literal(f" FROM {_sql_ident(x)} JOIN {_sql_ident(y)} ON "
                      f"{_sql_ident(x)}.{_sql_ident(x_col)} = {_sql_ident(y)}.{_sql_ident(y_col)}")
            queries.append(f"j_{p}")
            out += [
                f"jcol_{p}: qcol_{tx} | qcol_{ty}",
                f'jagg_{p}: "COUNT(*)" | AGG "(" jcol_{p} ")"',
                f"jitem_{p}: jcol_{p} | jagg_{p}",
                f'jcond_{p}: jcol_{p} CMP value | jcol_{p} " IS NULL" | jcol_{p} " IS NOT NULL"'
                f' | jcol_{p} " LIKE " STRING',
                f'jitems_{p}: jitem_{p}{_more(chr(34) + ",", chr(34) + " jitem_" + p, k)}',
                f'jwhere_{p}: " WHERE " jcond_{p} ((" AND " | " OR ") jcond_{p} ((" AND " | " OR ") jcond_{p})?)?',
                f'jgroup_{p}: " GROUP BY " jcol_{p} (", " jcol_{p})?',
                f'jorder_{p}: " ORDER BY " jitem_{p} dir?',
                f'j_{p}: "SELECT " jitems_{p} {on} jwhere_{p}? jgroup_{p}? jorder_{p}? limit?',
            ]
    # An optional closing ";" as SQLite accepts it: chat models end a statement with one.
    return "start: (" + " | ".join(queries) + ') ";"?\n' + "\n".join(out) + "\n" + _SQL_COMMON


def _sqlite_schema(path: str | Path) -> tuple[dict[str, list[str]], list[tuple[str, str, str, str]]]:
    """Tables with their columns, and links (table, column, table, column) between them."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"no SQLite database at {p}")
    tables: dict[str, list[str]] = {}
    links: list[tuple[str, str, str, str]] = []
    try:
        con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            rows = con.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            ).fetchall()
            for (name,) in rows:
                cols = [r[1] for r in con.execute(f"PRAGMA table_info({_sql_ident(name)})")]
                if cols:
                    tables[str(name)] = [str(c) for c in cols]
            for name in tables:
                for fk in con.execute(f"PRAGMA foreign_key_list({_sql_ident(name)})"):
                    target, src, dst = str(fk[2]), str(fk[3]), fk[4]
                    if target in tables and src in tables[name]:
                        dst_col = str(dst) if dst else ("id" if "id" in tables[target] else "")
                        if dst_col in tables[target]:
                            links.append((name, src, target, dst_col))
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{p} is not a readable SQLite database: {exc}") from None
    if not tables:
        raise ConfigError(f"the SQLite database {p} has no tables")
    # Undeclared links by naming convention: orders.customer_id -> customers.id.
    for name, cols in tables.items():
        for col in cols:
            if not col.lower().endswith("_id"):
                continue
            stem = col[:-3].lower()
            for target, tcols in tables.items():
                if target.lower() in (stem, stem + "s", stem + "es") and "id" in tcols and target != name:
                    link = (name, col, target, "id")
                    if link not in links:
                        links.append(link)
    return tables, links


def sql_grammar_for_sqlite(path: str | Path) -> Grammar:
    """A SQLite ``SELECT`` grammar whose identifiers are exactly this database's tables and
    columns, scoped so that every sentence runs without a "no such table/column" error.

    Two-table joins are offered along the database's links (foreign keys, or ``x_id``
    columns), with the ON clause fixed. The prompt description lists the schema, which is
    what a small model needs to pick the right names.
    """
    tables, links = _sqlite_schema(path)
    text = (
        f"// SQLite SELECT subset, schema-aware: generated from {Path(path).name} by\n"
        "// extract.sql_grammar_for_sqlite. Identifiers are only this database's tables and\n"
        "// columns, scoped per query; spaces are literal and single; lists are bounded.\n"
        + _sql_rules(tables, links)
    )
    schema = "; ".join(f"{_sql_ident(t)}({', '.join(_sql_ident(c) for c in cs)})" for t, cs in tables.items())
    description = (
        "one SQLite SELECT query that answers the question in the document. "
        f"The database has these tables: {schema}."
    )
    return Grammar(text=text, name=f"sql:{Path(path).stem}", description=description,
                   source=str(path))
