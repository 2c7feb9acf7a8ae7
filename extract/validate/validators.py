"""guardrails-ai validators attached to Pydantic fields, run offline, their on_fail mapped to ours.

A user attaches a guardrails validator to a field with ``Annotated``::

    from guardrails_ai.valid_range import ValidRange
    class Order(BaseModel):
        qty: Annotated[int, ValidRange(min=1, max=99, on_fail="fix")]

Why we apply ``on_fail`` ourselves instead of letting a ``Guard`` do it: guardrails 0.11's
``Guard.for_pydantic`` ignores validators in ``Annotated`` metadata (measured: a value out of
range passed), does not run Pydantic's own validators, and with ``on_fail="reask"`` and no
LLM it silently applies the fix value - a pass we must never report. So each validator runs
through guardrails' validator API (``Validator.validate``, the validator's own code from its
PyPI package), and its ``FailResult`` is mapped:

- ``fix``: the fix value replaces the field, recorded as the repair ``guardrails_fix:<field>``;
  the whole object is validated again, so a fix the schema rejects is a failure;
- ``filter``: the field is removed (recorded ``guardrails_filter:<field>``) and the object is
  validated again: an optional field becomes its default, a required one fails;
- ``exception``, ``refrain``, ``noop``, ``custom``: a recorded failure (``validator_failed``);
- ``reask`` (and ``fix_reask``'s second failure): a recorded failure (``validator_reask``)
  whose message carries the validator's error, which the chain's next tier sees. Never a pass.

guardrails is imported only when a spec carries one of its validators (the import takes
seconds), with its telemetry off: ``OTEL_SDK_DISABLED`` and the rc's ``enable_metrics``. We
never call ``guardrails configure`` (it needs the network).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from extract.types import AttemptError

__all__ = ["FieldValidator", "ValidatorOutcome", "field_validators", "run_validators"]


@dataclass(frozen=True)
class FieldValidator:
    """One guardrails validator on one top-level field of a Pydantic model."""

    field: str
    validator: Any

    @property
    def name(self) -> str:
        return str(getattr(self.validator, "rail_alias", type(self.validator).__name__))

    @property
    def on_fail(self) -> str:
        descriptor = getattr(self.validator, "on_fail_descriptor", "exception")
        return str(getattr(descriptor, "value", descriptor)).lower()


@dataclass
class ValidatorOutcome:
    """What the validators did: the (possibly fixed or filtered) data, repairs, or an error."""

    data: dict[str, Any]
    repairs: list[str] = field(default_factory=list)
    error: AttemptError | None = None


def _is_guardrails_validator(obj: Any) -> bool:
    return any(c.__module__.startswith("guardrails.") and c.__name__ == "Validator"
               for c in type(obj).__mro__)


def field_validators(model: type[BaseModel]) -> list[FieldValidator]:
    """The guardrails validators in ``model``'s own field metadata, in field order.

    Detected by class ancestry, without importing guardrails: specs that use none never pay
    for the import.
    """
    found: list[FieldValidator] = []
    for name, info in model.model_fields.items():
        for meta in info.metadata:
            if _is_guardrails_validator(meta):
                found.append(FieldValidator(name, meta))
    return found


def _quiet_guardrails() -> None:
    """Telemetry off before guardrails does anything: it exports traces by default."""
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
    from guardrails.settings import settings

    settings.rc.enable_metrics = False


def run_validators(instance: BaseModel) -> ValidatorOutcome:
    """Run every guardrails validator on a Pydantic-valid ``instance``, nested models included.

    Returns the data to validate again (when a fix or filter changed it), the repairs made, or
    the error that ends this attempt. A validator on a nested model is run too: one we skipped
    would be a silent pass.
    """
    data = instance.model_dump(mode="python")
    repairs: list[str] = []
    error = _walk(instance, data, [], repairs)
    return ValidatorOutcome(data, repairs, error)


def _walk(instance: BaseModel, data: dict[str, Any], path: list[str | int],
          repairs: list[str]) -> AttemptError | None:
    attached = field_validators(type(instance))
    if attached:
        _quiet_guardrails()
    for fv in attached:
        error = _apply(fv, data, path, repairs)
        if error is not None:
            return error
    for name in type(instance).model_fields:
        if name not in data:
            continue
        value = getattr(instance, name)
        items: list[tuple[str | int, BaseModel, Any]] = (
            [(name, value, data)] if isinstance(value, BaseModel) else []
        )
        if isinstance(value, (list, tuple)) and isinstance(data[name], list):
            items = [(i, v, data[name]) for i, v in enumerate(value) if isinstance(v, BaseModel)]
            sub_path: list[str | int] = [*path, name]
        else:
            sub_path = path
        for key, sub, holder in items:
            child = holder[key]
            if isinstance(child, dict):
                error = _walk(sub, child, [*sub_path, key], repairs)
                if error is not None:
                    return error
    return None


def _apply(fv: FieldValidator, data: dict[str, Any], path: list[str | int],
           repairs: list[str]) -> AttemptError | None:
    """One validator on one field of ``data`` (in place), its on_fail mapped to ours."""
    if fv.field not in data or data[fv.field] is None:  # an absent optional value: nothing to check
        return None
    loc = [*path, fv.field]
    where = ".".join(str(p) for p in loc)
    value = data[fv.field]
    try:
        result = fv.validator.validate(value, {})
    except Exception as exc:  # a validator's own bug must not pass the value
        return AttemptError(
            type="validator_failed",
            message=f"{where}: validator {fv.name} raised {type(exc).__name__}: {exc}",
            details=[{"loc": loc, "validator": fv.name, "on_fail": fv.on_fail}],
        )
    if not _failed(result):
        return None
    detail = {"loc": loc, "validator": fv.name, "on_fail": fv.on_fail, "msg": result.error_message}
    policy = fv.on_fail
    if policy in ("fix", "fix_reask") and result.fix_value is not None:
        if policy == "fix_reask" and _failed(fv.validator.validate(result.fix_value, {})):
            return _reask(where, fv, result, detail)
        data[fv.field] = result.fix_value
        repairs.append(f"guardrails_fix:{where}")
        return None
    if policy == "filter":
        del data[fv.field]
        repairs.append(f"guardrails_filter:{where}")
        return None
    if policy in ("reask", "fix", "fix_reask"):
        return _reask(where, fv, result, detail)
    return AttemptError(
        type="validator_failed",
        message=f"{where}: {result.error_message} (guardrails {fv.name}, on_fail={policy})",
        details=[detail],
    )


def _failed(result: Any) -> bool:
    """A FailResult, told by its outcome: validator packages bring their own FailResult class
    (``guardrails_ai.types``), not guardrails' own, so ``isinstance`` would miss them."""
    outcome = getattr(result, "outcome", None)
    return str(getattr(outcome, "value", outcome)).lower() == "fail"


def _reask(where: str, fv: FieldValidator, result: Any, detail: dict[str, Any]) -> AttemptError:
    return AttemptError(
        type="validator_reask",
        message=f"{where}: {result.error_message} (guardrails {fv.name} asks for another attempt)",
        details=[detail],
    )
