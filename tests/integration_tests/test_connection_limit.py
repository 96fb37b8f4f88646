"""An endpoint's shared aiohttp pool opens no more connections than its keys may use at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from langchain_pllm import BalancedEmbeddings
from langchain_pllm.providers import transport
from langchain_pllm.testing import FakeOpenAIServer

# The connection limit is the aiohttp pool's; the httpx backend has its own (sharded) pools.
HTTP_BACKENDS = ("aiohttp",)


@pytest.fixture(autouse=True)
def fresh_demand(monkeypatch: pytest.MonkeyPatch) -> None:
    # A port reused by an earlier server in this process must not carry its keys over.
    monkeypatch.setattr(transport, "_DEMAND", {})


class PeerCountingServer(FakeOpenAIServer):
    """Counts the client ports embeddings requests arrive from, and the most at once."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ports: set[int] = set()
        self.now = 0
        self.peak = 0

    async def _serve_embeddings(self, request: Any, model: str) -> Any:
        # The server's own loop runs every handler: no lock needed for the counters.
        self.ports.add(request.transport.get_extra_info("peername")[1])
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            return await super()._serve_embeddings(request, model)
        finally:
            self.now -= 1


def _pool(url: str, limits: list[int | None]) -> BalancedEmbeddings:
    emb = BalancedEmbeddings(
        providers=[
            {
                "vendor": "openai",
                "api_key": f"k-{i}",
                "model": "text-embedding-3-small",
                "api_base": url,
                **({"max_concurrency": limit} if limit is not None else {}),
            }
            for i, limit in enumerate(limits)
        ]
    )
    emb.balancer_instance  # noqa: B018 - the providers are built (and their keys declared) here
    return emb


async def _flood(emb: BalancedEmbeddings, per_key: int) -> None:
    # Straight at the providers, past the balancer (which would hold each key to its limit):
    # only the connection pool stands between these requests and the server.
    members = emb.balancer_instance.members
    await asyncio.gather(
        *(m.provider.aembed([f"text {i}"]) for m in members for i in range(per_key))
    )


def test_the_limit_is_the_sum_of_the_keys_concurrency_when_every_key_sets_one() -> None:
    url = "http://127.0.0.1:9/v1"
    _pool(url, [3, 2])
    assert transport.connection_limit(url) == 5
    _pool(url, [4, 4])  # another pool on the same endpoint, the same two keys at 4 each
    # A key in two pools counts once, at the looser of its two limits.
    assert transport.connection_limit(url) == 8


def test_one_key_without_a_limit_leaves_the_default() -> None:
    url = "http://127.0.0.1:9/v1"
    _pool(url, [3, None])
    assert transport.connection_limit(url) == transport.MAX_CONNECTIONS
    assert transport.connection_limit("http://127.0.0.1:10/v1") == transport.MAX_CONNECTIONS


async def test_a_pool_opens_no_more_connections_than_its_keys_concurrency() -> None:
    with PeerCountingServer(latency=0.1) as srv:
        emb = _pool(srv.base_url, [3, 3])
        assert len(await emb.aembed_documents(["a", "b", "c"])) == 3
        await _flood(emb, 20)  # 40 requests at once
    assert srv.peak <= 6
    assert len(srv.ports) <= 6
    assert len(srv.requests) == 42  # the three texts went as two batches


async def test_without_limits_the_same_flood_opens_a_connection_per_request() -> None:
    # The check above can fail: the same flood on a pool whose keys set no limit.
    with PeerCountingServer(latency=0.1) as srv:
        emb = _pool(srv.base_url, [None, None])
        await _flood(emb, 20)
    assert srv.peak > 6
    assert len(srv.ports) > 6


async def test_pools_built_one_after_another_do_not_each_open_a_session() -> None:
    # A process building a pool per tenant (a new key each, each raising the endpoint's sum)
    # must not keep a new aiohttp session per pool for the life of its event loop.
    with PeerCountingServer() as srv:
        for i in range(24):
            emb = BalancedEmbeddings(
                providers=[
                    {
                        "vendor": "openai",
                        "api_key": f"tenant-{i}",
                        "model": "text-embedding-3-small",
                        "api_base": srv.base_url,
                        "max_concurrency": 2,
                    }
                ]
            )
            assert len(await emb.aembed_documents(["a"])) == 1
        pools = transport._loop_pools(asyncio.get_running_loop())
        sessions = [t for (_, url, *_), t in pools.transports.items() if url == srv.base_url]
    # Each pool's sum is covered (2 a key, all 24 in flight at most 48), in a handful of pools.
    assert 1 <= len(sessions) <= 6
