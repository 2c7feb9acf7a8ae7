"""What every tier bound to one OpenAI-compatible endpoint shares, in one place.

Its name (``kind`` or ``kind@endpoint``), its declaration (remote, the endpoint it names, its
output-token limit, its model's identity), the schema it sends (closed and bounded), how an
answer is checked (``check``, then the span checks a server cannot enforce) and how a provider
failure is recorded. ``NativeTier`` and ``InstructorTier`` subclass ``EndpointTier``; the
runtime reads the declaration through ``extract.tiers.base.Tier``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from extract.errors import ConfigError, ProviderError, UnsupportedSchema
from extract.providers.openai_compat import Connection, Endpoint, attempt_error
from extract.settings import Settings
from extract.spec import Spec, ensure_supported, local_constraint
from extract.spec.prompt import PROMPT_VERSION
from extract.spec.span_copy import CopySetting
from extract.spec.span_order import span_violations
from extract.tiers.base import Spend, Task, output_token_limit, split_tier_name
from extract.types import Attempt, ModelInfo, Usage
from extract.validate import Checked, check
from extract.validate.grounding import token_confidences

__all__ = ["EndpointTier", "closed_schema", "response_confidences", "schema_name", "usage_of"]

# A remote answer is never allowed more than this many tokens unless max_tokens says so:
# a bounded schema on a long input can allow thousands, and a runaway small model uses them.
_MAX_REMOTE_TOKENS = 1024


def closed_schema(spec: Spec, text: str, copy_from_input: CopySetting = None, shapes: bool = False) -> dict[str, Any]:
    """The spec's schema, closed and bounded for this input, without llguidance's own key.

    ``copy_from_input`` and ``shapes`` are ``local_constraint``'s: the default copies only the
    strings the schema marks; the native tier passes its own choice (``NativeTier``)."""
    schema: dict[str, Any] = json.loads(local_constraint(spec, text, copy_from_input=copy_from_input, shapes=shapes))
    schema.pop("x-guidance", None)
    if "grammar_field" in spec.features:
        _drop_key(schema, "x-grammar")  # a server cannot enforce it; validation parses the field
    schema.setdefault("title", spec.name)
    return schema


def _drop_key(node: Any, key: str) -> None:
    if isinstance(node, dict):
        node.pop(key, None)
        for value in node.values():
            _drop_key(value, key)
    elif isinstance(node, list):
        for value in node:
            _drop_key(value, key)


def schema_name(spec: Spec) -> str:
    """A function/schema name servers accept (OpenAI: ``^[a-zA-Z0-9_-]{1,64}$``)."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", spec.name)[:64] or "extraction"


def usage_of(response: Any) -> Usage:
    """The server's own token counts (zeros when it reports none)."""
    usage = getattr(response, "usage", None)
    if usage is None:
        return Usage()
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion = int(getattr(usage, "completion_tokens", 0) or 0)
    total = int(getattr(usage, "total_tokens", 0) or (prompt + completion))
    return Usage(input_tokens=prompt, output_tokens=completion, total_tokens=total)


def response_confidences(choice: Any, raw: str | None, is_json: bool) -> dict[str, float | None]:
    """Per-value confidences from a chat choice's token log-probabilities; empty without them.

    A server reports every output token, grammar-forced or not (it does not say which), so
    all count; the tokens must spell ``raw`` exactly or nothing is claimed.
    """
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content or raw is None:
        return {}
    data = raw.encode("utf-8")
    ends: list[int] = []
    logprobs: list[float | None] = []
    pos = 0
    for tok in content:
        piece = bytes(tok.bytes) if getattr(tok, "bytes", None) else str(tok.token).encode("utf-8")
        pos += len(piece)
        ends.append(len(data[:pos].decode("utf-8", errors="ignore")))
        logprobs.append(float(tok.logprob))
    if pos != len(data):
        return {}
    return token_confidences(raw, ends, logprobs, is_json)


class EndpointTier:
    """What every tier bound to one OpenAI-compatible endpoint shares: its name
    (``kind`` or ``kind@endpoint``), its availability (the endpoint is configured) and its
    row of the capability table."""

    kind = ""
    remote = True

    def __init__(self, settings: Settings, endpoint: str | None = None) -> None:
        self.settings = settings
        self.endpoint_name = endpoint
        self.name = self.kind if endpoint is None else f"{self.kind}@{endpoint}"
        assert split_tier_name(self.name) == (self.kind, endpoint)

    def output_tokens(self, spec: Spec, text: str) -> int:
        """The output-token limit of one call: the closed schema's longest instance, capped."""
        return output_token_limit(self.settings, closed_schema(spec, text) if spec.is_json else None,
                                  _MAX_REMOTE_TOKENS)

    def spend(self, spec: Spec, text: str) -> Spend:
        return Spend(self.output_tokens(spec, text))

    async def identity(self) -> list[Any]:
        endpoint = Endpoint.from_settings(self.settings, self.endpoint_name)
        served = endpoint.model
        if served is None:
            async with Connection(endpoint) as conn:
                served = await conn.served_model()
        return [self.name, endpoint.base_url, served]

    def checked(self, raw: str | None, task: Task, finish: str | None) -> Checked:
        """``check`` (a cut answer closed by repair counts as repaired there), then the span
        checks a server cannot enforce (span-copy and input order)."""
        checked = check(raw, task.spec, truncated=finish == "length")
        if checked.error is None:
            checked.error = span_violations(checked.value, task.spec, task.text, self.settings.copy_from_input,
                                            self.settings.copy_in_order)
        return checked

    def provider_failure(self, exc: ProviderError, model_name: str | None, latency_s: float,
                         meta: dict[str, Any]) -> Attempt:
        """The Attempt of a call the provider failed: no output, the error's cause counted."""
        return Attempt(
            tier=self.name,
            model=ModelInfo(name=model_name, backend="openai-compatible") if model_name else None,
            prompt_version=PROMPT_VERSION,
            error=attempt_error(exc),
            latency_s=latency_s,
            meta=meta,
        )

    def unavailable(self) -> str | None:
        try:
            Endpoint.from_settings(self.settings, self.endpoint_name)
        except ConfigError as exc:
            return str(exc)
        return None

    def check_support(self, spec: Spec) -> None:
        ensure_supported(spec.features, self.kind)
        if spec.model is None and "grammar_field" in spec.features:
            # A remote tier checks grammar fields through the Pydantic validator that
            # ``Annotated[str, Grammar]`` installs; a raw schema's x-grammar has none.
            raise UnsupportedSchema(
                "grammar_field", self.kind, path=spec.features["grammar_field"][0],
                detail="x-grammar in a JSON Schema dict is only enforced on the local tier; "
                "annotate a Pydantic field with Annotated[str, Grammar] to have it validated here",
            )
