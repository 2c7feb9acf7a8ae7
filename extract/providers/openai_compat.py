"""Talking to an OpenAI-compatible endpoint: one client, one reliability policy, one error boundary.

Both remote tiers (native and instructor) send every request through ``Connection.chat``,
so they share one implementation of what makes a flaky endpoint usable:

- **retries** (tenacity) of transient failures only: 429 (honouring ``Retry-After``), 5xx,
  timeouts, refused or reset connections, bodies cut mid-way, bodies that are not JSON or
  not a chat completion. Waits are capped, jittered exponential (full jitter). Permanent
  failures (400, 401, 403, 404, a 500 that names ``response_format``) are never retried.
- **a circuit breaker per endpoint** that opens after ``breaker_threshold`` consecutive
  transient failures, fails fast while open (so the chain moves on to its next tier with
  the reason recorded), and lets one probe call through after ``breaker_cooldown_s``.
- **a deadline** per extraction (``Task.deadline``): no call starts after it, and no
  request timeout or retry wait reaches past it.
- **one error boundary**, ``normalise``: every openai/httpx exception becomes a
  ``ProviderError`` naming the endpoint (its name or URL, never the key), with ``transient``,
  ``status`` and ``retry_after``. The original exception is dropped (``from None``): openai's
  exceptions carry the request, and the request carries the ``Authorization`` header.

It also holds what is learnt about an endpoint for the life of the process: the capability
ladder of ``response_format`` modes it accepts, the ladder of grammar request fields it
enforces (``grammar`` for llama.cpp, ``structured_outputs`` for vLLM, each credited by a probe),
its breaker, and the model name it serves.

This module imports no tier.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_random_exponential

from extract.errors import ConfigError, ProviderError
from extract.settings import Settings
from extract.types import AttemptError

__all__ = [
    "GRAMMAR_LADDER",
    "LADDER",
    "PROBE_TEXT",
    "CapabilityLadder",
    "CircuitBreaker",
    "CircuitOpen",
    "Connection",
    "DeadlineExceeded",
    "Endpoint",
    "EndpointState",
    "GrammarMode",
    "Mode",
    "attempt_error",
    "detect_capabilities",
    "endpoint_state",
    "estimate_tokens",
    "gbnf_refusal",
    "grammar_body_for",
    "is_mode_rejection",
    "known_endpoint_state",
    "normalise",
    "pending_grammar_probes",
    "probe_grammar_mode",
    "reset_endpoint_states",
    "response_format_for",
    "server_safe_schema",
]

log = logging.getLogger("extract.remote")

Mode = Literal["json_schema", "json_object_schema", "json_object", "prompt"]

# The capability ladder, strongest first. What each rung sends as ``response_format``:
# OpenAI's strict structured outputs; llama.cpp's json_object with a schema (enforced by a
# grammar); any JSON object; nothing (the prompt alone asks for JSON).
LADDER: tuple[Mode, ...] = ("json_schema", "json_object_schema", "json_object", "prompt")


GrammarMode = Literal["gbnf", "structured_outputs", "prompt"]

# The ladder for grammar and regex specs, strongest first. No OpenAI-compatible standard
# exists, so each rung is one server family's request field: llama.cpp's server (and
# llama-cpp-python's) take a GBNF grammar in ``grammar``; vLLM takes
# ``structured_outputs: {"grammar": <Lark or EBNF>}`` or ``{"regex": ...}`` (its
# ``guided_grammar``/``guided_regex`` fields were removed in v0.12). A server ignores a field it
# does not know, so a rung is credited only after a probe shows the server enforcing it.
GRAMMAR_LADDER: tuple[GrammarMode, ...] = ("gbnf", "structured_outputs", "prompt")

# What the probe forces: a string no model answers "Reply with one word." with by chance.
PROBE_TEXT = "zq-7x"
_PROBE_BODY: dict[str, dict[str, Any]] = {
    "gbnf": {"grammar": f'root ::= "{PROBE_TEXT}"'},
    "structured_outputs": {"structured_outputs": {"grammar": f'start: "{PROBE_TEXT}"'}},
}


def grammar_body_for(mode: GrammarMode, *, gbnf: str | None = None, lark: str | None = None,
                     regex: str | None = None) -> dict[str, Any]:
    """The extra request fields for one grammar rung: ``{"grammar": gbnf}`` (llama.cpp) or
    ``{"structured_outputs": {"grammar": lark} | {"regex": regex}}`` (vLLM); empty for prompt."""
    if mode == "gbnf":
        if gbnf is None:
            raise ValueError("the gbnf rung needs a GBNF grammar")
        return {"grammar": gbnf}
    if mode == "structured_outputs":
        if (lark is None) == (regex is None):
            raise ValueError("the structured_outputs rung needs exactly one of a Lark grammar and a regex")
        return {"structured_outputs": {"grammar": lark} if lark is not None else {"regex": regex}}
    return {}


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 points at /dev/null inside (C code writes there, not to sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def gbnf_refusal(gbnf: str) -> str | None:
    """Why llama.cpp's grammar parser refuses ``gbnf``, or None when it reads it.

    Checked before a grammar is sent because llama-cpp-python's server does not check: an
    unparsable grammar reaches ``llama_sampler_chain_add`` as NULL and the server process dies
    of a segmentation fault (measured, llama-cpp-python 0.3.36). The parser is llama.cpp's own,
    through the sampler API, with no model loaded (it needs no vocabulary to parse). Without
    llama-cpp-python installed nothing is checked here (None).
    """
    try:
        import llama_cpp
    except ImportError:  # pragma: no cover - llama-cpp-python is a dependency of the default model
        return None
    # llama.cpp prints a refused grammar whole to stderr (fprintf, not its logger): megabytes
    # for a span-copy enum. The refusal is ours to report, so its stderr goes nowhere meanwhile.
    with _quiet_stderr():
        sampler = llama_cpp.llama_sampler_init_grammar(None, gbnf.encode("utf-8"), b"root")
    if not sampler:
        return "llama.cpp's grammar parser refuses it"
    llama_cpp.llama_sampler_free(sampler)
    return None


# The longest repetition (a string's maxLength, a list's maxItems) llama.cpp's grammar parser
# takes from llama-cpp-python's schema converter: 1,000 parses, 1,001 and over are refused
# (measured, llama-cpp-python 0.3.36; the converter nests one optional rule per repetition).
SERVER_MAX_REPEAT = 1000


def server_safe_schema(schema: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """The schema as llama-cpp-python's server can take it with ``json_object``, and what was widened.

    That server turns the schema into a GBNF grammar with its own converter, which writes a
    double quote inside an ``enum`` or ``const`` string unescaped; the grammar does not parse
    and the server process dies (segmentation fault, measured: a span-copy enum holding a
    quoted title). The same converter runs here and llama.cpp's parser checks its output
    (``gbnf_refusal``). A refused schema is widened until it parses, the value still being
    validated after: first each enum/const holding such a string becomes a plain string; then
    each length or count bound over ``SERVER_MAX_REPEAT`` is dropped (the converter nests one
    rule per repetition and the parser refuses the depth: a free string bounded by the input's
    length, 1,024 characters for any text over 512, took the whole schema off every longer
    document). (None, paths) when even that does not parse, and the caller sends
    ``json_object`` without a schema.
    """
    try:
        from llama_cpp.llama_grammar import json_schema_to_gbnf
    except ImportError:  # pragma: no cover - llama-cpp-python is a dependency of the default model
        return schema, []

    def refused(candidate: dict[str, Any]) -> bool:
        try:
            gbnf = json_schema_to_gbnf(json.dumps(candidate))
        except Exception:  # its converter raises on schemas it does not know
            return False  # not ours to judge: the server answers such a schema with an error
        return gbnf_refusal(gbnf) is not None

    if not refused(schema):
        return schema, []
    widened = copy.deepcopy(schema)
    paths: list[str] = []
    _widen_quoted(widened, paths)
    if paths and not refused(widened):
        return widened, paths
    quoted = len(paths)
    _drop_long_bounds(widened, paths)
    if len(paths) > quoted and not refused(widened):
        return widened, paths
    return None, paths


def _each_schema_node(node: Any, path: str, visit: Callable[[dict[str, Any], str], None]) -> None:
    """``visit(node, its JSON pointer)`` for every schema object under ``node``, before its
    children (so a visit may rewrite what is walked next); the values of ``enum``, ``const``,
    ``default`` and ``examples`` are data, not schemas, and are not entered."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _each_schema_node(item, f"{path}/{i}", visit)
        return
    if not isinstance(node, dict):
        return
    visit(node, path)
    for key, value in node.items():
        if key not in ("enum", "const", "default", "examples"):
            _each_schema_node(value, f"{path}/{key}", visit)


def _widen_quoted(schema: dict[str, Any], paths: list[str]) -> None:
    """Each enum/const holding a string with a double quote becomes a bounded plain string."""

    def visit(node: dict[str, Any], path: str) -> None:
        values = list(node.get("enum") or []) + ([node["const"]] if "const" in node else [])
        if any(isinstance(v, str) and '"' in v for v in values):
            node.pop("enum", None)
            node.pop("const", None)
            node["type"] = "string"
            # Bounded by its longest value: an unbounded string lets a small model run to the
            # token limit (a widened span list would otherwise lose the input's length bound).
            node.setdefault("maxLength", max(len(v) for v in values if isinstance(v, str)))
            paths.append(path or "/")

    _each_schema_node(schema, "", visit)


def _drop_long_bounds(schema: dict[str, Any], paths: list[str]) -> None:
    """Every ``maxLength``/``maxItems`` over ``SERVER_MAX_REPEAT`` is dropped."""

    def visit(node: dict[str, Any], path: str) -> None:
        long = [k for k in ("maxLength", "maxItems") if isinstance(node.get(k), int)
                and not isinstance(node.get(k), bool) and node[k] > SERVER_MAX_REPEAT]
        for key in long:
            del node[key]
        if long:
            paths.append(path or "/")

    _each_schema_node(schema, "", visit)


def response_format_for(mode: Mode, schema: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The ``response_format`` body field for one rung of the ladder."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": schema}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` for a remote model whose tokenizer is not at hand: characters / 3,
    rounded up (English and JSON run ~3.5 characters a token; 3 errs towards more). The one
    estimate chunking sizes remote prompts by and a stream without token counts is charged by."""
    return -(-len(text) // 3)


def redact_url(url: str) -> str:
    """The URL without user:password and query: safe to print and to put in a report."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True)
class Endpoint:
    """Where to send requests and how hard to try; built from ``Settings`` (and a name)."""

    name: str
    base_url: str
    model: str | None
    api_key: SecretStr | None = field(repr=False)
    timeout_s: float
    max_retries: int
    backoff_initial_s: float
    backoff_max_s: float
    retry_after_max_s: float
    breaker_threshold: int
    breaker_cooldown_s: float

    @property
    def label(self) -> str:
        """How the endpoint is named in messages, attempts and reports (never the key)."""
        url = redact_url(self.base_url)
        return url if self.name == "default" else f"{self.name} ({url})"

    @property
    def key(self) -> tuple[str, str]:
        return (self.base_url, self.model or "")

    @classmethod
    def from_settings(cls, settings: Settings, name: str | None = None) -> Endpoint:
        """The default endpoint (``base_url``...) or the named one from ``endpoints``."""
        common: dict[str, Any] = dict(
            backoff_initial_s=settings.backoff_initial_s,
            backoff_max_s=settings.backoff_max_s,
            retry_after_max_s=settings.retry_after_max_s,
            breaker_threshold=settings.breaker_threshold,
            breaker_cooldown_s=settings.breaker_cooldown_s,
        )
        if name is None or (name == "default" and "default" not in settings.endpoints):
            if settings.base_url is None:
                raise ConfigError("no base_url configured (set EXTRACT_BASE_URL or base_url=)")
            return cls(
                name="default",
                base_url=settings.base_url,
                model=settings.model,
                api_key=settings.api_key,
                timeout_s=settings.timeout_s,
                max_retries=settings.max_retries,
                **common,
            )
        try:
            ep = settings.endpoints[name]
        except KeyError:
            known = ", ".join(sorted(settings.endpoints)) or "none configured"
            raise ConfigError(f"unknown endpoint {name!r} (known: {known})") from None
        return cls(
            name=name,
            base_url=ep.base_url,
            model=ep.model,
            api_key=ep.api_key,
            timeout_s=ep.timeout_s if ep.timeout_s is not None else settings.timeout_s,
            max_retries=ep.max_retries if ep.max_retries is not None else settings.max_retries,
            **common,
        )


# -- errors ----------------------------------------------------------------------------


class CircuitOpen(ProviderError):
    """The endpoint's breaker is open: no call was made."""


class DeadlineExceeded(ProviderError):
    """The extraction's deadline passed: no further call is made."""


_MODE_WORDS = re.compile(r"response_format|json_schema|json_object|grammar|schema", re.I)
_CONTEXT_WORDS = re.compile(r"context|too long|maximum.*tokens", re.I)


def is_mode_rejection(exc: ProviderError) -> bool:
    """Did the endpoint refuse the request's shape (a ladder step down), not the request?

    llama.cpp's server answers ``json_schema`` with HTTP 500 naming ``response_format``
    (measured, llama-cpp-python 0.3); other servers answer 400. A 400 about the context
    length is not about the format: stepping down would not help.
    """
    if exc.status == 400:
        return not _CONTEXT_WORDS.search(str(exc))
    return exc.status == 500 and bool(_MODE_WORDS.search(str(exc)))


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


# A server's Python traceback in its error body (llama-cpp-python's server sends one): its
# frames name the server's files, internals that do not belong in our records.
_TRACEBACK = re.compile(r"\s*(?:Traceback \(most recent call last\):|File \"[^\"]*\", line \d+).*", re.DOTALL)


def _scrub(text: str, endpoint: Endpoint) -> str:
    """Drop the key from server text, in case a server echoes it back, and any traceback;
    keep it short."""
    cleaned = _TRACEBACK.sub("", text)
    text = cleaned if cleaned.strip() else "(the server's message was only a traceback)"
    if endpoint.api_key is not None:
        secret = endpoint.api_key.get_secret_value()
        if secret:
            text = text.replace(secret, "**********")
    text = re.sub(r"(?i)(bearer\s+)\S+", r"\1**********", text)
    return text if len(text) <= 300 else text[:300] + "..."


def _server_message(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
        return json.dumps(body)[:300]
    if isinstance(body, str) and body:
        return body
    return fallback


_PERMANENT_HINT = {
    400: "the endpoint rejected the request",
    401: "the endpoint rejected the API key (check EXTRACT_API_KEY)",
    403: "the API key may not use this endpoint or model",
    404: "not found: check base_url (it usually ends in /v1) and the model name",
    422: "the endpoint could not process the request",
}


def normalise(exc: BaseException, endpoint: Endpoint) -> ProviderError:
    """The one boundary where openai/httpx exceptions become ``ProviderError``.

    Messages are built here from the status and the server's own message, and say whether
    trying again can help. Callers do not chain the openai exception (``raise ... from
    None``): it references the request, and so the ``Authorization`` header.
    """
    import httpx
    import openai

    if isinstance(exc, ProviderError):
        return exc
    status: int | None = None
    retry_after: float | None = None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        server = _scrub(_server_message(exc.body, exc.response.reason_phrase), endpoint)
        if status in (408, 409, 425, 429) or status >= 500:
            # llama.cpp refuses an unknown response_format with a 500: a refusal, not an outage.
            transient = not (status == 500 and bool(_MODE_WORDS.search(server)))
            retry_after = _retry_after(exc.response.headers)
            what = f"HTTP {status} ({'rate limited' if status == 429 else 'server error'}): {server}"
        else:
            transient = False
            hint = _PERMANENT_HINT.get(status, "the endpoint refused the request")
            what = f"HTTP {status}, {hint}: {server}"
    elif isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException)):
        transient, what = True, "the request timed out"
    elif isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        transient = True
        if isinstance(cause, httpx.ConnectError):
            what = "connection refused or host unreachable (is the server running?)"
        elif isinstance(cause, httpx.RemoteProtocolError):
            what = "the connection closed before a complete response (cut or reset)"
        elif isinstance(cause, httpx.UnsupportedProtocol):
            transient, what = False, "unsupported URL scheme"
        else:
            what = f"connection failed ({type(cause).__name__ if cause else 'no detail'})"
    elif isinstance(exc, openai.APIResponseValidationError):
        transient, status, what = True, exc.status_code, "the response body is not a valid completion"
    elif isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        transient, what = True, "the response body is not JSON (malformed or truncated)"
    elif isinstance(exc, httpx.TransportError):
        transient, what = True, f"transport error ({type(exc).__name__})"
    elif isinstance(exc, openai.OpenAIError):
        transient, what = False, f"client error ({type(exc).__name__})"
    else:
        raise exc
    verdict = "transient, worth retrying" if transient else "permanent, not retried"
    return ProviderError(
        f"endpoint {endpoint.label}: {what} [{verdict}]",
        endpoint=endpoint.label, transient=transient, status=status, retry_after=retry_after,
    )


def attempt_error(exc: ProviderError) -> AttemptError:
    """How a provider failure is recorded on an Attempt (a cause a report can count)."""
    if isinstance(exc, CircuitOpen):
        kind = "breaker_open"
    elif isinstance(exc, DeadlineExceeded):
        kind = "deadline"
    else:
        kind = "provider_error"
    return AttemptError(
        type=kind,
        message=str(exc),
        details=[{
            "endpoint": exc.endpoint,
            "transient": exc.transient,
            "status": exc.status,
            "retry_after": exc.retry_after,
        }],
    )


# -- what is learnt about an endpoint -----------------------------------------------------


M = TypeVar("M", bound=str)


class CapabilityLadder(Generic[M]):
    """Which modes an endpoint accepts, learnt by being refused.

    Starts at the strongest rung; a refusal steps down and is remembered with its reason,
    so each endpoint pays for a refused mode once per process. ``confirmed`` is the rung
    that last produced an answer. One ladder for ``response_format`` modes (``LADDER``) and
    one for grammar request fields (``GRAMMAR_LADDER``); the last rung is never refused.
    """

    def __init__(self, rungs: tuple[M, ...] = LADDER) -> None:  # type: ignore[assignment]
        self.rungs = rungs
        self.rejected: dict[str, str] = {}
        self.confirmed: M | None = None

    def current(self, skip: frozenset[str] = frozenset()) -> M:
        """The strongest rung not refused (nor in ``skip``: rungs one spec cannot use)."""
        return next((m for m in self.rungs if m not in self.rejected and m not in skip), self.rungs[-1])

    def reject(self, mode: M, reason: str) -> None:
        if mode != self.rungs[-1]:
            self.rejected.setdefault(mode, reason)
        if self.confirmed == mode:
            self.confirmed = None

    def confirm(self, mode: M) -> None:
        self.confirmed = mode

    def snapshot(self) -> dict[str, Any]:
        return {"mode": self.current(), "confirmed": self.confirmed, "rejected": dict(self.rejected)}


class CircuitBreaker:
    """Closed -> open after ``threshold`` consecutive transient failures -> half-open after
    ``cooldown_s`` (one probe call) -> closed on success, open again on failure."""

    def __init__(self, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self.last_error: str | None = None
        self.times_opened = 0

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def before_call(self, endpoint: str) -> None:
        state = self.state
        if state == "closed":
            return
        if state == "half_open" and not self.probing:
            self.probing = True
            return
        assert self.opened_at is not None
        wait = max(self.cooldown_s - (self.clock() - self.opened_at), 0.0)
        raise CircuitOpen(
            f"endpoint {endpoint}: circuit breaker open after {self.failures} consecutive "
            f"failures (last: {self.last_error}); next probe in {wait:.1f} s",
            endpoint=endpoint, transient=True, retry_after=wait,
        )

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def failure(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason
        if self.probing or self.failures >= self.threshold:
            if self.opened_at is None or self.probing:
                self.times_opened += 1
            self.opened_at = self.clock()
            self.probing = False


@dataclass
class EndpointState:
    """Everything remembered about one endpoint for the life of the process."""

    ladder: CapabilityLadder[Mode]
    breaker: CircuitBreaker
    served_model: str | None = None
    grammar_ladder: CapabilityLadder[GrammarMode] = field(
        default_factory=lambda: CapabilityLadder(GRAMMAR_LADDER))
    # Grammar rungs a probe showed enforced (a rung is probed once per endpoint and process).
    grammar_enforced: set[str] = field(default_factory=set)
    instructor_rejected: dict[str, str] = field(default_factory=dict)
    instructor_confirmed: set[str] = field(default_factory=set)
    # Whether chat answers carry token log-probabilities (None: not asked yet).
    logprobs: bool | None = None


_STATES: dict[tuple[str, str], EndpointState] = {}


def pending_grammar_probes(state: EndpointState | None) -> int:
    """How many probe calls the grammar ladder may still make on this endpoint before it
    settles: one per rung above ``prompt`` that is neither refused nor shown enforced, down
    to the first enforced one (all of them when nothing is known yet)."""
    pending = 0
    for rung in GRAMMAR_LADDER[:-1]:
        if state is not None and rung in state.grammar_ladder.rejected:
            continue
        if state is not None and rung in state.grammar_enforced:
            break
        pending += 1
    return pending


def known_endpoint_state(endpoint: Endpoint) -> EndpointState | None:
    """What this process has learnt about ``endpoint``, without creating a record."""
    return _STATES.get(endpoint.key)


def endpoint_state(endpoint: Endpoint) -> EndpointState:
    state = _STATES.get(endpoint.key)
    if state is None:
        state = EndpointState(
            ladder=CapabilityLadder(LADDER),
            breaker=CircuitBreaker(endpoint.breaker_threshold, endpoint.breaker_cooldown_s),
        )
        _STATES[endpoint.key] = state
    else:
        # Settings may differ between Extractors on one endpoint: the latest wins.
        state.breaker.threshold = endpoint.breaker_threshold
        state.breaker.cooldown_s = endpoint.breaker_cooldown_s
    return state


def reset_endpoint_states() -> None:
    """Forget every ladder, breaker and model name (tests start from a clean process view)."""
    _STATES.clear()


# -- the connection ------------------------------------------------------------------------


def _retryable(exc: BaseException) -> bool:
    return (
        isinstance(exc, ProviderError)
        and exc.transient
        and not isinstance(exc, (CircuitOpen, DeadlineExceeded))
    )


class Connection:
    """One open HTTP client on one endpoint, for the calls of one tier in one extraction.

    Opened per extraction (``async with``) because an httpx pool is bound to the event loop
    it was created in, and the sync API runs each extraction in a fresh loop. What outlives
    it (ladder, breaker, model name) is in ``EndpointState``.
    """

    def __init__(self, endpoint: Endpoint, deadline: float | None = None) -> None:
        import openai

        self.endpoint = endpoint
        self.deadline = deadline
        self.state = endpoint_state(endpoint)
        key = endpoint.api_key.get_secret_value() if endpoint.api_key is not None else ""
        # openai insists on a key; servers without auth ignore this placeholder.
        self.client = openai.AsyncOpenAI(
            base_url=endpoint.base_url,
            api_key=key or "no-key",
            timeout=endpoint.timeout_s,
            max_retries=0,  # retries are ours (tenacity, below): one policy for both tiers
        )
        self.http_tries = 0
        self.transport_errors: list[str] = []

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.client.close()

    def time_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def _check_deadline(self) -> float:
        """The timeout for the next request; raises when the deadline has passed."""
        left = self.time_left()
        if left is None:
            return self.endpoint.timeout_s
        if left <= 0.01:
            raise DeadlineExceeded(
                f"endpoint {self.endpoint.label}: the extraction deadline passed",
                endpoint=self.endpoint.label, transient=True,
            )
        return min(self.endpoint.timeout_s, left)

    def _wait(self, rs: RetryCallState) -> float:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        if isinstance(exc, ProviderError) and exc.retry_after is not None:
            wait = min(exc.retry_after, self.endpoint.retry_after_max_s)
        else:
            wait = wait_random_exponential(
                multiplier=self.endpoint.backoff_initial_s, max=self.endpoint.backoff_max_s
            )(rs)
        left = self.time_left()
        return wait if left is None else max(min(wait, left - 0.02), 0.0)

    def _stop(self, rs: RetryCallState) -> bool:
        if stop_after_attempt(self.endpoint.max_retries + 1)(rs):
            return True
        exc = rs.outcome.exception() if rs.outcome is not None else None
        if isinstance(exc, ProviderError) and exc.retry_after is not None:
            if exc.retry_after > self.endpoint.retry_after_max_s:
                return True  # asked to wait longer than we will: fail fast, transient
            left = self.time_left()
            if left is not None and exc.retry_after >= left:
                return True
        left = self.time_left()
        return left is not None and left <= 0.02

    async def _reliably(self, what: str, call: Callable[[float], Awaitable[Any]]) -> Any:
        """Run ``call(timeout)`` under the breaker, the deadline and the retry policy."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(_retryable),
            wait=self._wait,
            stop=self._stop,
            reraise=True,
            before_sleep=self._log_retry,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(what, call)
        except ProviderError as exc:
            left = self.time_left()
            if left is not None and left <= 0.02 and not isinstance(exc, (DeadlineExceeded, CircuitOpen)):
                raise DeadlineExceeded(
                    f"endpoint {self.endpoint.label}: the extraction deadline passed "
                    f"after {self.http_tries} tries (last: {exc})",
                    endpoint=self.endpoint.label, transient=True, status=exc.status,
                ) from None
            raise
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _once(self, what: str, call: Callable[[float], Awaitable[Any]]) -> Any:
        breaker = self.state.breaker
        timeout = self._check_deadline()
        breaker.before_call(self.endpoint.label)
        self.http_tries += 1
        try:
            result = await call(timeout)
        except asyncio.CancelledError:
            breaker.probing = False
            raise
        except Exception as raw:
            err = normalise(raw, self.endpoint)
            self._record(err)
            raise err from None
        problem = _malformed(what, result)
        if problem is not None:
            err = ProviderError(
                f"endpoint {self.endpoint.label}: {problem}", endpoint=self.endpoint.label, transient=True
            )
            self._record(err)
            raise err
        breaker.success()
        return result

    def _record(self, err: ProviderError) -> None:
        self.transport_errors.append(str(err))
        if err.transient:
            self.state.breaker.failure(str(err))
        else:
            # The server answered, so it is up: a permanent refusal does not trip the breaker.
            self.state.breaker.success()

    def _log_retry(self, rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        sleep = rs.next_action.sleep if rs.next_action is not None else 0.0
        log.info("retrying in %.2f s after try %d: %s", sleep, rs.attempt_number, exc)

    async def chat(self, **kwargs: Any) -> Any:
        """One chat completion (a ``ChatCompletion``), retried as the policy says."""
        return await self._reliably(
            "chat", lambda timeout: self.client.chat.completions.create(timeout=timeout, **kwargs)
        )

    async def chat_streamed(self, on_text: Callable[[str], None], **kwargs: Any) -> Any:
        """One chat completion read as the server streams it, ``on_text`` hearing the content
        so far after every chunk; returns the assembled ``ChatCompletion``, so what follows
        cannot tell it from ``chat``'s. Used only when someone listens (``extract_iter``).

        The whole stream is one try under the breaker, the deadline and the retry policy: a
        connection cut mid-answer is tried again from the start, and the listener hears the
        new answer afresh. ``stream_options.include_usage`` asks for the token counts; a server
        that streams none (llama-cpp-python's) gets the output counted as its content chunks
        (one token each there) and the input by ``estimate_tokens``, marked ``usage_estimated``
        on the completion's ``model_extra`` for the budget and the report to see.
        """
        from openai.lib.streaming.chat import ChatCompletionStreamState

        messages = kwargs.get("messages", [])

        async def read(timeout: float) -> Any:
            stream = await self.client.chat.completions.create(
                timeout=timeout, stream=True, stream_options={"include_usage": True}, **kwargs)
            state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
            text, chunks, handled = "", 0, 0
            async for chunk in stream:
                state.handle_chunk(chunk)
                handled += 1
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if piece:
                    text += piece
                    chunks += 1
                    on_text(text)
            # A body that is no event stream (an HTML page, broken JSON) parses as no chunk at
            # all, and one cut short has no finish reason: both a broken gateway, worth a retry.
            if handled == 0:
                raise ProviderError(f"endpoint {self.endpoint.label}: the streamed response holds no "
                                    "completion (not an event stream?)", endpoint=self.endpoint.label, transient=True)
            # The snapshot, not ``get_final_completion``: that one refuses a length-cut answer,
            # which a list reader keeps item by item.
            from openai.types.chat import ChatCompletion

            snapshot = state.current_completion_snapshot
            if not snapshot.choices or snapshot.choices[0].finish_reason is None:
                raise ProviderError(f"endpoint {self.endpoint.label}: the streamed response stopped before "
                                    "its end", endpoint=self.endpoint.label, transient=True)
            completion = ChatCompletion.model_validate(snapshot.model_dump())
            if completion.usage is None:
                from openai.types import CompletionUsage

                prompt = estimate_tokens("".join(str(m.get("content", "")) for m in messages))
                completion.usage = CompletionUsage(prompt_tokens=prompt, completion_tokens=chunks,
                                                   total_tokens=prompt + chunks)
                completion.usage_estimated = True  # type: ignore[attr-defined]
            return completion

        async def call(timeout: float) -> Any:
            try:
                return await asyncio.wait_for(read(timeout), timeout)
            except TimeoutError:
                import httpx

                raise httpx.ReadTimeout("the streamed answer did not end within the timeout") from None

        return await self._reliably("chat", call)

    def logprobs_fields(self, wanted: bool) -> dict[str, Any]:
        """The request fields asking for token log-probabilities: none when not ``wanted`` or
        when this endpoint is known not to give them.

        ``top_logprobs`` is sent with ``logprobs``: llama-cpp-python's server (0.3) answers
        ``"logprobs": null`` to ``logprobs: true`` alone and only fills them when
        ``top_logprobs`` is set (measured); OpenAI accepts it as well. Nothing is probed: the
        first real call asks, and its answer (``logprobs_answered``) or refusal
        (``logprobs_refused``) is remembered for the endpoint, like the mode ladder.
        """
        if not wanted or self.state.logprobs is False:
            return {}
        return {"logprobs": True, "top_logprobs": 1}

    def logprobs_answered(self, choice: Any) -> bool:
        """Whether a chat choice carries token log-probabilities; the first answer to a call
        that asked for them settles what this endpoint does."""
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if self.state.logprobs is None:
            self.state.logprobs = bool(content)
        return bool(content)

    def logprobs_refused(self, exc: ProviderError, asked: bool) -> bool:
        """Whether ``exc`` is this endpoint refusing ``logprobs`` (a 4xx or 500 that names
        them: llama-cpp-python built with ``logits_all=False`` raises one, other gateways
        reject unknown fields). Remembered, so the caller retries once without and the
        endpoint is never asked again; any other error is not about log-probabilities."""
        if not asked or exc.status not in (400, 422, 500) or "logprob" not in str(exc).lower():
            return False
        self.state.logprobs = False
        return True

    async def served_model(self) -> str:
        """The model to name in requests: configured, or the first one ``/v1/models`` lists."""
        if self.endpoint.model:
            return self.endpoint.model
        if self.state.served_model is None:
            page = await self._reliably("models", lambda timeout: self.client.models.list(timeout=timeout))
            ids = [m.id for m in getattr(page, "data", []) if getattr(m, "id", None)]
            if not ids:
                raise ProviderError(
                    f"endpoint {self.endpoint.label}: /models lists no model; set EXTRACT_MODEL",
                    endpoint=self.endpoint.label, transient=False,
                )
            self.state.served_model = ids[0]
        return self.state.served_model


def _malformed(what: str, result: Any) -> str | None:
    """Why a 2xx answer is unusable, or None. openai returns the body text (a str) when the
    content type is not JSON, and a model with missing parts when the JSON is not a
    completion: both are a broken gateway, worth a retry."""
    if what == "chat":
        from openai.types.chat import ChatCompletion

        if not isinstance(result, ChatCompletion):
            return f"the response is not a chat completion (got {type(result).__name__}; wrong content type?)"
        if not result.choices or getattr(result.choices[0], "message", None) is None:
            return "the response has no choices"
    elif what == "models" and isinstance(result, str):
        return "the /models response is not JSON (wrong content type?)"
    return None


async def probe_grammar_mode(conn: Connection, mode: GrammarMode, model: str) -> dict[str, Any]:
    """Does the endpoint enforce ``mode``'s grammar field? One tiny call, remembered.

    The probe's grammar allows only ``PROBE_TEXT``: an answer equal to it shows the field
    enforced (the rung is credited); anything else shows it ignored, and a refusal (HTTP
    400, or a 500 naming the grammar) shows it unsupported; either way the rung is refused
    for this endpoint with the reason. Transient failures propagate (the attempt fails as
    any call would). Returns what the caller records: the answer, its usage, the verdict.
    """
    ladder = conn.state.grammar_ladder
    record: dict[str, Any] = {"mode": mode}
    try:
        resp = await conn.chat(
            model=model, messages=[{"role": "user", "content": "Reply with one word."}],
            max_tokens=8, temperature=0, extra_body=_PROBE_BODY[mode],
        )
    except ProviderError as exc:
        if not is_mode_rejection(exc):
            raise
        ladder.reject(mode, str(exc))
        return {**record, "enforced": False, "reason": str(exc)}
    content = (resp.choices[0].message.content or "").strip()
    usage = getattr(resp, "usage", None)
    record["usage"] = {"input_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
                       "output_tokens": int(getattr(usage, "completion_tokens", 0) or 0)}
    if content == PROBE_TEXT:
        conn.state.grammar_enforced.add(mode)
        return {**record, "enforced": True}
    reason = f"accepted but not enforced (the probe answered {content[:40]!r})"
    ladder.reject(mode, reason)
    return {**record, "enforced": False, "reason": reason}


async def detect_capabilities(
    endpoint: Endpoint, *, deadline: float | None = None, max_tokens: int = 24
) -> CapabilityLadder[Mode]:
    """Probe the ladder from the top with a tiny request per rung, until one is honoured.

    A rung counts only when the answer validates against the probe schema, so a server that
    silently ignores ``schema`` inside ``json_object`` is not credited with enforcing it.
    The result is remembered in the endpoint's state (the same ladder the native tier uses).
    """
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["probe-ok"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    messages = [{"role": "user", "content": 'Reply with a JSON object with the key "answer".'}]
    async with Connection(endpoint, deadline) as conn:
        ladder = conn.state.ladder
        model = await conn.served_model()
        while True:
            mode = ladder.current()
            if mode == "prompt":
                return ladder
            fmt = response_format_for(mode, schema, "probe")
            try:
                resp = await conn.chat(
                    model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                    response_format=fmt,
                )
            except ProviderError as exc:
                if is_mode_rejection(exc):
                    ladder.reject(mode, str(exc))
                    continue
                raise
            content = resp.choices[0].message.content or ""
            try:
                jsonschema.validate(json.loads(content), schema)
            except (ValueError, jsonschema.ValidationError):
                ladder.reject(mode, f"accepted but not enforced (answer {content[:60]!r})")
                continue
            ladder.confirm(mode)
            return ladder
