"""Where the async path's CPU goes: `ainvoke` at c64 and c256 under pyinstrument, by package.

The fake OpenAI server runs in its own process (as in `overhead.py`), so every sample is the
client's. Three contestants, each profiled alone after a warm-up: a bare `BaseChatModel` over one
raw `post(cast_to=dict)` call on the SDK's aiohttp transport (the least a LangChain model over
the same SDK call can cost), `BalancedChatModel` over four keys, and the raw call itself. For
each, CPU per call and the share of samples by package (the frame's own time: langchain_pllm,
langchain_core, openai, httpx2, aiohttp, pydantic, asyncio and the rest).

Needs pyinstrument (`pip install pyinstrument`; a development tool, not a dependency).

Run: PYTHONPATH=. python benchmarks/profile_async.py [--calls 3000] [--tree]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

from overhead_peers import ServerProcess

MODEL = "gpt-4o-mini"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
PACKAGES = (
    "langchain_pllm",
    "langchain_core",
    "openai",
    "httpx2",
    "aiohttp",
    "pydantic",
    "asyncio",
)


def package_of(path: str) -> str:
    if path.endswith("/selectors.py"):
        return "idle"  # waiting in epoll: wall time, not CPU; left out of the shares
    for name in PACKAGES:
        if f"/{name}/" in path:
            return name
    return "other"


def raw_post(url: str) -> Callable[[], Awaitable[Any]]:
    import openai

    client = openai.AsyncOpenAI(
        base_url=url, api_key="sk-p", max_retries=0, http_client=openai.DefaultAioHttpClient()
    )
    return lambda: client.post("/chat/completions", body=BODY, cast_to=dict)


def floor(url: str) -> Callable[[], Awaitable[Any]]:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    post = raw_post(url)

    class Floor(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "floor"

        def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
            raise NotImplementedError

        async def _agenerate(self, *args: Any, **kwargs: Any) -> ChatResult:
            resp = await post()
            text = resp["choices"][0]["message"]["content"]
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    model = Floor()
    return lambda: model.ainvoke("hi")


def balanced(url: str) -> Callable[[], Awaitable[Any]]:
    from langchain_pllm import BalancedChatModel

    model = BalancedChatModel(
        providers=[
            {"vendor": "openai", "api_key": f"sk-b{i}", "model": MODEL, "api_base": url}
            for i in range(4)
        ]
    )
    return lambda: model.ainvoke("hi")


async def gather(acall: Callable[[], Awaitable[Any]], calls: int, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await acall()

    await asyncio.gather(*(one() for _ in range(calls)))


def self_times(frame: Any, out: collections.Counter[str]) -> None:
    out[package_of(frame.file_path or "")] += frame.total_self_time
    for child in frame.children:
        self_times(child, out)


def main() -> None:
    from pyinstrument import Profiler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--tree", action="store_true", help="print the BalancedChatModel trees")
    args = parser.parse_args()
    with ServerProcess() as server:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        contestants = {
            "raw post, aiohttp": raw_post(server.base_url),
            "bare BaseChatModel over it": floor(server.base_url),
            "BalancedChatModel, 4 keys": balanced(server.base_url),
        }
        print("| contestant | c | calls/s | CPU µs/call | " + " | ".join(PACKAGES) + " | other |")
        print("|---|---:|---:|---:|" + "---:|" * (len(PACKAGES) + 1))
        for name, acall in contestants.items():
            loop.run_until_complete(gather(acall, 500, 64))  # warm-up
            for concurrency in (64, 256):
                gc.collect()  # first unprofiled, for the figures; then profiled, for shares
                cpu, wall = time.process_time(), time.perf_counter()
                loop.run_until_complete(gather(acall, args.calls, concurrency))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                profiler = Profiler(interval=0.0005, async_mode="disabled")
                profiler.start()
                loop.run_until_complete(gather(acall, args.calls, concurrency))
                profiler.stop()
                shares: collections.Counter[str] = collections.Counter()
                root = profiler.last_session.root_frame() if profiler.last_session else None
                if root is not None:
                    self_times(root, shares)
                shares.pop("idle", None)
                total = sum(shares.values()) or 1.0
                cells = [f"{100 * shares[p] / total:.0f}%" for p in (*PACKAGES, "other")]
                print(
                    f"| {name} | {concurrency} | {args.calls / wall:,.0f} "
                    f"| {1e6 * cpu / args.calls:,.0f} | " + " | ".join(cells) + " |"
                )
                if args.tree and name.startswith("Balanced"):
                    print(profiler.output_text(unicode=False, show_all=False))
        # The raw clients are the script's own (never closed: closing is not measured); the
        # pool's shared transports close here, as at the end of asyncio.run.
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


if __name__ == "__main__":
    main()
