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
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from extract.spec.model import Spec
from extract.types import AttemptError

__all__ = ["Checked", "check", "validate_value"]


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


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)\n?```", re.DOTALL)


def _strip_wrapping(raw: str) -> tuple[str, list[str]]:
    """Remove code fences and prose around the outermost JSON value."""
    repairs: list[str] = []
    text = raw
    m = _FENCE.search(text)
    if m:
        text = m.group(1)
        repairs.append("strip_code_fence")
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if starts:
        start = min(starts)
        closer = "}" if text[start] == "{" else "]"
        end = text.rfind(closer)
        inner = text[start : end + 1] if end > start else text[start:]
        if inner.strip() != text.strip():
            repairs.append("strip_surrounding_text")
        text = inner
    return text, repairs


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
        validator = cls(spec.schema, format_checker=cls.FORMAT_CHECKER)
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


def check(raw: str | None, spec: Spec, *, truncated: bool = False) -> Checked:
    """Parse, repair if needed, and validate ``raw`` against ``spec``.

    ``truncated`` says the generator stopped at its token limit; a parse failure is then
    reported as ``truncated`` rather than ``invalid_json``, because the cure differs (a
    bigger budget, not a better model).
    """
    if raw is None or not raw.strip():
        return Checked(error=AttemptError(type="empty_output", message="the model returned no text"))
    if spec.kind == "regex":
        assert spec.pattern is not None
        if re.fullmatch(spec.pattern, raw):
            return Checked(value=raw)
        stripped = raw.strip()
        if stripped != raw and re.fullmatch(spec.pattern, stripped):
            return Checked(value=stripped, repaired=True, repairs=["strip_whitespace"])
        return Checked(
            error=AttemptError(
                type="truncated" if truncated else "regex_mismatch",
                message=f"output does not fully match /{spec.pattern}/: {raw[:80]!r}",
            )
        )
    repairs: list[str] = []
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as first:
        text, repairs = _strip_wrapping(raw)
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            import json_repair

            fixed = json_repair.loads(text)
            empty = isinstance(fixed, (dict, list)) and not fixed and text.strip() not in ("{}", "[]")
            if fixed in ("", None) or empty:
                return Checked(
                    error=AttemptError(
                        type="truncated" if truncated else "invalid_json",
                        message=f"not JSON ({first.msg} at char {first.pos})"
                        + (", cut at the token limit" if truncated else ""),
                    ),
                    repairs=repairs,
                )
            data = fixed
            repairs.append("json_repair_truncated" if truncated else "json_repair")
    value, error = validate_value(data, spec)
    if error is not None and truncated:
        error = AttemptError(type="truncated", message="cut at the token limit; " + error.message,
                             details=error.details)
    return Checked(value=value, error=error, repaired=bool(repairs), repairs=repairs)
