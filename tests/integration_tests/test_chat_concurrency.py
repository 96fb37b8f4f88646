"""Concurrency over real HTTP: cancellation leaves no counter behind; sync calls inside a loop.

Cancelling calls in flight or waiting for capacity must give back every active count and
concurrency slot; the sync path must work from a thread whose event loop is running (a
Jupyter cell calling ``invoke``); threads and tasks sharing one model must never exceed a
key's rate limit.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from langchain_pllm import BalancedChatModel
from langchain_pllm.balancer import ManualClock
from langchain_pllm.testing import FakeOpenAIServer

MODEL = "gpt-4o-mini"


@pytest.fixture
def srv() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


def new_key() -> str:
    return f"sk-test-{uuid.uuid4().hex[:16]}"


def entry(srv: FakeOpenAIServer, key: str, **extra: Any) -> dict[str, Any]:
    return {"vendor": "openai", "api_key": key, "model": MODEL, "api_base": srv.base_url, **extra}


def active_total(model: BalancedChatModel) -> int:
    return sum(s["active_requests"] for s in model.get_stats().values())


def assert_all_counters_zero(model: BalancedChatModel) -> None:
    stats = model.get_stats()
    assert all(s["active_requests"] == 0 for s in stats.values()), stats
    assert all(m.active == 0 for m in model.balancer_instance.members)
    assert all(s["state"] == "closed" for s in stats.values()), stats


async def wait_for_requests(srv: FakeOpenAIServer, count: int, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while len(srv.requests) < count:
        assert time.monotonic() < deadline, f"only {len(srv.requests)} of {count} arrived"
        await asyncio.sleep(0.005)


# Cancellation ----------------------------------------------------------------------------------


async def test_cancelling_100_in_flight_calls_leaves_every_counter_at_zero(
    srv: FakeOpenAIServer,
) -> None:
    model = BalancedChatModel(
        providers=[entry(srv, new_key()) for _ in range(3)], clock=ManualClock()
    )
    srv.latency = 1.0
    tasks = [asyncio.create_task(model.ainvoke(f"q{i}")) for i in range(100)]
    await wait_for_requests(srv, 100)
    assert active_total(model) == 100
    assert sorted(s["active_requests"] for s in model.get_stats().values()) == [33, 33, 34]
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert_all_counters_zero(model)
    stats = model.get_stats()
    # Cancelled: nothing learned about the keys, so no error is counted against them.
    assert all(s["error_count"] == 0 for s in stats.values())
    assert sum(s["total_requests"] for s in stats.values()) == 100
    srv.latency = 0.0
    assert (await model.ainvoke("after")).content == "echo: after"
    assert_all_counters_zero(model)


async def test_cancelling_calls_waiting_for_capacity_frees_every_slot(
    srv: FakeOpenAIServer,
) -> None:
    model = BalancedChatModel(providers=[entry(srv, new_key(), max_concurrency=5)])
    srv.latency = 1.0
    tasks = [asyncio.create_task(model.ainvoke(f"q{i}")) for i in range(20)]
    await wait_for_requests(srv, 5)
    await asyncio.sleep(0.05)
    # Five in flight (the concurrency cap), fifteen parked waiting for a slot.
    assert len(srv.requests) == 5
    assert active_total(model) == 5
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert_all_counters_zero(model)
    # The cap is whole again: five new calls run side by side at once.
    srv.latency = 0.2
    srv.clear()
    began = time.monotonic()
    replies = await asyncio.gather(*(model.ainvoke(f"n{i}") for i in range(5)))
    assert time.monotonic() - began < 0.6  # together, not one after another (1 s)
    assert [r.content for r in replies] == [f"echo: n{i}" for i in range(5)]
    assert len(srv.requests) == 5
    assert_all_counters_zero(model)


async def test_timeout_of_the_caller_releases_the_key(srv: FakeOpenAIServer) -> None:
    model = BalancedChatModel(providers=[entry(srv, new_key())])
    srv.latency = 1.0
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(model.ainvoke("slow"), 0.1)
    assert_all_counters_zero(model)
    assert model.get_stats()["openai-0"]["error_count"] == 0


async def test_cancelling_an_async_stream_in_flight_releases_the_key(
    srv: FakeOpenAIServer,
) -> None:
    model = BalancedChatModel(providers=[entry(srv, new_key())])
    srv.latency = 1.0

    async def consume() -> None:
        async for _ in model.astream("hello there"):
            pass

    task = asyncio.create_task(consume())
    await wait_for_requests(srv, 1)
    assert active_total(model) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_all_counters_zero(model)


# Sync calls inside a running event loop (Jupyter) ----------------------------------------------


async def test_sync_invoke_inside_a_running_event_loop(srv: FakeOpenAIServer) -> None:
    model = BalancedChatModel(providers=[entry(srv, new_key()), entry(srv, new_key())])
    asyncio.get_running_loop()  # as in a notebook cell: a loop is running in this thread
    assert model.invoke("sync in loop").content == "echo: sync in loop"
    assert "".join(str(c.content) for c in model.stream("streamed")) == "echo: streamed"
    assert [m.content for m in model.batch(["a", "b", "c"])] == ["echo: a", "echo: b", "echo: c"]
    # Async and sync paths side by side on the same model and loop.
    assert (await model.ainvoke("async")).content == "echo: async"
    assert model.invoke("sync again").content == "echo: sync again"
    assert_all_counters_zero(model)


def test_sync_invoke_from_a_thread_whose_loop_is_running(srv: FakeOpenAIServer) -> None:
    model = BalancedChatModel(providers=[entry(srv, new_key())])
    outcome: dict[str, Any] = {}

    async def cell() -> None:
        outcome["sync"] = model.invoke("from the kernel thread").content
        outcome["async"] = (await model.ainvoke("awaited")).content

    def kernel() -> None:
        try:
            asyncio.run(cell())
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=kernel)
    thread.start()
    thread.join(10)
    assert "error" not in outcome, outcome.get("error")
    assert outcome == {"sync": "echo: from the kernel thread", "async": "echo: awaited"}
    assert_all_counters_zero(model)


# Threads and tasks together --------------------------------------------------------------------


def test_threads_share_one_model_and_count_exactly(srv: FakeOpenAIServer) -> None:
    keys = [new_key(), new_key()]
    model = BalancedChatModel(providers=[entry(srv, k) for k in keys])

    def worker(n: int) -> list[str]:
        return [str(model.invoke(f"t{n}-{i}").content) for i in range(20)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(worker, range(8)))
    assert results == [[f"echo: t{n}-{i}" for i in range(20)] for n in range(8)]
    assert len(srv.requests) == 160
    stats = model.get_stats()
    assert sum(s["total_requests"] for s in stats.values()) == 160
    assert sum(s["total_tokens"] for s in stats.values()) == sum(
        r.usage["total_tokens"] for r in srv.requests if r.usage
    )
    served = Counter(r.api_key for r in srv.requests)
    assert set(served) == set(keys)
    assert_all_counters_zero(model)


def spans_ok(starts: list[float], limit: int, window: float) -> bool:
    starts = sorted(starts)
    return all(starts[i + limit] - starts[i] >= window for i in range(len(starts) - limit))


def test_threads_never_exceed_the_rate_limit_on_the_clock(srv: FakeOpenAIServer) -> None:
    clock = ManualClock()
    model = BalancedChatModel(
        providers=[entry(srv, new_key(), rate_limit=4), entry(srv, new_key(), rate_limit=4)],
        clock=clock,
    )
    state = model.balancer_instance.state
    acquire = state.acquire
    starts: dict[str, list[float]] = {}
    lock = threading.Lock()

    def recording_acquire(key: str, *args: Any) -> Any:
        lease = acquire(key, *args)
        if not isinstance(lease, float):
            with lock:
                starts.setdefault(key, []).append(lease.started)
        return lease

    state.acquire = recording_acquire  # type: ignore[method-assign,assignment]
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            replies = list(pool.map(lambda i: model.invoke(f"r{i}").content, range(30)))
    finally:
        del state.acquire
    assert replies == [f"echo: r{i}" for i in range(30)]
    assert sum(len(s) for s in starts.values()) == 30 == len(srv.requests)
    for key_starts in starts.values():
        assert spans_ok(key_starts, 4, 60.0), sorted(key_starts)
    assert_all_counters_zero(model)


async def test_tasks_and_threads_on_one_model(srv: FakeOpenAIServer) -> None:
    model = BalancedChatModel(providers=[entry(srv, new_key()), entry(srv, new_key())])
    srv.latency = 0.02

    def sync_side() -> list[str]:
        return [str(model.invoke(f"s{i}").content) for i in range(15)]

    sync_future = asyncio.get_running_loop().run_in_executor(None, sync_side)
    async_replies = await asyncio.gather(*(model.ainvoke(f"a{i}") for i in range(30)))
    sync_replies = await sync_future
    assert [r.content for r in async_replies] == [f"echo: a{i}" for i in range(30)]
    assert sync_replies == [f"echo: s{i}" for i in range(15)]
    assert sum(s["total_requests"] for s in model.get_stats().values()) == 45
    assert_all_counters_zero(model)
