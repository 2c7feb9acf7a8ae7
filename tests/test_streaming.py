"""Items handed out while the answer is still being written (``extract_iter``), on the real
embedded model: the local fast decoder, and llama.cpp's server streaming its answer through
the real fault proxy.

"Before the call returned" is observed, not timed: ``ItemRun.calls`` gets a window's call only
when it returns, so an item yielded while it is empty came from the answer as it was written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from extract import Extractor
from extract.errors import ProviderError
from extract.providers.openai_compat import Connection, Endpoint
from extract.settings import Settings
from extract.testing.fault_proxy import FaultProxy

from .test_remote_transport import TRANSIENT


class Speaker(BaseModel):
    """One speaker of a programme."""

    model_config = ConfigDict(json_schema_extra={"copy_from_input": True})

    name: str | None = Field(None, description="the person's full name")


NAMES = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Katherine Johnson", "John von Neumann"]
TEXT = "Speakers\n" + "".join(f"- {n}, scientist\n" for n in NAMES)


def _native(settings: Settings) -> Extractor:
    return Extractor(tiers=["native"], **settings.model_dump(exclude={"tiers"}))


def _stream(ex: Extractor, text: str = TEXT) -> tuple[list[tuple[str, int]], Any]:
    """[(item name, window calls returned when it came)], and the run's Result."""
    run = ex.item_run(text, Speaker, split="chunks")
    seen: list[tuple[str, int]] = []

    async def read() -> None:
        async for value in run.stream():
            seen.append((value.name, len(run.calls)))

    asyncio.run(read())
    return seen, run.result()


def test_the_local_tier_hands_out_items_while_it_writes_the_answer() -> None:
    ex = Extractor(tiers=["local"], cache=False)
    seen, result = _stream(ex)
    assert len(result.chunks) == 1, "the text must be one window: one call"
    assert len(seen) >= 3
    assert seen[0][1] == 0 and seen[1][1] == 0, "the first items must come before the call returned"
    # The same items as a run that reads the whole answer first, in document order in the Result.
    whole = ex.run_all(TEXT, Speaker, split="chunks")
    assert sorted(name for name, _ in seen) == sorted(v.name for v in whole.value)
    assert [v.name for v in result.value] == [v.name for v in whole.value]
    assert [e for e in result.items if e["status"] == "ok"] == [e for e in whole.items if e["status"] == "ok"]


def test_a_native_answer_is_streamed_only_when_someone_reads_it(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    ex = _native(remote_settings(max_tokens=160, cache=False))
    seen, result = _stream(ex)
    assert seen and seen[0][1] == 0, "the first item must come before the call returned"
    (attempt,) = result.attempts
    assert attempt.meta["streamed"] is True
    # llama-cpp-python's server streams no token counts: estimated, and said so.
    assert attempt.meta["usage_estimated"] is True and attempt.usage.output_tokens > 0
    whole = ex.run_all(TEXT, Speaker, split="chunks")
    assert "streamed" not in whole.attempts[0].meta  # extract_all reads the answer whole
    assert [v.name for v in result.value] == [v.name for v in whole.value]
    assert [name for name, _ in seen] == [v.name for v in whole.value]


def test_a_stream_cut_midway_is_read_again_and_no_item_comes_twice(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    ex = _native(remote_settings(max_tokens=160, cache=False))
    clean, _ = _stream(ex)
    proxy.configure(next=["cut"])
    seen, result = _stream(ex)
    assert proxy.stats()["faults"] == {"cut": 1}
    assert result.attempts[0].meta["http_tries"] == 2
    assert [name for name, _ in seen] == [name for name, _ in clean]


@pytest.mark.parametrize("fault", TRANSIENT)
def test_every_transient_fault_on_a_stream_is_retried(
    fault: str, proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    async def chat() -> tuple[Any, list[str], Connection]:
        heard: list[str] = []
        # Only the held request must outlast the timeout: an answer on a loaded machine may take seconds.
        settings = remote_settings(timeout_s=3.0 if fault == "delay" else 30.0)
        async with Connection(Endpoint.from_settings(settings)) as conn:
            response = await conn.chat_streamed(heard.append, model="local", max_tokens=6, temperature=0,
                                                messages=[{"role": "user", "content": "Say OK."}])
        return response, heard, conn

    proxy.configure(next=[fault], retry_after=0.1, delay_s=6.0)
    response, heard, conn = asyncio.run(chat())
    assert conn.http_tries == 2 and len(conn.transport_errors) == 1
    assert proxy.stats()["faults"] == {fault: 1}
    content = response.choices[0].message.content
    assert content and heard[-1] == content  # the listener's last word is the whole answer
    assert response.choices[0].finish_reason in ("stop", "length")


def test_a_permanent_refusal_of_a_stream_is_not_retried(
    proxy: FaultProxy, remote_settings: Callable[..., Settings]
) -> None:
    async def chat() -> None:
        async with Connection(Endpoint.from_settings(remote_settings())) as conn:
            await conn.chat_streamed(lambda _: None, model="local", max_tokens=4,
                                     messages=[{"role": "user", "content": "Say OK."}])

    proxy.configure(next=["400"])
    with pytest.raises(ProviderError, match="400"):
        asyncio.run(chat())
    assert proxy.stats()["seen"] == 1


def test_redacted_text_is_not_streamed(proxy: FaultProxy, remote_settings: Callable[..., Settings]) -> None:
    """With PII redacted for a remote tier the answer holds placeholders, not the caller's
    values: nothing may be handed out before the chain restores them."""
    text = "Speakers\n- Ada Lovelace, ada@example.org\n- Alan Turing, alan@example.org\n"
    ex = _native(remote_settings(max_tokens=160, redact_pii=True, cache=False))
    seen, result = _stream(ex, text)
    assert all("streamed" not in a.meta for a in result.attempts)
    assert all(calls == 1 for _, calls in seen)
