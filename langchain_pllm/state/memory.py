"""In-process state: the default, and the model for every other backend.

Each key's windows are deques of start times, expired from the left, so a check costs amortised
O(1) whatever the limit. One lock guards all keys: every critical section is a handful of deque
and integer operations, far shorter than any contention it could cause.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import deque
from collections.abc import Mapping

from langchain_pllm.state.base import (
    BreakerPolicy,
    KeySnapshot,
    Lease,
    Limits,
    Outcome,
    Periods,
    StateBackend,
    ask_of,
    real_usage,
    settled_tokens,
)
from langchain_pllm.state.windows import Windows

__all__ = ["MemoryState", "memory_state_for"]

CLOSED, OPEN, HALF_OPEN, EXHAUSTED = "closed", "open", "half_open", "exhausted"
_RESTING = (OPEN, EXHAUSTED)  # states that wait for ``open_until``, then let one probe through


class _KeyState:
    __slots__ = (
        "active",
        "breaker",
        "cached_tokens",
        "cost",
        "error_count",
        "failures",
        "open_until",
        "probe_out",
        "quota",
        "rest_until",
        "seen",
        "starts",
        "token_sum",
        "tokens",
        "total_requests",
        "total_tokens",
        "validation_failures",
    )

    def __init__(self) -> None:
        self.starts: deque[float] = deque()
        # [start, tokens, in_window] entries, settled in place while still in the window.
        self.tokens: deque[list[float]] = deque()
        self.token_sum = 0
        self.active = 0
        self.rest_until = 0.0
        self.breaker = CLOSED
        self.failures = 0
        self.open_until = 0.0
        self.probe_out = False
        self.total_requests = 0
        self.total_tokens = 0
        self.error_count = 0
        self.validation_failures = 0
        self.cost = 0.0
        self.cached_tokens = 0
        self.quota: Windows | None = None  # the ``limits:`` windows, built on first use
        self.seen = -math.inf  # the newest ``now`` an acquire or snapshot of this key brought

    def start_time(self, now: float) -> float:
        """The key's time for an acquire or snapshot at ``now``: never older than one seen.

        A caller reads the clock before it takes the lock, so another thread may read a later
        time and be granted (or expire the windows) first. The late caller's request is sent
        after that, so a start recorded at its stale time would leave the windows early (a
        fifth request in a 4/min window) and out of order in deques that expire from the
        left. A release keeps its own ``now``: a rest counts from the reply, which came first.
        """
        if now < self.seen:
            return self.seen
        self.seen = now
        return now

    def windows(self, limits: Limits) -> Windows:
        quota = self.quota
        if quota is None or (quota.specs is not limits.windows and quota.specs != limits.windows):
            quota = self.quota = Windows(limits)
        return quota

    def expire(self, now: float, window: float) -> None:
        cutoff = now - window
        starts = self.starts
        while starts and starts[0] <= cutoff:
            starts.popleft()
        tokens = self.tokens
        while tokens and tokens[0][0] <= cutoff:
            entry = tokens.popleft()
            self.token_sum -= int(entry[1])
            entry[2] = 0  # a late settlement must not touch the window it left


class MemoryState(StateBackend):
    """Windows, breakers and counters in this process's memory."""

    def __init__(self) -> None:
        self._keys: dict[str, _KeyState] = {}
        self._lock = threading.Lock()

    @property
    def is_local(self) -> bool:
        """Every call is in-process."""
        return True

    def _get(self, key: str) -> _KeyState:
        s = self._keys.get(key)
        if s is None:
            s = self._keys.setdefault(key, _KeyState())
        return s

    def acquire(
        self,
        key: str,
        limits: Limits,
        tokens: int,
        now: float,
        breaker: BreakerPolicy,
        *,
        ask: Mapping[str, float] | None = None,
        periods: Periods | None = None,
    ) -> Lease | float:
        """Check breaker, rest, concurrency and every window; reserve all."""
        with self._lock:
            s = self._get(key)
            now = s.start_time(now)
            probe = False
            if s.breaker is not CLOSED:
                if s.breaker in _RESTING:
                    if now < s.open_until:
                        return s.open_until
                    s.breaker = HALF_OPEN
                    s.probe_out = False
                if s.probe_out:
                    return math.inf  # the probe's release wakes the waiters
                probe = True
            if now < s.rest_until:
                return s.rest_until
            if limits.max_concurrency is not None and s.active >= limits.max_concurrency:
                return math.inf
            s.expire(now, limits.window)
            if limits.rate_limit is not None and len(s.starts) >= limits.rate_limit:
                return s.starts[0] + limits.window
            quota = amounts = None
            if limits.windows:
                quota = s.windows(limits)
                amounts = [ask_of(w, tokens, ask) for w in limits.windows]
                wake = quota.wake(amounts, now, periods)
                if wake is not None:
                    return wake
            entry = None
            if limits.tpm is not None:
                # A request larger than the whole budget may still run alone in an empty window,
                # or it could never run at all.
                if s.token_sum + tokens > limits.tpm and s.token_sum > 0:
                    return s.tokens[0][0] + limits.window
                entry = [now, tokens, 1]
                s.tokens.append(entry)
                s.token_sum += tokens
            s.starts.append(now)
            s.active += 1
            s.total_requests += 1
            if probe:
                s.probe_out = True
            held = quota.take(amounts, now, periods) if quota is not None and amounts else None
            return Lease(key, now, tokens, probe, entry, held)

    def release(
        self,
        lease: Lease,
        outcome: Outcome,
        now: float,
        breaker: BreakerPolicy,
        *,
        tokens_used: int | None = None,
        retry_after: float | None = None,
        usage: Mapping[str, float] | None = None,
    ) -> None:
        """Settle the lease and move the breaker."""
        with self._lock:
            s = self._get(lease.key)
            s.active -= 1
            held = lease.quota
            if isinstance(held, list) and s.quota is not None:
                s.quota.settle(held, outcome, real_usage(usage, tokens_used))
            entry = lease.extra
            used, spent = settled_tokens(lease, outcome, tokens_used)
            if spent:
                s.total_tokens += used
            if isinstance(entry, list) and entry[2]:
                s.token_sum += used - int(entry[1])
                entry[1] = used
            if lease.probe:
                s.probe_out = False
            if outcome is Outcome.SUCCESS:
                s.failures = 0
                if retry_after:  # the vendor's headers said a resource is used up
                    s.rest_until = max(s.rest_until, now + retry_after)
                if s.breaker is not CLOSED and lease.probe:
                    s.breaker = CLOSED
            elif outcome is Outcome.FAILURE:
                s.error_count += 1
                s.failures += 1
                if lease.probe or s.failures >= breaker.threshold:
                    self._open(s, now, breaker)
            elif outcome is Outcome.TRIP:
                s.error_count += 1
                s.failures += 1
                self._open(s, now, breaker)
            elif outcome is Outcome.RATE_LIMITED:
                s.error_count += 1
                s.rest_until = max(s.rest_until, now + (retry_after or 0.0))
            elif outcome is Outcome.EXHAUSTED:
                # Not a failure of the key's health: no breaker count, a long rest, then a probe.
                s.error_count += 1
                s.breaker = EXHAUSTED
                s.open_until = now + (retry_after or 0.0)
            # NEUTRAL (the request's own fault) says nothing about the key: not an error of it.

    @staticmethod
    def _open(s: _KeyState, now: float, breaker: BreakerPolicy) -> None:
        s.breaker = OPEN
        s.open_until = now + breaker.interval

    def snapshot(
        self, key: str, limits: Limits, now: float, periods: Periods | None = None
    ) -> KeySnapshot:
        """Read one key's state."""
        with self._lock:
            s = self._get(key)
            now = s.start_time(now)  # it expires windows: never with a time older than seen
            s.expire(now, limits.window)
            state = s.breaker
            if state in _RESTING and now >= s.open_until:
                state = HALF_OPEN
            return KeySnapshot(
                state=state,
                active_requests=s.active,
                window_used=len(s.starts),
                tokens_in_window=s.token_sum,
                total_requests=s.total_requests,
                total_tokens=s.total_tokens,
                error_count=s.error_count,
                validation_failures=s.validation_failures,
                rest_until=s.rest_until,
                cost=s.cost,
                cached_tokens=s.cached_tokens,
                exhausted_until=s.open_until if state is EXHAUSTED else 0.0,
                windows=s.windows(limits).stats(now, periods) if limits.windows else (),
            )

    def count_validation_failure(self, key: str) -> None:
        """Count an output that failed its validator."""
        with self._lock:
            self._get(key).validation_failures += 1

    def count_spend(self, key: str, cost: float, cached_tokens: int) -> None:
        """Add a reply's cost and cached input tokens to the key's totals."""
        with self._lock:
            s = self._get(key)
            s.cost += cost
            s.cached_tokens += cached_tokens


_BY_CLOCK: weakref.WeakKeyDictionary[object, MemoryState] = weakref.WeakKeyDictionary()
_BY_CLOCK_LOCK = threading.Lock()


def memory_state_for(clock: object) -> MemoryState:
    """The one in-memory state of this process for ``clock``.

    Timestamps from different clocks cannot share a window, so each clock gets its own state;
    every balancer on the default clock shares one, which is what makes limits belong to the key
    rather than to a Python object.
    """
    with _BY_CLOCK_LOCK:
        state = _BY_CLOCK.get(clock)
        if state is None:
            state = _BY_CLOCK[clock] = MemoryState()
        return state
