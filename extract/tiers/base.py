"""The one small protocol every tier implements, and the task it is handed.

A new tier is one module that defines a class with ``name``, ``unavailable()`` and
``attempts()``, plus one line in ``extract.tiers.REGISTRY``. This module must not import a
concrete tier or provider.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from extract.settings import Settings
from extract.spec import Spec
from extract.types import Attempt

if TYPE_CHECKING:
    from extract.examples import Example

__all__ = ["Task", "Tier"]


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
    examples: list[Example] = field(default_factory=list)

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

    name: str

    def unavailable(self) -> str | None:
        """Why this tier cannot run with the current settings, or None when it can."""
        ...

    def check_support(self, spec: Spec) -> None:
        """Raise ``UnsupportedSchema`` naming the feature when the tier cannot honour ``spec``."""
        ...

    async def attempts(self, task: Task) -> list[Attempt]:
        ...
