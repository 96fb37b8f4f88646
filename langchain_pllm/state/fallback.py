"""While Redis is away: a share of each limit in this process, and a record to replay on return.

On an error the Redis state logs one warning and serves from an in-process ``MemoryState``,
trying Redis again at most every ``retry_interval`` seconds, and logs once when it is back.
Requests started on the fallback are remembered (start, token reservation, settled when
released) and written into the Redis windows when Redis answers again (``outage.py``).

Two modes (``outage`` in the balancer settings):

- ``exact`` (the default): no window span ever holds more starts than its limit. Other
  processes may have filled any window just before Redis went away, and this process cannot
  know, so every window of a key with a request or token limit counts as full until one window
  after the outage began here (``start``, the first failed call, which is after every start
  Redis granted). After that the process takes ``floor(limit * local_share)``, or
  ``floor(limit / n)`` for the ``n`` live processes the heartbeat counted: ``n`` such shares
  sum to at most the limit, and none shares a window with a start from before the outage. A
  share of 0, and every key with ``limits:`` windows (day quotas, budgets: they need Redis's
  counters), waits for Redis, and so does a process that never counted the live processes
  (Redis away since it started) without ``local_share``. The concurrency cap gets a floor
  share too; requests other processes had in flight before the outage are unknown to it (best
  effort).
- ``share``: availability first, as before: each limit's share rounded up (at least 1) from
  the first failure, no ``limits:`` windows; a window spanning the outage may hold the starts
  before it plus every process's share.

Wake times while Redis is away are never later than the next attempt to reach it, so a request
waiting for the outage rule goes to Redis as soon as Redis is back. Leases from the fallback go
back to the fallback.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

from langchain_pllm.state.base import (
    BreakerPolicy,
    KeySnapshot,
    Lease,
    Limits,
    Outcome,
    settled_tokens,
)
from langchain_pllm.state.memory import MemoryState

__all__ = ["FallbackLease", "LocalFallback", "Records", "Replay"]

logger = logging.getLogger("langchain_pllm")

Replay = tuple[str, float, list[tuple[str, float, int | None]]]
"""One key's starts to write back: key, window, and (member, age, tokens) per start."""


class _FallbackStart:
    """A request started on the local fallback, kept to be written into Redis on its return."""

    __slots__ = ("member", "started", "tokens", "window")

    def __init__(self, member: str, started: float, tokens: int | None, window: float) -> None:
        self.member = member
        self.started = started  # in the caller's clock
        self.tokens = tokens  # reserved, then settled at release; None when the key has no tpm
        self.window = window


class FallbackLease:
    """A fallback lease: the local state's own lease, and the record to settle at release."""

    __slots__ = ("lease", "start")

    def __init__(self, lease: Lease, start: _FallbackStart) -> None:
        self.lease = lease
        self.start = start


Records = dict[str, deque[_FallbackStart]]


class LocalFallback:
    """Whether Redis is away, what this process may start meanwhile, and what to replay.

    Args:
        where: The Redis URL, redacted, for the log lines.
        local_share: Share of each limit while Redis is away; ``None`` for one share per live
            process.
        retry_interval: Seconds between attempts to reach Redis again.
        new_member: Names a start for the Redis windows (a lease id nobody else uses).
        exact: The ``exact`` outage mode (else ``share``; see the module docstring).
    """

    def __init__(
        self,
        where: str,
        local_share: float | None,
        retry_interval: float,
        new_member: Callable[[], str],
        exact: bool = True,
    ) -> None:
        self.local = MemoryState()
        self.local_share = local_share
        self.retry_interval = retry_interval
        self.exact = exact
        self.active = False
        """True while Redis is away and this process serves from ``local``."""
        self.start = 0.0
        """When the last outage began here: its first failed call, in the caller's clock."""
        self._where = where
        self._new_member = new_member
        self._process_count: int | None = None
        self._scaled: dict[Limits, Limits] = {}
        self._records: Records = {}
        self._records_lock = threading.Lock()
        self._retry_at = 0.0
        self._lock = threading.Lock()

    # Away and back -----------------------------------------------------------------------------

    def retry_due(self) -> bool | None:
        """``None`` while Redis is in use; while it is away, True for one caller per interval."""
        if not self.active:
            return None
        with self._lock:
            if not self.active:
                return None
            # Real time, whatever the caller's clock: this paces network attempts.
            t = time.monotonic()
            if t >= self._retry_at:
                self._retry_at = t + self.retry_interval
                return True
            return False

    def went_away(self, exc: BaseException, at: float) -> None:
        """Take over after a failed Redis call; the first failure of an outage logs a warning.

        Args:
            exc: What the call raised.
            at: When it failed, in the caller's clock: the outage's start if it is the first.
        """
        with self._lock:
            self._retry_at = time.monotonic() + self.retry_interval
            if self.active:
                return
            self.active = True
            self.start = at
        if self.exact and self.local_share is None and self._process_count is None:
            share = "nothing with a request or token limit: no process count seen yet"
        elif self.exact:
            share = "none for one window, then a floor share"
        elif self.local_share is not None:
            share = f"{self.local_share:.3g} of each limit"
        elif self._process_count:
            share = f"1/{self._process_count} of each limit, one per live process"
        else:
            share = "each whole limit: no process count seen yet"
        logger.warning(
            "Redis state at %s unreachable (%s: %s); using local limits (%s in this process) "
            "until it answers again",
            self._where,
            type(exc).__name__,
            exc,
            share,
        )

    def came_back(self) -> None:
        """Hand back to Redis; logs once per outage."""
        with self._lock:
            if not self.active:
                return
            self.active = False
        logger.info("Redis state at %s answers again; limits are shared once more", self._where)

    def processes_seen(self, count: int) -> None:
        """The heartbeat's new count of live processes: the shares follow it."""
        self._process_count = count
        if self.local_share is None:
            self._scaled = {}

    # Serving -----------------------------------------------------------------------------------

    def scaled(self, limits: Limits) -> Limits:
        """This process's share of ``limits`` (rounded down in ``exact`` mode, else up)."""
        scaled = self._scaled.get(limits)
        if scaled is None:
            scaled = self._scaled[limits] = self.share_of(limits, self._process_count or 1)
        return scaled

    def share_of(self, limits: Limits, count: int) -> Limits:
        """The share of ``limits`` each of ``count`` processes takes while Redis is away."""
        share = self.local_share
        exact = self.exact

        def part(limit: int | None) -> int | None:
            if limit is None:
                return None
            if exact:
                if share is not None:
                    return math.floor(limit * share + 1e-9)  # 0.3 * 10 is 2.9999...
                return limit // count
            if share is not None:
                return max(1, math.ceil(limit * share))
            return max(1, -(-limit // count))  # ceil without float rounding

        return Limits(
            part(limits.rate_limit), part(limits.tpm), part(limits.max_concurrency), limits.window
        )

    def redis_retry(self, now: float) -> float:
        """When Redis will be tried again, in the caller's clock."""
        return now + max(0.005, self._retry_at - time.monotonic())

    def _outage_wait(self, limits: Limits, now: float) -> float | None:
        """``exact`` mode: until when a key may not start on the fallback, or ``None``."""
        if limits.windows:
            return self.redis_retry(now)
        if limits.rate_limit is not None or limits.tpm is not None:
            if self.local_share is None and self._process_count is None:
                # Never counted the fleet (Redis was away from the start): any share may be
                # too large, the whole limit surely is.
                return self.redis_retry(now)
            full_until = self.start + limits.window
            if now < full_until:
                return min(full_until, self.redis_retry(now))
        scaled = self.scaled(limits)
        if 0 in (scaled.rate_limit, scaled.tpm, scaled.max_concurrency):
            return self.redis_retry(now)
        return None

    def acquire(
        self, key: str, limits: Limits, tokens: int, now: float, breaker: BreakerPolicy
    ) -> Lease | float:
        """``MemoryState.acquire`` on this process's share, the start recorded for replay."""
        if self.exact and (wait := self._outage_wait(limits, now)) is not None:
            return wait
        r = self.local.acquire(key, self.scaled(limits), tokens, now, breaker)
        if not isinstance(r, Lease):
            # Exact: a full local window frees at Redis's return at the latest.
            return min(r, self.redis_retry(now)) if self.exact and r != math.inf else r
        tpm_tokens = int(tokens) if limits.tpm is not None else None
        # The local state's start, not ``now``: a late caller's stale time is moved up to the
        # newest it granted, and the replay must date the start as the local window does.
        started = r.started
        start = _FallbackStart(self._new_member(), started, tpm_tokens, limits.window)
        with self._records_lock:
            starts = self._records.get(key)
            if starts is None:
                starts = self._records[key] = deque()
            while starts and started - starts[0].started >= starts[0].window:
                starts.popleft()  # out of its window: nothing left to replay
            starts.append(start)
        return Lease(key, r.started, r.tokens, r.probe, FallbackLease(r, start))

    def release(
        self,
        lease: Lease,
        outcome: Outcome,
        now: float,
        breaker: BreakerPolicy,
        tokens_used: int | None,
        retry_after: float | None,
    ) -> None:
        """A fallback lease goes back where it came from; its record learns the settlement."""
        extra = lease.extra
        local = extra.lease if isinstance(extra, FallbackLease) else lease
        self.local.release(
            local, outcome, now, breaker, tokens_used=tokens_used, retry_after=retry_after
        )
        if isinstance(extra, FallbackLease) and extra.start.tokens is not None:
            extra.start.tokens = settled_tokens(lease, outcome, tokens_used)[0]

    def snapshot(self, key: str, limits: Limits, now: float) -> KeySnapshot:
        """This process's own view of a key while Redis is away."""
        return self.local.snapshot(key, self.scaled(limits), now)

    # Replay on return --------------------------------------------------------------------------

    def take(self) -> Records:
        """Every record so far, handed to a replay (and kept no longer here)."""
        with self._records_lock:
            taken, self._records = self._records, {}
        return taken

    def restore(self, taken: Records) -> None:
        """Put back starts whose replay failed, ahead of any recorded since (order kept)."""
        with self._records_lock:
            for key, starts in taken.items():
                newer = self._records.get(key)
                if newer:
                    starts.extend(newer)
                self._records[key] = starts

    @staticmethod
    def replays(taken: Records, ref: float) -> list[Replay]:
        """Per key, the starts still inside their window at ``ref`` (in the records' clock)."""
        replays: list[Replay] = []
        for key, starts in taken.items():
            entries = [
                (start.member, age, start.tokens)
                for start in starts
                if (age := max(0.0, ref - start.started)) < start.window
            ]
            if entries:
                replays.append((key, starts[-1].window, entries))
        return replays
