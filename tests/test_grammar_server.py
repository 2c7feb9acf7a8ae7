"""Grammar and regex specs enforced by the server: the native tier's grammar ladder against the
real llama.cpp server (llama-cpp-python's) behind the real fault proxy.

- every shipped grammar and a ``sql_grammar_for_sqlite`` grammar parse on the first call, sent
  as GBNF in the ``grammar`` field once a probe has shown the field enforced;
- a server that refuses the field (HTTP 400) or ignores it (the proxy strips it) is found out
  by the probe, the rung is refused for the endpoint with its reason, and the tier steps down
  to parse + reask, recorded;
- a model with a grammar field is sent as one GBNF (the JSON with the field's grammar between
  its quotes) and its field comes back in the language;
- a regex comes back full-matching on the first call; a regex GBNF cannot say (lookaround)
  skips the rung by name instead of being sent unconstrained;
- the vLLM rung's request body, built by the same code, is checked against the fields vLLM
  documents and compiled with llguidance, the engine behind vLLM's ``guidance`` backend (a
  vLLM server cannot run here).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from extract import Grammar, Regex, compile_spec, sql_grammar_for_sqlite
from extract.providers.openai_compat import GRAMMAR_LADDER, PROBE_TEXT, grammar_body_for
from extract.settings import Settings
from extract.testing.fault_proxy import FaultProxy
from extract.tiers.base import Task
from extract.tiers.native import NativeTier
from extract.types import Attempt

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "arithmetic": "The area is three times the sum of four and five.",
    "iso8601": "The meeting is on March 5th, 2024 at half past two in the afternoon.",
    "recipe_quantity": "Add one and a half cups of flour to the bowl.",
    "sql": "How many customers live in Paris?",
}


def run(settings: Settings, spec: Any, text: str) -> list[Attempt]:
    task = Task(text=text, spec=compile_spec(spec), settings=settings)
    return asyncio.run(NativeTier(settings).attempts(task))


def test_every_grammar_parses_on_the_first_call_in_grammar_mode(
    proxy: FaultProxy, remote_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    proxy.configure(record=10)
    settings = remote_settings(max_tokens=64, timeout_s=60.0)
    db = tmp_path / "shop.db"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, city TEXT);"
                      "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL);")
    con.close()
    specs = [(Grammar.from_file(ROOT / "grammars" / f"{name}.lark"), text) for name, text in CASES.items()]
    specs.append((sql_grammar_for_sqlite(db), "How many orders are there?"))
    for i, (grammar, text) in enumerate(specs):
        attempts = run(settings, grammar, text)
        first = attempts[0]
        assert first.ok and len(attempts) == 1, (grammar.name, first.raw, first.error)
        assert first.meta["mode"] == "gbnf", first.meta
        grammar.parser.parse(first.value)
        # The probe is paid once per endpoint and process, by the first attempt.
        probes = first.meta.get("probes", [])
        assert probes == ([{"mode": "gbnf", "enforced": True, "usage": probes[0]["usage"]}] if i == 0 else [])
    bodies = proxy.requests()
    assert bodies[0]["grammar"] == f'root ::= "{PROBE_TEXT}"'
    assert all(b["grammar"].startswith("root ::= ") and "response_format" not in b for b in bodies)


@pytest.mark.parametrize("how", ["reject", "strip"])
def test_a_server_without_the_grammar_field_steps_down_to_parse_and_reask(
    proxy: FaultProxy, remote_settings: Callable[..., Settings], how: str
) -> None:
    # "reject": the field is answered with HTTP 400; "strip": the server never sees it, as a
    # server that ignores unknown fields: only the probe can tell, and it must.
    proxy.configure(**{how: ["grammar", "structured_outputs"]})
    settings = remote_settings(max_tokens=24, grammar_max_reasks=1)
    ticket = Grammar.from_text('start: "ZQX-" /[0-9]{4}/\n', name="ticket", description="a code like ZQX-0000")
    attempts = run(settings, ticket, "The ticket for the broken printer is 4821.")
    first = attempts[0]
    assert first.meta["mode"] == "prompt"
    assert [r["mode"] for r in first.meta["rejected_modes"]] == ["gbnf", "structured_outputs"]
    assert [p["mode"] for p in first.meta["probes"]] == ["gbnf", "structured_outputs"]
    assert not any(p["enforced"] for p in first.meta["probes"])
    reasons = " ".join(r["reason"] for r in first.meta["rejected_modes"])
    assert ("HTTP 400" in reasons) if how == "reject" else ("not enforced" in reasons)
    if first.error is not None:  # the plain answer did not parse: the reask carries the error
        assert len(attempts) == 2 and "does not parse" in attempts[1].meta["reask"]
        assert attempts[1].meta["mode"] == "prompt" and "probes" not in attempts[1].meta
    if how == "strip":
        assert proxy.stats()["stripped"] == {"grammar": 1, "structured_outputs": 1}
    # Remembered for the endpoint: the next extraction neither probes nor tries the rungs.
    again = run(settings, ticket, "Ticket 1234 is closed.")
    assert "probes" not in again[0].meta and "rejected_modes" not in again[0].meta


def test_a_regex_comes_back_full_matching_on_the_first_call(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    settings = remote_settings(max_tokens=16)
    attempts = run(settings, Regex(r"[A-Z]{3}-[0-9]{4}", name="order"), "Your order ABC-1234 has shipped.")
    assert len(attempts) == 1 and attempts[0].ok and attempts[0].meta["mode"] == "gbnf"
    assert attempts[0].value == "ABC-1234"  # span-copied: the text's only match


def test_a_regex_is_span_copied_on_the_server_as_on_the_local_tier(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    """The GBNF sent is the text's matches (``span_copy.copied_regex``), so the answer is the
    text's ZIP code; with span-copy off the bare pattern is sent, as before."""
    proxy.configure(record=10)
    attempts = run(remote_settings(max_tokens=16), Regex(r"\d{5}", name="zip"), "The ZIP code is 90210.")
    assert attempts[-1].ok and attempts[-1].value == "90210"
    sent = [b["grammar"] for b in proxy.requests() if "grammar" in b and "90210" in b["grammar"]]
    assert sent and all(g.strip() == 'root ::= "90210"' for g in sent)
    before = len(proxy.requests())
    run(remote_settings(max_tokens=16, copy_from_input=False), Regex(r"\d{5}", name="zip"), "The ZIP code is 90210.")
    later = proxy.requests()[before:]
    assert any("grammar" in b for b in later) and not any("90210" in b.get("grammar", "") for b in later)


def test_a_regex_the_server_cannot_honour_is_checked_after_never_sent_unconstrained(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(record=10)
    settings = remote_settings(max_tokens=16, grammar_max_reasks=1)
    attempts = run(settings, Regex(r"(?<=#)\d+", name="lookbehind"), "Your order #1234 has shipped.")
    first = attempts[0]
    assert first.meta["mode"] == "prompt"
    refused = first.meta["rejected_modes"]
    assert [r["mode"] for r in refused] == ["gbnf", "structured_outputs"]
    assert all("regex_lookaround" in r["reason"] and "lookaround" in r["reason"] for r in refused)
    assert "probes" not in first.meta  # nothing was sent in a grammar mode: no probe either
    assert all("grammar" not in b and "structured_outputs" not in b for b in proxy.requests())
    if not first.ok:  # a mismatch is re-asked with the pattern
        assert len(attempts) == 2 and "does not fully match" in attempts[1].meta["reask"]


class Ticket(BaseModel):
    ticket: Annotated[str, Grammar.from_text('start: "ZQX-" /[0-9]{4}/\n', name="ticket",
                                             description="a code like ZQX-0000")]
    issue: str


def test_a_grammar_field_is_enforced_with_the_json_in_one_gbnf(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(record=4)
    settings = remote_settings(max_tokens=48)
    attempts = run(settings, Ticket, "The ticket for the broken printer is 4821.")
    first = attempts[0]
    assert first.ok and first.meta["mode"] == "gbnf", (first.raw, first.error, first.meta)
    assert first.value.ticket.startswith("ZQX-") and len(first.value.ticket) == 8
    sent = proxy.requests()[-1]
    assert "response_format" not in sent and "g0-root" in sent["grammar"]
    assert first.meta["probes"][0]["enforced"] and first.usage.input_tokens > first.meta["probes"][0]["usage"][
        "input_tokens"]


# vLLM's StructuredOutputsParams, as its docs list them (docs/features/structured_outputs.md
# and the OpenAI-compatible server page): the request's ``structured_outputs`` object.
VLLM_FIELDS = {"json", "regex", "choice", "grammar", "json_object", "structural_tag", "disable_fallback",
               "disable_any_whitespace", "disable_additional_properties", "whitespace_pattern"}


@pytest.mark.parametrize("spec", [*(Grammar.from_file(p) for p in sorted((ROOT / "grammars").glob("*.lark"))),
                                  Regex(r"[A-Z]{3}-\d{4}")], ids=lambda s: getattr(s, "name", "regex"))
def test_the_vllm_request_body_is_what_vllm_documents_and_llguidance_compiles(spec: Any) -> None:
    import llguidance

    compiled = compile_spec(spec)
    body = NativeTier(Settings.resolve(base_url="http://127.0.0.1:9/v1"))._grammar_body(compiled, "structured_outputs")
    assert list(body) == ["structured_outputs"]
    params = body["structured_outputs"]
    assert set(params) <= VLLM_FIELDS and len(params) == 1
    kind, text = next(iter(params.items()))
    assert kind == ("grammar" if compiled.kind == "grammar" else "regex")
    # What vLLM's guidance backend does with it (serialize_guidance_grammar + validate_grammar).
    err = llguidance.LLMatcher.validate_grammar(llguidance.grammar_from(kind, text))
    assert not err, err
    assert grammar_body_for("gbnf", gbnf="root ::= \"x\"") == {"grammar": 'root ::= "x"'}
    assert GRAMMAR_LADDER == ("gbnf", "structured_outputs", "prompt")


def test_a_runaway_cut_at_the_token_limit_is_its_answer_before_the_loop(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    # Measured: on this request the model writes "1.0  + -  -   -   - ..." (unary minus, which
    # the grammar allows without end) to the token limit, and the same again on every reask.
    settings = remote_settings(max_tokens=64, timeout_s=60.0, grammar_max_reasks=2)
    grammar = Grammar.from_file(ROOT / "grammars" / "arithmetic.lark")
    attempts = run(settings, grammar, "Ten divided by the sum of two and three.")
    first = attempts[0]
    assert len(attempts) == 1 and first.ok, (first.raw, first.error)
    assert first.finish_reason == "length" and first.repaired and first.repairs == ["cut_runaway"]
    assert first.raw is not None and first.raw.startswith(first.value)
    grammar.parser.parse(first.value)


def test_the_grammar_ladder_probes_count_in_the_calls_a_tier_may_make(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    settings = remote_settings(max_tokens=16, grammar_max_reasks=1)
    spec = compile_spec(Regex(r"[A-Z]{3}-[0-9]{4}", name="order"))
    tier = NativeTier(settings)
    # Nothing known about the endpoint: the answer and its reask, and a probe for each grammar rung.
    assert tier.spend(spec, "x").max_calls == 2 + 2
    run(settings, Regex(r"[A-Z]{3}-[0-9]{4}", name="order"), "Your order ABC-1234 has shipped.")
    assert tier.spend(spec, "x").max_calls == 2  # gbnf shown enforced: no probe left
    proxy.configure(reject=["grammar", "structured_outputs"])
    from extract.providers.openai_compat import reset_endpoint_states

    reset_endpoint_states()
    attempts = run(settings, Regex(r"[A-Z]{3}-[0-9]{4}", name="order"), "Your order ABC-1234 has shipped.")
    probed = len(attempts[0].meta["probes"])
    assert probed == 2 and len(attempts) + probed <= 2 + 2
    assert tier.spend(spec, "x").max_calls == 2  # both rungs refused: plain text, no probe left
