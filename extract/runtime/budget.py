"""A spending cap in tokens and/or dollars, held by one Extractor and shared by all its texts.

Before a tier runs, the chain reserves that tier's worst case (``worst_case``: every call it
may make, each with the whole prompt and the whole output allowance); when the reservation
does not fit under the cap, the tier is not run and gets a skipped Attempt with error type
``budget``. After the tier, the reservation is replaced by what the server reported
(reserve-then-settle), so concurrent extractions never commit more than the cap between them.

The worst case counts a prompt at 2 UTF-8 bytes per token. BPE tokenizers average about 4 on
English (SmolLM2: 4.3 on the shared data); a text that tokenizes worse than 2 bytes per token
(some CJK text) can make a call cost more than reserved. Such an overrun is charged when it is
settled, so the calls that follow stop. Calls whose answer was lost to a transport fault
report no usage; each retried HTTP call is charged at its worst case.

The lock is a ``threading.Lock``, not an ``asyncio.Lock``: the critical sections never await,
and one Extractor may be driven from several event loops (``run`` from notebook threads), which
an ``asyncio.Lock`` (bound to one loop) does not allow.

What a tier may spend (its calls, the output tokens of each, whether it is remote and which
endpoint it names) is the tier's own declaration (``Tier.spend``, ``extract.tiers.base``): this
module keeps no copy of a tier's rules and imports no concrete tier.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from extract.errors import ConfigError
from extract.settings import Price, Settings
from extract.spec import Spec
from extract.spec.prompt import Example, build_messages
from extract.tiers.base import Tier
from extract.types import Attempt, AttemptError

__all__ = ["Budget", "Hold", "budget_skip", "price_for", "worst_case"]

# Bytes per token assumed when reserving (see the module docstring), and per-message template
# overhead in tokens (role markers; SmolLM2's template adds 5 per message).
_BYTES_PER_TOKEN = 2
_TEMPLATE_TOKENS = 16
# A reask appends the previous answer and the validation errors; this bounds the errors.
_REASK_TOKENS = 256


def price_for(settings: Settings, endpoint: str | None, model: str | None) -> Price | None:
    """The price of a remote call: by endpoint name, then model name, then ``"*"``."""
    for key in (endpoint, model, "*"):
        if key and key in settings.prices:
            return settings.prices[key]
    return None


def worst_case(
    tier: Tier, settings: Settings, spec: Spec, text: str, examples: Sequence[Example] = ()
) -> tuple[int, float]:
    """The most tokens and dollars ``tier`` can spend on ``text``: (tokens, usd)."""
    messages = build_messages(spec, text, examples)
    prompt_bytes = sum(len(m["content"].encode("utf-8")) for m in messages)
    prompt = prompt_bytes // _BYTES_PER_TOKEN + _TEMPLATE_TOKENS * len(messages)
    spend = tier.spend(spec, text)
    out = spend.output_tokens
    tokens_in = tokens_out = 0
    for i in range(spend.max_calls):
        # Every reask (and a repair call) carries an earlier answer and its errors.
        tokens_in += prompt + (i + spend.reask_from_first) * (out + _REASK_TOKENS)
        tokens_out += out
    usd = 0.0
    if tier.remote:
        endpoint = tier.endpoint_name
        ep = settings.endpoints.get(endpoint) if endpoint else None
        price = price_for(settings, endpoint or "default", (ep.model if ep else None) or settings.model)
        if price is not None:
            usd = (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) / 1e6
    return tokens_in + tokens_out, usd


@dataclass
class Hold:
    """One tier's reservation: released and replaced by its actual spend at settle time."""

    tokens: int
    usd: float


class Budget:
    """Tokens and dollars spent and reserved against the caps of one Extractor's settings."""

    def __init__(self, tokens: int | None, usd: float | None) -> None:
        self.tokens_cap = tokens
        self.usd_cap = usd
        self.spent_tokens = 0
        self.spent_usd = 0.0
        self.reserved_tokens = 0
        self.reserved_usd = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, tiers: Sequence[Tier]) -> Budget:
        """The Extractor's budget; a dollar cap with an unpriced remote tier is a ConfigError."""
        if settings.budget_usd is not None:
            for tier in tiers:
                if not tier.remote:
                    continue
                endpoint = tier.endpoint_name or "default"
                ep = settings.endpoints.get(endpoint)
                if price_for(settings, endpoint, (ep.model if ep else None) or settings.model) is None:
                    raise ConfigError(
                        f"budget_usd is set but tier {tier.name!r} has no price: add prices[{endpoint!r}] "
                        "(or the model's name, or '*') with input_per_mtok/output_per_mtok"
                    )
        return cls(settings.budget_tokens, settings.budget_usd)

    @property
    def capped(self) -> bool:
        return self.tokens_cap is not None or self.usd_cap is not None

    def reserve(self, tokens: int, usd: float) -> Hold | None:
        """Hold ``tokens``/``usd`` if spent + held + this stays within both caps, else None."""
        with self._lock:
            if self.tokens_cap is not None and self.spent_tokens + self.reserved_tokens + tokens > self.tokens_cap:
                return None
            if self.usd_cap is not None and self.spent_usd + self.reserved_usd + usd > self.usd_cap:
                return None
            self.reserved_tokens += tokens
            self.reserved_usd += usd
            return Hold(tokens, usd)

    def settle(self, hold: Hold, tokens: int, usd: float) -> None:
        """Release ``hold`` and charge what was actually spent."""
        with self._lock:
            self.reserved_tokens -= hold.tokens
            self.reserved_usd -= hold.usd
            self.spent_tokens += tokens
            self.spent_usd += usd

    def describe(self) -> str:
        parts = []
        if self.tokens_cap is not None:
            parts.append(f"{self.spent_tokens} of {self.tokens_cap} tokens spent, {self.reserved_tokens} held")
        if self.usd_cap is not None:
            parts.append(f"${self.spent_usd:.6f} of ${self.usd_cap:.6f} spent, ${self.reserved_usd:.6f} held")
        return "; ".join(parts)


def budget_skip(tier: str, tokens: int, usd: float, budget: Budget) -> Attempt:
    """The skipped Attempt of a tier the budget could not cover."""
    return Attempt(
        tier=tier,
        skipped=True,
        error=AttemptError(
            type="budget",
            message=f"not run: its worst case ({tokens} tokens, ${usd:.6f}) does not fit the budget "
            f"({budget.describe()})",
            details=[{"worst_tokens": tokens, "worst_usd": usd}],
        ),
    )
