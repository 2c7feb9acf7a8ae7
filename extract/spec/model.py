"""The normalized ``Spec`` every tier receives, whatever the user passed.

A user may pass a Pydantic model class, a JSON Schema dict, a ``Regex`` or a ``Grammar``; ``compile_spec``
turns each into one frozen ``Spec`` carrying the JSON Schema (what servers and validators
see), the detected features (what the capability table is consulted with) and a digest of
its canonical form (what caches and reports key on). This module imports no tier.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

if TYPE_CHECKING:
    from extract.spec.grammar import Grammar

__all__ = ["Regex", "Spec", "SpecKind", "canonical_json"]

SpecKind = Literal["model", "schema", "regex", "grammar"]


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace: the same schema always hashes to the same digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Regex:
    """An output that must fully match a regular expression (Python ``re`` syntax)."""

    pattern: str
    name: str = "regex"

    def __post_init__(self) -> None:
        from extract.errors import ConfigError

        if not isinstance(self.pattern, str) or not self.pattern:
            raise ConfigError("Regex needs a non-empty pattern string")
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ConfigError(
                f"invalid regular expression {self.pattern!r}: {exc.msg} at position {exc.pos}"
            ) from None


@dataclass(frozen=True, eq=False)
class Spec:
    """What to extract, in the one shape every tier reads.

    ``schema`` is the JSON Schema as the user's spec defines it (Pydantic's own output for a
    model); it is the contract every value is validated against. ``features`` maps each
    feature name from the capability table to the JSON pointers where it occurs.
    """

    kind: SpecKind
    name: str
    schema: dict[str, Any] | None = None
    model: type[BaseModel] | None = None
    pattern: str | None = None
    grammar: Grammar | None = None
    features: dict[str, tuple[str, ...]] = field(default_factory=dict)
    digest: str = ""

    @property
    def is_json(self) -> bool:
        return self.kind in ("model", "schema")

    @staticmethod
    def digest_of(kind: str, payload: Any) -> str:
        return hashlib.sha256(f"{kind}:{canonical_json(payload)}".encode()).hexdigest()[:16]
