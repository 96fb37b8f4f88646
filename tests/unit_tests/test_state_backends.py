"""One test class run against every state backend, the way ``limits`` tests every storage.

``TestStateBackend`` pins the rules of ``MemoryState`` (the reference) and checks that
``RedisState`` (Lua scripts on a real ``redis-server``) follows them exactly; time is passed in
(Redis with ``server_time=False``), so a 60 s window is tested in microseconds. The Redis-only
classes then check what only a shared store has: two states (two processes) sharing one truth,
leases that expire, the server's clock, key layout and TTLs, and the local fallback when Redis
is stopped or frozen.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from typing import TYPE_CHECKING

import pytest
import redis

from langchain_pllm.clock import ManualClock, MonotonicClock
from langchain_pllm.config import BalancerConfig
from langchain_pllm.config.quotas import QuotaWindow
from langchain_pllm.state import state_for
from langchain_pllm.state.base import (
    BreakerPolicy,
    Lease,
    Limits,
    Outcome,
    Periods,
    StateBackend,
)
from langchain_pllm.state.memory import MemoryState
from langchain_pllm.state.redis import RedisState

if TYPE_CHECKING:
    from tests.redis_cluster_fixture import LocalCluster

pytest_plugins = ["tests.redis_fixture", "tests.redis_cluster_fixture"]

W = 60.0
T0 = 1000.0
KEY = "0123456789abcdef"
OTHER = "fedcba9876543210"
BREAKER = BreakerPolicy(threshold=3, interval=300.0)


def limits(
    rate: int | None = None, tpm: int | None = None, conc: int | None = None, window: float = W
) -> Limits:
    return Limits(rate, tpm, conc, window)


def quota_limits(*windows: QuotaWindow, calendar: bool = False) -> Limits:
    return Limits(None, None, None, W, windows, calendar)


def take_in(state: StateBackend, lim: Limits, now: float, periods: Periods) -> Lease:
    r = state.acquire(KEY, lim, 0, now, BREAKER, periods=periods)
    assert isinstance(r, Lease), f"refused until {r}"
    return r


def take(state: StateBackend, lim: Limits, now: float, tokens: int = 0, key: str = KEY) -> Lease:
    r = state.acquire(key, lim, tokens, now, BREAKER)
    assert isinstance(r, Lease), f"refused until {r}"
    return r


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> StateBackend:
    if request.param == "memory":
        return MemoryState()
    # The cluster: three masters and three replicas, a password on every node.
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
    # A generous timeout: a busy test machine must not make the backend fall back.
    return RedisState(url, server_time=False, timeout=5.0)


class TestStateBackend:
    """The rules every backend keeps."""

    def test_request_window_admits_the_limit_then_names_the_wake_time(
        self, backend: StateBackend
    ) -> None:
        lim = limits(rate=3)
        for i in range(3):
            backend.release(take(backend, lim, T0 + i), Outcome.SUCCESS, T0 + i, BREAKER)
        assert backend.acquire(KEY, lim, 0, T0 + 3, BREAKER) == T0 + W
        assert backend.acquire(KEY, lim, 0, T0 + W - 0.001, BREAKER) == T0 + W
        take(backend, lim, T0 + W)  # the first start leaves the window exactly at T0 + W
        assert backend.acquire(KEY, lim, 0, T0 + W + 0.5, BREAKER) == T0 + 1 + W

    def test_token_window_refuses_what_would_exceed_tpm(self, backend: StateBackend) -> None:
        lim = limits(tpm=100)
        take(backend, lim, T0, tokens=60)
        take(backend, lim, T0 + 1, tokens=40)
        assert backend.acquire(KEY, lim, 1, T0 + 2, BREAKER) == T0 + W
        take(backend, lim, T0 + W, tokens=60)  # the first 60 aged out
        assert backend.snapshot(KEY, lim, T0 + W).tokens_in_window == 100

    def test_oversized_request_runs_alone_in_an_empty_window(self, backend: StateBackend) -> None:
        lim = limits(tpm=100)
        take(backend, lim, T0, tokens=500)
        assert backend.acquire(KEY, lim, 1, T0 + 1, BREAKER) == T0 + W

    def test_tokens_settled_to_zero_do_not_block_an_oversized_request(
        self, backend: StateBackend
    ) -> None:
        lim = limits(tpm=100)
        refused = take(backend, lim, T0, tokens=80)
        backend.release(refused, Outcome.FAILURE, T0 + 1, BREAKER)  # spent nothing: settled to 0
        take(backend, lim, T0 + 2, tokens=500)  # the window holds an entry but sums to 0
        assert backend.acquire(KEY, lim, 1, T0 + 3, BREAKER) == T0 + W

    def test_settling_returns_unused_tokens(self, backend: StateBackend) -> None:
        lim = limits(tpm=100)
        lease = take(backend, lim, T0, tokens=80)
        assert backend.acquire(KEY, lim, 30, T0 + 1, BREAKER) == T0 + W
        backend.release(lease, Outcome.SUCCESS, T0 + 2, BREAKER, tokens_used=20)
        take(backend, lim, T0 + 3, tokens=30)
        snap = backend.snapshot(KEY, lim, T0 + 3)
        assert snap.tokens_in_window == 50
        assert snap.total_tokens == 20

    def test_refused_request_spends_nothing_and_cancelled_keeps_its_estimate(
        self, backend: StateBackend
    ) -> None:
        lim = limits(tpm=100)
        failed = take(backend, lim, T0, tokens=50)
        cancelled = take(backend, lim, T0, tokens=50)
        backend.release(failed, Outcome.FAILURE, T0 + 1, BREAKER)
        backend.release(cancelled, Outcome.CANCELLED, T0 + 1, BREAKER)
        snap = backend.snapshot(KEY, lim, T0 + 1)
        assert snap.tokens_in_window == 50
        assert snap.total_tokens == 0
        assert snap.active_requests == 0

    def test_success_without_usage_counts_the_estimate(self, backend: StateBackend) -> None:
        lim = limits(tpm=100)
        backend.release(take(backend, lim, T0, tokens=30), Outcome.SUCCESS, T0, BREAKER)
        assert backend.snapshot(KEY, lim, T0).total_tokens == 30

    def test_concurrency_cap_waits_for_a_release(self, backend: StateBackend) -> None:
        lim = limits(conc=2)
        first = take(backend, lim, T0)
        take(backend, lim, T0)
        assert backend.acquire(KEY, lim, 0, T0, BREAKER) == math.inf
        backend.release(first, Outcome.SUCCESS, T0 + 1, BREAKER)
        take(backend, lim, T0 + 1)

    def test_breaker_opens_after_threshold_then_one_probe_decides(
        self, backend: StateBackend
    ) -> None:
        lim = limits()
        for i in range(3):
            backend.release(take(backend, lim, T0 + i), Outcome.FAILURE, T0 + i, BREAKER)
        opened = T0 + 2
        assert backend.snapshot(KEY, lim, T0 + 3).state == "open"
        assert backend.acquire(KEY, lim, 0, T0 + 3, BREAKER) == opened + BREAKER.interval
        later = opened + BREAKER.interval
        assert backend.snapshot(KEY, lim, later).state == "half_open"
        probe = take(backend, lim, later)
        assert probe.probe
        assert backend.acquire(KEY, lim, 0, later, BREAKER) == math.inf  # one probe only
        backend.release(probe, Outcome.SUCCESS, later + 1, BREAKER)
        assert backend.snapshot(KEY, lim, later + 1).state == "closed"
        assert not take(backend, lim, later + 1).probe

    def test_failed_probe_opens_the_breaker_again(self, backend: StateBackend) -> None:
        lim = limits()
        backend.release(take(backend, lim, T0), Outcome.TRIP, T0, BREAKER)
        later = T0 + BREAKER.interval
        probe = take(backend, lim, later)
        backend.release(probe, Outcome.FAILURE, later + 1, BREAKER)
        assert backend.acquire(KEY, lim, 0, later + 2, BREAKER) == later + 1 + BREAKER.interval

    def test_trip_opens_at_once(self, backend: StateBackend) -> None:
        lim = limits()
        backend.release(take(backend, lim, T0), Outcome.TRIP, T0, BREAKER)
        assert backend.acquire(KEY, lim, 0, T0 + 1, BREAKER) == T0 + BREAKER.interval
        assert backend.snapshot(KEY, lim, T0 + 1).error_count == 1

    def test_success_resets_the_failure_run(self, backend: StateBackend) -> None:
        lim = limits()
        for outcome in [Outcome.FAILURE] * 2 + [Outcome.SUCCESS] + [Outcome.FAILURE] * 2:
            backend.release(take(backend, lim, T0), outcome, T0, BREAKER)
        snap = backend.snapshot(KEY, lim, T0)
        assert snap.state == "closed"
        assert snap.error_count == 4

    def test_rate_limited_rests_the_key_without_counting_toward_the_breaker(
        self, backend: StateBackend
    ) -> None:
        lim = limits()
        for i in range(5):
            lease = take(backend, lim, T0 + 10 * i)
            backend.release(lease, Outcome.RATE_LIMITED, T0 + 10 * i, BREAKER, retry_after=7.0)
        last = T0 + 40
        assert backend.acquire(KEY, lim, 0, last + 1, BREAKER) == last + 7
        snap = backend.snapshot(KEY, lim, last + 1)
        assert snap.state == "closed"
        assert snap.rest_until == last + 7
        assert snap.error_count == 5
        take(backend, lim, last + 7)

    def test_a_shorter_retry_after_never_cuts_a_longer_rest(self, backend: StateBackend) -> None:
        lim = limits()
        a, b = take(backend, lim, T0), take(backend, lim, T0)
        backend.release(a, Outcome.RATE_LIMITED, T0, BREAKER, retry_after=30.0)
        backend.release(b, Outcome.RATE_LIMITED, T0 + 1, BREAKER, retry_after=1.0)
        assert backend.snapshot(KEY, lim, T0 + 2).rest_until == T0 + 30

    def test_neutral_is_not_an_error_of_the_key(self, backend: StateBackend) -> None:
        lim = limits()
        for _ in range(5):
            backend.release(take(backend, lim, T0), Outcome.NEUTRAL, T0, BREAKER)
        snap = backend.snapshot(KEY, lim, T0)
        assert (snap.state, snap.error_count) == ("closed", 0)

    def test_snapshot_counts(self, backend: StateBackend) -> None:
        lim = limits(rate=10)
        held = take(backend, lim, T0)
        backend.release(take(backend, lim, T0 + 1), Outcome.SUCCESS, T0 + 1, BREAKER)
        backend.count_validation_failure(KEY)
        snap = backend.snapshot(KEY, lim, T0 + 2)
        assert snap.total_requests == 2
        assert snap.window_used == 2
        assert snap.active_requests == 1
        assert snap.validation_failures == 1
        assert snap.state == "closed"
        assert backend.snapshot(KEY, lim, T0 + 1 + W).window_used == 0
        backend.release(held, Outcome.SUCCESS, T0 + 2, BREAKER)
        assert backend.snapshot(KEY, lim, T0 + 2).active_requests == 0

    def test_fresh_key_reads_empty(self, backend: StateBackend) -> None:
        snap = backend.snapshot(OTHER, limits(rate=1), T0)
        assert snap.state == "closed"
        assert snap.total_requests == snap.active_requests == snap.window_used == 0
        assert snap.rest_until == 0.0

    def test_keys_are_independent(self, backend: StateBackend) -> None:
        lim = limits(rate=1)
        take(backend, lim, T0)
        assert backend.acquire(KEY, lim, 0, T0, BREAKER) == T0 + W
        take(backend, lim, T0, key=OTHER)

    async def test_async_twins_keep_the_same_rules(self, backend: StateBackend) -> None:
        lim = limits(rate=2, tpm=100)
        a = await backend.aacquire(KEY, lim, 60, T0, BREAKER)
        assert isinstance(a, Lease)
        assert await backend.aacquire(KEY, lim, 60, T0, BREAKER) == T0 + W
        await backend.arelease(a, Outcome.SUCCESS, T0, BREAKER, tokens_used=10)
        b = await backend.aacquire(KEY, lim, 60, T0 + 1, BREAKER)
        assert isinstance(b, Lease)
        await backend.arelease(b, Outcome.TRIP, T0 + 1, BREAKER)
        snap = await backend.asnapshot(KEY, lim, T0 + 2)
        assert (snap.state, snap.tokens_in_window, snap.total_tokens) == (
            "open",
            10,
            10,
        )  # the tripped one spent nothing

    def test_a_spent_key_rests_then_one_probe_and_never_counts_to_the_breaker(
        self, backend: StateBackend
    ) -> None:
        lim = limits()
        for episode in range(4):  # more than the breaker threshold
            t = T0 + episode * 100.0
            lease = take(backend, lim, t)
            assert lease.probe is (episode > 0)
            backend.release(lease, Outcome.EXHAUSTED, t, BREAKER, retry_after=100.0)
            snap = backend.snapshot(KEY, lim, t + 1)
            assert (snap.state, snap.exhausted_until) == ("exhausted", t + 100.0)
            assert backend.acquire(KEY, lim, 0, t + 99, BREAKER) == t + 100.0
        later = T0 + 400.0
        assert backend.snapshot(KEY, lim, later).state == "half_open"
        probe = take(backend, lim, later)
        assert backend.acquire(KEY, lim, 0, later, BREAKER) == math.inf  # one probe
        backend.release(probe, Outcome.SUCCESS, later, BREAKER)
        assert backend.snapshot(KEY, lim, later).state == "closed"

    def test_every_limits_window_must_have_room(self, backend: StateBackend) -> None:
        lim = quota_limits(QuotaWindow("requests", 2, 1.0), QuotaWindow("requests", 3, W))
        for t in (T0, T0 + 0.1):
            backend.release(take(backend, lim, t), Outcome.SUCCESS, t, BREAKER)
        assert backend.acquire(KEY, lim, 0, T0 + 0.2, BREAKER) == T0 + 1.0
        take(backend, lim, T0 + 1.0)
        assert backend.acquire(KEY, lim, 0, T0 + 2.5, BREAKER) == T0 + W
        snap = backend.snapshot(KEY, lim, T0 + 2.5)
        assert snap.windows == ((0, T0 + 2.5), (3, T0 + W))
        take(backend, lim, T0 + W)

    def test_limits_token_windows_settle_to_the_real_use(self, backend: StateBackend) -> None:
        lim = quota_limits(QuotaWindow("tokens", 100, W), QuotaWindow("output_tokens", 80, W))
        lease = take(backend, lim, T0, tokens=80)
        assert backend.acquire(KEY, lim, 80, T0 + 1, BREAKER) == T0 + W
        backend.release(
            lease, Outcome.SUCCESS, T0 + 2, BREAKER, tokens_used=30, usage={"output_tokens": 10}
        )
        assert [u for u, _ in backend.snapshot(KEY, lim, T0 + 2).windows] == [30, 10]
        failed = take(backend, lim, T0 + 3, tokens=40)
        backend.release(failed, Outcome.FAILURE, T0 + 3, BREAKER)  # spent nothing
        assert [u for u, _ in backend.snapshot(KEY, lim, T0 + 3).windows] == [30, 10]
        assert [u for u, _ in backend.snapshot(KEY, lim, T0 + W + 1).windows] == [0, 0]

    def test_a_calendar_window_is_one_counter_per_period(self, backend: StateBackend) -> None:
        lim = quota_limits(QuotaWindow("requests", 2, 86_400.0), calendar=True)
        day1, day2 = ((("d1", T0 + 10.0),), (("d2", T0 + 86_410.0),))
        for t in (T0, T0 + 1):
            take_in(backend, lim, t, day1)
        assert backend.acquire(KEY, lim, 0, T0 + 2, BREAKER, periods=day1) == T0 + 10.0
        assert backend.snapshot(KEY, lim, T0 + 2, day1).windows == ((2, T0 + 10.0),)
        take_in(backend, lim, T0 + 10, day2)
        take_in(backend, lim, T0 + 11, day2)
        assert backend.acquire(KEY, lim, 0, T0 + 12, BREAKER, periods=day2) == T0 + 86_410.0

    def test_threads_never_get_more_than_the_limit(self, backend: StateBackend) -> None:
        lim = limits(rate=25)
        granted: list[Lease] = []
        lock = threading.Lock()

        def hammer() -> None:
            for _ in range(10):
                r = backend.acquire(KEY, lim, 0, T0, BREAKER)
                if isinstance(r, Lease):
                    with lock:
                        granted.append(r)

        threads = [threading.Thread(target=hammer) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(granted) == 25
        assert backend.snapshot(KEY, lim, T0).active_requests == 25

    def test_a_lease_that_outlives_its_window_settles_cleanly(self, backend: StateBackend) -> None:
        lim = limits(tpm=100)
        slow = take(backend, lim, T0, tokens=60)
        take(backend, lim, T0 + W + 1, tokens=10)  # the slow request's entry ages out here
        backend.release(slow, Outcome.SUCCESS, T0 + W + 2, BREAKER, tokens_used=30)
        snap = backend.snapshot(KEY, lim, T0 + W + 2)
        assert snap.tokens_in_window == 10
        assert snap.total_tokens == 30


def shared(url: str, **kwargs: object) -> RedisState:
    options: dict[str, object] = {"server_time": False, "timeout": 5.0}
    options.update(kwargs)
    return RedisState(url, **options)  # type: ignore[arg-type]


class TestRedisSharesOneTruth:
    """Two ``RedisState`` objects stand for two processes of a fleet."""

    def test_two_processes_share_one_request_window(self, redis_url: str) -> None:
        a, b = shared(redis_url), shared(redis_url)
        lim = limits(rate=3, tpm=100)
        take(a, lim, T0, tokens=40)
        take(b, lim, T0 + 1, tokens=40)
        assert b.acquire(KEY, lim, 40, T0 + 2, BREAKER) == T0 + W  # tokens: 80 + 40 > 100
        take(a, lim, T0 + 2, tokens=20)
        assert b.acquire(KEY, lim, 0, T0 + 3, BREAKER) == T0 + W  # requests: 3 of 3
        snap = b.snapshot(KEY, lim, T0 + 3)
        assert (snap.window_used, snap.tokens_in_window, snap.active_requests) == (3, 100, 3)

    def test_a_spent_key_found_by_one_process_rests_in_every_process(self, redis_url: str) -> None:
        a, b = shared(redis_url), shared(redis_url)
        lim = limits()
        a.release(take(a, lim, T0), Outcome.EXHAUSTED, T0, BREAKER, retry_after=3600.0)
        assert b.snapshot(KEY, lim, T0 + 1).state == "exhausted"
        assert b.acquire(KEY, lim, 0, T0 + 1, BREAKER) == T0 + 3600.0
        probe = take(b, lim, T0 + 3600.0)
        assert probe.probe
        assert a.acquire(KEY, lim, 0, T0 + 3600.0, BREAKER) == math.inf

    def test_breaker_opened_by_one_is_open_for_all_with_one_probe_in_the_fleet(
        self, redis_url: str
    ) -> None:
        a, b, c = shared(redis_url), shared(redis_url), shared(redis_url)
        lim = limits()
        a.release(take(a, lim, T0), Outcome.TRIP, T0, BREAKER)
        assert b.snapshot(KEY, lim, T0 + 1).state == "open"
        assert b.acquire(KEY, lim, 0, T0 + 1, BREAKER) == T0 + BREAKER.interval
        later = T0 + BREAKER.interval
        probe = take(c, lim, later)
        assert probe.probe
        assert a.acquire(KEY, lim, 0, later, BREAKER) == math.inf
        assert b.acquire(KEY, lim, 0, later, BREAKER) == math.inf
        c.release(probe, Outcome.SUCCESS, later + 1, BREAKER)
        assert a.snapshot(KEY, lim, later + 1).state == "closed"
        take(b, lim, later + 1)

    def test_a_dead_process_leaks_no_active_count_after_its_lease_expires(
        self, redis_url: str
    ) -> None:
        dead, alive = shared(redis_url, lease_ttl=5.0), shared(redis_url, lease_ttl=5.0)
        lim = limits(conc=1)
        take(dead, lim, T0)  # never released
        assert alive.acquire(KEY, lim, 0, T0 + 4.9, BREAKER) == math.inf
        assert alive.snapshot(KEY, lim, T0 + 4.9).active_requests == 1
        assert alive.snapshot(KEY, lim, T0 + 5).active_requests == 0
        take(alive, lim, T0 + 5)

    def test_a_dead_probe_frees_the_probe_after_its_lease_expires(self, redis_url: str) -> None:
        dead, alive = shared(redis_url, lease_ttl=5.0), shared(redis_url, lease_ttl=5.0)
        lim = limits()
        dead.release(take(dead, lim, T0), Outcome.TRIP, T0, BREAKER)
        later = T0 + BREAKER.interval
        assert take(dead, lim, later).probe  # and its process dies
        assert alive.acquire(KEY, lim, 0, later + 4, BREAKER) == math.inf
        assert take(alive, lim, later + 5).probe

    def test_release_of_an_expired_lease_does_not_count_twice(self, redis_url: str) -> None:
        state = shared(redis_url, lease_ttl=5.0)
        lim = limits(conc=2)
        slow = take(state, lim, T0)
        take(state, lim, T0 + 6)  # sweeps the slow lease
        state.release(slow, Outcome.SUCCESS, T0 + 7, BREAKER)
        assert state.snapshot(KEY, lim, T0 + 7).active_requests == 1


class TestRedisLayout:
    def test_keys_are_prefixed_hashed_and_all_expire(self, redis_url: str) -> None:
        state = shared(redis_url, key_prefix="fleet")
        lim = limits(rate=5, tpm=100)
        lease = take(state, lim, T0, tokens=10)
        take(state, lim, T0, tokens=10)  # in flight
        state.release(lease, Outcome.RATE_LIMITED, T0, BREAKER, retry_after=2.0)
        state.count_validation_failure(KEY)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        names = sorted(client.keys("*"))
        assert names == [
            "fleet:procs",
            f"fleet:{{{KEY}}}:leases",
            f"fleet:{{{KEY}}}:starts",
            f"fleet:{{{KEY}}}:state",
            f"fleet:{{{KEY}}}:tokens",
        ]
        ttls = {name: client.pttl(name) / 1000 for name in names}
        assert all(ttl > 0 for ttl in ttls.values()), ttls
        assert ttls[f"fleet:{{{KEY}}}:starts"] <= W + 60
        assert ttls[f"fleet:{{{KEY}}}:state"] <= 86_400
        assert ttls["fleet:procs"] <= 15

    def test_from_config_reads_url_options_and_picks_the_clock(self, redis_url: str) -> None:
        config = BalancerConfig(
            state=redis_url + "?lease_ttl=7.5&key_prefix=app1",
            redis_timeout=0.5,
            local_share=0.25,
        )
        real = RedisState.from_config(config, MonotonicClock())
        assert (real.lease_ttl, real.key_prefix, real.timeout, real.local_share) == (
            7.5,
            "app1",
            0.5,
            0.25,
        )
        assert real.server_time
        assert real.snapshot(KEY, limits(), 0.0).state == "closed"  # the URL still works
        assert not RedisState.from_config(config, ManualClock()).server_time
        plain = RedisState.from_config(BalancerConfig(state=redis_url), MonotonicClock())
        assert (plain.lease_ttl, plain.key_prefix, plain.local_share) == (300.0, "pllm", None)
        assert (real.outage, plain.outage) == ("exact", "exact")
        sharing = BalancerConfig(state=redis_url, outage="share")
        assert RedisState.from_config(sharing, MonotonicClock()).outage == "share"
        with pytest.raises(ValueError, match="outage must be 'exact' or 'share'"):
            RedisState(redis_url, outage="exactly")

    def test_state_for_keeps_apart_models_with_other_settings(self, redis_url: str) -> None:
        clock = MonotonicClock()

        def backend(**settings: object) -> StateBackend:
            return state_for(BalancerConfig(state=redis_url, **settings), clock)  # type: ignore[arg-type]

        base = backend(request_timeout=10.0)
        assert backend(request_timeout=10.0) is base
        assert isinstance(base, RedisState)
        longer = backend(request_timeout=20.0)
        assert isinstance(longer, RedisState)
        assert (base.lease_ttl, longer.lease_ttl) == (40.0, 50.0)
        slower = backend(request_timeout=10.0, redis_timeout=1.0)
        shared_less = backend(request_timeout=10.0, local_share=0.5)
        assert len({id(base), id(longer), id(slower), id(shared_less)}) == 4
        assert isinstance(slower, RedisState)
        assert slower.timeout == 1.0
        assert isinstance(shared_less, RedisState)
        assert shared_less.local_share == 0.5
        assert state_for(BalancerConfig(state=redis_url), ManualClock()) is not backend()

    def test_server_clock_times_come_back_in_the_callers_clock(self, redis_url: str) -> None:
        state = RedisState(redis_url, server_time=True, timeout=5.0)
        lim = limits(rate=1, window=30.0)
        local_now = 12.0  # any origin: the caller's monotonic clock
        lease = take(state, lim, local_now)
        wake = state.acquire(KEY, lim, 0, local_now, BREAKER)
        assert isinstance(wake, float)
        assert abs(wake - (local_now + 30.0)) < 0.5
        state.release(lease, Outcome.RATE_LIMITED, local_now, BREAKER, retry_after=9.0)
        snap = state.snapshot(KEY, lim, local_now)
        assert abs(snap.rest_until - (local_now + 9.0)) < 0.5


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "langchain_pllm"]


class TestRedisCluster:
    """A real cluster (3 masters, 3 replicas, password): resharding and failover mid-use."""

    def test_a_resharded_slot_is_followed_and_keeps_its_window(
        self, redis_cluster: LocalCluster, cluster_url: str
    ) -> None:
        state, other = shared(cluster_url), shared(cluster_url)
        lim = limits(rate=3)
        for s in (state, other):
            take(s, lim, T0)
        starts_key = f"pllm:{{{KEY}}}:starts"
        before = redis_cluster.master_of(starts_key)
        after = redis_cluster.move_slot_of(starts_key)
        assert after is not before
        # Both clients still map the slot to the old master: MOVED, followed, no fallback.
        take(state, lim, T0 + 1)
        assert other.acquire(KEY, lim, 0, T0 + 1, BREAKER) == T0 + W
        assert state.is_redis_available
        assert other.is_redis_available
        assert state.snapshot(KEY, lim, T0 + 1).window_used == 3

    def test_a_killed_masters_keys_wait_for_its_promoted_replica_and_the_rest_go_on(
        self, redis_cluster: LocalCluster, cluster_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        state, other = shared(cluster_url, timeout=0.3, retry_interval=0.2), shared(cluster_url)
        lim = limits(rate=4)
        take(state, lim, T0)
        redis_cluster.wait_healthy()  # the start reached the replica (asynchronous replication)
        doomed = redis_cluster.master_of(f"pllm:{{{KEY}}}:starts")
        alive = next(
            k
            for k in (f"{i:016x}" for i in range(1000))
            if redis_cluster.master_of(f"pllm:{{{k}}}:starts") is not doomed
        )
        with caplog.at_level(logging.INFO, logger="langchain_pllm"):
            doomed.kill()
            # Exact on a cluster: a key whose master is away waits for it (the balancer sends
            # its requests elsewhere); it is tried again after the retry interval.
            wake = state.acquire(KEY, lim, 0, T0 + 1, BREAKER)
            assert isinstance(wake, float)
            assert T0 + 1 < wake <= T0 + 1 + 0.2
            assert not state.is_redis_available
            # A key on another master is served by Redis as before, seen by every process.
            take(state, lim, T0 + 1, key=alive)
            assert other.snapshot(alive, lim, T0 + 1).window_used == 1
            redis_cluster.wait_healthy()  # the replica took over
            time.sleep(0.25)  # the retry interval, in real time
            # Back on the promoted replica: its copy of the start, and all the rest (the
            # window's state was kept, so no stand-ins for lost starts).
            for _ in range(3):
                take(state, lim, T0 + 2)
            assert state.is_redis_available
        assert state.acquire(KEY, lim, 0, T0 + 2, BREAKER) == T0 + W
        assert state.snapshot(KEY, lim, T0 + 2).window_used == 4
        levels = [r.levelno for r in ours(caplog)]
        assert levels == [logging.WARNING, logging.INFO]

    async def test_tls_and_a_password_on_every_node(self) -> None:
        """``rediss+cluster://`` with a password, TLS on clients, bus and replication."""
        if shutil.which("openssl") is None:
            pytest.skip("openssl is not installed: no certificates for a TLS cluster")
        from tests.redis_cluster_fixture import LocalCluster

        cluster = LocalCluster(tls=True)
        try:
            cluster.start()
            url = cluster.url
            assert url.startswith("rediss+cluster://:")
            assert "ssl_ca_certs=" in url
            a, b = shared(url), shared(url)
            lim = limits(rate=2)
            take(a, lim, T0)
            lease = await b.aacquire(KEY, lim, 0, T0, BREAKER)
            assert isinstance(lease, Lease)
            assert a.acquire(KEY, lim, 0, T0, BREAKER) == T0 + W  # one window, over TLS
            assert a.is_redis_available
            assert b.is_redis_available
        finally:
            cluster.close()
