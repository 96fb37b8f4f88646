"""Redis away and back, for ``RedisState``: who serves meanwhile, and how it returns.

A call that Redis does not answer hands this process to the local fallback (``fallback.py``),
the outage dated by that moment; on a cluster in ``exact`` mode only the acquires of a key
whose master is away wait (``DownKeys``). While it is away, one caller per retry interval tries
Redis again in one round trip carrying the heartbeat and one ``RECONCILE`` per key
(``outage.py`` says what it mends); starts that other threads made on the fallback meanwhile
go in a second one, and only then does this process use Redis again. After the return, a
key's first acquire is preceded by the ``RECONCILE`` it still needs. ``RedisAway`` is a mixin
of ``RedisState`` (``redis.py``), which holds the connections, the fallback and the heartbeat.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from langchain_pllm.state.redis_client import UNAVAILABLE
from langchain_pllm.state.redis_scripts import HEARTBEAT, RECONCILE

if TYPE_CHECKING:
    from langchain_pllm.state.base import BreakerPolicy, Lease, Limits
    from langchain_pllm.state.fallback import LocalFallback, Records
    from langchain_pllm.state.heartbeat import Heartbeat
    from langchain_pllm.state.outage import DownKeys, Outage, Returns
    from langchain_pllm.state.redis_layout import Call
    from langchain_pllm.state.redis_scripts import Script

__all__ = ["RedisAway"]

logger = logging.getLogger("langchain_pllm")


class _Rejoin(NamedTuple):
    """One round trip back to Redis: what it sends, and the fallback's records it carries."""

    calls: list[tuple[Script, Call]]
    taken: Records
    beat: bool
    now: float
    outage: Outage | None
    keys: list[str]


class RedisAway:
    """Serving while Redis is away and returning to it (a mixin of ``RedisState``)."""

    server_time: bool
    _fallback: LocalFallback
    _heartbeat: Heartbeat
    _returns: Returns
    _down: DownKeys | None

    if TYPE_CHECKING:  # provided by RedisState

        def _send_all(self, calls: list[tuple[Script, Call]]) -> list[Any]: ...

        async def _asend_all(self, calls: list[tuple[Script, Call]]) -> list[Any]: ...

    # Going away, and what a call does meanwhile ------------------------------------------------

    def _ref(self, now: float | None) -> float:
        """``now`` in the fallback's records' clock: with the server's clock, this moment.

        A call without ``now`` under a manual clock is dated by the last acquire Redis answered.
        """
        if self.server_time:
            return time.monotonic()
        return now if now is not None else max(0.0, self._returns.last_ok)

    def _away(self, exc: BaseException, now: float | None = None) -> None:
        """A call failed: the fallback takes over, the outage dated by this moment.

        On a cluster in ``exact`` mode nothing is served locally: only the acquires of a key
        whose master is away wait for it (``DownKeys``); other calls just fail softly.
        """
        if self._down is not None:
            self._down.went_away(None, exc, 0.0, 0.0)
            return
        self._fallback.went_away(exc, self._ref(now))

    def _seen(self, reply: Any, now: float | None = None) -> None:
        """A heartbeat's live processes: the fallback's shares follow their count.

        Given ``now`` (a heartbeat outside a rejoin), a Redis found to have forgotten this
        process counts as an outage that began and ended now (``outage.py``).
        """
        if self._heartbeat.seen(reply):
            self._fallback.processes_seen(self._heartbeat.count or 1)
        if self._heartbeat.lost_data:
            self._heartbeat.lost_data = False
            if now is not None:
                ref = self._ref(now)
                self._returns.ended(self._returns.forgotten(ref), [], every_key=False)

    def _key_waits(self, key: str, now: float) -> float | None:
        """On a cluster (exact), whether ``key`` waits while its master is away."""
        return None if self._down is None else self._down.wait(key, now)

    def _first_call(self, key: str, limits: Limits, now: float) -> Call | None:
        """What ``RECONCILE`` must mend before this acquire, if anything (``outage.py``)."""
        ref = self._ref(now)
        if self._down is not None and (start := self._down.started(key)) is not None:
            return self._returns.stand_ins(key, limits, now, ref, start)
        return self._returns.pending(key, limits, now, ref)

    def _mend_later(self, key: str) -> None:
        """The ``RECONCILE`` before ``key``'s acquire did not complete: the next one sends it."""
        if self._down is None:  # a cluster's away key is mended until an acquire succeeds
            self._returns.retry(key)

    def _answered(self, key: str, limits: Limits, now: float) -> None:
        self._returns.last_ok = self._returns.used[key] = self._ref(now)
        self._returns.known[key] = limits
        if self._down is not None and self._down.any:
            self._down.came_back(key)

    def _acquire_failed(
        self,
        exc: BaseException,
        key: str,
        limits: Limits,
        tokens: int,
        now: float,
        breaker: BreakerPolicy,
    ) -> Lease | float:
        """Redis did not answer: the fallback serves, or on a cluster (exact) the key waits."""
        if self._down is not None:
            return self._down.went_away(key, exc, self._ref(now), now)
        self._away(exc, now)
        return self._local(key, limits, tokens, now, breaker)

    def _local(
        self, key: str, limits: Limits, tokens: int, now: float, breaker: BreakerPolicy
    ) -> Lease | float:
        """The fallback's acquire; the key is reconciled on the return (``outage.py``)."""
        self._returns.known[key] = limits
        return self._fallback.acquire(key, limits, tokens, now, breaker)

    # Coming back -------------------------------------------------------------------------------

    def _usable(self, now: float) -> bool:
        """Whether to ask Redis now; the one caller that tries it again rejoins it first."""
        due = self._fallback.retry_due()
        if due is None:
            return True
        return due and self._rejoin(now)

    async def _ausable(self, now: float) -> bool:
        """Async twin of ``_usable``."""
        due = self._fallback.retry_due()
        if due is None:
            return True
        return due and await self._arejoin(now)

    def _rejoin_plan(self, now: float, beat: bool) -> _Rejoin | None:
        """The next round trip back to Redis; ``None`` when nothing is left to send.

        The first carries the heartbeat and one ``RECONCILE`` per key (``outage.py``); later
        ones write the fallback starts other threads made meanwhile.
        """
        taken = self._fallback.take()
        ref = self._ref(now)
        outage = self._returns.outage(ref) if beat else None
        calls: list[tuple[Script, Call]] = []
        if beat:
            calls.append((HEARTBEAT, self._heartbeat.call()))
        replays = self._fallback.replays(taken, ref)
        reconciled = self._returns.calls(replays, now, ref, outage)
        calls += [(RECONCILE, call) for _, call in reconciled]
        if not calls:
            return None
        return _Rejoin(calls, taken, beat, now, outage, [key for key, _ in reconciled])

    def _rejoin_failed(self, plan: _Rejoin, exc: BaseException) -> bool:
        """Keep the records for the next try; True when Redis is away (else re-raise)."""
        self._fallback.restore(plan.taken)
        if not isinstance(exc, UNAVAILABLE):
            return False
        self._away(exc, plan.now)
        return True

    def _rejoined(self, plan: _Rejoin, replies: list[Any]) -> None:
        if plan.beat:
            beat = replies[0]
            listed = False
            if isinstance(beat, list):
                self._seen(beat)
                listed = self._heartbeat.listed  # False after a beat whose answer was lost
            if plan.outage is not None:
                # Still listed in the heartbeat: Redis kept its data, nothing to stand in for.
                self._returns.ended(plan.outage, plan.keys, lost=not listed)
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:
            logger.debug("reconciling keys after an outage failed: %s", failed[0])

    def _rejoin(self, now: float) -> bool:
        """Try Redis again: heartbeat and replay of the fallback's starts, one round trip.

        Starts recorded by other threads during that round trip are replayed in a second one
        (and so on), before the fallback hands over: nobody acquires on Redis before every
        start this process made without it is there.
        """
        beat = True
        while (plan := self._rejoin_plan(now, beat)) is not None:
            try:
                replies = self._send_all(plan.calls)
            except BaseException as exc:
                if self._rejoin_failed(plan, exc):
                    return False
                raise
            self._rejoined(plan, replies)
            beat = False
        self._fallback.came_back()
        return True

    async def _arejoin(self, now: float) -> bool:
        """Async twin of ``_rejoin``."""
        beat = True
        while (plan := self._rejoin_plan(now, beat)) is not None:
            try:
                replies = await self._asend_all(plan.calls)
            except BaseException as exc:
                if self._rejoin_failed(plan, exc):
                    return False
                raise
            self._rejoined(plan, replies)
            beat = False
        self._fallback.came_back()
        return True
