"""The fleet heartbeat: which processes share a Redis, so each knows its share while Redis is away.

Each process refreshes its member of the ZSET ``<prefix>:procs`` (scored by expiry, three
heartbeats or at least 15 s ahead) at most every ``interval`` seconds (5 s by default): one
extra script folded into an ``acquire`` then, or into the round trip that rejoins Redis after
an outage. The script drops expired members and answers the live ones, which the state
remembers: the local fallback divides each limit by their count, and after an outage the
returning process holds room for the others (``outage.py``). Before the first count a process
knows of no other: in ``share`` mode it takes the whole limit, in ``exact`` mode it waits for
Redis (unless ``local_share`` is set).

The script also says whether this process was still listed. A process that beat before and is
missing was forgotten by Redis (a restart without persistence), or idle past its TTL: either
way ``lost_data`` tells the state, which then treats the windows of the keys it used within
one window as possibly lost (the script finds whether their state is gone), even if this
process itself never saw Redis fail. A beat whose answer was lost (a timeout, a cancel) may
have run and listed this process again, so the answer after it counts as "missing" too.

This module builds the call and keeps the count; the ``RedisState`` runs the call.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import threading
import time
from typing import Any

__all__ = ["DEFAULT_INTERVAL", "Heartbeat"]

DEFAULT_INTERVAL = 5.0
_MIN_PROCESS_TTL = 15.0  # seconds a process counts as live after its last heartbeat, at least

_PROCESS: tuple[int, str] | None = None


def _process_id() -> str:
    """This OS process's name in ``<prefix>:procs``; a forked child gets a name of its own."""
    global _PROCESS
    pid = os.getpid()
    current = _PROCESS
    if current is None or current[0] != pid:
        current = _PROCESS = (pid, f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}")
    return current[1]


class Heartbeat:
    """When this process's liveness is due, the call that refreshes it, and the count read back.

    Args:
        key_prefix: First part of the ZSET's name (``<prefix>:procs``).
        interval: Seconds between refreshes.
        process_id: This process's name; by default one per OS process (host, pid and a
            random part), shared by every state in it.
    """

    def __init__(
        self, key_prefix: str, interval: float = DEFAULT_INTERVAL, process_id: str | None = None
    ) -> None:
        self.interval = interval
        self.count: int | None = None
        """Live processes sharing this Redis, as last seen (``None`` before the first look)."""
        self.members: tuple[str, ...] = ()
        """Their names, as last seen."""
        self.lost_data = False
        """Set when Redis no longer listed this process after a beat; the state clears it."""
        self.listed = False
        """Whether the last answer listed this process (never after a beat left unanswered)."""
        self._process_id = process_id
        self._key = f"{key_prefix}:procs"
        ttl = max(3 * interval, _MIN_PROCESS_TTL)
        self._ttl_args = (repr(float(ttl)), str(math.ceil(ttl * 1000)))
        self._due_at = 0.0
        self._beaten_at: float | None = None
        self._unanswered = False  # a beat was sent and its answer not read yet
        self._doubt = False  # one was sent while another was unanswered
        self._lock = threading.Lock()

    @property
    def process_id(self) -> str:
        """This process's name in ``<prefix>:procs``."""
        return self._process_id or _process_id()

    def due(self) -> bool:
        """Whether this call should refresh the heartbeat: one call per interval does."""
        # Real time, whatever the caller's clock: liveness is judged by the server's clock.
        t = time.monotonic()
        if t < self._due_at:
            return False
        with self._lock:
            if t < self._due_at:
                return False
            self._due_at = t + self.interval
        return True

    def call(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The keys and arguments of the ``HEARTBEAT`` script, about to be sent."""
        with self._lock:
            # A beat whose answer was lost (a timeout, a cancel) may have run all the same: if
            # it found this process missing, it listed it again, and the next answer hides that.
            self._doubt = self._doubt or self._unanswered
            self._unanswered = True
        return (self._key,), (self.process_id, *self._ttl_args)

    def seen(self, reply: Any) -> bool:
        """Remember what a ``HEARTBEAT`` answered; True when the count changed."""
        had, *members = reply
        t = time.monotonic()
        with self._lock:
            doubt, self._doubt, self._unanswered = self._doubt, False, False
        had = bool(int(had)) and not doubt  # after a lost answer, as if missing: mended
        self.listed = had
        # Missing after a beat of its own: Redis forgot it, or it expired while this process was
        # idle past its TTL; which one, nobody can tell, and an idle process may still have
        # starts in a window. The state mends only keys it used within their window since.
        if not had and self._beaten_at is not None:
            self.lost_data = True
        self._beaten_at = t
        self.members = tuple(str(m) for m in members)
        n = max(1, len(members))
        if n == self.count:
            return False
        self.count = n
        return True
