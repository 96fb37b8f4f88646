"""The memory state's time runs forward per key, whatever ``now`` a late caller brings.

A caller reads the clock, then takes the state's lock: another thread can read a later time,
acquire and release in between. A start recorded at the stale time would leave its window
early (and out of order, which the left-expiring deques rely on). These tests drive that
interleaving by hand with explicit times, no threads and no sleep. A release keeps its own
``now``: a rest counts from the reply, which came before the release read the clock.
"""

from __future__ import annotations

from langchain_pllm.config.quotas import QuotaWindow
from langchain_pllm.state.base import BreakerPolicy, Lease, Limits
from langchain_pllm.state.fallback import LocalFallback
from langchain_pllm.state.memory import MemoryState

KEY = "0123456789abcdef"
BREAKER = BreakerPolicy(threshold=3, interval=300.0)


def _lease(r: Lease | float) -> Lease:
    assert isinstance(r, Lease), f"refused until {r}"
    return r


def test_a_late_callers_stale_now_starts_no_earlier_than_the_newest_grant() -> None:
    state = MemoryState()
    lim = Limits(4, None, None, 60.0)
    for _ in range(4):
        _lease(state.acquire(KEY, lim, 0, 1000.0, BREAKER))
    assert state.acquire(KEY, lim, 0, 1000.0, BREAKER) == 1060.0  # full until 1060
    # Thread B read 1060 and took a slot; thread A read 1000 before B moved the clock.
    assert _lease(state.acquire(KEY, lim, 0, 1060.0, BREAKER)).started == 1060.0
    late = _lease(state.acquire(KEY, lim, 0, 1000.0, BREAKER))
    assert late.started == 1060.0  # not 1000: it would free at 1060 instead of 1120


def test_a_stale_start_after_the_window_emptied_still_counts_a_whole_window() -> None:
    state = MemoryState()
    lim = Limits(4, None, None, 60.0)
    for _ in range(4):
        _lease(state.acquire(KEY, lim, 0, 1000.0, BREAKER))
    state.snapshot(KEY, lim, 1060.0)  # get_stats at 1060 empties the window
    _lease(state.acquire(KEY, lim, 0, 1000.0, BREAKER))  # read 1000, sent after 1060
    for _ in range(3):
        _lease(state.acquire(KEY, lim, 0, 1060.0, BREAKER))
    # Five requests sent at 1060 or later would be one too many for 4 a minute.
    assert state.acquire(KEY, lim, 0, 1060.0, BREAKER) == 1120.0


def test_token_and_limits_windows_take_the_clamped_time_too() -> None:
    state = MemoryState()
    lim = Limits(None, 100, None, 60.0, (QuotaWindow("tokens", 30, 10.0),))
    _lease(state.acquire(KEY, lim, 20, 1000.0, BREAKER))
    state.snapshot(KEY, lim, 1070.0)  # both windows empty at 1070
    late = _lease(state.acquire(KEY, lim, 20, 1000.0, BREAKER))
    assert late.started == 1070.0
    # Its 20 tokens stay in the 10 s window until 1080 and in the minute until 1130.
    assert state.acquire(KEY, lim, 20, 1079.0, BREAKER) == 1080.0
    assert state.snapshot(KEY, lim, 1129.0).tokens_in_window == 20


def test_a_fallback_start_is_replayed_at_the_time_the_local_window_holds_it() -> None:
    # The Redis fallback serves from a MemoryState and records each start to write back into
    # Redis on its return: a late caller's start must be dated as the local window dates it,
    # or it leaves the Redis window earlier than it left the local one.
    fallback = LocalFallback("redis://test", 0.5, 1.0, lambda: "m", exact=False)
    lim = Limits(4, None, None, 60.0)
    fallback.went_away(ConnectionError("away"), 1000.0)
    _lease(fallback.acquire(KEY, lim, 0, 1010.0, BREAKER))
    late = _lease(fallback.acquire(KEY, lim, 0, 1005.0, BREAKER))  # read the clock first
    assert late.started == 1010.0
    [(_, _, entries)] = LocalFallback.replays(fallback.take(), 1060.0)
    assert [age for _, age, _ in entries] == [50.0, 50.0]
