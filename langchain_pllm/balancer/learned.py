"""Limits learned from the vendor's headers, for resources a key has no configured limit on.

A reply's ``x-ratelimit-limit-*`` / ``anthropic-ratelimit-*-limit`` says how much the vendor
allows per minute; a key whose config says nothing about that resource adopts it as a 60 s
rolling window, seeded with what the vendor says is already used (limit - remaining), so the
request that taught it counts. A configured window on the same resource that is no looser wins
(the learned one is then not kept). The windows live in this process only: each process of a
fleet learns them from its own replies, and the vendor's own 429 still guards the sum.
"""

from __future__ import annotations

from typing import Any

from langchain_pllm.config.quotas import QuotaWindow
from langchain_pllm.providers.rate_headers import Stated
from langchain_pllm.state.base import Limits
from langchain_pllm.state.windows import RollingWindow

__all__ = ["LEARNED_PERIOD", "LearnedLimits"]

#: Vendors state their limits per minute (OpenAI RPM/TPM, Anthropic's per-minute buckets).
LEARNED_PERIOD = 60.0

#: A reservation in one learned window: its resource, the window, the entry to settle.
Handle = tuple[str, RollingWindow, list[float]]

_CONFIGURED = {"requests": "rate_limit", "tokens": "tpm"}


def _configured(limits: Limits, resource: str, stated: float) -> bool:
    """Whether the key's config already holds ``resource`` at or under ``stated``."""
    shorthand = _CONFIGURED.get(resource)
    legacy = getattr(limits, shorthand) if shorthand else None
    if legacy is not None and legacy <= stated:
        return True
    return any(w.resource == resource and w.limit <= stated for w in limits.windows)


class LearnedLimits:
    """Per key: one rolling window per learned resource. Callers hold the balancer's lock."""

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: dict[int, dict[str, RollingWindow]] = {}

    def __bool__(self) -> bool:
        return bool(self._keys)

    def learn(self, index: int, limits: Limits, stated: dict[str, Stated], now: float) -> None:
        """Adopt (or update) the stated limits of the resources the config leaves open."""
        windows = self._keys.get(index)
        for resource, (limit, used, reset) in stated.items():
            if _configured(limits, resource, limit):
                if windows is not None:
                    windows.pop(resource, None)
                continue
            if windows is None:
                windows = self._keys[index] = {}
            window = windows.get(resource)
            if window is None:
                window = windows[resource] = RollingWindow(
                    QuotaWindow(resource, limit, LEARNED_PERIOD)
                )
                if used > 0:
                    # What the vendor counted before we knew, freeing when the vendor says its
                    # window resets (else a whole period from now).
                    frees = min(reset, LEARNED_PERIOD) if reset is not None else LEARNED_PERIOD
                    window.take(used, now + frees - LEARNED_PERIOD, None)
            else:
                window.limit = limit  # the vendor moved the limit (a tier change)

    def reserve(self, index: int, tokens: int, now: float) -> float | list[Handle] | None:
        """Reserve in every learned window of the key: the handles, or when one frees.

        ``None`` when the key has learned nothing.
        """
        windows = self._keys.get(index)
        if not windows:
            return None
        asks = [(r, w, 1.0 if r == "requests" else float(tokens)) for r, w in windows.items()]
        latest: float | None = None
        for _, w, ask in asks:
            wake = w.wake(ask, now, None)
            if wake is not None and (latest is None or wake > latest):
                latest = wake
        if latest is not None:
            return latest
        return [(r, w, w.take(ask, now, None)) for r, w, ask in asks]

    @staticmethod
    def settle(handles: list[Handle], usage: Any, cancel: bool) -> None:
        """Token windows settle to the reply's usage; a request the state refused frees all."""
        for resource, w, entry in handles:
            if cancel:
                w.settle(entry, 0.0)
                continue
            if resource == "requests" or usage is None:
                continue
            amount = usage if resource == "tokens" else getattr(usage, resource, None)
            if amount is not None:
                w.settle(entry, float(amount))

    def stats(self, index: int, now: float) -> list[dict[str, Any]]:
        """The key's learned windows as ``get_stats()`` lists them (``learned: True``)."""
        out = []
        for resource, w in self._keys.get(index, {}).items():
            used, reset = w.used(now, None)
            out.append(
                {
                    "name": f"{resource}/minute (learned)",
                    "resource": resource,
                    "limit": w.limit,
                    "period": w.period,
                    "calendar": False,
                    "learned": True,
                    "used": used,
                    "resets_in": max(0.0, reset - now),
                }
            )
        return out
