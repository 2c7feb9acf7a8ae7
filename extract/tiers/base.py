"""The one small protocol every tier implements, the task it is handed, and what it declares.

A new tier is one module that defines a class with ``name``, ``unavailable()`` and
``attempts()`` and its declaration (``kind``, ``remote``, ``endpoint_name``, ``spend()``,
``identity()``), plus one line in ``extract.tiers.REGISTRY``. The runtime (budget,
observability, chunking, cache) and ``extract check`` read the declaration instead of keeping
their own copy of a tier's rules. ``split_tier_name`` is the one reader of ``tier@endpoint``,
``output_token_limit`` the one output-token rule. This module must not import a concrete tier
or provider.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from extract.settings import Settings
from extract.spec import Spec, max_output_chars
from extract.spec.prompt import Example
from extract.types import Attempt

__all__ = ["MIN_OUTPUT_TOKENS", "Spend", "Task", "Tier", "answer_listener", "output_reserve", "output_token_limit",
           "prompt_fits", "split_tier_name"]

# The smallest room an answer needs: below this many free tokens, the context is full.
MIN_OUTPUT_TOKENS = 16
# A token is at least one byte, so the longest instance in characters always suffices; the
# slack covers a tokenizer's end-of-text and a closing merge.
OUTPUT_SLACK_TOKENS = 8
# A regular expression or a CFG has no length bound of its own.
UNBOUNDED_OUTPUT_TOKENS = 256
# Set by a caller that reads answers as they are written (``extract.runtime.lists``) around
# one chain call; the chain hands it to each tier as ``Task.on_text``. A context variable, so
# that what sits between (cache, chunking, budget, logs) need not pass it along.
answer_listener: ContextVar[Callable[[str], None] | None] = ContextVar("answer_listener", default=None)


def split_tier_name(name: str) -> tuple[str, str | None]:
    """``"native@backup"`` -> ``("native", "backup")``; ``"local"`` -> ``("local", None)``."""
    kind, at, endpoint = name.partition("@")
    return kind, (endpoint if at else None)


def output_token_limit(settings: Settings, constraint: dict[str, Any] | str | None, room: int) -> int:
    """The output-token limit of one call: ``max_tokens`` when set; else the longest instance
    of ``constraint`` plus 8 (256 when there is no JSON bound), at most ``room``, at least 16."""
    if settings.max_tokens is not None:
        return settings.max_tokens
    bound = UNBOUNDED_OUTPUT_TOKENS if constraint is None else max_output_chars(constraint) + OUTPUT_SLACK_TOKENS
    return max(MIN_OUTPUT_TOKENS, min(bound, room))


def output_reserve(settings: Settings, context: int) -> int:
    """The output room a prompt must leave free in ``context`` to count as fitting:
    ``max_tokens`` when set, else a quarter of the context (at least 16)."""
    return settings.max_tokens or max(MIN_OUTPUT_TOKENS, context // 4)


def prompt_fits(prompt_tokens: int, context: int, settings: Settings) -> bool:
    """Whether a prompt of ``prompt_tokens`` (the task, the schema, every worked example shown
    and the text, as the model's tokenizer counts them, or as estimated for a remote model)
    leaves ``output_reserve`` free: the one rule that chunking, truncation and list
    extraction size prompts by."""
    return prompt_tokens + output_reserve(settings, context) <= context


@dataclass(frozen=True)
class Spend:
    """What one tier may spend on one extraction, as the tier itself declares it.

    ``output_tokens`` is the limit of each call (before a local prompt takes its share of the
    context); ``min_calls``/``max_calls`` bound the model calls; with ``reask_from_first``
    every call, the first included, carries an earlier answer and its errors (repair).
    """

    output_tokens: int
    min_calls: int = 1
    max_calls: int = 1
    reask_from_first: bool = False


@dataclass
class Task:
    """What a tier is asked to do: fill ``spec`` from ``text``.

    ``history`` holds the attempts earlier tiers made in this chain, so a later tier (repair)
    can start from the best earlier output. ``deadline`` is a ``time.monotonic()`` value after
    which a tier should stop issuing calls.
    """

    text: str
    spec: Spec
    settings: Settings
    history: list[Attempt] = field(default_factory=list)
    deadline: float | None = None
    truncated_input: bool = False
    # Worked examples chosen for this text from the Extractor's pool (extract.examples); every
    # tier shows the same ones, so tiers differ by model and constraint, not by prompt.
    # Every worked example shown, the schema's own first (extract.examples.shown_examples),
    # validated once before the task is built: prompts use them as given.
    examples: list[Example] = field(default_factory=list)
    # Who reads the answer as it is written (``extract_iter``: an item is yielded once its
    # element is complete): a tier that can stream calls it with the whole raw answer so far,
    # from any thread, a new attempt's answer starting afresh. None: nobody listens, and no
    # tier pays for streaming. The chain leaves it out where the text sent is not the caller's
    # (PII redacted for a remote tier): the answer would hold placeholders, not the values.
    on_text: Callable[[str], None] | None = None

    def time_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


@runtime_checkable
class Tier(Protocol):
    """One way of getting a value out of a model.

    ``attempts`` returns every attempt it made, in order (Instructor's reasks are several);
    the chain stops at the first attempt with no error. Bad model output is an Attempt with
    an error, never an exception. ``UnsupportedSchema`` and ``ConfigError`` may be raised:
    the caller must act on those.
    """

    name: str  # ``kind`` or ``kind@endpoint``
    kind: str  # its line in the registry
    remote: bool  # talks to an endpoint: priced, PII-redacted, sized by remote_context_tokens
    endpoint_name: str | None  # the endpoint it names (None: the default one, or none at all)

    def spend(self, spec: Spec, text: str) -> Spend:
        """The calls and output tokens one extraction of ``spec`` from ``text`` may take."""
        ...

    async def identity(self) -> list[Any]:
        """Which model answers (weights digest, or endpoint and served model): for the cache key."""
        ...

    def unavailable(self) -> str | None:
        """Why this tier cannot run with the current settings, or None when it can."""
        ...

    def check_support(self, spec: Spec) -> None:
        """Raise ``UnsupportedSchema`` naming the feature when the tier cannot honour ``spec``."""
        ...

    async def attempts(self, task: Task) -> list[Attempt]:
        ...
