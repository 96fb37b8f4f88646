"""Why a key could not take a request: the per-key line of ``NoProviderAvailableError``.

"No provider had capacity" alone leaves the caller guessing which limit to raise. Read from the
same snapshot the stats show, each key gets one short reason: its breaker is open (until when),
it rests after a 429 (for how long), its request or token window is full, it is at its
concurrency cap, or its state names something else (a spent key, a budget).
``no_provider_error`` puts the first keys' reasons into the error a request gives up with.
"""

from __future__ import annotations

from collections.abc import Collection

from langchain_pllm.balancer.picker import Member
from langchain_pllm.exceptions import NoProviderAvailableError
from langchain_pllm.state.base import KeySnapshot, StateBackend

__all__ = ["blocked_reason", "no_provider_error"]

#: Reasons named in one error: in a pool of hundreds, the first keys tell the story.
MAX_REASONS = 20


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


def no_provider_error(
    members: list[Member],
    state: StateBackend,
    only: Collection[int] | None,
    now: float,
    waited: float,
    max_wait: float,
) -> NoProviderAvailableError:
    """The error of a request that found no key with capacity within its wait."""
    states: dict[str, str] = {}
    reasons: list[str] = []
    for m in members:
        if only is not None and m.index not in only:
            continue
        snap = state.snapshot(m.key, m.limits, now)
        states[m.config.id] = snap.state
        if len(reasons) < MAX_REASONS:
            reasons.append(f"{m.config.id}: {blocked_reason(m, snap, now)}")
    more = len(states) - len(reasons)
    detail = "; ".join(reasons) + (f"; and {more} more" if more > 0 else "")
    return NoProviderAvailableError(
        f"no provider had capacity within {waited:.3g}s (max_wait {max_wait:g}s): {detail}",
        waited=waited,
        states=states,
    )
