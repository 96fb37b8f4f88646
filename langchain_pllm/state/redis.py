"""Shared state in Redis: one truth per key for every process of a fleet.

Each operation of ``StateBackend`` is one Lua script, so it is one round trip and atomic on the
server: ``acquire`` checks breaker, rest, concurrency, the request window and the token window
and reserves all of them in one step, across processes. The scripts copy ``MemoryState``'s rules
exactly; the shared test class in ``tests/unit_tests/test_state_backends.py`` runs against both.

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
in-process ``MemoryState`` whose limits are the ``local_share`` of each limit (rounded up, at
least 1), trying Redis again at most every ``retry_interval`` seconds, and logs once when it is
back. Leases from the fallback go back to the fallback. A Redis lease released while Redis is
away is dropped: its in-flight entry expires with its lease, its window entries age out, and
what its outcome would have taught the breaker and counters is lost. A call that timed out may
still have run on the server; its lease expires too.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import os
import secrets
import threading
import time
import weakref
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


class _Script:
    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # Redis names scripts by SHA-1


# Shared Lua pieces. Times travel as strings formatted with %.17g: a Lua number handed back to
# Redis would be cut to an integer, and a default conversion may drop digits.
_PRELUDE = """
local function fmt(x) return string.format('%.17g', x) end
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local clock = fmt(now)
"""

# Drops token reservations older than the window and returns the sum of those left. The sum is
# kept in the hash; an empty ZSET (also: one that expired whole) means a sum of 0.
_EXPIRE_TOKENS = """
local function expire_tokens(tk, st, cutoff)
  local sum = tonumber(redis.call('HGET', st, 'token_sum')) or 0
  local gone = redis.call('ZRANGEBYSCORE', tk, '-inf', cutoff)
  if #gone > 0 then
    for i = 1, #gone do
      sum = sum - tonumber(string.match(gone[i], '|(%d+)$'))
    end
    redis.call('ZREMRANGEBYSCORE', tk, '-inf', cutoff)
  end
  local held = redis.call('ZCARD', tk)
  if held == 0 then sum = 0 end
  return sum, held
end
"""

# KEYS: starts, tokens, leases, state.
# ARGV: now ('' = server clock), window, rate_limit, tpm, max_concurrency (-1 = none), tokens,
#       lease id, lease ttl, window key ttl ms, state ttl ms, lease key ttl ms.
# Returns {1, start, probe} or {0, wake time or 'inf', now}.
_ACQUIRE = _Script(
    _PRELUDE
    + _EXPIRE_TOKENS
    + """
local starts, tk, leases, st = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local h = redis.call('HMGET', st, 'breaker', 'open_until', 'probe', 'probe_until', 'rest_until')
local probe = 0
if h[1] == 'open' or h[1] == 'half_open' then
  if h[1] == 'open' then
    if now < (tonumber(h[2]) or 0) then return {0, h[2], clock} end
    redis.call('HSET', st, 'breaker', 'half_open')
    redis.call('HDEL', st, 'probe', 'probe_until')
    h[3] = false
  end
  -- One probe for the whole fleet; a probe whose lease expired (its process died) frees it.
  if h[3] and (tonumber(h[4]) or 0) > now then return {0, 'inf', clock} end
  probe = 1
end
local rest = tonumber(h[5])
if rest and now < rest then return {0, h[5], clock} end
redis.call('ZREMRANGEBYSCORE', leases, '-inf', clock)
local maxc = tonumber(ARGV[5])
if maxc >= 0 and redis.call('ZCARD', leases) >= maxc then return {0, 'inf', clock} end
local window = tonumber(ARGV[2])
local cutoff = fmt(now - window)
redis.call('ZREMRANGEBYSCORE', starts, '-inf', cutoff)
local rate = tonumber(ARGV[3])
if rate >= 0 and redis.call('ZCARD', starts) >= rate then
  local first = redis.call('ZRANGE', starts, 0, 0, 'WITHSCORES')
  if not first[2] then return {0, 'inf', clock} end
  return {0, fmt(tonumber(first[2]) + window), clock}
end
local id = ARGV[7]
local tpm = tonumber(ARGV[4])
if tpm >= 0 then
  local tokens = tonumber(ARGV[6])
  local sum, held = expire_tokens(tk, st, cutoff)
  -- A request larger than the whole budget may still run alone in an empty window.
  if sum + tokens > tpm and held > 0 then
    redis.call('HSET', st, 'token_sum', fmt(sum))
    local first = redis.call('ZRANGE', tk, 0, 0, 'WITHSCORES')
    return {0, fmt(tonumber(first[2]) + window), clock}
  end
  redis.call('ZADD', tk, clock, id .. '|' .. ARGV[6])
  redis.call('PEXPIRE', tk, ARGV[9])
  redis.call('HSET', st, 'token_sum', fmt(sum + tokens))
end
redis.call('ZADD', starts, clock, id)
redis.call('PEXPIRE', starts, ARGV[9])
local expiry = fmt(now + tonumber(ARGV[8]))
redis.call('ZADD', leases, expiry, id)
redis.call('PEXPIRE', leases, ARGV[11])
redis.call('HINCRBY', st, 'total_requests', 1)
if probe == 1 then
  redis.call('HSET', st, 'probe', id, 'probe_until', expiry)
end
redis.call('PEXPIRE', st, ARGV[10])
return {1, clock, probe}
"""
)

# KEYS: tokens, leases, state.
# ARGV: now, lease id, outcome, probe (0/1), token entry start ('' = none), reserved tokens,
#       settled tokens, add to total_tokens (0/1), threshold, interval, retry_after, state ttl ms.
_RELEASE = _Script(
    _PRELUDE
    + """
local tk, leases, st = KEYS[1], KEYS[2], KEYS[3]
local id = ARGV[2]
redis.call('ZREM', leases, id)
if ARGV[5] ~= '' and ARGV[6] ~= ARGV[7] then
  -- Settle only an entry still in the window: one that aged out was already subtracted.
  if redis.call('ZREM', tk, id .. '|' .. ARGV[6]) == 1 then
    redis.call('ZADD', tk, ARGV[5], id .. '|' .. ARGV[7])
    redis.call('HINCRBY', st, 'token_sum', tonumber(ARGV[7]) - tonumber(ARGV[6]))
  end
end
if ARGV[8] == '1' then redis.call('HINCRBY', st, 'total_tokens', ARGV[7]) end
local outcome = tonumber(ARGV[3])
local probe = ARGV[4] == '1'
if probe and redis.call('HGET', st, 'probe') == id then
  redis.call('HDEL', st, 'probe', 'probe_until')
end
if outcome == 0 then
  redis.call('HSET', st, 'failures', 0)
  if probe then redis.call('HSET', st, 'breaker', 'closed') end
elseif outcome == 1 or outcome == 2 then
  redis.call('HINCRBY', st, 'error_count', 1)
  local failures = redis.call('HINCRBY', st, 'failures', 1)
  if outcome == 2 or probe or failures >= tonumber(ARGV[9]) then
    redis.call('HSET', st, 'breaker', 'open', 'open_until', fmt(now + tonumber(ARGV[10])))
  end
elseif outcome == 3 then
  redis.call('HINCRBY', st, 'error_count', 1)
  local rest = now + tonumber(ARGV[11])
  if rest > (tonumber(redis.call('HGET', st, 'rest_until')) or 0) then
    redis.call('HSET', st, 'rest_until', fmt(rest))
  end
elseif outcome == 4 then
  redis.call('HINCRBY', st, 'error_count', 1)
end
redis.call('PEXPIRE', st, ARGV[12])
return 1
"""
)

# KEYS: starts, tokens, leases, state. ARGV: now, window.
_SNAPSHOT = _Script(
    _PRELUDE
    + _EXPIRE_TOKENS
    + """
local starts, tk, leases, st = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cutoff = fmt(now - tonumber(ARGV[2]))
redis.call('ZREMRANGEBYSCORE', starts, '-inf', cutoff)
local sum = expire_tokens(tk, st, cutoff)
if redis.call('EXISTS', st) == 1 then redis.call('HSET', st, 'token_sum', fmt(sum)) end
redis.call('ZREMRANGEBYSCORE', leases, '-inf', clock)
local h = redis.call('HMGET', st, 'breaker', 'open_until', 'total_requests', 'total_tokens',
  'error_count', 'validation_failures', 'rest_until')
local state = h[1] or 'closed'
if state == 'open' and now >= (tonumber(h[2]) or 0) then state = 'half_open' end
return {state, redis.call('ZCARD', leases), redis.call('ZCARD', starts), fmt(sum),
  h[3] or '0', h[4] or '0', h[5] or '0', h[6] or '0', h[7] or '0', clock}
"""
)

# KEYS: state. ARGV: state ttl ms.
_COUNT_VALIDATION = _Script(
    """
redis.call('HINCRBY', KEYS[1], 'validation_failures', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
)


class _RedisLease:
    """What a Redis lease needs at release: its id and where its token entry sits."""

    __slots__ = ("id", "token_start")

    def __init__(self, lease_id: str, token_start: str) -> None:
        self.id = lease_id
        self.token_start = token_start  # the entry's score; '' when the key has no tpm


class RedisState(StateBackend):
    """Windows, breakers, leases and counters in Redis, shared by every process using it.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL (redis-py's URL syntax).
        timeout: Seconds allowed per Redis call (connect and reply) before falling back.
        local_share: Share of each limit this process takes while Redis is away; ``None``
            means the whole limit.
        lease_ttl: Seconds after which a request in flight that was never released (its
            process died) stops counting as active, and a lost probe frees the breaker.
        server_time: Use the Redis server's clock (processes must agree on time) instead of
            the ``now`` passed in; set for the real clock, unset for a test's manual clock.
        key_prefix: First part of every Redis key.
        retry_interval: Seconds between attempts to reach Redis again while it is away.
        stats_ttl: Seconds a key's breaker and counters live after their last use.
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
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.local_share = 1.0 if local_share is None else local_share
        self.lease_ttl = lease_ttl
        self.server_time = server_time
        self.key_prefix = key_prefix
        self.retry_interval = retry_interval
        self.stats_ttl = stats_ttl
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
        self._ids = itertools.count(1)
        self._pid = os.getpid()
        self._salt = secrets.token_hex(4)
        self._local = MemoryState()
        self._local_limits: dict[Limits, Limits] = {}
        self._down = False
        self._retry_at = 0.0
        self._health_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: BalancerConfig, clock: Clock) -> RedisState:
        """Build from the balancer settings; the state URL may carry our own options.

        ``lease_ttl`` and ``key_prefix`` may be given as URL query parameters
        (``redis://host:6379/0?lease_ttl=120&key_prefix=myapp``); they are taken off the URL
        before redis-py reads it. Without ``lease_ttl``, a lease lasts the request timeout plus
        30 s when one is set, else 300 s.
        """
        url, options = _split_options(config.state)
        if "lease_ttl" in options:
            lease_ttl = float(options["lease_ttl"])
        elif config.request_timeout:
            lease_ttl = config.request_timeout + 30.0
        else:
            lease_ttl = 300.0
        return cls(
            url,
            timeout=config.redis_timeout,
            local_share=config.local_share,
            lease_ttl=lease_ttl,
            # Only the real clock's readings mean the same across processes (and then only on
            # one machine): a fleet needs the one clock it shares, the server's.
            server_time=getattr(clock, "now", None) is time.monotonic,
            key_prefix=options.get("key_prefix", "pllm"),
        )

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

            def part(limit: int | None) -> int | None:
                return None if limit is None else max(1, math.ceil(limit * share))

            scaled = Limits(
                part(limits.rate_limit),
                part(limits.tpm),
                part(limits.max_concurrency),
                limits.window,
            )
            self._local_limits[limits] = scaled
        return scaled

    def _run(self, script: _Script, keys: tuple[str, ...], args: tuple[str, ...]) -> Any:
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

    async def _arun(self, script: _Script, keys: tuple[str, ...], args: tuple[str, ...]) -> Any:
        client = self._aclient()
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(script.source, len(keys), *keys, *args)

    # Redis away and back ---------------------------------------------------------------------

    def _skip_redis(self) -> bool:
        """While Redis is away, let one caller per ``retry_interval`` try it again."""
        if not self._down:
            return False
        with self._health_lock:
            if not self._down:
                return False
            t = time.monotonic()
            if t >= self._retry_at:
                self._retry_at = t + self.retry_interval
                return False
            return True

    def _went_away(self, exc: BaseException) -> None:
        with self._health_lock:
            self._retry_at = time.monotonic() + self.retry_interval
            if self._down:
                return
            self._down = True
        logger.warning(
            "Redis state at %s unreachable (%s: %s); using local limits (%.3g of each limit "
            "in this process) until it answers again",
            self._where,
            type(exc).__name__,
            exc,
            self.local_share,
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
            str(math.ceil(self.stats_ttl * 1000)),
            lease_key_ttl,
        )

    def _acquired(
        self, key: str, limits: Limits, tokens: int, now: float, lease_id: str, reply: Any
    ) -> Lease | float:
        if reply[0] == 1:
            token_start = reply[1] if limits.tpm is not None else ""
            return Lease(key, now, int(tokens), reply[2] == 1, _RedisLease(lease_id, token_start))
        return self._to_local(reply[1], reply[2], now)

    def acquire(
        self, key: str, limits: Limits, tokens: int, now: float, breaker: BreakerPolicy
    ) -> Lease | float:
        """Check every limit and reserve in one atomic script (see ``MemoryState.acquire``)."""
        if self._skip_redis():
            return self._local.acquire(key, self._scaled(limits), tokens, now, breaker)
        lease_id = self._new_lease_id()
        keys, args = self._acquire_args(key, limits, tokens, now, lease_id)
        try:
            reply = self._run(_ACQUIRE, keys, args)
        except _UNAVAILABLE as exc:
            self._went_away(exc)
            return self._local.acquire(key, self._scaled(limits), tokens, now, breaker)
        if self._down:
            self._came_back()
        return self._acquired(key, limits, tokens, now, lease_id, reply)

    async def aacquire(
        self, key: str, limits: Limits, tokens: int, now: float, breaker: BreakerPolicy
    ) -> Lease | float:
        """Async twin of ``acquire``."""
        if self._skip_redis():
            return self._local.acquire(key, self._scaled(limits), tokens, now, breaker)
        lease_id = self._new_lease_id()
        keys, args = self._acquire_args(key, limits, tokens, now, lease_id)
        try:
            reply = await self._arun(_ACQUIRE, keys, args)
        except _UNAVAILABLE as exc:
            self._went_away(exc)
            return self._local.acquire(key, self._scaled(limits), tokens, now, breaker)
        if self._down:
            self._came_back()
        return self._acquired(key, limits, tokens, now, lease_id, reply)

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
        # The same settlement as MemoryState.release.
        add_total = "0"
        if outcome is Outcome.SUCCESS or tokens_used is not None:
            used = tokens_used if tokens_used is not None else lease.tokens
            add_total = "1"
        elif outcome is not Outcome.CANCELLED:
            used = 0  # a refused request spent no tokens
        else:
            used = lease.tokens  # a cancelled one may have: keep the estimate
        _, tokens_key, leases_key, state_key = self._key_names(lease.key)
        return (tokens_key, leases_key, state_key), (
            self._now_arg(now),
            extra.id,
            str(int(outcome)),
            "1" if lease.probe else "0",
            extra.token_start,
            str(lease.tokens),
            str(int(used)),
            add_total,
            str(breaker.threshold),
            repr(float(breaker.interval)),
            repr(float(retry_after or 0.0)),
            self._state_ttl(breaker, retry_after),
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
    ) -> None:
        """Settle the lease and move the breaker in one script."""
        extra = lease.extra
        if not isinstance(extra, _RedisLease):  # a fallback lease goes back where it came from
            self._local.release(
                lease, outcome, now, breaker, tokens_used=tokens_used, retry_after=retry_after
            )
            return
        if self._skip_redis():
            return
        keys, args = self._release_args(
            lease, extra, outcome, now, breaker, tokens_used, retry_after
        )
        try:
            self._run(_RELEASE, keys, args)
        except _UNAVAILABLE as exc:
            self._went_away(exc)
            return
        if self._down:
            self._came_back()

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
            self._local.release(
                lease, outcome, now, breaker, tokens_used=tokens_used, retry_after=retry_after
            )
            return
        if self._skip_redis():
            return
        keys, args = self._release_args(
            lease, extra, outcome, now, breaker, tokens_used, retry_after
        )
        try:
            await self._arun(_RELEASE, keys, args)
        except _UNAVAILABLE as exc:
            self._went_away(exc)
            return
        if self._down:
            self._came_back()

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
        if self._skip_redis():
            return self._local.snapshot(key, self._scaled(limits), now)
        args = (self._now_arg(now), repr(float(limits.window)))
        try:
            reply = self._run(_SNAPSHOT, self._key_names(key), args)
        except _UNAVAILABLE as exc:
            self._went_away(exc)
            return self._local.snapshot(key, self._scaled(limits), now)
        if self._down:
            self._came_back()
        return self._snapshot_of(reply, now)

    async def asnapshot(self, key: str, limits: Limits, now: float) -> KeySnapshot:
        """Async twin of ``snapshot``."""
        if self._skip_redis():
            return self._local.snapshot(key, self._scaled(limits), now)
        args = (self._now_arg(now), repr(float(limits.window)))
        try:
            reply = await self._arun(_SNAPSHOT, self._key_names(key), args)
        except _UNAVAILABLE as exc:
            self._went_away(exc)
            return self._local.snapshot(key, self._scaled(limits), now)
        if self._down:
            self._came_back()
        return self._snapshot_of(reply, now)

    def count_validation_failure(self, key: str) -> None:
        """Count an output that failed its validator, fleet-wide."""
        if self._skip_redis():
            self._local.count_validation_failure(key)
            return
        state_key = self._key_names(key)[3]
        try:
            self._run(_COUNT_VALIDATION, (state_key,), (str(math.ceil(self.stats_ttl * 1000)),))
        except _UNAVAILABLE as exc:
            self._went_away(exc)
            self._local.count_validation_failure(key)
            return
        if self._down:
            self._came_back()

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
