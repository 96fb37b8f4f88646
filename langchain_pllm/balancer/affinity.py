"""Which key served a conversation last, so its next turn can hit that key's prompt cache.

Vendors cache prompt prefixes per key (or organisation): a turn sent to another key pays the
full input price again for the whole shared prefix. A conversation is named by a digest the face
computes (of the prompt's prefix, or of a ``session_id``), never by its text. This map remembers,
for each digest, the fingerprint of the key that served it last: bounded (least recently used
forgotten first) and forgetting a conversation idle longer than ``ttl`` seconds, because the
vendor's own cache forgets it too (minutes to an hour). With a shared state (Redis), the map is
this process's near copy and the state holds the fleet's answer (``ConversationKeys``).
"""

from __future__ import annotations

import contextlib

from langchain_pllm.balancer.attempts import Attempts
from langchain_pllm.balancer.picker import Member
from langchain_pllm.clock import Clock
from langchain_pllm.state.base import StateBackend

__all__ = ["AffinityMap", "ConversationKeys"]


class AffinityMap:
    """Conversation digest -> key fingerprint, an LRU with a time to live.

    A plain dict in insertion order is the LRU: a write moves its entry to the end (delete,
    insert), eviction takes the first. Reads do not reorder: a conversation is "used" when a turn
    is served, which writes. No lock: every step is one dict operation, atomic under the GIL,
    and the rare race (two threads evicting the same first entry) is caught. A turn served by
    the key the map already holds, well within its TTL, writes nothing.

    Args:
        size: Most conversations kept.
        ttl: Seconds a conversation is kept after its last turn.
    """

    __slots__ = ("_entries", "_refresh", "size", "ttl")

    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._refresh = ttl / 2  # rewrite an unchanged entry once half its TTL has passed
        self._entries: dict[bytes, tuple[str, float]] = {}

    def get(self, digest: bytes, now: float) -> str | None:
        """The key that served ``digest`` last, if it did so within the time to live."""
        entry = self._entries.get(digest)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def put(self, digest: bytes, key: str, now: float) -> bool:
        """Remember that ``key`` served ``digest`` now; False if the map already said so."""
        entries = self._entries
        old = entries.get(digest)
        if old is not None:
            if old[0] == key and old[1] - now > self._refresh:
                return False
            entries.pop(digest, None)
        entries[digest] = (key, now + self.ttl)
        if len(entries) > self.size:
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                del entries[next(iter(entries))]
        return True

    def __len__(self) -> int:
        return len(self._entries)


class ConversationKeys:
    """Where a request's conversation goes back to, and where it is noted after it is served.

    With a shared state the fleet's answer wins (another process may have moved the
    conversation); this process's map answers when the state knows nothing or is away. A
    shared state costs one read per request that continues a conversation, and one write when
    a conversation starts or moves.

    Args:
        map: This process's map.
        state: The pool's state (asked only when it is shared).
        by_key: The pool's members by key fingerprint.
        clock: The balancer's clock.
    """

    __slots__ = ("_by_key", "_clock", "_local", "_state", "map")

    def __init__(
        self, map: AffinityMap, state: StateBackend, by_key: dict[str, Member], clock: Clock
    ) -> None:
        self.map = map
        self._state = state
        self._local = state.is_local
        self._by_key = by_key
        self._clock = clock

    def _recalled(self, req: Attempts, shared: str | None) -> None:
        req.shared = shared
        key = shared
        if key is None and req.affinity is not None:
            key = self.map.get(req.affinity, self._clock.now())
        req.prefer = self._by_key.get(key) if key is not None else None

    def recall(self, req: Attempts) -> None:
        """Set ``req.prefer`` to the key that served the request's conversation last."""
        if req.affinity is not None and req.resume:
            shared = None if self._local else self._state.recall_conversation(req.affinity)
            self._recalled(req, shared)

    async def arecall(self, req: Attempts) -> None:
        """Async twin of ``recall``."""
        if req.affinity is not None and req.resume:
            shared = None if self._local else await self._state.arecall_conversation(req.affinity)
            self._recalled(req, shared)

    def _remembered(self, req: Attempts, m: Member) -> bytes | None:
        """Note locally that ``m`` served the conversation; the digest if the fleet must know."""
        digest = req.affinity
        if digest is None:
            return None
        changed = self.map.put(digest, m.key, self._clock.now())
        if self._local:
            return None
        # A continuing turn knows what the fleet said; a first turn (not looked up) writes
        # only what this process did not already hold, so a one-shot prompt repeated on one
        # key costs no write.
        if req.resume:
            return None if req.shared == m.key else digest
        return digest if changed else None

    def remember(self, req: Attempts, m: Member) -> None:
        """Note that ``m`` served the request's conversation (here, and in a shared state)."""
        digest = self._remembered(req, m)
        if digest is not None:
            self._state.remember_conversation(digest, m.key, self.map.ttl)

    async def aremember(self, req: Attempts, m: Member) -> None:
        """Async twin of ``remember``."""
        digest = self._remembered(req, m)
        if digest is not None:
            await self._state.aremember_conversation(digest, m.key, self.map.ttl)
