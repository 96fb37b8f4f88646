"""Tiers and prompt-cache affinity over real HTTP (the ``openai`` SDK against the fake server).

Time is a ``ManualClock``: a second of offered load is a burst of requests at one instant, then
``advance(1)``. The fake server keeps a prompt cache per key, so a conversation that keeps its
key is seen to hit the cache, and one that is spread over keys is seen to miss it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from langchain_pllm import BalancedChatModel
from langchain_pllm.balancer import ManualClock
from langchain_pllm.testing import FakeOpenAIServer, Fault

# One transport (tests/integration_tests/conftest.py): which tier and which key serve is decided
# from intact replies.
pytestmark = pytest.mark.one_transport

MODEL = "gpt-4o-mini"
SYSTEM = "You are a careful research agent. " * 20  # a long prefix, as agents send


@pytest.fixture(scope="module")
def srv() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(prompt_cache=True) as server:
        yield server


def new_key() -> str:
    return f"sk-i12-{uuid.uuid4().hex[:16]}"


def keyed(srv: FakeOpenAIServer, **extra: Any) -> dict[str, Any]:
    return {
        "vendor": "openai",
        "api_key": new_key(),
        "model": MODEL,
        "api_base": srv.base_url,
        **extra,
    }


def served(srv: FakeOpenAIServer, keys: list[str]) -> Counter[str]:
    wanted = set(keys)
    return Counter(r.api_key for r in srv.requests if r.api_key in wanted and r.status == 200)


# Tiers ---------------------------------------------------------------------------------------


def tiered_pool(srv: FakeOpenAIServer, clock: ManualClock) -> tuple[BalancedChatModel, list[str]]:
    entries = [
        keyed(srv, tier=1, rate_limit=10),
        keyed(srv, tier=1, rate_limit=10),
        keyed(srv, tier=2),
    ]
    model = BalancedChatModel(providers=entries, clock=clock, balancer={"window": 1.0})
    return model, [e["api_key"] for e in entries]


@pytest.mark.parametrize(("offered", "tier1", "tier2"), [(30, 20, 10), (15, 15, 0)])
async def test_tier_two_serves_only_the_overflow_of_tier_one(
    srv: FakeOpenAIServer, offered: int, tier1: int, tier2: int
) -> None:
    clock = ManualClock()
    model, (a, b, paid) = tiered_pool(srv, clock)
    per_second = []
    for _ in range(5):
        before = served(srv, [a, b, paid])
        replies = await asyncio.gather(*(model.ainvoke("hi") for _ in range(offered)))
        assert len(replies) == offered
        per_second.append(served(srv, [a, b, paid]) - before)
        clock.advance(1.0)
    for second in per_second:
        assert second[a] + second[b] == tier1  # exactly the tier-1 limit, every second
        assert abs(second[a] - second[b]) <= 1  # equal weights and turns inside the tier
        assert second[paid] == tier2  # only the overflow
    stats = model.get_stats()
    assert stats["openai-2"]["tier"] == 2
    assert stats["openai-2"]["total_requests"] == 5 * tier2


def test_a_failed_tier_one_key_retries_on_the_other_tier_one_key(srv: FakeOpenAIServer) -> None:
    model, (a, b, paid) = tiered_pool(srv, ManualClock())
    srv.fault_for_key(a, Fault(status=500), times=1)
    reply = model.invoke("hi")
    assert reply.response_metadata["attempts"] == 2
    assert reply.response_metadata["provider"] == "openai-1"
    assert [r.api_key for r in srv.requests if r.api_key in (a, b, paid)] == [a, b]


@pytest.mark.parametrize("how", ["kwarg", "config"])
def test_a_request_that_may_not_spill_waits_for_its_tier(srv: FakeOpenAIServer, how: str) -> None:
    clock = ManualClock()
    entries = [keyed(srv, tier=1, rate_limit=1), keyed(srv, tier=2)]
    settings: dict[str, Any] = {"spill": False} if how == "config" else {}
    model = BalancedChatModel(providers=entries, clock=clock, balancer=settings)
    kwargs: dict[str, Any] = {"spill": False} if how == "kwarg" else {}
    assert model.invoke("one").response_metadata["provider"] == "openai-0"
    reply = model.invoke("two", **kwargs)
    assert reply.response_metadata["provider"] == "openai-0"  # not the paid key
    assert clock.now() >= 60.0  # it waited for the tier-1 window to free
    spilled = model.invoke("three")  # the default (or an explicit spill) may spill
    expected = "openai-0" if how == "config" else "openai-1"
    assert spilled.response_metadata["provider"] == expected
    assert all("spill" not in r.body for r in srv.requests)  # never sent to the vendor


def test_traffic_comes_back_to_tier_one_the_moment_it_has_room(srv: FakeOpenAIServer) -> None:
    clock = ManualClock()
    model, (a, b, paid) = tiered_pool(srv, clock)
    providers = [model.invoke("x").response_metadata["provider"] for _ in range(22)]
    assert providers[20:] == ["openai-2", "openai-2"]
    clock.advance(1.0)
    assert model.invoke("x").response_metadata["provider"] in ("openai-0", "openai-1")


# Affinity ------------------------------------------------------------------------------------


def agent_turns(
    model: BalancedChatModel, turns: int, first: str = "Plan the study.", **kwargs: Any
) -> list[AIMessage]:
    messages: list[BaseMessage] = [SystemMessage(SYSTEM), HumanMessage(first)]
    replies = []
    for turn in range(turns):
        reply = model.invoke(messages, **kwargs)
        replies.append(reply)
        messages += [reply, HumanMessage(f"Now step {turn + 2}, with care.")]
    return replies


def cached(reply: AIMessage) -> int:
    usage = reply.usage_metadata or {}
    return int((usage.get("input_token_details") or {}).get("cache_read") or 0)


def four_keys(srv: FakeOpenAIServer, **balancer: Any) -> BalancedChatModel:
    return BalancedChatModel(
        providers=[keyed(srv) for _ in range(4)], clock=ManualClock(), balancer=balancer
    )


def test_a_conversation_keeps_its_key_and_hits_the_prompt_cache(srv: FakeOpenAIServer) -> None:
    replies = agent_turns(four_keys(srv), 6)
    assert len({r.response_metadata["provider"] for r in replies}) == 1
    assert cached(replies[0]) == 0
    assert all(cached(r) > 0 for r in replies[1:])
    # Each turn reads the whole previous prompt from the cache.
    assert all(cached(r) >= r.usage_metadata["input_tokens"] // 2 for r in replies[1:])  # type: ignore[index]


def test_without_affinity_the_turns_spread_and_miss_the_cache(srv: FakeOpenAIServer) -> None:
    on = agent_turns(four_keys(srv), 6)
    off = agent_turns(four_keys(srv, affinity="off"), 6)
    assert len({r.response_metadata["provider"] for r in off}) == 4
    assert sum(map(cached, off[:4])) == 0  # four keys, four cold caches
    # Turns 5 and 6 come back to keys that saw the first turns: a part of the prefix is cached.
    assert sum(map(cached, off)) < sum(map(cached, on)) / 2


def test_a_session_moves_when_its_key_is_at_its_limit_and_later_turns_follow(
    srv: FakeOpenAIServer,
) -> None:
    model = BalancedChatModel(
        providers=[keyed(srv, rate_limit=3) for _ in range(4)],
        clock=ManualClock(),
        balancer={"affinity": "session"},
    )
    replies = agent_turns(model, 6, session_id="conversation-7")
    providers = [r.response_metadata["provider"] for r in replies]
    assert len(set(providers[:3])) == 1
    assert providers[3] != providers[0]  # the limit wins over affinity
    assert providers[3] == providers[4] == providers[5]  # and the session follows its new key
    assert all("session_id" not in r.body for r in srv.requests)


def test_session_from_the_run_config_metadata(srv: FakeOpenAIServer) -> None:
    model = four_keys(srv, affinity="session")
    config = {"metadata": {"session_id": "s-1"}}
    providers = {
        model.invoke(f"unrelated question {i}", config=config).response_metadata["provider"]
        for i in range(5)
    }
    assert len(providers) == 1
    # Affinity "session" ignores prefixes: without a session the same prompts spread.
    spread = {model.invoke("same question").response_metadata["provider"] for _ in range(4)}
    assert len(spread) == 4


async def test_twenty_parallel_conversations_spread_evenly_over_four_keys(
    srv: FakeOpenAIServer,
) -> None:
    model = four_keys(srv)
    keys = [p.api_key.get_secret_value() for p in model.providers]

    async def conversation(n: int) -> set[str]:
        messages: list[BaseMessage] = [SystemMessage(SYSTEM), HumanMessage(f"Topic {n}.")]
        providers = set()
        for turn in range(3):
            reply = await model.ainvoke(messages)
            providers.add(reply.response_metadata["provider"])
            messages += [reply, HumanMessage(f"Go on ({turn}).")]
        return providers

    per_conversation = await asyncio.gather(*(conversation(n) for n in range(20)))
    assert all(len(p) == 1 for p in per_conversation)  # each kept its key
    assert sorted(served(srv, keys).values()) == [15, 15, 15, 15]  # 5 conversations a key
