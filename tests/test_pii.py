"""PII redaction: a remote tier sees only placeholders (proved from what reached the proxy), the
values get the originals back, the local tier sees the original text."""

from __future__ import annotations

import json
from collections.abc import Callable

from pydantic import BaseModel, Field

from extract.pipeline import Extractor
from extract.runtime.observability import Runtime, TierCall
from extract.runtime.pii import iban_ok, luhn_ok, redact_pii, restore
from extract.settings import Settings
from extract.spec import compile_spec
from extract.testing.fault_proxy import FaultProxy
from extract.tiers import make_tier
from extract.tiers.base import Task
from extract.types import Attempt

EMAIL, PHONE = "jane.doe@example.com", "+44 20 7946 0958"
CARD, IBAN = "4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32"
TEXT = (f"Update the record of Jane Doe: write to {EMAIL} or call {PHONE}. "
        f"Refund card {CARD}, or pay IBAN {IBAN}. Order 12345678 of 2024-01-15.")
PII = [EMAIL, PHONE, CARD, IBAN]

# Two shared cores can be this busy: a retry after a client timeout spends tokens twice.
SLOW_OK = 120.0


class Mail(BaseModel):
    email: str


class Contact(BaseModel):
    name: str
    email: str
    phone: str | None


def test_detection_uses_the_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and iban_ok("DE89 3704 0044 0532 0130 00")
    assert not iban_ok("GB83WEST12345698765432")
    red = redact_pii(TEXT + " Not a card: 4111 1111 1111 1112. Not an IBAN: GB83 WEST 1234 5698 7654 32.")
    assert red.counts == {"email": 1, "iban": 1, "card": 1, "phone": 1}
    assert not any(p in red.text for p in PII)
    # An order number, a date and the failing checksums stay as written.
    for kept in ("12345678", "2024-01-15", "4111 1111 1111 1112", "GB83 WEST 1234 5698 7654 32"):
        assert kept in red.text
    assert restore(red.text, red.mapping) == TEXT + (
        " Not a card: 4111 1111 1111 1112. Not an IBAN: GB83 WEST 1234 5698 7654 32.")
    again = redact_pii(f"{EMAIL} and again {EMAIL}")
    assert again.counts == {"email": 1} and again.text.count("pii-email-1@redacted.invalid") == 2
    assert restore({"a": ["pii-email-1@redacted.invalid", 3]}, again.mapping) == {"a": [EMAIL, 3]}


def test_remote_tier_sees_placeholders_and_values_get_originals(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(record=8)
    settings = remote_settings(timeout_s=SLOW_OK, redact_pii=True, max_tokens=64)
    result = Extractor(tiers=["native"], **settings.model_dump(exclude={"tiers"})).run(TEXT, Contact)

    sent = json.dumps(proxy.requests())
    assert proxy.stats()["chat"] >= 1
    assert not any(p in sent for p in PII), "PII reached the server"
    assert "pii-email-1@redacted.invalid" in sent and "[PHONE_1]" in sent and "[CARD_1]" in sent

    (attempt,) = result.attempts
    assert attempt.meta["pii_redacted"] == {"email": 1, "phone": 1, "card": 1, "iban": 1}
    # What the model wrote, with the originals back: no placeholder survives in raw or value.
    assert attempt.raw and "redacted.invalid" not in attempt.raw and "[PHONE_" not in attempt.raw
    if result.ok:
        assert isinstance(result.value, Contact)
        dumped = json.dumps(result.value.model_dump())
        assert "redacted.invalid" not in dumped and "_1]" not in dumped
    # Nothing of the mapping is recorded on the Result.
    recorded = json.dumps(result.to_json_dict(), default=str)
    assert "pii-email-1" not in recorded


def test_placeholders_in_a_remote_value_come_back_validated() -> None:
    """The restore step the chain runs after a remote tier, on what a model that copies the
    placeholders writes (SmolLM2-135M rarely copies them, so the real run above cannot show it)."""
    red = redact_pii(TEXT)
    settings = Settings.resolve(redact_pii=True)
    native = make_tier("native", settings)
    runtime = Runtime(settings, [native])
    spec = compile_spec(Contact)
    raw = json.dumps({"name": "Jane Doe", "email": "pii-email-1@redacted.invalid", "phone": "[PHONE_1]"})
    attempt = Attempt(tier="native", raw=raw, value=Contact.model_validate_json(raw))
    task = Task(text=TEXT, spec=spec, settings=runtime.settings)
    call = runtime.before_tier(native, task)
    assert isinstance(call, TierCall) and call.task.text == red.text and call.redaction is not None
    (done,) = runtime.after_tier(call, [attempt])
    assert done.ok and done.value == Contact(name="Jane Doe", email=EMAIL, phone=PHONE)
    assert json.loads(done.raw or "") == {"name": "Jane Doe", "email": EMAIL, "phone": PHONE}
    # An original the spec rejects (a pattern only the placeholder matches) fails the attempt.
    class Short(BaseModel):
        email: str = Field(pattern="redacted")

    short = compile_spec(Short)
    call = runtime.before_tier(native, Task(text=TEXT, spec=short, settings=runtime.settings))
    assert isinstance(call, TierCall)
    bad = Attempt(tier="native", raw='{"email": "pii-email-1@redacted.invalid"}',
                  value=Short(email="pii-email-1@redacted.invalid"))
    (failed,) = runtime.after_tier(call, [bad])
    assert failed.value is None and failed.error is not None and failed.error.type == "pii_restore"


def test_local_tier_sees_the_original(proxy: FaultProxy, remote_settings: Callable[..., Settings]) -> None:
    proxy.configure(record=8, next=["401"])  # native fails at once; the local tier runs
    settings = remote_settings(timeout_s=SLOW_OK, redact_pii=True, max_tokens=None)
    result = Extractor(tiers=["native", "local"], **settings.model_dump(exclude={"tiers"})).run(TEXT, Mail)
    assert not any(p in json.dumps(proxy.requests()) for p in PII)
    native, local = result.attempts
    assert native.meta["pii_redacted"]["email"] == 1 and "pii_redacted" not in local.meta
    assert local.ok and isinstance(local.value, Mail)
    # The domain exists only in the original text (greedy decoding copies it; the name part
    # this 135M model rewrites): the local tier read the original, not a placeholder.
    assert local.value.email.endswith("@example.com")
