"""A fleet on one shared state: 1, 4 and 16 processes, memory vs one Redis vs a Redis Cluster.

Each process runs what the balancer does per request attempt, as fast as it can: ``acquire``
(check and reserve a request window and a token window) then ``release`` (settle the tokens),
round robin over a pool of keys whose limits are never reached, on the real clock (so the
Redis scripts read the server's clock, as in production). What is measured per row:

- requests/s: finished acquire+release pairs per second, the whole fleet;
- round trips per request: the scripts the Redis servers ran (``INFO commandstats``: every
  ``evalsha``/``eval`` call, summed over the cluster's masters), heartbeats included;
- CPU per request: the fleet processes' CPU time, and the Redis servers' (``used_cpu_user`` +
  ``used_cpu_sys``), each divided by the requests;
- p99 acquire latency: over every ``acquire`` of the fleet.

The memory rows are each process on its own (nothing shared): the floor the shared state is
measured against. Without ``--redis``/``--cluster`` a throwaway ``redis-server`` and a local
cluster (three masters, three replicas) are started on loopback ports and stopped after.

Run: PYTHONPATH=. .venv/bin/python benchmarks/fleet.py [--seconds 3] [--processes 1 4 16]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from langchain_pllm.state import BreakerPolicy, Lease, Limits, MemoryState, Outcome  # noqa: E402
from langchain_pllm.state.base import StateBackend  # noqa: E402
from langchain_pllm.state.redis import RedisState  # noqa: E402
from langchain_pllm.state.redis_client import sync_client  # noqa: E402

LIMITS = Limits(rate_limit=10**9, tpm=10**12, max_concurrency=None, window=60.0)
BREAKER = BreakerPolicy(threshold=3, interval=300.0)
KEYS = [f"fleetbench{i:06d}" for i in range(16)]
TOKENS = 20


def _worker(url: str, seconds: float, ready: Any, go: Any, out: Any) -> None:
    state: StateBackend = MemoryState() if url == "memory" else RedisState(url, timeout=2.0)
    clock = time.monotonic
    latencies: list[float] = []
    done = 0
    i = os.getpid()
    ready.put(i)
    go.wait()
    stop_at = clock() + seconds
    cpu0 = time.process_time()
    while (now := clock()) < stop_at:
        key = KEYS[i % len(KEYS)]
        i += 1
        t = time.perf_counter()
        lease = state.acquire(key, LIMITS, TOKENS, now, BREAKER)
        latencies.append(time.perf_counter() - t)
        if not isinstance(lease, Lease):
            raise RuntimeError(f"refused until {lease}: the limits should never be reached")
        state.release(lease, Outcome.SUCCESS, clock(), BREAKER, tokens_used=TOKENS)
        done += 1
    out.put((done, time.process_time() - cpu0, latencies))


def _servers(url: str) -> list[Any]:
    """Clients of every master behind ``url`` (one for a single server)."""
    client = sync_client(url, {"decode_responses": True})
    if hasattr(client, "get_primaries"):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


def _redis_counters(url: str) -> tuple[int, float]:
    """Scripts run and CPU seconds used so far, summed over the servers behind ``url``."""
    calls = 0
    cpu = 0.0
    for server in _servers(url):
        stats = server.info("commandstats")
        calls += sum(
            int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
        )
        info = server.info("cpu")
        cpu += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return calls, cpu


def run(url: str, processes: int, seconds: float) -> dict[str, float]:
    """One row: ``processes`` processes hammering the state at ``url`` for ``seconds``."""
    ctx = mp.get_context("spawn")
    out, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_worker, args=(url, seconds, ready, go, out)) for _ in range(processes)
    ]
    for p in procs:
        p.start()
    # Spawned interpreters import the package first: all start together once all are up.
    for _ in procs:
        ready.get(timeout=120)
    before = _redis_counters(url) if url != "memory" else (0, 0.0)
    go.set()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(10)
    after = _redis_counters(url) if url != "memory" else (0, 0.0)
    done = sum(r[0] for r in results)
    latencies = sorted(t for r in results for t in r[2])
    return {
        "rps": done / seconds,
        "trips": (after[0] - before[0]) / done,
        "client_us": 1e6 * sum(r[1] for r in results) / done,
        "redis_us": 1e6 * (after[1] - before[1]) / done,
        "p50_ms": 1e3 * statistics.median(latencies),
        "p99_ms": 1e3 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--redis", help="a redis:// URL to use instead of a throwaway server")
    parser.add_argument("--cluster", help="a redis+cluster:// URL instead of a local cluster")
    args = parser.parse_args()

    from tests.redis_cluster_fixture import LocalCluster
    from tests.redis_fixture import RedisServer

    server = cluster = None
    try:
        if args.redis is None:
            server = RedisServer().start()
        if args.cluster is None:
            cluster = LocalCluster().start()
        states = {
            "memory (per process)": "memory",
            "Redis (one server)": args.redis or server.url,  # type: ignore[union-attr]
            "Redis Cluster (3+3)": args.cluster or cluster.url,  # type: ignore[union-attr]
        }
        print(
            f"{os.cpu_count()} cores; {args.seconds:g} s per row; acquire + release per "
            f"request over {len(KEYS)} keys\n"
        )
        print(
            "| state | processes | requests/s | round trips/request | client CPU µs/request "
            "| Redis CPU µs/request | p50 acquire ms | p99 acquire ms |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, url in states.items():
            for n in args.processes:
                r = run(url, n, args.seconds)
                trips = "-" if url == "memory" else f"{r['trips']:.3f}"
                redis_cpu = "-" if url == "memory" else f"{r['redis_us']:.0f}"
                print(
                    f"| {name} | {n} | {r['rps']:,.0f} | {trips} | {r['client_us']:.0f} "
                    f"| {redis_cpu} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |",
                    flush=True,
                )
    finally:
        if server is not None:
            server.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    main()
