"""The records every part of the chain produces and every report consumes.

These are plain Pydantic models so that a ``Result`` serialises to JSON losslessly (the
benchmark writes one row per ``Attempt``) and reports can be rebuilt from those rows. This
module imports nothing from the rest of the package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Attempt", "AttemptError", "Chunk", "FieldGrounding", "FieldScores", "ModelInfo", "Result", "SpanQuery",
           "SpanStart", "Usage"]


@dataclass(frozen=True)
class SpanStart:
    """Where candidate spans of a field start: the text from there, and the lengths
    (characters) at which a candidate may end (``extract.spec.span_select``)."""

    offset: int
    segment: str
    ends: tuple[int, ...]


@dataclass(frozen=True)
class SpanQuery:
    """One field for a local model to score: its path, the JSON an answer would begin with
    before its value (``{"street":{"name":``), whether ``null`` is allowed, and where its
    candidates start. Passed from the spec layer to the model, so it lives here."""

    path: tuple[str, ...]
    lead: str
    nullable: bool
    starts: tuple[SpanStart, ...]


@dataclass
class FieldScores:
    """Log-probabilities a model gave one field: ``null`` (None: not allowed), and each scored
    span ``(start, end) -> score`` (opening quote, the span's tokens, a closing quote)."""

    null: float | None
    spans: dict[tuple[int, int], float] = field(default_factory=dict)


class Usage(BaseModel):
    """Tokens spent; ``total_tokens`` is kept explicit because providers report it.

    ``cost_usd`` is set by ``extract.runtime.observability.price`` from ``Settings.prices``: None means
    "no price known" (not free), so a sum stays None only when nothing in it was priced.
    """

    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = None

    def __add__(self, other: Usage) -> Usage:
        costs = [c for c in (self.cost_usd, other.cost_usd) if c is not None]
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            cost_usd=sum(costs) if costs else None,
        )

    @classmethod
    def of(cls, input_tokens: int, output_tokens: int) -> Usage:
        return cls(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        )


class ModelInfo(BaseModel):
    """Which model produced an attempt: a name and, for local files, a digest of the weights.

    The digest ties a figure in a report to the exact file, not to a name that may be reused.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    digest: str | None = None
    backend: str | None = None
    # llama.cpp only: whether the weights were loaded into extra buffer types (CPU repack,
    # AMX); results stay tied to how the model ran. None for remote and transformers models.
    extra_buffers: bool | None = None


class AttemptError(BaseModel):
    """Why an attempt did not yield a valid value.

    ``type`` is a stable cause used for counting in reports (``invalid_json``,
    ``schema_violation``, ``truncated``, ``regex_mismatch``, ``provider_error``, ...).
    ``details`` holds structured detail such as Pydantic's error list.
    """

    model_config = ConfigDict(frozen=True)

    type: str
    message: str
    details: list[dict[str, Any]] = Field(default_factory=list)


GroundingStatus = Literal["exact", "normalized", "fuzzy", "not_found"]


class FieldGrounding(BaseModel):
    """Where one leaf value of a result stands in the caller's text, and how sure the model was.

    ``spans`` are ``(start, end)`` offsets into the exact string the caller passed (Python
    ``str`` indices), several when the value is assembled from words that are apart.
    ``status``: ``exact`` (the value as written), ``normalized`` (equal up to case,
    accents, whitespace and punctuation), ``fuzzy`` (``score`` below 1) or ``not_found`` (likely
    invented). ``confidence`` is the model's own probability for the value (calibrated when a
    calibration is loaded; ``raw_confidence`` is the uncalibrated one), None where the tier
    exposes no probabilities. ``withheld``: the value
    was replaced by null because its confidence was under ``abstain_below``.
    """

    path: str
    value: Any = None
    spans: list[tuple[int, int]] = Field(default_factory=list)
    status: GroundingStatus = "not_found"
    score: float | None = None
    confidence: float | None = None
    raw_confidence: float | None = None
    needs_review: bool = False
    withheld: bool = False
    # Another leaf of the same result claims some of the same characters: at most one of
    # them is likely right (a calibration fits contested values apart).
    contested: bool = False


class Attempt(BaseModel):
    """One try by one tier: what was asked, what came back, and what it cost."""

    tier: str
    model: ModelInfo | None = None
    prompt_version: str | None = None
    raw: str | None = None
    value: Any = None
    error: AttemptError | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    repaired: bool = False
    repairs: list[str] = Field(default_factory=list)
    truncated_input: bool = False
    finish_reason: str | None = None
    skipped: bool = False
    meta: dict[str, Any] = Field(default_factory=dict)
    # The winning attempt's value, leaf by leaf, located in the input (extract.validate.grounding).
    fields: list[FieldGrounding] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.skipped

    @property
    def input_tokens(self) -> int:
        return self.usage.input_tokens

    @property
    def output_tokens(self) -> int:
        return self.usage.output_tokens

    @property
    def cost_usd(self) -> float | None:
        return self.usage.cost_usd


class Chunk(BaseModel):
    """One piece of a text too long for the context: its span in the text and its own Result."""

    start: int
    end: int
    result: Result


class Result(BaseModel):
    """The outcome of one extraction: the value (if any tier succeeded) and every attempt.

    ``value`` holds the validated object (a Pydantic instance, a dict for a JSON Schema spec,
    a string for a regex). ``tier`` names the tier whose attempt won.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    value: Any = None
    tier: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    # A chunked text (extract.runtime.chunking): every chunk with its span, and each scalar the chunks
    # disagreed on ({"path", "chosen", "values": [{"chunk", "value"}]}).
    chunks: list[Chunk] = Field(default_factory=list)
    conflicts: list[dict[str, Any]] = Field(default_factory=list)
    # A list extraction (extract.runtime.lists, ``Extractor.run_all``): every span of the text an
    # item was read from or failed at, in text order ({"start", "end", "status": "ok" |
    # "rejected" | "failed" | "empty", "window", "pass", "error"?}); the "ok" entries line up
    # with ``value``; ``empty``: read, and no item found there.
    items: list[dict[str, Any]] = Field(default_factory=list)
    # Served from the result cache (extract.runtime.cache): no model was called for this Result.
    cache_hit: bool = False
    # Every leaf of ``value`` with its spans in the caller's text and its confidence.
    fields: list[FieldGrounding] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.tier is not None

    @property
    def cost_usd(self) -> float | None:
        return self.usage.cost_usd

    @property
    def usage(self) -> Usage:
        total = Usage()
        for attempt in self.attempts:
            total = total + attempt.usage
        return total

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, the validated value dumped in JSON mode."""
        value = self.value
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        elif isinstance(value, list):
            value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
        return {
            "ok": self.ok,
            "tier": self.tier,
            "value": value,
            "usage": self.usage.model_dump(),
            "attempts": [a.model_dump(mode="json") for a in self.attempts],
            **({"chunks": [{"start": c.start, "end": c.end, "ok": c.result.ok, "tier": c.result.tier}
                           for c in self.chunks],
                "conflicts": self.conflicts} if self.chunks else {}),
            **({"items": self.items} if self.items else {}),
            **({"cache_hit": True} if self.cache_hit else {}),
            **({"fields": [f.model_dump(mode="json") for f in self.fields]} if self.fields else {}),
        }


Chunk.model_rebuild()
