"""The balanced chat model over real HTTP: picking, tokens, failover, rests, breakers, retries.

Every test points the real ``openai`` SDK at a ``FakeOpenAIServer`` on loopback and drives
time with a ``ManualClock``: a wait for a 60 s window or a 300 s health interval jumps virtual
time instead of sleeping, while every request is a real HTTP exchange. Keys are unique per
test so no state is shared between tests through the per-key registry.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelError,
    ModelInvalidRequestError,
    ModelNotFoundError,
    ModelPermissionDeniedError,
    ModelRateLimitError,
    ModelTimeoutError,
)

from langchain_pllm import BalancedChatModel, NoProviderAvailableError
from langchain_pllm.balancer import ManualClock
from langchain_pllm.testing import FakeOpenAIServer, Fault

# One transport (tests/integration_tests/conftest.py): what the balancer decides from status codes
# and intact replies. Tests whose outcome the transport carries (latency in flight, dropped
# connections, the Retry-After header) run on both.
pytestmark = pytest.mark.one_transport

MODEL = "gpt-4o-mini"


@pytest.fixture
def srv() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def new_key() -> str:
    return f"sk-test-{uuid.uuid4().hex[:16]}"


def entry(srv: FakeOpenAIServer, key: str, **extra: Any) -> dict[str, Any]:
    return {"vendor": "openai", "api_key": key, "model": MODEL, "api_base": srv.base_url, **extra}


def pool(
    srv: FakeOpenAIServer, clock: ManualClock, n: int = 2, *, extra: Any = None, **kwargs: Any
) -> tuple[BalancedChatModel, list[str]]:
    keys = [new_key() for _ in range(n)]
    extras = extra or [{}] * n
    model = BalancedChatModel(
        providers=[entry(srv, k, **e) for k, e in zip(keys, extras, strict=True)],
        clock=clock,
        **kwargs,
    )
    return model, keys


def served_keys(srv: FakeOpenAIServer) -> list[str | None]:
    return [r.api_key for r in srv.requests]


async def call(model: BalancedChatModel, text: str, run_async: bool) -> Any:
    return await model.ainvoke(text) if run_async else model.invoke(text)


def assert_idle(model: BalancedChatModel) -> None:
    stats = model.get_stats()
    assert all(s["active_requests"] == 0 for s in stats.values()), stats
    assert all(m.active == 0 for m in model.balancer_instance.members)


# Picking ---------------------------------------------------------------------------------------


def test_idle_pool_rotates_least_recently_used(srv: FakeOpenAIServer, clock: ManualClock) -> None:
    model, (a, b, c) = pool(srv, clock, 3)
    ids = [model.invoke(f"q{i}").response_metadata["provider"] for i in range(6)]
    assert ids == ["openai-0", "openai-1", "openai-2"] * 2
    assert served_keys(srv) == [a, b, c] * 2


@pytest.mark.both_transports
async def test_busy_provider_is_passed_over_for_an_idle_one(
    srv: FakeOpenAIServer, clock: ManualClock
) -> None:
    model, (a, b) = pool(srv, clock)
    srv.fault_for_key(a, Fault(latency=0.4), times=1)
    slow = asyncio.create_task(model.ainvoke("slow"))
    for _ in range(400):
        if srv.requests:
            break
        await asyncio.sleep(0.005)
    assert model.get_stats()["openai-0"]["active_requests"] == 1
    # While a's request is in flight, every call goes to the idle b.
    for i in range(4):
        msg = await model.ainvoke(f"fast {i}")
        assert msg.response_metadata["provider"] == "openai-1"
    assert not slow.done()
    assert (await slow).response_metadata["provider"] == "openai-0"
    assert served_keys(srv) == [a, b, b, b, b]
    assert_idle(model)


async def test_concurrent_calls_spread_evenly_by_active_count(
    srv: FakeOpenAIServer, clock: ManualClock
) -> None:
    model, keys = pool(srv, clock, 3)
    srv.latency = 0.15
    replies = await asyncio.gather(*(model.ainvoke(f"q{i}") for i in range(9)))
    assert Counter(r.response_metadata["provider"] for r in replies) == {
        "openai-0": 3,
        "openai-1": 3,
        "openai-2": 3,
    }
    assert Counter(served_keys(srv)) == dict.fromkeys(keys, 3)
    # All nine were in flight together: each key held three at once.
    assert [r.content for r in replies] == [f"echo: q{i}" for i in range(9)]
    assert_idle(model)


async def test_weight_scales_the_share_under_load(
    srv: FakeOpenAIServer, clock: ManualClock
) -> None:
    model, (heavy, light) = pool(srv, clock, extra=[{"weight": 2}, {"weight": 1}])
    srv.latency = 0.15
    await asyncio.gather(*(model.ainvoke(f"q{i}") for i in range(9)))
    assert Counter(served_keys(srv)) == {heavy: 6, light: 3}


# Token counting --------------------------------------------------------------------------------


def test_usage_metadata_equals_the_servers_usage(srv: FakeOpenAIServer, clock: ManualClock) -> None:
    model, _ = pool(srv, clock)
    prompts = ["hi", "three words here", "a much longer prompt with quite a few words in it"]
    for p in prompts:
        msg = model.invoke(p)
        usage = srv.requests[-1].usage
        assert usage is not None
        assert msg.usage_metadata == {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
        }
    served = {r.api_key: 0 for r in srv.requests}
    for r in srv.requests:
        served[r.api_key] += r.usage["total_tokens"] if r.usage else 0
    stats = model.get_stats()
    assert sum(s["total_tokens"] for s in stats.values()) == sum(served.values()) > 0
    assert sum(s["total_requests"] for s in stats.values()) == len(prompts)


async def test_tokens_counted_only_for_answered_requests(
    srv: FakeOpenAIServer, clock: ManualClock
) -> None:
    model, (a, _) = pool(srv, clock)
    srv.fault_for_key(a, Fault(status=500), times=1)
    msg = await model.ainvoke("count me once")
    assert msg.response_metadata["attempts"] == 2
    ok = [r for r in srv.requests if r.status == 200]
    assert len(ok) == 1
    stats = model.get_stats()
    assert stats["openai-0"]["total_tokens"] == 0
    served = ok[0].usage
    assert served is not None
    assert msg.usage_metadata is not None
    assert stats["openai-1"]["total_tokens"] == served["total_tokens"]
    assert msg.usage_metadata["total_tokens"] == served["total_tokens"]


# Failover and error classes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [Fault(status=500), Fault(status=503), Fault(drop=True), Fault(malformed=True)],
    ids=["500", "503", "dropped", "malformed"],
)
def test_transient_failure_fails_over_to_another_key(
    srv: FakeOpenAIServer, clock: ManualClock, fault: Fault
) -> None:
    model, (a, b) = pool(srv, clock)
    srv.fault_for_key(a, fault, times=1)
    msg = model.invoke("hello")
    assert msg.content == "echo: hello"
    assert msg.response_metadata["provider"] == "openai-1"
    assert msg.response_metadata["attempts"] == 2
    assert served_keys(srv) == [a, b]
    stats = model.get_stats()
    assert stats["openai-0"]["error_count"] == 1
    assert stats["openai-0"]["state"] == "closed"  # one failure is below the threshold
    assert_idle(model)


async def test_async_failover(srv: FakeOpenAIServer, clock: ManualClock) -> None:
    model, (a, b) = pool(srv, clock)
    srv.fault_for_key(a, Fault(status=502), times=1)
    msg = await model.ainvoke("hello")
    assert (msg.content, msg.response_metadata["attempts"]) == ("echo: hello", 2)
    assert served_keys(srv) == [a, b]


@pytest.mark.both_transports
@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_429_rests_exactly_that_key_for_retry_after(
    srv: FakeOpenAIServer, clock: ManualClock, run_async: bool
) -> None:
    model, (a, b) = pool(srv, clock, balancer={"breaker_threshold": 1})
    srv.fault_for_key(a, Fault(status=429, retry_after=30), times=1)
    t0 = clock.now()

    async def call(text: str) -> Any:
        return await model.ainvoke(text) if run_async else model.invoke(text)

    msg = await call("first")
    assert msg.response_metadata["provider"] == "openai-1"
    assert msg.response_metadata["attempts"] == 2
    stats = model.get_stats()
    assert stats["openai-0"]["resting_for"] == pytest.approx(30.0)
    assert stats["openai-0"]["state"] == "closed"  # a 429 never counts toward the breaker
    assert stats["openai-1"]["resting_for"] == 0.0
    # The rested key gets nothing while it rests, however long the wait so far ...
    for at in (0.0, 10.0, 29.0, 29.999):
        clock.set(t0 + at)
        assert (await call(f"at {at}")).response_metadata["provider"] == "openai-1"
    # ... and is back in service the moment its Retry-After ends (no stale cooldown).
    clock.set(t0 + 30.0)
    assert (await call("back")).response_metadata["provider"] == "openai-0"
    assert served_keys(srv) == [a, b, b, b, b, b, a]
    assert clock.now() == t0 + 30.0
    assert_idle(model)


def test_429_without_retry_after_rests_the_default(
    srv: FakeOpenAIServer, clock: ManualClock
) -> None:
    model, (a, _) = pool(srv, clock, balancer={"default_retry_after": 7})
    srv.fault_for_key(a, Fault(status=429), times=1)
    model.invoke("x")
    assert model.get_stats()["openai-0"]["resting_for"] == pytest.approx(7.0)


@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_every_key_resting_means_wait_then_succeed(
    srv: FakeOpenAIServer, clock: ManualClock, run_async: bool
) -> None:
    model, (a, b) = pool(srv, clock)
    srv.fault_for_key(a, Fault(status=429, retry_after=10), times=1)
    srv.fault_for_key(b, Fault(status=429, retry_after=20), times=1)
    t0 = clock.now()
    msg = await model.ainvoke("patience") if run_async else model.invoke("patience")
    # Both keys rested; the call waited (virtual time) for the earlier one instead of failing.
    assert msg.content == "echo: patience"
    assert msg.response_metadata["provider"] == "openai-0"
    assert msg.response_metadata["attempts"] == 3
    assert clock.now() == t0 + 10.0
    assert served_keys(srv) == [a, b, a]
    assert_idle(model)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, ModelAuthenticationError),
        (403, ModelPermissionDeniedError),
        (404, ModelNotFoundError),
    ],
)
def test_auth_permission_not_found_open_the_breaker_at_once(
    srv: FakeOpenAIServer, clock: ManualClock, status: int, error: type[ModelError]
) -> None:
    model, (a, b) = pool(srv, clock, balancer={"breaker_threshold": 5})
    srv.fault_for_key(a, Fault(status=status))
    msg = model.invoke("hello")
    assert msg.response_metadata["provider"] == "openai-1"
    assert msg.response_metadata["attempts"] == 2
    stats = model.get_stats()
    assert stats["openai-0"]["state"] == "open"  # one failure, threshold 5: opened at once
    assert stats["openai-1"]["state"] == "closed"
    # An open key gets no traffic before its health interval.
    t0 = clock.now()
    for at in (1.0, 100.0, 299.0):
        clock.set(t0 + at)
        model.invoke(f"more {at}")
    assert served_keys(srv) == [a, b, b, b, b]
    # With only that key, the error itself is raised (as its class), not a "no provider".
    solo_key = new_key()
    solo = BalancedChatModel(providers=[entry(srv, solo_key)], clock=clock, max_retries=0)
    srv.fault_for_key(solo_key, Fault(status=status))
    with pytest.raises(error) as info:
        solo.invoke("x")
    assert getattr(info.value, "status_code", None) == status


@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_400_is_raised_after_one_attempt(
    srv: FakeOpenAIServer, clock: ManualClock, run_async: bool
) -> None:
    model, _ = pool(srv, clock, 3, max_retries=5)
    srv.enqueue(Fault(status=400, message="Unsupported parameter: 'foo'."))
    with pytest.raises(ModelInvalidRequestError) as info:
        await call(model, "bad", run_async)
    assert info.value.status_code == 400  # type: ignore[attr-defined]
    assert len(srv.requests) == 1
    assert all(s["state"] == "closed" for s in model.get_stats().values())
    assert_idle(model)


def test_context_overflow_is_raised_after_one_attempt(
    srv: FakeOpenAIServer, clock: ManualClock
) -> None:
    model, _ = pool(srv, clock, 3)
    srv.enqueue(Fault(status=400, code="context_length_exceeded", message="maximum context length"))
    with pytest.raises(ContextOverflowError):
        model.invoke("far too long")
    assert len(srv.requests) == 1


# Breaker ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_breaker_open_half_open_probe_closed(
    srv: FakeOpenAIServer, clock: ManualClock, run_async: bool
) -> None:
    model, (a,) = pool(
        srv,
        clock,
        1,
        max_retries=0,
        balancer={"breaker_threshold": 2, "health_check_interval": 300, "max_wait": 30},
    )

    async def call(text: str) -> Any:
        return await model.ainvoke(text) if run_async else model.invoke(text)

    srv.fault_for_key(a, Fault(status=500))
    t0 = clock.now()
    for _ in range(2):
        with pytest.raises(ModelAPIError):
            await call("fail")
    assert model.get_stats()["openai-0"]["state"] == "open"
    assert len(srv.requests) == 2
    # Open: no request reaches the key; the call waits its max_wait (virtual), then gives up.
    with pytest.raises(NoProviderAvailableError) as info:
        await call("refused")
    assert info.value.states == {"openai-0": "open"}
    assert clock.now() == t0 + 30
    assert len(srv.requests) == 2
    # Half-open when the interval ends: the next request is the probe ...
    clock.set(t0 + 299.99)
    assert model.get_stats()["openai-0"]["state"] == "open"
    clock.set(t0 + 300)
    assert model.get_stats()["openai-0"]["state"] == "half_open"
    # ... a failed probe opens it again for a whole interval ...
    with pytest.raises(ModelAPIError):
        await call("probe 1")
    assert len(srv.requests) == 3
    assert model.get_stats()["openai-0"]["state"] == "open"
    srv.clear_faults()
    clock.set(t0 + 599.99)
    assert model.get_stats()["openai-0"]["state"] == "open"
    clock.set(t0 + 600)
    # ... and a successful probe closes it.
    assert (await call("probe 2")).content == "echo: probe 2"
    assert model.get_stats()["openai-0"]["state"] == "closed"
    assert (await call("normal")).content == "echo: normal"
    assert len(srv.requests) == 5
    assert_idle(model)


async def test_half_open_lets_exactly_one_probe_through(srv: FakeOpenAIServer) -> None:
    # Real time (a 50 ms health interval): the waiters must be woken by the probe's answer,
    # which arrives in real time.
    key = new_key()
    model = BalancedChatModel(
        providers=[entry(srv, key)],
        max_retries=0,
        balancer={"breaker_threshold": 1, "health_check_interval": 0.05},
    )
    srv.fault_for_key(key, Fault(status=500), times=1)
    with pytest.raises(ModelAPIError):
        await model.ainvoke("trip")
    assert model.get_stats()["openai-0"]["state"] == "open"
    await asyncio.sleep(0.06)
    assert model.get_stats()["openai-0"]["state"] == "half_open"
    srv.latency = 0.2
    replies = await asyncio.gather(*(model.ainvoke(f"q{i}") for i in range(3)))
    assert [r.content for r in replies] == [f"echo: q{i}" for i in range(3)]
    probe, *rest = srv.requests[1:]
    # The others waited for the probe's answer before going out.
    assert len(rest) == 2
    assert all(r.time >= probe.time + 0.15 for r in rest)
    assert model.get_stats()["openai-0"]["state"] == "closed"
    assert_idle(model)


# Retry policies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "expected_requests"),
    [
        ({"retry_policy": "fixed", "max_retries": 0}, 1),
        ({"retry_policy": "fixed", "max_retries": 1}, 2),
        ({"retry_policy": "fixed", "max_retries": 3}, 4),
        ({"retry_policy": "fixed", "max_retries": 6}, 7),
        ({"retry_policy": "retry_once", "max_retries": 6}, 2),
    ],
    ids=["fixed-0", "fixed-1", "fixed-3", "fixed-6", "retry_once"],
)
@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_retry_policy_attempt_counts(
    srv: FakeOpenAIServer,
    clock: ManualClock,
    settings: dict[str, Any],
    expected_requests: int,
    run_async: bool,
) -> None:
    model, _ = pool(srv, clock, 2, balancer={**settings, "breaker_threshold": 100})
    srv.set_fault_rate(1.0, [Fault(status=500)])
    # When retries run out the vendor's own error is raised, not "no provider available".
    with pytest.raises(ModelAPIError) as info:
        await call(model, "x", run_async)
    assert not isinstance(info.value, NoProviderAvailableError)
    assert info.value.status_code == 500  # type: ignore[attr-defined]
    assert len(srv.requests) == expected_requests
    # Attempts alternate between keys: each retry prefers a key not yet tried.
    keys = served_keys(srv)
    assert all(keys[i] != keys[i + 1] for i in range(len(keys) - 1))
    assert_idle(model)


def test_retry_shortcut_arguments_override_balancer_settings(
    srv: FakeOpenAIServer, clock: ManualClock
) -> None:
    model, _ = pool(srv, clock, 2, retry_policy="fixed", max_retries=2, balancer={"max_retries": 9})
    srv.set_fault_rate(1.0, [Fault(status=500)])
    with pytest.raises(ModelAPIError):
        model.invoke("x")
    assert len(srv.requests) == 3


@pytest.mark.both_transports
@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_infinite_policy_retries_until_success(
    srv: FakeOpenAIServer, clock: ManualClock, run_async: bool
) -> None:
    model, _ = pool(srv, clock, 2, retry_policy="infinite", balancer={"breaker_threshold": 100})
    srv.enqueue(*[Fault(status=500)] * 6, *[Fault(drop=True)] * 3, Fault(status=429, retry_after=1))
    msg = await model.ainvoke("stubborn") if run_async else model.invoke("stubborn")
    assert msg.content == "echo: stubborn"
    assert msg.response_metadata["attempts"] == 11
    assert len(srv.requests) == 11
    assert srv.pending_faults == 0
    assert_idle(model)


def test_connection_errors_are_retried_then_raised_as_themselves(
    srv: FakeOpenAIServer, clock: ManualClock
) -> None:
    model, _ = pool(srv, clock, 2, max_retries=2)
    srv.set_fault_rate(1.0, [Fault(drop=True)])
    with pytest.raises(ModelConnectionError):
        model.invoke("x")
    assert len(srv.requests) == 3


def test_rate_limited_everywhere_raises_the_rate_limit_error(
    srv: FakeOpenAIServer, clock: ManualClock
) -> None:
    model, _ = pool(srv, clock, 2, max_retries=3)
    srv.set_fault_rate(1.0, [Fault(status=429, retry_after=5)])
    t0 = clock.now()
    with pytest.raises(ModelRateLimitError) as info:
        model.invoke("x")
    assert info.value.retry_after == 5  # type: ignore[attr-defined]
    assert len(srv.requests) == 4
    # The third and fourth attempts waited for the rests to end.
    assert clock.now() == t0 + 5


def test_single_key_failing_raises_the_real_error_not_no_provider(
    srv: FakeOpenAIServer, clock: ManualClock
) -> None:
    # One key, default settings (threshold 3, max_retries 3): the third 500 opens the breaker
    # before retries run out. The caller must still see the vendor's error, as with two keys,
    # not a "no provider available" that hides it (the masking routers are blamed for).
    model, (a,) = pool(srv, clock, 1)
    srv.fault_for_key(a, Fault(status=500, message="upstream exploded"))
    with pytest.raises(ModelAPIError) as info:
        model.invoke("x")
    assert info.value.status_code == 500  # type: ignore[attr-defined]
    assert "upstream exploded" in str(info.value)
    assert 3 <= len(srv.requests) <= 4
    assert_idle(model)


# Rate limits -----------------------------------------------------------------------------------


def spans_ok(starts: list[float], limit: int, window: float) -> bool:
    """No more than ``limit`` starts in any half-open span of ``window`` seconds."""
    starts = sorted(starts)
    return all(starts[i + limit] - starts[i] >= window for i in range(len(starts) - limit))


@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_rate_limit_is_used_exactly_and_never_exceeded(
    srv: FakeOpenAIServer, clock: ManualClock, run_async: bool
) -> None:
    model, keys = pool(srv, clock, 2, extra=[{"rate_limit": 5}, {"rate_limit": 5}])
    t0 = clock.now()
    starts: dict[str, list[float]] = {"openai-0": [], "openai-1": []}
    for i in range(33):
        msg = await model.ainvoke(f"q{i}") if run_async else model.invoke(f"q{i}")
        # Sequential calls: the clock only moves while a call waits for capacity, so the
        # time after the call is the time its request started.
        starts[msg.response_metadata["provider"]].append(clock.now() - t0)
    for provider_starts in starts.values():
        assert spans_ok(provider_starts, 5, 60.0)
    # Exactly the limit in each window: 10 at once, then 10 the moment the window rolls.
    assert sorted(starts["openai-0"] + starts["openai-1"]) == (
        [0.0] * 10 + [60.0] * 10 + [120.0] * 10 + [180.0] * 3
    )
    assert len(srv.requests) == 33
    assert Counter(served_keys(srv)) == {keys[0]: 17, keys[1]: 16}
    stats = model.get_stats()
    assert stats["openai-0"]["window_used"] + stats["openai-1"]["window_used"] == 3


def test_sliding_window_frees_each_slot_exactly_one_window_after_its_start(
    srv: FakeOpenAIServer, clock: ManualClock
) -> None:
    model, _ = pool(srv, clock, 1, extra=[{"rate_limit": 4}])
    t0 = clock.now()
    model.invoke("a")  # t0
    clock.set(t0 + 10)
    model.invoke("b")  # t0 + 10
    clock.set(t0 + 25)
    model.invoke("c")
    model.invoke("d")  # t0 + 25 twice: the window is full
    clock.set(t0 + 30)
    model.invoke("e")  # waits for a's slot
    assert clock.now() == t0 + 60
    model.invoke("f")  # waits for b's slot
    assert clock.now() == t0 + 70
    model.invoke("g")
    assert clock.now() == t0 + 85  # c and d leave together at t0 + 85
    assert model.get_stats()["openai-0"]["window_used"] == 3


def test_a_fresh_model_from_the_same_config_shares_the_window(
    srv: FakeOpenAIServer, clock: ManualClock
) -> None:
    providers = [entry(srv, new_key(), rate_limit=3)]
    first = BalancedChatModel(providers=providers, clock=clock)
    second = BalancedChatModel(providers=providers, clock=clock)
    tooled = first.bind_tools([])
    t0 = clock.now()
    first.invoke("1")
    tooled.invoke("2")
    second.invoke("3")
    assert clock.now() == t0
    second.invoke("4")  # the key's window is full, whichever object asks
    assert clock.now() == t0 + 60
    assert first.get_stats()["openai-0"]["total_requests"] == 4


async def test_concurrent_calls_never_exceed_the_rate_limit(
    srv: FakeOpenAIServer, clock: ManualClock
) -> None:
    model, _ = pool(srv, clock, 2, extra=[{"rate_limit": 5}, {"rate_limit": 5}])
    balancer = model.balancer_instance
    inner = balancer.state
    starts: dict[str, list[float]] = {}
    acquire = inner.acquire

    def recording_acquire(key: str, *args: Any) -> Any:
        lease = acquire(key, *args)
        if not isinstance(lease, float):
            starts.setdefault(key, []).append(lease.started)
        return lease

    inner.acquire = recording_acquire  # type: ignore[method-assign,assignment]
    try:
        t0 = clock.now()
        replies = await asyncio.gather(*(model.ainvoke(f"q{i}") for i in range(30)))
    finally:
        del inner.acquire
    assert [r.content for r in replies] == [f"echo: q{i}" for i in range(30)]
    assert len(starts) == 2
    for key_starts in starts.values():
        assert len(key_starts) == 15
        assert spans_ok(key_starts, 5, 60.0)
    every = sorted(t - t0 for s in starts.values() for t in s)
    assert every == [0.0] * 10 + [60.0] * 10 + [120.0] * 10
    assert_idle(model)


# Batches under faults --------------------------------------------------------------------------


@pytest.mark.both_transports
async def test_abatch_500_with_30_percent_faults_delivers_each_once_in_order(
    srv: FakeOpenAIServer,
) -> None:
    # Real time with short rests and health intervals: waits end by real releases and real
    # expiry, as in production, and the whole batch takes a second or two.
    keys = [new_key() for _ in range(3)]
    model = BalancedChatModel(
        providers=[entry(srv, k) for k in keys],
        retry_policy="infinite",
        balancer={"health_check_interval": 0.05},
    )
    srv.set_fault_rate(
        0.3,
        [
            Fault(status=500),
            Fault(status=503),
            Fault(status=429, retry_after=0.02),
            Fault(drop=True),
        ],
        seed=7,
    )
    inputs: list[Any] = [f"item {i}" for i in range(500)]
    replies = await model.abatch(inputs, config={"max_concurrency": 64})
    assert [r.content for r in replies] == [f"echo: item {i}" for i in range(500)]
    ok = [r for r in srv.requests if r.status == 200]
    faulted = [r for r in srv.requests if r.fault is not None]
    assert len(ok) == 500
    # Each input answered exactly once by the server (none lost, none duplicated).
    answered = Counter(r.body["messages"][-1]["content"] for r in ok)
    assert answered == Counter(inputs)
    assert 0.2 < len(faulted) / len(srv.requests) < 0.4
    assert sum(r.response_metadata["attempts"] for r in replies) == len(srv.requests)
    stats = model.get_stats()
    assert sum(s["total_requests"] for s in stats.values()) == len(srv.requests)
    assert sum(s["total_tokens"] for s in stats.values()) == sum(
        r.usage["total_tokens"] for r in ok if r.usage
    )
    assert_idle(model)


def test_sync_batch_with_faults_in_order(srv: FakeOpenAIServer) -> None:
    model = BalancedChatModel(
        providers=[entry(srv, new_key()) for _ in range(2)],
        retry_policy="infinite",
        balancer={"health_check_interval": 0.05},
    )
    srv.set_fault_rate(0.3, [Fault(status=500), Fault(status=429, retry_after=0.02)], seed=3)
    inputs: list[Any] = [f"n{i}" for i in range(60)]
    replies = model.batch(inputs, config={"max_concurrency": 8})
    assert [r.content for r in replies] == [f"echo: n{i}" for i in range(60)]
    assert sum(1 for r in srv.requests if r.status == 200) == 60
    assert_idle(model)


def test_request_timeout_bounds_an_attempt_in_flight() -> None:
    import time

    with FakeOpenAIServer() as slow:
        slow.enqueue(Fault(latency=2.0))
        model = BalancedChatModel(
            providers=[
                {"vendor": "openai", "api_key": new_key(), "model": "m", "api_base": slow.base_url}
            ],
            balancer={"request_timeout": 0.3},
            max_retries=0,
        )
        started = time.monotonic()
        with pytest.raises(ModelTimeoutError):
            model.invoke("x")
        assert time.monotonic() - started < 1.5  # cut at the deadline, not after the 2 s reply
