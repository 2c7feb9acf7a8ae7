"""Raw model text -> a validated value, or a structured reason why not.

Every tier sends every raw output through ``check``. Strict JSON that validates is returned
as generated. Anything that needed fixing first (code fences, prose around the JSON,
syntax repaired by ``json_repair``) is marked ``repaired`` with each repair named, so the
compliance report can tell "valid as generated" from "valid after repair". This module
imports no tier and no provider.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from extract.spec.compile import compile_spec
from extract.spec.model import Spec
from extract.types import AttemptError
from extract.validate.outcome import Checked
from extract.validate.repair import RepairFailure, repair_syntax

__all__ = ["Checked", "check", "parse_output", "validate_value"]


def validate_value(data: Any, spec: Spec) -> tuple[Any, AttemptError | None]:
    """Validate already-parsed data against ``spec``; Pydantic validators run here."""
    if spec.model is not None:
        try:
            return spec.model.model_validate(data), None
        except ValidationError as exc:
            details = [
                {"loc": list(e["loc"]), "type": e["type"], "msg": e["msg"]}
                for e in exc.errors(include_url=False, include_input=False)
            ]
            return None, AttemptError(
                type="schema_violation",
                message=f"{exc.error_count()} validation error(s): "
                + "; ".join(f"{'.'.join(map(str, d['loc'])) or '(root)'}: {d['msg']}" for d in details[:5]),
                details=details,
            )
    if spec.schema is not None:
        import jsonschema

        cls = jsonschema.validators.validator_for(spec.schema, default=jsonschema.Draft202012Validator)
        validator = cls(spec.schema, format_checker=cls.FORMAT_CHECKER, registry=_offline_registry())
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
        if errors:
            details = [
                {"loc": list(e.absolute_path), "type": str(e.validator), "msg": e.message}
                for e in errors
            ]
            return None, AttemptError(
                type="schema_violation",
                message=f"{len(errors)} validation error(s): "
                + "; ".join(f"{'/'.join(map(str, d['loc'])) or '(root)'}: {d['msg']}" for d in details[:5]),
                details=details,
            )
        return data, None
    raise ValueError(f"validate_value needs a JSON spec, got kind {spec.kind!r}")


def _offline_registry() -> Any:
    """A ``referencing`` registry that never fetches: a remote ``$ref`` reads as ``{}``.

    jsonschema's default would download ``https://...`` refs (with a deprecation warning);
    nothing here may leave the machine, and the local constraint cannot enforce them either
    (``extract.spec.enforceable`` records each as checked only as far as it can be).
    """
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    def retrieve(uri: str) -> Any:
        return Resource.from_contents({}, default_specification=DRAFT202012)

    return Registry(retrieve=retrieve)  # type: ignore[call-arg]


def _validate_model(data: Any, spec: Spec) -> tuple[Any, AttemptError | None, list[str]]:
    """Pydantic validation, strict first: a value that needed lax coercion is a repair.

    Strict JSON-mode validation accepts exactly what a JSON document of the schema's types
    holds (dates as strings, enums as values); only when it refuses and lax mode accepts
    ("42" for an int) was something coerced, and that is recorded as ``coerce_types``.
    """
    assert spec.model is not None
    repairs: list[str] = []
    try:
        return spec.model.model_validate_json(json.dumps(data), strict=True), None, repairs
    except (ValidationError, ValueError, TypeError):
        pass
    value, error = validate_value(data, spec)
    if error is None:
        repairs.append("coerce_types")
    return value, error, repairs


def parse_output(raw: str | None, spec: Any, *, truncated: bool = False) -> Checked:
    """Raw model text -> a validated value, or the recorded reason why not.

    ``spec`` is anything ``extract`` accepts: a Pydantic model class, a JSON Schema dict, a
    ``Regex``, a ``Grammar``, or an already compiled ``Spec`` (what the tiers pass).

    Steps, each recorded in ``repairs`` when it changed anything: strip fences and prose,
    ``json_repair`` for syntax (a cut text is closed only after its last complete value, as
    ``close_truncated``), Pydantic lax coercion (``coerce_types``), then field validators
    (Pydantic's, then guardrails-ai's with their ``on_fail`` mapped). Strict JSON that
    validates comes back as generated, with no repair. ``truncated`` says the generator stopped
    at its token limit: a failure is then reported as ``truncated``, because the cure differs
    (a bigger budget, not a better model), and a success counts as repaired, never as valid as
    generated (the repair closed what the limit cut): every tier gets that rule from here.
    """
    if not isinstance(spec, Spec):
        # compile_spec caches a model class per process and a dict per canonical form; a Regex
        # or a Grammar is only wrapped (a Grammar builds its parser once, on itself).
        spec = compile_spec(spec)
    checked = _parse(raw, spec, truncated)
    if truncated and checked.error is None:
        checked.repaired = True
    return checked


def _parse(raw: str | None, spec: Spec, truncated: bool) -> Checked:
    if raw is None or not raw.strip():
        return Checked(error=AttemptError(type="empty_output", message="the model returned no text"))
    if spec.kind == "grammar":
        from extract.validate.grammar_check import check_grammar
        return check_grammar(raw, spec, truncated=truncated)
    if spec.kind == "regex":
        return _check_regex(raw, spec, truncated)
    assert spec.schema is not None
    prefer = {"object": "{", "array": "["}.get(str(spec.schema.get("type")))
    try:
        syntax = repair_syntax(raw, prefer=prefer, truncated=truncated)
    except RecursionError:
        return Checked(error=AttemptError(type="invalid_json", message="nested too deeply to parse"))
    except RepairFailure as exc:
        kind = "truncated" if truncated and exc.type == "invalid_json" else exc.type
        return Checked(error=AttemptError(type=kind, message=exc.message
                                          + (", cut at the token limit" if truncated else "")),
                       repairs=exc.repairs)
    repairs = list(syntax.repairs)
    if spec.model is not None:
        value, error, coerced = _validate_model(syntax.data, spec)
        repairs += coerced
        if error is None:
            value, error, extra = _run_field_validators(value, spec)
            repairs += extra
    else:
        value, error = validate_value(syntax.data, spec)
    if error is not None and (truncated or syntax.truncated):
        error = AttemptError(type="truncated", message="cut before the end; " + error.message,
                             details=error.details)
    if error is not None:
        return Checked(error=error, repaired=bool(repairs), repairs=repairs)
    return Checked(value=value, repaired=bool(repairs), repairs=repairs)


def _run_field_validators(value: Any, spec: Spec) -> tuple[Any, AttemptError | None, list[str]]:
    """guardrails-ai validators on a Pydantic-valid value; a fix or filter is validated again."""
    from extract.validate.validators import run_validators

    outcome = run_validators(value)
    if outcome.error is not None:
        return None, outcome.error, outcome.repairs
    if not outcome.repairs:
        return value, None, []
    fixed, error = validate_value(outcome.data, spec)
    if error is not None:
        return None, AttemptError(type="validator_failed",
                                  message="the validator's fix does not validate: " + error.message,
                                  details=error.details), outcome.repairs
    return fixed, None, outcome.repairs


def _check_regex(raw: str, spec: Spec, truncated: bool) -> Checked:
    assert spec.pattern is not None
    if re.fullmatch(spec.pattern, raw):
        return Checked(value=raw)
    stripped = raw.strip()
    if stripped != raw and re.fullmatch(spec.pattern, stripped):
        return Checked(value=stripped, repaired=True, repairs=["strip_whitespace"])
    if truncated:  # a loop cut at the token limit: the longest full match before it (grammar_check)
        from extract.validate.grammar_check import cut_runaway

        pattern = spec.pattern

        def full_match(text: str) -> str:
            if re.fullmatch(pattern, text) is None:
                raise ValueError(text)
            return text

        cut = cut_runaway(raw, full_match)
        if cut is not None:
            return Checked(value=cut[1], repaired=True, repairs=["cut_runaway"])
    return Checked(
        error=AttemptError(
            type="truncated" if truncated else "regex_mismatch",
            message=f"output does not fully match /{spec.pattern}/: {raw[:80]!r}",
        )
    )


# Every tier calls ``check``; it is ``parse_output`` under the name the tiers already use.
check = parse_output
