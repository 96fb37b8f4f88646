"""Streaming through the balancer over real HTTP: failover before the first chunk, never after.

A failure before anything reached the caller is retried on another key unseen; after the first
chunk the error reaches the caller with what was already streamed, and is not retried (that
would repeat text). Also: usage equal to the server's, callbacks, ``astream_events`` and the
response metadata of the aggregated message.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any, cast

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.exceptions import ModelConnectionError, ModelError
from langchain_core.messages import AIMessageChunk

from langchain_pllm import BalancedChatModel
from langchain_pllm.balancer import ManualClock
from langchain_pllm.testing import FakeOpenAIServer, Fault

MODEL = "gpt-4o-mini"
PROMPT = "one two three four five six"
ANSWER = f"echo: {PROMPT}"
METADATA_KEYS = {"provider", "vendor", "model_provider", "model_name", "attempts", "finish_reason"}


@pytest.fixture
def srv() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


def new_key() -> str:
    return f"sk-test-{uuid.uuid4().hex[:16]}"


def make_model(
    srv: FakeOpenAIServer, n: int = 2, **kwargs: Any
) -> tuple[BalancedChatModel, list[str]]:
    keys = [new_key() for _ in range(n)]
    providers = [
        {"vendor": "openai", "api_key": k, "model": MODEL, "api_base": srv.base_url} for k in keys
    ]
    return BalancedChatModel(providers=providers, clock=ManualClock(), **kwargs), keys


def assert_idle(model: BalancedChatModel) -> None:
    stats = model.get_stats()
    assert all(s["active_requests"] == 0 for s in stats.values()), stats
    assert all(m.active == 0 for m in model.balancer_instance.members)


def aggregate(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    return total


def drain(stream: Iterator[AIMessageChunk], into: list[str]) -> None:
    for chunk in stream:
        into.append(str(chunk.content))


async def adrain(stream: AsyncIterator[AIMessageChunk], into: list[str]) -> None:
    async for chunk in stream:
        into.append(str(chunk.content))


def server_usage(srv: FakeOpenAIServer) -> dict[str, int]:
    usage = srv.requests[-1].usage
    assert usage is not None
    return {
        "input_tokens": usage["prompt_tokens"],
        "output_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
    }


# The happy path --------------------------------------------------------------------------------


def test_stream_text_usage_and_metadata(srv: FakeOpenAIServer) -> None:
    model, _ = make_model(srv)
    chunks = list(model.stream(PROMPT))
    assert len([c for c in chunks if c.content]) > 3  # really streamed, word by word
    msg = aggregate(chunks)
    assert msg.content == ANSWER
    assert msg.usage_metadata == server_usage(srv)
    assert srv.requests[-1].stream
    assert set(msg.response_metadata) >= METADATA_KEYS
    meta = msg.response_metadata
    assert meta["provider"] == "openai-0"
    assert meta["vendor"] == "openai"
    assert meta["model_provider"] == "openai"
    assert meta["model_name"] == MODEL
    assert meta["attempts"] == 1
    assert meta["finish_reason"] == "stop"
    stats = model.get_stats()["openai-0"]
    assert stats["total_tokens"] == server_usage(srv)["total_tokens"]
    assert_idle(model)


async def test_astream_text_usage_and_metadata(srv: FakeOpenAIServer) -> None:
    model, _ = make_model(srv)
    chunks = [c async for c in model.astream(PROMPT)]
    msg = aggregate(chunks)
    assert msg.content == ANSWER
    assert msg.usage_metadata == server_usage(srv)
    assert set(msg.response_metadata) >= METADATA_KEYS
    assert msg.response_metadata["finish_reason"] == "stop"
    assert_idle(model)


def test_invoke_with_streaming_true_uses_the_stream(srv: FakeOpenAIServer) -> None:
    model, _ = make_model(srv, streaming=True)
    msg = model.invoke(PROMPT)
    assert srv.requests[-1].stream
    assert msg.content == ANSWER
    assert msg.usage_metadata == server_usage(srv)
    assert set(msg.response_metadata) >= METADATA_KEYS


def test_invoke_metadata_keys(srv: FakeOpenAIServer) -> None:
    model, _ = make_model(srv)
    msg = model.invoke(PROMPT)
    assert set(msg.response_metadata) >= METADATA_KEYS
    assert msg.response_metadata["finish_reason"] == "stop"
    assert msg.response_metadata["model_name"] == MODEL


# Callbacks and events --------------------------------------------------------------------------


class TokenCollector(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.ended = 0

    def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.ended += 1


class AsyncTokenCollector(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_callbacks_get_every_token(srv: FakeOpenAIServer) -> None:
    model, _ = make_model(srv)
    handler = TokenCollector()
    text = "".join(str(c.content) for c in model.stream(PROMPT, config={"callbacks": [handler]}))
    assert text == ANSWER
    assert "".join(handler.tokens) == ANSWER
    assert len([t for t in handler.tokens if t]) > 3
    assert handler.ended == 1


def test_callbacks_get_tokens_from_invoke_when_streaming(srv: FakeOpenAIServer) -> None:
    model, _ = make_model(srv, streaming=True)
    handler = TokenCollector()
    model.invoke(PROMPT, config={"callbacks": [handler]})
    assert "".join(handler.tokens) == ANSWER


async def test_async_callbacks_get_every_token(srv: FakeOpenAIServer) -> None:
    model, _ = make_model(srv)
    handler = AsyncTokenCollector()
    chunks = [c async for c in model.astream(PROMPT, config={"callbacks": [handler]})]
    assert "".join(handler.tokens) == "".join(str(c.content) for c in chunks) == ANSWER


async def test_astream_events(srv: FakeOpenAIServer) -> None:
    model, _ = make_model(srv)
    events = [e async for e in model.astream_events(PROMPT, version="v2")]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "on_chat_model_start"
    assert kinds[-1] == "on_chat_model_end"
    streamed = "".join(
        str(e["data"]["chunk"].content) for e in events if e["event"] == "on_chat_model_stream"
    )
    assert streamed == ANSWER
    output = events[-1]["data"]["output"]
    assert output.content == ANSWER
    assert output.usage_metadata == server_usage(srv)
    assert set(output.response_metadata) >= METADATA_KEYS
    assert_idle(model)


# Failover before the first chunk ---------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [Fault(status=500), Fault(status=429, retry_after=3), Fault(status=401), Fault(drop=True)],
    ids=["500", "429", "401", "dropped"],
)
def test_failure_before_the_first_chunk_fails_over_unseen(
    srv: FakeOpenAIServer, fault: Fault
) -> None:
    model, (a, b) = make_model(srv)
    srv.fault_for_key(a, fault, times=1)
    handler = TokenCollector()
    chunks = list(model.stream(PROMPT, config={"callbacks": [handler]}))
    msg = aggregate(chunks)
    assert msg.content == ANSWER  # once, from the second key
    assert "".join(handler.tokens) == ANSWER
    assert msg.response_metadata["provider"] == "openai-1"
    assert msg.response_metadata["attempts"] == 2
    assert msg.usage_metadata == server_usage(srv)
    assert [r.api_key for r in srv.requests] == [a, b]
    assert_idle(model)


async def test_async_failure_before_the_first_chunk_fails_over_unseen(
    srv: FakeOpenAIServer,
) -> None:
    model, (a, b) = make_model(srv)
    srv.fault_for_key(a, Fault(status=503), times=1)
    chunks = [c async for c in model.astream(PROMPT)]
    msg = aggregate(chunks)
    assert msg.content == ANSWER
    assert msg.response_metadata["attempts"] == 2
    assert [r.api_key for r in srv.requests] == [a, b]
    assert_idle(model)


def test_stream_cut_before_any_content_fails_over(srv: FakeOpenAIServer) -> None:
    # The connection drops after the headers and the empty role frame, before any text: the
    # caller has nothing that a retry could duplicate, so the stream goes on elsewhere.
    model, (a, b) = make_model(srv)
    srv.fault_for_key(a, Fault(cut_after=0), times=1)
    msg = aggregate(list(model.stream(PROMPT)))
    assert msg.content == ANSWER
    assert msg.response_metadata["attempts"] == 2
    assert [r.api_key for r in srv.requests] == [a, b]


def test_400_before_the_first_chunk_is_raised_once(srv: FakeOpenAIServer) -> None:
    model, _ = make_model(srv, max_retries=5)
    srv.enqueue(Fault(status=400))
    with pytest.raises(ModelError):
        list(model.stream(PROMPT))
    assert len(srv.requests) == 1
    assert_idle(model)


# Failure after the first chunk -----------------------------------------------------------------


def test_failure_after_the_first_chunk_reaches_the_caller_and_is_not_retried(
    srv: FakeOpenAIServer,
) -> None:
    model, (a, _) = make_model(srv, max_retries=5)
    srv.fault_for_key(a, Fault(cut_after=2), times=1)
    received: list[str] = []
    with pytest.raises(ModelConnectionError):
        drain(model.stream(PROMPT), received)
    # What was streamed reached the caller: the first two words, nothing repeated after.
    assert "".join(received) == "echo: one "
    assert len(srv.requests) == 1
    stats = model.get_stats()["openai-0"]
    assert stats["error_count"] == 1
    assert_idle(model)


async def test_async_failure_after_the_first_chunk_is_not_retried(srv: FakeOpenAIServer) -> None:
    model, (a, _) = make_model(srv, max_retries=5)
    srv.fault_for_key(a, Fault(cut_after=3), times=1)
    received: list[str] = []
    with pytest.raises(ModelConnectionError):
        await adrain(model.astream(PROMPT), received)
    assert "".join(received) == "echo: one two "
    assert len(srv.requests) == 1
    assert_idle(model)


# Leaving early ---------------------------------------------------------------------------------


def test_breaking_out_of_a_stream_releases_the_key(srv: FakeOpenAIServer) -> None:
    model, _ = make_model(srv)
    stream = cast("Generator[AIMessageChunk, None, None]", model.stream(PROMPT))
    first = [next(stream) for _ in range(3)]
    assert first
    assert model.get_stats()["openai-0"]["active_requests"] == 1
    stream.close()
    stats = model.get_stats()["openai-0"]
    assert stats["active_requests"] == 0
    assert stats["error_count"] == 0  # the caller left; the key did nothing wrong
    assert stats["state"] == "closed"
    assert model.invoke("again").content == "echo: again"
    assert_idle(model)


async def settle(model: BalancedChatModel) -> None:
    # LangChain's ``astream`` does not close the model's inner ``_astream`` when the caller
    # leaves; the event loop's async-generator finalizer closes it a few iterations later.
    for _ in range(200):
        if all(s["active_requests"] == 0 for s in model.get_stats().values()):
            return
        await asyncio.sleep(0.001)


async def test_leaving_an_async_stream_early_releases_the_key(srv: FakeOpenAIServer) -> None:
    model, _ = make_model(srv)
    stream = cast("AsyncGenerator[AIMessageChunk, None]", model.astream(PROMPT))
    async for chunk in stream:
        if chunk.content:
            break
    await stream.aclose()
    await settle(model)
    assert_idle(model)

    async def first_words() -> str:
        async for chunk in model.astream(PROMPT):
            if chunk.content:
                return str(chunk.content)
        return ""

    assert await first_words() == "echo: "
    await settle(model)
    stats = model.get_stats()["openai-0"]
    assert stats["error_count"] == 0
    assert stats["state"] == "closed"
    assert_idle(model)
