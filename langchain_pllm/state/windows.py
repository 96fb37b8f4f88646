"""In-process windows of the ``limits:`` block: rolling and calendar, any resource.

A rolling window keeps one ``[start, amount, live]`` entry per request in a deque, expired from
the left, with a running sum: a check is amortised O(1) whatever the limit (a 1500/day window
holds at most 1500 small entries, which is cheaper and exact compared with sub-bucket counters,
which would blur when each start frees). A calendar window is one sum for the current period,
named by the caller; a new name starts a new sum, and a generation number keeps a late
settlement from touching a period it did not reserve in. Reservations settle in place to the
real amount (``settled_amount``), the same rule the token window of ``memory.py`` keeps.

Not thread-safe: ``MemoryState`` (and the Redis fallback through it) calls under its lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from langchain_pllm.config.quotas import DAY, QuotaWindow
from langchain_pllm.state.base import Limits, Outcome, Periods, settled_amount

__all__ = ["CalendarWindow", "RollingWindow", "Windows"]


class RollingWindow:
    """``limit`` per ``period`` seconds, sliding."""

    __slots__ = ("entries", "limit", "period", "strict", "sum")

    def __init__(self, spec: QuotaWindow) -> None:
        self.limit = spec.limit
        self.period = spec.period
        # A token or cost reservation larger than the whole limit may still run alone in an
        # empty window, or it could never run; a request is one unit and never exceeds it.
        self.strict = spec.resource == "requests"
        self.entries: deque[list[float]] = deque()
        self.sum = 0.0

    def expire(self, now: float) -> None:
        """Drop entries that left the window."""
        cutoff = now - self.period
        entries = self.entries
        while entries and entries[0][0] <= cutoff:
            entry = entries.popleft()
            self.sum -= entry[1]
            entry[2] = 0  # a late settlement must not touch the window it left

    def wake(self, amount: float, now: float, period: tuple[str, float] | None) -> float | None:
        """``None`` if ``amount`` fits now, else when it may (the oldest entry's expiry)."""
        self.expire(now)
        if self.sum + amount > self.limit and (self.strict or self.sum > 0):
            return self.entries[0][0] + self.period if self.entries else now + self.period
        return None

    def take(self, amount: float, now: float, period: tuple[str, float] | None) -> list[float]:
        """Reserve ``amount``; the entry is the handle to settle."""
        entry = [now, amount, 1]
        self.entries.append(entry)
        self.sum += amount
        return entry

    def settle(self, entry: list[float], amount: float) -> None:
        """Replace a reservation by the real amount, if it is still in the window."""
        if entry[2]:
            self.sum += amount - entry[1]
            entry[1] = amount

    def used(self, now: float, period: tuple[str, float] | None) -> tuple[float, float]:
        """Units in the window and when the oldest leaves (``now`` if empty)."""
        self.expire(now)
        return self.sum, (self.entries[0][0] + self.period if self.entries else now)


class CalendarWindow:
    """``limit`` per calendar period, the period named and ended by the caller."""

    __slots__ = ("generation", "limit", "name", "strict", "sum")

    def __init__(self, spec: QuotaWindow) -> None:
        self.limit = spec.limit
        self.strict = spec.resource == "requests"
        self.name = ""
        self.sum = 0.0
        self.generation = 0

    def _roll(self, period: tuple[str, float] | None) -> None:
        if period is not None and period[0] != self.name:
            self.name = period[0]
            self.sum = 0.0
            self.generation += 1

    def wake(self, amount: float, now: float, period: tuple[str, float] | None) -> float | None:
        """``None`` if ``amount`` fits this period, else the period's end."""
        self._roll(period)
        if self.sum + amount > self.limit and (self.strict or self.sum > 0):
            return period[1] if period is not None else now + 60.0
        return None

    def take(self, amount: float, now: float, period: tuple[str, float] | None) -> list[float]:
        """Reserve ``amount`` in this period."""
        self.sum += amount
        return [float(self.generation), amount, 1]

    def settle(self, entry: list[float], amount: float) -> None:
        """Replace a reservation by the real amount, if its period is still current."""
        if int(entry[0]) == self.generation:
            self.sum += amount - entry[1]
            entry[1] = amount

    def used(self, now: float, period: tuple[str, float] | None) -> tuple[float, float]:
        """Units used this period and when it ends."""
        self._roll(period)
        return self.sum, (period[1] if period is not None else now)


Window = RollingWindow | CalendarWindow


class Windows:
    """A key's ``limits:`` windows, in the order of ``Limits.windows``."""

    __slots__ = ("specs", "windows")

    def __init__(self, limits: Limits) -> None:
        self.specs = limits.windows
        self.windows: list[Window] = [
            CalendarWindow(spec) if limits.calendar and spec.period == DAY else RollingWindow(spec)
            for spec in self.specs
        ]

    def wake(self, amounts: Sequence[float], now: float, periods: Periods | None) -> float | None:
        """``None`` if every window has room for its amount, else the latest wake among the full.

        The latest: a request must fit all of them, so it cannot start before the last one frees.
        """
        latest: float | None = None
        for i, window in enumerate(self.windows):
            wake = window.wake(amounts[i], now, periods[i] if periods else None)
            if wake is not None and (latest is None or wake > latest):
                latest = wake
        return latest

    def take(
        self, amounts: Sequence[float], now: float, periods: Periods | None
    ) -> list[list[float]]:
        """Reserve in every window (after ``wake`` said they all have room)."""
        return [
            w.take(amounts[i], now, periods[i] if periods else None)
            for i, w in enumerate(self.windows)
        ]

    def stats(self, now: float, periods: Periods | None) -> tuple[tuple[float, float], ...]:
        """Per window: (used, next reset)."""
        return tuple(
            w.used(now, periods[i] if periods else None) for i, w in enumerate(self.windows)
        )

    def settle(
        self,
        entries: list[list[float]],
        outcome: Outcome,
        used: dict[str, float] | None,
    ) -> None:
        """Settle each reservation of a lease to the real amount (requests stay counted)."""
        for i, w in enumerate(self.windows):
            resource = self.specs[i].resource
            if resource == "requests":
                continue
            entry = entries[i]
            real = used.get(resource) if used else None
            w.settle(entry, settled_amount(entry[1], outcome, real)[0])
