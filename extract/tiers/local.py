"""The local tier: constrained decoding on a local model, valid by construction.

JSON specs decode under the spec's schema tightened by ``local_constraint`` (closed objects,
compact whitespace, bounded strings and lists); regular expressions decode under the regex
itself, and Lark grammars under the grammar (a CFG has no length bound, so the token budget
bounds it and a cut is recorded as ``truncated``). llguidance compiles all three; a spec it
cannot compile raises ``UnsupportedSchema`` naming the keyword, before any decoding.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from extract.errors import ConfigError, UnsupportedSchema
from extract.providers.batch_engine import batch_engine
from extract.providers.local_model import Constraint, LocalModel, embedded_model_path, file_digest, load_local_model
from extract.settings import Settings
from extract.spec import Spec, ensure_supported, local_constraint
from extract.spec.compile import checked_after
from extract.spec.enforceable import UNENFORCED_KEYS
from extract.spec.grammar import object_lark
from extract.spec.prompt import Example, build_messages, prompt_version, shared_prefix
from extract.spec.span_copy import CopySetting, copied_regex, copy_paths, copy_setting
from extract.spec.span_guard import SpanGuard
from extract.spec.span_order import ordered_fields, ordered_lark, wants_order
from extract.spec.span_select import ADJUSTED_MARGIN, Choice, decide, pin_constraint, pointer, queries_for
from extract.tiers.base import MIN_OUTPUT_TOKENS, Spend, Task, output_token_limit, prompt_fits
from extract.types import Attempt, SpanQuery, Usage
from extract.validate import check
from extract.validate.grounding import token_confidences

__all__ = ["LocalTier"]

# Context needed past the prompt to score a field's spans (its key and one span's tokens).
_SCORE_ROOM = 96


# Writing an instance from no document (Settings.generate), the logits of a closing ``}``/``]``
# are raised by this much wherever the grammar allows the object or list to end: a small model
# otherwise writes every optional key and fills each list to its bound, and the token limit
# cuts the JSON (SchemaStore, benchmarks/results/schemastore-local-*). Tuning draw (SchemaStore
# --sample 50 --seed 1, 256 tokens), valid as generated: 0.46 without a bias, 0.68 at 2, 0.74 at
# 4, 0.80 at 8; but at 8 22 of the 50 answers were an empty {} or [] (0 at 4): "the smallest
# instance" taken literally, no longer an example anyone could use.
GENERATE_CLOSE_BIAS = 4.0


def _require_all(constraint: str) -> str:
    """The JSON Schema text with every top-level property required (nullable ones may be null)."""
    schema = json.loads(constraint)
    if isinstance(schema.get("properties"), dict):
        schema["required"] = list(schema["properties"])
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)

# llguidance names the keyword it refuses; map it back onto our feature names (the keywords
# the constraint leaves to the check after decoding, and those it keeps and may still refuse).
_KEYWORD_FEATURES = {
    **UNENFORCED_KEYS,
    "multipleOf": "multiple_of",
    "patternProperties": "pattern_properties",
    "format": "format_other",
    "$ref": "ref",
}


def _feature_from_error(message: str, default: str) -> str:
    for key, feature in _KEYWORD_FEATURES.items():
        if re.search(rf"[\"'`]{re.escape(key)}[\"'`]", message):
            return feature
    return default


class LocalTier:
    """Outlines-compiled llguidance constraints on the embedded (or configured) model."""

    name = kind = "local"
    remote = False
    endpoint_name = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._copy: dict[str, CopySetting] = {}

    def unavailable(self) -> str | None:
        return None

    def output_tokens(self, spec: Spec, text: str, room: int | None = None) -> int:
        """The output-token limit of one call on ``text``: the longest instance of the JSON
        constraint for this input (as ``grammar_for`` builds it; an ordered span grammar admits
        a subset of those), else 256; within ``room`` (default: the whole context)."""
        constraint: str | None = None
        if spec.is_json and "grammar_field" not in spec.features:
            constraint = local_constraint(
                spec, text, copy_from_input=self.copy_setting(spec), bounds=self.settings.bound_strings,
                shapes=self.settings.infer_shapes, generate=self.settings.generate)
        return output_token_limit(self.settings, constraint, self.settings.n_ctx if room is None else room)

    def spend(self, spec: Spec, text: str) -> Spend:
        return Spend(self.output_tokens(spec, text))

    async def identity(self) -> list[Any]:
        path = self.settings.model_path or embedded_model_path()
        return [self.name, self.settings.backend,
                file_digest(path, self.settings.digest_store()) if path.exists() else str(path)]

    def grammar_for(self, spec: Spec, text: str, all_keys: bool = False) -> Constraint:
        """The constraint for ``spec`` on ``text``; ``all_keys`` makes every top-level key
        of a JSON object appear, in schema order (null where absent)."""
        if spec.kind == "regex":
            assert spec.pattern is not None
            # Span-copy for a regex: one of the text's pieces the pattern matches, when it has any.
            copied = copied_regex(spec.pattern, text) if self.copy_setting(spec) else None
            return Constraint("regex", copied or spec.pattern)
        if spec.kind == "grammar":
            assert spec.grammar is not None
            return Constraint("lark", spec.grammar.llguidance_text())
        copy = self.copy_setting(spec)
        schema = local_constraint(
            spec, text, copy_from_input=copy, bounds=self.settings.bound_strings, shapes=self.settings.infer_shapes,
            generate=self.settings.generate)
        if "grammar_field" in spec.features:
            # A string field under a Lark grammar: one Lark grammar for the whole object.
            return Constraint("lark", object_lark(schema))
        if wants_order(spec.schema, self.settings.copy_in_order, copy):
            # Copied fields in input order: a per-input Lark grammar (None: not expressible).
            fields = ordered_fields(spec.schema or {}, copy)
            ordered = ordered_lark(schema, text, fields, all_keys=all_keys)
            if ordered is not None:
                return Constraint("lark", ordered)
        if all_keys:
            schema = _require_all(schema)
        return Constraint("json_schema", schema)

    def copy_setting(self, spec: Spec) -> CopySetting:
        """Span-copy as this tier decodes ``spec`` (``span_copy.copy_setting``: the setting,
        else the schema's marks, else every plain string of an unmarked schema; never when
        generating), read once per spec: it is asked several times an attempt."""
        if spec.digest not in self._copy:
            self._copy[spec.digest] = copy_setting(spec, self.settings.copy_from_input, self.settings.generate)
        return self._copy[spec.digest]

    def guard_for(self, spec: Spec, text: str) -> SpanGuard | None:
        """The span-reuse guard for this input: None unless span-copy constrains some string."""
        if self.settings.span_reuse == "allow" or not spec.is_json or spec.schema is None:
            return None
        paths = copy_paths(spec.schema, self.copy_setting(spec))
        return SpanGuard(text, paths, self.settings.span_reuse) if paths else None

    def _all_keys(self, spec: Spec, examples: Sequence[Example]) -> bool:
        """Whether every key is written: as set, else only when no worked example is shown.

        Zero-shot, the 135M model skips straight to the last keys of an all-optional object
        and fills few fields; made to answer each key in turn, with ``null`` discounted so one
        null does not start a run of them, it fills the fields (benchmarks/ablation.py,
        ``copy`` against ``copy-optkeys``). With examples it imitates their answers, which
        leave absent fields out.
        """
        if not spec.is_json or spec.schema is None or spec.schema.get("type") != "object":
            return False
        if self.settings.all_keys is not None:
            return self.settings.all_keys
        # Generating, every optional key written is length the token limit may cut.
        return not examples and not self.settings.generate

    def selects_spans(self, spec: Spec, examples: Sequence[Example], model: LocalModel) -> bool:
        """Whether this attempt chooses copied values by scored span selection (``span_select``).

        'auto' keeps it to schemas with no span-copy marks, zero-shot: there it beat greedy
        decoding on every dataset of benchmarks/zero_shot.py, while a schema written with marks
        and patterns (schemas/address.py) was tuned for the greedy decoder, and with worked
        examples the model imitates them better than it answers one field at a time.
        """
        mode = self.settings.span_select
        if mode == "greedy" or not spec.is_json or spec.schema is None or "grammar_field" in spec.features:
            return False
        if not hasattr(model, "score_spans") or self.settings.decoder != "fast":
            return False
        copy = self.copy_setting(spec)
        if wants_order(spec.schema, self.settings.copy_in_order, copy):
            return False
        if mode == "auto":
            return copy == "auto" and not examples
        return bool(copy_paths(spec.schema, copy))

    def span_queries(self, spec: Spec, text: str, trim_edges: bool = True) -> tuple[dict[str, Any], list[SpanQuery]]:
        """The constraint scored span selection starts from, and the fields it asks about.

        Its copied strings may shed what encloses them (``trim_edges``): asked for a year, the
        model writes ``"2014"``, not ``"(2014)"``, and a town at the end of a question is
        ``"Tenino"``, not ``"Tenino?"``. Without those forms the only candidates were ones the
        model scores far below null (benchmarks/span_select_tune.py measures both).
        """
        constraint = json.loads(local_constraint(
            spec, text, copy_from_input=self.copy_setting(spec), bounds=self.settings.bound_strings,
            shapes=self.settings.infer_shapes, generate=self.settings.generate, trim_edges=trim_edges))
        return constraint, queries_for(constraint, text, trim_edges=trim_edges)

    def _select(self, model: Any, spec: Spec, text: str, prompt: str, prefix: str, all_keys: bool,
                save: bool) -> tuple[Constraint, dict[tuple[str, ...], Choice], int] | None:
        """Score the copied fields' spans, decide them jointly and pin them in the constraint;
        None when no field qualifies (the attempt then decodes as usual). Runs on the model's
        thread."""
        constraint, queries = self.span_queries(spec, text)
        if not queries or model.count_tokens(prompt) + _SCORE_ROOM > model.n_ctx:
            return None  # nothing to score, or no room past the prompt to score spans in
        bias = self.settings.span_select_null_bias
        bonus = self.settings.span_select_length_bonus
        # A length bonus can lift a span the field's own score put below its null or far below
        # its best: follow those further before giving them up.
        # Without a bonus: score_spans' own margin, and spans followed down to null + bias.
        pruning = {"margin": ADJUSTED_MARGIN, "null_bias": bias - ADJUSTED_MARGIN} if bonus else {"null_bias": bias}
        scores, _, evaluated = model.score_spans(prompt, queries, prefix, save_prefix=save, **pruning)
        choices = decide(queries, scores, text, bias, length_bonus=bonus)
        pinned = json.dumps(pin_constraint(constraint, choices), separators=(",", ":"), ensure_ascii=False)
        return Constraint("json_schema", _require_all(pinned) if all_keys else pinned), choices, evaluated

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
        generate = self.settings.generate
        prompt = model.render(build_messages(spec, text, examples, generate=generate))
        room = model.n_ctx - model.count_tokens(prompt)
        if room >= MIN_OUTPUT_TOKENS:
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
            p = model.render(build_messages(spec, text[:mid], examples, generate=generate))
            if prompt_fits(model.count_tokens(p), model.n_ctx, self.settings):
                lo = mid
            else:
                hi = mid - 1
        if lo == 0:
            raise ConfigError(f"even an empty text leaves no room in the context of {model.n_ctx}")
        cut = text[:lo]
        return model.render(build_messages(spec, cut, examples, generate=generate)), cut, True

    async def attempts(self, task: Task) -> list[Attempt]:
        spec = task.spec
        model = await asyncio.to_thread(load_local_model, self.settings)
        prompt, text, cut = await asyncio.to_thread(self._fit, model, spec, task.text, task.examples)
        all_keys = self._all_keys(spec, task.examples)
        budget = self.output_tokens(spec, text, model.n_ctx - model.count_tokens(prompt))
        penalty = self.settings.null_penalty if all_keys else 0.0
        close = GENERATE_CLOSE_BIAS if self.settings.generate and spec.is_json else 0.0
        relaxed = checked_after(spec) if spec.is_json else ()
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        prefix = shared_prefix(model.render, spec, task.examples, generate=self.settings.generate)
        if not prompt.startswith(prefix):
            prefix = ""  # an example order this prompt does not follow: no shared prefix to reuse
        save = not any(ex.scope == "group" for ex in task.examples)
        selected = None
        if self.selects_spans(spec, task.examples, model):
            selected = await loop.run_in_executor(
                model.executor, self._select, model, spec, text, prompt, prefix, all_keys, save)
        scored_tokens = 0
        if selected is not None:  # the pinned constraint replaces the free one
            grammar, choices, scored_tokens = selected
        else:
            grammar = self.grammar_for(spec, text, all_keys)
        guard = self.guard_for(spec, text) if selected is None else None
        engine = batch_engine(model, self.settings)
        if engine is not None:  # decoded in one batch with the other extractions in flight
            gen = await engine.generate(prompt, grammar, budget, penalty, prefix, guard, close_bias=close)
        else:
            # The listener hears from the decoding thread; it answers on this loop.
            hear = task.on_text
            on_text: Callable[[str], None] | None = None
            if hear is not None:
                def on_text(text: str) -> None:
                    loop.call_soon_threadsafe(hear, text)
            gen = await loop.run_in_executor(
                model.executor, model.generate, prompt, grammar, budget, penalty, prefix, guard, on_text, save, close)
        truncated = gen.finish_reason == "length"
        checked = check(gen.text, spec, truncated=truncated)
        error = checked.error
        confidence = token_confidences(gen.text, gen.token_ends, gen.token_logprobs, spec.is_json)
        if selected is not None and confidence is not None:
            # A pinned value's tokens were forced; its probability is the selection's.
            confidence.update({pointer(path): choice.confidence for path, choice in choices.items()})
        return [
            Attempt(
                tier=self.name,
                model=model.info,
                prompt_version=prompt_version(self.settings.generate and spec.is_json),
                raw=gen.text,
                value=checked.value if error is None else None,
                error=error,
                usage=Usage.of(gen.input_tokens + scored_tokens, gen.output_tokens),
                latency_s=time.perf_counter() - started,
                repaired=checked.repaired,
                repairs=checked.repairs,
                truncated_input=cut or task.truncated_input,
                finish_reason=gen.finish_reason,
                meta={
                    "decoder": self.settings.decoder if model.info.backend == "llamacpp" else "outlines",
                    "max_tokens": budget,
                    "forced_tokens": gen.forced_tokens,
                    "prefix_kv": gen.prefix_source,
                    # Keywords decoded without enforcement and checked after (the chain's
                    # repair tier reasks a failure with the validator's errors).
                    **({"checked_after": sorted({f for f, _ in relaxed})} if relaxed else {}),
                    **({"all_keys": True, "null_penalty": penalty} if all_keys else {}),
                    **({"generate": True, "close_bias": close} if self.settings.generate else {}),
                    **({"span_reuse": self.settings.span_reuse} if guard is not None else {}),
                    # Scored span selection: fields decided, tokens evaluated to score them.
                    **({"span_select": {"fields": len(choices), "scored_tokens": scored_tokens,
                                        **({"length_bonus": self.settings.span_select_length_bonus}
                                           if self.settings.span_select_length_bonus else {})}}
                       if selected is not None else {}),
                    "input_chars": len(text),
                    **({"confidence": confidence} if confidence and error is None and not checked.repaired else {}),
                    **({"original_chars": len(task.text)} if cut else {}),
                },
            )
        ]

