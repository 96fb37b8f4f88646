"""The balancer's own CPU per call: `Balancer.call` around a function that does no I/O.

Process time (not wall time), the minimum over many batches: on a shared machine the minimum is
the figure least moved by other jobs (wall-clock medians of the same loop move by 2x under a
load average of 4). Pools of 1, 4 and 1,000 OpenAI keys (no request leaves the process), each
in three variants: ``plain`` (no limits, no conversation), ``affinity`` (every call names one of
1,000 conversations) and ``budget`` (every key has a ``limits:`` cost window, so the quota
hooks run on every call). ``--profile`` prints cProfile's top functions for the 4-key plain pool.

Run: PYTHONPATH=. python benchmarks/call_cost.py [--rounds 60] [--batch 500] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import time
from collections.abc import Callable
from typing import Any

from langchain_pllm import BalancedChatModel

VARIANTS = ("plain", "affinity", "budget")


def _noop(provider: Any) -> None:
    return None


def pool_call(keys: int, variant: str) -> Callable[[], object]:
    """One no-I/O ``Balancer.call`` on a fresh pool of ``keys`` keys, warmed up."""
    extra: dict[str, Any] = {}
    if variant == "budget":
        extra = {"limits": {"cost": "1000000/day"}, "price": {"input": 1.0, "output": 2.0}}
    model = BalancedChatModel(
        providers=[
            {
                "vendor": "openai",
                "api_key": f"sk-cost-{variant}-{keys}-{i}",
                "model": "m",
                "api_base": "http://127.0.0.1:9/v1",
                **extra,
            }
            for i in range(keys)
        ]
    )
    balancer = model.balancer_instance
    turns = itertools.cycle([i.to_bytes(16, "big") for i in range(1000)])
    if variant == "affinity":

        def one() -> object:
            return balancer.call(_noop, affinity=next(turns))
    else:

        def one() -> object:
            return balancer.call(_noop, tokens=100)

    for _ in range(max(2000, 2 * keys)):
        one()
    return one


def micros(one: Callable[[], object], rounds: int, batch: int) -> float:
    """The least process time per call over ``rounds`` batches of ``batch`` calls, in µs."""
    best = float("inf")
    for _ in range(rounds):
        began = time.process_time()
        for _ in range(batch):
            one()
        best = min(best, (time.process_time() - began) / batch)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60, help="batches per pool")
    parser.add_argument("--batch", type=int, default=500, help="calls per batch")
    parser.add_argument("--profile", action="store_true", help="cProfile the 4-key plain pool")
    args = parser.parse_args()
    print("| keys | " + " | ".join(f"{v}, µs" for v in VARIANTS) + " |")
    print("|---:|" + "---:|" * len(VARIANTS))
    for keys in (1, 4, 1000):
        cells = [micros(pool_call(keys, v), args.rounds, args.batch) for v in VARIANTS]
        print(f"| {keys:,} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    if args.profile:
        one = pool_call(4, "plain")
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(50_000):
            one()
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
