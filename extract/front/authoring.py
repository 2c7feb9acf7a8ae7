"""``check_spec``: what each tier will do with a spec, and what will go wrong, before any tokens.

Authoring is the third way the project is used: a person writes a schema or a grammar and
wants to know, before spending a model call, which tiers can honour it (feature by feature,
from the capability tables in ``extract.spec.features`` and each tier's own
``check_support``, the same calls ``Extractor._plan`` makes), which parts a small model tends
to get wrong (unbounded strings and lists, deep recursion, huge enums, regex constructs a
constrained decoder cannot honour, fields without descriptions, optional fields), how many
output tokens a call may take, and how long the local tier's constraint takes to compile.

The compile time is measured with the model's tokenizer only (llama.cpp ``vocab_only``), so a
check loads no weights. This module sits beside ``pipeline``: it may import tiers and
providers, and nothing below it imports it. ``extract.validate.check`` is a different thing:
it checks a model's *output* against a spec.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from extract.errors import ConfigError, UnsupportedSchema
from extract.settings import Settings
from extract.spec import Spec, compile_spec, max_output_chars
from extract.spec.compile import checked_after
from extract.spec.features import FEATURES, TIER_SUPPORT
from extract.spec.grammar import UNSUPPORTED_CONSTRUCTS, Grammar, grammar_problems
from extract.tiers import REGISTRY, make_tier

__all__ = ["CheckReport", "CompileTiming", "GrammarFindings", "SpecWarning", "TierVerdict", "check_spec"]

# Past these, a field is a practical problem for a small model: measured or conservative.
HUGE_ENUM = 64  # values; each is a branch of the grammar and a line of the prompt
DEEP_NESTING = 4  # objects/lists inside each other
_UNBOUNDED = 1 << 20  # max_output_chars' cap: "no bound"
# Regex constructs no constrained decoder can honour (they need lookahead into text not yet
# generated, or memory of a group): named so the warning says which one.
_REGEX_CONSTRUCTS = (
    (re.compile(r"\(\?=|\(\?!"), "lookahead (?= / (?!"),
    (re.compile(r"\(\?<=|\(\?<!"), "lookbehind (?<= / (?<!"),
    (re.compile(r"\\[1-9]"), "a backreference (\\1)"),
    (re.compile(r"\\[bB]"), "a word boundary (\\b)"),
)
# A regex repeat with no upper bound: *, + or {n,}. A pattern without one bounds its string.
_UNBOUNDED_REPEAT = re.compile(r"(?<!\\)[*+]|\{\d+,\}")
# Keys that make a dict a JSON Schema rather than some other JSON object.
_SCHEMA_KEYS = frozenset({
    "type", "properties", "items", "$ref", "anyOf", "oneOf", "allOf", "enum", "const", "$defs",
    "definitions", "not", "if", "prefixItems", "additionalProperties", "pattern", "$schema",
})


@dataclass(frozen=True)
class FeatureSupport:
    """One feature the spec uses, where, and which tiers' capability rows include it."""

    feature: str
    description: str
    where: tuple[str, ...]
    tiers: dict[str, bool]


@dataclass(frozen=True)
class CheckedAfter:
    """A keyword the local constraint leaves out: decoded without it, validated after."""

    feature: str
    where: str
    description: str


@dataclass(frozen=True)
class TierVerdict:
    """Whether one tier can run the spec; ``reason`` is the tier's own refusal when not."""

    tier: str
    configured: bool
    supported: bool
    available: bool
    feature: str | None = None
    reason: str | None = None
    unavailable: str | None = None

    @property
    def can_run(self) -> bool:
        return self.supported and self.available


@dataclass(frozen=True)
class SpecWarning:
    """A practical problem: the spec is valid, but a model will likely stumble here."""

    code: str
    path: str
    message: str


@dataclass(frozen=True)
class CompileTiming:
    """llguidance compile time of the local constraint: cold (first in the process) and warm
    (what every later extraction with the same spec pays to build its matcher)."""

    cold_s: float | None = None
    warm_s: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class GrammarFindings:
    """A Lark grammar read three ways: by lark, by the llguidance subset rules, by llguidance."""

    parses_with_lark: bool
    lark_error: str | None
    subset_problems: list[dict[str, Any]]  # {feature, line, text, construct}
    llguidance_error: str | None


@dataclass
class CheckReport:
    """Everything ``extract check`` prints. ``ok`` is True when a configured tier can run it."""

    spec: str
    kind: str
    source: str | None
    configured_tiers: list[str]
    features: list[FeatureSupport] = field(default_factory=list)
    tiers: list[TierVerdict] = field(default_factory=list)
    warnings: list[SpecWarning] = field(default_factory=list)
    input_chars: int = 0
    max_output_chars: int | None = None  # of any instance of the spec itself; None: unbounded
    local_max_tokens: int | None = None
    remote_max_tokens: int | None = None
    compile: CompileTiming | None = None
    grammar: GrammarFindings | None = None
    checked_after: list[CheckedAfter] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return any(t.can_run for t in self.tiers if t.configured)

    @property
    def exit_code(self) -> int:
        """0 when a configured tier can run the spec, 1 when none can (2 is bad input, raised)."""
        return 0 if self.ok else 1

    def to_json_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        for verdict, row in zip(self.tiers, out["tiers"], strict=True):
            row["can_run"] = verdict.can_run
        return out

    def render(self) -> str:
        """Plain text for a terminal: verdict per tier, the feature table, warnings, budget."""
        lines = [f"{self.kind} {self.spec}" + (f" ({self.source})" if self.source else "")]
        if self.grammar is not None:
            g = self.grammar
            lines.append(f"  parses with lark: {'yes' if g.parses_with_lark else 'no: ' + str(g.lark_error)}")
            if g.subset_problems:
                lines.append("  outside the llguidance Lark subset:")
                lines += [f"    line {p['line']}: {p['construct']}: {p['text']}" for p in g.subset_problems]
            else:
                lines.append("  llguidance Lark subset: yes"
                             + (f" (but llguidance says: {g.llguidance_error})" if g.llguidance_error else ""))
        lines.append("tiers (* = configured):")
        for t in self.tiers:
            mark = "*" if t.configured else " "
            if not t.supported:
                state = f"refuses: {t.reason}"
            elif not t.available:
                state = f"supported, but unavailable: {t.unavailable}"
            else:
                state = "supported"
            lines.append(f"  {mark} {t.tier:<11} {state}")
        if self.features:
            names = [t.tier for t in self.tiers if "@" not in t.tier]
            lines.append("features (capability table; a tier may still refuse what it cannot compile):")
            lines.append("    " + f"{'feature':<20}" + "".join(f"{n:<11}" for n in names) + "where")
            for f in self.features:
                cells = "".join(f"{'yes' if f.tiers.get(n) else 'NO':<11}" for n in names)
                where = ", ".join(w or "/" for w in f.where[:3]) + (" ..." if len(f.where) > 3 else "")
                lines.append(f"    {f.feature:<20}{cells}{where}")
        if self.checked_after:
            lines.append("local tier: decoded without these keywords, then validated against the whole schema "
                         "(a failure is reasked by the repair tier):")
            lines += [f"    {c.feature:<20}{c.where}" for c in self.checked_after]
        if self.local_max_tokens is not None:
            budget = "unbounded" if self.max_output_chars is None else f"at most {self.max_output_chars} characters"
            lines.append(f"output budget: any instance of the spec is {budget}; for a {self.input_chars}-character "
                         f"input the local tier allows {self.local_max_tokens} tokens, the remote tiers "
                         f"{self.remote_max_tokens}")
        if self.compile is not None:
            c = self.compile
            if c.error:
                lines.append(f"local compile: failed: {c.error}")
            elif c.cold_s is not None and c.warm_s is not None:
                lines.append(f"local compile: {1000 * c.cold_s:.1f} ms cold, {1000 * c.warm_s:.1f} ms warm")
        if self.warnings:
            lines.append("warnings:")
            lines += [f"  [{w.code}] {w.path or '/'}: {w.message}" for w in self.warnings]
        verdict = "ok" if self.ok else "NO configured tier can run this spec"
        lines.append(f"verdict: {verdict} (configured: {', '.join(self.configured_tiers)})")
        return "\n".join(lines)


def _sample_text(n_chars: int) -> str:
    """A stand-in input of ``n_chars``: the local constraint's bounds depend only on its length
    and word count."""
    words = ("lorem ipsum dolor sit amet " * (n_chars // 27 + 1))[:n_chars]
    return words or "x"


def _describe(spec: Any) -> str:
    if isinstance(spec, type):
        return f"{spec.__module__}:{spec.__qualname__}"
    return type(spec).__name__


def check_spec(spec: Any, *, tiers: Sequence[str] | None = None, input_chars: int = 1000,
               measure_compile: bool = True, source: str | None = None, **settings: Any) -> CheckReport:
    """Check ``spec`` (a Pydantic class, a JSON Schema dict, ``Regex``, ``Grammar`` or a
    ``.lark`` path) against every tier, without calling a model.

    ``tiers`` is the configured chain (default: ``Settings.default_tiers()``, as ``Extractor``
    would run); every registered tier is reported, the configured ones decide ``ok``.
    ``input_chars`` is the input length the local constraint and token budgets are sized for.
    Raises ``ConfigError`` for input that is not a spec (the caller must act).
    """
    resolved = Settings.resolve(tiers=list(tiers) if tiers else None, **settings)
    configured = resolved.default_tiers()
    findings: GrammarFindings | None = None
    if isinstance(spec, (str, Path)) and str(spec).endswith(".lark"):
        source = source or str(spec)
        findings, spec = _read_grammar(Path(spec))
    elif isinstance(spec, Grammar):
        findings = _grammar_findings(spec.text, spec.start)
    if isinstance(spec, dict) and not (_SCHEMA_KEYS & set(spec)):
        raise ConfigError(
            "this JSON object has none of the JSON Schema keywords (type, properties, $ref, anyOf, "
            f"enum...): it is not a schema; its keys are {', '.join(sorted(spec)[:6]) or 'none'}"
        )
    if findings is not None and not isinstance(spec, Grammar):
        # A grammar outside the llguidance subset cannot become a spec at all (Grammar refuses
        # it, so extract() would too): every tier refuses, with the construct and the line.
        first = findings.subset_problems[0]
        reason = f"line {first['line']}: {first['construct']} is outside the Lark subset llguidance accepts"
        report = CheckReport(spec=Path(str(spec)).stem, kind="grammar", source=source, configured_tiers=configured,
                             grammar=findings)
        report.tiers = [TierVerdict(tier=name, configured=name in configured, supported=False, available=True,
                                    feature=first["feature"], reason=reason) for name in _tier_names(configured)]
        return report
    compiled = compile_spec(spec)
    report = CheckReport(spec=compiled.name, kind=compiled.kind, source=source or _source(spec),
                         configured_tiers=configured, grammar=findings, input_chars=input_chars)
    report.tiers = [_verdict(name, compiled, resolved, configured) for name in _tier_names(configured)]
    report.features = [
        FeatureSupport(feature=f, description=FEATURES.get(f, f), where=compiled.features[f],
                       tiers={t: f in TIER_SUPPORT.get(t, frozenset()) for t in REGISTRY})
        for f in [*FEATURES, *sorted(set(compiled.features) - set(FEATURES))] if f in compiled.features
    ]
    report.checked_after = [CheckedAfter(feature=f, where=w, description=FEATURES.get(f, f))
                            for f, w in checked_after(compiled)]
    text = _sample_text(input_chars)
    _budgets(report, compiled, resolved, text)
    if compiled.schema is not None:
        report.warnings = list(_schema_warnings(compiled.schema))
    elif compiled.pattern is not None:
        report.warnings = list(_regex_warnings(compiled.pattern, ""))
    if report.local_max_tokens is not None and report.local_max_tokens > resolved.n_ctx // 2:
        report.warnings.append(SpecWarning(
            "token_budget", "",
            f"the local tier may generate up to {report.local_max_tokens} tokens for a {input_chars}-character "
            f"input (context {resolved.n_ctx}); bound the strings and lists the model fills, or set max_tokens"))
    if measure_compile and any(v.tier == "local" and v.supported for v in report.tiers):
        report.compile = _compile_timing(compiled, text, resolved)
    return report


def _tier_names(configured: Sequence[str]) -> list[str]:
    return [*REGISTRY, *(t for t in configured if t not in REGISTRY)]


def _source(spec: Any) -> str | None:
    if isinstance(spec, type):
        return _describe(spec)
    if isinstance(spec, Grammar):
        return spec.source
    return None


def _verdict(name: str, spec: Spec, settings: Settings, configured: Sequence[str]) -> TierVerdict:
    """The tier's own answer, exactly as ``Extractor._plan`` asks it."""
    tier = make_tier(name, settings)
    unavailable = tier.unavailable()
    try:
        tier.check_support(spec)
    except UnsupportedSchema as exc:
        return TierVerdict(tier=name, configured=name in configured, supported=False,
                           available=unavailable is None, feature=exc.feature,
                           reason=f"{exc.feature}" + (f" at {exc.path}" if exc.path else "")
                           + (f": {exc.detail}" if exc.detail else ""), unavailable=unavailable)
    return TierVerdict(tier=name, configured=name in configured, supported=True,
                       available=unavailable is None, unavailable=unavailable)


def _budgets(report: CheckReport, spec: Spec, settings: Settings, text: str) -> None:
    """Each tier's own declared output-token limit (``Tier.spend``), as the chain would use it;
    the local one before a prompt takes its share of the context."""
    if spec.schema is not None:
        own = max_output_chars(spec.schema)
        report.max_output_chars = None if own >= _UNBOUNDED else own
    report.local_max_tokens = make_tier("local", settings).spend(spec, text).output_tokens
    report.remote_max_tokens = make_tier("native", settings).spend(spec, text).output_tokens


def _read_grammar(path: Path) -> tuple[GrammarFindings, Any]:
    """The findings for a ``.lark`` file and the ``Grammar`` (or the path, when the grammar is
    outside the llguidance subset). A file that is missing or does not parse is a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the grammar file {path}: {exc}") from None
    findings = _grammar_findings(text, "start", source=str(path))
    if not findings.parses_with_lark:
        raise ConfigError(f"the grammar {path} does not parse with lark: {findings.lark_error}")
    if findings.subset_problems:
        return findings, str(path)
    return findings, Grammar.from_file(path)


def _grammar_findings(text: str, start: str, source: str | None = None) -> GrammarFindings:
    import lark

    lark_error: str | None = None
    try:
        lark.Lark(text, start=start, parser="earley")
    except lark.exceptions.UnexpectedInput as exc:
        lark_error = f"line {exc.line}, column {exc.column}: {str(exc).splitlines()[0]}"
    except lark.exceptions.LarkError as exc:
        lark_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    labels = {f: label for f, _, label in UNSUPPORTED_CONSTRUCTS}
    problems = [{"feature": f, "line": n, "text": line, "construct": labels[f]}
                for f, n, line in grammar_problems(text)]
    llg_error: str | None = None
    if lark_error is None:
        from extract.providers.local_model import Constraint

        found = Constraint("lark", text).problems()
        llg_error = "; ".join(found) if found else None
    return GrammarFindings(parses_with_lark=lark_error is None, lark_error=lark_error,
                           subset_problems=problems, llguidance_error=llg_error)


def _nodes(node: Any, path: str, depth: int) -> Iterator[tuple[dict[str, Any], str, int]]:
    """Every sub-schema with its JSON pointer and its nesting depth (objects and lists)."""
    if not isinstance(node, dict):
        return
    yield node, path, depth
    inner = depth + (1 if node.get("type") in ("object", "array") or "properties" in node else 0)
    for name, sub in (node.get("properties") or {}).items():
        yield from _nodes(sub, f"{path}/properties/{name}", inner)
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}/items", inner)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}/additionalProperties", inner)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for i, sub in enumerate(node.get(key) or []):
            yield from _nodes(sub, f"{path}/{key}/{i}", depth)
    for key in ("$defs", "definitions"):
        for name, sub in (node.get(key) or {}).items():
            yield from _nodes(sub, f"{path}/{key}/{name}", 0)


def _is_null(node: Any) -> bool:
    return isinstance(node, dict) and node.get("type") == "null"


def _schema_warnings(schema: dict[str, Any]) -> Iterator[SpecWarning]:
    defs = {f"#/{k}/{n}": s for k in ("$defs", "definitions") for n, s in (schema.get(k) or {}).items()}
    deepest = (0, "")
    for node, path, depth in _nodes(schema, "", 0):
        if depth > deepest[0]:
            deepest = (depth, path)
        types = node.get("type")
        type_list = types if isinstance(types, list) else [types]
        bounded_pattern = isinstance(node.get("pattern"), str) and not _UNBOUNDED_REPEAT.search(node["pattern"])
        if "string" in type_list and not bounded_pattern and not any(
                k in node for k in ("maxLength", "enum", "const", "format")):
            yield SpecWarning(
                "unbounded_string", path,
                "no maxLength: the local tier bounds it by the input's length, the remote tiers do not; a "
                "small model can repeat a word until max_tokens cuts the JSON")
        if "array" in type_list and "maxItems" not in node:
            yield SpecWarning(
                "unbounded_list", path,
                "no maxItems: a small model can repeat an item until max_tokens cuts the JSON; bound it")
        if len(node.get("enum") or ()) > HUGE_ENUM:
            yield SpecWarning(
                "huge_enum", path,
                f"{len(node['enum'])} values (over {HUGE_ENUM}): every value is spelled out in the prompt "
                "and the grammar; a small model picks near the top; consider a free string + a validator")
        if isinstance(node.get("pattern"), str):
            yield from _regex_warnings(node["pattern"], path)
        props = node.get("properties")
        if isinstance(props, dict) and props:
            def described(sub: Any) -> bool:
                if not isinstance(sub, dict):
                    return False
                if sub.get("description"):
                    return True
                ref = sub.get("$ref")
                if isinstance(ref, str) and isinstance(defs.get(ref), dict) and defs[ref].get("description"):
                    return True
                return any(described(s) and not _is_null(s) for s in sub.get("anyOf") or [])
            bare = [n for n, sub in props.items() if not described(sub)]
            if bare:
                yield SpecWarning(
                    "no_description", path,
                    f"{len(bare)} of {len(props)} fields have no description, so the model must guess "
                    f"from the name alone: {', '.join(bare)}")
            required = set(node.get("required") or ())
            optional = [n for n in props if n not in required]
            if optional:
                yield SpecWarning(
                    "optional_fields", path,
                    f"{len(optional)} of {len(props)} fields are optional: a small model tends to fill them "
                    "anyway (inventing values) rather than leave them null; say in each description when "
                    f"to leave it empty: {', '.join(optional)}")
    if deepest[0] > DEEP_NESTING:
        yield SpecWarning(
            "deep_nesting", deepest[1],
            f"objects and lists nest {deepest[0]} deep (over {DEEP_NESTING}): small models lose track of "
            "which level they are in; flatten where you can")
    from extract.spec.features import detect_features

    for name in detect_features(schema).get("recursion", ()):
        yield SpecWarning(
            "recursion", name,
            "a definition refers to itself: depth is bounded only by the token budget, and a small model "
            "can nest until it is spent")


def _regex_warnings(pattern: str, path: str) -> Iterator[SpecWarning]:
    from extract.providers.local_model import Constraint

    named = [label for rx, label in _REGEX_CONSTRUCTS if rx.search(pattern)]
    problems = Constraint("regex", pattern).problems()
    if named or problems:
        yield SpecWarning(
            "regex_unsupported", path,
            f"/{pattern}/ uses " + (", ".join(named) if named else "a construct")
            + " that a constrained decoder cannot honour"
            + (f" (llguidance: {problems[0]})" if problems else "")
            + ("; the local tier decodes the field without it and checks it after, as the remote tiers do"
               if path else "; the local tier refuses it, the remote tiers only check it after the fact"))


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(settings: Settings) -> Any:
    """The llguidance tokenizer of the configured model: a loaded model's when one is in the
    registry, else read from the GGUF with ``vocab_only`` (no weights loaded)."""
    from extract.providers import local_model

    for model in local_model.loaded_models():
        tok = getattr(model, "llg_tokenizer", None)
        if tok is not None:
            return tok
    if settings.backend != "llamacpp":
        return getattr(local_model.load_local_model(settings), "llg_tokenizer", None)
    path = str(settings.model_path or local_model.embedded_model_path())
    if path not in _TOKENIZERS:
        import llama_cpp
        import llguidance.llamacpp
        from llama_cpp._utils import suppress_stdout_stderr

        # Even with verbose=False llama.cpp warns on stderr about the context of a vocab-only
        # load (n_ctx_train is 0): noise for a command whose stdout is the report.
        with suppress_stdout_stderr(disable=False):
            llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        _TOKENIZERS[path] = (llm, llguidance.llamacpp.lltokenizer_from_vocab(vocab))
    return _TOKENIZERS[path][1]


def _compile_timing(spec: Spec, text: str, settings: Settings) -> CompileTiming:
    """Cold: translate the constraint, build a matcher and compute the first token mask,
    uncached (llguidance builds its lexer lazily, so the first mask is part of the compile).
    Warm: the median of three more matcher + first-mask builds from the translated grammar,
    which is what each later extraction with the same spec pays before its first token."""
    import llguidance
    import llguidance.numpy as llg_np

    from extract.tiers.local import LocalTier

    constraint = LocalTier(settings).grammar_for(spec, text)
    try:
        tokenizer = _tokenizer(settings)
    except ConfigError as exc:
        return CompileTiming(error=str(exc))
    if tokenizer is None:
        return CompileTiming(error="the local model exposes no llguidance tokenizer")
    translators: dict[str, Callable[[str], str]] = {
        "json_schema": llguidance.LLMatcher.grammar_from_json_schema,
        "regex": llguidance.LLMatcher.grammar_from_regex,
        "lark": llguidance.LLMatcher.grammar_from_lark,
    }
    bitmask = llg_np.allocate_token_bitmask(1, tokenizer.vocab_size)

    def first_mask(grammar: str) -> str | None:
        matcher = llguidance.LLMatcher(tokenizer, grammar)
        if matcher.is_error():
            return str(matcher.get_error())
        llg_np.fill_next_token_bitmask(matcher, bitmask, 0)
        return str(matcher.get_error()) if matcher.is_error() else None

    started = time.perf_counter()
    try:
        grammar = translators[constraint.kind](constraint.text)
        error = first_mask(grammar)
    except (ValueError, RuntimeError) as exc:
        return CompileTiming(error=str(exc))
    cold = time.perf_counter() - started
    if error is not None:
        return CompileTiming(error=error)
    warm = []
    for _ in range(3):
        started = time.perf_counter()
        first_mask(grammar)
        warm.append(time.perf_counter() - started)
    return CompileTiming(cold_s=cold, warm_s=statistics.median(warm))
