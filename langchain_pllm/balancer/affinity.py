"""Which key served a conversation last, so its next turn can hit that key's prompt cache.

Vendors cache prompt prefixes per key (or organisation): a turn sent to another key pays the
full input price again for the whole shared prefix. A conversation is named by a digest the face
computes (of the prompt's prefix, or of a ``session_id``), never by its text. This map remembers,
for each digest, the fingerprint of the key that served it last: bounded (least recently used
forgotten first) and forgetting a conversation idle longer than ``ttl`` seconds, because the
vendor's own cache forgets it too (minutes to an hour). With a shared state (Redis), the map is
this process's near copy and the state holds the fleet's answer.
"""

from __future__ import annotations

import contextlib

__all__ = ["AffinityMap"]


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
