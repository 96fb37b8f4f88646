"""The interface between the balancer and wherever a key's live state is kept.

A key (one API key and model, named by its fingerprint, never the key itself) has: a sliding
window of request starts, a sliding window of tokens, a count of requests in flight, a
resting-until time (from ``Retry-After``), a circuit breaker, and counters for stats. The
balancer needs exactly two operations per request attempt, so a shared store (Redis) needs
exactly two round trips: ``acquire`` (check every limit and reserve in one atomic step) and
``release`` (give back the in-flight slot, settle tokens, move the breaker, count). The state
knows nothing of vendors or of how providers are picked; the balancer knows nothing of how the
state is stored. ``now`` is always passed in, so the state needs no clock of its own.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from langchain_pllm.config.quotas import QuotaWindow

__all__ = [
    "BreakerPolicy",
    "KeySnapshot",
    "Lease",
    "Limits",
    "Outcome",
    "Periods",
    "StateBackend",
    "ask_of",
    "real_usage",
    "settled_amount",
    "settled_tokens",
]

#: Per window of ``Limits.windows``: ``None`` for a rolling window, or for a calendar window
#: ``(period name, end)``: the calendar period ``now`` falls in (the caller computes it from the
#: wall clock; the state keeps no clock) and when it ends, in ``now``'s units.
Periods = tuple[tuple[str, float] | None, ...]


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's limits. ``None`` means unlimited.

    ``rate_limit`` and ``tpm`` are the shorthands over the balancer's ``window``; ``windows``
    are the ``limits:`` block's, each with its own period; every one must have room. With
    ``calendar``, each one-day window is a calendar day whose period the caller passes in.
    """

    rate_limit: int | None
    tpm: int | None
    max_concurrency: int | None
    window: float
    windows: tuple[QuotaWindow, ...] = ()
    calendar: bool = False


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens and when it is tried again."""

    threshold: int
    interval: float


class Outcome(enum.IntEnum):
    """How an attempt ended, as far as the key's state is concerned."""

    SUCCESS = 0
    FAILURE = 1  # transient (5xx, connection, timeout): counts toward the breaker
    TRIP = 2  # auth, permission, model not found: opens the breaker at once
    RATE_LIMITED = 3  # rests the key for retry_after; the breaker does not count it
    NEUTRAL = 4  # the request's own fault (bad request, context overflow): not the key's error
    CANCELLED = 5  # the caller gave up: nothing is learned about the key
    EXHAUSTED = 6  # money or a daily quota is gone: rests retry_after, then one probe; no count


class Lease:
    """What ``acquire`` reserved, handed back to ``release``."""

    __slots__ = ("extra", "key", "probe", "quota", "started", "tokens")

    def __init__(
        self,
        key: str,
        started: float,
        tokens: int,
        probe: bool,
        extra: object = None,
        quota: object = None,
    ) -> None:
        self.key = key
        self.started = started
        self.tokens = tokens
        self.probe = probe
        self.extra = extra  # backend-specific handle (a token-window entry, a lease id)
        self.quota = quota  # backend-specific handles of the ``limits:`` windows' reservations


def real_usage(usage: Mapping[str, float] | None, tokens_used: int | None) -> dict[str, float]:
    """The real amounts per resource of a finished request.

    ``tokens`` comes from ``tokens_used``, and input and output from it when it knows them
    (the balancer's ``TokenUsage``, an ``int`` with ``input_tokens`` and ``output_tokens``);
    ``usage`` (from the caller, e.g. a cost) wins over both.
    """
    out: dict[str, float] = {}
    if tokens_used is not None:
        out["tokens"] = int(tokens_used)
        for kind in ("input_tokens", "output_tokens"):
            count = getattr(tokens_used, kind, None)
            if count is not None:
                out[kind] = count
    if usage:
        out.update(usage)
    return out


def ask_of(window: QuotaWindow, tokens: int, ask: Mapping[str, float] | None) -> float:
    """What one request reserves in ``window``: one request; the estimate for token windows.

    Without a separate estimate, input and output windows reserve the whole token estimate
    (an upper bound of each); a cost window reserves only what the caller estimates.
    """
    resource = window.resource
    if resource == "requests":
        return 1.0
    if ask is not None and resource in ask:
        return float(ask[resource])
    return 0.0 if resource == "cost" else float(tokens)


def settled_amount(reserved: float, outcome: Outcome, used: float | None) -> tuple[float, bool]:
    """How a reservation settles: every backend and every resource keeps this one rule.

    Args:
        reserved: What ``acquire`` reserved.
        outcome: How the attempt ended.
        used: The real amount when the reply reported it.

    Returns:
        The amount the request leaves in its window, and whether it counts as spent.
    """
    if outcome is Outcome.SUCCESS or used is not None:
        return (used if used is not None else reserved), True
    if outcome is not Outcome.CANCELLED:
        return 0, False  # a refused request spent nothing
    return reserved, False  # a cancelled one may have: keep the estimate


def settled_tokens(lease: Lease, outcome: Outcome, tokens_used: int | None) -> tuple[int, bool]:
    """How a released lease's token reservation settles: every backend keeps this one rule.

    Args:
        lease: The lease being released (``tokens`` is what ``acquire`` reserved).
        outcome: How the attempt ended.
        tokens_used: The real usage when the reply reported it.

    Returns:
        The tokens the request leaves in its token window, and whether they count as spent
        (added to the key's ``total_tokens``).
    """
    used, spent = settled_amount(lease.tokens, outcome, tokens_used)
    return int(used), spent


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    """A key's state as ``get_stats()`` shows it."""

    state: str  # "closed" | "open" | "half_open" | "exhausted"
    active_requests: int
    window_used: int
    tokens_in_window: int
    total_requests: int
    total_tokens: int
    error_count: int
    validation_failures: int
    rest_until: float
    cost: float = 0.0  # spent at the providers' prices, in their currency
    cached_tokens: int = 0  # input tokens the vendor served from its prompt cache
    exhausted_until: float = 0.0
    windows: tuple[tuple[float, float], ...] = ()  # per ``Limits.windows``: (used, next reset)


class StateBackend:
    """Where windows, breakers and counters live. Sync and async twins; all thread-safe."""

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
        """Reserve a request (and ``tokens``) on ``key`` if every limit allows it.

        ``ask`` gives estimates per resource of ``limits.windows`` (``ask_of``); ``periods``
        the current calendar periods when ``limits.calendar``.

        Returns:
            A ``Lease`` on success; otherwise the time at which trying again may succeed
            (``math.inf`` if only a release can free capacity).
        """
        raise NotImplementedError

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
        """Give back the in-flight slot, settle tokens, update the breaker and counters.

        ``usage``: the real amounts per resource of ``limits.windows`` (``tokens`` defaults to
        ``tokens_used``); ``retry_after``: the rest of a ``RATE_LIMITED`` or ``EXHAUSTED`` key.
        """
        raise NotImplementedError

    def snapshot(
        self, key: str, limits: Limits, now: float, periods: Periods | None = None
    ) -> KeySnapshot:
        """Read a key's state for stats (``periods`` as for ``acquire``)."""
        raise NotImplementedError

    def count_validation_failure(self, key: str) -> None:
        """Count an output that failed its validator."""
        raise NotImplementedError

    def count_spend(self, key: str, cost: float, cached_tokens: int) -> None:
        """Add a reply's cost (at the key's price) and its cached input tokens to the totals."""
        raise NotImplementedError

    def recall_conversation(self, digest: bytes) -> str | None:
        """The key that served conversation ``digest`` last, as the whole fleet knows it.

        ``None`` when unknown; an in-process state knows nothing beyond the balancer's own map
        and answers ``None`` always.
        """
        return None

    def remember_conversation(self, digest: bytes, key: str, ttl: float) -> None:
        """Note that ``key`` served conversation ``digest``, for ``ttl`` seconds."""

    async def aacquire(
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
        """Async twin of ``acquire``."""
        return self.acquire(key, limits, tokens, now, breaker, ask=ask, periods=periods)

    async def arelease(
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
        """Async twin of ``release``."""
        self.release(
            lease,
            outcome,
            now,
            breaker,
            tokens_used=tokens_used,
            retry_after=retry_after,
            usage=usage,
        )

    async def asnapshot(
        self, key: str, limits: Limits, now: float, periods: Periods | None = None
    ) -> KeySnapshot:
        """Async twin of ``snapshot``."""
        return self.snapshot(key, limits, now, periods)

    async def acount_validation_failure(self, key: str) -> None:
        """Async twin of ``count_validation_failure``."""
        self.count_validation_failure(key)

    async def acount_spend(self, key: str, cost: float, cached_tokens: int) -> None:
        """Async twin of ``count_spend``."""
        self.count_spend(key, cost, cached_tokens)

    async def arecall_conversation(self, digest: bytes) -> str | None:
        """Async twin of ``recall_conversation``."""
        return self.recall_conversation(digest)

    async def aremember_conversation(self, digest: bytes, key: str, ttl: float) -> None:
        """Async twin of ``remember_conversation``."""
        self.remember_conversation(digest, key, ttl)

    @property
    def is_local(self) -> bool:
        """True when every call is in-process and cheap (the balancer may skip the async twins)."""
        return False
