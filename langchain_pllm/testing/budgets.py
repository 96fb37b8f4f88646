"""Rate-limit budgets of the fake servers: counters per key and window, read back as headers.

A ``RateBudget`` is what a vendor's account allows: so many requests and tokens (total, input,
output) per window. The fake server asks it once per reply: ``take`` either consumes the
request's share and returns what remains (the server turns that into the vendor's
``x-ratelimit-*`` / ``anthropic-ratelimit-*`` headers) or refuses it, naming the resource that ran
out and when it frees (the server answers 429 with ``Retry-After``). Each API key has its own
counters. Windows are fixed: one opens at a key's first request and closes ``per`` seconds later,
so a test can predict every header. Time comes from the ``clock`` the test gives (``clock.now`` of
a ``ManualClock``), or real monotonic time. ``pin`` fixes what a resource's headers say without
enforcing anything, for a test of how a client reads them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

#: The resources a budget can count, in the order headers are written.
RESOURCES = ("requests", "tokens", "input_tokens", "output_tokens")


@dataclass(frozen=True)
class Limit:
    """``count`` units per ``per`` seconds (``Limit(3, 1.0)``: 3 a second)."""

    count: int
    per: float = 60.0

    def __post_init__(self) -> None:
        if self.count < 0 or self.per <= 0:
            raise ValueError(f"a limit needs count >= 0 and per > 0, got {self}")


@dataclass(frozen=True)
class Reading:
    """What one resource's headers say after a request.

    Attributes:
        resource: One of ``RESOURCES``.
        limit: Units allowed per window (``None`` when only pinned values are known).
        remaining: Units left in the current window.
        reset: Seconds until the window frees (0 when nothing is used).
        per: The window length in seconds (``None`` when pinned).
    """

    resource: str
    limit: int | None
    remaining: int | None
    reset: float | None
    per: float | None = None


@dataclass(frozen=True)
class Verdict:
    """The outcome of ``RateBudget.take``.

    Attributes:
        readings: Every counted or pinned resource, after the request (or, when refused,
            as it stands).
        exceeded: The reading of the first resource that could not take the request, or
            ``None`` when the request was admitted.
    """

    readings: tuple[Reading, ...]
    exceeded: Reading | None = None

    @property
    def admitted(self) -> bool:
        """Whether the request fits the budget."""
        return self.exceeded is None


@dataclass
class _Window:
    start: float
    used: int = 0


class RateBudget:
    """Counters of requests and tokens per API key, each over its own fixed window.

    Usage::

        clock = ManualClock()
        budget = RateBudget(requests=3, tokens=Limit(1000, per=60), window=1.0, clock=clock.now)
        server.set_budget(budget)                      # every key gets these limits
        server.set_budget(RateBudget().pin("requests", remaining=0, reset=20), api_key="sk-a")

    Args:
        requests: Requests per window: a count (over ``window`` seconds) or a ``Limit``.
        tokens: Input plus output tokens per window.
        input_tokens: Prompt tokens per window (Anthropic counts these apart).
        output_tokens: Completion tokens per window.
        window: Window length in seconds for limits given as plain counts.
        clock: Monotonic seconds (``clock.now`` of a ``ManualClock``); real time by default.
        wall: Epoch seconds for the RFC 3339 resets Anthropic sends; by default the wall time
            at construction moved on by ``clock``, so a manual clock moves it too.
    """

    def __init__(
        self,
        *,
        requests: int | Limit | None = None,
        tokens: int | Limit | None = None,
        input_tokens: int | Limit | None = None,
        output_tokens: int | Limit | None = None,
        window: float = 60.0,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] | None = None,
    ) -> None:
        given = {
            "requests": requests,
            "tokens": tokens,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        }
        self.limits: dict[str, Limit] = {
            name: value if isinstance(value, Limit) else Limit(int(value), window)
            for name, value in given.items()
            if value is not None
        }
        self.clock = clock or time.monotonic
        anchor_clock, anchor_wall = self.clock(), time.time()
        self.wall = wall or (lambda: anchor_wall + (self.clock() - anchor_clock))
        self._pins: dict[str, Reading] = {}
        self._windows: dict[tuple[str, str], _Window] = {}
        self._lock = threading.Lock()

    def pin(
        self,
        resource: str,
        *,
        limit: int | None = None,
        remaining: int | None = None,
        reset: float | None = None,
    ) -> RateBudget:
        """Fix what ``resource``'s headers say on every reply; returns self to chain.

        Pinned values are reported as given and never enforced (the counters, if the
        resource also has a limit, still decide admission).
        """
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource!r}; expected one of {RESOURCES}")
        with self._lock:
            self._pins[resource] = Reading(resource, limit, remaining, reset)
        return self

    def unpin(self, resource: str | None = None) -> None:
        """Let ``resource`` (every resource when ``None``) report its counters again."""
        with self._lock:
            if resource is None:
                self._pins.clear()
            else:
                self._pins.pop(resource, None)

    def reset(self) -> None:
        """Forget every key's counters (all windows start afresh)."""
        with self._lock:
            self._windows.clear()

    def take(self, key: str, needs: dict[str, int]) -> Verdict:
        """Consume ``needs`` (units per resource) for ``key`` if every counted resource has room.

        A refused request consumes nothing. A request larger than a whole window's limit is
        always refused, as vendors refuse it.
        """
        with self._lock:
            now = self.clock()
            windows = {name: self._window(key, name, now) for name in self.limits}
            exceeded: Reading | None = None
            for name, limit in self.limits.items():
                if windows[name].used + needs.get(name, 0) > limit.count:
                    exceeded = self._reading(name, windows[name], now)
                    break
            if exceeded is None:
                for name, window in windows.items():
                    window.used += needs.get(name, 0)
            readings = [self._reading(name, windows[name], now) for name in self.limits]
            for name, pinned in self._pins.items():
                readings = [r for r in readings if r.resource != name] + [pinned]
        order = {name: index for index, name in enumerate(RESOURCES)}
        readings.sort(key=lambda r: order[r.resource])
        return Verdict(tuple(readings), exceeded)

    def used(self, key: str, resource: str) -> int:
        """Units of ``resource`` that ``key`` has used in its current window."""
        with self._lock:
            if resource not in self.limits:
                return 0
            return self._window(key, resource, self.clock()).used

    def _window(self, key: str, name: str, now: float) -> _Window:
        window = self._windows.get((key, name))
        if window is None or now >= window.start + self.limits[name].per:
            window = self._windows[(key, name)] = _Window(now)
        return window

    def _reading(self, name: str, window: _Window, now: float) -> Reading:
        limit = self.limits[name]
        reset = max(0.0, window.start + limit.per - now) if window.used else 0.0
        return Reading(name, limit.count, max(0, limit.count - window.used), reset, limit.per)


def go_duration(seconds: float) -> str:
    """A duration as OpenAI's rate-limit headers write it: ``20ms``, ``1s``, ``59.9s``, ``6m0s``."""
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rfc3339(epoch_seconds: float) -> str:
    """An instant as Anthropic's reset headers write it (UTC, ``Z``; milliseconds if any)."""
    instant = datetime.fromtimestamp(epoch_seconds, UTC)
    if instant.microsecond:
        return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return instant.isoformat(timespec="seconds").replace("+00:00", "Z")
