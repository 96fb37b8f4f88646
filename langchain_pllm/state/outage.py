"""Back from an outage: what each key's Redis windows need before anyone acquires on them again.

Three things can break a limit once Redis answers again, and one ``RECONCILE`` script per key
(one hash slot) mends each (``redis_scripts.py``):

1. **Redis lost the windows** (a restart without persistence): a key with no state hash may
   have held starts from before the outage that the restart forgot. They all lie before the
   outage's start here (the first failed call, which came after Redis died), so the script
   fills the key's windows as of that start: one ``lost|i`` member per request of the limit
   and one ``lost|<tpm>`` token entry, with fixed names so a second process back adds nothing.
   Keys that were merely idle (their state expired) get them too: one window of waiting.
2. **This process's fallback starts** are written back (``fallback.py`` keeps them).
3. **Processes not back yet** may still be serving their share locally: once the outage lasted
   long enough for fallback starts (the return, plus ``cover`` seconds by which any process that
   keeps calling must be back, reaches one window past this process's last good call), the
   returning process writes, per other live process of the last heartbeat,
   placeholders worth that process's share (``ph|<id>|i`` and ``ph|<id>|t|<tokens>``, counted
   in the hash under ``ph|<id>``), scored ``cover`` seconds ahead. Each process deletes its own
   when it reconciles the key, in the same script that writes its real starts. A process that
   was back already, or died, leaves one share unused for at most ``cover`` plus one window.

In ``share`` mode only 2 happens (the old behaviour). Keys this process started requests on
are reconciled in the round trip that rejoins Redis; any other key before this process's first
acquire on it after the return: others may have used it before the outage (a restart lost their
starts) or serve it locally still, and the first process back to acquire it must hold their
room. Stand-ins go only to the keys this process had used, or to every key when the rejoin's
heartbeat found this process unlisted (Redis may have lost its data; still listed, it kept
them, and a new or idle key has nothing to stand in for). A process that never saw the outage
but whose heartbeat finds it was forgotten by Redis (``heartbeat.py``) treats that moment as an
outage that began and ended then, and reconciles each key it used within its window before
its next acquire on it (only those: after every ``FLUSHALL`` any key first met would wait a
window; and a process idle past its heartbeat's TTL, which looks the same, pays one round trip
per such key, no capacity, when Redis kept their state).

On a cluster in ``exact`` mode there is no local serving at all (``DownKeys``): a cluster
fails one master at a time, and a process that never met the away master would keep acquiring
the live masters' keys on Redis beside the others' local shares of them. There a key whose
master is away waits for its promoted replica, and only the stand-ins (1) apply.

What stays best effort: a process that made no call during the outage, and whose heartbeat was
not due, acquires on the returned Redis without knowing of it, before any process back has
reconciled the key; a failover's last writes the replica had not received (milliseconds,
asynchronous replication) are lost with the state hash still present, so no stand-ins; the
``limits:`` windows a restart lost get no stand-ins; shares assume every process sees the
same count of live processes; a process that cannot reach a Redis the others still use serves
its share beside them once a window has passed; and a ``back|<id>`` marker cannot tell that its
process went away again since (Redis flapping), so its room is not held.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from langchain_pllm.state.base import Limits
    from langchain_pllm.state.fallback import LocalFallback, Replay
    from langchain_pllm.state.heartbeat import Heartbeat
    from langchain_pllm.state.redis_layout import Call, RedisLayout

__all__ = ["DownKeys", "Outage", "Returns"]

logger = logging.getLogger("langchain_pllm")


class Outage(NamedTuple):
    """One outage as this process saw it, every time in the caller's clock."""

    start: float
    """Its first failed call here."""
    last_ok: float
    """The last call Redis answered before it."""
    back: float
    """When Redis answered again."""
    peers: tuple[str, ...]
    """The other live processes as the last heartbeat before it listed them."""


class Returns:
    """Which keys to reconcile after the last outage, and the ``RECONCILE`` call of each.

    Args:
        layout: Key names and script arguments.
        fallback: The local fallback (its mode, outage start and shares).
        heartbeat: This process's name and the live processes.
        cover: Seconds after its return by which a process that keeps calling is back too.
    """

    def __init__(
        self, layout: RedisLayout, fallback: LocalFallback, heartbeat: Heartbeat, cover: float
    ) -> None:
        self.cover = cover
        self.known: dict[str, Limits] = {}
        """Every key this process started a request on, with its latest limits."""
        self.used: dict[str, float] = {}
        """When Redis last granted this process a start on each key, in the records' clock."""
        self.last_ok = -math.inf
        """When Redis last answered an acquire, in the caller's clock."""
        self._layout = layout
        self._fallback = fallback
        self._heartbeat = heartbeat
        self._outage: Outage | None = None
        self._pending: set[str] = set()
        self._met: set[str] | None = None
        self._lost = True
        self._lock = threading.Lock()

    def outage(self, back: float) -> Outage:
        """The outage this process's fallback served through, ending at ``back``."""
        own = self._heartbeat.process_id
        peers = tuple(p for p in self._heartbeat.members if p != own)
        return Outage(self._fallback.start, self.last_ok, back, peers)

    def forgotten(self, now: float) -> Outage:
        """Redis lost its data without this process seeing it fail: an outage at ``now``.

        Stand-ins only: this process never left, and holding room for every other process
        in case one is still away would cost each key a share for a while after every restart
        (or ``FLUSHALL``); those that are away hold room for the others when they come back.
        """
        return Outage(now, self.last_ok, now, ())

    def calls(
        self, replays: list[Replay], now: float, ref: float, outage: Outage | None
    ) -> list[tuple[str, Call]]:
        """The rejoin's calls: per key with fallback starts and, after an outage, every key known.

        Args:
            replays: This process's fallback starts per key.
            now: The caller's time.
            ref: The same moment in the records' clock.
            outage: The outage that ends, or ``None`` for starts recorded since the return.
        """
        out: list[tuple[str, Call]] = []
        replayed = {key for key, _, _ in replays}
        # A copy first: other threads add keys (``dict.copy`` runs under the GIL at once).
        known = self.known.copy()
        for key, window, entries in replays:
            out.append((key, self._call(key, window, known.get(key), now, ref, entries, outage)))
        if outage is not None and self._fallback.exact:
            for key, limits in known.items():
                if key not in replayed and self._relevant(limits, ref, outage):
                    out.append((key, self._call(key, limits.window, limits, now, ref, [], outage)))
        return out

    def ended(
        self, outage: Outage, keys: list[str], *, every_key: bool = True, lost: bool = True
    ) -> None:
        """Redis is back after ``outage``; ``keys`` were reconciled in the same round trip.

        Args:
            outage: The outage that ended.
            keys: The keys reconciled already.
            every_key: Mend keys first met after the return too (an outage this process
                served through); else only keys it had used (a Redis found to forget it).
            lost: Whether Redis may have lost its data (its heartbeat did not list this
                process): then keys first met get stand-ins as well as placeholders.
        """
        if not self._fallback.exact:
            return
        with self._lock:
            self._outage = outage
            known = set(self.known.copy())
            if not every_key:
                # Forgotten: only starts of this process can be lost (those that made none lately
                # may have been idle past their heartbeat's TTL just as well, not lost anything).
                used, windows = self.used.copy(), self.known.copy()
                known = {
                    k for k in known if used.get(k, -math.inf) > outage.start - windows[k].window
                }
            self._pending = known.difference(keys)
            self._met = known.union(keys) if every_key else None
            self._lost = lost

    def pending(self, key: str, limits: Limits, now: float, ref: float) -> Call | None:
        """The call to send before ``key``'s acquire, when the last outage still matters to it.

        A key this process had used is mended as after any outage. A key first met after an
        outage this process served through is mended too: others may have used it before
        (a restart lost their starts) or serve it locally still, and whoever acquires it
        first on the returned Redis must hold their room (``Outage`` placeholders); only when
        Redis may have lost its data does it get stand-ins.
        """
        outage = self._outage
        met = self._met
        if outage is None or (key not in self._pending and (met is None or key in met)):
            return None
        with self._lock:
            if key in self._pending:
                self._pending.discard(key)
                stand_ins = True
            elif self._met is not None and key not in self._met:
                self._met.add(key)
                stand_ins = self._lost
            else:
                return None
        if not self._relevant(limits, ref, outage):
            return None
        return self._call(key, limits.window, limits, now, ref, [], outage, stand_ins)

    def retry(self, key: str) -> None:
        """``pending``'s call for ``key`` did not complete (cancelled, failed): send it again."""
        with self._lock:
            if self._met is not None and key not in self.known:
                self._met.discard(key)
            else:
                self._pending.add(key)

    def stand_ins(self, key: str, limits: Limits, now: float, ref: float, start: float) -> Call:
        """The call filling ``key``'s windows as of ``start`` if its state was lost."""
        lost = (max(0.0, ref - start), limits.rate_limit, limits.tpm)
        return self._layout.reconcile(
            key, limits.window, now, self._heartbeat.process_id, [], lost, None
        )

    def _relevant(self, limits: Limits, ref: float, outage: Outage) -> bool:
        if limits.rate_limit is None and limits.tpm is None:
            return False
        return ref < max(outage.start, outage.back + self.cover) + limits.window

    def _call(
        self,
        key: str,
        window: float,
        limits: Limits | None,
        now: float,
        ref: float,
        entries: list[tuple[str, float, int | None]],
        outage: Outage | None,
        stand_ins: bool = True,
    ) -> Call:
        own = self._heartbeat.process_id
        if outage is None or limits is None or not self._fallback.exact:
            return self._layout.reconcile(key, window, now, own, entries)
        # Without stand-ins the outage's age still travels (no limits to stand in for): the
        # script needs it to skip processes back since the outage began.
        lost = (
            max(0.0, ref - outage.start),
            limits.rate_limit if stand_ins else None,
            limits.tpm if stand_ins else None,
        )
        placeholders = None
        until = outage.back + self.cover
        if outage.peers and until >= outage.last_ok + limits.window:
            # The share each of them took, as counted before the outage: the heartbeat of the
            # return may list only the processes back so far.
            share = self._fallback.share_of(limits, len(outage.peers) + 1)
            requests, tokens = share.rate_limit or 0, share.tpm or 0
            if requests or tokens:
                placeholders = (until - ref, requests, tokens, outage.peers)
        return self._layout.reconcile(key, window, now, own, entries, lost, placeholders)


class DownKeys:
    """``exact`` mode on a cluster: a key whose master does not answer waits for it alone.

    A cluster fails node by node: while one master is away (its replica being promoted), the
    others serve their keys as before. Serving the away node's keys from a local share would
    race processes that never saw the outage, so nothing starts outside Redis: such a key
    refuses (the balancer sends its requests to other keys) until one caller per
    ``retry_interval`` finds it answering again. Before its first acquire then, stand-ins fill
    its windows if the failover lost its state (``Returns.stand_ins``).

    Args:
        where: The Redis URL, redacted, for the log lines.
        retry_interval: Seconds between attempts on a key that did not answer.
    """

    def __init__(self, where: str, retry_interval: float) -> None:
        self.retry_interval = retry_interval
        self._where = where
        self._down: dict[str, list[float]] = {}  # key -> [outage start, next try (monotonic)]
        self._lock = threading.Lock()

    @property
    def any(self) -> bool:
        """Whether some key's master is away."""
        return bool(self._down)

    def wait(self, key: str, now: float) -> float | None:
        """``None`` to ask Redis now; else when to try ``key`` again, in the caller's clock."""
        entry = self._down.get(key)
        if entry is None:
            return None
        with self._lock:
            t = time.monotonic()
            if t >= entry[1]:
                entry[1] = t + self.retry_interval  # this caller tries; the others wait
                return None
            return now + max(0.005, entry[1] - t)

    def went_away(self, key: str | None, exc: BaseException, at: float, now: float) -> float:
        """A call on ``key`` failed at ``at``: it waits; the first key away logs a warning."""
        with self._lock:
            first = not self._down
            if key is not None:
                entry = self._down.setdefault(key, [at, 0.0])
                entry[1] = time.monotonic() + self.retry_interval
        if first and key is not None:
            logger.warning(
                "Redis state at %s unreachable for some keys (%s: %s); they wait for it "
                "(outage: exact), the others are served as before",
                self._where,
                type(exc).__name__,
                exc,
            )
        return now + self.retry_interval

    def started(self, key: str) -> float | None:
        """When ``key``'s outage began, if it is away."""
        entry = self._down.get(key)
        return None if entry is None else entry[0]

    def came_back(self, key: str) -> None:
        """``key`` answered again; the last key back logs once."""
        with self._lock:
            if self._down.pop(key, None) is None or self._down:
                return
        logger.info("Redis state at %s answers again for every key", self._where)
