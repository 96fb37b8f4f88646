"""``get_stats()``: one row per key, read from the state's snapshot and this process's counts.

The row holds the fields DESIGN.md section 2 lists, the recent figures of ``PoolObserver``
(latency percentiles, requests per second, token totals), and, where a key has them, its
concurrency cut, its windows (configured and learned) and ``state: "budget"`` when a cost
window has no room for a request like its last one.
"""

from __future__ import annotations

from typing import Any

from langchain_pllm.balancer.metrics import PoolObserver
from langchain_pllm.balancer.picker import Member
from langchain_pllm.balancer.process_limits import ProcessLimits
from langchain_pllm.balancer.quota import budget_full, window_stats
from langchain_pllm.balancer.state_args import StateArgs
from langchain_pllm.state.base import StateBackend

__all__ = ["pool_stats"]


def pool_stats(
    members: list[Member],
    state: StateBackend,
    args: StateArgs,
    limits: ProcessLimits,
    observer: PoolObserver,
    now: float,
) -> dict[str, dict[str, Any]]:
    """Per-provider stats at ``now``, keyed by provider id."""
    out: dict[str, dict[str, Any]] = {}
    for m in members:
        snap = state.snapshot(m.key, m.limits, now, **args.acquire(m, now))
        cfg = m.config
        row = out[cfg.id] = {
            "vendor": cfg.vendor,
            "model": cfg.model,
            "total_requests": snap.total_requests,
            "total_tokens": snap.total_tokens,
            "error_count": snap.error_count,
            "active_requests": snap.active_requests,
            "state": snap.state,
            "window_used": snap.window_used,
            "rate_limit": cfg.rate_limit,
            "tpm": cfg.tpm,
            "tokens_in_window": snap.tokens_in_window,
            "validation_failures": snap.validation_failures,
            "resting_for": max(0.0, snap.rest_until - now, snap.exhausted_until - now),
            "tier": cfg.tier,
            # None for a key without a price: "no price" is not "free".
            "cost": snap.cost if cfg.price is not None or snap.cost else None,
            "cached_tokens": snap.cached_tokens,
            **observer.stats(m, now),
        }
        cut, learned = limits.stats(m, now)
        if cut is not None:
            row["concurrency_cut"] = cut
        if m.limits.windows or learned:
            windows = window_stats(m.limits, snap, now)
            row["windows"] = windows + learned
            ask = args.last_ask.get(m.index, 0.0)
            if snap.state == "closed" and budget_full(windows, ask):
                row["state"] = "budget"  # spent its budget, not at a request limit
    return out
