"""What one key did lately, kept in this process: latency percentiles, requests/s, token kinds.

The hot path appends once per attempt under an uncontended lock: a latency into a fixed ring
(the last ``LATENCY_SAMPLES`` successful attempts), a count into one of sixty one-second buckets,
and the reply's input and output tokens. Nothing is sorted or summed until the stats are read.

These numbers are this process's own even with the Redis state: the state shares requests,
tokens and windows across a fleet, but not latencies or token kinds.
"""

from __future__ import annotations

import math
import threading
from typing import Any

__all__ = ["LATENCY_SAMPLES", "RATE_SPAN", "RecentAttempts", "TokenUsage"]

LATENCY_SAMPLES = 256
RATE_SPAN = 60  # seconds of "requests/s over the last minute"


class TokenUsage(int):
    """A reply's total tokens that also knows its input and output tokens.

    An ``int``, so the state settles it like any token count; a stream's chunks add up to one
    (``0 + usage`` and ``usage + usage`` keep the kinds apart).

    Args:
        input_tokens: Prompt tokens the vendor counted.
        output_tokens: Completion tokens the vendor counted.
        total: The total if the vendor's differs from the sum (reasoning, cache).
        cached_tokens: The part of ``input_tokens`` read from the prompt cache (priced apart).
    """

    input_tokens: int
    output_tokens: int
    cached_tokens: int

    def __new__(
        cls, input_tokens: int, output_tokens: int, total: int | None = None, cached_tokens: int = 0
    ) -> TokenUsage:
        """A count of ``total`` (default: input plus output) that keeps both kinds."""
        self = super().__new__(cls, input_tokens + output_tokens if total is None else total)
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cached_tokens = cached_tokens
        return self

    def __getnewargs__(self) -> tuple[int, int, int]:  # type: ignore[override]  # 3 counts, not 1
        # Copies and pickles rebuild it from all three counts: a stats dict holds one (a
        # state's running total starts as 0 + usage), and users copy and pickle stats.
        return (self.input_tokens, self.output_tokens, int(self))

    def __add__(self, other: Any) -> Any:
        if isinstance(other, TokenUsage):
            return TokenUsage(
                self.input_tokens + other.input_tokens,
                self.output_tokens + other.output_tokens,
                int(self) + int(other),
                self.cached_tokens + other.cached_tokens,
            )
        if isinstance(other, int) and other == 0:
            return self
        return int(self) + other

    __radd__ = __add__


def _percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile of a sorted, non-empty list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class RecentAttempts:
    """One key's recent attempts in this process (see the module docstring)."""

    __slots__ = (
        "_counts",
        "_latencies",
        "_lock",
        "_next",
        "_seconds",
        "born",
        "input_tokens",
        "output_tokens",
    )

    def __init__(self, born: float = -math.inf) -> None:
        self.born = born  # when counting began: a younger key's rate is over its age
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._next = 0
        self._seconds = [-1] * RATE_SPAN
        self._counts = [0] * RATE_SPAN
        self.input_tokens = 0
        self.output_tokens = 0

    def add(self, ended: float, latency: float | None, used: int | None) -> None:
        """Count one attempt that ended at ``ended``.

        Args:
            ended: Clock time the attempt ended.
            latency: Its duration, for successful attempts (``None``: not sampled).
            used: The tokens it used; a ``TokenUsage`` adds to the input and output counts.
        """
        second = int(ended)
        slot = second % RATE_SPAN
        with self._lock:
            if self._seconds[slot] != second:
                self._seconds[slot] = second
                self._counts[slot] = 0
            self._counts[slot] += 1
            if latency is not None:
                if len(self._latencies) < LATENCY_SAMPLES:
                    self._latencies.append(latency)
                else:
                    self._latencies[self._next] = latency
                self._next = (self._next + 1) % LATENCY_SAMPLES
            if isinstance(used, TokenUsage):
                self.input_tokens += used.input_tokens
                self.output_tokens += used.output_tokens

    def span(self, now: float) -> float:
        """Seconds the rate is over: the last ``RATE_SPAN``, or the age if younger (>= 1 s).

        Dividing a young pool's requests by the whole minute would under-report its rate
        (12 requests in its first 2 s are 6/s, not 0.2/s). At least a second: the buckets are
        whole seconds, and a pool a few milliseconds old has no rate worth a spike.
        """
        return min(float(RATE_SPAN), max(1.0, now - self.born))

    def stats(self, now: float) -> dict[str, Any]:
        """The stats fields these attempts give, read at ``now``.

        Returns:
            ``latency_p50`` and ``latency_p95`` (seconds, ``None`` before any success),
            ``requests_per_second`` over the last ``RATE_SPAN`` seconds (over the age when
            younger, ``span``), ``input_tokens`` and
            ``output_tokens``.
        """
        current = int(now)
        with self._lock:
            ordered = sorted(self._latencies)
            recent = sum(
                n
                for s, n in zip(self._seconds, self._counts, strict=True)
                if current - RATE_SPAN < s <= current
            )
            inp, out = self.input_tokens, self.output_tokens
        return {
            "latency_p50": _percentile(ordered, 0.50) if ordered else None,
            "latency_p95": _percentile(ordered, 0.95) if ordered else None,
            "requests_per_second": recent / self.span(now),
            "input_tokens": inp,
            "output_tokens": out,
        }
