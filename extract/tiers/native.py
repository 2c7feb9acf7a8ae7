"""The native tier: one call using the endpoint's own structured-output mode.

The mode comes from the endpoint's capability ladder (``json_schema`` strict ->
``json_object`` + schema -> ``json_object`` -> prompt only), learnt by being refused and
remembered for the process. A refused mode steps down within the same attempt and is
recorded in ``Attempt.meta["rejected_modes"]``; it is not an extraction failure. The schema
sent is the spec's own, closed (``additionalProperties: false``) and with bounded strings
(``local_constraint``), because an open schema lets a small model wander into extra keys
and an unbounded string lets it repeat a word until the token limit.

Grammar and regex specs climb a second ladder (``GRAMMAR_LADDER``): the server's own grammar
field where the endpoint enforces one — llama.cpp's ``grammar`` with the spec converted to
GBNF (``extract.spec.gbnf``), vLLM's ``structured_outputs`` with the Lark text or the regex —
else plain text (mode ``prompt``). Servers ignore fields they do not know, so each rung is
credited per endpoint only after a tiny probe shows it enforced (``probe_grammar_mode``,
recorded in ``meta["probes"]`` of the attempt that paid for it); a refused or ignored rung is
remembered like a refused JSON mode. A spec the rung's language cannot express (indirect left
recursion, lookaround, backreferences...) skips that rung with the reason in
``meta["rejected_modes"]``: never a silently unconstrained request. Whatever the rung, the
answer is parsed with lark (or fully matched) and, on a failure, asked again with the error
(line, column, expected tokens, the offending text), at most ``grammar_max_reasks`` times;
every call is its own Attempt.

A model with grammar fields (``Annotated[str, Grammar]``), on an endpoint whose ``gbnf`` rung
is enforced, is sent as one GBNF (``object_gbnf``) instead of ``response_format``: the JSON
and each top-level field's grammar together. Elsewhere the field is validated after, as before.

Span-copy (``extract.spec.span_copy``) follows the local tier's rule (``copy_setting``: the
setting, else the schema's marks, else every plain string of an unmarked schema that does not
ask for a computed value), but only on the ``json_object`` + schema rung. That rung is
llama.cpp's family: its server turns the schema into a grammar and enforces ``enum`` and
``$ref``/``$defs`` token by token, so a value can only be one of the input's spans, which is
what raised zero-shot F1 locally. The strict ``json_schema`` rung gets the free strings: OpenAI
documents caps on enum values per schema (hundreds to about a thousand, and a total length)
far below a citation's ~800 spans, and a refused schema would be read as a refused *mode* and
step the endpoint down the ladder for good; servers that enforce strict schemas by grammar
(vLLM) were not measured here. A span list too large for the server (``SERVER_MAX_SPANS``
values, ``SERVER_MAX_SCHEMA_BYTES``) also falls back to the free strings, the reason in
``meta["span_copy_off"]``: llama.cpp builds one grammar alternative per value, at about 1 ms
each per request (measured with the embedded model on 2 cores). The answer is validated as
before either way; ``meta["span_copy"]`` says when spans were sent.
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

from extract.errors import ConfigError, ProviderError, UnsupportedSchema
from extract.providers.openai_compat import (
    Connection,
    Endpoint,
    GrammarMode,
    Mode,
    gbnf_refusal,
    grammar_body_for,
    is_mode_rejection,
    known_endpoint_state,
    pending_grammar_probes,
    probe_grammar_mode,
    response_format_for,
    server_safe_schema,
)
from extract.spec import Spec, local_constraint
from extract.spec.gbnf import grammar_to_gbnf, object_gbnf, regex_to_gbnf
from extract.spec.prompt import build_messages, prompt_version
from extract.spec.span_copy import copied_regex, copy_paths, copy_setting, span_alternatives
from extract.tiers.base import Spend, Task
from extract.tiers.remote import EndpointTier, closed_schema, response_confidences, schema_name, usage_of
from extract.types import Attempt, AttemptError, ModelInfo, Usage
from extract.validate import Checked, check

__all__ = ["SERVER_MAX_SCHEMA_BYTES", "SERVER_MAX_SPANS", "NativeTier", "grammar_reask", "regex_reask"]

# The most span values (over all span lists) one request carries, and the largest schema sent
# with them. llama-cpp-python's server spent about 1 ms per value building and running the
# grammar (measured, embedded model, 1 thread: +1.2 s at 1,600 values, +3 s at 3,200, ~8 s
# at 4,000), and a gateway may cap request bodies (nginx's default is 1 MiB); past either,
# the free strings are sent. A citation (~40 words) has ~800 spans; an address ~100.
SERVER_MAX_SPANS = 2000
SERVER_MAX_SCHEMA_BYTES = 256 * 1024

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


def regex_reask(spec: Spec, raw: str | None, error: AttemptError) -> str:
    """The follow-up after an answer that does not fully match the regex: the pattern itself
    (it is the whole specification) and what came back."""
    lines = [f"Your answer {raw!r} does not fully match the regular expression /{spec.pattern}/."]
    if error.type == "truncated":
        lines.append("The answer was cut at the token limit: write a shorter one.")
    lines.append("Answer again with only text that matches it in full, nothing before or after.")
    return "\n".join(lines)


class NativeTier(EndpointTier):
    """An OpenAI-compatible endpoint's structured mode, one call per extraction."""

    kind = "native"

    def spend(self, spec: Spec, text: str) -> Spend:
        # A grammar or regex spec is asked again with each parse error or mismatch, up to
        # grammar_max_reasks times. The grammar ladder's probes are calls too: one per rung
        # this endpoint has not settled yet (a model with grammar fields probes ``gbnf``).
        reasks = self.settings.grammar_max_reasks if spec.kind in ("grammar", "regex") else 0
        probes = 0
        if spec.kind in ("grammar", "regex") or "grammar_field" in spec.features:
            try:
                state = known_endpoint_state(Endpoint.from_settings(self.settings, self.endpoint_name))
            except ConfigError:
                state = None
            probes = pending_grammar_probes(state)
            if spec.kind not in ("grammar", "regex"):
                probes = min(probes, 1)  # only the gbnf rung carries a combined grammar
        return Spend(self.output_tokens(spec, text), max_calls=1 + reasks + probes)

    async def attempts(self, task: Task) -> list[Attempt]:
        endpoint = Endpoint.from_settings(self.settings, self.endpoint_name)
        spec = task.spec
        if spec.kind in ("grammar", "regex"):
            return await self._grammar_attempts(task, endpoint)
        # The free strings: what every rung but json_object + schema is sent (module docstring).
        schema = closed_schema(spec, task.text, copy_from_input=False) if spec.is_json else None
        messages = build_messages(spec, task.text, task.examples, generate=self.settings.generate)
        budget = self.output_tokens(spec, task.text)
        rejected: list[dict[str, str]] = []
        meta: dict[str, Any] = {"endpoint": endpoint.label, "max_tokens": budget}
        started = time.perf_counter()
        model_name: str | None = endpoint.model
        asked: dict[str, Any] = {}
        async with Connection(endpoint, task.deadline) as conn:
            try:
                model_name = await conn.served_model()
                call_started = time.perf_counter()
                response = None
                if schema is not None and "grammar_field" in spec.features:
                    response = await self._combined_call(conn, task, model_name, messages, budget, meta, rejected)
                while response is None:
                    mode: Mode = conn.state.ladder.current() if schema is not None else "prompt"
                    meta["mode"] = mode
                    sent = schema
                    if schema is not None:
                        sent = self.sent_schema(spec, task.text, mode, meta) or schema
                    if mode == "json_object_schema" and sent is not None:
                        sent, widened = server_safe_schema(sent)
                        if widened:
                            meta["widened_for_server"] = widened
                        if sent is None:  # e.g. a pattern repeating over 1,000 times: one rule each
                            meta["schema_dropped"] = "llama.cpp's grammar parser refuses the converted schema: " \
                                "sent json_object without it"
                    fmt = (response_format_for(mode, sent, schema_name(spec)) if sent is not None
                           else response_format_for("json_object", {}, schema_name(spec))) if schema else None
                    call_started = time.perf_counter()
                    asked = conn.logprobs_fields(self.settings.remote_logprobs)
                    # Streamed only when someone reads the answer as it is written.
                    send = conn.chat if task.on_text is None else partial(conn.chat_streamed, task.on_text)
                    if task.on_text is not None:
                        meta["streamed"] = True
                    try:
                        response = await send(
                            model=model_name,
                            messages=messages,
                            max_tokens=budget,
                            temperature=0,
                            **({"response_format": fmt} if fmt is not None else {}),
                            **asked,
                        )
                    except ProviderError as exc:
                        if conn.logprobs_refused(exc, bool(asked)):
                            meta["logprobs_refused"] = str(exc)
                            continue  # the same mode again, without log-probabilities
                        # A refusal of a mode this endpoint has already answered in is a
                        # fault of the moment (a flaky gateway's 400), not a missing ability.
                        confirmed = conn.state.ladder.confirmed == mode
                        if mode != "prompt" and is_mode_rejection(exc) and not confirmed:
                            conn.state.ladder.reject(mode, str(exc))
                            rejected.append({"mode": mode, "reason": str(exc)})
                            continue
                        raise
                    conn.state.ladder.confirm(mode)
            except ProviderError as exc:
                return [self._failed(exc, model_name, started, meta, rejected, conn)]
            latency = time.perf_counter() - call_started
        choice = response.choices[0]
        raw = choice.message.content
        finish = choice.finish_reason
        checked = self.checked(raw, task, finish)
        logprobs = conn.logprobs_answered(choice) if asked else False
        confidence = response_confidences(choice, raw, spec.is_json) if logprobs and not checked.repaired else {}
        answered = self._answered(task, response, model_name, checked, latency, {
            **meta,
            **({"confidence": confidence} if confidence else {}),
            **({"usage_estimated": True} if getattr(response, "usage_estimated", False) else {}),
            "http_tries": conn.http_tries,
            **({"transport_errors": conn.transport_errors} if conn.transport_errors else {}),
            **({"rejected_modes": rejected} if rejected else {}),
            "wall_s": time.perf_counter() - started,
        })
        return [self._with_probe_usage(answered)]

    def sent_schema(self, spec: Spec, text: str, mode: Mode,
                    meta: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The span-copied schema this tier sends on ``mode`` for ``text``; None when the free
        strings are sent instead (span-copy off for this spec, a rung that does not take span
        lists, or lists too large for the server). ``meta`` gets ``span_copy`` (fields and
        span values sent) or ``span_copy_off`` (why not, when span-copy was asked for)."""
        if meta is not None:
            meta.pop("span_copy", None)  # a rung stepped down from may have set them
            meta.pop("span_copy_off", None)
        if not spec.is_json or spec.schema is None:
            return None
        copy = copy_setting(spec, self.settings.copy_from_input, self.settings.generate)
        paths = copy_paths(spec.schema, copy)
        if not paths:
            return None
        off = None
        copied: dict[str, Any] | None = None
        spans = 0
        if mode != "json_object_schema":
            off = f"not sent on the {mode} rung (only json_object + schema takes span lists)"
        else:
            copied = closed_schema(spec, text, copy_from_input=copy, shapes=self.settings.infer_shapes)
            spans = span_alternatives(copied)
            size = len(json.dumps(copied, ensure_ascii=False).encode("utf-8"))
            if spans == 0:
                off = "no span of the text fits"
            elif spans > SERVER_MAX_SPANS:
                off = f"{spans} span values, over the server limit of {SERVER_MAX_SPANS}"
            elif size > SERVER_MAX_SCHEMA_BYTES:
                off = f"a {size}-byte schema, over the server limit of {SERVER_MAX_SCHEMA_BYTES}"
        if off is not None:
            if meta is not None:
                meta["span_copy_off"] = off
            return None
        if meta is not None:
            meta["span_copy"] = {"fields": len(paths), "spans": spans}
        return copied

    async def _combined_call(self, conn: Connection, task: Task, model_name: str, messages: list[dict[str, str]],
                             budget: int, meta: dict[str, Any], rejected: list[dict[str, str]]) -> Any:
        """A model with grammar fields on an endpoint that enforces llama.cpp's ``grammar``
        field: one GBNF for the whole object (``object_gbnf``: the JSON as llama-cpp-python
        writes it, each grammar field's own grammar between its quotes), instead of
        ``response_format``. None when the spec cannot be combined or the endpoint has no
        such field: the JSON ladder then runs as usual and lark checks the field after."""
        ladder = conn.state.grammar_ladder
        if ladder.current() != "gbnf":
            return None
        try:
            gbnf = object_gbnf(local_constraint(task.spec, task.text))
            refusal = gbnf_refusal(gbnf)
            if refusal is not None:
                raise UnsupportedSchema("grammar_field", self.kind, detail=f"the combined GBNF: {refusal}")
        except UnsupportedSchema as exc:
            rejected.append({"mode": "gbnf", "reason": f"not convertible: {exc}"})
            return None
        if "gbnf" not in conn.state.grammar_enforced:
            probe = await probe_grammar_mode(conn, "gbnf", model_name)
            meta["probes"] = [probe]
            if not probe["enforced"]:
                rejected.append({"mode": "gbnf", "reason": str(probe["reason"])})
                return None
        meta["mode"] = "gbnf"
        try:
            return await conn.chat(model=model_name, messages=messages, max_tokens=budget, temperature=0,
                                   extra_body=grammar_body_for("gbnf", gbnf=gbnf))
        except ProviderError as exc:
            if not is_mode_rejection(exc):
                raise
            rejected.append({"mode": "gbnf", "reason": str(exc)})
            return None

    @staticmethod
    def _with_probe_usage(attempt: Attempt) -> Attempt:
        """The probes' tokens were spent for this attempt: in its usage (so budgets and reports
        count them), itemised in ``meta["probes"]``."""
        for probe in attempt.meta.get("probes", []):
            used = probe.get("usage", {})
            used_in, used_out = int(used.get("input_tokens", 0)), int(used.get("output_tokens", 0))
            attempt.usage = attempt.usage + Usage(input_tokens=used_in, output_tokens=used_out,
                                                  total_tokens=used_in + used_out)
        return attempt

    def _answered(self, task: Task, response: Any, model_name: str | None, checked: Checked,
                  latency: float, meta: dict[str, Any]) -> Attempt:
        """The Attempt for one answered call, JSON or grammar: one place decides its fields."""
        choice = response.choices[0]
        return Attempt(
            tier=self.name,
            model=ModelInfo(name=response.model or model_name or "", backend="openai-compatible"),
            prompt_version=prompt_version(self.settings.generate and task.spec.is_json),
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

    def _pattern(self, spec: Spec, text: str) -> str:
        """A regex spec's pattern as this tier sends it: span-copied for ``text`` by the local
        tier's rule (``span_copy.copy_setting``, ``copied_regex``) up to ``SERVER_MAX_SPANS``
        matches, else as written."""
        pattern = str(spec.pattern)
        if copy_setting(spec, self.settings.copy_from_input, self.settings.generate):
            pattern = copied_regex(pattern, text, most=SERVER_MAX_SPANS) or pattern
        return pattern

    def _grammar_body(self, spec: Spec, mode: GrammarMode, text: str = "") -> dict[str, Any]:
        """The request fields that carry the spec's constraint on ``mode`` for ``text``; raises
        ``UnsupportedSchema`` when this spec cannot be said in that rung's language."""
        pattern = self._pattern(spec, text) if spec.kind == "regex" else ""
        if mode == "gbnf":
            gbnf = grammar_to_gbnf(spec.grammar) if spec.grammar is not None else regex_to_gbnf(pattern)
            refusal = gbnf_refusal(gbnf)
            if refusal is not None:  # never sent: llama-cpp-python's server would crash on it
                raise UnsupportedSchema("gbnf", self.kind, path=spec.name, detail=f"the converted GBNF: {refusal}")
            return grammar_body_for(mode, gbnf=gbnf)
        if mode == "structured_outputs":
            if spec.grammar is not None:
                return grammar_body_for(mode, lark=spec.grammar.llguidance_text())
            # vLLM's regex engines (xgrammar, llguidance) have no lookaround or backreference
            # either: the same refusal as for GBNF, before anything is sent.
            regex_to_gbnf(pattern)
            return grammar_body_for(mode, regex=pattern)
        return {}

    async def _grammar_attempts(self, task: Task, endpoint: Endpoint) -> list[Attempt]:
        """Grammar and regex specs: the server's grammar field where the endpoint enforces one
        (llama.cpp's GBNF ``grammar``, vLLM's ``structured_outputs``), else plain text; the
        answer is parsed (lark) or fully matched (regex) either way, and a failure is fed
        back, up to the reask bound. Every call is its own Attempt, its rung in
        ``meta["mode"]``."""
        spec = task.spec
        messages: list[dict[str, str]] = build_messages(spec, task.text)
        budget = self.output_tokens(spec, task.text)
        meta: dict[str, Any] = {"endpoint": endpoint.label, "max_tokens": budget}
        out: list[Attempt] = []
        started = time.perf_counter()
        model_name: str | None = endpoint.model
        rejected: list[dict[str, str]] = []
        probes: list[dict[str, Any]] = []
        skip: set[str] = set()  # rungs this spec cannot use (conversion refused) or the server refused for it
        async with Connection(endpoint, task.deadline) as conn:
            ladder = conn.state.grammar_ladder
            index = 0
            while index <= self.settings.grammar_max_reasks:
                call_meta = {**meta, "grammar_attempt": index + 1}
                if index > 0:
                    call_meta["reask"] = messages[-1]["content"]
                tries_before = conn.http_tries
                call_started = time.perf_counter()
                try:
                    model_name = await conn.served_model()
                    mode = ladder.current(frozenset(skip))
                    body: dict[str, Any] = {}
                    if mode != "prompt":
                        try:
                            body = self._grammar_body(spec, mode, task.text)
                        except UnsupportedSchema as exc:
                            skip.add(mode)
                            rejected.append({"mode": mode, "reason": f"not convertible: {exc}"})
                            continue
                        if mode not in conn.state.grammar_enforced:
                            probe = await probe_grammar_mode(conn, mode, model_name)
                            probes.append(probe)
                            if not probe["enforced"]:
                                rejected.append({"mode": mode, "reason": str(probe["reason"])})
                                continue
                    call_meta["mode"] = mode
                    try:
                        response = await conn.chat(model=model_name, messages=messages, max_tokens=budget,
                                                   temperature=0, **({"extra_body": body} if body else {}))
                    except ProviderError as exc:
                        # The probe passed but this grammar was refused (too big, a construct the
                        # server's parser lacks): this spec steps down, the endpoint keeps the rung.
                        if mode != "prompt" and is_mode_rejection(exc):
                            skip.add(mode)
                            rejected.append({"mode": mode, "reason": str(exc)})
                            continue
                        raise
                    ladder.confirm(mode)
                except ProviderError as exc:
                    failed = self._failed(exc, model_name, call_started, self._extra(call_meta, rejected, probes),
                                          [], conn)
                    failed.meta["http_tries"] = conn.http_tries - tries_before
                    out.append(failed)
                    break
                choice = response.choices[0]
                raw, finish = choice.message.content, choice.finish_reason
                checked = check(raw, spec, truncated=finish == "length")
                answered = self._answered(task, response, model_name, checked, time.perf_counter() - call_started,
                                          {**self._extra(call_meta, rejected, probes),
                                           "http_tries": conn.http_tries - tries_before,
                                           "wall_s": time.perf_counter() - started})
                out.append(self._with_probe_usage(answered))
                rejected, probes = [], []  # recorded once, on the attempt that paid for them
                index += 1
                if checked.error is None:
                    break
                reask = grammar_reask(spec, raw, checked.error) if spec.grammar is not None else \
                    regex_reask(spec, raw, checked.error)
                messages = [*messages, {"role": "assistant", "content": raw or ""},
                            {"role": "user", "content": reask}]
        return out

    @staticmethod
    def _extra(meta: dict[str, Any], rejected: list[dict[str, str]], probes: list[dict[str, Any]]) -> dict[str, Any]:
        return {**meta, **({"rejected_modes": list(rejected)} if rejected else {}),
                **({"probes": list(probes)} if probes else {})}

    def _failed(self, exc: ProviderError, model_name: str | None, started: float, meta: dict[str, Any],
                rejected: list[dict[str, str]], conn: Connection) -> Attempt:
        return self.provider_failure(exc, model_name, time.perf_counter() - started, {
            **meta,
            "http_tries": conn.http_tries,
            **({"transport_errors": conn.transport_errors} if conn.transport_errors else {}),
            **({"rejected_modes": rejected} if rejected else {}),
        })
