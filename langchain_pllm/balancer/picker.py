"""Choosing the next provider in O(log n): a heap of members ordered by load.

The order DESIGN.md asks for is: fewest active requests (scaled by weight), then fewest recent
failures, then least recently used. The last two are one number, a virtual finish time as in
weighted fair queuing: each pick moves a member's time forward by ``1 / weight`` (so idle
sequential calls rotate, and a weight-2 key takes two turns for one), and each failure moves it
one more turn back (so a key that just failed waits behind the others, and the penalty fades as
they are used, instead of exiling the key until it happens to succeed).

Every member has at most one live entry in the ``ready`` heap; an entry is a tuple of that sort
key and a version number, and changing a member (a pick, a release) bumps its version and pushes
a fresh entry, leaving the old one to be skipped when popped (lazy deletion). Members the state
refused (window full, resting, breaker open) wait in the ``parked`` heap ordered by the time
they may have capacity again, and return to ``ready`` when that time comes or when one of their
own requests ends. So a pick is a few heap operations whatever the pool size, and 1,000 keys
cost what 10 cost.

Tiers: each tier (``tier: 1`` by default) has its own pair of heaps, and a pick walks the tiers
in order, so a tier-2 key is taken only when no tier-1 key is ready (all parked: at a limit,
resting, open, at their cap), and a tier-1 key that comes back is taken first again. A pool of
one tier pays one loop step. Keys already tried by the request are passed over in every tier
before any is taken again, so a retry stays in its tier while another key there can take it.

Affinity: a pick may name a preferred member (the key that served the conversation last). It is
taken, without touching the heaps, when it is in the tier the pick has reached, is not parked,
was not tried, and has at most one request more in flight than the least loaded key of its tier;
otherwise the pick goes on as usual. So affinity never overrides a limit, a rest, a breaker or a
tier, and many conversations with one prefix do not pile onto one key.

The picker is not thread-safe; the balancer calls it under its lock.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Collection
from typing import TYPE_CHECKING

from langchain_pllm.balancer.quota import limits_of

if TYPE_CHECKING:
    from langchain_pllm.config import ProviderConfig
    from langchain_pllm.providers.base import Provider

__all__ = ["Member", "Picker"]


class Member:
    """One provider as the balancer sees it: config, limits and local load."""

    __slots__ = (
        "active",
        "config",
        "failures",
        "index",
        "key",
        "last_used",
        "limits",
        "parked",
        "poll",
        "provider",
        "rank",
        "tier",
        "version",
        "vfinish",
        "weight",
    )

    def __init__(self, index: int, provider: Provider, config: ProviderConfig, window: float):
        self.index = index
        self.provider = provider
        self.config = config
        self.key = config.key_fingerprint
        self.limits = limits_of(config, window)
        self.weight = config.weight
        self.tier = config.tier
        self.rank = 0  # place of ``tier`` among the pool's tiers, set by the picker
        self.active = 0
        self.failures = 0
        self.last_used = 0
        self.vfinish = 0.0
        self.version = 0
        self.parked = False
        self.poll = 0.0  # current back-off while refused with no known wake time


class Picker:
    """The ready and parked heaps, one pair per tier, over a fixed list of members."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        tiers = sorted({m.tier for m in members})
        for m in members:
            m.rank = tiers.index(m.tier)
        self.tiers = tiers
        self._sizes = [sum(1 for m in members if m.rank == r) for r in range(len(tiers))]
        self._ready: list[list[tuple[float, float, int, int, int]]] = [[] for _ in tiers]
        self._parked: list[list[tuple[float, int, int]]] = [[] for _ in tiers]
        self._tick = itertools.count(1)
        self._vnow = 0.0
        for m in members:
            self._push(m)

    def _push(self, m: Member) -> None:
        m.version += 1
        ready = self._ready[m.rank]
        heapq.heappush(ready, (m.active / m.weight, m.vfinish, m.last_used, m.index, m.version))
        if len(ready) > 4 * self._sizes[m.rank] + 64:
            self._compact(m.rank)

    def _compact(self, rank: int) -> None:
        # Drop stale entries so the heap stays O(n); amortised over many pushes.
        live = []
        for entry in self._ready[rank]:
            m = self.members[entry[3]]
            if entry[4] == m.version and not m.parked:
                live.append(entry)
        heapq.heapify(live)
        self._ready[rank] = live

    def _unpark_due(self, now: float) -> None:
        for parked in self._parked:
            while parked and parked[0][0] <= now:
                _, index, version = heapq.heappop(parked)
                m = self.members[index]
                if m.parked and m.version == version:
                    m.parked = False
                    self._push(m)

    def _least_load(self, rank: int) -> float:
        """The load of the least loaded ready member of tier ``rank`` (stale tops dropped)."""
        ready = self._ready[rank]
        members = self.members
        while ready:
            entry = ready[0]
            m = members[entry[3]]
            if entry[4] == m.version and not m.parked:
                return entry[0]
            heapq.heappop(ready)
        return math.inf

    def _preferred(
        self,
        prefer: Member,
        rank: int,
        tried: Collection[int],
        only: Collection[int] | None,
    ) -> bool:
        if prefer.rank != rank or prefer.parked or (tried and prefer.index in tried):
            return False
        if only is not None and prefer.index not in only:
            return False
        return prefer.active / prefer.weight <= self._least_load(rank) + 1.0 / prefer.weight

    def candidate(
        self,
        tried: Collection[int],
        now: float,
        only: Collection[int] | None = None,
        prefer: Member | None = None,
        spill: bool = True,
    ) -> Member | float:
        """Take the best member not parked, by tier, preferring those not in ``tried``.

        ``only``: the members a call may use at all (those serving its ``model=``); ``None``
        for every member. The others are stepped over and put back, so a small group in a
        large pool costs a scan of the heap: groups are for a few models, not for routing.

        The member's local ``active`` count is raised at once (so concurrent picks spread);
        the caller must follow with ``reject`` or ``done``.

        Args:
            tried: Member indexes this request already tried.
            now: The clock's time.
            only: The members the call may use at all (see above); ``None`` for every one.
            prefer: The member affinity asks for, taken only as the module docstring says.
            spill: Whether the pick may go past the first tier.

        Returns:
            The member, or the earliest time a parked member (of the tiers the pick may use)
            may have capacity (``math.inf`` if none is parked and none is ready).
        """
        self._unpark_due(now)
        members = self.members
        ranks = len(self._ready) if spill else 1
        chosen: Member | None = None
        fallback: Member | None = None
        for rank in range(ranks):
            if prefer is not None and self._preferred(prefer, rank, tried, only):
                chosen = prefer
                break
            ready = self._ready[rank]
            # Entries stepped over go back after the pick; most picks step over none, so
            # the list is made only when one is.
            back: list[tuple[float, float, int, int, int]] | None = None
            first_tried: Member | None = None
            while ready:
                entry = heapq.heappop(ready)
                m = members[entry[3]]
                if entry[4] != m.version or m.parked:
                    continue
                if only is None or m.index in only:  # else outside the call's model: step over
                    if not tried or m.index not in tried:
                        chosen = m
                        break
                    if first_tried is None:  # tried already: the fallback if all were
                        first_tried = m
                if back is None:
                    back = [entry]
                else:
                    back.append(entry)
            if back is not None:
                for entry in back:
                    heapq.heappush(ready, entry)
            if chosen is not None:
                break
            if fallback is None and first_tried is not None:
                fallback = first_tried
        if chosen is None:
            # Every ready member was tried: the best of the lowest tier goes again (its heap
            # entry turns stale below).
            chosen = fallback
        if chosen is None:
            return self.next_wake(ranks)
        chosen.active += 1
        chosen.last_used = next(self._tick)
        start = max(self._vnow, chosen.vfinish)
        chosen.vfinish = start + 1.0 / chosen.weight
        self._vnow = start
        self._push(chosen)
        return chosen

    def reject(self, m: Member, wake: float, now: float) -> None:
        """The state refused ``m`` until ``wake``: undo the pick and park the member."""
        m.active -= 1
        m.version += 1
        m.parked = True
        if wake == math.inf:
            # Only a release frees it (concurrency cap, a probe in flight). Our own releases
            # unpark it at once; a release in another balancer or process sharing the key does
            # not reach us, so look again soon, backing off from 50 ms to 1 s.
            m.poll = min(max(m.poll * 2.0, 0.05), 1.0)
            wake = now + m.poll
        heapq.heappush(self._parked[m.rank], (wake, m.index, m.version))

    def undo(self, m: Member) -> None:
        """The pick of ``m`` was abandoned before the state answered (cancelled, or it raised)."""
        m.active -= 1
        self._push(m)

    def done(self, m: Member, failed: bool | None) -> None:
        """An attempt on ``m`` ended: lower its load, note the outcome, make it ready again.

        ``failed`` is True for a failure of the key, False for a success, None when the attempt
        says nothing about the key (cancelled, the request's own fault).
        """
        m.active -= 1
        if failed is True:
            m.failures += 1
            m.vfinish = max(m.vfinish, self._vnow) + 1.0 / m.weight
        elif failed is False:
            m.failures = 0
        m.parked = False
        m.poll = 0.0
        self._push(m)

    def next_wake(self, ranks: int | None = None) -> float:
        """The earliest time a parked member (of the first ``ranks`` tiers) may be ready."""
        wake = math.inf
        for parked in self._parked[:ranks]:
            if parked and parked[0][0] < wake:
                wake = parked[0][0]
        return wake
