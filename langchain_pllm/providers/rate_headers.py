"""Vendors' rate-limit headers, read on every reply: a key whose ``remaining`` hit 0 rests.

OpenAI (and servers speaking its format) send ``x-ratelimit-{limit,remaining,reset}-{requests,
tokens}`` with resets as Go durations (``1s``, ``6m0s``, ``20ms``); Anthropic sends
``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``
with resets as RFC 3339 instants. A provider reads them off the raw response the SDK already
holds and reports, through ``HEADER_REST`` (a context variable the balancer sets around each
attempt, so sync, async and streaming calls need no extra plumbing), how long the key must rest
before the vendor would answer 429. Missing or unparsable headers change nothing.
"""

from __future__ import annotations

import contextvars
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

__all__ = [
    "HEADER_LIMITS",
    "HEADER_REST",
    "Stated",
    "anthropic_limits",
    "anthropic_rest",
    "go_duration_seconds",
    "openai_limits",
    "openai_rest",
    "report",
]

#: Seconds the key of the current attempt must rest, set by a provider from reply headers.
HEADER_REST: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pllm_header_rest", default=None
)
#: A resource as a reply states it: limit, used (limit - remaining, 0 when remaining is absent)
#: and seconds until its reset (``None`` when absent or unparsable).
Stated = tuple[float, float, float | None]
#: What the current attempt's reply said each resource allows, by ``limits:`` resource name.
HEADER_LIMITS: contextvars.ContextVar[dict[str, Stated] | None] = contextvars.ContextVar(
    "pllm_header_limits", default=None
)

_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_OPENAI = ("requests", "tokens")
_ANTHROPIC = ("requests", "tokens", "input-tokens", "output-tokens")


def go_duration_seconds(text: str) -> float | None:
    """``6m0s`` -> 360.0, ``20ms`` -> 0.02; ``None`` if it is not a Go duration."""
    text = text.strip()
    parts = _GO_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


def _spent(headers: Mapping[str, Any], name: str) -> bool:
    raw = headers.get(name)
    try:
        return raw is not None and float(raw) <= 0
    except (TypeError, ValueError):
        return False


def openai_rest(headers: Mapping[str, Any]) -> float | None:
    """The longest reset among resources whose ``x-ratelimit-remaining-*`` is 0."""
    rest: float | None = None
    for resource in _OPENAI:
        if _spent(headers, f"x-ratelimit-remaining-{resource}"):
            seconds = go_duration_seconds(str(headers.get(f"x-ratelimit-reset-{resource}", "")))
            if seconds is not None and (rest is None or seconds > rest):
                rest = seconds
    return rest


def anthropic_rest(headers: Mapping[str, Any]) -> float | None:
    """The longest wait until the reset of a resource whose ``remaining`` is 0."""
    rest: float | None = None
    for resource in _ANTHROPIC:
        if _spent(headers, f"anthropic-ratelimit-{resource}-remaining"):
            seconds = _rfc3339_in(str(headers.get(f"anthropic-ratelimit-{resource}-reset", "")))
            if seconds is not None and (rest is None or seconds > rest):
                rest = seconds
    return rest


def _stated(
    headers: Mapping[str, Any],
    names: Mapping[str, tuple[str, str, str]],
    reset_of: Callable[[str], float | None],
) -> dict[str, Stated]:
    out: dict[str, Stated] = {}
    for resource, (limit_name, remaining_name, reset_name) in names.items():
        try:
            limit = float(headers.get(limit_name))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue  # missing or unparsable: nothing learned
        if not math.isfinite(limit) or limit <= 0:
            continue
        try:
            remaining = float(headers.get(remaining_name))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            remaining = limit
        used = min(limit, max(0.0, limit - remaining))
        out[resource] = (limit, used, reset_of(str(headers.get(reset_name, ""))))
    return out


def _rfc3339_in(raw: str) -> float | None:
    try:
        at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return None if at.tzinfo is None else max(0.0, at.timestamp() - time.time())


_OPENAI_NAMES = {
    r: (f"x-ratelimit-limit-{r}", f"x-ratelimit-remaining-{r}", f"x-ratelimit-reset-{r}")
    for r in _OPENAI
}
_ANTHROPIC_NAMES = {
    r.replace("-", "_"): (
        f"anthropic-ratelimit-{r}-limit",
        f"anthropic-ratelimit-{r}-remaining",
        f"anthropic-ratelimit-{r}-reset",
    )
    for r in _ANTHROPIC
}


def openai_limits(headers: Mapping[str, Any]) -> dict[str, Stated]:
    """``{resource: (limit, used, reset)}`` from ``x-ratelimit-{limit,remaining,reset}-*``."""
    return _stated(headers, _OPENAI_NAMES, go_duration_seconds)


def anthropic_limits(headers: Mapping[str, Any]) -> dict[str, Stated]:
    """``{resource: (limit, used, reset)}`` from ``anthropic-ratelimit-*-{limit,...}``."""
    return _stated(headers, _ANTHROPIC_NAMES, _rfc3339_in)


def report(rest: float | None, stated: dict[str, Stated] | None = None) -> None:
    """Tell the balancer what the current attempt's reply headers said.

    Args:
        rest: Seconds the key must rest (a resource's ``remaining`` is 0), if any.
        stated: What the vendor says each resource allows, if anything.
    """
    if rest is not None:
        HEADER_REST.set(rest)
    if stated:
        HEADER_LIMITS.set(stated)
