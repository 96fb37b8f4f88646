"""How SDK clients reach the network: shared pools, aiohttp for async, closed with their loop.

The Stainless SDKs (``openai``, ``anthropic``; Zhipu's async path is ``openai.AsyncOpenAI``) ship
an aiohttp transport (``DefaultAioHttpClient``) that serves about twice the calls per second of
their default httpx transport at about half the CPU per call. Async clients use it unless the
config says ``http_backend: httpx``; sync clients always use the SDK's httpx client.

All keys of one endpoint share one pool: one ``DefaultAioHttpClient`` per (endpoint, event
loop), each key a cheap per-key view of it (``with_options(api_key=...)``; the SDKs send the key
per request). Its connection limit is the sum of the ``max_concurrency`` of the endpoint's keys
when every key sets one (each provider declares its key when built), else ``MAX_CONNECTIONS``.
Its aiohttp session binds to the loop of its first request, so pools are per loop, and they
are closed while their loop still runs: a parked async generator per loop, whose ``finally``
the loop's ``shutdown_asyncgens`` (run by ``asyncio.run`` and pytest's runners) runs
before the loop closes. Per-key clients are never closed: closing one closes the shared pool for
every key. The process-wide sync pools are closed at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import aiohttp

from langchain_pllm.providers.tls import system_context

if TYPE_CHECKING:
    from langchain_pllm.config import ProviderConfig

__all__ = [
    "DEFAULT_HTTP_BACKEND",
    "HttpBackend",
    "aiohttp_connection_failure",
    "connection_limit",
    "declare_key",
    "http_backend_of",
    "pooled_sdk_client",
]

HttpBackend = Literal["aiohttp", "httpx"]

DEFAULT_HTTP_BACKEND: HttpBackend = "aiohttp"
"""The backend of a provider whose config and balancer name none."""

MAX_CONNECTIONS = 1000
"""Connections of an endpoint's shared aiohttp pool when some key there sets no concurrency
limit: the SDKs' own default, and what c256 on one endpoint needs with room to spare. aiohttp
opens connections on demand, so this is a ceiling, not a reservation."""

# httpx pools are sharded per endpoint: one httpx pool's bookkeeping grows with its
# connections, and building more than a few clients per endpoint costs tens of ms each (TLS).
_HTTPX_SHARDS = 4


def http_backend_of(config: ProviderConfig) -> HttpBackend:
    """The async transport of a provider: its own ``http_backend``, else the default."""
    backend = getattr(config, "http_backend", None)
    return backend if backend is not None else DEFAULT_HTTP_BACKEND


def aiohttp_connection_failure(exc: BaseException) -> bool:
    """Whether an SDK "timeout" was really a refused, reset or dropped connection.

    ``openai``'s vendored aiohttp transport maps every ``aiohttp.ClientConnectionError`` onto
    ``httpx2.ConnectTimeout``, so a refused port surfaces as ``openai.APITimeoutError``. The
    aiohttp error down the cause chain tells the truth: a connection error that is not also a
    timeout (aiohttp's timeouts subclass both) is a connection failure.
    """
    seen = 0
    cause = exc.__cause__ or exc.__context__
    while cause is not None and seen < 8:
        if isinstance(cause, TimeoutError):
            return False
        if isinstance(cause, aiohttp.ClientConnectionError):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


class _LoopPools:
    """The shared clients of one event loop, and the parked generator that closes them."""

    __slots__ = ("clients", "closer", "closing", "limits", "transports")

    def __init__(self) -> None:
        self.clients: dict[tuple[Any, ...], Any] = {}
        self.transports: dict[tuple[Any, ...], Any] = {}
        self.limits: dict[tuple[Any, str], int] = {}  # per (client class, endpoint): largest pool
        # What to await when the loop ends: each aiohttp pool's ``aclose``, each httpx-backed
        # base client's ``close``.
        self.closing: list[Callable[[], Awaitable[Any]]] = []
        self.closer: AsyncGenerator[None, None] | None = None


_SYNC_POOLS: dict[tuple[Any, ...], Any] = {}
_LOOP_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPools] = (
    weakref.WeakKeyDictionary()
)
_POOLS_LOCK = threading.Lock()


@atexit.register
def _close_sync_pools() -> None:
    """Close the sync pools when the interpreter exits.

    They live as long as the process; left to the garbage collector at exit, each open
    connection's socket is reported unclosed (a ``ResourceWarning`` under ``-X dev``).
    """
    with _POOLS_LOCK:
        clients = list(_SYNC_POOLS.values())
        _SYNC_POOLS.clear()
    for client in clients:
        with contextlib.suppress(Exception):  # exiting: nothing left to report it to
            client.close()


async def _close_with_loop(
    loop: asyncio.AbstractEventLoop, pools: _LoopPools
) -> AsyncGenerator[None, None]:
    """Park until the loop shuts its async generators down, then close its shared pools."""
    try:
        yield
    finally:
        with _POOLS_LOCK:
            if _LOOP_POOLS.get(loop) is pools:
                del _LOOP_POOLS[loop]
            closing = list(pools.closing)
            pools.closing.clear()
            pools.transports.clear()
            pools.clients.clear()
            pools.limits.clear()
        for close in closing:
            await close()


def _park(closer: AsyncGenerator[None, None]) -> None:
    """Run ``closer`` to its ``yield`` now, registering it with the running loop.

    Its first step awaits nothing, so it completes synchronously; starting it is what hands it
    to the loop's async-generator hooks, which ``shutdown_asyncgens`` later finalizes.
    """
    step = closer.asend(None)
    with contextlib.suppress(StopIteration):
        step.send(None)


def _loop_pools(loop: asyncio.AbstractEventLoop) -> _LoopPools:
    pools = _LOOP_POOLS.get(loop)
    if pools is None:
        pools = _LOOP_POOLS[loop] = _LoopPools()
        pools.closer = _close_with_loop(loop, pools)
        _park(pools.closer)
    return pools


# Each endpoint's keys and their concurrency limits (``None``: none), declared when a provider
# is built, so the first client built for an endpoint already knows the whole pool's demand.
# Per key fingerprint: two pools holding one key share its state, and so its limit.
_DEMAND: dict[str, dict[str, int | None]] = {}


def declare_key(config: ProviderConfig) -> None:
    """Note a key's concurrency limit on its endpoint (the provider's constructor calls this)."""
    with _POOLS_LOCK:
        keys = _DEMAND.setdefault(config.api_base, {})
        limit = config.concurrency
        known = keys.get(config.key_fingerprint, 0)
        # The same key declared twice with two limits: the looser one is what it may need.
        keys[config.key_fingerprint] = None if limit is None or known is None else max(known, limit)


def connection_limit(url: str) -> int:
    """Connections the shared aiohttp pool of ``url`` may open at once.

    The sum of the ``max_concurrency`` of every key declared on that endpoint when every one
    sets it (the balancer never has more of their requests in flight, so more connections
    would never be used), else ``MAX_CONNECTIONS``. The pool serves that one endpoint, so its
    limit is also its per-host limit.
    """
    with _POOLS_LOCK:
        limits = list(_DEMAND.get(url, {}).values())
    if not limits or any(limit is None for limit in limits):
        return MAX_CONNECTIONS
    return sum(limit for limit in limits if limit is not None)


def _sized(pools: _LoopPools, client_cls: Any, url: str, needed: int) -> int:
    """The connection limit of the endpoint's aiohttp pool in this loop that covers ``needed``.

    The loop's largest pool for the endpoint when it covers ``needed``; else a new one at
    least twice its size: a pool declared later that raises the endpoint's sum needs a larger
    pool for the keys built from then on (keys built earlier keep theirs, which covers them),
    and doubling keeps a process that builds pools one after another (a key per tenant) to a
    handful of sessions per loop instead of one per pool.
    """
    largest = pools.limits.get((client_cls, url), 0)
    if largest >= needed:
        return largest
    limit = min(MAX_CONNECTIONS, max(needed, 2 * largest))
    pools.limits[(client_cls, url)] = limit
    return limit


def _aiohttp_transport(client_cls: Any, limit: int) -> Any:
    """A new ``DefaultAioHttpClient`` of ``client_cls``'s SDK, at most ``limit`` connections."""
    import httpx2

    sdk = sys.modules[client_cls.__module__.split(".")[0]]
    # The SDK's aiohttp transport passes ``max_connections`` on as the connector's ``limit``.
    return sdk.DefaultAioHttpClient(
        limits=httpx2.Limits(max_connections=limit), verify=system_context()
    )


def _httpx_client(client_cls: Any) -> Any:
    """The SDK's own default httpx client for ``client_cls``, on the shared TLS context."""
    sdk = sys.modules[client_cls.__module__.split(".")[0]]
    async_cls = inspect.iscoroutinefunction(getattr(client_cls, "close", None))
    http_cls = sdk.DefaultAsyncHttpxClient if async_cls else sdk.DefaultHttpxClient
    return http_cls(verify=system_context())


def pooled_sdk_client(
    client_cls: Any, config: ProviderConfig, *, base_url: str | None = None
) -> Any:
    """A client of a Stainless-generated SDK (``openai``, ``anthropic``) for one key.

    It shares its connection pool with the other keys of the same endpoint (and event loop, for
    async clients); retries are off, since the balancer retries on another key. Async clients
    run on the SDK's aiohttp transport unless the config's ``http_backend`` is ``httpx``.

    Args:
        client_cls: ``openai.OpenAI``, ``openai.AsyncOpenAI``, ``anthropic.Anthropic``, ...
        config: The provider's config (key, endpoint, timeout, http backend).
        base_url: Endpoint, if not ``config.api_base``.

    Returns:
        The per-key client.
    """
    url = base_url or config.api_base
    loop: asyncio.AbstractEventLoop | None = None
    # An async client class closes with a coroutine; a sync client built inside a running loop
    # (a sync call from a notebook) still belongs in the process-wide table.
    if inspect.iscoroutinefunction(getattr(client_cls, "close", None)):
        loop = asyncio.get_running_loop()
    aio = loop is not None and http_backend_of(config) == "aiohttp"
    # One aiohttp pool serves every key of an endpoint, sized from their declared concurrency;
    # httpx pools are sharded by key.
    needed = connection_limit(url) if aio else 0
    shard = -1 if aio else int(config.key_fingerprint[:8], 16) % _HTTPX_SHARDS
    with _POOLS_LOCK:
        if loop is None:
            table = _SYNC_POOLS
            pools = None
        else:
            pools = _loop_pools(loop)
            table = pools.clients
        limit = _sized(pools, client_cls, url, needed) if aio and pools is not None else 0
        key = (client_cls, url, config.timeout, shard, limit)
        base = table.get(key)
        if base is None:
            args: dict[str, Any] = {
                "api_key": "pllm-shared-pool",
                "base_url": url,
                "max_retries": 0,
            }
            if config.timeout is not None:
                args["timeout"] = config.timeout
            if aio and pools is not None:
                transport_key = (client_cls, url, limit)
                transport = pools.transports.get(transport_key)
                if transport is None:
                    transport = _aiohttp_transport(client_cls, limit)
                    pools.transports[transport_key] = transport
                    pools.closing.append(transport.aclose)
                args["http_client"] = transport
            else:
                args["http_client"] = _httpx_client(client_cls)
            base = table[key] = client_cls(**args)
            if pools is not None and not aio:
                pools.closing.append(base.close)
    return base.with_options(api_key=config.api_key.get_secret_value())
