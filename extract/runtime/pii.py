"""PII redaction for remote tiers: placeholders out, originals back in the validated value.

With ``Settings.redact_pii`` the chain replaces emails, phone numbers, payment card numbers
and IBANs in the text with placeholders before a REMOTE tier (native, instructor) sees it, and
puts the originals back into that tier's values, which are then validated again against the
spec. The local tiers (local, repair) run on this machine and see the original text.

Detection is deliberately conservative where a checksum exists: a card number must pass the
Luhn check and an IBAN the ISO 13616 mod-97 check, so an order number or a date is not taken
for one. Phone numbers have no checksum; a run of digits counts as one when it starts with
``+`` or holds 9 to 15 digits (an ISO date has 8, a year or a postcode fewer). An email
placeholder is itself a valid address (``pii-email-1@redacted.invalid``, RFC 2606's reserved
TLD) so an ``EmailStr`` field validates on the remote side too.

This module imports nothing from the rest of the package except the records it rewrites.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

__all__ = ["Redaction", "iban_ok", "luhn_ok", "redact_pii", "restore"]

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# Not right after a four-character group: that is the tail of an IBAN (or a card) that failed its check.
_PHONE = re.compile(
    r"(?<![\w+])(?<![A-Z0-9]{4} )(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,5}(?![\w])"
)
_EMAIL_PLACEHOLDER = "pii-email-{n}@redacted.invalid"
_PLACEHOLDER = re.compile(r"\[(?:PHONE|CARD|IBAN)_\d+\]|pii-email-\d+@redacted\.invalid")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number carries (ISO/IEC 7812)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, mod 97 == 1."""
    s = iban.replace(" ", "").upper()
    if not (15 <= len(s) <= 34 and s[:2].isalpha() and s[2:4].isdigit() and s.isalnum()):
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


@dataclass(frozen=True)
class Redaction:
    """The text as a remote tier sees it, and how to undo it (placeholder -> original).

    ``counts`` (per kind) is safe to record; ``mapping`` holds the PII itself and must never
    be logged or put on an Attempt.
    """

    text: str
    mapping: dict[str, str] = field(default_factory=dict, repr=False)
    counts: dict[str, int] = field(default_factory=dict)


def redact_pii(text: str) -> Redaction:
    """Replace emails, IBANs, card numbers and phone numbers (in that order) with placeholders.

    The same original always gets the same placeholder, so a value the text repeats stays one
    value in the output.
    """
    mapping: dict[str, str] = {}
    by_original: dict[str, str] = {}
    counts: dict[str, int] = {}

    def placeholder(kind: str, original: str) -> str:
        if original in by_original:
            return by_original[original]
        counts[kind] = counts.get(kind, 0) + 1
        n = counts[kind]
        ph = _EMAIL_PLACEHOLDER.format(n=n) if kind == "email" else f"[{kind.upper()}_{n}]"
        by_original[original] = ph
        mapping[ph] = original
        return ph

    def sub(kind: str, pattern: re.Pattern[str], valid: Any, s: str) -> str:
        def one(m: re.Match[str]) -> str:
            found = m.group(0)
            if _PLACEHOLDER.fullmatch(found) or not valid(found):
                return found
            return placeholder(kind, found)

        return pattern.sub(one, s)

    out = sub("email", _EMAIL, lambda s: True, text)
    out = sub("iban", _IBAN, iban_ok, out)
    out = sub("card", _CARD, lambda s: luhn_ok(re.sub(r"[ -]", "", s)), out)
    out = sub("phone", _PHONE, _phone_ok, out)
    return Redaction(text=out, mapping=mapping, counts=counts)


def _phone_ok(s: str) -> bool:
    digits = re.sub(r"\D", "", s)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s.strip()):
        return False  # an ISO date
    return 7 <= len(digits) <= 15 and (s.lstrip().startswith("+") or len(digits) >= 9)


def restore(value: Any, mapping: dict[str, str]) -> Any:
    """``value`` (a JSON-like tree or a string) with every placeholder replaced by its original."""
    if not mapping:
        return value
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: mapping.get(m.group(0), m.group(0)), value)
    if isinstance(value, BaseModel):
        return restore(value.model_dump(mode="json"), mapping)
    if isinstance(value, dict):
        return {k: restore(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [restore(v, mapping) for v in value]
    return value


def restored_json(value: Any, mapping: dict[str, str]) -> str:
    """The value with originals back, as JSON text for ``extract.validate.check``."""
    return json.dumps(restore(value, mapping), ensure_ascii=False)
