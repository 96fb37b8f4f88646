"""The balancer's algorithm on a manual clock: pick order, limits, breaker, retries, waits.

Providers here are in-process stand-ins at the vendor boundary (a script of replies and
classified errors), so 60-second windows and 300-second health intervals run in microseconds.
The same behaviours are shown over real HTTP against the fake vendor servers in
``tests/integration_tests``.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest
from langchain_core.exceptions import (
    ModelAPIError,
    ModelAuthenticationError,
    ModelInvalidRequestError,
    ModelRateLimitError,
)

from langchain_pllm.balancer import Balancer, ManualClock, Member, MonotonicClock, Picker
from langchain_pllm.config import balancer_from_mapping, pool_from_providers
from langchain_pllm.exceptions import NoProviderAvailableError, model_error
from langchain_pllm.providers.base import Provider
from langchain_pllm.state import BreakerPolicy, Lease, Limits, MemoryState, Outcome


class ScriptedProvider(Provider):
    """Answers from a script: each entry is a value to return or an exception to raise."""

    vendor = "openai"
    model_provider = "openai"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.script: list[Any] = []
        self.calls: list[float] = []
        self.clock: ManualClock | None = None

    def _build_sync_client(self) -> Any:
        return object()  # no SDK: the script is the vendor

    def _build_async_client(self) -> Any:
        return object()

    def run(self) -> str:
        if self.clock is not None:
            self.calls.append(self.clock.now())
        item = self.script.pop(0) if self.script else f"ok from {self.id}"
        if isinstance(item, BaseException):
            raise item
        return str(item)

    async def arun(self, gate: asyncio.Event | None = None) -> str:
        if gate is not None:
            await gate.wait()
        return self.run()


def make_balancer(
    n: int = 2, clock: Any = None, **settings: Any
) -> tuple[Balancer, list[ScriptedProvider], Any]:
    clock = clock or ManualClock()
    limits = settings.pop("limits", {})
    pool = pool_from_providers(
        [
            {"vendor": "openai", "api_key": f"sk-{i}-{id(clock)}", "model": "m", **limits}
            for i in range(n)
        ]
    )
    providers = [ScriptedProvider(p) for p in pool.providers]
    for p in providers:
        p.clock = clock
    config = balancer_from_mapping(settings)
    balancer = Balancer(pool, config, clock=clock, state=MemoryState(), providers=providers)  # type: ignore[arg-type]
    return balancer, providers, clock


def err(cls: type, retry_after: float | None = None) -> BaseException:
    return model_error(cls, f"{cls.__name__} from the script", retry_after=retry_after)


def call(balancer: Balancer) -> tuple[str, Member, int]:
    return balancer.call(lambda p: p.run())  # type: ignore[attr-defined]


# Picker ----------------------------------------------------------------------------------------


def _members(n: int) -> list[Member]:
    pool = pool_from_providers(
        [{"vendor": "openai", "api_key": f"k{i}", "model": "m"} for i in range(n)]
    )
    return [Member(i, ScriptedProvider(p), p, 60.0) for i, p in enumerate(pool.providers)]


def test_picker_takes_least_active_first() -> None:
    members = _members(4)
    picker = Picker(members)
    picked = [picker.candidate((), 0.0) for _ in range(8)]
    # Each member is taken twice, and never a second time before all were taken once.
    assert [m.index for m in picked[:4]] == [0, 1, 2, 3]  # type: ignore[union-attr]
    assert sorted(m.index for m in picked[4:]) == [0, 1, 2, 3]  # type: ignore[union-attr]
    # Finish three requests on member 2: it now has the fewest in flight.
    for _ in range(2):
        picker.done(members[2], failed=False)
    assert picker.candidate((), 0.0) is members[2]


def test_picker_orders_by_failures_then_lru_and_prefers_untried() -> None:
    members = _members(3)
    picker = Picker(members)
    for m in members:
        assert picker.candidate((), 0.0) is m
        picker.done(m, failed=m.index == 0)
    # Equal load: member 0 failed recently, so 1 and 2 come first, least recently used first.
    assert picker.candidate((), 0.0) is members[1]
    assert picker.candidate((), 0.0) is members[2]
    assert picker.candidate({1, 2}, 0.0) is members[0]
    # When every member was tried, the best tried one still serves.
    assert isinstance(picker.candidate({0, 1, 2}, 0.0), Member)


def test_picker_parks_refused_members_until_their_wake_time() -> None:
    members = _members(2)
    picker = Picker(members)
    a = picker.candidate((), 0.0)
    assert a is members[0]
    picker.reject(a, 10.0, 0.0)
    b = picker.candidate((), 0.0)
    assert b is members[1]
    picker.reject(b, 5.0, 0.0)
    assert picker.candidate((), 1.0) == 5.0  # nothing ready: the earliest wake time
    assert picker.candidate((), 5.0) is members[1]
    assert picker.candidate((), 10.0) is members[0]


def test_picker_heap_stays_bounded_and_scales() -> None:
    members = _members(1000)
    picker = Picker(members)
    rng = random.Random(7)
    in_flight: list[Member] = []
    for _ in range(20_000):
        if in_flight and rng.random() < 0.5:
            picker.done(in_flight.pop(rng.randrange(len(in_flight))), failed=False)
        else:
            m = picker.candidate((), 0.0)
            assert isinstance(m, Member)
            # The pick is a least-loaded member.
            assert m.active - 1 == min(x.active for x in members if x is not m) or (
                m.active - 1 <= min(x.active for x in members)
            )
            in_flight.append(m)
    assert sum(len(heap) for heap in picker._ready) <= 4 * len(members) + 64


# State: windows and breaker ------------------------------------------------------------------


BREAKER = BreakerPolicy(threshold=3, interval=300.0)


def test_sliding_window_is_exact_on_random_arrivals() -> None:
    state = MemoryState()
    limits = Limits(rate_limit=20, tpm=None, max_concurrency=None, window=60.0)
    rng = random.Random(3)
    t = 0.0
    starts: list[float] = []
    for _ in range(5000):
        t += rng.expovariate(1.0)  # about 60 attempts a minute against a limit of 20
        r = state.acquire("k", limits, 0, t, BREAKER)
        if isinstance(r, Lease):
            starts.append(t)
            state.release(r, Outcome.SUCCESS, t, BREAKER)
        else:
            assert r > t  # a refusal says when to come back
    # No half-open 60 s span holds more than 20 starts ...
    j = 0
    for i, s in enumerate(starts):
        while starts[j] <= s - 60.0:
            j += 1
        assert i - j + 1 <= 20
    # ... and with demand above the limit the limit is used: a slot is taken by the first
    # arrival after it frees (about a second later at this arrival rate), so over the run the
    # starts reach at least 95% of 20 a minute, not 60 to 90%.
    minutes = (starts[-1] - starts[0]) / 60.0
    assert len(starts) >= 0.95 * 20 * minutes
    assert len(starts) <= 20 * (minutes + 1)


def test_refusal_says_exactly_when_a_slot_frees() -> None:
    state = MemoryState()
    limits = Limits(rate_limit=2, tpm=None, max_concurrency=None, window=60.0)
    assert isinstance(state.acquire("k", limits, 0, 10.0, BREAKER), Lease)
    assert isinstance(state.acquire("k", limits, 0, 15.0, BREAKER), Lease)
    assert state.acquire("k", limits, 0, 20.0, BREAKER) == 70.0
    assert state.acquire("k", limits, 0, 69.999, BREAKER) == 70.0
    assert isinstance(state.acquire("k", limits, 0, 70.0, BREAKER), Lease)


def test_token_window_reserves_then_settles() -> None:
    state = MemoryState()
    limits = Limits(rate_limit=None, tpm=1000, max_concurrency=None, window=60.0)
    a = state.acquire("k", limits, 600, 0.0, BREAKER)
    assert isinstance(a, Lease)
    assert state.acquire("k", limits, 600, 1.0, BREAKER) == 60.0  # 1,200 would exceed 1,000
    state.release(a, Outcome.SUCCESS, 2.0, BREAKER, tokens_used=150)  # the real usage
    b = state.acquire("k", limits, 600, 3.0, BREAKER)
    assert isinstance(b, Lease)
    snap = state.snapshot("k", limits, 3.0)
    assert snap.tokens_in_window == 750
    assert snap.total_tokens == 150
    # A request larger than the whole budget may still run alone in an empty window.
    state.release(b, Outcome.FAILURE, 4.0, BREAKER)  # refused: spent no tokens
    assert state.snapshot("k", limits, 4.0).tokens_in_window == 150
    assert isinstance(state.acquire("k", limits, 5000, 61.0, BREAKER), Lease)


def test_breaker_opens_probes_once_and_closes() -> None:
    state = MemoryState()
    limits = Limits(None, None, None, 60.0)
    for t in (1.0, 2.0, 3.0):
        lease = state.acquire("k", limits, 0, t, BREAKER)
        assert isinstance(lease, Lease)
        state.release(lease, Outcome.FAILURE, t, BREAKER)
    assert state.snapshot("k", limits, 3.0).state == "open"
    assert state.acquire("k", limits, 0, 100.0, BREAKER) == 303.0  # open until the interval
    probe = state.acquire("k", limits, 0, 303.0, BREAKER)
    assert isinstance(probe, Lease)
    assert probe.probe
    assert state.acquire("k", limits, 0, 303.5, BREAKER) == math.inf  # one probe at a time
    state.release(probe, Outcome.FAILURE, 304.0, BREAKER)  # a failed probe reopens
    assert state.snapshot("k", limits, 304.0).state == "open"
    probe = state.acquire("k", limits, 0, 604.0, BREAKER)
    assert isinstance(probe, Lease)
    state.release(probe, Outcome.SUCCESS, 605.0, BREAKER)
    assert state.snapshot("k", limits, 605.0).state == "closed"
    assert isinstance(state.acquire("k", limits, 0, 605.0, BREAKER), Lease)


def test_rate_limited_and_neutral_outcomes_do_not_count_toward_the_breaker() -> None:
    state = MemoryState()
    limits = Limits(None, None, None, 60.0)
    for t in range(10):
        lease = state.acquire("k", limits, 0, 1000.0 + t * 10, BREAKER)
        assert isinstance(lease, Lease)
        outcome = Outcome.RATE_LIMITED if t % 2 else Outcome.NEUTRAL
        state.release(lease, outcome, 1000.0 + t * 10, BREAKER, retry_after=2.0)
    snap = state.snapshot("k", limits, 1100.0)
    assert snap.state == "closed"
    assert snap.error_count == 5  # the 429s: a neutral outcome is not an error of the key


# Balancer: errors and retries -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "max_retries", "expected"),
    [("fixed", 3, 4), ("fixed", 0, 1), ("retry_once", 5, 2)],
)
def test_retry_policies_make_exact_attempt_counts(
    policy: str, max_retries: int, expected: int
) -> None:
    balancer, providers, _ = make_balancer(
        2, retry_policy=policy, max_retries=max_retries, breaker_threshold=100
    )
    for p in providers:
        p.script = [err(ModelAPIError) for _ in range(10)]
    with pytest.raises(ModelAPIError):
        call(balancer)
    assert sum(len(p.calls) for p in providers) == expected


def test_infinite_policy_retries_until_success() -> None:
    balancer, providers, _ = make_balancer(
        1, retry_policy="infinite", breaker_threshold=1000, default_retry_after=0.0
    )
    providers[0].script = [err(ModelAPIError) for _ in range(25)]
    result, _, attempts = call(balancer)
    assert result == "ok from openai-0"
    assert attempts == 26


def test_invalid_request_is_raised_after_one_attempt_without_breaker_count() -> None:
    balancer, providers, _ = make_balancer(2)
    providers[0].script = [err(ModelInvalidRequestError)]
    with pytest.raises(ModelInvalidRequestError):
        call(balancer)
    assert [len(p.calls) for p in providers] == [1, 0]
    stats = balancer.get_stats()["openai-0"]
    assert stats["state"] == "closed"
    assert stats["error_count"] == 0  # the request's fault, not the key's


def test_authentication_error_opens_the_breaker_at_once_and_fails_over() -> None:
    balancer, providers, _ = make_balancer(2, breaker_threshold=5)
    providers[0].script = [err(ModelAuthenticationError)]
    result, member, attempts = call(balancer)
    assert (result, member.config.id, attempts) == ("ok from openai-1", "openai-1", 2)
    assert balancer.get_stats()["openai-0"]["state"] == "open"
    for _ in range(5):  # the open key gets nothing until its health check
        assert call(balancer)[1].config.id == "openai-1"


def test_rate_limited_key_rests_exactly_retry_after() -> None:
    balancer, providers, clock = make_balancer(2)
    start = clock.now()
    providers[0].script = [err(ModelRateLimitError, retry_after=7.0)]
    _, member, attempts = call(balancer)
    assert (member.config.id, attempts) == ("openai-1", 2)
    clock.set(start + 6.99)
    for _ in range(3):
        assert call(balancer)[1].config.id == "openai-1"
    clock.set(start + 7.0)
    served = {call(balancer)[1].config.id for _ in range(4)}
    assert served == {"openai-0", "openai-1"}  # back in service the moment the rest ends
    assert balancer.get_stats()["openai-0"]["state"] == "closed"


def test_when_every_key_rests_the_call_waits_instead_of_failing() -> None:
    balancer, providers, clock = make_balancer(2, max_retries=3)
    start = clock.now()
    providers[0].script = [err(ModelRateLimitError, retry_after=30.0)]
    providers[1].script = [err(ModelRateLimitError, retry_after=12.0)]
    result, member, attempts = call(balancer)
    assert (member.config.id, attempts) == ("openai-1", 3)
    assert providers[1].calls[-1] == pytest.approx(start + 12.0)  # woke exactly when it freed


def test_retries_exhausted_raise_the_real_error_not_no_provider() -> None:
    balancer, providers, _ = make_balancer(2, max_retries=2, breaker_threshold=100)
    for p in providers:
        p.script = [err(ModelAPIError) for _ in range(3)]
    with pytest.raises(ModelAPIError) as info:
        call(balancer)
    assert not isinstance(info.value, NoProviderAvailableError)


def test_no_provider_after_max_wait_carries_the_last_error() -> None:
    balancer, providers, clock = make_balancer(1, max_wait=5.0, limits={"rate_limit": 1})
    call(balancer)
    start = clock.now()
    with pytest.raises(NoProviderAvailableError) as info:
        call(balancer)
    assert clock.now() == pytest.approx(start + 5.0)
    assert info.value.waited == pytest.approx(5.0)


def test_rate_limit_exact_through_the_balancer_on_the_clock() -> None:
    balancer, providers, clock = make_balancer(2, limits={"rate_limit": 5}, max_wait=1000)
    for _ in range(40):
        call(balancer)
    for p in providers:
        starts = p.calls
        assert len(starts) == 20
        for i in range(len(starts) - 5):
            assert starts[i + 5] >= starts[i] + 60.0  # the 6th start is a full window later
    # Four windows for 40 requests at 10 a window: the limit is used in full.
    assert clock.now() - 1000.0 == pytest.approx(180.0)


def test_breaker_half_open_probe_then_closed_through_the_balancer() -> None:
    balancer, providers, clock = make_balancer(
        2, breaker_threshold=2, health_check_interval=300, max_retries=0
    )
    providers[0].script = [err(ModelAPIError), err(ModelAPIError)]
    for _ in range(2):
        with pytest.raises(ModelAPIError):
            balancer.call(lambda p: p.run(), avoid={1})  # type: ignore[attr-defined]
    assert balancer.get_stats()["openai-0"]["state"] == "open"
    opened = clock.now()
    assert {call(balancer)[1].config.id for _ in range(4)} == {"openai-1"}
    clock.set(opened + 300.0)
    assert balancer.get_stats()["openai-0"]["state"] == "half_open"
    _, member, _ = balancer.call(lambda p: p.run(), avoid={1})  # type: ignore[attr-defined]
    assert member.config.id == "openai-0"  # the probe succeeded
    assert balancer.get_stats()["openai-0"]["state"] == "closed"


# Async: cancellation leaves nothing behind ----------------------------------------------------


async def test_cancelling_in_flight_calls_releases_every_slot() -> None:
    balancer, _, _ = make_balancer(3, limits={"max_concurrency": 50})
    gate = asyncio.Event()
    tasks = [
        asyncio.create_task(balancer.acall(lambda p: p.arun(gate)))  # type: ignore[attr-defined]
        for _ in range(100)
    ]
    await asyncio.sleep(0.01)
    stats = balancer.get_stats()
    assert sum(s["active_requests"] for s in stats.values()) == 100
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stats = balancer.get_stats()
    assert all(s["active_requests"] == 0 for s in stats.values())
    assert all(m.active == 0 for m in balancer.members)
    assert balancer._waiters == [] or all(callable(w) for w in balancer._waiters)


async def test_max_concurrency_caps_in_flight_and_wakes_on_release() -> None:
    # The real clock: on a manual clock the waiter would jump time while the others are held.
    balancer, _, _ = make_balancer(1, MonotonicClock(), limits={"max_concurrency": 2})
    gate = asyncio.Event()
    held = [
        asyncio.create_task(balancer.acall(lambda p: p.arun(gate)))  # type: ignore[attr-defined]
        for _ in range(2)
    ]
    await asyncio.sleep(0.01)
    assert balancer.get_stats()["openai-0"]["active_requests"] == 2
    third = asyncio.create_task(balancer.acall(lambda p: p.arun()))  # type: ignore[attr-defined]
    await asyncio.sleep(0.01)
    assert not third.done()  # waiting for a slot, not failing
    assert balancer.get_stats()["openai-0"]["active_requests"] == 2
    gate.set()  # the held calls finish; their releases wake the waiter
    results = await asyncio.gather(*held, third)
    assert [r[0] for r in results] == ["ok from openai-0"] * 3
    assert balancer.get_stats()["openai-0"]["active_requests"] == 0


def test_a_key_that_failed_once_returns_to_the_rotation() -> None:
    balancer, providers, _ = make_balancer(3, breaker_threshold=5)
    providers[0].script = [err(ModelAPIError)]
    assert call(balancer)[1].config.id == "openai-1"  # failed over
    served = [call(balancer)[1].config.id for _ in range(9)]
    # The failure costs key 0 one turn, not its place in the pool: the others go first, then
    # the rotation is even again.
    assert served[:2] == ["openai-2", "openai-1"]
    assert sorted(served[3:]) == [
        "openai-0",
        "openai-0",
        "openai-1",
        "openai-1",
        "openai-2",
        "openai-2",
    ]


def test_weights_scale_the_share_of_sequential_calls() -> None:
    clock = ManualClock()
    pool = pool_from_providers(
        [
            {"vendor": "openai", "api_key": "w-a", "model": "m", "weight": 2},
            {"vendor": "openai", "api_key": "w-b", "model": "m", "weight": 1},
        ]
    )
    providers = [ScriptedProvider(p) for p in pool.providers]
    balancer = Balancer(
        pool, balancer_from_mapping({}), clock=clock, state=MemoryState(), providers=providers
    )
    served = [call(balancer)[1].config.id for _ in range(30)]
    assert served.count("openai-0") == 20
    assert served.count("openai-1") == 10


def test_a_half_open_key_is_probed_even_behind_an_idle_healthy_peer() -> None:
    balancer, providers, clock = make_balancer(
        2, breaker_threshold=1, health_check_interval=300, max_retries=1
    )
    providers[0].script = [err(ModelAPIError)]
    call(balancer)
    assert balancer.get_stats()["openai-0"]["state"] == "open"
    clock.advance(300.0)
    served = [call(balancer)[1].config.id for _ in range(4)]
    assert "openai-0" in served
    assert balancer.get_stats()["openai-0"]["state"] == "closed"


async def test_a_release_in_another_balancer_sharing_the_key_is_seen_soon() -> None:
    # Two balancers (different settings) on one key with room for one request at a time: the
    # second learns of the first's release by polling with a short back-off, not a whole window.
    clock = ManualClock()
    state = MemoryState()
    pool = pool_from_providers(
        [{"vendor": "openai", "api_key": "shared-key", "model": "m", "max_concurrency": 1}]
    )

    def balancer(retries: int) -> Balancer:
        provider = ScriptedProvider(pool.providers[0])
        settings = balancer_from_mapping({"max_retries": retries})
        return Balancer(pool, settings, clock=clock, state=state, providers=[provider])

    first, second = balancer(1), balancer(2)
    gate = asyncio.Event()
    held = asyncio.create_task(first.acall(lambda p: p.arun(gate)))  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    start = clock.now()
    waiting = asyncio.create_task(second.acall(lambda p: p.arun()))  # type: ignore[attr-defined]
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done()
    gate.set()
    await held
    result, _, _ = await waiting
    assert result == "ok from openai-0"
    assert clock.now() - start < 2.0  # a back-off step, not the 60 s window


async def test_cancelled_between_pick_and_state_answer_undoes_the_pick() -> None:
    class SlowState(MemoryState):
        """A remote-like state whose acquire takes a while (as a Redis round trip does)."""

        @property
        def is_local(self) -> bool:
            return False

        async def aacquire(self, *args: Any) -> Any:
            await asyncio.sleep(0.05)
            return super().acquire(*args)

    clock = ManualClock()
    pool = pool_from_providers([{"vendor": "openai", "api_key": "slow-state", "model": "m"}])
    provider = ScriptedProvider(pool.providers[0])
    balancer = Balancer(
        pool, balancer_from_mapping({}), clock=clock, state=SlowState(), providers=[provider]
    )
    task = asyncio.create_task(balancer.acall(lambda p: p.arun()))  # type: ignore[attr-defined]
    await asyncio.sleep(0.01)
    assert balancer.members[0].active == 1  # picked, waiting for the state
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert balancer.members[0].active == 0
    result, member, _ = await balancer.acall(lambda p: p.arun())  # type: ignore[attr-defined]
    assert member.active == 0
    assert result == "ok from openai-0"


def test_the_attempt_timeout_is_the_tightest_of_key_call_and_deadline() -> None:
    from langchain_pllm.providers.base import ATTEMPT_BUDGET, ChatRequest

    pool = pool_from_providers(
        [
            {"vendor": "openai", "api_key": "t", "model": "m", "timeout": 0.3},
            {"vendor": "openai", "api_key": "u", "model": "m"},
        ]
    )
    keyed, plain = (ScriptedProvider(p) for p in pool.providers)
    assert keyed.attempt_timeout(ChatRequest([], {}, 5.0)) == 0.3  # the key's own timeout wins
    assert keyed.attempt_timeout(ChatRequest([], {}, 0.2)) == 0.2
    assert plain.attempt_timeout(ChatRequest([], {}, None)) is None  # the SDK's default
    token = ATTEMPT_BUDGET.set(0.05)
    try:
        assert keyed.attempt_timeout(ChatRequest([], {}, 5.0)) == 0.05
        assert plain.attempt_timeout(ChatRequest([], {}, None)) == 0.05
    finally:
        ATTEMPT_BUDGET.reset(token)


def test_each_attempt_gets_what_is_left_of_the_request_deadline() -> None:
    from langchain_pllm.providers.base import ATTEMPT_BUDGET

    balancer, providers, _ = make_balancer(1, request_timeout=10.0, max_retries=3)
    providers[0].script = [err(ModelRateLimitError, retry_after=4.0)]
    budgets: list[float | None] = []

    def run(p: Provider) -> str:
        budgets.append(ATTEMPT_BUDGET.get())
        return p.run()  # type: ignore[attr-defined, no-any-return]

    assert balancer.call(run)[0] == "ok from openai-0"
    assert budgets == [pytest.approx(10.0), pytest.approx(6.0)]  # the 4 s rest was spent
    assert ATTEMPT_BUDGET.get() is None  # nothing leaks out of the call


def test_requests_per_second_of_a_young_pool_is_over_its_age() -> None:
    balancer, _, clock = make_balancer(n=1)
    clock.advance(0.5)
    for _ in range(12):  # 12 requests in the pool's first 2 seconds: 6/s, not 12/60
        balancer.call(lambda p: p.run())
        clock.advance(1.5 / 12)
    assert balancer.get_stats()["openai-0"]["requests_per_second"] == pytest.approx(6.0)
    clock.advance(118.0)  # two minutes on, the minute holds none of them
    assert balancer.get_stats()["openai-0"]["requests_per_second"] == 0.0


def test_hooks_stay_off_the_hot_path_until_configured_or_learned() -> None:
    # The no-I/O cost of a call (README's benchmark) depends on these staying off for a plain
    # pool; a budget or a learned limit must still turn them on.
    plain, _, _ = make_balancer()
    for _ in range(3):
        plain.call(lambda p: p.run())
    assert plain.limits.idle
    assert not plain.args.needed
    windowed, _, _ = make_balancer(limits={"limits": {"requests": "5/minute"}})
    assert not windowed.args.needed  # a request window needs no price and no calendar day
    budget = {"limits": {"cost": "100/day"}, "price": {"input": 1.0, "output": 2.0}}
    budgeted, _, _ = make_balancer(limits=budget)
    assert budgeted.args.needed
    # A vendor's "too much concurrency" (Zhipu 1302) cuts the key's cap: the hooks turn on.
    crowded, providers, _ = make_balancer()
    refusal = model_error(ModelRateLimitError, "1302: too many in flight", retry_after=0)
    refusal.concurrency_exceeded = True  # type: ignore[attr-defined]
    providers[0].script = [refusal]
    providers[1].script = [refusal]
    crowded.call(lambda p: p.run())
    assert not crowded.limits.idle


class _WaitsUntilCancelled(ManualClock):
    """A clock whose async waits end only by a wake-up or a cancellation (a long real wait)."""

    async def await_event(self, event: asyncio.Event, deadline: float) -> None:
        await event.wait()


async def test_a_request_cancelled_while_it_waits_to_retry_carries_its_attempts() -> None:
    # The error a request ends with carries its attempts on every path, a cancellation while
    # it waits for a key to retry on included: PllmProgress counts the retries it made.
    balancer, providers, _ = make_balancer(1, clock=_WaitsUntilCancelled(), max_retries=3)
    providers[0].script = [err(ModelRateLimitError, retry_after=30.0)]
    task = asyncio.ensure_future(balancer.acall(lambda p: p.arun()))  # type: ignore[attr-defined]
    for _ in range(3):  # the attempt fails and is released; the request waits for the rest
        await asyncio.sleep(0)
    assert len(providers[0].calls) == 1
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError) as caught:
        await task
    assert getattr(caught.value, "attempts", None) == 1
    assert balancer.get_stats()["openai-0"]["active_requests"] == 0


def test_a_state_error_ends_a_request_with_its_attempts() -> None:
    balancer, providers, _ = make_balancer(2, max_retries=3)
    providers[0].script = [err(ModelAPIError)]
    providers[1].script = [err(ModelAPIError)]
    acquire = balancer.state.acquire
    taken: list[str] = []

    def failing_acquire(key: str, *args: Any, **kwargs: Any) -> Any:
        if len(taken) == 2:
            raise ConnectionError("the state is away")
        taken.append(key)
        return acquire(key, *args, **kwargs)

    balancer.state.acquire = failing_acquire  # type: ignore[method-assign]
    with pytest.raises(ConnectionError) as caught:
        call(balancer)
    assert getattr(caught.value, "attempts", None) == 2
