"""The repair tier: ask the local model to correct the best earlier output, given its errors.

Last in the chain. Deterministic repair (``check``) already ran on every earlier output;
what is left is a value the schema rejects or a syntax no honest rule could fix. This tier
shows the model the document, the best earlier output (raw text, fewest errors) and the
validation errors, and decodes the answer under the same llguidance constraint as the local
tier, so the answer is schema-valid by construction and the model only has to get the values
right. At most ``repair_max_calls`` calls (1 or 2), each recorded as an Attempt; with
nothing to repair it records one skipped Attempt (``nothing_to_repair``) instead of raising.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from extract.providers.local_model import load_local_model
from extract.settings import Settings
from extract.spec import Spec, ensure_supported
from extract.spec.prompt import REPAIR_PROMPT_VERSION, build_repair_messages
from extract.tiers.base import MIN_OUTPUT_TOKENS, Spend, Task
from extract.tiers.local import LocalTier
from extract.types import Attempt, AttemptError, Usage
from extract.validate import check

__all__ = ["RepairTier", "best_attempt"]


def _error_count(attempt: Attempt) -> int:
    if attempt.error is None:
        return 0
    return max(1, len(attempt.error.details))


def best_attempt(history: list[Attempt]) -> Attempt | None:
    """The earlier attempt most worth repairing: it has output, and the fewest errors.

    Ties go to the later attempt (a later tier, or a reask, saw more feedback).
    """
    candidates = [a for a in history if not a.skipped and a.raw and a.raw.strip()]
    if not candidates:
        return None
    best = candidates[0]
    for a in candidates[1:]:
        if _error_count(a) <= _error_count(best):
            best = a
    return best


def _error_lines(attempt: Attempt) -> list[str]:
    if attempt.error is None:
        return []
    lines = []
    for d in attempt.error.details[:8]:
        loc = ".".join(str(p) for p in d.get("loc", [])) or "(root)"
        if "msg" in d:
            lines.append(f"{loc}: {d['msg']}")
    return lines or [attempt.error.message]


class RepairTier:
    """One or two constrained calls on the local model, starting from the best earlier output."""

    name = kind = "repair"
    remote = False
    endpoint_name = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The same constraint as the local tier, from the same code: repair decodes under
        # exactly what the local tier would, refuses exactly what it refuses, and is allowed
        # the same output tokens.
        self._local = LocalTier(settings)

    def unavailable(self) -> str | None:
        return None

    def spend(self, spec: Spec, text: str) -> Spend:
        # No call when nothing earlier has output; every call carries an earlier answer.
        return Spend(self._local.output_tokens(spec, text), min_calls=0,
                     max_calls=self.settings.repair_max_calls, reask_from_first=True)

    async def identity(self) -> list[Any]:
        return [self.name, *(await self._local.identity())[1:]]

    def check_support(self, spec: Spec) -> None:
        ensure_supported(spec.features, self.name)  # the capability table's row for repair
        self._local.check_support(spec)

    async def attempts(self, task: Task) -> list[Attempt]:
        source = best_attempt(task.history)
        if source is None or source.raw is None:
            return [Attempt(tier=self.name, skipped=True, error=AttemptError(
                type="nothing_to_repair",
                message="no earlier attempt produced output to repair",
            ))]
        model = await asyncio.to_thread(load_local_model, self.settings)
        grammar = self._local.grammar_for(task.spec, task.text)
        loop = asyncio.get_running_loop()
        out: list[Attempt] = []
        raw, errors = source.raw, _error_lines(source)
        for _ in range(self.settings.repair_max_calls):
            left = task.time_left()
            if left is not None and left <= 0:
                break
            prompt = model.render(build_repair_messages(task.spec, task.text, raw, errors))
            room = model.n_ctx - model.count_tokens(prompt)
            if room < MIN_OUTPUT_TOKENS:
                out.append(Attempt(tier=self.name, prompt_version=REPAIR_PROMPT_VERSION, error=AttemptError(
                    type="context_full",
                    message=f"the repair prompt leaves {room} tokens of {model.n_ctx} for the answer",
                )))
                break
            budget = self._local.output_tokens(task.spec, task.text, room)
            started = time.perf_counter()
            gen = await loop.run_in_executor(model.executor, model.generate, prompt, grammar, budget)
            truncated = gen.finish_reason == "length"
            checked = check(gen.text, task.spec, truncated=truncated)
            attempt = Attempt(
                tier=self.name,
                model=model.info,
                prompt_version=REPAIR_PROMPT_VERSION,
                raw=gen.text,
                value=checked.value if checked.ok else None,
                error=checked.error,
                usage=Usage.of(gen.input_tokens, gen.output_tokens),
                latency_s=time.perf_counter() - started,
                # A repair tier's output is by definition not valid as first generated.
                repaired=True,
                repairs=["llm_repair", *checked.repairs],
                finish_reason=gen.finish_reason,
                meta={"repairing": source.tier, "source_errors": len(errors), "max_tokens": budget},
            )
            out.append(attempt)
            if attempt.ok:
                break
            raw, errors = gen.text, _error_lines(attempt)
        return out
