"""Network faults through each provider's async path, on both transports, over real HTTP.

A refused port, a reset mid-body, a reset mid-stream and a timeout must reach the balancer as the
same LangChain error on aiohttp and on httpx (``http_backend`` parametrizes every test). On
``openai``'s aiohttp transport a refused port surfaces as ``APITimeoutError``; the provider must
still call it a connection failure, or the balancer would treat a dead host as a slow one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.exceptions import ModelConnectionError, ModelTimeoutError
from langchain_core.messages import HumanMessage

from langchain_pllm.config import ProviderConfig
from langchain_pllm.providers import ChatRequest, Provider, build_provider
from langchain_pllm.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeZhipuServer,
    Fault,
    closed_port_url,
)

SERVERS: dict[str, Any] = {
    "openai": FakeOpenAIServer,
    "anthropic": FakeAnthropicServer,
    "zhipu": FakeZhipuServer,
    "google": FakeGeminiServer,
}
KEYS = {"openai": "sk-t", "anthropic": "ak-t", "zhipu": "kid.secret", "google": "g-t"}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Any]]:
    started = {vendor: cls().start() for vendor, cls in SERVERS.items()}
    yield started
    for srv in started.values():
        srv.stop()


@pytest.fixture(params=sorted(SERVERS))
def vendor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def provider_for(vendor: str, api_base: str, timeout: float | None = None) -> Provider:
    return build_provider(
        ProviderConfig(
            vendor=vendor, api_key=KEYS[vendor], model="m", api_base=api_base, timeout=timeout
        )
    )


REQUEST = ChatRequest(messages=[HumanMessage("hello there world")], params={"max_tokens": 20})


async def drain(provider: Provider, texts: list[str]) -> None:
    """Read a whole stream, keeping the text of each chunk that has some."""
    async for chunk in provider.astream(REQUEST):
        if chunk.content:
            texts.append(chunk.text)


async def test_refused_port_is_a_connection_error(
    servers: dict[str, Any], vendor: str, http_backend: str
) -> None:
    provider = provider_for(vendor, closed_port_url(servers[vendor].api_prefix))
    with pytest.raises(ModelConnectionError) as caught:
        await provider.achat(REQUEST)
    assert caught.value.provider == provider.id  # type: ignore[attr-defined]
    with pytest.raises(ModelConnectionError):
        await drain(provider, [])


async def test_reset_mid_body_is_a_connection_error(
    servers: dict[str, Any], vendor: str, http_backend: str
) -> None:
    srv = servers[vendor]
    provider = provider_for(vendor, srv.base_url)
    srv.enqueue(Fault(cut_body=True))
    with pytest.raises(ModelConnectionError):
        await provider.achat(REQUEST)
    assert (await provider.achat(REQUEST)).content  # the next call on the same pool works


async def test_reset_mid_stream_is_a_connection_error_after_the_first_chunks(
    servers: dict[str, Any], vendor: str, http_backend: str
) -> None:
    srv = servers[vendor]
    provider = provider_for(vendor, srv.base_url)
    srv.enqueue(Fault(cut_after=2))
    got: list[str] = []
    with pytest.raises(ModelConnectionError):
        await drain(provider, got)
    assert 1 <= len(got) <= 2  # what came before the reset reached the caller
    assert [c async for c in provider.astream(REQUEST)]


async def test_silent_server_is_a_timeout(
    servers: dict[str, Any], vendor: str, http_backend: str
) -> None:
    srv = servers[vendor]
    provider = provider_for(vendor, srv.base_url, timeout=0.3)
    srv.enqueue(Fault(latency=1.0))
    with pytest.raises(ModelTimeoutError):
        await provider.achat(REQUEST)
    srv.enqueue(Fault(chunk_delay=1.0))
    with pytest.raises(ModelTimeoutError):
        await drain(provider, [])


async def test_async_clients_run_on_the_chosen_transport(
    servers: dict[str, Any], http_backend: str
) -> None:
    provider = provider_for("openai", servers["openai"].base_url)
    await provider.achat(REQUEST)
    transport = type(provider.async_client._client).__name__
    assert ("AioHttp" in transport) == (http_backend == "aiohttp"), transport


LOOPS_SCRIPT = """
import asyncio
from langchain_pllm import BalancedChatModel
from langchain_pllm.testing import FakeAnthropicServer, FakeOpenAIServer, FakeZhipuServer

with FakeOpenAIServer() as o, FakeAnthropicServer() as a, FakeZhipuServer() as z:
    model = BalancedChatModel(providers=[
        {"vendor": "openai", "api_key": "k1", "model": "m", "api_base": o.base_url},
        {"vendor": "openai", "api_key": "k2", "model": "m", "api_base": o.base_url},
        {"vendor": "anthropic", "api_key": "k3", "model": "c", "api_base": a.base_url},
        {"vendor": "zhipu", "api_key": "id.secret", "model": "g", "api_base": z.base_url},
    ], balancer={"http_backend": BACKEND})

    async def calls():
        replies = await asyncio.gather(*[model.ainvoke("hi") for _ in range(8)])
        streamed = [c async for c in model.astream("hi")]
        return len(replies) + len(streamed)

    served = [asyncio.run(calls()) for _ in range(3)]
    for _ in range(4):  # every key in turn: the process-wide sync pools, closed at exit
        model.invoke("hi")
    print("served", served, len(o.requests) + len(a.requests) + len(z.requests))
"""


def test_clients_close_with_their_loops() -> None:
    import subprocess
    import sys

    # aiohttp only: httpx's pools print nothing when a loop ends unclosed, aiohttp's complain.
    script = LOOPS_SCRIPT.replace("BACKEND", repr("aiohttp"))
    # -X dev shows ResourceWarnings and asyncio's debug complaints that a plain run hides.
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "served" in done.stdout
    assert done.stdout.split()[-1] == "31"  # 3 x (8 calls + 1 stream) and four sync calls
    for noise in ("Unclosed", "Event loop is closed", "ResourceWarning", "was never retrieved"):
        assert noise not in done.stderr, done.stderr
