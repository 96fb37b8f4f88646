"""Cost over real HTTP: each vendor's reported usage (cached input apart) times the key's price.

Each fake server keeps a prompt cache per key, so the second turn of a conversation reads part
of its input from the cache, as the real vendors report it; the expected cost is computed from
the server's own record of what it reported, never from our parsing of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)

from langchain_pllm import BalancedChatModel
from langchain_pllm.balancer import ManualClock
from langchain_pllm.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeVendorServer,
    FakeZhipuServer,
)

# One transport (tests/integration_tests/conftest.py): cost is read from the usage of intact
# replies.
pytestmark = pytest.mark.one_transport

# Per million tokens; dear enough that a short reply costs cents.
PRICE = {"input": 1500.0, "output": 6000.0, "cached_input": 375.0}
SYSTEM = "You are a meticulous assistant who answers in full sentences. " * 12

VENDORS: dict[str, tuple[type[FakeVendorServer], dict[str, Any], str]] = {
    "openai": (FakeOpenAIServer, {}, "gpt-x"),
    "deepseek": (FakeOpenAIServer, {"flavor": "deepseek"}, "deepseek-chat"),
    "anthropic": (FakeAnthropicServer, {}, "claude-x"),
    "google": (FakeGeminiServer, {}, "gemini-x"),
    "zhipu": (FakeZhipuServer, {}, "glm-x"),
}


@pytest.fixture(scope="module", params=sorted(VENDORS))
def vendor_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeVendorServer]]:
    cls, kwargs, _ = VENDORS[request.param]
    with cls(prompt_cache=True, **kwargs) as server:
        yield request.param, server


def new_key(vendor: str) -> str:
    suffix = uuid.uuid4().hex[:12]
    return f"{suffix}.secret" if vendor == "zhipu" else f"sk-cost-{suffix}"


def model_for(vendor: str, server: FakeVendorServer, **extra: Any) -> BalancedChatModel:
    _, _, model = VENDORS[vendor]
    entry = {"vendor": vendor, "api_key": new_key(vendor), "model": model, **extra}
    entry["api_base"] = server.url if vendor == "google" else server.base_url
    return BalancedChatModel(providers=[entry], clock=ManualClock())


def system(vendor: str) -> SystemMessage:
    if vendor == "anthropic":
        # Anthropic caches only what a cache_control marker covers.
        block = {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}
        return SystemMessage(content=[block])
    return SystemMessage(SYSTEM)


def expected_cost(record: Any) -> float:
    cached = record.cached_tokens
    return (
        (record.prompt_tokens - cached) * PRICE["input"]
        + cached * PRICE["cached_input"]
        + record.completion_tokens * PRICE["output"]
    ) / 1_000_000


def two_turns(
    vendor: str, server: FakeVendorServer, stream: bool
) -> tuple[BalancedChatModel, list[AIMessage]]:
    model = model_for(vendor, server, price=PRICE)
    messages: list[BaseMessage] = [system(vendor), HumanMessage("Describe the harbour at dawn.")]
    replies: list[AIMessage] = []
    for _ in range(2):
        if stream:
            total: AIMessageChunk | None = None
            for chunk in model.stream(messages):
                total = chunk if total is None else total + chunk
            assert total is not None
            reply = AIMessage(
                content=total.content,
                response_metadata=total.response_metadata,
                usage_metadata=total.usage_metadata,
            )
        else:
            reply = model.invoke(messages)
        replies.append(reply)
        messages += [reply, HumanMessage("And at dusk?")]
    return model, replies


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_cost_is_usage_times_price_for_every_vendor(
    vendor_server: tuple[str, FakeVendorServer], stream: bool
) -> None:
    vendor, server = vendor_server
    before = len(server.requests)
    model, replies = two_turns(vendor, server, stream)
    records = [r for r in server.requests[before:] if r.status == 200]
    assert len(records) == 2
    assert records[1].cached_tokens > 0  # the second turn read its prefix from the cache
    for reply, record in zip(replies, records, strict=True):
        assert reply.response_metadata["cost"] == pytest.approx(expected_cost(record), abs=1e-9)
        assert round(reply.response_metadata["cost"], 2) == round(expected_cost(record), 2)
    (stats,) = model.get_stats().values()
    assert stats["cost"] == pytest.approx(sum(map(expected_cost, records)), abs=1e-9)
    assert stats["cached_tokens"] == sum(r.cached_tokens for r in records)


def test_no_price_no_cost_but_cached_tokens_are_counted() -> None:
    with FakeOpenAIServer(prompt_cache=True) as server:
        model = model_for("openai", server)
        messages: list[BaseMessage] = [SystemMessage(SYSTEM), HumanMessage("hi")]
        first = model.invoke(messages)
        second = model.invoke([*messages, first, HumanMessage("again")])
        assert "cost" not in first.response_metadata
        assert "cost" not in second.response_metadata
        (stats,) = model.get_stats().values()
        assert stats["cost"] is None
        assert stats["cached_tokens"] == server.requests[-1].cached_tokens > 0


@pytest.mark.both_transports  # an async stream: its final usage chunk comes through the transport
async def test_async_replies_and_streams_carry_their_cost() -> None:
    with FakeOpenAIServer(prompt_cache=True) as server:
        model = model_for("openai", server, price=PRICE)
        reply = await model.ainvoke("hello there")
        assert reply.response_metadata["cost"] == pytest.approx(expected_cost(server.requests[-1]))
        chunks = [c async for c in model.astream("hello again")]
        assert "cost" not in chunks[0].response_metadata  # only the final chunk has it
        assert chunks[-1].response_metadata["cost"] == pytest.approx(
            expected_cost(server.requests[-1])
        )
        (stats,) = model.get_stats().values()
        assert stats["cost"] == pytest.approx(sum(expected_cost(r) for r in server.requests))
