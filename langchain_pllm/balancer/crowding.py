"""Concurrency caps lowered by a vendor's "too much concurrency" answer (Zhipu ``1302``).

When a key answers that it has too many requests in flight, this process had ``n`` in flight on
it: the key's cap becomes ``n - 1`` (at least 1) for one ``period``, then grows by one per
further period, and the cut is forgotten once the cap is back above ``n`` (the key again takes
what the vendor refused, so a vendor that raised its limit is used fully). A new ``1302``
lowers it afresh. Per process: the vendor counts a fleet's requests together, and each process
cuts its own share when it is refused.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ConcurrencyCuts"]


class ConcurrencyCuts:
    """Per key: ``(cap, since, refused_at)``. Callers hold the balancer's lock."""

    __slots__ = ("_cuts", "period")

    def __init__(self, period: float) -> None:
        self.period = period
        self._cuts: dict[int, tuple[int, float, int]] = {}

    def __bool__(self) -> bool:
        return bool(self._cuts)

    def refused(self, index: int, in_flight: int, now: float) -> None:
        """The vendor refused a request while ``in_flight`` (this one included) were out."""
        self._cuts[index] = (max(1, in_flight - 1), now, in_flight)

    def cap(self, index: int, now: float) -> int | None:
        """The key's cap now, or ``None`` when it has no cut (or the cut has grown back)."""
        cut = self._cuts.get(index)
        if cut is None:
            return None
        low, since, refused_at = cut
        cap = low + math.floor((now - since) / self.period)
        if cap > refused_at:
            del self._cuts[index]
            return None
        return cap

    def stats(self, index: int, now: float) -> dict[str, Any] | None:
        """``{"cap", "grows_in"}`` for ``get_stats()``, or ``None`` without a cut."""
        cap = self.cap(index, now)
        if cap is None:
            return None
        since = self._cuts[index][1]
        grows_in = self.period - (now - since) % self.period
        return {"cap": cap, "grows_in": grows_in}
