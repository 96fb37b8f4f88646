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
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = ["HEADER_REST", "anthropic_rest", "go_duration_seconds", "openai_rest", "report"]

#: Seconds the key of the current attempt must rest, set by a provider from reply headers.
HEADER_REST: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pllm_header_rest", default=None
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
            raw = str(headers.get(f"anthropic-ratelimit-{resource}-reset", ""))
            try:
                at = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                continue
            if at.tzinfo is None:
                continue
            seconds = max(0.0, at.timestamp() - time.time())
            if rest is None or seconds > rest:
                rest = seconds
    return rest


def report(rest: float | None) -> None:
    """Tell the balancer the current attempt's key must rest ``rest`` seconds (if any)."""
    if rest is not None:
        HEADER_REST.set(rest)
