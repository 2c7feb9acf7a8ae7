"""What happens around every tier call: budget, PII redaction, cost, one log event and span per attempt.

``Runtime`` is held by one ``Extractor`` and called by the chain before and after each tier
(``before_tier`` / ``after_tier``) and around each extraction (``extraction`` / ``finish``):

- **budget** (``extract.runtime.budget``): the tier's worst case is reserved before it runs, or the tier
  is recorded as skipped with error type ``budget``; its real spend settles the reservation.
- **PII** (``extract.runtime.pii``): with ``redact_pii``, a remote tier gets the text with placeholders
  and its values get the originals back (and are validated again).
- **cost**: every Attempt's ``usage.cost_usd`` from ``Settings.prices`` (local models: 0;
  a remote model with no price: None, which is "unknown", not "free").
- **logs**: one structlog event ``attempt`` per Attempt on the stdlib logger ``extract.events``
  at INFO (silent until the application or ``enable_event_log`` gives it a handler), rendered
  as a JSON line when stderr is not a terminal and as a console line when it is. Events carry
  counts, names and error *types*, never the text, the output or error messages (which can
  quote the document), and every string passes through the secret redactor.
- **traces**: OpenTelemetry spans ``extraction`` > ``tier`` > ``attempt`` with the same fields
  as ``extract.*`` attributes. Only ``opentelemetry-api`` is used: without an SDK configured
  by the application every span is a no-op. Tier and attempt spans are recorded when the tier
  returns, placed in time from the start of the tier and each attempt's measured latency
  (tiers report attempts as a list, not as they happen).

Secrets (``api_key``, each endpoint's key, passwords and query strings in configured URLs,
including the Redis ``cache_url``)
are replaced by ``**********`` in every event and span attribute.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from typing import IO, Any
from urllib.parse import parse_qsl, urlsplit

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from extract.runtime.budget import Budget, Hold, budget_skip, price_for, worst_case
from extract.runtime.chunking import current_chunk
from extract.runtime.pii import Redaction, redact_pii, restore, restored_json
from extract.settings import Settings
from extract.spec import Spec
from extract.tiers.base import Task, Tier
from extract.types import Attempt, AttemptError, Result
from extract.validate import check

__all__ = [
    "EVENT_LOGGER",
    "REDACTED",
    "Runtime",
    "attempt_fields",
    "enable_event_log",
    "redact_secrets",
    "secrets_of",
]

EVENT_LOGGER = "extract.events"
REDACTED = "**********"
# A configured secret shorter than this is not searched for: redacting every "abc" in every
# event would destroy the log and protect nothing a real key needs.
_MIN_SECRET_CHARS = 6



def enable_event_log(stream: IO[str] | None = None, level: int = logging.INFO) -> logging.Handler:
    """Print the attempt events on ``stream`` (stderr): the CLI's and a script's one-line opt-in."""
    logger = logging.getLogger(EVENT_LOGGER)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


@lru_cache(maxsize=1)
def _renderers() -> tuple[Any, Any]:
    import structlog

    return structlog.dev.ConsoleRenderer(colors=False), structlog.processors.JSONRenderer(sort_keys=True)


def _render(logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
    console, as_json = _renderers()
    if sys.stderr.isatty():
        return str(console(logger, method, event))
    return str(as_json(logger, method, event))


def secrets_of(settings: Settings) -> list[str]:
    """Every configured secret, longest first (so a key containing another is replaced whole)."""
    found: set[str] = set()
    for key in (settings.api_key, *(ep.api_key for ep in settings.endpoints.values())):
        if key is not None:
            found.add(key.get_secret_value())
    for url in (settings.base_url, settings.cache_url, *(ep.base_url for ep in settings.endpoints.values())):
        if url:
            parts = urlsplit(url)
            if parts.password:
                found.add(parts.password)
            found.update(v for _, v in parse_qsl(parts.query))
    return sorted((s for s in found if len(s) >= _MIN_SECRET_CHARS), key=len, reverse=True)


def redact_secrets(value: Any, secrets: list[str]) -> Any:
    """``value`` with every secret replaced, through dicts, lists and tuples."""
    if not secrets:
        return value
    if isinstance(value, str):
        for s in secrets:
            value = value.replace(s, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: redact_secrets(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_secrets(v, secrets) for v in value)
    return value


def attempt_fields(attempt: Attempt) -> dict[str, Any]:
    """The fields of an attempt's log event and span: names, counts, outcome; no text."""
    return {
        "tier": attempt.tier,
        "model": attempt.model.name if attempt.model else None,
        "endpoint": attempt.meta.get("endpoint"),
        "prompt_version": attempt.prompt_version,
        "input_tokens": attempt.usage.input_tokens,
        "output_tokens": attempt.usage.output_tokens,
        "latency_s": round(attempt.latency_s, 4),
        "cost_usd": attempt.usage.cost_usd,
        "cache_hit": attempt.meta.get("cache") == "hit",  # extract.runtime.cache marks a served hit so
        "outcome": "skipped" if attempt.skipped else ("ok" if attempt.error is None else "error"),
        "error_type": attempt.error.type if attempt.error else None,
        "repaired": attempt.repaired,
        "chunk": attempt.meta.get("chunk"),
    }


def _span_attributes(fields: dict[str, Any]) -> dict[str, Any]:
    return {f"extract.{k}": v for k, v in fields.items() if v is not None}


@dataclass
class TierCall:
    """One tier about to run: the task it gets (maybe redacted) and what to undo afterwards."""

    tier: str
    task: Task
    started_ns: int
    hold: Hold | None = None
    calls: int = 1
    redaction: Redaction | None = None


@dataclass
class _Extraction:
    span: Span
    observed: set[int] = field(default_factory=set)


_CURRENT: ContextVar[_Extraction | None] = ContextVar("extract_extraction", default=None)


class Runtime:
    """The budget, redaction, pricing, logging and tracing policy of one Extractor."""

    def __init__(self, settings: Settings, tiers: Sequence[Tier]) -> None:
        self.settings = settings
        self.secrets = secrets_of(settings)
        # What each tier of the chain declares (remote, endpoint, spend), by the name its
        # attempts carry; any other name (cache, merge) is no model's and costs nothing.
        self.tiers = {tier.name: tier for tier in tiers}
        self.budget = Budget.from_settings(settings, tiers)
        self._log: Any = None
        self.tracer = trace.get_tracer("extract")

    @property
    def log(self) -> Any:
        """The structlog event logger, built on first use.

        structlog (with rich and pygments behind its console renderer) costs 0.3-0.8 s to
        import; an extraction whose event logger is off never pays it.
        """
        if self._log is None:
            import structlog

            self._log = structlog.wrap_logger(
                logging.getLogger(EVENT_LOGGER),
                processors=[
                    structlog.stdlib.filter_by_level,
                    structlog.stdlib.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    self._redact,
                    _render,
                ],
                wrapper_class=structlog.stdlib.BoundLogger,
            )
        return self._log

    def _redact(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        redacted: dict[str, Any] = redact_secrets(dict(event), self.secrets)
        return redacted

    # -- one extraction --------------------------------------------------------------
    @contextmanager
    def extraction(self, spec: Spec, text: str) -> Iterator[None]:
        """The ``extraction`` span, current while the chain (or its chunks) run."""
        attributes: dict[str, AttributeValue] = {
            "extract.spec": spec.name, "extract.spec_kind": spec.kind, "extract.text_chars": len(text),
        }
        chunk = current_chunk()
        if chunk is not None:
            attributes["extract.chunk"] = chunk
        with self.tracer.start_as_current_span("extraction", attributes=attributes) as span:
            token = _CURRENT.set(_Extraction(span))
            try:
                yield
            finally:
                _CURRENT.reset(token)

    def finish(self, result: Result) -> Result:
        """Observe the attempts no tier call produced (planned skips, cached ones); close the span."""
        current = _CURRENT.get()
        if current is None:
            return result
        if not result.chunks:  # a chunked result's attempts were observed by each chunk
            rest = [a for a in result.attempts if id(a) not in current.observed]
            for a in rest:
                self._price(a)  # a cache hit spent nothing: 0, not unknown
            if rest:
                self._observe("planned", rest, time.time_ns(), tier_span=False)
        usage = result.usage
        span = current.span
        span.set_attributes(_span_attributes({
            "ok": result.ok, "winner": result.tier, "attempts": len(result.attempts),
            "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cost_usd": usage.cost_usd, "chunks": len(result.chunks) or None,
            "conflicts": len(result.conflicts) or None, "cache_hit": bool(getattr(result, "cache_hit", False)),
        }))
        if not result.ok:
            span.set_status(Status(StatusCode.ERROR, "no tier produced a valid value"))
        return result

    # -- one tier --------------------------------------------------------------------
    def _remote(self, name: str) -> Tier | None:
        tier = self.tiers.get(name)
        return tier if tier is not None and tier.remote else None

    def before_tier(self, tier: Tier, task: Task) -> TierCall | Attempt:
        """The call to make (text redacted for a remote tier), or a skipped Attempt (budget)."""
        call = TierCall(tier=tier.name, task=task, started_ns=time.time_ns())
        if self.settings.redact_pii and tier.remote:
            call.redaction = redact_pii(task.text)
            if call.redaction.mapping:
                call.task = dataclasses.replace(task, text=call.redaction.text, on_text=None)
        if self.budget.capped:
            tokens, usd = worst_case(tier, self.settings, task.spec, call.task.text, task.examples)
            hold = self.budget.reserve(tokens, usd)
            if hold is None:
                skip = budget_skip(tier.name, tokens, usd, self.budget)
                self._observe(tier.name, [skip], call.started_ns)
                return skip
            call.hold = hold
            call.calls = tier.spend(task.spec, call.task.text).max_calls
        return call

    def after_tier(self, call: TierCall, attempts: list[Attempt]) -> list[Attempt]:
        """Restore PII, price, settle the budget, then log and trace every attempt."""
        chunk = current_chunk()
        for a in attempts:
            if call.redaction is not None and call.redaction.mapping:
                self._restore(a, call.task.spec, call.redaction)
            self._price(a)
            if chunk is not None:
                a.meta["chunk"] = chunk
        if call.hold is not None:
            tokens = sum(a.usage.total_tokens for a in attempts)
            usd = sum(a.usage.cost_usd or 0.0 for a in attempts)
            # An HTTP call retried after a cut answer may have been charged with no usage seen:
            # charge each extra try (beyond refused modes) at its worst case. Conservative: a
            # retried 429 or the first call's model lookup cost nothing.
            # A grammar probe is an HTTP call of its own whose tokens are in the usage already
            # (a refused or ignored one is also a rejected mode).
            retried = sum(max(0, int(a.meta.get("http_tries", 1)) - 1 - len(a.meta.get("rejected_modes", ()))
                              - sum(1 for p in a.meta.get("probes", ()) if p.get("enforced")))
                          for a in attempts)
            if retried:
                tokens += retried * (call.hold.tokens // call.calls)
                usd += retried * (call.hold.usd / call.calls)
            self.budget.settle(call.hold, tokens, usd)
        self._observe(call.tier, attempts, call.started_ns)
        return attempts

    def _restore(self, attempt: Attempt, spec: Spec, redaction: Redaction) -> None:
        attempt.meta["pii_redacted"] = dict(redaction.counts)
        if attempt.raw is not None:
            attempt.raw = restore(attempt.raw, redaction.mapping)
        if not attempt.ok:
            return
        source = restored_json(attempt.value, redaction.mapping) if spec.is_json else (attempt.raw or "")
        checked = check(source, spec)
        if checked.error is not None:
            attempt.value = None
            attempt.error = AttemptError(
                type="pii_restore",
                message="with the redacted values put back the output fails the spec: " + checked.error.message,
                details=checked.error.details,
            )
        else:
            attempt.value = checked.value

    def _price(self, attempt: Attempt) -> None:
        if attempt.skipped or attempt.usage.cost_usd is not None:
            return
        tier = self._remote(attempt.tier)
        if tier is None:
            cost: float | None = 0.0  # a local model costs nothing per token
        else:
            endpoint = tier.endpoint_name or "default"
            price = price_for(self.settings, endpoint, attempt.model.name if attempt.model else None)
            cost = None if price is None else (
                attempt.usage.input_tokens * price.input_per_mtok
                + attempt.usage.output_tokens * price.output_per_mtok
            ) / 1e6
        attempt.usage = attempt.usage.model_copy(update={"cost_usd": cost})

    def _observe(self, tier: str, attempts: list[Attempt], started_ns: int, *, tier_span: bool = True) -> None:
        current = _CURRENT.get()
        parent: Span | None = None
        if tier_span:
            parent = self.tracer.start_span("tier", start_time=started_ns, attributes={
                "extract.tier": tier, "extract.attempts": len(attempts),
                "extract.ok": any(a.ok for a in attempts),
            })
        context = trace.set_span_in_context(parent) if parent is not None else None
        at = started_ns
        for attempt in attempts:
            fields = attempt_fields(attempt)
            duration = int(attempt.latency_s * 1e9)
            span = self.tracer.start_span(
                "attempt", context=context, start_time=at,
                attributes=redact_secrets(_span_attributes(fields), self.secrets),
            )
            if attempt.error is not None:
                span.set_status(Status(StatusCode.ERROR, attempt.error.type))
            span.end(end_time=at + duration)
            at += duration
            if logging.getLogger(EVENT_LOGGER).isEnabledFor(logging.INFO):
                self.log.info("attempt", **fields)
            if current is not None:
                current.observed.add(id(attempt))
        if parent is not None:
            parent.end()
