"""Lark grammars and regular expressions as GBNF, the grammar language llama.cpp's server reads.

llama.cpp (its own server and llama-cpp-python's) constrains a completion with a ``grammar``
request field written in GBNF. Our specs are Lark grammars (the llguidance subset) and Python
regular expressions, so the native tier converts them here, once per spec, and sends the GBNF.

The conversion reads lark's own compiled form of the grammar (``Lark.rules``: plain BNF, every
``?``/``*``/``~`` already expanded; ``Lark.terminals``: one regular expression or string each),
not the grammar text, so it sees the grammar exactly as the parser that checks the output does.
Three things need care:

- **left recursion**: lark's ``x*`` helpers and rules such as ``sum: sum "+" product`` are left
  recursive, which llama.cpp refuses ("left recursion detected"). Direct left recursion is
  rewritten (``A: A a | b`` becomes ``A ::= (b) (a)*``, the same language); indirect left
  recursion is refused, naming the rule.
- **``%ignore``**: lark skips ignored terminals between any two tokens. GBNF has no lexer, so
  every rule gets the ignored terminals (any number) between consecutive symbols, and the
  output may start and end with them.
- **regular expressions** are translated from Python's own parse of them (``re._parser``):
  literals, classes, ranges, ``.``, groups, alternation, bounded and unbounded repetition,
  lazy quantifiers (the same full-match language), and the ``i``/``s`` flags. ``\\d`` and
  ``\\w`` in a class that is not negated are read as ASCII (``[0-9]``, ``[A-Za-z0-9_]``):
  a narrower language than Python's Unicode reading, so every output still parses, and a
  class of hundreds of Unicode ranges would slow the server's per-token check. Negated
  classes use the exact Unicode sets, so they never admit what Python would refuse.

What GBNF cannot say is refused with ``UnsupportedSchema`` naming the construct and where it
is (lookaround, backreferences, conditionals, atomic groups, possessive quantifiers, anchors
inside a pattern, word boundaries, indirect left recursion): the native tier then steps down
to parse-and-reask instead of sending a grammar the server would read differently.

A lexer-based parser and a character-level grammar can still disagree at the edges (lark
matches a terminal greedily; GBNF tries every split), so the tests check each converted
grammar against lark on known-good and known-bad strings, with llama.cpp's own grammar code,
and the native tier parses every answer with lark as before.

This module imports no tier and no provider.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from extract.errors import UnsupportedSchema
from extract.spec.features import self_reaching

if TYPE_CHECKING:
    from extract.spec.grammar import Grammar

__all__ = ["grammar_to_gbnf", "object_gbnf", "regex_to_gbnf"]

_MAX_CODE = 0x10FFFF
Ranges = list[tuple[int, int]]

# The tier named in refusals: only the native tier sends GBNF.
_TIER = "native"


def _refuse(feature: str, where: str, detail: str) -> UnsupportedSchema:
    return UnsupportedSchema(feature, _TIER, path=where, detail=detail + "; GBNF cannot express it, so the "
                             "grammar is not sent to the server (the answer is parsed and re-asked instead)")


# --- character sets --------------------------------------------------------------------------


def _normalise(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _complement(ranges: Ranges) -> Ranges:
    out: Ranges = []
    nxt = 0
    for lo, hi in _normalise(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= _MAX_CODE:
        out.append((nxt, _MAX_CODE))
    return out


@lru_cache(maxsize=8)
def _unicode_category(name: str) -> tuple[tuple[int, int], ...]:
    """The exact set Python's ``re`` gives a category in a str pattern (one scan, cached)."""
    pattern = re.compile({"digit": r"\d", "word": r"\w", "space": r"\s"}[name])
    found: Ranges = []
    start = -1
    for code in range(_MAX_CODE + 2):
        hit = code <= _MAX_CODE and not 0xD800 <= code <= 0xDFFF and pattern.match(chr(code)) is not None
        if hit and start < 0:
            start = code
        elif not hit and start >= 0:
            found.append((start, code - 1))
            start = -1
    return tuple(found)


_ASCII_CATEGORY: dict[str, Ranges] = {
    "digit": [(0x30, 0x39)],
    "word": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "space": [(0x09, 0x0D), (0x20, 0x20)],
}


def _category(name: str, *, ascii_only: bool, narrow: bool) -> Ranges:
    """A category's set (``CATEGORY_NOT_DIGIT`` etc. included). ``narrow``: the set may be
    read smaller than Python's (a positive class: a subset is safe), so \\d and \\w are ASCII."""
    base = name.removeprefix("CATEGORY_").lower()
    negated = base.startswith("not_")
    kind = base.removeprefix("not_")
    if kind not in _ASCII_CATEGORY:
        raise _refuse("regex_category", "", f"the category {name} (locale or line-break classes)")
    if ascii_only or (narrow and not negated and kind != "space"):
        positive = _ASCII_CATEGORY[kind]
    else:
        positive = list(_unicode_category(kind))
    return _complement(positive) if negated else list(positive)


def _fold_case(ranges: Ranges) -> Ranges:
    """Add the other case of every ASCII letter in ``ranges`` (re.IGNORECASE, ASCII part)."""
    extra: Ranges = []
    for lo, hi in ranges:
        for a, b, shift in ((0x41, 0x5A, 0x20), (0x61, 0x7A, -0x20)):
            s, e = max(lo, a), min(hi, b)
            if s <= e:
                extra.append((s + shift, e + shift))
    return _normalise([*ranges, *extra])


def _char(code: int, in_class: bool) -> str:
    ch = chr(code)
    if ch.isascii() and ch.isalnum():
        return ch
    if not in_class and 0x20 <= code < 0x7F and ch not in '"\\':
        return ch
    if code < 0x100:
        return f"\\x{code:02X}"
    if code < 0x10000:
        return f"\\u{code:04X}"
    return f"\\U{code:08X}"


def _class(ranges: Ranges) -> str:
    """A GBNF character class for ``ranges``: negated when the complement is shorter."""
    ranges = _normalise(ranges)
    if not ranges:
        raise _refuse("regex_empty_class", "", "a character class that matches nothing")
    if ranges == [(0, _MAX_CODE)]:
        return "."
    comp = _complement(ranges)
    negate = len(comp) < len(ranges)
    body = "".join(
        _char(lo, True) if lo == hi else f"{_char(lo, True)}-{_char(hi, True)}"
        for lo, hi in (comp if negate else ranges)
    )
    return f"[{'^' if negate else ''}{body}]"


def _literal(text: str) -> str:
    return '"' + "".join(_char(ord(ch), False) for ch in text) + '"'


# --- regular expressions ------------------------------------------------------------------------


class _RegexConverter:
    """One Python regular expression as one GBNF expression."""

    def __init__(self, pattern: str, flags: int, where: str, anchored_ok: bool) -> None:
        self.pattern = pattern
        self.where = where
        self.anchored_ok = anchored_ok
        import re._parser as sre  # the parser re itself uses (Python 3.11+)

        self.tree = sre.parse(pattern, flags)
        self.flags = self.tree.state.flags

    def refuse(self, feature: str, what: str) -> UnsupportedSchema:
        return _refuse(feature, self.where, f"{what} in /{self.pattern}/")

    def convert(self) -> str:
        items = list(self.tree)
        if self.anchored_ok:
            # A whole-output pattern is matched in full anyway: ^ / \A first and $ / \Z last
            # say nothing more.
            while items and self._is_at(items[0], ("AT_BEGINNING", "AT_BEGINNING_STRING")):
                items.pop(0)
            while items and self._is_at(items[-1], ("AT_END", "AT_END_STRING")):
                items.pop()
        return self.seq(items, self.flags)

    @staticmethod
    def _is_at(item: tuple[Any, Any], names: tuple[str, ...]) -> bool:
        return str(item[0]) == "AT" and str(item[1]) in names

    def seq(self, items: Sequence[tuple[Any, Any]], flags: int) -> str:
        parts: list[str] = []
        run: list[str] = []  # consecutive literal characters, one GBNF string

        def flush() -> None:
            if run:
                parts.append(_literal("".join(run)))
                run.clear()

        for op, av in items:
            name = str(op)
            if name == "LITERAL" and not (flags & re.IGNORECASE and chr(av).isalpha()):
                run.append(chr(av))
                continue
            flush()
            parts.append(self.item(name, av, flags))
        flush()
        return " ".join(parts) if parts else '""'

    def item(self, name: str, av: Any, flags: int) -> str:
        ignore_case = bool(flags & re.IGNORECASE)
        ascii_only = bool(flags & re.ASCII)
        if name == "LITERAL":
            ranges = [(av, av)]
            return _class(_fold_case(ranges) if ignore_case else ranges)
        if name == "NOT_LITERAL":
            ranges = [(av, av)]
            return _class(_complement(_fold_case(ranges) if ignore_case else ranges))
        if name == "ANY":
            return "." if flags & re.DOTALL else _class(_complement([(10, 10)]))
        if name == "IN":
            return _class(self.char_set(av, ignore_case, ascii_only))
        if name == "BRANCH":
            return "(" + " | ".join(self.seq(list(b), flags) for b in av[1]) + ")"
        if name == "SUBPATTERN":
            _group, add, remove, sub = av
            inner = self.seq(list(sub), (flags | add) & ~remove)
            return f"({inner})"
        if name in ("MAX_REPEAT", "MIN_REPEAT"):
            lo, hi, sub = av
            inner = self.seq(list(sub), flags)
            inner = inner if self._atomic(inner) else f"({inner})"
            return inner + _quantifier(lo, hi)
        if name == "AT":
            what = str(av)
            kind = "word boundary" if "BOUNDARY" in what else "an anchor inside the pattern"
            raise self.refuse("regex_anchor", f"{kind} ({what})")
        if name in ("ASSERT", "ASSERT_NOT"):
            raise self.refuse("regex_lookaround", "lookaround ((?=...), (?!...), (?<=...), (?<!...))")
        if name in ("GROUPREF", "GROUPREF_EXISTS"):
            what = "a backreference" if name == "GROUPREF" else "a conditional group (?(id)yes|no)"
            raise self.refuse("regex_backreference", what)
        if name in ("ATOMIC_GROUP", "POSSESSIVE_REPEAT"):
            raise self.refuse("regex_possessive", "an atomic group or a possessive quantifier")
        raise self.refuse("regex_construct", f"the construct {name}")

    @staticmethod
    def _atomic(expr: str) -> bool:
        """Whether a quantifier can follow ``expr`` without parentheses."""
        if re.fullmatch(r'"(?:[^"\\]|\\.)*"', expr):
            return True
        if re.fullmatch(r"\[(?:[^\]\\]|\\.)*\]|\.", expr):
            return True
        return expr.startswith("(") and expr.endswith(")") and _balanced_group(expr)

    def char_set(self, items: list[tuple[Any, Any]], ignore_case: bool, ascii_only: bool) -> Ranges:
        negated = bool(items) and str(items[0][0]) == "NEGATE"
        ranges: Ranges = []
        for op, av in items[1:] if negated else items:
            name = str(op)
            if name == "LITERAL":
                ranges.append((av, av))
            elif name == "RANGE":
                ranges.append((av[0], av[1]))
            elif name == "CATEGORY":
                ranges += _category(str(av), ascii_only=ascii_only, narrow=not negated)
            else:
                raise self.refuse("regex_construct", f"the class item {name}")
        ranges = _fold_case(ranges) if ignore_case else _normalise(ranges)
        return _complement(ranges) if negated else ranges


def _balanced_group(expr: str) -> bool:
    """``expr`` is one parenthesised group (its first "(" closes at the very end)."""
    depth = 0
    in_str = in_cls = False
    i = 0
    while i < len(expr):
        ch = expr[i]
        if ch == "\\":
            i += 2
            continue
        if in_str:
            in_str = ch != '"'
        elif in_cls:
            in_cls = ch != "]"
        elif ch == '"':
            in_str = True
        elif ch == "[":
            in_cls = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0 and i != len(expr) - 1:
                return False
        i += 1
    return depth == 0


def _quantifier(lo: int, hi: int) -> str:
    from re._constants import MAXREPEAT  # the "no upper bound" marker of re's parser

    if hi == MAXREPEAT:
        return {0: "*", 1: "+"}.get(lo, f"{{{lo},}}")
    if (lo, hi) == (0, 1):
        return "?"
    return f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"


@lru_cache(maxsize=256)
def regex_to_gbnf(pattern: str) -> str:
    """A GBNF grammar (rule ``root``) whose sentences are the strings ``pattern`` fully matches
    (with the ASCII narrowing of ``\\d``/``\\w`` the module docstring explains)."""
    body = _RegexConverter(pattern, 0, "the regex", anchored_ok=True).convert()
    return f"root ::= {body}\n"


# --- Lark grammars ------------------------------------------------------------------------------

# The grammar's rules as a small tree, read from lark's own EBNF parse of the text (before lark
# expands optionals into alternatives: a rule with six optional clauses is 64 alternatives
# there, and llama.cpp keeps one stack per live alternative, so the expanded form took over a
# minute to accept one short SQL query where the factored one takes milliseconds).
# ("seq", [nodes]) | ("alt", [nodes]) | ("rep", node, lo, hi or -1) | ("rule", name)
# | ("term", name) | ("lit", gbnf expression of an inline literal)
Node = tuple[Any, ...]


def _rule_name(name: str, terminal: bool) -> str:
    """Lark names use ``_``; GBNF names are letters, digits and ``-`` (``r-``/``t-`` keep
    rules and terminals apart)."""
    return ("t-" if terminal else "r-") + name.replace("_", "-")


def _pattern_gbnf(pattern: Any, where: str) -> str:
    import lark

    if isinstance(pattern, lark.lexer.PatternStr):
        if "i" in pattern.flags:
            return _RegexConverter(re.escape(pattern.value), re.IGNORECASE, where, False).convert()
        return _literal(pattern.value) if pattern.value else '""'
    flags = 0
    for letter in pattern.flags:
        if letter == "l":
            raise _refuse("regex_flag", where, "the locale flag (?L)")
        flags |= {"i": re.IGNORECASE, "s": re.DOTALL, "m": re.MULTILINE, "x": re.VERBOSE}.get(letter, 0)
    return _RegexConverter(pattern.value, flags, where, anchored_ok=False).convert()


def _tree_node(tree: Any, rule: str) -> Node:
    """lark's EBNF tree of one rule (``expansions``/``expansion``/``expr``/``value``...) as a Node."""
    import lark
    from lark.load_grammar import _literal_to_pattern  # lark's own reading of "..."i and /.../

    if isinstance(tree, lark.grammar.NonTerminal):
        return ("rule", str(tree.name))
    if isinstance(tree, lark.grammar.Terminal):
        return ("term", str(tree.name))
    kind = tree.data
    kids = tree.children
    if kind == "expansions":
        alts = [_tree_node(k, rule) for k in kids]
        return alts[0] if len(alts) == 1 else ("alt", alts)
    if kind == "expansion":
        items = [_tree_node(k, rule) for k in kids]
        return items[0] if len(items) == 1 else ("seq", items)
    if kind == "alias":
        return _tree_node(kids[0], rule)
    if kind == "value":
        return _tree_node(kids[0], rule)
    if kind == "literal":
        pattern = _literal_to_pattern(kids[0])  # type: ignore[no-untyped-call]
        return ("lit", _pattern_gbnf(pattern, f"a literal in rule {rule}"), *_pattern_edges(pattern))
    if kind == "maybe":
        return ("rep", _tree_node(kids[0], rule), 0, 1)
    if kind == "expr":
        inner = _tree_node(kids[0], rule)
        op = str(kids[1])
        if op == "?":
            return ("rep", inner, 0, 1)
        if op == "*":
            return ("rep", inner, 0, -1)
        if op == "+":
            return ("rep", inner, 1, -1)
        if op == "~":
            lo = int(kids[2])
            hi = int(kids[3]) if len(kids) > 3 else lo
            return ("rep", inner, lo, hi)
    raise _refuse("grammar_construct", f"rule {rule}", f"the Lark construct {kind!r}")


def _nullable_node(node: Node, nullable: set[str]) -> bool:
    kind = node[0]
    if kind == "seq":
        return all(_nullable_node(n, nullable) for n in node[1])
    if kind == "alt":
        return any(_nullable_node(n, nullable) for n in node[1])
    if kind == "rep":
        return node[2] == 0 or _nullable_node(node[1], nullable)
    if kind == "rule":
        return node[1] in nullable
    return False  # lark refuses terminals that match the empty string


def _left_edge(node: Node, nullable: set[str]) -> set[str]:
    """The rules that can come first in ``node`` (through any empty prefix)."""
    kind = node[0]
    if kind == "rule":
        return {node[1]}
    if kind == "alt":
        return set().union(*(_left_edge(n, nullable) for n in node[1]))
    if kind == "rep":
        return _left_edge(node[1], nullable)
    if kind == "seq":
        out: set[str] = set()
        for n in node[1]:
            out |= _left_edge(n, nullable)
            if not _nullable_node(n, nullable):
                break
        return out
    return set()


def _walk(node: Node) -> Iterable[Node]:
    yield node
    if node[0] in ("seq", "alt"):
        for n in node[1]:
            yield from _walk(n)
    elif node[0] == "rep":
        yield from _walk(node[1])


class _LarkConverter:
    def __init__(self, grammar: Grammar) -> None:
        from lark.load_grammar import load_grammar

        self.grammar = grammar
        self.parser = grammar.parser
        source, _ = load_grammar(grammar.text, grammar.source or "<grammar>", [], False)  # type: ignore[no-untyped-call]
        self.rules: dict[str, Node] = {}
        for name, params, tree, _options in source.rule_defs:
            if params:
                raise _refuse("grammar_template", f"rule {name}", "a rule template")
            self.rules[str(name)] = _tree_node(tree, str(name))
        self.tails: dict[str, Node] = {}
        self.ignored = [str(n) for n in self.parser.ignore_tokens]
        self.sep = " ig " if self.ignored else " "

    def split_left_recursion(self) -> None:
        """``A: A a | b`` -> base ``b`` and tail ``a`` (emitted as ``(b) (a)*``)."""
        for name, body in list(self.rules.items()):
            alts = list(body[1]) if body[0] == "alt" else [body]
            base, tail = [], []
            for alt in alts:
                items = list(alt[1]) if alt[0] == "seq" else [alt]
                if items[0] == ("rule", name):
                    rest = items[1:]
                    tail.append(rest[0] if len(rest) == 1 else ("seq", rest))
                else:
                    base.append(alt)
            if not tail:
                continue
            if not base:
                raise _refuse("grammar_left_recursion", f"rule {name}",
                              f"every alternative of {name!r} starts with {name!r} (it derives no finite text)")
            if any(not t[1] if t[0] == "seq" else False for t in tail):
                raise _refuse("grammar_left_recursion", f"rule {name}", f"{name!r}: {name!r} alone")
            self.rules[name] = base[0] if len(base) == 1 else ("alt", base)
            self.tails[name] = tail[0] if len(tail) == 1 else ("alt", tail)

    def check(self) -> None:
        """Refuse what llama.cpp would refuse: a rule reachable from itself at its left edge,
        and an unbounded repetition of something that can be empty (its ``*`` rule is left
        recursive in llama.cpp's expansion)."""
        nullable = self.nullable_rules()
        edges: dict[str, set[str]] = {}
        for name, body in self.rules.items():
            edges[name] = _left_edge(body, nullable)
            if name in self.tails:
                if _nullable_node(self.tails[name], nullable):
                    raise _refuse("grammar_left_recursion", f"rule {name}",
                                  f"a left-recursive alternative of {name!r} adds nothing")
                if _nullable_node(body, nullable):
                    edges[name] |= _left_edge(self.tails[name], nullable)
            for node in [*_walk(body), *(_walk(self.tails[name]) if name in self.tails else [])]:
                if node[0] == "rep" and node[3] == -1 and _nullable_node(node[1], nullable):
                    raise _refuse("grammar_empty_repetition", f"rule {name}",
                                  f"an unbounded repetition in {name!r} of something that can be empty")
        cyclic = self_reaching(edges)
        if cyclic:
            start = cyclic[0]
            raise _refuse("grammar_left_recursion", f"rule {start}", (
                f"the rule {start!r} can start with itself through other rules (indirect "
                "left recursion), which llama.cpp's grammar engine refuses"))

    # With %ignore, an ignored run may come before every token (``ig``), except that two
    # word-like tokens must not touch: lark matches a terminal greedily, so "AFROM" is one
    # IDENT to it, never "A" then "FROM", while a character grammar could split it. So a token
    # that may start with a word character, after one that may end with one, gets a required
    # run (``sp``). "May" is read conservatively (a rule ends with a word character if any of
    # its sentences can), which only ever asks for a space lark would have allowed.
    # Each rule is emitted in up to two variants: entered after a word character
    # (``w-name``) or not (``r-name``).

    def edges(self, node: Node) -> bool:
        """May ``node`` (when not empty) end with a word character?"""
        kind = node[0]
        if kind == "term":
            return self.term_edges[node[1]][1]
        if kind == "lit":
            return bool(node[3])
        if kind == "rule":
            return self.rule_ends.get(node[1], False)
        if kind == "alt":
            return any(self.edges(n) for n in node[1])
        if kind == "rep":
            return self.edges(node[1])
        out = False
        for n in reversed(node[1]):
            out = out or self.edges(n)
            if not _nullable_node(n, self.nullable):
                break
        return out

    def token(self, text: str, starts_word: bool, after_word: bool) -> str:
        if not self.ignored:
            return text
        return f"{'sp' if after_word and starts_word else 'ig'} {text}"

    def expr(self, node: Node, after: bool, top: bool = False) -> tuple[str, bool]:
        """GBNF for ``node`` entered after a word character (``after``) or not, and whether
        what follows it may come after a word character."""
        kind = node[0]
        nullable = _nullable_node(node, self.nullable)
        if kind == "rule":
            name = node[1]
            if name not in self.rules:
                raise _refuse("grammar_rule", f"rule {name}", f"the rule {name!r} has no definition")
            key = (name, after and bool(self.ignored))
            if key not in self.emitted:
                self.emitted[key] = None
                self.todo.append(key)
            return self.variant(*key), self.edges(node) or (nullable and after)
        if kind == "term":
            starts, ends = self.term_edges[node[1]]
            return self.token(_rule_name(node[1], True), starts, after), ends
        if kind == "lit":
            return self.token(str(node[1]), bool(node[2]), after), bool(node[3])
        if kind == "seq":
            return self.seq(list(node[1]), after)
        if kind == "alt":
            outs = [self.expr(n, after) for n in node[1]]
            body = " | ".join(t for t, _ in outs)
            return (body if top else f"({body})"), any(o for _, o in outs)
        inner, lo, hi = node[1], node[2], node[3]
        first, out = self.expr(inner, after)
        again_state = after or out
        if again_state == after:
            atom = first if re.fullmatch(r"[A-Za-z0-9-]+", first) or _RegexConverter._atomic(first) else f"({first})"
            return atom + _quantifier(lo, hi if hi >= 0 else _max_repeat()), (after if lo == 0 else out) or out
        again, _ = self.expr(inner, again_state)
        more = _quantifier(max(lo - 1, 0), (hi - 1) if hi >= 0 else _max_repeat())
        once = f"({first} ({again}){more})" if more != "{0}" else f"({first})"
        return (once if lo >= 1 else once + "?"), (after or out) if lo == 0 else out

    def seq(self, items: list[Node], after: bool) -> tuple[str, bool]:
        """A sequence; where an item may leave either state (an optional part, alternatives
        ending differently), the rest of the sequence is emitted once per state (a helper
        rule each), so "c.name" needs no space after the dot just because "c." was optional."""
        parts: list[str] = []
        state = after
        for idx, item in enumerate(items):
            rest = items[idx + 1:]
            splits = self.split(item, state) if self.ignored and rest else []
            if len(splits) < 2:
                text, state = self.expr(item, state)
                parts.append(text)
                continue
            alts: list[str] = []
            outs: list[bool] = []
            for text, out in splits:
                rest_text, rest_out = self.helper(rest, out)
                alts.append(f"{text} {rest_text}".strip() if text else rest_text)
                outs.append(rest_out)
            parts.append("(" + " | ".join(alts) + ")")
            return " ".join(parts), any(outs)
        return (" ".join(parts) if parts else '""'), state

    def split(self, item: Node, after: bool) -> list[tuple[str, bool]]:
        """``item`` as alternatives that each leave one known state; one entry when all agree."""
        kind = item[0]
        if kind == "rep" and item[2] == 0:
            present = ("rep", item[1], 1, item[3]) if item[3] != 1 else item[1]
            text, out = self.expr(present, after)
            return [] if out == after else [(text, out), ("", after)]
        if kind == "alt":
            by_state: dict[bool, list[str]] = {}
            for alt in item[1]:
                text, out = self.expr(alt, after)
                by_state.setdefault(out, []).append(text)
            if len(by_state) < 2:
                return []
            return [("(" + " | ".join(texts) + ")", out) for out, texts in by_state.items()]
        return []

    def helper(self, items: list[Node], after: bool) -> tuple[str, bool]:
        key = (repr(items), after)
        if key not in self.helpers:
            name = f"h-{len(self.helpers)}"
            self.helpers[key] = (name, False)
            body, out = self.seq(items, after)
            self.helpers[key] = (name, out)
            self.helper_lines.append(f"{name} ::= {body}")
        return self.helpers[key]

    def variant(self, name: str, after: bool) -> str:
        return ("w-" + name.replace("_", "-")) if after else _rule_name(name, False)

    def convert(self) -> str:
        start = self.grammar.start
        if start not in self.rules:
            raise _refuse("grammar_rule", f"rule {start}", f"no start rule {start!r}")
        self.split_left_recursion()
        self.check()
        self.nullable = self.nullable_rules()
        by_name = {str(t.name): t for t in self.parser.terminals}
        self.term_edges = {name: _pattern_edges(t.pattern) for name, t in by_name.items()}
        # Which rules may end with a word character: a fixpoint over the rules.
        self.rule_ends: dict[str, bool] = {}
        changed = True
        while changed:
            changed = False
            for name, body in self.rules.items():
                value = self.edges(body) or (name in self.tails and self.edges(self.tails[name]))
                if value and not self.rule_ends.get(name):
                    self.rule_ends[name] = True
                    changed = True
        self.emitted: dict[tuple[str, bool], None] = {}
        self.helpers: dict[tuple[str, bool], tuple[str, bool]] = {}
        self.helper_lines: list[str] = []
        self.todo: list[tuple[str, bool]] = []
        root, _ = self.expr(("rule", start), False)
        lines = [f"root ::= {root}{' ig' if self.ignored else ''}"]
        terminals: set[str] = set()
        while self.todo:
            name, after = self.todo.pop(0)
            text, _ = self.expr(self.rules[name], after, top=True)
            if name in self.tails:
                # After the base or any tail, the state is "may end with a word" of the rule.
                again = (after and _nullable_node(self.rules[name], self.nullable)) or self.rule_ends.get(name, False)
                tail_node = self.tails[name]
                alts = list(tail_node[1]) if tail_node[0] == "alt" else [tail_node]
                text = f"({text}) ({' | '.join(self.expr(a, again)[0] for a in alts)})*"
            lines.append(f"{self.variant(name, after)} ::= {text}")
            for n in [*_walk(self.rules[name]), *(_walk(self.tails[name]) if name in self.tails else [])]:
                if n[0] == "term":
                    terminals.add(n[1])
        lines += self.helper_lines
        for name in sorted(terminals):
            if name not in by_name:
                raise _refuse("grammar_terminal", f"terminal {name}", f"the terminal {name!r} has no definition")
            lines.append(f"{_rule_name(name, True)} ::= {_pattern_gbnf(by_name[name].pattern, f'terminal {name}')}")
        if self.ignored:
            bodies = [_pattern_gbnf(by_name[n].pattern, f"terminal {n}") for n in self.ignored]
            single = re.fullmatch(r'((?:\[(?:[^\]\\]|\\.)*\]|"(?:[^"\\]|\\.)"))\+', bodies[0])
            if len(bodies) == 1 and single:
                run = single.group(1)  # [ \t]* rather than ([ \t]+)*: one way to read a run
            else:
                run = "(" + " | ".join(f"({b})" for b in bodies) + ")"
            lines += [f"ig ::= {run}*", f"sp ::= {run}+"]
        return "\n".join(lines) + "\n"

    def nullable_rules(self) -> set[str]:
        nullable: set[str] = set()
        changed = True
        while changed:
            changed = False
            for name, body in self.rules.items():
                if name not in nullable and _nullable_node(body, nullable):
                    nullable.add(name)
                    changed = True
        return nullable


def _is_word(code: int) -> bool:
    return code > 0x7F or chr(code).isalnum() or code == 0x5F


def _pattern_edges(pattern: Any) -> tuple[bool, bool]:
    """(may start with a word character, may end with one) for a lark terminal pattern."""
    import lark

    if isinstance(pattern, lark.lexer.PatternStr):
        text = pattern.value
        return (bool(text) and _is_word(ord(text[0])), bool(text) and _is_word(ord(text[-1])))
    import re._parser as sre

    flags = 0
    for letter in pattern.flags:
        flags |= {"i": re.IGNORECASE, "s": re.DOTALL, "m": re.MULTILINE, "x": re.VERBOSE}.get(letter, 0)
    tree = list(sre.parse(pattern.value, flags))
    return _re_edge(tree, first=True), _re_edge(tree, first=False)


def _re_nullable(items: list[tuple[Any, Any]]) -> bool:
    for op, av in items:
        name = str(op)
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            if av[0] > 0 and not _re_nullable(list(av[2])):
                return False
        elif name == "SUBPATTERN":
            if not _re_nullable(list(av[-1])):
                return False
        elif name == "BRANCH":
            if not any(_re_nullable(list(b)) for b in av[1]):
                return False
        elif name != "AT":
            return False
    return True


def _re_edge(items: list[tuple[Any, Any]], first: bool) -> bool:
    """May the regex's first (or last) character be a word character? (conservative: yes
    whenever it cannot tell)."""
    for op, av in items if first else list(reversed(items)):
        name = str(op)
        if name == "LITERAL":
            return _is_word(av)
        if name == "IN":
            negated = bool(av) and str(av[0][0]) == "NEGATE"
            if negated:
                return True
            for kind, val in av:
                k = str(kind)
                if k == "LITERAL" and _is_word(val):
                    return True
                if k == "RANGE" and any(_is_word(c) for c in range(val[0], min(val[1], 0x80) + 1)):
                    return True
                if k == "RANGE" and val[1] > 0x7F:
                    return True
                if k == "CATEGORY" and ("SPACE" not in str(val) or "NOT_SPACE" in str(val)):
                    return True
            return False
        if name == "AT":
            continue
        if name == "SUBPATTERN":
            sub = list(av[-1])
            if _re_edge(sub, first):
                return True
            if not _re_nullable(sub):
                return False
            continue
        if name == "BRANCH":
            if any(_re_edge(list(b), first) for b in av[1]):
                return True
            if not any(_re_nullable(list(b)) for b in av[1]):
                return False
            continue
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            sub = list(av[2])
            if _re_edge(sub, first):
                return True
            if av[0] > 0 and not _re_nullable(sub):
                return False
            continue
        return True  # ANY, NOT_LITERAL and the rest: could be anything
    return False


def _max_repeat() -> int:
    from re._constants import MAXREPEAT

    return int(MAXREPEAT)


@lru_cache(maxsize=64)
def _lark_to_gbnf(text: str, start: str) -> str:
    from extract.spec.grammar import Grammar

    return _LarkConverter(Grammar(text=text, start=start)).convert()


def grammar_to_gbnf(grammar: Grammar) -> str:
    """The GBNF grammar (rule ``root``) for a Lark ``Grammar``: what llama.cpp's ``grammar``
    request field takes. Raises ``UnsupportedSchema`` (feature and rule or terminal named)
    for what GBNF cannot express; cached per grammar text."""
    return _lark_to_gbnf(grammar.text, grammar.start)


# --- grammar fields: one GBNF for a JSON object with grammar-constrained strings -------------------

_NAME_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|(?P<name>[A-Za-z][A-Za-z0-9-]*)|.', re.S)


def _prefixed_gbnf(gbnf: str, prefix: str) -> str:
    """``gbnf`` with every rule name prefixed (strings and classes left alone), so several
    grammars can share one GBNF text."""
    return "".join(prefix + m.group(0) if m.group("name") else m.group(0) for m in _NAME_TOKEN.finditer(gbnf))


@lru_cache(maxsize=64)
def object_gbnf(constraint: str) -> str:
    """One GBNF for the object ``constraint`` describes (the local tier's tightened JSON Schema
    text, with ``x-grammar`` on grammar fields): the JSON as llama-cpp-python's own schema
    converter writes it (what its server builds for ``json_object`` + schema), with each
    top-level grammar field's string replaced by its grammar between quotes.

    Refused (``UnsupportedSchema``, feature ``grammar_field``) like ``object_lark``: a grammar
    field that is not a top-level property, or a grammar that can produce a character a JSON
    string must escape; and whatever ``grammar_to_gbnf`` refuses.
    """
    import json

    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from extract.spec.grammar import Grammar, json_unsafe_terminals

    schema = json.loads(constraint)
    props = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(props, dict):
        raise UnsupportedSchema("grammar_field", _TIER, detail="a grammar field needs a top-level object")
    fields: list[tuple[str, Grammar]] = []
    for name, node in list(props.items()):
        entry = node.get("x-grammar") if isinstance(node, dict) else None
        branches = node.get("anyOf") if isinstance(node, dict) else None
        if entry is None and isinstance(branches, list):
            marked = [b for b in branches if isinstance(b, dict) and "x-grammar" in b]
            if len(marked) == 1 and len(branches) == 2 and any(b.get("type") == "null" for b in branches):
                entry = marked[0]["x-grammar"]
        if entry is None:
            if "x-grammar" in json.dumps(node):
                raise UnsupportedSchema("grammar_field", _TIER, path=f"/properties/{name}", detail=(
                    "a grammar field inside a nested model, list or union cannot be combined; "
                    "it is validated after the answer instead"))
            continue
        grammar = Grammar.from_schema_entry(entry)
        unsafe = json_unsafe_terminals(grammar)
        if unsafe:
            raise UnsupportedSchema("grammar_field", _TIER, path=f"/properties/{name}", detail=(
                f"the grammar {grammar.name!r} can produce {unsafe[0][1]!r} (terminal {unsafe[0][0]}), "
                "which a JSON string must escape"))
        placeholder = f"@@grammar-field-{len(fields)}@@"
        nullable = "anyOf" in node
        props[name] = {"anyOf": [{"const": placeholder}, {"type": "null"}]} if nullable else {"const": placeholder}
        fields.append((placeholder, grammar))
    if not fields:
        raise UnsupportedSchema("grammar_field", _TIER, detail="no top-level grammar field to combine")
    out = json_schema_to_gbnf(json.dumps(_without_keys(schema, "x-guidance")))
    extra: list[str] = []
    for i, (placeholder, grammar) in enumerate(fields):
        literal = f'"\\"{placeholder}\\""'
        if out.count(literal) != 1:
            raise UnsupportedSchema("grammar_field", _TIER, detail="llama-cpp-python's schema converter "
                                    "wrote the field in a form this combination does not expect")
        prefix = f"g{i}-"
        out = out.replace(literal, f'"\\"" {prefix}root "\\""')
        extra.append(_prefixed_gbnf(grammar_to_gbnf(grammar), prefix))
    return str(out).rstrip("\n") + "\n" + "".join(extra)


def _without_keys(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        return {k: _without_keys(v, key) for k, v in node.items() if k != key}
    if isinstance(node, list):
        return [_without_keys(v, key) for v in node]
    return node
