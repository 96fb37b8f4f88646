"""The Redis state while Redis is away and when it comes back: the outage rules.

Redis is stopped (its data gone: the fixture saves nothing), frozen (SIGSTOP: slow, not gone)
or never there. Each ``RedisState`` stands for one process of a fleet; time is the test's
(``server_time=False``), so a 60 s window passes in no time, and only the retry interval is
waited for in real time. ``Grants`` records every start any process got, from Redis or its
fallback, and the ``exact`` tests check the heaviest window span of them all against the limit.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from langchain_pllm.config.quotas import QuotaWindow
from langchain_pllm.state.base import Lease, Limits, Outcome
from langchain_pllm.state.redis import RedisState
from tests.unit_tests.test_state_backends import (
    BREAKER,
    KEY,
    OTHER,
    T0,
    W,
    limits,
    ours,
    quota_limits,
    shared,
    take,
)

if TYPE_CHECKING:
    from tests.redis_fixture import RedisServer

pytest_plugins = ["tests.redis_fixture"]


def process(url: str, name: str, **options: object) -> RedisState:
    """One process of a fleet; a heartbeat on every acquire, so each sees the others at once."""
    settings: dict[str, object] = {"timeout": 0.3, "retry_interval": 0.2, "heartbeat_interval": 0.0}
    settings.update(options)
    return shared(url, process_id=name, **settings)


def met_each_other(url: str) -> tuple[RedisState, RedisState, Limits]:
    """Processes ``a`` and ``b`` (back later than ``a``) that each counted the other: a share
    is half of ``rate=4, tpm=1000``."""
    a = process(url, "a")
    b = process(url, "b", retry_interval=1.5)
    lim = limits(rate=4, tpm=1000)
    for state in (a, b, a):
        take(state, lim, T0, key=OTHER)
    assert (a.process_count, b.process_count) == (2, 2)
    return a, b, lim


def unreachable(**options: object) -> RedisState:
    """A state whose Redis was never there."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings: dict[str, object] = {"timeout": 0.2, "retry_interval": 0.2, "server_time": False}
    settings.update(options)
    return RedisState(f"redis://127.0.0.1:{port}/0", **settings)  # type: ignore[arg-type]


class Grants:
    """Every start of ``KEY`` granted to any process, from Redis or a fallback alike."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, int]] = []

    def take(self, state: RedisState, lim: Limits, now: float, tokens: int = 0) -> Lease | float:
        r = state.acquire(KEY, lim, tokens, now, BREAKER)
        if isinstance(r, Lease):
            # The state's start time: a fallback's memory state moves a stale ``now`` up.
            self.starts.append((r.started, tokens))
        return r

    def heaviest(self, window: float = W) -> tuple[int, int]:
        """The most starts, and the most tokens, any span ``[t, t + window)`` holds."""
        best = (0, 0)
        for t, _ in self.starts:
            inside = [tokens for s, tokens in self.starts if t <= s < t + window]
            best = (max(best[0], len(inside)), max(best[1], sum(inside)))
        return best


def refused(r: Lease | float, after: float, by: float) -> bool:
    """``r`` is a wake time in ``(after, by]``."""
    return isinstance(r, float) and after < r <= by


class TestRedisAway:
    """Redis stopped or frozen: short timeouts, local limits, one warning, and back."""

    def test_share_mode_falls_back_at_once_to_a_share_of_each_limit(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with socket.socket() as sock:  # a port nothing listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        state = RedisState(
            f"redis://127.0.0.1:{port}/0",
            timeout=0.2,
            local_share=0.5,
            server_time=False,
            outage="share",
        )
        lim = limits(rate=3)
        with caplog.at_level(logging.WARNING, logger="langchain_pllm"):
            take(state, lim, T0, tokens=2)
            take(state, lim, T0, tokens=2)
            assert state.acquire(KEY, lim, 0, T0, BREAKER) == T0 + W  # ceil(3 * 0.5) = 2
            other = limits(tpm=10)
            take(state, other, T0, tokens=4, key=OTHER)
            assert state.acquire(OTHER, other, 2, T0, BREAKER) == T0 + W  # ceil(10 * 0.5) = 5
        warnings = [r for r in ours(caplog) if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "local limits" in warnings[0].getMessage()
        assert not state.is_redis_available

    def test_stopped_then_restarted_redis_is_used_again(
        self, redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        state = shared(redis_url, timeout=0.3, retry_interval=0.2)
        lim = limits(conc=5)
        on_redis = take(state, lim, T0)
        redis_server.stop()
        with caplog.at_level(logging.INFO, logger="langchain_pllm"):
            started = time.monotonic()
            local = take(state, lim, T0 + 1)
            assert time.monotonic() - started < 1.0
            state.release(on_redis, Outcome.SUCCESS, T0 + 1, BREAKER)  # dropped, no hang
            redis_server.start()
            time.sleep(0.25)  # the retry interval, in real time
            again = take(state, lim, T0 + 2)
            assert state.is_redis_available
            state.release(local, Outcome.SUCCESS, T0 + 3, BREAKER)
            state.release(again, Outcome.SUCCESS, T0 + 3, BREAKER)
        messages = [(r.levelno, r.getMessage()) for r in ours(caplog)]
        assert [level for level, _ in messages] == [logging.WARNING, logging.INFO], messages
        # The fallback lease went back to the fallback, the Redis lease to Redis.
        assert state._fallback.local.snapshot(KEY, lim, T0 + 3).active_requests == 0
        snap = state.snapshot(KEY, lim, T0 + 3)
        assert (snap.active_requests, snap.total_requests) == (0, 1)  # a fresh server

    def test_frozen_redis_times_out_quickly(
        self, redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        state = shared(redis_url, timeout=0.2, retry_interval=0.2)
        lim = limits(conc=10)
        take(state, lim, T0)
        redis_server.pause()
        try:
            with caplog.at_level(logging.WARNING, logger="langchain_pllm"):
                started = time.monotonic()
                take(state, lim, T0 + 1)
                take(state, lim, T0 + 1)
                elapsed = time.monotonic() - started
        finally:
            redis_server.resume()
        assert elapsed < 0.6  # one timed-out call, then the fallback without asking
        assert sum(r.levelno == logging.WARNING for r in ours(caplog)) == 1

    async def test_async_twins_fall_back_and_come_back(
        self, redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        state = shared(redis_url, timeout=0.3, retry_interval=0.2)
        lim = limits(conc=10)
        first = await state.aacquire(KEY, lim, 0, T0, BREAKER)
        assert isinstance(first, Lease)
        redis_server.stop()
        with caplog.at_level(logging.INFO, logger="langchain_pllm"):
            local = await state.aacquire(KEY, lim, 0, T0 + 1, BREAKER)
            assert isinstance(local, Lease)
            assert (await state.asnapshot(KEY, lim, T0 + 1)).active_requests == 1  # local view
            redis_server.start()
            await asyncio.sleep(0.25)
            back = await state.aacquire(KEY, lim, 0, T0 + 2, BREAKER)
            assert isinstance(back, Lease)
            await state.arelease(local, Outcome.SUCCESS, T0 + 2, BREAKER)
            await state.arelease(back, Outcome.SUCCESS, T0 + 2, BREAKER)
        assert [r.levelno for r in ours(caplog)] == [logging.WARNING, logging.INFO]
        assert (await state.asnapshot(KEY, lim, T0 + 2)).total_requests == 1

    def test_share_mode_lets_a_window_spanning_the_outage_hold_every_share(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        a, b = (process(redis_url, name, outage="share") for name in "ab")
        lim = limits(rate=4, tpm=1000)
        for state in (a, b, a):
            take(state, lim, T0, key=OTHER)
        assert (a.process_count, b.process_count) == (2, 2)
        redis_server.stop()
        for state in (a, b):
            for _ in range(2):  # ceil(4 / 2) each
                take(state, lim, T0 + 1, tokens=100)
            assert state.acquire(KEY, lim, 0, T0 + 1, BREAKER) == T0 + 1 + W
            assert not state.is_redis_available
        redis_server.start()  # empty: nothing is saved
        time.sleep(0.25)  # the retry interval, in real time
        # Back on Redis, the window holds what each process started meanwhile: `a` replays
        # its 2 starts and gets the 2 left, `b` replays its 2 and gets none (not 4 each). The
        # window still holds 6 against a limit of 4: the starts before the outage (lost with
        # the restart here) and every share. The ``exact`` mode exists for this.
        take(a, lim, T0 + 2)
        take(a, lim, T0 + 2)
        assert a.acquire(KEY, lim, 0, T0 + 2, BREAKER) == T0 + 1 + W
        assert b.acquire(KEY, lim, 0, T0 + 2, BREAKER) == T0 + 1 + W
        assert a.is_redis_available
        assert b.is_redis_available
        snap = a.snapshot(KEY, lim, T0 + 2)
        assert (snap.window_used, snap.tokens_in_window) == (6, 400)
        assert a.snapshot(KEY, lim, T0 + 1 + W).window_used == 2  # replayed ones age out

    async def test_a_cancelled_acquire_gives_back_what_the_server_granted(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        state, other = shared(redis_url, timeout=2.0), shared(redis_url)
        lim = limits(conc=5)
        state.release(take(state, lim, T0), Outcome.TRIP, T0, BREAKER)
        later = T0 + BREAKER.interval  # half-open: the next acquire is the fleet's one probe
        await state.asnapshot(KEY, lim, later)  # the async connection is open
        redis_server.pause()
        try:
            task = asyncio.create_task(state.aacquire(KEY, lim, 0, later, BREAKER))
            await asyncio.sleep(0.1)  # the script is sent; the frozen server has not run it
            task.cancel()
        finally:
            redis_server.resume()  # now it runs, and grants the probe to nobody
        with pytest.raises(asyncio.CancelledError):
            await task
        snap = other.snapshot(KEY, lim, later)
        assert (snap.active_requests, snap.total_requests) == (0, 2)
        assert take(other, lim, later).probe  # not held until the lease expires

    async def test_async_validation_count_never_blocks_the_loop(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        state = shared(redis_url, timeout=0.2, retry_interval=10.0)
        await state.acount_validation_failure(KEY)
        state.count_validation_failure(KEY)  # the sync twin blocks briefly, then returns
        assert (await state.asnapshot(KEY, limits(), T0)).validation_failures == 2
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        redis_server.pause()
        ticker = asyncio.create_task(tick())
        try:
            started = time.monotonic()
            await state.acount_validation_failure(KEY)  # times out, counted locally
            assert ticks >= 3  # the loop ran meanwhile
            state.count_validation_failure(KEY)  # Redis known away: local, no wait
            assert state.snapshot(KEY, limits(), T0).validation_failures == 2
            assert time.monotonic() - started < 0.6
        finally:
            ticker.cancel()
            redis_server.resume()


class TestExactOutage:
    """``outage: exact`` (the default): no window span holds more starts than its limit."""

    def test_a_fallback_waits_one_window_then_takes_a_floor_share(self) -> None:
        state = unreachable(local_share=0.5)
        lim = limits(rate=3, tpm=10)
        # Others may have filled the window just before the outage: full until T0 + W. The
        # wake time is Redis's next try at the latest, so a waiting request asks Redis again.
        assert refused(state.acquire(KEY, lim, 1, T0, BREAKER), T0, T0 + 0.21)
        assert not state.is_redis_available
        take(state, lim, T0 + W, tokens=2)  # floor(3 * 0.5) = 1, floor(10 * 0.5) = 5 tokens
        assert refused(state.acquire(KEY, lim, 1, T0 + W, BREAKER), T0 + W, T0 + W + 0.21)
        take(state, limits(tpm=10), T0 + W, tokens=5, key=OTHER)
        assert refused(state.acquire(OTHER, limits(tpm=10), 1, T0 + W, BREAKER), T0 + W, T0 + 2 * W)
        # A share of 0 and a key with ``limits:`` windows wait for Redis.
        assert refused(
            state.acquire("k1", limits(rate=1), 0, T0 + W, BREAKER), T0 + W, T0 + W + 0.21
        )
        quota = quota_limits(QuotaWindow("requests", 100, 1.0))
        assert refused(state.acquire("k2", quota, 0, T0 + W, BREAKER), T0 + W, T0 + W + 0.21)
        # A key with no window limit is served at once; its concurrency cap gets a floor share.
        conc = limits(conc=3)
        take(state, conc, T0, key="k3")
        assert state.acquire("k3", conc, 0, T0, BREAKER) == float("inf")

    def test_a_short_outage_that_lost_the_windows_fills_them_as_of_its_start(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        a, b = process(redis_url, "a"), process(redis_url, "b")
        lim = limits(rate=4, tpm=1000)
        grants = Grants()
        for _ in range(3):
            assert isinstance(grants.take(a, lim, T0, 100), Lease)
        take(b, lim, T0, key=OTHER)  # b is one of the fleet, and has not used KEY
        redis_server.stop()
        assert refused(grants.take(a, lim, T0 + 1, 100), T0 + 1, T0 + 1.21)  # the outage starts
        redis_server.start()  # empty: the 3 starts are lost
        time.sleep(0.25)  # the retry interval, in real time
        # a is back: the key's state is gone, so its windows count as full as of the outage's
        # start (4 requests, 1000 tokens), not as empty.
        assert grants.take(a, lim, T0 + 2, 100) == T0 + 1 + W
        assert a.is_redis_available
        snap = a.snapshot(KEY, lim, T0 + 2)
        assert (snap.window_used, snap.tokens_in_window) == (4, 1000)
        # b never saw Redis fail; its heartbeat finds Redis forgot it, so it is held as well
        # (a first on KEY: nothing is added).
        assert grants.take(b, lim, T0 + 2, 100) == T0 + 1 + W
        assert a.snapshot(KEY, lim, T0 + 2).window_used == 4
        for state in (a, b, a, b):  # one window after the outage began, all free again
            assert isinstance(grants.take(state, lim, T0 + 1 + W, 100), Lease)
        assert grants.take(a, lim, T0 + 1 + W, 100) == T0 + 1 + W + W
        assert grants.heaviest() == (4, 400)

    def test_a_process_that_never_saw_the_outage_is_held_too(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        a, b = process(redis_url, "a"), process(redis_url, "b")
        lim = limits(rate=4)
        grants = Grants()
        for state in (a, a, a, b):
            assert isinstance(grants.take(state, lim, T0), Lease)
        redis_server.restart()  # nobody called meanwhile: nobody fell back
        # b's heartbeat finds Redis forgot it: the window counts as full as of now.
        assert grants.take(b, lim, T0 + 1) == T0 + 1 + W
        assert grants.take(a, lim, T0 + 1) == T0 + 1 + W
        assert grants.heaviest() == (4, 0)

    def test_a_blip_that_kept_the_windows_loses_no_capacity(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        a = process(redis_url, "a")
        lim = limits(rate=4, tpm=1000)
        for _ in range(3):
            take(a, lim, T0, tokens=100)
        redis_server.pause()
        try:
            a.snapshot(KEY, lim, T0 + 1)  # times out (a read: harmless when it runs later)
            assert refused(a.acquire(KEY, lim, 100, T0 + 1, BREAKER), T0 + 1, T0 + 1.21)
        finally:
            redis_server.resume()
        time.sleep(0.25)
        # Redis kept the windows: no stand-ins, the fourth start is there at once.
        take(a, lim, T0 + 2, tokens=100)
        assert a.acquire(KEY, lim, 100, T0 + 2, BREAKER) == T0 + W
        snap = a.snapshot(KEY, lim, T0 + 2)
        assert (snap.window_used, snap.tokens_in_window) == (4, 400)

    def test_a_long_outage_holds_room_for_the_processes_not_back_yet(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        a, b, lim = met_each_other(redis_url)
        grants = Grants()
        redis_server.stop()
        for state in (a, b):
            assert refused(grants.take(state, lim, T0 + 1, 200), T0 + 1, T0 + 1 + W)
        later = T0 + 1 + W  # one window on: floor(4 / 2) = 2 requests, 500 tokens each
        for state in (a, a, b):
            assert isinstance(grants.take(state, lim, later, 200), Lease)
        assert refused(grants.take(a, lim, later, 200), later, later + W)
        redis_server.start()  # empty, and the outage was long: nothing was lost in the window
        time.sleep(0.25)
        back = later + 1
        # a is back, b is not: a's 2 starts are written back, and b's share is held for it
        # (2 placeholders, 500 tokens), so a gets nothing more.
        assert refused(grants.take(a, lim, back, 200), back, back + W)
        assert a.is_redis_available
        snap = a.snapshot(KEY, lim, back)
        assert (snap.window_used, snap.tokens_in_window) == (4, 900)
        # b, still away, takes the rest of its share locally...
        assert isinstance(grants.take(b, lim, back, 200), Lease)
        assert not b.is_redis_available
        time.sleep(1.5)  # b's retry interval
        # ...and back, swaps its placeholders for its 2 real starts.
        assert refused(grants.take(b, lim, back + 1, 200), back + 1, back + W)
        assert b.is_redis_available
        snap = a.snapshot(KEY, lim, back + 1)
        assert (snap.window_used, snap.tokens_in_window) == (4, 800)
        assert grants.heaviest() == (4, 800)
        # One window after the last of them, the key is free again.
        take(a, lim, back + W, tokens=200)

    def test_a_key_first_used_after_a_short_outage_is_held_for_the_lost_starts(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        a, b = process(redis_url, "a"), process(redis_url, "b", retry_interval=1.5)
        lim = limits(rate=4, tpm=1000)
        grants = Grants()
        take(a, lim, T0, key=OTHER)  # a is one of the fleet, and has not used KEY
        for _ in range(3):
            assert isinstance(grants.take(b, lim, T0, 100), Lease)
        redis_server.stop()
        for state in (a, b):  # both see the outage (a on another key)
            r = state.acquire(OTHER if state is a else KEY, lim, 0, T0 + 1, BREAKER)
            assert refused(r, T0 + 1, T0 + 1 + W)
        redis_server.start()  # empty: b's 3 starts are lost
        time.sleep(0.25)
        # a is back first and had never used KEY: the restart may have lost others' starts on
        # it all the same, so its windows count as full as of the outage's start here.
        assert refused(grants.take(a, lim, T0 + 2, 100), T0 + 2, T0 + 1 + W)
        assert a.is_redis_available
        time.sleep(1.5)  # b's retry interval
        assert refused(grants.take(b, lim, T0 + 3, 100), T0 + 3, T0 + 1 + W)
        assert b.is_redis_available
        assert grants.heaviest() == (3, 300)

    def test_a_rejoin_whose_answer_was_lost_still_finds_redis_forgot_this_process(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        # As above, but a's first try to rejoin reaches the restarted server and times out
        # before its answer: the server runs it on its return, and lists a again. a's next
        # heartbeat finds itself listed, which says nothing now about whether Redis forgot it.
        a, b = process(redis_url, "a"), process(redis_url, "b", retry_interval=1.5)
        lim = limits(rate=4, tpm=1000)
        grants = Grants()
        take(a, lim, T0, key=OTHER)
        for _ in range(3):
            assert isinstance(grants.take(b, lim, T0, 100), Lease)
        redis_server.stop()
        for state in (a, b):
            r = state.acquire(OTHER if state is a else KEY, lim, 0, T0 + 1, BREAKER)
            assert refused(r, T0 + 1, T0 + 1 + W)
        redis_server.start()  # empty: b's 3 starts are lost
        a._client.ping()  # a's connection is open before the server freezes: the call is sent
        redis_server.pause()
        try:
            time.sleep(0.25)
            assert refused(a.acquire(OTHER, lim, 0, T0 + 2, BREAKER), T0 + 2, T0 + 1 + W)
            assert not a.is_redis_available
        finally:
            redis_server.resume()  # it runs the rejoin a gave up on
        time.sleep(0.25)
        assert refused(grants.take(a, lim, T0 + 2, 100), T0 + 2, T0 + 1 + W)
        assert a.is_redis_available
        time.sleep(1.5)  # b's retry interval
        assert refused(grants.take(b, lim, T0 + 3, 100), T0 + 3, T0 + 1 + W)
        assert grants.heaviest() == (3, 300)

    def test_a_key_first_used_after_a_long_outage_holds_room_for_those_not_back(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        a, b, lim = met_each_other(redis_url)
        grants = Grants()
        redis_server.stop()
        assert refused(a.acquire(OTHER, lim, 0, T0 + 1, BREAKER), T0 + 1, T0 + 1 + W)
        assert refused(grants.take(b, lim, T0 + 1, 200), T0 + 1, T0 + 1 + W)
        later = T0 + 1 + W  # b serves its floor share of KEY locally
        for _ in range(2):
            assert isinstance(grants.take(b, lim, later, 200), Lease)
        redis_server.start()
        time.sleep(0.25)
        back = later + 1
        # a is back and had never used KEY; b, still away, may hold its share of it: a gets
        # the other half only.
        for _ in range(2):
            assert isinstance(grants.take(a, lim, back, 200), Lease)
        assert refused(grants.take(a, lim, back, 200), back, back + W + 1)
        assert a.is_redis_available
        time.sleep(1.5)
        assert refused(grants.take(b, lim, back + 1, 200), back + 1, back + W + 1)
        assert b.is_redis_available
        assert grants.heaviest() == (4, 800)

    async def test_a_cancelled_mend_is_sent_again_before_the_next_acquire(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        # a beats on its first acquire only, so the async acquire below starts with the mend.
        a, b = process(redis_url, "a", heartbeat_interval=60.0), process(redis_url, "b")
        lim = limits(rate=4)
        take(a, lim, T0, key=OTHER)
        for _ in range(3):
            take(b, lim, T0)
        redis_server.stop()
        assert refused(a.acquire(OTHER, lim, 0, T0 + 1, BREAKER), T0 + 1, T0 + 1 + W)
        redis_server.start()  # empty: b's starts are lost
        await asyncio.sleep(0.25)
        assert refused(a.acquire(OTHER, lim, 0, T0 + 2, BREAKER), T0 + 2, T0 + 1 + W)
        assert a.is_redis_available
        # The mend of KEY (a's first acquire on it since the return) is cut short by a cancel
        # before it reaches the server: a's async connection to the restarted server is still
        # being opened, and the frozen server does not answer its handshake...
        redis_server.pause()
        try:
            task = asyncio.create_task(a.aacquire(KEY, lim, 0, T0 + 2, BREAKER))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            redis_server.resume()
        # ...so the next acquire sends it: the lost starts are stood in for.
        assert refused(await a.aacquire(KEY, lim, 0, T0 + 2, BREAKER), T0 + 2, T0 + 1 + W)

    def test_a_process_that_never_counted_the_fleet_waits_for_redis(self) -> None:
        # Redis away since this process started: it cannot know its share, and the whole
        # limit beside the others' shares would break it.
        state = unreachable()
        lim = limits(rate=4, tpm=1000)
        assert refused(state.acquire(KEY, lim, 1, T0, BREAKER), T0, T0 + 0.21)
        assert refused(state.acquire(KEY, lim, 1, T0 + W, BREAKER), T0 + W, T0 + W + 0.21)
        # With a share of its own it serves that share after one window, as any process.
        given = unreachable(local_share=0.5)
        assert refused(given.acquire(KEY, lim, 1, T0, BREAKER), T0, T0 + 0.21)
        take(given, lim, T0 + W, tokens=1)
        # A key with no window limit is served at once.
        take(state, limits(conc=2), T0, key=OTHER)

    def test_starts_made_during_the_rejoin_are_on_redis_before_anyone_acquires_there(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        # a retries Redis once a second: a second thread of a finds the retry not due while
        # the first one's try waits for the server.
        a = process(redis_url, "a", local_share=0.5, timeout=2.0, retry_interval=1.0)
        b = process(redis_url, "b", local_share=0.5)
        lim = limits(rate=2)
        for state in (a, b, a):
            take(state, limits(rate=10), T0, key=OTHER)
        grants = Grants()
        redis_server.stop()
        for state in (a, b):
            assert refused(grants.take(state, lim, T0 + 1), T0 + 1, T0 + 1 + W)
        redis_server.start()
        time.sleep(0.25)
        later = T0 + 1 + W
        # b is back first: its half, and a's half held for a.
        assert isinstance(grants.take(b, lim, later), Lease)
        assert refused(grants.take(b, lim, later), later, later + W + 1)
        # a comes back while the server is frozen: its rejoin's round trip waits, and meanwhile
        # another thread of a starts on the fallback (a's share: 1; the retry is not due).
        time.sleep(0.8)  # a's retry interval since its failure
        a._client.ping()  # a's connection is open before the server freezes: the call is sent
        redis_server.pause()
        resume = threading.Timer(0.5, redis_server.resume)
        resume.start()
        try:
            with ThreadPoolExecutor(1) as pool:
                rejoining = pool.submit(grants.take, a, lim, later)
                time.sleep(0.2)  # the rejoin is sent and waits for the server
                during = grants.take(a, lim, later)
                assert not rejoining.done()
                rejoined = rejoining.result(timeout=10)
        finally:
            resume.join()
            redis_server.resume()
        assert isinstance(during, Lease)  # on a's fallback, written back in a second trip
        assert refused(rejoined, later, later + W)
        assert a.is_redis_available
        # The moment a is back on Redis, b sees that start there.
        assert refused(grants.take(b, lim, later), later, later + W)
        assert grants.heaviest() == (2, 0)

    def test_a_process_idle_past_its_heartbeat_ttl_still_finds_the_restart(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        a = process(redis_url, "a")
        lim = limits(rate=4)
        grants = Grants()
        for _ in range(4):
            assert isinstance(grants.take(a, lim, T0), Lease)
        redis_server.restart()  # nobody called meanwhile: nobody fell back
        # a was idle longer than its heartbeat's TTL (20 s here, 15 s at least): Redis would
        # have dropped it from the live processes anyway, yet its starts are in the window.
        a._heartbeat._beaten_at = time.monotonic() - 20.0  # as if it beat 20 s ago
        assert refused(grants.take(a, lim, T0 + 20), T0 + 20, T0 + 20 + W)
        assert grants.heaviest() == (4, 0)
        # A key it last used more than a window ago holds nothing of its own: no stand-ins.
        take(a, lim, T0 + 20 + W, key=OTHER)
        redis_server.restart()
        a._heartbeat._beaten_at = time.monotonic() - 20.0
        take(a, lim, T0 + 30 + 2 * W, key=OTHER)
