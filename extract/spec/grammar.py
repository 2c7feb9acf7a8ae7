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

This module imports no tier and no provider.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import lark

from extract.errors import ConfigError, UnsupportedSchema

__all__ = ["Grammar", "grammar_problems", "sql_grammar_for_sqlite"]

# Constructs lark accepts but llguidance does not: found by line, named in the error.
_UNSUPPORTED: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("grammar_priority", re.compile(r"^\s*[?!]?[A-Za-z_][A-Za-z0-9_]*\.-?\d+\s*:"),
     "rule/terminal priorities (name.N:)"),
    ("grammar_template", re.compile(r"^\s*[?!]?_?[A-Za-z][A-Za-z0-9_]*\{[^}]*\}\s*:"),
     "rule templates (name{x}:)"),
    ("grammar_declare", re.compile(r"^\s*%declare\b"), "%declare"),
    ("grammar_override", re.compile(r"^\s*%(override|extend)\b"), "%override / %extend"),
    ("grammar_lookaround", re.compile(r"\(\?<?[=!]"), "lookaround in a regular expression"),
)

_RULE_DEF = re.compile(r"^\s*[?!]?([a-z_][a-z0-9_]*)\s*:", re.MULTILINE)


def grammar_problems(text: str) -> list[tuple[str, int, str]]:
    """(feature, line number, line) for every construct outside the llguidance subset."""
    found: list[tuple[str, int, str]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("//"):
            continue  # a comment may name what it avoids
        for feature, pattern, _ in _UNSUPPORTED:
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
        if not isinstance(self.text, str) or not self.text.strip():
            raise ConfigError("Grammar needs a non-empty Lark grammar text")
        where = f" in {self.source}" if self.source else ""
        for feature, n, line in grammar_problems(self.text):
            label = next(lbl for f, _, lbl in _UNSUPPORTED if f == feature)
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
_SQL_COMMON = r"""
value: NUMBER | STRING | "NULL"
CMP: " = " | " != " | " < " | " <= " | " > " | " >= "
AGG: "SUM" | "AVG" | "MIN" | "MAX" | "COUNT"
NUMBER: /-?[0-9]{1,9}(\.[0-9]{1,6})?/
STRING: /'[^'\n]{0,40}'/
LIMIT_N: /[1-9][0-9]{0,3}/
limit: " LIMIT " LIMIT_N
dir: " ASC" | " DESC"
"""


def _sql_ident(name: str) -> str:
    """``name`` as SQLite reads it: bare when it is a plain identifier, else double-quoted."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and name.upper() not in _SQL_KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def _lit(s: str) -> str:
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
        cols = " | ".join(_lit(_sql_ident(c)) for c in tables[table])
        qcols = " | ".join(_lit(f"{tid}.{_sql_ident(c)}") for c in tables[table])
        queries.append(f"q_{t}")
        out += [
            f"col_{t}: {cols}",
            f"qcol_{t}: {qcols}",
            f'agg_{t}: "COUNT(*)" | AGG "(" col_{t} ")" | "COUNT(DISTINCT " col_{t} ")"',
            f"item_{t}: col_{t} | agg_{t}",
            f'sel_{t}: "*" | "DISTINCT " cols_{t} | items_{t}',
            f'cols_{t}: col_{t}{_more(chr(34) + ",", chr(34) + " col_" + t, k)}',
            f'items_{t}: item_{t}{_more(chr(34) + ",", chr(34) + " item_" + t, k)}',
            f"from_{t}: \" FROM \" {_lit(tid)}",
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
            on = _lit(f" FROM {_sql_ident(x)} JOIN {_sql_ident(y)} ON "
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
    return "start: " + " | ".join(queries) + "\n" + "\n".join(out) + "\n" + _SQL_COMMON


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
