"""Cost budgets over real HTTP: ``limits: {cost: 0.01/minute}`` stops a key at its budget.

The fake replies to "Say hi" with 5 prompt and 3 reply tokens; at 100 per million each request
costs 0.0008, and with ``max_tokens=3`` the estimate reserved before the call is that same
0.0008 (5 prompt tokens estimated, 3 reply tokens). So a 0.01 budget admits exactly 12 requests
(a 13th would bring the window to 0.0104). The server's own record of the usage it reported is
the evidence, in the memory state and in Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from langchain_pllm import BalancedChatModel
from langchain_pllm.balancer import ManualClock
from langchain_pllm.exceptions import PllmConfigError
from langchain_pllm.testing import FakeOpenAIServer

pytest_plugins = ["tests.redis_fixture"]

PRICE = {"input": 100.0, "output": 100.0}
PER_REQUEST = 8 * 100.0 / 1_000_000  # 5 prompt + 3 reply tokens
BUDGET = 0.01
ADMITTED = 12  # 12 x 0.0008 = 0.0096; a 13th would overrun 0.01


@pytest.fixture(scope="module")
def srv() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> str:
    return "memory" if request.param == "memory" else str(request.getfixturevalue("redis_url"))


def entry(srv: FakeOpenAIServer, **extra: Any) -> dict[str, Any]:
    key = f"sk-budget-{uuid.uuid4().hex[:12]}"
    return {"vendor": "openai", "api_key": key, "model": "m", "api_base": srv.base_url, **extra}


def pool(
    srv: FakeOpenAIServer, state: str, clock: ManualClock, n: int
) -> tuple[BalancedChatModel, str]:
    """A pool whose first key has the budget; returns it and that key."""
    budgeted = entry(srv, price=PRICE, limits={"cost": f"{BUDGET}/minute"})
    others = [entry(srv, price=PRICE) for _ in range(n - 1)]
    settings = {"state": state, "affinity": "off"}
    model = BalancedChatModel(providers=[budgeted, *others], clock=clock, balancer=settings)
    return model, budgeted["api_key"]


def spent_on(srv: FakeOpenAIServer, key: str, since: int) -> float:
    records = [r for r in srv.requests[since:] if r.api_key == key and r.status == 200]
    return sum((r.prompt_tokens + r.completion_tokens) * 100.0 / 1_000_000 for r in records)


def test_a_budget_stops_its_key_and_the_others_serve(srv: FakeOpenAIServer, state: str) -> None:
    clock = ManualClock()
    model, key = pool(srv, state, clock, 2)
    before = len(srv.requests)
    served = [model.invoke("Say hi", max_tokens=3).response_metadata["provider"] for _ in range(30)]
    assert served.count("openai-0") == ADMITTED
    assert served.count("openai-1") == 30 - ADMITTED
    assert all(r.completion_tokens == 3 for r in srv.requests[before:])
    assert spent_on(srv, key, before) == pytest.approx(ADMITTED * PER_REQUEST)
    assert spent_on(srv, key, before) <= BUDGET
    stats = model.get_stats()
    assert stats["openai-0"]["state"] == "budget"
    assert stats["openai-1"]["state"] == "closed"
    (window,) = stats["openai-0"]["windows"]
    assert window["resource"] == "cost"
    assert window["used"] == pytest.approx(ADMITTED * PER_REQUEST)
    # The window moves on: the key serves again and is no longer shown over budget.
    clock.advance(60.0)
    assert model.get_stats()["openai-0"]["state"] == "closed"
    served = [model.invoke("Say hi", max_tokens=3).response_metadata["provider"] for _ in range(4)]
    assert served.count("openai-0") == 2


def test_a_lone_key_over_budget_makes_the_call_wait(srv: FakeOpenAIServer, state: str) -> None:
    clock = ManualClock()
    model, _ = pool(srv, state, clock, 1)
    start = clock.now()
    for _ in range(ADMITTED):
        model.invoke("Say hi", max_tokens=3)
    assert clock.now() == start  # all within the budget: no wait
    assert model.get_stats()["openai-0"]["state"] == "budget"
    reply = model.invoke("Say hi", max_tokens=3)  # waits for the window to free
    assert reply.response_metadata["cost"] == pytest.approx(PER_REQUEST)
    assert clock.now() >= start + 60.0


def test_a_budget_settles_to_the_real_cost_not_the_estimate(
    srv: FakeOpenAIServer, state: str
) -> None:
    clock = ManualClock()
    model, _ = pool(srv, state, clock, 1)
    model.invoke("Say hi", max_tokens=50)  # reserves 55 tokens' worth, spends 8
    (window,) = model.get_stats()["openai-0"]["windows"]
    assert window["used"] == pytest.approx(PER_REQUEST)


def test_streams_and_async_calls_settle_their_real_cost(srv: FakeOpenAIServer, state: str) -> None:
    clock = ManualClock()
    model, _ = pool(srv, state, clock, 1)
    for _ in model.stream("Say hi", max_tokens=50):
        pass
    asyncio.run(model.ainvoke("Say hi", max_tokens=50))

    async def astream() -> None:
        async for _ in model.astream("Say hi", max_tokens=50):
            pass

    asyncio.run(astream())
    (window,) = model.get_stats()["openai-0"]["windows"]
    assert window["used"] == pytest.approx(3 * PER_REQUEST)


def test_a_budget_without_a_price_is_a_config_error(srv: FakeOpenAIServer) -> None:
    with pytest.raises(PllmConfigError, match=r"providers\[0\]: limits: a cost budget needs price"):
        BalancedChatModel(providers=[entry(srv, limits={"cost": "5/day"})])
