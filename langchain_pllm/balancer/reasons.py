"""Why a key could not take a request: the per-key line of ``NoProviderAvailableError``.

"No provider had capacity" alone leaves the caller guessing which limit to raise. Read from the
same snapshot the stats show, each key gets one short reason: its breaker is open (until when),
it rests after a 429 (for how long), its request or token window is full, it is at its
concurrency cap, or its state names something else (a spent key, a budget).
"""

from __future__ import annotations

from langchain_pllm.balancer.picker import Member
from langchain_pllm.state.base import KeySnapshot

__all__ = ["blocked_reason"]


def blocked_reason(m: Member, snap: KeySnapshot, now: float) -> str:
    """One key's reason for refusing a request now, for an error message."""
    cfg = m.config
    if snap.rest_until > now:
        return f"resting for {snap.rest_until - now:.3g}s (rate limited by the vendor)"
    if snap.state == "open":
        # A 401/403/404 or a spent key opens it at once, not only repeated failures.
        return (
            "breaker open (an auth or not-found error, a spent key, or repeated failures; "
            "probed again after health_check_interval)"
        )
    if snap.state == "half_open":
        return "breaker half-open, its one probe request in flight"
    if snap.state != "closed":
        return snap.state
    window = m.limits.window
    if cfg.rate_limit is not None and snap.window_used >= cfg.rate_limit:
        return f"request window full ({snap.window_used}/{cfg.rate_limit} in {window:g}s)"
    if cfg.tpm is not None and snap.tokens_in_window >= cfg.tpm:
        return f"token window full ({snap.tokens_in_window}/{cfg.tpm} in {window:g}s)"
    if cfg.max_concurrency is not None and snap.active_requests >= cfg.max_concurrency:
        return f"at max_concurrency ({snap.active_requests}/{cfg.max_concurrency} in flight)"
    return "busy (no room for this request's tokens, or freed only just now)"
