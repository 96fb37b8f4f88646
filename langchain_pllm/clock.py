"""Time as an injectable object: 60-second windows and 300-second intervals tested in microseconds.

The balancer never calls ``time`` or ``asyncio.sleep`` directly: it asks its clock for ``now()``
and waits through the clock. ``MonotonicClock`` is the real thing; ``ManualClock`` is a virtual
clock whose waits move time forward instead of sleeping (tenacity's injectable sleep and
aiolimiter's mock loop time are the models), so a test that waits for a window to roll over
finishes at once and still sees exact timestamps.

The module sits below both ``balancer/`` and ``state/``: the balancer waits through a clock, and
the Redis state asks one whether it reads real time; neither imports the other for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from datetime import datetime
from typing import ClassVar

__all__ = ["DEFAULT_CLOCK", "Clock", "ManualClock", "MonotonicClock"]


class Clock:
    """Interface: a monotonic ``now()`` in seconds and waits that an event can cut short."""

    real: ClassVar[bool] = False
    """Whether ``now()`` reads real time, so its readings agree with other processes' real
    clocks on this machine (a shared state may then use a server's clock in their place)."""

    def now(self) -> float:
        """Return the current time in seconds (monotonic; the origin is arbitrary)."""
        raise NotImplementedError

    def wall(self) -> float:
        """Return the wall time in epoch seconds: what calendar resets (a day's quota) read."""
        return time.time()

    def wait(self, event: threading.Event, deadline: float) -> None:
        """Block until ``event`` is set or the clock reaches ``deadline``."""
        raise NotImplementedError

    async def await_event(self, event: asyncio.Event, deadline: float) -> None:
        """Wait until ``event`` is set or the clock reaches ``deadline``."""
        raise NotImplementedError


class MonotonicClock(Clock):
    """The real clock: ``time.monotonic`` and real waits."""

    real: ClassVar[bool] = True

    now = staticmethod(time.monotonic)

    def wait(self, event: threading.Event, deadline: float) -> None:
        """Block on the event with a timeout."""
        event.wait(max(0.0, deadline - time.monotonic()))

    async def await_event(self, event: asyncio.Event, deadline: float) -> None:
        """Wait on the event with a timeout."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, deadline - time.monotonic()))


class ManualClock(Clock):
    """A virtual clock for tests: time moves only by ``advance`` or by waiting.

    A wait that no event cuts short moves time forward by the whole wait, at once. With many
    waiters this behaves like a discrete-event simulation: each waiter jumps to its own wake
    time, and time never runs backwards.
    """

    def __init__(self, start: float = 1000.0, *, wall: datetime | None = None) -> None:
        """Start at ``start`` seconds; ``wall`` (an aware datetime) is the wall time then.

        Without ``wall`` the wall time starts at the real time of construction. Either way
        ``advance`` and waits move the wall time with the virtual time.
        """
        if wall is not None and wall.tzinfo is None:
            raise ValueError("ManualClock(wall=...) needs an aware datetime (with tzinfo)")
        self._now = start
        self._start = start
        self._wall_start = wall.timestamp() if wall is not None else time.time()
        self._lock = threading.Lock()

    def wall(self) -> float:
        """Return the virtual wall time: ``wall`` moved on by every ``advance`` and wait."""
        return self._wall_start + (self._now - self._start)

    def now(self) -> float:
        """Return the virtual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        with self._lock:
            self._now += seconds

    def set(self, t: float) -> None:
        """Move time forward to ``t`` (never backwards)."""
        with self._lock:
            self._now = max(self._now, t)

    def wait(self, event: threading.Event, deadline: float) -> None:
        """Jump forward to the deadline unless the event is already set."""
        if not event.is_set():
            self.set(deadline)

    async def await_event(self, event: asyncio.Event, deadline: float) -> None:
        """Let other tasks run once; if the event is still unset, jump to the deadline."""
        await asyncio.sleep(0)
        if not event.is_set():
            self.set(deadline)


DEFAULT_CLOCK = MonotonicClock()
