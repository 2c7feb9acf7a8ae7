"""The local tier: constrained decoding on a local model, valid by construction.

JSON specs decode under the spec's schema tightened by ``local_constraint`` (closed objects,
compact whitespace, bounded strings and lists); regular expressions decode under the regex
itself, and Lark grammars under the grammar (a CFG has no length bound, so the token budget
bounds it and a cut is recorded as ``truncated``). llguidance compiles all three; a spec it
cannot compile raises ``UnsupportedSchema`` naming the keyword, before any decoding.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence

from extract.errors import ConfigError, UnsupportedSchema
from extract.examples import Example
from extract.providers.local_model import Constraint, LocalModel, load_local_model
from extract.settings import Settings
from extract.spec import Spec, ensure_supported, local_constraint, max_output_chars
from extract.spec.grammar import object_lark
from extract.spec.prompt import PROMPT_VERSION, build_messages
from extract.tiers.base import Task
from extract.types import Attempt, Usage
from extract.validate import check

__all__ = ["LocalTier"]

# llguidance names the keyword it refuses; map it back onto our feature names.
_KEYWORD_FEATURES = {
    "not": "not",
    "if": "conditional",
    "then": "conditional",
    "else": "conditional",
    "dependentRequired": "dependent",
    "dependentSchemas": "dependent",
    "dependencies": "dependent",
    "contains": "contains",
    "minContains": "contains",
    "maxContains": "contains",
    "unevaluatedProperties": "unevaluated",
    "unevaluatedItems": "unevaluated",
    "uniqueItems": "unique_items",
    "multipleOf": "multiple_of",
    "patternProperties": "pattern_properties",
    "propertyNames": "property_names",
    "format": "format_other",
    "$ref": "ref",
}

# The smallest room an answer needs: below this many free tokens, the context is full.
_MIN_OUTPUT_TOKENS = 16


def _feature_from_error(message: str, default: str) -> str:
    for key, feature in _KEYWORD_FEATURES.items():
        if re.search(rf"[\"'`]{re.escape(key)}[\"'`]", message):
            return feature
    return default


class LocalTier:
    """Outlines-compiled llguidance constraints on the embedded (or configured) model."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def unavailable(self) -> str | None:
        return None

    def grammar_for(self, spec: Spec, text: str) -> Constraint:
        if spec.kind == "regex":
            assert spec.pattern is not None
            return Constraint("regex", spec.pattern)
        if spec.kind == "grammar":
            assert spec.grammar is not None
            return Constraint("lark", spec.grammar.llguidance_text())
        schema = local_constraint(
            spec, text, copy_from_input=self.settings.copy_from_input, bounds=self.settings.bound_strings)
        if "grammar_field" in spec.features:
            # A string field under a Lark grammar: one Lark grammar for the whole object.
            return Constraint("lark", object_lark(schema))
        return Constraint("json_schema", schema)

    def check_support(self, spec: Spec) -> None:
        ensure_supported(spec.features, self.name)
        grammar = self.grammar_for(spec, "")
        problems = grammar.problems()
        if problems:
            message = "; ".join(problems)
            if spec.kind == "regex":
                raise UnsupportedSchema(
                    "regex_syntax", self.name,
                    detail=f"llguidance cannot compile /{spec.pattern}/: {message}",
                )
            if spec.kind == "grammar":
                assert spec.grammar is not None
                raise UnsupportedSchema(
                    "grammar_syntax", self.name,
                    detail=f"llguidance cannot compile the grammar {spec.grammar.name!r}: {message}",
                )
            raise UnsupportedSchema(_feature_from_error(message, "json_schema"), self.name, detail=message)

    def _fit(self, model: LocalModel, spec: Spec, text: str,
             examples: Sequence[Example] = ()) -> tuple[str, str, bool]:
        """Render the prompt, cutting the text if allowed; returns (prompt, text, cut)."""
        prompt = model.render(build_messages(spec, text, examples))
        room = model.n_ctx - model.count_tokens(prompt)
        if room >= _MIN_OUTPUT_TOKENS:
            return prompt, text, False
        if not (self.settings.truncate or self.settings.long_text == "truncate"):
            raise ConfigError(
                f"the text does not fit the model's context ({model.n_ctx} tokens, the prompt "
                f"needs {model.n_ctx - room}); shorten it, raise n_ctx, or pass long_text='chunk' or 'truncate' "
                "to cut it (the cut is recorded on the Attempt)"
            )
        lo, hi = 0, len(text)
        while lo < hi:  # the longest prefix that leaves room for an answer
            mid = (lo + hi + 1) // 2
            p = model.render(build_messages(spec, text[:mid], examples))
            if model.n_ctx - model.count_tokens(p) >= max(_MIN_OUTPUT_TOKENS, model.n_ctx // 4):
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            raise ConfigError(f"even an empty text leaves no room in the context of {model.n_ctx}")
        cut = text[:lo]
        return model.render(build_messages(spec, cut, examples)), cut, True

    def _budget(self, grammar: Constraint, model: LocalModel, prompt: str) -> int:
        if self.settings.max_tokens is not None:
            return self.settings.max_tokens
        if grammar.kind == "json_schema":
            bound = max_output_chars(grammar.text) + 8
        else:
            bound = 256
        return max(_MIN_OUTPUT_TOKENS, min(bound, model.n_ctx - model.count_tokens(prompt)))

    async def attempts(self, task: Task) -> list[Attempt]:
        spec = task.spec
        model = await asyncio.to_thread(load_local_model, self.settings)
        prompt, text, cut = await asyncio.to_thread(self._fit, model, spec, task.text, task.examples)
        grammar = self.grammar_for(spec, text)
        budget = self._budget(grammar, model, prompt)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        gen = await loop.run_in_executor(model.executor, model.generate, prompt, grammar, budget)
        truncated = gen.finish_reason == "length"
        checked = check(gen.text, spec, truncated=truncated)
        error = checked.error
        if error is None and truncated:
            # Valid only because the repair closed what the budget cut: not as generated.
            checked.repaired = True
        return [
            Attempt(
                tier=self.name,
                model=model.info,
                prompt_version=PROMPT_VERSION,
                raw=gen.text,
                value=checked.value if error is None else None,
                error=error,
                usage=Usage.of(gen.input_tokens, gen.output_tokens),
                latency_s=time.perf_counter() - started,
                repaired=checked.repaired,
                repairs=checked.repairs,
                truncated_input=cut or task.truncated_input,
                finish_reason=gen.finish_reason,
                meta={
                    "decoder": self.settings.decoder if model.info.backend == "llamacpp" else "outlines",
                    "max_tokens": budget,
                    "forced_tokens": gen.forced_tokens,
                    "input_chars": len(text),
                    **({"original_chars": len(task.text)} if cut else {}),
                },
            )
        ]

