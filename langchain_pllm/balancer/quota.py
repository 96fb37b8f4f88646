"""Quota rules the balancer applies around the state: calendar days, spent-key rests, stats.

A key with ``quota_reset`` has calendar one-day windows: which day ``now`` falls in and when it
ends come from the clock's wall time (``Clock.wall``; ``ManualClock(wall=...)`` in tests) and
the key's IANA zone, DST-aware through ``zoneinfo``, and travel to the state with each acquire
(the state keeps no clock). A spent key rests until that reset when the key has one, else for
``balancer.exhausted_rest``.

A ``cost`` window (a budget) is priced here, per key: before the call the estimate's prompt and
reply tokens at the key's price (``cost_ask``), after it the reply's real usage, cached input
at its own price (``cost_used``); the state reserves and settles them like tokens.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from langchain_pllm.config.quotas import DAY, QuotaReset
from langchain_pllm.state.base import KeySnapshot, Limits, Periods

__all__ = [
    "DayPeriods",
    "budget_full",
    "cost_ask",
    "cost_used",
    "has_budget",
    "limits_of",
    "window_stats",
]


def limits_of(config: Any, window: float) -> Limits:
    """A provider config's limits as the state reads them."""
    windows = config.quota_windows
    calendar = config.quota_reset is not None and any(w.period == DAY for w in windows)
    return Limits(config.rate_limit, config.tpm, config.concurrency, window, windows, calendar)


def _split(tokens: int) -> tuple[int, int, int]:
    # The balancer's TokenUsage knows its split; a bare count is priced as prompt tokens.
    return (
        getattr(tokens, "input_tokens", int(tokens)),
        getattr(tokens, "output_tokens", 0),
        getattr(tokens, "cached_tokens", 0),
    )


def has_budget(config: Any, limits: Limits) -> bool:
    """Whether a key has a ``cost`` window (a budget) and a price to count it in."""
    return config.price is not None and any(w.resource == "cost" for w in limits.windows)


def cost_ask(config: Any, tokens: int) -> dict[str, float]:
    """What a request reserves in a budgeted key's cost windows (see ``has_budget``)."""
    prompt, reply, _ = _split(tokens)
    return {"cost": config.price.cost(prompt, reply)}


def cost_used(config: Any, tokens_used: int | None) -> dict[str, float] | None:
    """What a finished request settles in a budgeted key's cost windows (``None``: nothing)."""
    if tokens_used is None:
        return None
    return {"cost": config.price.cost(*_split(tokens_used))}


def budget_full(windows: list[dict[str, Any]], ask: float) -> bool:
    """Whether a cost window has no room for a request like the key's last one.

    The key then shows ``state: "budget"``: the window holds reservations up to the estimate,
    so a key stops a little short of its budget rather than overrun it.
    """
    return any(w["resource"] == "cost" and w["used"] + ask > w["limit"] for w in windows)


class DayPeriods:
    """The calendar day of one key: its name and end, recomputed only when a day ends."""

    __slots__ = ("_end_wall", "_flags", "_name", "reset")

    def __init__(self, limits: Limits, reset: QuotaReset) -> None:
        self.reset = reset
        self._flags = tuple(w.period == DAY for w in limits.windows)
        self._end_wall = -math.inf
        self._name = ""

    def _roll(self, wall: float) -> None:
        zone = self.reset.tzinfo
        local = datetime.fromtimestamp(wall, zone)
        end = datetime.combine(local.date(), self.reset.at, tzinfo=zone)
        if end.timestamp() <= wall:
            end = datetime.combine(local.date() + timedelta(days=1), self.reset.at, tzinfo=zone)
        self._end_wall = end.timestamp()
        self._name = end.isoformat()

    def next_reset(self, now: float, wall: float) -> float:
        """When the current day ends, in ``now``'s units."""
        if wall >= self._end_wall:
            self._roll(wall)
        return now + (self._end_wall - wall)

    def periods(self, now: float, wall: float) -> Periods:
        """Per window of the key: the current day for a one-day window, ``None`` otherwise."""
        end = self.next_reset(now, wall)  # first: it may roll to a new day and its name
        day = (self._name, end)
        return tuple(day if flag else None for flag in self._flags)


def _name(resource: str, period: float, calendar: bool) -> str:
    if calendar:
        return f"{resource}/day (calendar)"
    units = ((DAY, "day"), (3600.0, "hour"), (60.0, "minute"), (1.0, "second"))
    for seconds, unit in units:
        if period == seconds:
            return f"{resource}/{unit}"
    return f"{resource}/{period:g}s"


def window_stats(limits: Limits, snap: KeySnapshot, now: float) -> list[dict[str, Any]]:
    """Every window of a key as ``get_stats()`` shows it: the shorthands', then ``limits:``'s.

    The list is whole (the stats table and metrics draw it instead of ``window_used``).
    """
    out: list[dict[str, Any]] = []
    legacy = (("requests", limits.rate_limit, snap.window_used),
              ("tokens", limits.tpm, snap.tokens_in_window))  # fmt: skip
    for resource, limit, used in legacy:
        if limit is not None:
            out.append(
                {
                    "name": _name(resource, limits.window, False),
                    "resource": resource,
                    "limit": limit,
                    "period": limits.window,
                    "calendar": False,
                    "used": used,
                    "resets_in": None,
                }
            )
    for spec, (amount, reset) in zip(limits.windows, snap.windows, strict=False):
        calendar = limits.calendar and spec.period == DAY
        out.append(
            {
                "name": _name(spec.resource, spec.period, calendar),
                "resource": spec.resource,
                "limit": spec.limit,
                "period": spec.period,
                "calendar": calendar,
                "used": amount,
                "resets_in": max(0.0, reset - now),
            }
        )
    return out
