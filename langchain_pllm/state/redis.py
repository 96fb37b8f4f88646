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

The key layout and every script's arguments are in ``redis_layout.py``. Time: with the real
clock (``Clock.real``) the scripts read the Redis server's clock (``TIME``), the only clock every
process of a fleet shares; with any other clock (a test's ``ManualClock``) the passed ``now`` is
used as is, so tests drive time.

Redis away or slow: every call has a short timeout (``redis_timeout``, default 0.25 s) and is
never retried by the client. On an error the state serves from the local fallback
(``fallback.py``: in the default ``exact`` mode nothing for one window, then a floor share of
each limit; in ``share`` mode a share at once; the share follows the count of live processes
kept by the fleet heartbeat, ``heartbeat.py``) and tries Redis again at most every
``retry_interval`` seconds (``redis_away.py``); the heartbeat and one ``RECONCILE`` per key
(``outage.py``: stand-ins for windows a restart lost, the fallback's starts, placeholders for
processes not back yet) go out in the one pipelined round trip that rejoins Redis. On a cluster
in ``exact`` mode nothing is served locally: a key whose master is away waits for its replica,
the others go on (``DownKeys``). A Redis lease released while Redis is away is dropped: its
in-flight entry expires with its lease, its window entries age out, and what its outcome would
have taught the breaker and counters is lost. A call that timed out may still have run on the
server; its lease expires too.

Reads and counters (``snapshot``, ``count_spend``, conversation affinity) are in
``redis_counts.py``, a mixin of ``RedisState``.

Sync and async twins: what each operation sends is built once (``redis_layout.py``, and
``redis_away.py``, and ``_release_plan`` here, which also routes to the fallback), and the twins
only do the I/O.

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
import os
import secrets
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError, RedisError

from langchain_pllm.state.base import (
    BreakerPolicy,
    Lease,
    Limits,
    Outcome,
    Periods,
    StateBackend,
)
from langchain_pllm.state.fallback import LocalFallback
from langchain_pllm.state.heartbeat import DEFAULT_INTERVAL, Heartbeat
from langchain_pllm.state.outage import DownKeys, Returns
from langchain_pllm.state.redis_away import RedisAway
from langchain_pllm.state.redis_client import (
    LOST,
    UNAVAILABLE,
    AsyncClient,
    SyncClient,
    async_client,
    is_cluster,
    sync_client,
)
from langchain_pllm.state.redis_counts import RedisReads
from langchain_pllm.state.redis_layout import Call, RedisLayout, RedisLease
from langchain_pllm.state.redis_scripts import (
    ACQUIRE,
    HEARTBEAT,
    RECONCILE,
    RELEASE,
    Script,
)
from langchain_pllm.urls import redact_url, take_query_options

if TYPE_CHECKING:
    from langchain_pllm.clock import Clock
    from langchain_pllm.config import BalancerConfig

__all__ = ["RedisState"]

logger = logging.getLogger("langchain_pllm")

_STATS_TTL = 86_400.0
_URL_OPTIONS = ("lease_ttl", "key_prefix")


class RedisState(RedisAway, RedisReads, StateBackend):
    """Windows, breakers, leases and counters in Redis, shared by every process using it.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL (redis-py's URL syntax), or
            ``redis+cluster://`` / ``rediss+cluster://`` and any node of a Redis Cluster.
        timeout: Seconds allowed per Redis call (connect and reply) before falling back.
        local_share: Share of each limit this process takes while Redis is away; ``None``
            means one share per live process sharing this Redis (see ``fallback.py``).
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
        outage: ``exact`` (no window span over its limit, counting the fallback's starts) or
            ``share`` (a share of each limit at once; see ``fallback.py``).
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
        heartbeat_interval: float = DEFAULT_INTERVAL,
        process_id: str | None = None,
        outage: str = "exact",
    ) -> None:
        if outage not in ("exact", "share"):
            raise ValueError(f"outage must be 'exact' or 'share', got {outage!r}")
        self.url = url
        self.timeout = timeout
        self.lease_ttl = lease_ttl
        self.server_time = server_time
        self.key_prefix = key_prefix
        self.stats_ttl = stats_ttl
        self._client_options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "decode_responses": True,
            "health_check_interval": 0,
        }
        self.cluster = is_cluster(url)
        """True for a Redis Cluster URL (``redis+cluster://``, ``rediss+cluster://``)."""
        self._client: SyncClient = sync_client(url, self._client_options)
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient]
        self._aclients = weakref.WeakKeyDictionary()
        self._aclients_lock = threading.Lock()
        self._layout = RedisLayout(key_prefix, lease_ttl, stats_ttl, server_time)
        self._ids = itertools.count(1)
        self._pid = os.getpid()
        self._salt = secrets.token_hex(4)
        self._heartbeat = Heartbeat(key_prefix, heartbeat_interval, process_id)
        self._fallback = LocalFallback(
            redact_url(url), local_share, retry_interval, self._new_lease_id, outage == "exact"
        )
        # A process that keeps calling tries Redis again within a retry interval and a timeout
        # of its last failed try: by then every process of the fleet is back.
        self._returns = Returns(
            self._layout, self._fallback, self._heartbeat, retry_interval + 2 * timeout
        )
        self._down = (
            DownKeys(redact_url(url), retry_interval)
            if self.cluster and outage == "exact"
            else None
        )
        # Cleanups of cancelled acquires still waiting for their reply (strong references).
        self._orphans: set[asyncio.Task[None]] = set()

    @staticmethod
    def options_from_config(config: BalancerConfig, clock: Clock) -> tuple[str, dict[str, Any]]:
        """The Redis URL (our own query parameters taken off) and the constructor options.

        Everything that shapes a backend is in them, so ``state_for`` can tell apart two
        models that name one URL with different settings.
        """
        url, options = take_query_options(config.state, _URL_OPTIONS)
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
            "server_time": clock.real,
            "key_prefix": options.get("key_prefix", "pllm"),
            "outage": config.outage,
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

    @property
    def local_share(self) -> float | None:
        """Share of each limit this process takes while Redis is away (``None``: 1/n)."""
        return self._fallback.local_share

    @property
    def outage(self) -> str:
        """``exact`` or ``share``: what the fallback may start while Redis is away."""
        return "exact" if self._fallback.exact else "share"

    @property
    def retry_interval(self) -> float:
        """Seconds between attempts to reach Redis again while it is away."""
        return self._fallback.retry_interval

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between refreshes of this process's liveness in Redis."""
        return self._heartbeat.interval

    @property
    def process_count(self) -> int | None:
        """Live processes sharing this Redis, as last seen (``None`` before the first look)."""
        return self._heartbeat.count

    @property
    def is_redis_available(self) -> bool:
        """False while this process serves from its local fallback (or a key's master is away)."""
        return not self._fallback.active and not (self._down is not None and self._down.any)

    # Plumbing --------------------------------------------------------------------------------

    def _new_lease_id(self) -> str:
        pid = os.getpid()
        if pid != self._pid:  # a forked child must not reuse its parent's ids
            self._pid, self._salt = pid, secrets.token_hex(4)
        return f"{self._salt}.{next(self._ids)}"

    def _run(self, script: Script, keys: tuple[str, ...], args: tuple[str, ...]) -> Any:
        client = self._client
        try:
            return client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted server forgot its scripts
            return client.eval(script.source, len(keys), *keys, *args)

    def _aclient(self) -> AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            with self._aclients_lock:
                client = self._aclients.get(loop)
                if client is None:
                    client = self._aclients[loop] = async_client(
                        self.url, self._client_options, max(1.0, 4 * self.timeout)
                    )
        return client

    async def _arun(self, script: Script, keys: tuple[str, ...], args: tuple[str, ...]) -> Any:
        client = self._aclient()
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(script.source, len(keys), *keys, *args)

    def _send_all(self, calls: list[tuple[Script, Call]]) -> list[Any]:
        """Run scripts in one round trip; a script's own error comes back in its place.

        One server takes them as one pipeline. A cluster takes them one by one: they touch
        other slots, maybe other masters, and a rejoin is rare. An unreachable Redis raises.
        """
        if not self.cluster:
            pipe = self._client.pipeline(transaction=False)
            for script, (keys, args) in calls:
                pipe.eval(script.source, len(keys), *keys, *args)
            return pipe.execute(raise_on_error=False)
        replies: list[Any] = []
        for script, call in calls:
            try:
                replies.append(self._run(script, *call))
            except LOST:
                raise
            except RedisError as exc:
                replies.append(exc)
        return replies

    async def _asend_all(self, calls: list[tuple[Script, Call]]) -> list[Any]:
        """Async twin of ``_send_all``."""
        if not self.cluster:
            pipe = self._aclient().pipeline(transaction=False)
            for script, (keys, args) in calls:
                pipe.eval(script.source, len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=False)
        replies: list[Any] = []
        for script, call in calls:
            try:
                replies.append(await self._arun(script, *call))
            except LOST:
                raise
            except RedisError as exc:
                replies.append(exc)
        return replies

    # acquire -----------------------------------------------------------------------------------

    def _disown(self, key: str, lease_id: str, now: float, breaker: BreakerPolicy) -> None:
        with contextlib.suppress(*UNAVAILABLE):  # then it expires with its lease
            self._run(RELEASE, *self._layout.disown(key, lease_id, now, breaker))

    async def _adisown(self, key: str, lease_id: str, now: float, breaker: BreakerPolicy) -> None:
        with contextlib.suppress(*UNAVAILABLE):
            await self._arun(RELEASE, *self._layout.disown(key, lease_id, now, breaker))

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
        """Check every limit and reserve in one atomic script (see ``MemoryState.acquire``).

        While Redis is away the local fallback keeps ``rate_limit``, ``tpm`` and the
        concurrency cap only; in ``exact`` mode a key with ``limits:`` windows waits for Redis,
        in ``share`` mode they are not kept.
        """
        fallback = self._fallback
        if fallback.active and not self._usable(now):
            return self._local(key, limits, tokens, now, breaker)
        if (wait := self._key_waits(key, now)) is not None:
            return wait
        lease_id = self._new_lease_id()
        plan = self._layout.quota_plan(key, limits, tokens, now, ask, periods)
        keys, args = self._layout.acquire(key, limits, tokens, now, lease_id, plan)
        try:
            if self._heartbeat.due():
                try:
                    self._seen(self._run(HEARTBEAT, *self._heartbeat.call()), now)
                except UNAVAILABLE:
                    if self._down is None:
                        raise  # one server: Redis is away; a cluster: that node only
            if (first := self._first_call(key, limits, now)) is not None:
                try:
                    self._run(RECONCILE, *first)
                except BaseException:
                    self._mend_later(key)
                    raise
            reply = self._run(ACQUIRE, keys, args)
        except UNAVAILABLE as exc:
            return self._acquire_failed(exc, key, limits, tokens, now, breaker)
        self._answered(key, limits, now)
        try:
            return self._layout.acquired(key, limits, tokens, now, lease_id, reply, plan)
        except BaseException:
            self._disown(key, lease_id, now, breaker)
            raise

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
        """Async twin of ``acquire``; a lease granted after the caller was cancelled is freed."""
        fallback = self._fallback
        if fallback.active and not await self._ausable(now):
            return self._local(key, limits, tokens, now, breaker)
        if (wait := self._key_waits(key, now)) is not None:
            return wait
        lease_id = self._new_lease_id()
        plan = self._layout.quota_plan(key, limits, tokens, now, ask, periods)
        keys, args = self._layout.acquire(key, limits, tokens, now, lease_id, plan)
        try:
            if self._heartbeat.due():
                try:
                    self._seen(await self._arun(HEARTBEAT, *self._heartbeat.call()), now)
                except UNAVAILABLE:
                    if self._down is None:
                        raise
            if (first := self._first_call(key, limits, now)) is not None:
                try:
                    await self._arun(RECONCILE, *first)
                except BaseException:  # a cancelled caller too: the next acquire mends it
                    self._mend_later(key)
                    raise
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
        except UNAVAILABLE as exc:
            return self._acquire_failed(exc, key, limits, tokens, now, breaker)
        self._answered(key, limits, now)
        try:
            return self._layout.acquired(key, limits, tokens, now, lease_id, reply, plan)
        except BaseException:
            await self._adisown(key, lease_id, now, breaker)
            raise

    # release -----------------------------------------------------------------------------------

    def _release_plan(
        self,
        lease: Lease,
        outcome: Outcome,
        now: float,
        breaker: BreakerPolicy,
        tokens_used: int | None,
        retry_after: float | None,
        usage: Mapping[str, float] | None = None,
    ) -> Call | None:
        """What ``release`` sends to Redis; ``None`` for a fallback lease, settled here at once."""
        extra = lease.extra
        if not isinstance(extra, RedisLease):
            self._fallback.release(lease, outcome, now, breaker, tokens_used, retry_after)
            return None
        return self._layout.release(
            lease, extra, outcome, now, breaker, tokens_used, retry_after, usage
        )

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
        """Settle the lease and move the breaker in one script."""
        call = self._release_plan(lease, outcome, now, breaker, tokens_used, retry_after, usage)
        if call is None or (self._fallback.active and not self._usable(now)):
            return
        try:
            self._run(RELEASE, *call)
        except UNAVAILABLE as exc:
            self._away(exc, now)

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
        call = self._release_plan(lease, outcome, now, breaker, tokens_used, retry_after, usage)
        if call is None or (self._fallback.active and not await self._ausable(now)):
            return
        try:
            await self._arun(RELEASE, *call)
        except UNAVAILABLE as exc:
            self._away(exc, now)

    def close(self) -> None:
        """Close this process's sync connections (async ones close with their loops)."""
        self._client.close()
