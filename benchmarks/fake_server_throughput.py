"""Throughput of the fake vendor servers: they must never be the bottleneck of a benchmark.

The server runs in this process (its own thread and loop, as in tests); the load comes from a
separate process so the two do not share a GIL: first a bare aiohttp client, then the `openai`
SDK's AsyncOpenAI, each at a fixed concurrency for a few seconds. The SDK spends about 1.3 ms of
CPU per call itself, so its figure is usually bound by the client, not the server.

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

from langchain_pllm.testing import FakeOpenAIServer

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there world"}]}


async def _aiohttp_load(url: str, seconds: float, concurrency: int) -> int:
    payload = json.dumps(BODY).encode()
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
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


def _client_process(kind: str, base_url: str, seconds: float, concurrency: int, out: Any) -> None:
    if kind == "aiohttp":
        count = asyncio.run(_aiohttp_load(base_url + "/chat/completions", seconds, concurrency))
    else:
        count = asyncio.run(_sdk_load(base_url, seconds, concurrency))
    out.put(count)


def measure(kind: str, base_url: str, seconds: float, concurrency: int) -> float:
    """Requests per second achieved by one client process of the given kind."""
    queue: multiprocessing.Queue[int] = multiprocessing.Queue()
    process = multiprocessing.Process(
        target=_client_process, args=(kind, base_url, seconds, concurrency, queue)
    )
    began = time.perf_counter()
    process.start()
    count = queue.get(timeout=seconds + 60)
    process.join()
    del began
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with FakeOpenAIServer() as server:
        for kind in ("aiohttp", "openai-sdk"):
            server.clear()
            rate = measure(kind, server.base_url, args.seconds, args.concurrency)
            served = len(server.requests)
            print(
                f"{kind:>11} client, concurrency {args.concurrency}: {rate:8.0f} req/s "
                f"({served} requests served)"
            )


if __name__ == "__main__":
    main()
