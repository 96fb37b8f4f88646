"""The redis-py clients for a state URL: one server (``redis://``) or a cluster (``redis+cluster://``).

A single server (``redis://``, ``rediss://``, ``unix://``) gets redis-py's ``Redis``; a cluster
(``redis+cluster://host:port``, ``rediss+cluster://`` with TLS; any node of it) gets
``RedisCluster``, which reads the slot map from that node and sends each script to the master of
its keys' slot. Every key of one provider sits in one hash slot (``pllm:{K}:...``, see
``redis_layout.py``) and the heartbeat is a single key, so no script and no call touches two
slots. The cluster client follows ``MOVED`` and ``ASK`` (a resharding, a failover) by itself,
within one call. A node that does not answer: one server's client fails at once (no client-side
retries: the local fallback is the retry, and a retry would multiply the timeout); a cluster's
client re-reads the slot map from the other nodes and tries once more, so a call right after a
failover reaches the promoted replica instead of falling back (at most two timeouts per call).

This module knows URLs and client options only; ``RedisState`` runs the calls.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

__all__ = ["CLUSTER_SCHEMES", "LOST", "UNAVAILABLE", "async_client", "is_cluster", "sync_client"]

UNAVAILABLE = (RedisError, RedisClusterException, OSError)
"""Errors of a call Redis did not serve; a cluster's client raises ``RedisClusterException``
(no ``RedisError``) when no node holds a slot."""
LOST = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterError,
    TryAgainError,
    RedisClusterException,
    OSError,
)
"""Errors that mean Redis did not answer (rather than a script's own error); ``CLUSTERDOWN`` and
``TRYAGAIN`` while a cluster fails over count as not answering."""

CLUSTER_SCHEMES = {"redis+cluster://": "redis://", "rediss+cluster://": "rediss://"}
"""Our cluster schemes and the redis-py scheme each stands for."""

# Connections the async clients keep per event loop (per node for a cluster). A burst above
# this waits for a free one (one server) rather than failing as if Redis were away.
_ASYNC_CONNECTIONS = 64
# A cluster's async client fails a call above its per-node cap: a high cap, as bursts queue on
# the event loop anyway.
_CLUSTER_ASYNC_CONNECTIONS = 512
# Tries after a node failed to answer, each on a freshly read slot map.
_CLUSTER_RETRIES = 1

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


def is_cluster(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return url.startswith(tuple(CLUSTER_SCHEMES))


def _redis_py_url(url: str) -> str:
    for ours, theirs in CLUSTER_SCHEMES.items():
        if url.startswith(ours):
            return theirs + url[len(ours) :]
    return url


def sync_client(url: str, options: dict[str, Any]) -> SyncClient:
    """A blocking client for ``url`` with connection ``options`` (timeouts, decoding)."""
    if is_cluster(url):
        return redis.cluster.RedisCluster.from_url(
            _redis_py_url(url), retry=Retry(NoBackoff(), _CLUSTER_RETRIES), **options
        )
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)


def async_client(url: str, options: dict[str, Any], pool_timeout: float) -> AsyncClient:
    """An asyncio client for ``url``; use it from one event loop only.

    Args:
        url: The state URL.
        options: Connection options (timeouts, decoding).
        pool_timeout: Seconds a call waits for a free connection of a single server's pool.
    """
    if is_cluster(url):
        return redis.asyncio.cluster.RedisCluster.from_url(
            _redis_py_url(url),
            retry=AsyncRetry(NoBackoff(), _CLUSTER_RETRIES),
            max_connections=_CLUSTER_ASYNC_CONNECTIONS,
            **options,
        )
    # A blocking pool queues bursts above its size instead of failing them ("too many
    # connections" would read as Redis being away).
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=_ASYNC_CONNECTIONS,
        timeout=pool_timeout,
        retry=AsyncRetry(NoBackoff(), 0),
        **options,
    )
    return redis.asyncio.Redis(connection_pool=pool)
