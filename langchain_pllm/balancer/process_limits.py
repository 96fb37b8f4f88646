"""Limits this process learned from the vendors' answers, applied before and after the state.

Two kinds, both per process: windows a reply's rate-limit headers stated (``learned``) and
concurrency caps a "too much concurrency" answer lowered (``crowding``). They are checked
before the state, so a key that learned "5 a minute" is refused here like a full window (and
its reservation freed if the state then refuses), and a cut key is refused like one at its
concurrency cap (a release frees it). Until a key learns something (``idle``) the balancer
skips these hooks on its hot path, so a pool that never meets a stated limit pays one
attribute read per step.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from langchain_pllm.balancer.crowding import ConcurrencyCuts
from langchain_pllm.balancer.learned import Handle, LearnedLimits
from langchain_pllm.balancer.picker import Member
from langchain_pllm.providers.rate_headers import HEADER_LIMITS
from langchain_pllm.state.base import Lease, Outcome

__all__ = ["ProcessLimits"]


class ProcessLimits:
    """The learned windows and concurrency cuts of a pool's keys, and the leases holding them.

    Args:
        window: The balancer's window: how long a cut holds before its cap grows by one.
        lock: The balancer's lock, which also guards the picker.
    """

    __slots__ = ("_leases", "_lock", "cuts", "idle", "learned")

    def __init__(self, window: float, lock: threading.Lock) -> None:
        self._lock = lock
        self.learned = LearnedLimits()  # limits the vendors' headers taught
        self.cuts = ConcurrencyCuts(window)  # caps lowered by "too much concurrency"
        self._leases: dict[int, list[Handle]] = {}  # id(lease) -> its reservations
        self.idle = True  # nothing learned or cut yet, ever: ``hold`` and ``keep`` do nothing

    def __bool__(self) -> bool:
        return bool(self.learned) or bool(self.cuts)

    def hold(self, m: Member, tokens: int, now: float) -> float | list[Handle] | None:
        """Before the state: when ``m`` may take the request, or its reservations (or ``None``).

        A float is a refusal (until then; ``inf`` until a release). Takes the lock.
        """
        if not self.learned and not self.cuts:
            return None
        with self._lock:
            cap = self.cuts.cap(m.index, now) if self.cuts else None
            if cap is not None and m.active > cap:  # ``active`` counts this pick already
                return math.inf
            return self.learned.reserve(m.index, tokens, now) if self.learned else None

    def keep(self, held: float | list[Handle] | None, r: Lease | float | None) -> None:
        """After the state answered ``r``: tie the reservations to its lease, or free them."""
        if not isinstance(held, list):
            return
        with self._lock:
            if isinstance(r, Lease):
                self._leases[id(r)] = held
            else:
                LearnedLimits.settle(held, None, cancel=True)

    def released(
        self,
        m: Member,
        lease: Lease,
        outcome: Outcome,
        used: Any,
        exc: BaseException | None,
        now: float,
    ) -> None:
        """After a release, under the lock (before the picker counts it done): settle and learn."""
        if exc is not None and getattr(exc, "concurrency_exceeded", False):
            self.cuts.refused(m.index, m.active, now)  # ``active`` still counts this attempt
            self.idle = False
        held = self._leases.pop(id(lease), None) if self._leases else None
        if held is not None:
            LearnedLimits.settle(held, used, cancel=False)
        stated = HEADER_LIMITS.get() if outcome is Outcome.SUCCESS else None
        if stated:
            self.learned.learn(m.index, m.limits, stated, now)
            self.idle = False

    def stats(self, m: Member, now: float) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """``m``'s concurrency cut (or ``None``) and learned windows, for ``get_stats()``."""
        cut = self.cuts.stats(m.index, now) if self.cuts else None
        learned = self.learned.stats(m.index, now) if self.learned else []
        return cut, learned
