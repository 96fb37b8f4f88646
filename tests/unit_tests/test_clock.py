"""The clocks: the real one really waits, the manual one jumps; both cut short by an event.

The real-clock tests sleep a few milliseconds: they are the only tests that check that
``MonotonicClock`` reads and waits on real time (everything else runs on ``ManualClock``). Upper
bounds are loose, because a loaded machine may wake a waiter late, never early.
"""

from __future__ import annotations

import asyncio
import threading
import time

from langchain_pllm.balancer import DEFAULT_CLOCK, ManualClock, MonotonicClock
from langchain_pllm.clock import Clock

STEP = 0.02  # seconds asked of a real wait
LATE = 2.0  # how late a busy machine may be, at most, before a test calls it wrong


def test_the_real_clock_advances_with_real_time() -> None:
    clock = MonotonicClock()
    before = clock.now()
    time.sleep(STEP)
    after = clock.now()
    assert STEP <= after - before < STEP + LATE
    assert clock.now() >= after  # monotonic


def test_a_real_wait_lasts_until_the_deadline() -> None:
    clock = MonotonicClock()
    started = clock.now()
    clock.wait(threading.Event(), started + STEP)
    assert STEP <= clock.now() - started < STEP + LATE


def test_a_real_wait_ends_when_the_event_is_set() -> None:
    clock = MonotonicClock()
    event = threading.Event()
    timer = threading.Timer(STEP, event.set)
    started = clock.now()
    timer.start()
    try:
        clock.wait(event, started + 60.0)
    finally:
        timer.cancel()
    assert event.is_set()
    assert STEP <= clock.now() - started < STEP + LATE  # woken by the event, not the deadline


def test_a_real_wait_past_its_deadline_returns_at_once() -> None:
    clock = MonotonicClock()
    started = clock.now()
    clock.wait(threading.Event(), started - 1.0)
    assert clock.now() - started < LATE


async def test_a_real_async_wait_lasts_until_the_deadline() -> None:
    clock = MonotonicClock()
    started = clock.now()
    await clock.await_event(asyncio.Event(), started + STEP)
    # The event loop may run a timer up to its clock resolution early.
    resolution = asyncio.get_running_loop()._clock_resolution
    assert STEP - resolution <= clock.now() - started < STEP + LATE


async def test_a_real_async_wait_ends_when_the_event_is_set() -> None:
    clock = MonotonicClock()
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(STEP, event.set)
    started = clock.now()
    await clock.await_event(event, started + 60.0)
    assert event.is_set()
    assert clock.now() - started < STEP + LATE


def test_only_the_real_clock_says_it_reads_real_time() -> None:
    # The Redis state trusts the server's clock only for a clock that reads real time.
    assert MonotonicClock().real
    assert DEFAULT_CLOCK.real
    assert not ManualClock().real
    assert not Clock.real


def test_a_manual_wait_jumps_to_its_deadline_without_sleeping() -> None:
    clock = ManualClock(start=100.0)
    started = time.monotonic()
    clock.wait(threading.Event(), 400.0)
    assert clock.now() == 400.0
    assert time.monotonic() - started < LATE
    clock.wait(threading.Event(), 300.0)  # a deadline in the past: time never runs backwards
    assert clock.now() == 400.0
    clock.advance(2.5)
    assert clock.now() == 402.5


def test_a_manual_wait_on_a_set_event_leaves_time_alone() -> None:
    clock = ManualClock(start=100.0)
    event = threading.Event()
    event.set()
    clock.wait(event, 400.0)
    assert clock.now() == 100.0


async def test_a_manual_async_wait_lets_others_run_first() -> None:
    clock = ManualClock(start=100.0)
    event = asyncio.Event()
    waiter = asyncio.ensure_future(clock.await_event(event, 400.0))
    event.set()  # set before the waiter's one turn of the loop ends
    await waiter
    assert clock.now() == 100.0
    await clock.await_event(asyncio.Event(), 400.0)
    assert clock.now() == 400.0
