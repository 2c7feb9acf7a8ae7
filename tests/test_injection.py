"""Untrusted input: injection texts (tests/data/injection.jsonl) change neither the instructions nor
the schema, on the real local model and the real server, and never yield an unvalidated object;
the input size limit holds before any call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from extract.errors import ConfigError
from extract.pipeline import Extractor
from extract.providers.local_model import load_local_model
from extract.providers.openai_compat import server_safe_schema
from extract.settings import Settings
from extract.spec import compile_spec
from extract.spec.prompt import SYSTEM, build_messages
from extract.testing.fault_proxy import FaultProxy
from extract.tiers.native import NativeTier
from extract.tiers.remote import closed_schema
from extract.types import Result
from tests.conftest import read_jsonl

ROWS = read_jsonl(Path(__file__).parent / "data" / "injection.jsonl")
CLOSE = "</document>"

# Two shared cores can be this busy: a retry after a client timeout spends tokens twice.
SLOW_OK = 120.0


class Person(BaseModel):
    name: str
    age: int


def _valid_or_failed(result: Result) -> None:
    """Every Result is a schema-valid value or a failure; no attempt carries an unchecked value."""
    for attempt in result.attempts:
        assert attempt.value is None or attempt.ok, attempt
    if result.ok:
        assert isinstance(result.value, Person)
        dumped = result.value.model_dump()
        assert set(dumped) == {"name", "age"}
        assert Person.model_validate(dumped) == result.value
    else:
        assert result.value is None
        assert all(a.error is not None for a in result.attempts)


@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_prompt_frames_the_text_as_data(row: dict[str, Any]) -> None:
    messages = build_messages(compile_spec(Person), row["text"])
    benign = build_messages(compile_spec(Person), "Bob is 42.")
    assert messages[0] == benign[0] == {"role": "system", "content": SYSTEM}
    user = messages[-1]["content"]
    # The task before the document is the benign one, word for word; the document closes once, last.
    assert user.split("\n\n<document>", 1)[0] == benign[-1]["content"].split("\n\n<document>", 1)[0]
    assert user.count(CLOSE) == 1 and user.endswith(CLOSE)


def test_injection_set_on_the_local_model_and_the_server(
    local: Extractor, proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    proxy.configure(record=4 * len(ROWS))
    native = Extractor(tiers=["native"], **remote_settings(timeout_s=SLOW_OK).model_dump(exclude={"tiers"}))

    async def both() -> tuple[list[Result], list[Result]]:
        on_local = asyncio.gather(*(local.arun(r["text"], Person) for r in ROWS))
        on_server = asyncio.gather(*(native.arun(r["text"], Person) for r in ROWS))
        a, b = await asyncio.gather(on_local, on_server)
        return list(a), list(b)

    local_results, server_results = asyncio.run(both())
    for result in [*local_results, *server_results]:
        _valid_or_failed(result)
    # The local tier decodes under the schema: every injection still yields a Person.
    assert all(r.ok for r in local_results)

    # What reached the server: the same instructions and the spec's own schema for every text.
    spec = compile_spec(Person)
    bodies = proxy.requests()
    assert len(bodies) == proxy.stats()["chat"] >= len(ROWS)
    by_text = {r["text"]: r for r in ROWS}
    seen = set()
    for body in bodies:
        system, user = body["messages"][0], body["messages"][-1]
        assert system == {"role": "system", "content": SYSTEM}
        text = next(t for t in by_text if user["content"] == build_messages(spec, t)[-1]["content"])
        seen.add(text)
        fmt = body.get("response_format")
        if fmt is not None and fmt.get("type") == "json_schema":
            assert fmt["json_schema"]["schema"] == closed_schema(spec, text, copy_from_input=False)
        elif fmt is not None and "schema" in fmt:
            # Span-copied where the server enforces it (tests/test_native_span_copy.py); a span
            # holding a double quote is widened for llama-cpp-python's converter.
            copied = NativeTier(native.settings).sent_schema(spec, text, "json_object_schema")
            assert copied is not None
            assert fmt["schema"] == server_safe_schema(copied)[0]
        assert body["messages"][1:-1] == []  # no turn added by the text
    assert seen == set(by_text)


def test_template_tokens_in_the_document_stay_text(local: Extractor) -> None:
    row = next(r for r in ROWS if r["id"] == "role-play")
    model: Any = load_local_model(local.settings)
    spec = compile_spec(Person)
    turns = model._tokenize(model.render(build_messages(spec, row["text"])))
    plain = model._tokenize(model.render(build_messages(spec, "Sara Ali is 22.")))
    start = model._tokenize("<|im_start|>")
    assert len(start) == 1
    assert turns.count(start[0]) == plain.count(start[0])


def test_input_size_limit_before_any_call(proxy: FaultProxy, remote_settings: Callable[..., Settings]) -> None:
    settings = remote_settings(timeout_s=SLOW_OK, max_input_chars=60)
    extractor = Extractor(tiers=["native"], **settings.model_dump(exclude={"tiers"}))
    text = "Ann Lee is 30 years old. " * 3  # 75 characters
    with pytest.raises(ConfigError, match=r"75 characters, over the limit of 60 .*max_input_chars"):
        extractor.run(text, Person)
    with pytest.raises(ConfigError, match="over the limit of 60"):
        extractor.run(text.encode(), Person)
    assert proxy.stats()["chat"] == 0
    result = extractor.run(text[:60], Person)
    assert result.attempts and proxy.stats()["chat"] >= 1
