"""The ``limits:`` windows of a key in the memory state: config, rolling and calendar windows.

Time is a ``ManualClock``; calendar days read its wall time (``ManualClock(wall=...)``), so a
day in Los Angeles, DST change included, is tested in microseconds.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from langchain_pllm import PllmConfigError
from langchain_pllm.balancer.quota import DayPeriods, limits_of
from langchain_pllm.clock import ManualClock
from langchain_pllm.config import ProviderConfig
from langchain_pllm.config.quotas import QuotaWindow
from langchain_pllm.state.base import BreakerPolicy, Lease, Outcome
from langchain_pllm.state.memory import MemoryState

LA = ZoneInfo("America/Los_Angeles")
BREAKER = BreakerPolicy(3, 300.0)
KEY = "0123456789abcdef"


def provider(**kwargs: object) -> ProviderConfig:
    return ProviderConfig(vendor="openai", api_key="sk-a", model="m", **kwargs)


def test_limits_block_is_read_with_the_limits_notation() -> None:
    p = provider(
        limits={
            "requests": ["15/minute", "1500 per day"],
            "tokens": "1000000/minute",
            "input_tokens": "40000/minute",
            "output_tokens": "8000/2 minutes",
            "concurrency": 4,
        },
        max_concurrency=6,
    )
    assert p.quota_windows == (
        QuotaWindow("requests", 15, 60),
        QuotaWindow("requests", 1500, 86_400),
        QuotaWindow("tokens", 1_000_000, 60),
        QuotaWindow("input_tokens", 40_000, 60),
        QuotaWindow("output_tokens", 8000, 120),
    )
    assert p.concurrency == 4  # the lower of max_concurrency and limits.concurrency
    assert provider(rate_limit=20).quota_windows == ()  # old configs keep their meaning


def test_a_budget_is_read_in_decimal_money_and_needs_a_price() -> None:
    price = {"input": 0.15, "output": 0.6}
    p = provider(price=price, limits={"cost": ["0.01/minute", "5/day", ".5 per hour"]})
    assert p.quota_windows == (
        QuotaWindow("cost", 0.01, 60),
        QuotaWindow("cost", 0.5, 3600),
        QuotaWindow("cost", 5, 86_400),
    )
    with pytest.raises(PllmConfigError, match=r"requests: cannot read '0\.5/minute'"):
        provider(limits={"requests": "0.5/minute"})  # only money has fractions
    with pytest.raises(PllmConfigError, match="limits: a cost budget needs price"):
        provider(limits={"cost": "5/day"})


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("limits", {"requests": "15 a minute"}, "requests: cannot read '15 a minute'"),
        ("limits", {"requests": [3]}, "requests: cannot read 3"),
        ("limits", {"calls": "1/minute"}, "no resource 'calls'"),
        ("limits", "15/minute", "limits must be a mapping"),
        ("quota_reset", "midnight", "cannot read 'midnight'"),
        ("quota_reset", "00:00 Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("quota_reset", "25:00 UTC", "not a time of day"),
    ],
)
def test_bad_notation_names_the_field_and_shows_an_example(
    field: str, value: object, says: str
) -> None:
    with pytest.raises(PllmConfigError) as caught:
        provider(**{field: value})
    message = str(caught.value)
    assert message.startswith(f"{field}:")
    assert says in message
    assert "e.g." in message


def test_every_window_must_have_room_and_the_refusal_names_the_latest_wake() -> None:
    state = MemoryState()
    lim = limits_of(provider(limits={"requests": ["2/second", "3/minute"]}), 60.0)
    for t in (0.0, 0.1):
        assert isinstance(state.acquire(KEY, lim, 0, t, BREAKER), Lease)
    assert state.acquire(KEY, lim, 0, 0.2, BREAKER) == 1.0  # the second is full until 1.0
    assert isinstance(state.acquire(KEY, lim, 0, 1.0, BREAKER), Lease)
    assert state.acquire(KEY, lim, 0, 2.5, BREAKER) == 60.0  # the minute is full
    assert isinstance(state.acquire(KEY, lim, 0, 60.0, BREAKER), Lease)


def test_token_windows_reserve_an_estimate_and_settle_to_the_real_use() -> None:
    state = MemoryState()
    lim = limits_of(provider(limits={"tokens": "100/minute", "output_tokens": "80/minute"}), 60.0)
    lease = state.acquire(KEY, lim, 80, 0.0, BREAKER)
    assert isinstance(lease, Lease)
    assert state.acquire(KEY, lim, 80, 1.0, BREAKER) == 60.0  # 80 + 80 > 100
    state.release(lease, Outcome.SUCCESS, 2.0, BREAKER, tokens_used=30, usage={"output_tokens": 10})
    snap = state.snapshot(KEY, lim, 2.0)
    assert [used for used, _ in snap.windows] == [30, 10]
    assert isinstance(state.acquire(KEY, lim, 40, 3.0, BREAKER), Lease)  # 30 + 40 fits
    # A refused attempt spent nothing: its reservation settles to 0.
    refused = state.acquire(KEY, lim, 20, 4.0, BREAKER)
    assert isinstance(refused, Lease)
    state.release(refused, Outcome.FAILURE, 4.0, BREAKER)
    assert [used for used, _ in state.snapshot(KEY, lim, 4.0).windows] == [70, 50]


def test_a_rolling_day_frees_24_hours_after_each_start() -> None:
    state = MemoryState()
    lim = limits_of(provider(limits={"requests": "2/day"}), 60.0)
    hour = 3600.0
    for t in (0.0, hour):
        assert isinstance(state.acquire(KEY, lim, 0, t, BREAKER), Lease)
    assert state.acquire(KEY, lim, 0, 2 * hour, BREAKER) == 24 * hour
    assert isinstance(state.acquire(KEY, lim, 0, 24 * hour, BREAKER), Lease)
    assert state.acquire(KEY, lim, 0, 24 * hour + 1, BREAKER) == 25 * hour


def test_calendar_days_end_at_local_midnight_dst_included() -> None:
    # 2026-03-08 is the spring-forward day in Los Angeles: it is 23 hours long.
    clock = ManualClock(wall=datetime(2026, 3, 7, 23, 0, tzinfo=LA))
    p = provider(limits={"requests": "2/day"}, quota_reset="00:00 America/Los_Angeles")
    lim = limits_of(p, 60.0)
    assert lim.calendar
    assert p.quota_reset is not None
    days = DayPeriods(lim, p.quota_reset)
    state = MemoryState()

    def ask() -> Lease | float:
        now = clock.now()
        return state.acquire(KEY, lim, 0, now, BREAKER, periods=days.periods(now, clock.wall()))

    assert isinstance(ask(), Lease)
    assert isinstance(ask(), Lease)
    assert ask() == pytest.approx(clock.now() + 3600)  # midnight is an hour away
    clock.advance(3600 - 1)
    assert not isinstance(ask(), Lease)
    clock.advance(1)  # 2026-03-08 00:00 PST
    assert isinstance(ask(), Lease)
    assert isinstance(ask(), Lease)
    clock.advance(23 * 3600 - 1)  # a naive 24 h day would still be refusing an hour later
    assert not isinstance(ask(), Lease)
    clock.advance(1)
    assert datetime.fromtimestamp(clock.wall(), LA).hour == 0
    assert isinstance(ask(), Lease)


def test_spent_key_rests_then_lets_one_probe_through_and_never_counts_to_the_breaker() -> None:
    state = MemoryState()
    lim = limits_of(provider(), 60.0)
    for episode in range(5):  # far more than the breaker threshold of 3
        t = episode * 100.0
        lease = state.acquire(KEY, lim, 0, t, BREAKER)
        assert isinstance(lease, Lease)
        assert lease.probe is (episode > 0)
        state.release(lease, Outcome.EXHAUSTED, t, BREAKER, retry_after=100.0)
        snap = state.snapshot(KEY, lim, t + 1)
        assert snap.state == "exhausted"
        assert snap.exhausted_until == t + 100.0
        assert state.acquire(KEY, lim, 0, t + 99, BREAKER) == t + 100.0
    probe = state.acquire(KEY, lim, 0, 500.0, BREAKER)
    assert isinstance(probe, Lease)
    assert probe.probe
    assert state.acquire(KEY, lim, 0, 500.0, BREAKER) == float("inf")  # one probe at a time
    state.release(probe, Outcome.SUCCESS, 501.0, BREAKER)
    assert state.snapshot(KEY, lim, 501.0).state == "closed"
