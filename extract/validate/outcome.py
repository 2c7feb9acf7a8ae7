"""The outcome of checking one raw output: a value, or the recorded reason why not.

Its own module so that ``check`` and ``grammar_check`` (which ``check`` dispatches to) both
use it without importing each other. Imports only ``extract.types``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from extract.types import AttemptError

__all__ = ["Checked"]


@dataclass
class Checked:
    """The outcome of checking one raw output."""

    value: Any = None
    error: AttemptError | None = None
    repaired: bool = False
    repairs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None
