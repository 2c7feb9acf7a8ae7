"""The instructor tier: Instructor's reask loop on the same endpoint, every call accounted for.

Instructor sends the request, validates, and on failure asks again with the validation
error (bounded by ``instructor_max_retries``). Two things make it fit the chain:

- **Its validation is ours.** Instructor is handed a carrier class whose JSON Schema is the
  spec's closed, bounded schema and whose ``model_validate_json`` runs ``extract.validate.
  check``: the reask carries exactly the errors the report will count, a value Instructor
  accepts is one ``check`` accepts, and JSON Schema dict specs work like Pydantic models.
- **Every call is an Attempt.** Instructor's hooks (``completion:kwargs``,
  ``completion:response``, ``completion:error``, ``parse:error``,
  ``completion:last_attempt``) record each call, including the failed ones inside its retry
  loop, with the tokens the server reported and its latency, so ``Result.usage`` is the sum
  the server reported. Instructor mutates ``messages`` in place between retries, so the hook
  deep-copies them.

Transport retries, the breaker and the deadline are the shared ones of
``extract.providers.openai_compat``: Instructor calls ``Connection.chat`` instead of the bare
client. The mode is ``instructor_mode`` (forced tool calls by default; llama.cpp honours only a
forced function and enforces its parameters by grammar); a mode the endpoint refuses steps to
the next one and is remembered for the endpoint.

A whole-output Lark grammar is refused here (``UnsupportedSchema``, feature ``grammar``):
Instructor has no way to carry one, and the native tier already runs the grammar's
parse-and-reask loop on the same endpoint. A grammar *field* inside a model works like any
validated field: its lark parse error is what the reask carries.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from extract.errors import ProviderError, UnsupportedSchema
from extract.providers.openai_compat import (
    Connection,
    Endpoint,
    is_mode_rejection,
    server_safe_schema,
)
from extract.spec import Spec
from extract.spec.prompt import build_messages, prompt_version
from extract.tiers.base import Spend, Task
from extract.tiers.remote import EndpointTier, closed_schema, schema_name, usage_of
from extract.types import Attempt, AttemptError, ModelInfo, Usage
from extract.validate import Checked, check

__all__ = ["INSTRUCTOR_MODES", "InstructorTier"]

# Instructor logs every failed call and exhausted retry loop at ERROR, and with no handler
# configured Python prints those on stderr. Here they are expected outcomes, each recorded
# as an Attempt; a NullHandler keeps them off stderr but still lets them reach any handler
# the application configures.
logging.getLogger("instructor").addHandler(logging.NullHandler())

# Our mode names -> Instructor's, in the order tried when the configured one is refused.
INSTRUCTOR_MODES: dict[str, str] = {
    "tools": "TOOLS",
    "json": "JSON",
    "json_schema": "JSON_SCHEMA",
    "md_json": "MD_JSON",
}
_FALLBACK = ("tools", "json", "md_json")


def _validation_error(title: str, error: AttemptError) -> ValidationError:
    """``check``'s verdict as the pydantic error Instructor catches and feeds back."""
    details = error.details or [{"loc": [], "msg": error.message}]
    lines: list[InitErrorDetails] = [
        InitErrorDetails(
            type=PydanticCustomError(error.type, "{msg}", {"msg": str(d.get("msg", error.message))}),
            loc=tuple(str(p) if not isinstance(p, int) else p for p in d.get("loc", ())),
            input=None,
        )
        for d in details
    ]
    return ValidationError.from_exception_data(title, lines)


@lru_cache(maxsize=256)
def _carrier(spec: Spec, schema_text: str) -> type[BaseModel]:
    """A response model that shows Instructor ``schema`` and validates with ``check``.

    Cached per (spec, schema) because Instructor caches the function schema per class.
    """
    import instructor

    schema = json.loads(schema_text)
    title = str(schema.get("title", spec.name))

    class Carrier(instructor.OpenAISchema):
        model_config = ConfigDict(extra="allow")

        @classmethod
        def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
            return json.loads(schema_text)  # type: ignore[no-any-return]

        @classmethod
        def model_validate_json(cls, json_data: Any, *args: Any, **kwargs: Any) -> Any:
            raw = json_data.decode() if isinstance(json_data, (bytes, bytearray)) else str(json_data)
            checked = check(raw, spec)
            if checked.error is not None:
                raise _validation_error(title, checked.error)
            return cls.model_construct()

    Carrier.__name__ = Carrier.__qualname__ = title
    Carrier.__doc__ = str(schema.get("description") or f"Extract a {spec.name} from the document.")
    return Carrier


@dataclass
class _Call:
    """One request Instructor made, as its hooks saw it."""

    started: float
    messages: list[Any]
    tries_before: int
    response: Any = None
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    http_tries: int = 0
    parse_error: str | None = None
    error: BaseException | None = None


@dataclass
class _Recorder:
    conn: Connection
    calls: list[_Call] = field(default_factory=list)
    last_error: BaseException | None = None

    def on_kwargs(self, *args: Any, **kwargs: Any) -> None:
        # Instructor appends the reask to this very list later: keep what was sent.
        self.calls.append(
            _Call(time.perf_counter(), copy.deepcopy(kwargs.get("messages", [])), self.conn.http_tries)
        )

    def on_response(self, response: Any) -> None:
        call = self.calls[-1]
        call.response = response
        # Read the usage now: right after this hook Instructor overwrites response.usage
        # with its running total over all attempts (instructor 1.17, _accumulate_models).
        call.usage = usage_of(response)
        call.latency_s = time.perf_counter() - call.started
        call.http_tries = self.conn.http_tries - call.tries_before

    def on_error(self, error: BaseException, **kwargs: Any) -> None:
        call = self.calls[-1]
        call.error = error
        call.latency_s = time.perf_counter() - call.started
        call.http_tries = self.conn.http_tries - call.tries_before

    def on_parse_error(self, error: BaseException, **kwargs: Any) -> None:
        self.calls[-1].parse_error = str(error)

    def on_last_attempt(self, error: BaseException, **kwargs: Any) -> None:
        self.last_error = error


def _raw_output(response: Any) -> str | None:
    """What the model wrote: the forced tool call's arguments, else the message text."""
    message = response.choices[0].message
    for call in getattr(message, "tool_calls", None) or []:
        args = call.function.arguments
        return args if isinstance(args, str) else json.dumps(args)
    fc = getattr(message, "function_call", None)
    if fc is not None and fc.arguments is not None:
        return str(fc.arguments)
    content: str | None = message.content
    return content


class InstructorTier(EndpointTier):
    """Instructor on an OpenAI-compatible endpoint, with bounded reasks."""

    kind = "instructor"

    def spend(self, spec: Spec, text: str) -> Spend:
        return Spend(self.output_tokens(spec, text), max_calls=self.settings.instructor_max_retries + 1)

    def check_support(self, spec: Spec) -> None:
        if spec.kind == "grammar":
            # Running our own parse-and-reask loop under Instructor's name would report
            # Instructor for work it did not do, and repeat the native tier's calls.
            raise UnsupportedSchema("grammar", self.kind, detail=(
                "Instructor validates a JSON response against a response model and cannot carry a "
                "Lark grammar; on the same endpoint the native tier asks for plain text, parses it "
                "with lark and reasks with the parse error (grammar fields inside a model work here)"))
        super().check_support(spec)

    def _modes(self, conn: Connection) -> list[str]:
        configured = self.settings.instructor_mode
        order = [configured, *(m for m in _FALLBACK if m != configured)]
        return [m for m in order if m not in conn.state.instructor_rejected]

    async def attempts(self, task: Task) -> list[Attempt]:
        import instructor
        from instructor.core.exceptions import InstructorError

        endpoint = Endpoint.from_settings(self.settings, self.endpoint_name)
        spec = task.spec
        schema = closed_schema(spec, task.text)
        # The llama.cpp server turns a tool's or json_object's schema into GBNF itself, and a
        # quote inside an enum string takes it down (``server_safe_schema``).
        safe, widened = server_safe_schema(schema)
        schema = safe if safe is not None else schema
        schema["title"] = schema_name(spec)
        carrier = _carrier(spec, json.dumps(schema, sort_keys=True))
        budget = self.output_tokens(spec, task.text)
        base_meta: dict[str, Any] = {"endpoint": endpoint.label, "max_tokens": budget,
                                     **({"widened_for_server": widened} if widened else {})}
        attempts: list[Attempt] = []
        started = time.perf_counter()
        async with Connection(endpoint, task.deadline) as conn:
            try:
                model_name = await conn.served_model()
            except ProviderError as exc:
                return [self._provider_failure(exc, None, started, base_meta, conn.http_tries)]
            rejected: list[dict[str, str]] = []
            for mode in self._modes(conn):
                imode = getattr(instructor.Mode, INSTRUCTOR_MODES[mode])
                client = instructor.AsyncInstructor(
                    client=conn.client,
                    create=instructor.patch(create=conn.chat, mode=imode),
                    mode=imode,
                )
                recorder = _Recorder(conn)
                client.on("completion:kwargs", recorder.on_kwargs)
                client.on("completion:response", recorder.on_response)
                client.on("completion:error", recorder.on_error)
                client.on("parse:error", recorder.on_parse_error)
                client.on("completion:last_attempt", recorder.on_last_attempt)
                extra: dict[str, Any] = {}
                if mode == "json":
                    # Instructor sends bare json_object; llama.cpp enforces a schema given here.
                    extra["extra_body"] = {"response_format": {"type": "json_object", "schema": schema}}
                try:
                    await client.create(
                        response_model=carrier,
                        messages=build_messages(spec, task.text, task.examples,  # type: ignore[arg-type]
                                                generate=self.settings.generate),
                        max_retries=self.settings.instructor_max_retries,
                        model=model_name,
                        max_tokens=budget,
                        temperature=0,
                        **extra,
                    )
                except (InstructorError, ProviderError):
                    pass  # every outcome, good or bad, is read from the recorder below
                first = recorder.calls[0] if recorder.calls else None
                refused = (
                    first is not None
                    and first.response is None
                    and isinstance(first.error, ProviderError)
                    and is_mode_rejection(first.error)
                    and mode not in conn.state.instructor_confirmed
                )
                if any(c.response is not None for c in recorder.calls):
                    conn.state.instructor_confirmed.add(mode)
                if refused and len(recorder.calls) == 1:
                    assert first is not None and isinstance(first.error, ProviderError)
                    conn.state.instructor_rejected[mode] = str(first.error)
                    rejected.append({"mode": mode, "reason": str(first.error)})
                    continue
                meta = {**base_meta, "mode": mode, **({"rejected_modes": rejected} if rejected else {})}
                attempts = [
                    self._attempt(i, call, spec, model_name, meta, task)
                    for i, call in enumerate(recorder.calls)
                ]
                if not attempts:
                    err = recorder.last_error
                    perr = err if isinstance(err, ProviderError) else ProviderError(
                        f"endpoint {endpoint.label}: instructor failed before any call "
                        f"({type(err).__name__ if err else 'no error'})",
                        endpoint=endpoint.label,
                    )
                    attempts = [self._provider_failure(perr, model_name, started, meta, conn.http_tries)]
                return attempts
            # Every mode refused.
            perr = ProviderError(
                f"endpoint {endpoint.label}: refused every instructor mode "
                f"({', '.join(conn.state.instructor_rejected)})",
                endpoint=endpoint.label, transient=False,
            )
            meta = {**base_meta, "rejected_modes": rejected}
            return [self._provider_failure(perr, model_name, started, meta, conn.http_tries)]

    def _attempt(
        self, index: int, call: _Call, spec: Spec, model_name: str, meta: dict[str, Any], task: Task
    ) -> Attempt:
        call_meta: dict[str, Any] = {**meta, "instructor_attempt": index + 1, "http_tries": call.http_tries}
        if index > 0 and call.messages:
            # What Instructor fed back: the last message it added before this call.
            call_meta["reask"] = str(call.messages[-1].get("content", ""))[:2000]
        if call.response is None:
            err = call.error
            perr = err if isinstance(err, ProviderError) else ProviderError(
                f"instructor call failed: {type(err).__name__}", endpoint=str(meta.get("endpoint", ""))
            )
            return self.provider_failure(perr, model_name, call.latency_s, call_meta)
        response = call.response
        raw = _raw_output(response)
        finish = response.choices[0].finish_reason
        checked: Checked = self.checked(raw, task, finish)
        if call.parse_error is not None and checked.error is None:
            # Instructor rejected what check accepts (should not happen: it runs check).
            call_meta["instructor_parse_error"] = call.parse_error[:500]
        return Attempt(
            tier=self.name,
            model=ModelInfo(name=response.model or model_name, backend="openai-compatible"),
            prompt_version=prompt_version(self.settings.generate),
            raw=raw,
            value=checked.value if checked.error is None else None,
            error=checked.error,
            usage=call.usage,
            latency_s=call.latency_s,
            repaired=checked.repaired,
            repairs=checked.repairs,
            truncated_input=task.truncated_input,
            finish_reason=finish,
            meta=call_meta,
        )

    def _provider_failure(
        self, exc: ProviderError, model_name: str | None, started: float, meta: dict[str, Any], tries: int
    ) -> Attempt:
        return self.provider_failure(exc, model_name, time.perf_counter() - started, {**meta, "http_tries": tries})
