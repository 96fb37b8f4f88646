"""Back to Redis after an outage: one caller per retry interval tries, in one round trip.

The round trip carries the heartbeat and one ``RECONCILE`` per key (``outage.py`` says what it
mends); starts that other threads made on the fallback meanwhile go in a second one, and only
then does this process use Redis again. While it is under way other callers keep serving from
the fallback. ``RedisRejoin`` is a mixin of ``RedisState`` (``redis.py``), which holds the
connections, the fallback and the heartbeat.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from langchain_pllm.state.redis_client import UNAVAILABLE
from langchain_pllm.state.redis_scripts import HEARTBEAT, RECONCILE

if TYPE_CHECKING:
    from langchain_pllm.state.fallback import LocalFallback, Records
    from langchain_pllm.state.heartbeat import Heartbeat
    from langchain_pllm.state.outage import Outage, Returns
    from langchain_pllm.state.redis_layout import Call
    from langchain_pllm.state.redis_scripts import Script

__all__ = ["RedisRejoin"]

logger = logging.getLogger("langchain_pllm")


class _Rejoin(NamedTuple):
    """One round trip back to Redis: what it sends, and the fallback's records it carries."""

    calls: list[tuple[Script, Call]]
    taken: Records
    beat: bool
    now: float
    outage: Outage | None
    keys: list[str]


class RedisRejoin:
    """Trying Redis again while the fallback serves (a mixin of ``RedisState``)."""

    _fallback: LocalFallback
    _heartbeat: Heartbeat
    _returns: Returns

    if TYPE_CHECKING:  # provided by RedisState

        def _send_all(self, calls: list[tuple[Script, Call]]) -> list[Any]: ...

        async def _asend_all(self, calls: list[tuple[Script, Call]]) -> list[Any]: ...

        def _ref(self, now: float | None) -> float: ...

        def _away(self, exc: BaseException, now: float | None = None) -> None: ...

        def _seen(self, reply: Any, now: float | None = None) -> None: ...

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
