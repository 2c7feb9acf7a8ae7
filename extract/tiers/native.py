"""The native tier: one call using the endpoint's own structured-output mode.

The mode comes from the endpoint's capability ladder (``json_schema`` strict ->
``json_object`` + schema -> ``json_object`` -> prompt only), learnt by being refused and
remembered for the process. A refused mode steps down within the same attempt and is
recorded in ``Attempt.meta["rejected_modes"]``; it is not an extraction failure. The schema
sent is the spec's own, closed (``additionalProperties: false``) and with bounded strings
(``local_constraint``), because an open schema lets a small model wander into extra keys
and an unbounded string lets it repeat a word until the token limit.

A Lark grammar spec has no structured mode on an OpenAI-compatible endpoint: OpenAI has
none, and llama.cpp's ``grammar`` request field takes GBNF, a server extension in another
grammar language (translating Lark to GBNF would be a second, unverified reading of the
grammar). So grammar specs are asked for as plain text (mode ``prompt``), parsed with lark,
and on a parse error asked again with the error (line, column, expected tokens, the
offending text), at most ``grammar_max_reasks`` times; every call is its own Attempt.
"""

from __future__ import annotations

import time
from typing import Any

from extract.errors import ProviderError
from extract.providers.openai_compat import (
    Connection,
    Endpoint,
    Mode,
    is_mode_rejection,
    response_format_for,
)
from extract.spec import Spec
from extract.spec.prompt import PROMPT_VERSION, build_messages
from extract.tiers.base import Spend, Task
from extract.tiers.remote import EndpointTier, closed_schema, response_confidences, schema_name, usage_of
from extract.types import Attempt, AttemptError, ModelInfo
from extract.validate import Checked, check

__all__ = ["NativeTier", "grammar_reask"]

# The reask restates what the language is; a grammar's whole text would crowd the context.
_REASK_ABOUT_CHARS = 600


def grammar_reask(spec: Spec, raw: str | None, error: AttemptError) -> str:
    """The follow-up message after an output that is not a sentence of the grammar: the
    parse error as lark reported it (position, expected tokens, offending text) and the text
    around the position, so the model sees where it left the language."""
    assert spec.grammar is not None
    lines = [f"Your answer is not valid: it {error.message}."]
    detail = error.details[0] if error.details else {}
    line, column = detail.get("line", -1), detail.get("column", -1)
    if raw and isinstance(line, int) and line > 0 and isinstance(column, int) and column > 0:
        text_line = raw.splitlines()[line - 1] if line <= len(raw.splitlines()) else ""
        lines.append(f"Near: {text_line[max(0, column - 30):column + 30]!r} "
                     f"(the error is at column {column}).")
    if error.type == "truncated":
        lines.append("The answer was cut at the token limit: write a shorter one.")
    lines.append(f"Answer again with only {spec.grammar.about(_REASK_ABOUT_CHARS)}")
    return "\n".join(lines)


class NativeTier(EndpointTier):
    """An OpenAI-compatible endpoint's structured mode, one call per extraction."""

    kind = "native"

    def spend(self, spec: Spec, text: str) -> Spend:
        # A grammar spec is asked again with each parse error, up to grammar_max_reasks times.
        reasks = self.settings.grammar_max_reasks if spec.kind == "grammar" else 0
        return Spend(self.output_tokens(spec, text), max_calls=1 + reasks)

    async def attempts(self, task: Task) -> list[Attempt]:
        endpoint = Endpoint.from_settings(self.settings, self.endpoint_name)
        spec = task.spec
        if spec.kind == "grammar":
            return await self._grammar_attempts(task, endpoint)
        schema = closed_schema(spec, task.text) if spec.is_json else None
        messages = build_messages(spec, task.text, task.examples)
        budget = self.output_tokens(spec, task.text)
        rejected: list[dict[str, str]] = []
        meta: dict[str, Any] = {"endpoint": endpoint.label, "max_tokens": budget}
        started = time.perf_counter()
        model_name: str | None = endpoint.model
        async with Connection(endpoint, task.deadline) as conn:
            try:
                model_name = await conn.served_model()
                logprobs = self.settings.remote_logprobs and await conn.logprobs_supported(model_name)
                while True:
                    mode: Mode = conn.state.ladder.current() if schema is not None else "prompt"
                    meta["mode"] = mode
                    fmt = response_format_for(mode, schema, schema_name(spec)) if schema else None
                    call_started = time.perf_counter()
                    try:
                        response = await conn.chat(
                            model=model_name,
                            messages=messages,
                            max_tokens=budget,
                            temperature=0,
                            **({"response_format": fmt} if fmt is not None else {}),
                            **({"logprobs": True} if logprobs else {}),
                        )
                    except ProviderError as exc:
                        # A refusal of a mode this endpoint has already answered in is a
                        # fault of the moment (a flaky gateway's 400), not a missing ability.
                        confirmed = conn.state.ladder.confirmed == mode
                        if mode != "prompt" and is_mode_rejection(exc) and not confirmed:
                            conn.state.ladder.reject(mode, str(exc))
                            rejected.append({"mode": mode, "reason": str(exc)})
                            continue
                        raise
                    conn.state.ladder.confirm(mode)
                    break
            except ProviderError as exc:
                return [self._failed(exc, model_name, started, meta, rejected, conn)]
            latency = time.perf_counter() - call_started
        choice = response.choices[0]
        raw = choice.message.content
        finish = choice.finish_reason
        checked = self.checked(raw, task, finish)
        confidence = response_confidences(choice, raw, spec.is_json) if logprobs and not checked.repaired else {}
        return [self._answered(task, response, model_name, checked, latency, {
            **meta,
            **({"confidence": confidence} if confidence else {}),
            "http_tries": conn.http_tries,
            **({"transport_errors": conn.transport_errors} if conn.transport_errors else {}),
            **({"rejected_modes": rejected} if rejected else {}),
            "wall_s": time.perf_counter() - started,
        })]

    def _answered(self, task: Task, response: Any, model_name: str | None, checked: Checked,
                  latency: float, meta: dict[str, Any]) -> Attempt:
        """The Attempt for one answered call, JSON or grammar: one place decides its fields."""
        choice = response.choices[0]
        return Attempt(
            tier=self.name,
            model=ModelInfo(name=response.model or model_name or "", backend="openai-compatible"),
            prompt_version=PROMPT_VERSION,
            raw=choice.message.content,
            value=checked.value if checked.error is None else None,
            error=checked.error,
            usage=usage_of(response),
            latency_s=latency,
            repaired=checked.repaired,
            repairs=checked.repairs,
            truncated_input=task.truncated_input,
            finish_reason=choice.finish_reason,
            meta=meta,
        )

    async def _grammar_attempts(self, task: Task, endpoint: Endpoint) -> list[Attempt]:
        """Plain text, parsed with lark; a parse error is fed back, up to the reask bound."""
        spec = task.spec
        messages: list[dict[str, str]] = build_messages(spec, task.text)
        budget = self.output_tokens(spec, task.text)
        meta: dict[str, Any] = {"endpoint": endpoint.label, "max_tokens": budget, "mode": "prompt"}
        out: list[Attempt] = []
        started = time.perf_counter()
        model_name: str | None = endpoint.model
        async with Connection(endpoint, task.deadline) as conn:
            for index in range(1 + self.settings.grammar_max_reasks):
                call_meta = {**meta, "grammar_attempt": index + 1}
                if index > 0:
                    call_meta["reask"] = messages[-1]["content"]
                tries_before = conn.http_tries
                call_started = time.perf_counter()
                try:
                    model_name = await conn.served_model()
                    response = await conn.chat(
                        model=model_name, messages=messages, max_tokens=budget, temperature=0
                    )
                except ProviderError as exc:
                    failed = self._failed(exc, model_name, call_started, call_meta, [], conn)
                    failed.meta["http_tries"] = conn.http_tries - tries_before
                    out.append(failed)
                    break
                choice = response.choices[0]
                raw, finish = choice.message.content, choice.finish_reason
                checked = check(raw, spec, truncated=finish == "length")
                out.append(self._answered(task, response, model_name, checked, time.perf_counter() - call_started,
                                          {**call_meta, "http_tries": conn.http_tries - tries_before,
                                           "wall_s": time.perf_counter() - started}))
                if checked.error is None:
                    break
                messages = [*messages, {"role": "assistant", "content": raw or ""},
                            {"role": "user", "content": grammar_reask(spec, raw, checked.error)}]
        return out

    def _failed(self, exc: ProviderError, model_name: str | None, started: float, meta: dict[str, Any],
                rejected: list[dict[str, str]], conn: Connection) -> Attempt:
        return self.provider_failure(exc, model_name, time.perf_counter() - started, {
            **meta,
            "http_tries": conn.http_tries,
            **({"transport_errors": conn.transport_errors} if conn.transport_errors else {}),
            **({"rejected_modes": rejected} if rejected else {}),
        })
