"""Where the Redis state keeps a key, and what each script is sent: the plan, apart from the I/O.

``RedisState`` runs every operation twice over, sync and async; what a call sends (key names,
arguments in the order its script reads them, TTLs) and how a reply reads back are built here
once, by plain methods that touch no connection.

Layout, per key fingerprint ``K`` (a digest of vendor, endpoint, model and key; never the key
itself) under a prefix (``pllm`` by default), all in one Redis Cluster hash slot:

- ``pllm:{K}:starts``: ZSET of request starts (member: lease id, score: start time);
- ``pllm:{K}:tokens``: ZSET of token reservations (member: ``<lease id>|<tokens>``, score:
  start); settling a reply's real usage renames the member;
- ``pllm:{K}:leases``: ZSET of requests in flight (member: lease id, score: expiry), swept on
  every acquire, so a killed process leaks nothing once its leases expire;
- ``pllm:{K}:state``: HASH of breaker (state, failures, open-until, the one probe's lease id and
  expiry), rest-until, the token sum of the window and the fleet-wide counters;
- ``pllm:{K}:q:<resource>:<seconds>``: a rolling window of the ``limits:`` block, a ZSET like
  ``tokens`` (its sum in the state hash, under the window key's name);
- ``pllm:{K}:q:<resource>:day:<period>``: a calendar day's counter, named by the day (computed
  in Python from the wall clock), expiring a minute after the day ends: one window for the fleet.

Window keys expire a minute after their last entry could matter; the hash a day after its last
use (longer if a breaker interval or ``Retry-After`` needs it).

Time: with ``server_time`` the scripts read the Redis server's clock (``TIME``) and ignore the
``now`` passed in (sent as ``''``); times handed back (wake times, rest-until) are translated
into the caller's clock. Without it, the passed ``now`` is used as is, so tests drive time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from langchain_pllm.state.base import (
    BreakerPolicy,
    KeySnapshot,
    Lease,
    Limits,
    Outcome,
    Periods,
    ask_of,
    real_usage,
    settled_amount,
    settled_tokens,
)

__all__ = ["Call", "RedisLayout", "RedisLease"]

_WINDOW_SLACK = 60.0  # seconds a window key outlives its newest entry
_LEASE_SLACK = 60.0

Call = tuple[tuple[str, ...], tuple[str, ...]]
"""One script's keys and arguments."""


_fmt = repr  # amounts travel as repr: the release must name the very member the acquire added


QuotaStep = tuple[str, str, str, float, str, float]
"""One ``limits:`` window in a call: key name, kind ('r'/'c'), span, amount, resource, limit."""


class RedisLease:
    """What a Redis lease needs at release: its id and where its window entries sit."""

    __slots__ = ("id", "quota", "start", "token_start")

    def __init__(
        self,
        lease_id: str,
        token_start: str,
        quota: tuple[tuple[str, str, str, float, str], ...] = (),
        start: str = "",
    ) -> None:
        self.id = lease_id
        self.token_start = token_start  # the entry's score; '' when the key has no tpm
        # Per ``limits:`` window to settle: key, kind, reserved as sent, reserved, resource.
        self.quota = quota
        self.start = start  # the score of the lease's rolling-window entries


class RedisLayout:
    """Key names, TTLs and script arguments for one prefix and one set of lease settings.

    Args:
        key_prefix: First part of every Redis key.
        lease_ttl: Seconds a lease counts as in flight unless released.
        stats_ttl: Seconds a key's breaker and counters live after their last use.
        server_time: Whether the scripts read the server's clock instead of the passed ``now``.
    """

    def __init__(
        self, key_prefix: str, lease_ttl: float, stats_ttl: float, server_time: bool
    ) -> None:
        self.key_prefix = key_prefix
        self.stats_ttl = stats_ttl
        self.server_time = server_time
        self.stats_ttl_ms = str(math.ceil(stats_ttl * 1000))
        self._lease_args = (
            repr(float(lease_ttl)),
            str(math.ceil((lease_ttl + _LEASE_SLACK) * 1000)),
        )
        self._keys: dict[str, tuple[str, str, str, str]] = {}
        self._window_ttls: dict[float, str] = {}

    # Names, TTLs and times ---------------------------------------------------------------------

    def key_names(self, key: str) -> tuple[str, str, str, str]:
        """The starts, tokens, leases and state keys of ``key``."""
        names = self._keys.get(key)
        if names is None:
            base = f"{self.key_prefix}:{{{key}}}:"
            names = self._keys[key] = (
                base + "starts",
                base + "tokens",
                base + "leases",
                base + "state",
            )
        return names

    def conversation_key(self, digest: bytes) -> str:
        """The key holding which key served a conversation: one small string with a TTL.

        Not a field of one hash: a hash field has no TTL of its own (before Redis 7.4), and a
        key per conversation also spreads over a Cluster's slots. Named like a key's own keys
        (``prefix:{id}:kind``), the id being the conversation's digest, never its text.
        """
        return f"{self.key_prefix}:{{c{digest.hex()}}}:conv"

    def window_ttl(self, window: float) -> str:
        """Milliseconds a window key lives after its newest entry."""
        ttl = self._window_ttls.get(window)
        if ttl is None:
            ttl = self._window_ttls[window] = str(math.ceil((window + _WINDOW_SLACK) * 1000))
        return ttl

    def _state_ttl(self, breaker: BreakerPolicy, retry_after: float | None) -> str:
        seconds = max(self.stats_ttl, 2 * breaker.interval, 2 * (retry_after or 0.0))
        return str(math.ceil(seconds * 1000))

    def now_arg(self, now: float) -> str:
        """``now`` as a script reads it: empty for the server's clock."""
        return "" if self.server_time else repr(now)

    def to_local(self, value: str, server_now: str, now: float) -> float:
        """A time from a script, in the caller's clock."""
        if value == "inf":
            return math.inf
        if not self.server_time:
            return float(value)
        return now + (float(value) - float(server_now))

    # acquire -----------------------------------------------------------------------------------

    def quota_plan(
        self,
        key: str,
        limits: Limits,
        tokens: int,
        now: float,
        ask: Mapping[str, float] | None,
        periods: Periods | None,
    ) -> list[QuotaStep]:
        """Per ``limits:`` window: key name, kind, span, amount, resource, limit."""
        base = f"{self.key_prefix}:{{{key}}}:q:"
        plan = []
        for i, spec in enumerate(limits.windows):
            period = periods[i] if periods else None
            amount = ask_of(spec, tokens, ask)
            if period is not None:
                name = f"{base}{spec.resource}:day:{period[0]}"
                span = _fmt(max(0.0, period[1] - now))
                plan.append((name, "c", span, amount, spec.resource, spec.limit))
            else:
                name = f"{base}{spec.resource}:{spec.period:g}"
                span = _fmt(float(spec.period))
                plan.append((name, "r", span, amount, spec.resource, spec.limit))
        return plan

    def acquire(
        self,
        key: str,
        limits: Limits,
        tokens: int,
        now: float,
        lease_id: str,
        plan: list[QuotaStep] | None = None,
    ) -> Call:
        """The ``ACQUIRE`` call reserving ``tokens`` on ``key`` as ``lease_id``."""
        lease_ttl, lease_key_ttl = self._lease_args
        quota_keys: tuple[str, ...] = ()
        quota_args: list[str] = [str(len(plan or ()))]
        for name, kind, span, amount, resource, limit in plan or ():
            quota_keys += (name,)
            strict = "1" if resource == "requests" else "0"
            quota_args += (kind, _fmt(float(limit)), span, _fmt(amount), strict)
        return self.key_names(key) + quota_keys, (
            self.now_arg(now),
            repr(float(limits.window)),
            str(-1 if limits.rate_limit is None else limits.rate_limit),
            str(-1 if limits.tpm is None else limits.tpm),
            str(-1 if limits.max_concurrency is None else limits.max_concurrency),
            str(int(tokens)),
            lease_id,
            lease_ttl,
            self.window_ttl(limits.window),
            self.stats_ttl_ms,
            lease_key_ttl,
            *quota_args,
        )

    def acquired(
        self,
        key: str,
        limits: Limits,
        tokens: int,
        now: float,
        lease_id: str,
        reply: Any,
        plan: list[QuotaStep] | None = None,
    ) -> Lease | float:
        """``ACQUIRE``'s reply: the lease, or the time to try again in the caller's clock."""
        if reply[0] == 1:
            token_start = reply[1] if limits.tpm is not None else ""
            # Request windows never settle: a start counts whatever the outcome.
            quota = tuple(
                (name, kind, _fmt(amount), amount, resource)
                for name, kind, _, amount, resource, _ in plan or ()
                if resource != "requests"
            )
            held = RedisLease(lease_id, token_start, quota, str(reply[1]))
            return Lease(key, now, int(tokens), reply[2] == 1, held)
        return self.to_local(reply[1], reply[2], now)

    # release -----------------------------------------------------------------------------------

    def release(
        self,
        lease: Lease,
        extra: RedisLease,
        outcome: Outcome,
        now: float,
        breaker: BreakerPolicy,
        tokens_used: int | None,
        retry_after: float | None,
        usage: Mapping[str, float] | None = None,
    ) -> Call:
        """The ``RELEASE`` call settling a Redis lease (the settlement of ``settled_tokens``)."""
        used, spent = settled_tokens(lease, outcome, tokens_used)
        keys, args = self._release(
            lease.key, now, extra.id, outcome, probe=lease.probe, token_start=extra.token_start,
            reserved=lease.tokens, used=used, spent=spent, breaker=breaker,
            retry_after=retry_after,
        )  # fmt: skip
        if not extra.quota:
            return keys, args
        real = real_usage(usage, tokens_used)
        more: list[str] = []
        for name, kind, sent, reserved, resource in extra.quota:
            settled = settled_amount(reserved, outcome, real.get(resource))[0]
            keys += (name,)
            more += (kind, extra.start, sent, sent if settled == reserved else _fmt(float(settled)))
        return keys, (*args, *more)

    def disown(self, key: str, lease_id: str, now: float, breaker: BreakerPolicy) -> Call:
        """A ``CANCELLED`` release of a lease known only by its id.

        It frees the in-flight slot and, if this lease held it, the probe; its start and token
        reservation stay, as a cancelled request's do. For an id that was never granted it
        changes nothing.
        """
        return self._release(
            key, now, lease_id, Outcome.CANCELLED, probe=True, token_start="", reserved=0,
            used=0, spent=False, breaker=breaker, retry_after=None,
        )  # fmt: skip

    def _release(
        self,
        key: str,
        now: float,
        lease_id: str,
        outcome: Outcome,
        *,
        probe: bool,
        token_start: str,
        reserved: int,
        used: int,
        spent: bool,
        breaker: BreakerPolicy,
        retry_after: float | None,
    ) -> Call:
        _, tokens_key, leases_key, state_key = self.key_names(key)
        return (tokens_key, leases_key, state_key), (
            self.now_arg(now),
            lease_id,
            str(int(outcome)),
            "1" if probe else "0",
            token_start,
            str(reserved),
            str(int(used)),
            "1" if spent else "0",
            str(breaker.threshold),
            repr(float(breaker.interval)),
            repr(float(retry_after or 0.0)),
            self._state_ttl(breaker, retry_after),
        )

    # snapshot, counters, reconcile -------------------------------------------------------------

    def snapshot(self, key: str, limits: Limits, now: float, periods: Periods | None) -> Call:
        """The ``SNAPSHOT`` call reading ``key``."""
        plan = self.quota_plan(key, limits, 0, now, None, periods)
        keys = self.key_names(key) + tuple(p[0] for p in plan)
        args: list[str] = [self.now_arg(now), repr(float(limits.window))]
        for _, kind, span, *_ in plan:
            args += (kind, span)
        return keys, tuple(args)

    def snapshot_of(self, reply: Any, now: float) -> KeySnapshot:
        """``SNAPSHOT``'s reply, times in the caller's clock."""
        rest = reply[8]
        windows = tuple(
            (float(reply[i]), self.to_local(reply[i + 1], reply[9], now))
            for i in range(13, len(reply), 2)
        )
        return KeySnapshot(
            state=reply[0],
            active_requests=int(reply[1]),
            window_used=int(reply[2]),
            tokens_in_window=int(float(reply[3])),
            total_requests=int(reply[4]),
            total_tokens=int(reply[5]),
            error_count=int(reply[6]),
            validation_failures=int(reply[7]),
            rest_until=0.0 if rest == "0" else self.to_local(rest, reply[9], now),
            cost=float(reply[10]),
            cached_tokens=int(reply[11]),
            exhausted_until=(
                self.to_local(reply[12], reply[9], now) if reply[0] == "exhausted" else 0.0
            ),
            windows=windows,
        )

    def count_validation(self, key: str) -> Call:
        """The ``COUNT_VALIDATION`` call counting one failed output on ``key``."""
        return (self.key_names(key)[3],), (self.stats_ttl_ms,)

    def count_spend(self, key: str, cost: float, cached_tokens: int) -> Call:
        """The ``COUNT_SPEND`` call adding one reply's cost and cached tokens to ``key``."""
        return (self.key_names(key)[3],), (
            repr(float(cost)),
            str(int(cached_tokens)),
            self.stats_ttl_ms,
        )

    def reconcile(
        self,
        key: str,
        window: float,
        now: float,
        process_id: str,
        entries: list[tuple[str, float, int | None]],
        lost: tuple[float, int | None, int | None] | None = None,
        placeholders: tuple[float, int, int, tuple[str, ...]] | None = None,
    ) -> Call:
        """The ``RECONCILE`` call of ``key`` after an outage (the script says what each does).

        Args:
            key: The key's fingerprint.
            window: Its request and token window, seconds.
            now: The caller's time.
            process_id: This process's name among the live processes.
            entries: This process's fallback starts: member, age, tokens.
            lost: The outage's age (since its start here), rate limit and tpm: the
                script stands in for lost windows, and skips processes back since.
            placeholders: Seconds from now they are scored at, requests and tokens per
                process, and the processes they stand for.
        """
        args: list[str] = [process_id]
        if lost is None:
            args += ("", "-1", "-1")
        else:
            age, rate, tpm = lost
            args += (repr(age), str(-1 if rate is None else rate), str(-1 if tpm is None else tpm))
        if placeholders is None:
            args += ("", "0", "0", "0")
        else:
            ahead, requests, tokens, processes = placeholders
            args += (repr(ahead), str(requests), str(tokens), str(len(processes)), *processes)
        for member, age, used in entries:
            args += (member, repr(age), "" if used is None else str(int(used)))
        starts_key, tokens_key, _, state_key = self.key_names(key)
        head = (self.now_arg(now), repr(float(window)), self.window_ttl(window), self.stats_ttl_ms)
        return (starts_key, tokens_key, state_key), (*head, *args)
