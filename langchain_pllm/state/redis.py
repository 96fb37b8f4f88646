"""Shared state in Redis: one truth per key for every process of a fleet.

Each operation of ``StateBackend`` is one Lua script, so it is one round trip and atomic on the
server: ``acquire`` checks breaker, rest, concurrency, the request window and the token window
and reserves all of them in one step, across processes (the scripts are in ``redis_scripts.py``).
The scripts copy ``MemoryState``'s rules exactly; the shared test class in
``tests/unit_tests/test_state_backends.py`` runs against both.

Why our own scripts and not the ``limits`` library: its Redis moving window keeps one list per
limit and checks one limit per call (``acquire_entry``), pushing ``amount`` copies of the
timestamp for a weighted hit. Requests and tokens would be two calls (a reservation on one and
a refusal on the other would need a non-atomic rollback, seen meanwhile by other processes), a
token window would hold one list item per token, a reservation could not be settled to the real
usage after the reply, and breakers, leases and rests are not its business. The scripts here
are short, and their rules are the ones the memory state already tests.

Layout, per key fingerprint ``K`` (a digest of vendor, endpoint, model and key; never the key
itself) under a prefix (``pllm`` by default), all in one Redis Cluster hash slot:

- ``pllm:{K}:starts``: ZSET of request starts (member: lease id, score: start time);
- ``pllm:{K}:tokens``: ZSET of token reservations (member: ``<lease id>|<tokens>``, score:
  start); settling a reply's real usage renames the member;
- ``pllm:{K}:leases``: ZSET of requests in flight (member: lease id, score: expiry), swept on
  every acquire, so a killed process leaks nothing once its leases expire;
- ``pllm:{K}:state``: HASH of breaker (state, failures, open-until, the one probe's lease id and
  expiry), rest-until, the token sum of the window and the fleet-wide counters.

Window keys expire a minute after their last entry could matter; the hash a day after its last
use (longer if a breaker interval or ``Retry-After`` needs it).

Time: with the real clock (``clock.now is time.monotonic``) the scripts read the Redis server's
clock (``TIME``), the only clock every process of a fleet shares, and ignore the ``now`` passed
in; times handed back (wake times, rest-until) are translated into the caller's clock. With any
other clock (a test's ``ManualClock``) the passed ``now`` is used as is, so tests drive time.

Redis away or slow: every call has a short timeout (``redis_timeout``, default 0.25 s) and is
never retried by the client. On an error the state logs one warning and serves from an
in-process ``MemoryState`` holding a share of each limit (rounded up, at least 1), trying Redis
again at most every ``retry_interval`` seconds, and logs once when it is back. The share is
``local_share`` when set; otherwise it is ``1 / n`` for the ``n`` live processes last seen
sharing this Redis: each process refreshes its member of the ZSET ``pllm:procs`` (scored by
expiry, three heartbeats or at least 15 s ahead) at most every ``heartbeat_interval`` seconds
(5 s), one extra round trip folded into an ``acquire`` then, and remembers the count it reads
back (before the first count, the whole limit). So ``n`` processes cut off together start at
most about one limit between them, not ``n`` limits. Requests started on the fallback are
remembered (start, token reservation, settled when released) and, when Redis answers again,
the ones still inside their window are written into the Redis windows before anything else
(one script per key, all in one pipelined round trip, best effort), so the window they
started in is not granted a whole new limit on top of them. Leases from the fallback go back
to the fallback. A Redis lease released while Redis is away is dropped: its in-flight entry
expires with its lease, its window entries age out, and what its outcome would have taught
the breaker and counters is lost. A call that timed out may still have run on the server; its
lease expires too.

Cancellation: the async ``acquire`` runs its script in a task of its own; if the caller is
cancelled while it runs, the backend waits for the reply (at most three Redis timeouts; past
that the cleanup goes on alone) and gives back at once, as ``CANCELLED``, a lease the server
granted meanwhile, so a lost probe does not hold a breaker half-open fleet-wide until the lease
expires; so does any error raised after the grant. The sync methods block for at most a few
short round trips (the call, a due heartbeat, a return to Redis), each bounded by
``redis_timeout``, and touch no event loop, so they may be called from async code too;
``asnapshot`` and ``acount_validation_failure`` are their non-blocking twins.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import secrets
import socket
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from langchain_pllm.state.base import (
    BreakerPolicy,
    KeySnapshot,
    Lease,
    Limits,
    Outcome,
    StateBackend,
)
from langchain_pllm.state.memory import MemoryState
from langchain_pllm.state.redis_scripts import (
    ACQUIRE,
    COUNT_VALIDATION,
    HEARTBEAT,
    RELEASE,
    REPLAY,
    SNAPSHOT,
    Script,
)

if TYPE_CHECKING:
    from langchain_pllm.balancer.clock import Clock
    from langchain_pllm.config import BalancerConfig

__all__ = ["RedisState"]

logger = logging.getLogger("langchain_pllm")

_UNAVAILABLE = (RedisError, OSError)
_WINDOW_SLACK = 60.0  # seconds a window key outlives its newest entry
_LEASE_SLACK = 60.0
_STATS_TTL = 86_400.0
_URL_OPTIONS = ("lease_ttl", "key_prefix")
_HEARTBEAT_INTERVAL = 5.0
_MIN_PROCESS_TTL = 15.0  # seconds a process counts as live after its last heartbeat, at least


class _RedisLease:
    """What a Redis lease needs at release: its id and where its token entry sits."""

    __slots__ = ("id", "token_start")

    def __init__(self, lease_id: str, token_start: str) -> None:
        self.id = lease_id
        self.token_start = token_start  # the entry's score; '' when the key has no tpm


class _FallbackStart:
    """A request started on the local fallback, kept to be written into Redis on its return."""

    __slots__ = ("member", "started", "tokens", "window")

    def __init__(self, member: str, started: float, tokens: int | None, window: float) -> None:
        self.member = member
        self.started = started  # in the caller's clock
        self.tokens = tokens  # reserved, then settled at release; None when the key has no tpm
        self.window = window


class _FallbackLease:
    """A fallback lease: the local state's own lease, and the record to settle at release."""

    __slots__ = ("lease", "start")

    def __init__(self, lease: Lease, start: _FallbackStart) -> None:
        self.lease = lease
        self.start = start


_PROCESS: tuple[int, str] | None = None


def _process_id() -> str:
    """This OS process's name in ``pllm:procs``; a forked child gets a name of its own."""
    global _PROCESS
    pid = os.getpid()
    current = _PROCESS
    if current is None or current[0] != pid:
        current = _PROCESS = (pid, f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}")
    return current[1]


def _settled_tokens(lease: Lease, outcome: Outcome, tokens_used: int | None) -> tuple[int, bool]:
    """The tokens a released lease leaves in its window, and whether they count as spent.

    The same settlement as ``MemoryState.release``.
    """
    if outcome is Outcome.SUCCESS or tokens_used is not None:
        return (tokens_used if tokens_used is not None else lease.tokens), True
    if outcome is not Outcome.CANCELLED:
        return 0, False  # a refused request spent no tokens
    return lease.tokens, False  # a cancelled one may have: keep the estimate


class RedisState(StateBackend):
    """Windows, breakers, leases and counters in Redis, shared by every process using it.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL (redis-py's URL syntax).
        timeout: Seconds allowed per Redis call (connect and reply) before falling back.
        local_share: Share of each limit this process takes while Redis is away; ``None``
            means one share per live process sharing this Redis (see the module docstring).
        lease_ttl: Seconds after which a request in flight that was never released (its
            process died) stops counting as active, and a lost probe frees the breaker.
        server_time: Use the Redis server's clock (processes must agree on time) instead of
            the ``now`` passed in; set for the real clock, unset for a test's manual clock.
        key_prefix: First part of every Redis key.
        retry_interval: Seconds between attempts to reach Redis again while it is away.
        stats_ttl: Seconds a key's breaker and counters live after their last use.
        heartbeat_interval: Seconds between refreshes of this process's liveness in Redis.
        process_id: This process's name among the live processes; by default one name per OS
            process (host, pid and a random part), shared by every state in it.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.25,
        local_share: float | None = None,
        lease_ttl: float = 300.0,
        server_time: bool = True,
        key_prefix: str = "pllm",
        retry_interval: float = 1.5,
        stats_ttl: float = _STATS_TTL,
        heartbeat_interval: float = _HEARTBEAT_INTERVAL,
        process_id: str | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.local_share = local_share
        self.lease_ttl = lease_ttl
        self.server_time = server_time
        self.key_prefix = key_prefix
        self.retry_interval = retry_interval
        self.stats_ttl = stats_ttl
        self.heartbeat_interval = heartbeat_interval
        self._process_id = process_id
        self._where = _redacted(url)
        self._client_options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "decode_responses": True,
            "health_check_interval": 0,
        }
        # No client-side retries: a retry would multiply the timeout; the fallback is the retry.
        self._client = redis.Redis.from_url(
            url, retry=Retry(NoBackoff(), 0), **self._client_options
        )
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis]
        self._aclients = weakref.WeakKeyDictionary()
        self._aclients_lock = threading.Lock()
        self._keys: dict[str, tuple[str, str, str, str]] = {}
        self._lease_args = (
            repr(float(lease_ttl)),
            str(math.ceil((lease_ttl + _LEASE_SLACK) * 1000)),
        )
        self._window_ttls: dict[float, str] = {}
        self._stats_ttl_ms = str(math.ceil(stats_ttl * 1000))
        self._ids = itertools.count(1)
        self._pid = os.getpid()
        self._salt = secrets.token_hex(4)
        self._local = MemoryState()
        self._local_limits: dict[Limits, Limits] = {}
        self._down = False
        self._retry_at = 0.0
        self._health_lock = threading.Lock()
        self._procs_key = f"{key_prefix}:procs"
        process_ttl = max(3 * heartbeat_interval, _MIN_PROCESS_TTL)
        self._beat_ttl = (repr(float(process_ttl)), str(math.ceil(process_ttl * 1000)))
        self._beat_at = 0.0
        self._process_count: int | None = None
        self._fallback: dict[str, deque[_FallbackStart]] = {}
        self._fallback_lock = threading.Lock()
        # Cleanups of cancelled acquires still waiting for their reply (strong references).
        self._orphans: set[asyncio.Task[None]] = set()

    @staticmethod
    def options_from_config(config: BalancerConfig, clock: Clock) -> tuple[str, dict[str, Any]]:
        """The Redis URL (our own query parameters taken off) and the constructor options.

        Everything that shapes a backend is in them, so ``state_for`` can tell apart two
        models that name one URL with different settings.
        """
        url, options = _split_options(config.state)
        if "lease_ttl" in options:
            lease_ttl = float(options["lease_ttl"])
        elif config.request_timeout:
            lease_ttl = config.request_timeout + 30.0
        else:
            lease_ttl = 300.0
        return url, {
            "timeout": config.redis_timeout,
            "local_share": config.local_share,
            "lease_ttl": lease_ttl,
            # Only the real clock's readings mean the same across processes (and then only on
            # one machine): a fleet needs the one clock it shares, the server's.
            "server_time": getattr(clock, "now", None) is time.monotonic,
            "key_prefix": options.get("key_prefix", "pllm"),
        }

    @classmethod
    def from_config(cls, config: BalancerConfig, clock: Clock) -> RedisState:
        """Build from the balancer settings; the state URL may carry our own options.

        ``lease_ttl`` and ``key_prefix`` may be given as URL query parameters
        (``redis://host:6379/0?lease_ttl=120&key_prefix=myapp``); they are taken off the URL
        before redis-py reads it. Without ``lease_ttl``, a lease lasts the request timeout plus
        30 s when one is set, else 300 s.
        """
        url, options = cls.options_from_config(config, clock)
        return cls(url, **options)

    # Plumbing --------------------------------------------------------------------------------

    def _key_names(self, key: str) -> tuple[str, str, str, str]:
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

    def _window_ttl(self, window: float) -> str:
        ttl = self._window_ttls.get(window)
        if ttl is None:
            ttl = self._window_ttls[window] = str(math.ceil((window + _WINDOW_SLACK) * 1000))
        return ttl

    def _state_ttl(self, breaker: BreakerPolicy, retry_after: float | None = None) -> str:
        seconds = max(self.stats_ttl, 2 * breaker.interval, 2 * (retry_after or 0.0))
        return str(math.ceil(seconds * 1000))

    def _new_lease_id(self) -> str:
        pid = os.getpid()
        if pid != self._pid:  # a forked child must not reuse its parent's ids
            self._pid, self._salt = pid, secrets.token_hex(4)
        return f"{self._salt}.{next(self._ids)}"

    def _now_arg(self, now: float) -> str:
        return "" if self.server_time else repr(now)

    def _to_local(self, value: str, server_now: str, now: float) -> float:
        """A time from a script, in the caller's clock."""
        if value == "inf":
            return math.inf
        if not self.server_time:
            return float(value)
        return now + (float(value) - float(server_now))

    def _scaled(self, limits: Limits) -> Limits:
        scaled = self._local_limits.get(limits)
        if scaled is None:
            share = self.local_share
            count = self._process_count or 1

            def part(limit: int | None) -> int | None:
                if limit is None:
                    return None
                if share is not None:
                    return max(1, math.ceil(limit * share))
                return max(1, -(-limit // count))  # ceil without float rounding

            scaled = Limits(
                part(limits.rate_limit),
                part(limits.tpm),
                part(limits.max_concurrency),
                limits.window,
            )
            self._local_limits[limits] = scaled
        return scaled

    def _run(self, script: Script, keys: tuple[str, ...], args: tuple[str, ...]) -> Any:
        client = self._client
        try:
            return client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted server forgot its scripts
            return client.eval(script.source, len(keys), *keys, *args)

    def _aclient(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            with self._aclients_lock:
                client = self._aclients.get(loop)
                if client is None:
                    # A blocking pool queues bursts above its size instead of failing them
                    # ("too many connections" would read as Redis being away).
                    pool = redis.asyncio.BlockingConnectionPool.from_url(
                        self.url,
                        max_connections=64,
                        timeout=max(1.0, 4 * self.timeout),
                        retry=AsyncRetry(NoBackoff(), 0),
                        **self._client_options,
                    )
                    client = self._aclients[loop] = redis.asyncio.Redis(connection_pool=pool)
        return client

    async def _arun(self, script: Script, keys: tuple[str, ...], args: tuple[str, ...]) -> Any:
        client = self._aclient()
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(script.source, len(keys), *keys, *args)

    # Live processes ----------------------------------------------------------------------------

    @property
    def process_count(self) -> int | None:
        """Live processes sharing this Redis, as last seen (``None`` before the first look)."""
        return self._process_count

    def _beat_args(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        process = self._process_id or _process_id()
        return (self._procs_key,), (process, *self._beat_ttl)

    def _beat_due(self) -> bool:
        """Whether this call should refresh the heartbeat: one call per interval does."""
        t = time.monotonic()
        if t < self._beat_at:
            return False
        with self._health_lock:
            if t < self._beat_at:
                return False
            self._beat_at = t + self.heartbeat_interval
        return True

    def _seen(self, count: Any) -> None:
        n = max(1, int(count))
        if n != self._process_count:
            self._process_count = n
            if self.local_share is None:
                self._local_limits = {}  # the fallback's shares follow the count

    # Redis away and back ---------------------------------------------------------------------

    def _retry_due(self) -> bool | None:
        """``None`` while Redis is in use; while it is away, True for one caller per interval."""
        if not self._down:
            return None
        with self._health_lock:
            if not self._down:
                return None
            t = time.monotonic()
            if t >= self._retry_at:
                self._retry_at = t + self.retry_interval
                return True
            return False

    def _usable(self, now: float) -> bool:
        """Whether to ask Redis now; the one caller that tries it again rejoins it first."""
        due = self._retry_due()
        if due is None:
            return True
        return due and self._rejoin(now)

    async def _ausable(self, now: float) -> bool:
        """Async twin of ``_usable``."""
        due = self._retry_due()
        if due is None:
            return True
        return due and await self._arejoin(now)

    def _went_away(self, exc: BaseException) -> None:
        with self._health_lock:
            self._retry_at = time.monotonic() + self.retry_interval
            if self._down:
                return
            self._down = True
        if self.local_share is not None:
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

    def _came_back(self) -> None:
        with self._health_lock:
            if not self._down:
                return
            self._down = False
        logger.info("Redis state at %s answers again; limits are shared once more", self._where)

    @property
    def is_redis_available(self) -> bool:
        """False while this process serves from its local fallback."""
        return not self._down

    def _fallback_acquire(
        self, key: str, limits: Limits, tokens: int, now: float, breaker: BreakerPolicy
    ) -> Lease | float:
        r = self._local.acquire(key, self._scaled(limits), tokens, now, breaker)
        if not isinstance(r, Lease):
            return r
        tpm_tokens = int(tokens) if limits.tpm is not None else None
        start = _FallbackStart(self._new_lease_id(), now, tpm_tokens, limits.window)
        with self._fallback_lock:
            starts = self._fallback.get(key)
            if starts is None:
                starts = self._fallback[key] = deque()
            while starts and now - starts[0].started >= starts[0].window:
                starts.popleft()  # out of its window: nothing left to replay
            starts.append(start)
        return Lease(key, r.started, r.tokens, r.probe, _FallbackLease(r, start))

    def _take_fallback(self) -> dict[str, deque[_FallbackStart]]:
        with self._fallback_lock:
            taken, self._fallback = self._fallback, {}
        return taken

    def _restore_fallback(self, taken: dict[str, deque[_FallbackStart]]) -> None:
        """Put back starts whose replay failed, ahead of any recorded since (order kept)."""
        with self._fallback_lock:
            for key, starts in taken.items():
                newer = self._fallback.get(key)
                if newer:
                    starts.extend(newer)
                self._fallback[key] = starts

    def _replays(
        self, taken: dict[str, deque[_FallbackStart]], now: float
    ) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """One ``REPLAY`` call per key, for the starts still inside their window."""
        # Ages from the caller's clock; with the server's clock, from this very moment.
        ref = time.monotonic() if self.server_time else now
        calls: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        for key, starts in taken.items():
            if not starts:
                continue
            window = starts[-1].window
            args: list[str] = []
            for start in starts:
                age = max(0.0, ref - start.started)
                if age < start.window:
                    tokens = "" if start.tokens is None else str(int(start.tokens))
                    args += (start.member, repr(age), tokens)
            if not args:
                continue
            starts_key, tokens_key, _, state_key = self._key_names(key)
            head = (self._now_arg(now), repr(float(window)), self._window_ttl(window))
            calls.append(((starts_key, tokens_key, state_key), (*head, self._stats_ttl_ms, *args)))
        return calls

    def _rejoined(self, replies: list[Any], beat: bool) -> None:
        if beat:
            if isinstance(replies[0], int):
                self._seen(replies[0])
            self._came_back()
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:
            logger.debug("replaying fallback starts into Redis failed: %s", failed[0])

    def _rejoin(self, now: float) -> bool:
        """Try Redis again: heartbeat and replay of the fallback's starts, one round trip.

        Starts recorded by other threads during that round trip are replayed in a second one.
        """
        beat = True
        while True:
            taken = self._take_fallback()
            calls = self._replays(taken, now)
            if not calls and not beat:
                return True
            pipe = self._client.pipeline(transaction=False)
            if beat:
                keys, args = self._beat_args()
                pipe.eval(HEARTBEAT.source, len(keys), *keys, *args)
            for keys, args in calls:
                pipe.eval(REPLAY.source, len(keys), *keys, *args)
            try:
                replies = pipe.execute(raise_on_error=False)
            except _UNAVAILABLE as exc:
                self._restore_fallback(taken)
                self._went_away(exc)
                return False
            except BaseException:
                self._restore_fallback(taken)
                raise
            self._rejoined(replies, beat)
            beat = False

    async def _arejoin(self, now: float) -> bool:
        """Async twin of ``_rejoin``."""
        beat = True
        while True:
            taken = self._take_fallback()
            calls = self._replays(taken, now)
            if not calls and not beat:
                return True
            pipe = self._aclient().pipeline(transaction=False)
            if beat:
                keys, args = self._beat_args()
                pipe.eval(HEARTBEAT.source, len(keys), *keys, *args)
            for keys, args in calls:
                pipe.eval(REPLAY.source, len(keys), *keys, *args)
            try:
                replies = await pipe.execute(raise_on_error=False)
            except _UNAVAILABLE as exc:
                self._restore_fallback(taken)
                self._went_away(exc)
                return False
            except BaseException:
                self._restore_fallback(taken)
                raise
            self._rejoined(replies, beat)
            beat = False

    # acquire -----------------------------------------------------------------------------------

    def _acquire_args(
        self, key: str, limits: Limits, tokens: int, now: float, lease_id: str
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        window_ttl = self._window_ttl(limits.window)
        lease_ttl, lease_key_ttl = self._lease_args
        return self._key_names(key), (
            self._now_arg(now),
            repr(float(limits.window)),
            str(-1 if limits.rate_limit is None else limits.rate_limit),
            str(-1 if limits.tpm is None else limits.tpm),
            str(-1 if limits.max_concurrency is None else limits.max_concurrency),
            str(int(tokens)),
            lease_id,
            lease_ttl,
            window_ttl,
            self._stats_ttl_ms,
            lease_key_ttl,
        )

    def _acquired(
        self, key: str, limits: Limits, tokens: int, now: float, lease_id: str, reply: Any
    ) -> Lease | float:
        if reply[0] == 1:
            token_start = reply[1] if limits.tpm is not None else ""
            return Lease(key, now, int(tokens), reply[2] == 1, _RedisLease(lease_id, token_start))
        return self._to_local(reply[1], reply[2], now)

    def _disown_args(
        self, key: str, lease_id: str, now: float, breaker: BreakerPolicy
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """A ``CANCELLED`` release of a lease known only by its id.

        It frees the in-flight slot and, if this lease held it, the probe; its start and token
        reservation stay, as a cancelled request's do. For an id that was never granted it
        changes nothing.
        """
        _, tokens_key, leases_key, state_key = self._key_names(key)
        return (tokens_key, leases_key, state_key), (
            self._now_arg(now),
            lease_id,
            str(int(Outcome.CANCELLED)),
            "1",
            "",
            "0",
            "0",
            "0",
            str(breaker.threshold),
            repr(float(breaker.interval)),
            "0.0",
            self._state_ttl(breaker),
        )

    def _disown(self, key: str, lease_id: str, now: float, breaker: BreakerPolicy) -> None:
        with contextlib.suppress(*_UNAVAILABLE):  # then it expires with its lease
            self._run(RELEASE, *self._disown_args(key, lease_id, now, breaker))

    async def _adisown(self, key: str, lease_id: str, now: float, breaker: BreakerPolicy) -> None:
        with contextlib.suppress(*_UNAVAILABLE):
            await self._arun(RELEASE, *self._disown_args(key, lease_id, now, breaker))

    async def _disown_when_granted(
        self,
        call: asyncio.Future[Any],
        key: str,
        lease_id: str,
        now: float,
        breaker: BreakerPolicy,
    ) -> None:
        """After the caller gave up: release the lease if the script granted one after all."""
        try:
            reply = await call
        except BaseException:  # no reply: the lease, if any, expires
            return
        if reply[0] == 1:
            await self._adisown(key, lease_id, now, breaker)

    def acquire(
        self, key: str, limits: Limits, tokens: int, now: float, breaker: BreakerPolicy
    ) -> Lease | float:
        """Check every limit and reserve in one atomic script (see ``MemoryState.acquire``)."""
        if self._down and not self._usable(now):
            return self._fallback_acquire(key, limits, tokens, now, breaker)
        lease_id = self._new_lease_id()
        keys, args = self._acquire_args(key, limits, tokens, now, lease_id)
        try:
            if self._beat_due():
                self._seen(self._run(HEARTBEAT, *self._beat_args()))
            reply = self._run(ACQUIRE, keys, args)
        except _UNAVAILABLE as exc:
            self._went_away(exc)
            return self._fallback_acquire(key, limits, tokens, now, breaker)
        try:
            return self._acquired(key, limits, tokens, now, lease_id, reply)
        except BaseException:
            self._disown(key, lease_id, now, breaker)
            raise

    async def aacquire(
        self, key: str, limits: Limits, tokens: int, now: float, breaker: BreakerPolicy
    ) -> Lease | float:
        """Async twin of ``acquire``; a lease granted after the caller was cancelled is freed."""
        if self._down and not await self._ausable(now):
            return self._fallback_acquire(key, limits, tokens, now, breaker)
        lease_id = self._new_lease_id()
        keys, args = self._acquire_args(key, limits, tokens, now, lease_id)
        try:
            if self._beat_due():
                self._seen(await self._arun(HEARTBEAT, *self._beat_args()))
            # In a task of its own, so that a cancelled caller does not cut the exchange short
            # and lose the reply: the server may grant the lease all the same.
            call = asyncio.ensure_future(self._arun(ACQUIRE, keys, args))
            try:
                reply = await asyncio.shield(call)
            except asyncio.CancelledError:
                cleanup = asyncio.ensure_future(
                    self._disown_when_granted(call, key, lease_id, now, breaker)
                )
                self._orphans.add(cleanup)
                cleanup.add_done_callback(self._orphans.discard)
                # Wait for it, bounded: the reply, then one release. Cancelled again meanwhile,
                # it goes on alone.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait((cleanup,), timeout=3 * self.timeout)
                raise
        except _UNAVAILABLE as exc:
            self._went_away(exc)
            return self._fallback_acquire(key, limits, tokens, now, breaker)
        try:
            return self._acquired(key, limits, tokens, now, lease_id, reply)
        except BaseException:
            await self._adisown(key, lease_id, now, breaker)
            raise

    # release -----------------------------------------------------------------------------------

    def _release_args(
        self,
        lease: Lease,
        extra: _RedisLease,
        outcome: Outcome,
        now: float,
        breaker: BreakerPolicy,
        tokens_used: int | None,
        retry_after: float | None,
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        used, spent = _settled_tokens(lease, outcome, tokens_used)
        _, tokens_key, leases_key, state_key = self._key_names(lease.key)
        return (tokens_key, leases_key, state_key), (
            self._now_arg(now),
            extra.id,
            str(int(outcome)),
            "1" if lease.probe else "0",
            extra.token_start,
            str(lease.tokens),
            str(int(used)),
            "1" if spent else "0",
            str(breaker.threshold),
            repr(float(breaker.interval)),
            repr(float(retry_after or 0.0)),
            self._state_ttl(breaker, retry_after),
        )

    def _fallback_release(
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
        local = extra.lease if isinstance(extra, _FallbackLease) else lease
        self._local.release(
            local, outcome, now, breaker, tokens_used=tokens_used, retry_after=retry_after
        )
        if isinstance(extra, _FallbackLease) and extra.start.tokens is not None:
            extra.start.tokens = _settled_tokens(lease, outcome, tokens_used)[0]

    def release(
        self,
        lease: Lease,
        outcome: Outcome,
        now: float,
        breaker: BreakerPolicy,
        *,
        tokens_used: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Settle the lease and move the breaker in one script."""
        extra = lease.extra
        if not isinstance(extra, _RedisLease):
            self._fallback_release(lease, outcome, now, breaker, tokens_used, retry_after)
            return
        if self._down and not self._usable(now):
            return
        keys, args = self._release_args(
            lease, extra, outcome, now, breaker, tokens_used, retry_after
        )
        try:
            self._run(RELEASE, keys, args)
        except _UNAVAILABLE as exc:
            self._went_away(exc)

    async def arelease(
        self,
        lease: Lease,
        outcome: Outcome,
        now: float,
        breaker: BreakerPolicy,
        *,
        tokens_used: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Async twin of ``release``."""
        extra = lease.extra
        if not isinstance(extra, _RedisLease):
            self._fallback_release(lease, outcome, now, breaker, tokens_used, retry_after)
            return
        if self._down and not await self._ausable(now):
            return
        keys, args = self._release_args(
            lease, extra, outcome, now, breaker, tokens_used, retry_after
        )
        try:
            await self._arun(RELEASE, keys, args)
        except _UNAVAILABLE as exc:
            self._went_away(exc)

    # snapshot and counters ---------------------------------------------------------------------

    def _snapshot_of(self, reply: Any, now: float) -> KeySnapshot:
        rest = reply[8]
        return KeySnapshot(
            state=reply[0],
            active_requests=int(reply[1]),
            window_used=int(reply[2]),
            tokens_in_window=int(float(reply[3])),
            total_requests=int(reply[4]),
            total_tokens=int(reply[5]),
            error_count=int(reply[6]),
            validation_failures=int(reply[7]),
            rest_until=0.0 if rest == "0" else self._to_local(rest, reply[9], now),
        )

    def snapshot(self, key: str, limits: Limits, now: float) -> KeySnapshot:
        """Read a key's fleet-wide state (this process's own while Redis is away)."""
        if self._down and not self._usable(now):
            return self._local.snapshot(key, self._scaled(limits), now)
        args = (self._now_arg(now), repr(float(limits.window)))
        try:
            reply = self._run(SNAPSHOT, self._key_names(key), args)
        except _UNAVAILABLE as exc:
            self._went_away(exc)
            return self._local.snapshot(key, self._scaled(limits), now)
        return self._snapshot_of(reply, now)

    async def asnapshot(self, key: str, limits: Limits, now: float) -> KeySnapshot:
        """Async twin of ``snapshot``."""
        if self._down and not await self._ausable(now):
            return self._local.snapshot(key, self._scaled(limits), now)
        args = (self._now_arg(now), repr(float(limits.window)))
        try:
            reply = await self._arun(SNAPSHOT, self._key_names(key), args)
        except _UNAVAILABLE as exc:
            self._went_away(exc)
            return self._local.snapshot(key, self._scaled(limits), now)
        return self._snapshot_of(reply, now)

    def count_validation_failure(self, key: str) -> None:
        """Count an output that failed its validator, fleet-wide.

        While Redis is away it is counted locally, and this call never tries Redis again:
        it has no ``now`` to replay the fallback's starts with.
        """
        if self._down:
            self._local.count_validation_failure(key)
            return
        try:
            self._run(COUNT_VALIDATION, (self._key_names(key)[3],), (self._stats_ttl_ms,))
        except _UNAVAILABLE as exc:
            self._went_away(exc)
            self._local.count_validation_failure(key)

    async def acount_validation_failure(self, key: str) -> None:
        """Async twin of ``count_validation_failure``."""
        if self._down:
            self._local.count_validation_failure(key)
            return
        try:
            await self._arun(COUNT_VALIDATION, (self._key_names(key)[3],), (self._stats_ttl_ms,))
        except _UNAVAILABLE as exc:
            self._went_away(exc)
            self._local.count_validation_failure(key)

    def close(self) -> None:
        """Close this process's sync connections (async ones close with their loops)."""
        self._client.close()


def _split_options(url: str) -> tuple[str, dict[str, str]]:
    """Take our own query parameters off a Redis URL (redis-py refuses unknown ones)."""
    parts = urlsplit(url)
    if not parts.query:
        return url, {}
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _URL_OPTIONS:
            ours[name] = value
        else:
            theirs.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(theirs))), ours


def _redacted(url: str) -> str:
    """The URL without user and password, for logs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
