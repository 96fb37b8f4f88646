"""The async rows of `overhead.py`: streams through `astream`, and embeddings fan-out over keys.

Streams. A 50-word prompt makes the fake server echo a 51-word reply, one SSE chunk per word.
The raw `openai` SDK on its aiohttp transport (`chat.completions.create(stream=True)`) and
`BalancedChatModel.astream` read the same replies; for each, at concurrency 1 and 64: the median
time to the first content chunk, and chunks per second (per stream at c1, all streams together
at c64).

Embeddings fan-out. A second fake server answers every request after a fixed latency; each key
may hold `per_key` requests in flight (`max_concurrency`), so a key's capacity is
`per_key / latency` calls per second and a pool's is the sum. `BalancedEmbeddings` embeds one
text per request (`batch_size=1`) over 1, 2, 4 and 8 keys; the ratio of the calls per second it
reaches to that sum says how much of the pool goes unused. The capacity of the ratio is taken
at the latency the server really gave (its mean hold of that round's requests, which a loaded
machine stretches past the configured one); the nominal ratio is printed beside it. The same
texts sent by one warmed raw aiohttp client per key, each with its own semaphore (perfect
spreading, no balancer), in the same rounds, show what the machine allows.

Acceptance. `verdicts` prints the issue's target ratios next to this run's figures.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

STREAM_WORDS = 50
STREAM_PROMPT = " ".join(f"w{i}" for i in range(STREAM_WORDS - 1))


@dataclass
class StreamRow:
    """One streaming contestant and its samples."""

    name: str
    open_stream: Callable[[], AsyncIterator[Any]]
    close: Callable[[], Awaitable[Any]] | None = None
    ttfc: dict[int, list[float]] = field(default_factory=dict)
    rate: dict[int, list[float]] = field(default_factory=dict)


def raw_stream(base_url: str) -> StreamRow:
    import openai

    client = openai.AsyncOpenAI(
        base_url=base_url,
        api_key="sk-stream-raw",
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    messages: Any = [{"role": "user", "content": STREAM_PROMPT}]

    async def chunks() -> AsyncIterator[Any]:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk

    return StreamRow("openai SDK stream (raw, aiohttp)", chunks, client.close)


def balanced_stream(base_url: str, keys: int) -> StreamRow:
    from langchain_pllm import BalancedChatModel

    model = BalancedChatModel(
        providers=[
            {
                "vendor": "openai",
                "api_key": f"sk-stream{keys}-{i}",
                "model": "gpt-4o-mini",
                "api_base": base_url,
            }
            for i in range(keys)
        ]
    )

    async def chunks() -> AsyncIterator[Any]:
        async for chunk in model.astream(STREAM_PROMPT):
            if chunk.content:
                yield chunk

    return StreamRow(f"BalancedChatModel.astream, {keys} key{'s' if keys > 1 else ''}", chunks)


async def _one_stream(row: StreamRow) -> tuple[float, int, float]:
    """Seconds to the first content chunk, content chunks, seconds in all."""
    began = time.perf_counter()
    first = 0.0
    count = 0
    async for _ in row.open_stream():
        if not count:
            first = time.perf_counter() - began
        count += 1
    return first, count, time.perf_counter() - began


async def stream_round(row: StreamRow, streams: int, concurrency: int) -> None:
    """`streams` streams at `concurrency`; records TTFC samples and the chunk rate."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> tuple[float, int, float]:
        async with gate:
            return await _one_stream(row)

    began = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(streams)))
    wall = time.perf_counter() - began
    if any(count < STREAM_WORDS for _, count, _ in results):
        raise RuntimeError(f"{row.name}: a stream came short of {STREAM_WORDS} chunks")
    row.ttfc.setdefault(concurrency, []).extend(first for first, _, _ in results)
    if concurrency == 1:  # one stream's own pace
        rates = [count / total for _, count, total in results]
        row.rate.setdefault(concurrency, []).append(statistics.median(rates))
    else:  # the pool's pace: every chunk of every stream over the wall time
        row.rate.setdefault(concurrency, []).append(sum(c for _, c, _ in results) / wall)


def stream_table(rows: list[StreamRow], levels: list[int]) -> str:
    base = rows[0]
    head = "| stream | " + " | ".join(
        f"TTFC ms c{c} | vs SDK | chunks/s c{c} | vs SDK" for c in levels
    )
    lines = [head + " |", "|---|" + "---:|" * (4 * len(levels))]
    for row in rows:
        cells = []
        for c in levels:
            t = statistics.median(row.ttfc[c])
            bt = statistics.median(base.ttfc[c])
            r = statistics.median(row.rate[c])
            br = statistics.median(base.rate[c])
            cells += [f"{t * 1e3:.2f}", f"{t / bt:.2f}x", f"{r:,.0f}", f"{r / br:.2f}x"]
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Embeddings fan-out ----------------------------------------------------------------------------


def _embeddings(base_url: str, keys: int, per_key: int) -> Any:
    from langchain_pllm import BalancedEmbeddings

    return BalancedEmbeddings(
        providers=[
            {
                "vendor": "openai",
                "api_key": f"sk-emb{keys}-{i}",
                "model": "text-embedding-3-small",
                "api_base": base_url,
                "max_concurrency": per_key,
                "batch_size": 1,
            }
            for i in range(keys)
        ],
        max_concurrency=keys * per_key * 2,
    )


def aiohttp_clients(base_url: str, prefix: str, keys: int) -> list[Any]:
    """One raw `AsyncOpenAI` client per key (`prefix-0`, ...), each on its own aiohttp pool."""
    import openai

    return [
        openai.AsyncOpenAI(
            base_url=base_url,
            api_key=f"{prefix}-{i}",
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(),
        )
        for i in range(keys)
    ]


async def _raw_fan_out(clients: list[Any], per_key: int, texts: list[str]) -> float:
    """Calls/s of one raw aiohttp `AsyncOpenAI` client per key, `per_key` in flight each."""
    keys = len(clients)
    gates = [asyncio.Semaphore(per_key) for _ in range(keys)]

    async def one(i: int, text: str) -> None:
        async with gates[i % keys]:
            body = {"model": "text-embedding-3-small", "input": [text]}
            await clients[i % keys].post("/embeddings", body=body, cast_to=dict)

    began = time.perf_counter()
    await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
    return len(texts) / (time.perf_counter() - began)


@dataclass
class FanRow:
    """One pool size of the fan-out: per round, calls/s and the server's mean hold."""

    keys: int
    nominal: float
    """Summed capacity at the configured latency: keys x in flight per key / latency."""
    rates: list[float] = field(default_factory=list)
    capacities: list[float] = field(default_factory=list)
    """Summed capacity at the latency the server really gave that round (its mean hold)."""
    raw_rates: list[float] = field(default_factory=list)
    raw_capacities: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(r / c for r, c in zip(self.rates, self.capacities, strict=True))

    @property
    def raw_ratio(self) -> float:
        pairs = zip(self.raw_rates, self.raw_capacities, strict=True)
        return statistics.median(r / c for r, c in pairs)


async def fan_out(
    base_url: str,
    holds: Callable[[], list[float]],
    key_counts: list[int],
    per_key: int,
    latency: float,
    seconds: float,
    rounds: int,
) -> list[FanRow]:
    """Per pool size, interleaved rounds of `BalancedEmbeddings` and one raw client per key.

    Both are warmed up first (clients built, every slot's connection open). A round's capacity
    is `keys x per_key / mean hold`, the hold being what `holds` reports: how long the server
    kept each request of that round (the fixed latency plus however late a loaded machine woke
    it). The client's own time around each call is not taken out: that is the cost under test.
    """
    out = []
    for keys in key_counts:
        model = _embeddings(base_url, keys, per_key)
        clients = aiohttp_clients(base_url, f"sk-rawemb{keys}", keys)
        row = FanRow(keys, keys * per_key / latency)
        texts = [f"text {i}" for i in range(max(keys * per_key, int(row.nominal * seconds)))]
        await model.aembed_documents(texts[: keys * per_key])
        await _raw_fan_out(clients, per_key, texts[: keys * per_key])
        holds()
        for _ in range(rounds):
            began = time.perf_counter()
            vectors = await model.aembed_documents(texts)
            row.rates.append(len(vectors) / (time.perf_counter() - began))
            row.capacities.append(keys * per_key / statistics.mean(holds()))
            row.raw_rates.append(await _raw_fan_out(clients, per_key, texts))
            row.raw_capacities.append(keys * per_key / statistics.mean(holds()))
        for client in clients:
            await client.close()
        out.append(row)
    return out


def fan_out_table(rows: list[FanRow], per_key: int, latency: float) -> str:
    lines = [
        f"| keys ({per_key} in flight each, {latency * 1e3:.0f} ms per call) | calls/s "
        "| nominal capacity | vs nominal | server's mean hold, ms | vs capacity at that hold "
        "| raw clients, calls/s | raw vs capacity at hold |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    med = statistics.median
    for r in rows:
        rate, raw = med(r.rates), med(r.raw_rates)
        hold = med(r.keys * per_key / c for c in r.capacities)
        lines.append(
            f"| {r.keys} | {rate:,.1f} | {r.nominal:,.0f} | {rate / r.nominal:.2f}x "
            f"| {hold * 1e3:.1f} | {r.ratio:.2f}x | {raw:,.1f} | {r.raw_ratio:.2f}x |"
        )
    return "\n".join(lines)


# Acceptance ------------------------------------------------------------------------------------


def verdicts(
    contestants: list[Any], low: int, high: int, extra: list[tuple[str, float, float]]
) -> str:
    """The issue's acceptance ratios, each with its target, from this run."""
    by = {c.name: c for c in contestants}
    four = by.get("BalancedChatModel, 4 keys")
    raw4 = by.get("openai SDK (raw, aiohttp), 4 clients")
    lc = by.get("langchain-openai ChatOpenAI")
    one = by.get("BalancedChatModel, 1 key")
    raw = contestants[0]
    checks: list[tuple[str, float, float]] = []
    med = statistics.median
    if four and raw4:
        checks.append(
            (
                f"4 keys c{low} / 4 raw aiohttp clients",
                med(four.throughput) / med(raw4.throughput),
                0.95,
            )
        )
        checks.append(
            (
                f"4 keys c{high} / 4 raw aiohttp clients",
                med(four.throughput_high) / med(raw4.throughput_high),
                0.95,
            )
        )
    if four and lc:
        checks.append(
            (f"4 keys c{low} / ChatOpenAI", med(four.throughput) / med(lc.throughput), 2.0)
        )
        checks.append(
            (
                f"4 keys c{high} / ChatOpenAI",
                med(four.throughput_high) / med(lc.throughput_high),
                2.0,
            )
        )
    if one:
        checks.append(
            (
                "1 key c1 latency / raw SDK (lower is better)",
                med(one.latency) / med(raw.latency),
                1.05,
            )
        )
    checks += extra
    lines = ["| acceptance check | this run | target | met |", "|---|---:|---:|:---:|"]
    for name, value, target in checks:
        lower = "lower is better" in name
        met = value <= target if lower else value >= target
        sign = "<=" if lower else ">="
        lines.append(f"| {name} | {value:.2f}x | {sign} {target:.2f}x | {'yes' if met else 'NO'} |")
    return "\n".join(lines)
