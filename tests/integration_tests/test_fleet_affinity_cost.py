"""Affinity and cost shared through Redis: two balancers stand for two processes of a fleet.

Each ``BalancedChatModel`` below has its own balancer (different settings make different
balancers), so its own local affinity map; only Redis connects them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from langchain_pllm import BalancedChatModel
from langchain_pllm.testing import FakeOpenAIServer

pytest_plugins = ["tests.redis_fixture"]

PRICE = {"input": 1000.0, "output": 2000.0, "cached_input": 250.0}


@pytest.fixture(scope="module")
def srv() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(prompt_cache=True) as server:
        yield server


def fleet(srv: FakeOpenAIServer, url: str, n: int = 2) -> list[BalancedChatModel]:
    keys = [f"sk-fleet-{uuid.uuid4().hex[:12]}" for _ in range(4)]
    providers: list[dict[str, Any]] = [
        {"vendor": "openai", "api_key": k, "model": "m", "api_base": srv.base_url, "price": PRICE}
        for k in keys
    ]
    # max_wait differs only to give each "process" its own balancer.
    return [
        BalancedChatModel(providers=providers, balancer={"state": url, "max_wait": 60 + i})
        for i in range(n)
    ]


def test_a_conversation_keeps_its_key_across_processes(
    srv: FakeOpenAIServer, redis_url: str
) -> None:
    a, b = fleet(srv, redis_url)
    # b's own turn order now points at another key than a's: only Redis can agree on one.
    assert b.invoke("warm up").response_metadata["provider"] == "openai-0"
    messages: list[BaseMessage] = [SystemMessage("Plan carefully. " * 30), HumanMessage("Go.")]
    providers = []
    for turn in range(6):
        model = (a, b)[turn % 2]  # turns alternate between the two processes
        reply = model.invoke(messages)
        providers.append(reply.response_metadata["provider"])
        messages += [reply, HumanMessage(f"Step {turn}.")]
    assert len(set(providers)) == 1
    assert all(r.cached_tokens > 0 for r in srv.requests[-5:])


def test_the_fleets_cost_is_the_sum_of_every_process(srv: FakeOpenAIServer, redis_url: str) -> None:
    a, b = fleet(srv, redis_url)
    before = len(srv.requests)
    costs = [m.invoke(f"question {i}").response_metadata["cost"] for i, m in enumerate((a, b, b))]
    records = srv.requests[before:]
    assert len(records) == 3
    for stats in (a.get_stats(), b.get_stats()):
        assert sum(s["cost"] for s in stats.values()) == pytest.approx(sum(costs))
        assert sum(s["total_requests"] for s in stats.values()) == 3
