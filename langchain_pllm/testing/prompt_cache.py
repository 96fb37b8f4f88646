"""The fake servers' prompt cache: cached input tokens for a prefix a key has sent before.

Vendors keep a cache of prompt prefixes per key (or organisation): a request that starts with a
prefix seen recently is charged less for that part, and its usage says how many input tokens
came from the cache. This is a documented approximation of those caches, at the grain of whole
messages: a prompt is a chain of segments (the model and the offered tools, then each message,
the system prompt first), each with its token count; a request's cached tokens are the tokens
of the longest chain of leading segments the same key sent before. Each key has its own cache
(two keys never share one), bounded by an LRU, and only prefixes of at least ``min_tokens``
tokens are kept (real vendors start at about 1,024). Hashes are kept, never texts.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CacheUse:
    """What the cache did for one request.

    Attributes:
        read: Input tokens served from the cache (the longest prefix seen before).
        written: Input tokens newly stored (the cacheable prefix beyond what was read).
    """

    read: int = 0
    written: int = 0


NO_CACHE = CacheUse()


def prompt_segments(
    root: object, message_texts: Sequence[str], message_tokens: Sequence[int]
) -> list[tuple[bytes, int]]:
    """Chain the prompt into ``(digest of the prefix so far, tokens so far)`` per message.

    Args:
        root: What every cached prefix depends on besides the messages (model, tools),
            JSON-encodable.
        message_texts: Text of each message, the system prompt first.
        message_tokens: Token count of each message, as the server reports it.
    """
    digest = hashlib.blake2b(
        json.dumps(root, sort_keys=True, default=str).encode(), digest_size=16
    ).digest()
    total = 0
    chain: list[tuple[bytes, int]] = []
    for text, tokens in zip(message_texts, message_tokens, strict=True):
        digest = hashlib.blake2b(digest + text.encode(), digest_size=16).digest()
        total += tokens
        chain.append((digest, total))
    return chain


class PromptCache:
    """Per-key sets of prompt-prefix digests, each bounded by an LRU.

    Args:
        min_tokens: Shortest prefix (in tokens) that is stored.
        max_prefixes: Most prefixes kept per key; the least recently used go first.
    """

    def __init__(self, min_tokens: int = 0, max_prefixes: int = 10_000) -> None:
        self.min_tokens = min_tokens
        self.max_prefixes = max_prefixes
        self._by_key: dict[str, OrderedDict[bytes, None]] = {}
        self._lock = threading.Lock()

    def use(
        self, key: str, chain: Sequence[tuple[bytes, int]], cacheable: int | None = None
    ) -> CacheUse:
        """Look up the longest known prefix of ``chain`` for ``key``, then store the chain.

        Args:
            key: The API key (or its stable identity).
            chain: From ``prompt_segments``.
            cacheable: How many leading segments may be read or stored (Anthropic's last
                ``cache_control`` breakpoint); all when ``None``.
        """
        usable = chain if cacheable is None else chain[:cacheable]
        if not usable:
            return NO_CACHE
        with self._lock:
            seen = self._by_key.setdefault(key, OrderedDict())
            read = 0
            for digest, tokens in reversed(usable):
                if digest in seen:
                    seen.move_to_end(digest)
                    read = tokens
                    break
            for digest, tokens in usable:
                if tokens >= self.min_tokens and tokens > read:
                    seen[digest] = None
                    seen.move_to_end(digest)
            while len(seen) > self.max_prefixes:
                seen.popitem(last=False)
        stored = max((t for _, t in usable if t >= self.min_tokens), default=0)
        return CacheUse(read=read, written=max(0, stored - read))

    def clear(self, key: str | None = None) -> None:
        """Forget ``key``'s prefixes (every key's when ``None``)."""
        with self._lock:
            if key is None:
                self._by_key.clear()
            else:
                self._by_key.pop(key, None)
