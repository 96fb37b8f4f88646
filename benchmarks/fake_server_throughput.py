"""Throughput of the fake vendor servers: they must never be the bottleneck of a benchmark.

The server runs in this process (its own thread and loop, as in tests); the load comes from a
separate process so the two do not share a GIL: first a bare aiohttp client, then the `openai`
SDK's AsyncOpenAI, each at a fixed concurrency for a few seconds; with --all-vendors the bare
client also drives the Anthropic, Gemini and Zhipu fakes. The SDK spends about 1.3 ms of CPU
per call itself, so its figure is bound by the client, not the server.

Run: PYTHONPATH=. python benchmarks/fake_server_throughput.py [--seconds 3] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from typing import Any

import aiohttp

from langchain_pllm.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeVendorServer,
    FakeZhipuServer,
)

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there world"}]}
HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}

# vendor -> (server class, path under the root URL, body, headers) for the bare client
VENDOR_CALLS: dict[str, tuple[type[FakeVendorServer], str, dict[str, Any], dict[str, str]]] = {
    "openai": (FakeOpenAIServer, "/v1/chat/completions", BODY, HEADERS),
    "anthropic": (
        FakeAnthropicServer,
        "/v1/messages",
        {**BODY, "max_tokens": 100},
        {**HEADERS, "anthropic-version": "2023-06-01"},
    ),
    "gemini": (
        FakeGeminiServer,
        "/v1beta/models/gemini-2.0-flash:generateContent",
        {"contents": [{"role": "user", "parts": [{"text": "hello there world"}]}]},
        {"x-goog-api-key": "g-bench", "Content-Type": "application/json"},
    ),
    "zhipu": (FakeZhipuServer, "/api/paas/v4/chat/completions", BODY, HEADERS),
}


async def _aiohttp_load(
    url: str, body: dict[str, Any], headers: dict[str, str], seconds: float, concurrency: int
) -> int:
    payload = json.dumps(body).encode()
    deadline = time.perf_counter() + seconds
    done = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    assert response.status == 200
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def _sdk_load(base_url: str, seconds: float, concurrency: int) -> int:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await client.chat.completions.create(**BODY)  # type: ignore[call-overload]
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    return done


def _client_process(
    vendor: str, client: str, root_url: str, seconds: float, concurrency: int, out: Any
) -> None:
    if client == "aiohttp":
        _, path, body, headers = VENDOR_CALLS[vendor]
        load = _aiohttp_load(root_url + path, body, headers, seconds, concurrency)
    else:
        load = _sdk_load(root_url + "/v1", seconds, concurrency)
    out.put(asyncio.run(load))


def measure(vendor: str, client: str, seconds: float, concurrency: int) -> tuple[float, int]:
    """Requests per second one client process achieves, and how many the server logged."""
    with VENDOR_CALLS[vendor][0]() as server:
        queue: multiprocessing.Queue[int] = multiprocessing.Queue()
        process = multiprocessing.Process(
            target=_client_process,
            args=(vendor, client, server.url, seconds, concurrency, queue),
        )
        process.start()
        count = queue.get(timeout=seconds + 60)
        process.join()
        return count / seconds, len(server.requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--all-vendors", action="store_true")
    args = parser.parse_args()
    runs = [("openai", "aiohttp"), ("openai", "openai-sdk")]
    if args.all_vendors:
        runs += [(vendor, "aiohttp") for vendor in ("anthropic", "gemini", "zhipu")]
    for vendor, client in runs:
        rate, served = measure(vendor, client, args.seconds, args.concurrency)
        print(
            f"{vendor:>9} server, {client:>10} client, concurrency {args.concurrency}: "
            f"{rate:8.0f} req/s ({served} requests served)"
        )


if __name__ == "__main__":
    main()
