"""Span-copy for a regular expression (extract.spec.span_copy.copied_regex): which patterns copy,
which pieces of a text are offered, the constraint llguidance compiles, and the values the real
model returns through the local tier (the command line: tests/test_cli.py::test_run_regex)."""

from __future__ import annotations

import pytest

from extract import Extractor, Regex
from extract.providers.decoding import Constraint
from extract.settings import Settings
from extract.spec import compile_spec
from extract.spec.span_copy import copied_regex, open_pattern, regex_spans
from extract.tiers.local import LocalTier


@pytest.mark.parametrize(("pattern", "copies"), [
    (r"\d{5}", True), (r"\d{4}-\d{2}-\d{2}", True), (r"[A-Z]{2}", True), (r"INV-\d+", True), (r"\w+", True),
    (r"(yes|no)", False), (r"yes|no|maybe", False), (r"colou?r", False),  # a choice among written words
    (r".+", False), (r"[\s\S]*", False), (r".{1,40}", False), (r"[^\n]+", False),  # any text at all
    (r"(", False),  # Python cannot read it: left to llguidance, which reports it
])
def test_only_patterns_for_values_found_in_a_text_copy(pattern: str, copies: bool) -> None:
    assert open_pattern(pattern) is copies


def test_the_pieces_offered_are_whole_matches_that_do_not_cut_a_word() -> None:
    text = "Ship to: 1600 Pennsylvania Avenue NW, Washington, DC 20500-0003. Ref 123456; call 555-867-5309."
    assert regex_spans(r"\d{5}", text) == ["20500"]  # not "12345" out of "123456", not "16001"
    assert regex_spans(r"[A-Z]{2}", text) == ["NW", "DC"]  # text order; not "Sh", "Pe" out of words
    assert regex_spans(r"\d{3}-\d{3}-\d{4}", text) == ["555-867-5309"]  # the full stop shed
    assert regex_spans(r"\d{5}", "No number here.") == []
    assert regex_spans(r"(", "anything") == []


def test_the_copied_constraint_compiles_whatever_the_text_holds() -> None:
    text = 'Price: $3.50 (or 4*2+1?) [net] {gross} ^ | # & ~ - "a/b" 50% \\ done.'
    copied = copied_regex(r"\S+", text)
    assert copied is not None and not Constraint("regex", copied).problems()
    assert copied_regex(r"\d{5}", "No number here.") is None
    assert copied_regex(r"\d{5}", "11111 22222 33333", most=2) is None  # over the cap: the pattern itself
    assert copied_regex(r"\d{5}", "11111 22222", most=2) == "(?:11111|22222)"


def test_the_local_tier_copies_only_when_it_should() -> None:
    spec = compile_spec(Regex(r"\d{5}"))
    text = "The ZIP code is 90210."
    assert LocalTier(Settings(tiers=["local"])).grammar_for(spec, text) == Constraint("regex", "(?:90210)")
    off = Settings(tiers=["local"], copy_from_input=False)
    assert LocalTier(off).grammar_for(spec, text) == Constraint("regex", r"\d{5}")
    assert LocalTier(Settings(tiers=["local"])).grammar_for(spec, "No number.") == Constraint("regex", r"\d{5}")
    choice = compile_spec(Regex(r"(yes|no)"))
    assert LocalTier(Settings(tiers=["local"])).grammar_for(choice, "I do not know.").text == r"(yes|no)"
    generating = Settings(tiers=["local"], generate=True)
    assert LocalTier(generating).grammar_for(spec, "Write a ZIP like 90210.") == Constraint("regex", r"\d{5}")


@pytest.mark.parametrize(("text", "pattern", "wanted"), [
    ("Delivered 2021-03-04.", r"\d{4}-\d{2}-\d{2}", {"2021-03-04"}),  # the README's example
    ("The ZIP code is 90210.", r"\d{5}", {"90210"}),
    ("Call me at 555-867-5309 tomorrow, or 555-123-4567.", r"\d{3}-\d{3}-\d{4}", {"555-867-5309", "555-123-4567"}),
])
def test_the_model_returns_a_value_of_the_text(local: Extractor, text: str, pattern: str, wanted: set[str]) -> None:
    """Under the bare pattern the 135M model wrote "1234-56-78", "10000" and numbers of its own
    here; copying, the value is one of the text's and grounded exactly where it stands."""
    result = local.run(text, Regex(pattern))
    assert result.ok and result.value in wanted, result.attempts[-1].raw
    assert [f.status for f in result.fields] == ["exact"]
    assert text[result.fields[0].spans[0][0]:result.fields[0].spans[0][1]] == result.value


def test_without_a_match_the_value_is_decoded_under_the_pattern(local: Extractor) -> None:
    result = local.run("The parcel left the depot on time.", Regex(r"ZQ-[0-9]{3}"))
    assert result.ok and isinstance(result.value, str) and result.value.startswith("ZQ-")
    assert [f.status for f in result.fields] == ["not_found"]  # an invented value, said so

