"""Writing an instance of a schema from no document (``Settings.generate``, a schema corpus).

Asked for "an example instance" as if the request were a document, the 135M model wrote
every optional key (``all_keys``), filled each list to a bound taken from the request's
length and each string to its bound, and the token limit cut the JSON. Generating, the
prompt asks for the smallest valid value, lists and free strings are bounded short
(``GENERATE_BOUNDS``) and the decoder favours closing an object or list wherever the grammar
allows it (``close_bias``). Extraction is untouched: the same constraints and prompts.
"""

from __future__ import annotations

import json
from typing import Any

from extract import Extractor
from extract.front.bench import CORPUS_PROMPT
from extract.providers.local_model import Constraint, load_local_model
from extract.settings import Settings
from extract.spec.compile import GENERATE_BOUNDS, compile_spec, local_constraint
from extract.spec.prompt import GENERATE_PROMPT_VERSION, OPEN, PROMPT_VERSION, build_messages
from extract.tiers.local import LocalTier

SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Service",
    "properties": {
        "name": {"type": "string", "description": "the service's name"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "hosts": {"type": "array", "items": {"type": "string"}, "minItems": 3},
        "token": {"type": "string", "minLength": 40},
        **{f"option_{i}": {"type": "string"} for i in range(40)},
    },
    "required": ["name", "hosts"],
}


def test_generating_bounds_lists_and_strings_short_whatever_the_request() -> None:
    spec = compile_spec(SCHEMA)
    chars, items = GENERATE_BOUNDS
    gen = json.loads(local_constraint(spec, CORPUS_PROMPT, generate=True))["properties"]
    assert gen["name"]["maxLength"] == chars and gen["tags"]["maxItems"] == items
    assert gen["hosts"]["maxItems"] == 3 and gen["token"]["maxLength"] == 40  # never below the schema's minimum
    # As an extraction the bounds come from the text (here the request's own length and words).
    ext = json.loads(local_constraint(spec, CORPUS_PROMPT))["properties"]
    assert ext["name"]["maxLength"] > chars and ext["tags"]["maxItems"] > items


def test_the_generation_prompt_asks_for_the_required_fields_and_frames_no_document() -> None:
    spec = compile_spec(SCHEMA)
    messages = build_messages(spec, CORPUS_PROMPT, generate=True)
    user = messages[-1]["content"]
    assert OPEN not in user and user.startswith(CORPUS_PROMPT)
    assert "- name (string): the service's name" in user and "- hosts (" in user
    assert "option_0" not in user and "tags" not in user  # optional fields are not listed
    assert "smallest" in messages[0]["content"]
    assert OPEN in build_messages(spec, CORPUS_PROMPT)[-1]["content"]  # extraction: framed as before


def test_a_generating_tier_copies_no_span_and_writes_only_the_keys_it_chooses() -> None:
    spec = compile_spec(SCHEMA)
    gen, ext = LocalTier(Settings.resolve(generate=True)), LocalTier(Settings.resolve())
    assert gen.copy_setting(spec) is False and ext.copy_setting(spec) == "auto"
    assert gen._all_keys(spec, []) is False and ext._all_keys(spec, []) is True


def test_a_generated_instance_is_short_and_valid_where_the_extraction_prompt_was_cut() -> None:
    """The same request and schema, 256 tokens: read as a document, every one of the 44 keys
    is written and the JSON is cut; generating, the instance is whole and valid as written."""
    results = {gen: Extractor(tiers=["local"], generate=gen, max_tokens=256).run(CORPUS_PROMPT, SCHEMA)
               for gen in (False, True)}
    cut = results[False].attempts[0]
    assert cut.finish_reason == "length" and not (cut.ok and not cut.repaired), cut.raw
    (attempt,) = results[True].attempts
    assert attempt.ok and not attempt.repaired and attempt.finish_reason == "stop", attempt.raw
    assert attempt.prompt_version == GENERATE_PROMPT_VERSION and cut.prompt_version == PROMPT_VERSION
    assert attempt.meta["generate"] is True and "all_keys" not in attempt.meta
    value = json.loads(attempt.raw)
    assert {"name", "hosts"} <= set(value) and len(value["hosts"]) == 3


def test_the_close_bias_ends_objects_and_lists_as_soon_as_the_grammar_allows() -> None:
    """With a large bias the decoder closes at the first place the grammar allows it: the
    required key and no optional one, exactly ``minItems`` items; inside a string a ``}`` or
    ``]`` is a character and is not favoured. Without it the model writes the optional key."""
    model = load_local_model(Settings.resolve())
    schema = {"type": "object", "additionalProperties": False, "required": ["tags"],
              "properties": {"tags": {"type": "array", "minItems": 2, "maxItems": 6,
                                      "items": {"type": "string", "minLength": 3, "maxLength": 12}},
                             "note": {"type": "string", "maxLength": 20}},
              "x-guidance": {"whitespace_flexible": False}}
    prompt = model.render([{"role": "user", "content": "Write a JSON object with tags and a note."}])
    grammar = Constraint("json_schema", json.dumps(schema))
    closed = model.generate(prompt, grammar, 64, close_bias=100.0)
    value = json.loads(closed.text)
    assert set(value) == {"tags"} and len(value["tags"]) == 2, closed.text
    assert not any(c in tag for tag in value["tags"] for c in "]}"), closed.text
    free = json.loads(model.generate(prompt, grammar, 64).text)
    assert free != value
