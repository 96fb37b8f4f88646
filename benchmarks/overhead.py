"""What `BalancedChatModel` costs on top of the raw `openai` SDK, next to ChatOpenAI and LiteLLM.

One fake OpenAI server runs in its own process (spawned), so the client's CPU time is its own.
Every contestant talks to that one server: the raw `openai` SDK (`chat.completions.create`,
the baseline of every ratio), two reference rows (the SDK's untyped `post(cast_to=dict)`, which
our OpenAI provider uses, and the floor of any LangChain model: a bare `BaseChatModel` around
one SDK call), LangChain's `ChatOpenAI`, LiteLLM's `Router`, and `BalancedChatModel` over 1, 4
and 1,000 keys (distinct keys, same server). Each is warmed up first (every key of a pool used
once, sync and async, so SDK clients and connections exist); then rounds run interleaved
(A B C ..., each round starting one contestant later) to cancel drift, and every figure is a
median:

- latency: wall time of one sync call (`invoke`, `create`, `completion`) at concurrency 1;
- throughput: async calls (`ainvoke`, ...) through `asyncio.gather` under a semaphore of 64;
- CPU: `time.process_time` of this process per call, sync and async (the server's CPU is not
  in it, LiteLLM's logging thread is).

A second table times the balancer alone (`Balancer.call` with a function that does no I/O)
over 1, 4 and 1,000 keys: the pick must cost the same whatever the pool size.

LiteLLM is kept off the network: local cost map, offline mode, no telemetry.

Run: PYTHONPATH=. python benchmarks/overhead.py [--calls 100] [--rounds 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import overhead_async
from overhead_peers import (
    EXPECTED,
    MODEL,
    Contestant,
    ServerProcess,
    balanced,
    chat_openai,
    langchain_floor,
    litellm_router,
    raw_post,
    raw_sdk,
    raw_sdk_aiohttp,
)

# Measuring -------------------------------------------------------------------------------------


async def _gather(acall: Callable[[], Awaitable[Any]], calls: int, concurrency: int) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with semaphore:
            await acall()

    await asyncio.gather(*(one() for _ in range(calls)))


def warm_up(c: Contestant, loop: asyncio.AbstractEventLoop, concurrency: int) -> None:
    began = time.perf_counter()
    first = c.check(c.call())
    if first != EXPECTED:
        raise RuntimeError(f"{c.name}: unexpected reply {first!r}")
    for _ in range(c.warmup_calls):
        c.call()
    loop.run_until_complete(_gather(c.acall, c.warmup_calls, concurrency))
    c.warmup_seconds = time.perf_counter() - began


def sync_round(c: Contestant, calls: int) -> None:
    gc.collect()
    call = c.call
    clock = time.perf_counter
    samples = []
    cpu = time.process_time()
    for _ in range(calls):
        began = clock()
        call()
        samples.append(clock() - began)
    c.sync_cpu.append((time.process_time() - cpu) / calls)
    c.latency.extend(samples)


def async_round(
    c: Contestant, loop: asyncio.AbstractEventLoop, calls: int, concurrency: int, high: bool
) -> None:
    gc.collect()
    cpu = time.process_time()
    began = time.perf_counter()
    loop.run_until_complete(_gather(c.acall, calls, concurrency))
    wall = time.perf_counter() - began
    if high:
        c.throughput_high.append(calls / wall)
    else:
        c.async_cpu.append((time.process_time() - cpu) / calls)
        c.throughput.append(calls / wall)


def _noop(provider: object) -> None:
    """A provider call that does nothing, to time the balancer alone."""


PICK_VARIANTS = ("plain", "tiers", "affinity")


def _timed(fn: Callable[[], Any], calls: int) -> float:
    """Median over 5 runs of the microseconds one ``fn()`` takes."""
    best = []
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(calls):
            fn()
        best.append((time.perf_counter() - began) / calls)
    return statistics.median(best) * 1e6


def balancer_cost(pool_sizes: list[int], calls: int) -> list[tuple[int, dict[str, float]]]:
    """Microseconds of `Balancer.call` around a call that does no I/O, per pool size.

    Three pools per size: ``plain`` (one tier, no conversation); ``tiers`` (three tiers whose
    first is spent, every key of it parked at its limit, so each pick walks past it); and
    ``affinity`` (one tier, every call names one of 1,000 conversations, so the pick looks up
    and takes the conversation's key).
    """
    from langchain_pllm import BalancedChatModel

    out = []
    for keys in pool_sizes:
        micros: dict[str, float] = {}
        for variant in PICK_VARIANTS:

            def entry(i: int, variant: str = variant, keys: int = keys) -> dict[str, Any]:
                e: dict[str, Any] = {
                    "vendor": "openai",
                    "api_key": f"sk-pick{keys}-{variant}-{i}",
                    "model": MODEL,
                    "api_base": "http://127.0.0.1:9/v1",
                }
                if variant == "tiers" and keys > 1:
                    e["tier"] = 1 + i * 3 // keys
                    if e["tier"] == 1:
                        e["rate_limit"] = 1  # spent after one call: parked for the window
                return e

            model = BalancedChatModel(providers=[entry(i) for i in range(keys)])
            balancer = model.balancer_instance
            turns = itertools.cycle([i.to_bytes(16, "big") for i in range(1000)])

            def one(variant: str = variant, balancer: Any = balancer, turns: Any = turns) -> None:
                if variant == "affinity":
                    balancer.call(_noop, affinity=next(turns))
                else:
                    balancer.call(_noop)

            for _ in range(max(1000, 2 * keys)):
                one()
            micros[variant] = _timed(one, calls)
        out.append((keys, micros))
    return out


def digest_cost(calls: int) -> float:
    """Microseconds the chat face spends naming a conversation (a 2 kB system prompt, 3 turns)."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from langchain_pllm.conversation import conversation_digest

    messages = [
        SystemMessage("You are a careful agent. " * 80),
        HumanMessage("Plan the study of the harbour."),
        AIMessage("First, the tides."),
        HumanMessage("Go on."),
    ]
    return _timed(lambda: conversation_digest("prefix", messages, None, None)[0], calls)


# Report ----------------------------------------------------------------------------------------


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "n/a"


def table(contestants: list[Contestant], low: int, high: int) -> str:
    base = contestants[0]
    b_lat = statistics.median(base.latency)
    b_tp = statistics.median(base.throughput)
    b_hi = statistics.median(base.throughput_high)
    b_scpu = statistics.median(base.sync_cpu)
    b_acpu = statistics.median(base.async_cpu)
    lines = [
        f"| contestant | latency µs (c=1) | vs SDK | req/s (c={low}) | vs SDK | req/s (c={high}) "
        "| vs SDK | CPU µs/call sync | vs SDK | CPU µs/call async | vs SDK |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in contestants:
        lat = statistics.median(c.latency)
        tp = statistics.median(c.throughput)
        hi = statistics.median(c.throughput_high)
        scpu = statistics.median(c.sync_cpu)
        acpu = statistics.median(c.async_cpu)
        lines.append(
            f"| {c.name} | {lat * 1e6:,.0f} | {_ratio(lat, b_lat)} | {tp:,.0f} "
            f"| {_ratio(tp, b_tp)} | {hi:,.0f} | {_ratio(hi, b_hi)} "
            f"| {scpu * 1e6:,.0f} | {_ratio(scpu, b_scpu)} "
            f"| {acpu * 1e6:,.0f} | {_ratio(acpu, b_acpu)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--calls", type=int, default=100, help="sync calls per contestant per round"
    )
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--concurrency", type=int, default=64, help="async concurrency")
    parser.add_argument("--high", type=int, default=256, help="the second, higher concurrency")
    parser.add_argument("--streams", type=int, default=64, help="streams per round and level")
    parser.add_argument(
        "--big-pool", type=int, default=None, help="keys of the largest pool (1000; --quick: 100)"
    )
    parser.add_argument("--warmup", type=int, default=100, help="warm-up calls (sync and async)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run for development: 50 calls, 4 rounds, 30 warm-up calls, 100-key pool",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated parts to leave out: post, floor, litellm, big-pool, streams, fan-out",
    )
    args = parser.parse_args()
    if args.quick:
        args.calls, args.rounds, args.warmup = 50, 4, 30
    if args.big_pool is None:
        args.big_pool = 100 if args.quick else 1000
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    started = time.perf_counter()
    with ServerProcess() as server:
        url = server.base_url
        builders: list[Callable[[], Contestant]] = [
            lambda: raw_sdk(url, args.warmup),
            lambda: raw_sdk_aiohttp(url, args.warmup, 1),
            lambda: raw_sdk_aiohttp(url, args.warmup, 4),
        ]
        if "post" not in skip:
            builders.append(lambda: raw_post(url, args.warmup))
        if "floor" not in skip:
            builders.append(lambda: langchain_floor(url, args.warmup))
        builders.append(lambda: chat_openai(url, args.warmup))
        if "litellm" not in skip:
            builders.append(lambda: litellm_router(url, args.warmup))
        builders += [lambda: balanced(url, args.warmup, 1), lambda: balanced(url, args.warmup, 4)]
        if "big-pool" not in skip:
            builders.append(lambda: balanced(url, args.warmup, args.big_pool))

        # One loop for the whole run: async SDK clients belong to the loop that made them.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        contestants = []
        for build in builders:
            c = build()
            warm_up(c, loop, args.concurrency)
            print(f"warmed up {c.name} in {c.warmup_seconds:.1f} s", file=sys.stderr)
            contestants.append(c)

        # A 1,000-key pool holds millions of objects; frozen, they stay out of every collection
        # that would otherwise land inside some contestant's timings.
        gc.collect()
        gc.freeze()
        async_calls = max(args.calls, 3 * args.concurrency)
        for r in range(args.rounds):
            # Each round starts one contestant later, so none always follows the same other.
            order = contestants[r % len(contestants) :] + contestants[: r % len(contestants)]
            for c in order:
                sync_round(c, args.calls)
            for c in order:
                async_round(c, loop, async_calls, args.concurrency, False)
            for c in order:
                async_round(c, loop, max(async_calls, 3 * args.high), args.high, True)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

        streams: list[overhead_async.StreamRow] = []
        if "streams" not in skip:
            streams = [
                overhead_async.raw_stream(url),
                overhead_async.balanced_stream(url, 1),
                overhead_async.balanced_stream(url, 4),
            ]
            for row in streams:  # warm-up: clients built, connections open
                loop.run_until_complete(overhead_async.stream_round(row, 8, 4))
                row.ttfc.clear()
                row.rate.clear()
            for r in range(args.rounds):
                order_s = streams[r % len(streams) :] + streams[: r % len(streams)]
                for row in order_s:
                    loop.run_until_complete(overhead_async.stream_round(row, 16, 1))
                    loop.run_until_complete(
                        overhead_async.stream_round(row, args.streams, args.concurrency)
                    )
            for row in streams:
                if row.close is not None:
                    loop.run_until_complete(row.close())
            print("streams done", file=sys.stderr)

        for c in contestants:
            c.close()
            if c.aclose is not None:
                loop.run_until_complete(c.aclose())
        # What asyncio.run does: the loop's async generators end (the shared pools close).
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    fan: list[overhead_async.FanRow] = []
    # Slow calls, so the pool's capacity (32 calls/s at 8 keys) stays far below what this
    # process's CPU allows: the ratio then measures spreading. Every key's slots start
    # together and a fixed latency keeps them in step, so each wave's 32 replies and next
    # requests queue on one event loop (and on the server's): ~1 ms of CPU each, 30+ ms a
    # wave. At 0.5 s that queue was 6% of every call on a quiet machine and 10-15% on a busy
    # one, and one raw client per key (perfect spreading) lost as much as the balancer.
    fan_latency, per_key = 1.0, 4
    if "fan-out" not in skip:
        with ServerProcess(latency=fan_latency) as slow:
            fan = asyncio.run(
                overhead_async.fan_out(
                    slow.base_url,
                    slow.holds,
                    [1, 2, 4, 8],
                    per_key,
                    fan_latency,
                    4.0,
                    max(3, args.rounds // 3),
                )
            )
        print("fan-out done", file=sys.stderr)

    pick_sizes = [1, 4] + ([args.big_pool] if "big-pool" not in skip else [])
    pick = balancer_cost(pick_sizes, 2000 if args.quick else 20000)
    elapsed = time.perf_counter() - started

    print(
        f"\n{args.rounds} interleaved rounds x {args.calls} sync calls and "
        f"{async_calls} async calls (concurrency {args.concurrency}) "
        f"per contestant; medians; fake server in its own process; {elapsed:.0f} s in all; "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB.\n"
    )
    print(table(contestants, args.concurrency, args.high))
    extra: list[tuple[str, float, float]] = []
    if streams:
        levels = [1, args.concurrency]
        print("\n" + overhead_async.stream_table(streams, levels))
        med = statistics.median
        for c in levels:
            extra.append(
                (
                    f"stream TTFC c{c}, 4 keys / raw SDK (lower is better)",
                    med(streams[2].ttfc[c]) / med(streams[0].ttfc[c]),
                    1.05,
                )
            )
    if fan:
        print("\n" + overhead_async.fan_out_table(fan, per_key, fan_latency))
        extra.append(("embeddings fan-out, worst pool size", min(r.ratio for r in fan), 0.9))
    print("\n" + overhead_async.verdicts(contestants, args.concurrency, args.high, extra))
    print(
        "\n| keys in pool | `Balancer.call` around a no-I/O call, µs | three tiers, the first "
        "spent | with affinity (1,000 conversations) |"
    )
    print("|---:|---:|---:|---:|")
    for keys, micros in pick:
        print(
            f"| {keys:,} | {micros['plain']:.1f} | {micros['tiers']:.1f} "
            f"| {micros['affinity']:.1f} |"
        )
    print(f"\nNaming a conversation (digest of its prompt prefix): {digest_cost(20000):.1f} µs")


if __name__ == "__main__":
    main()
