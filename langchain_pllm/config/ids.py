"""Provider ids: how a provider is named within its pool, written once.

A provider's id is its ``name`` if it has one, else its vendor and its place among that vendor's
providers in list order (``openai-0``, ``openai-1``, ``anthropic-0``). Ids appear in
``response_metadata["provider"]``, ``get_stats()`` and error paths, so every way of building a
pool (YAML sections, the faces' ``providers=`` list, a bare ``PoolConfig``) numbers the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["VendorCounter", "find_duplicate_id", "provider_id"]


def provider_id(vendor: str, index: int) -> str:
    """The id of an unnamed provider: its vendor and its index among that vendor's providers.

    Args:
        vendor: The provider's vendor name.
        index: Its place among the pool's providers of that vendor, from 0.

    Returns:
        The id, e.g. ``openai-1``.
    """
    return f"{vendor}-{index}"


class VendorCounter:
    """Hands out each vendor's next index in list order: openai 0, openai 1, anthropic 0."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def take(self, vendor: str) -> int:
        """The index of the next provider of ``vendor`` (every provider takes one, named or not)."""
        index = self._next.get(vendor, 0)
        self._next[vendor] = index + 1
        return index


def find_duplicate_id(ids: Sequence[str], places: Sequence[str]) -> str | None:
    """A message naming the first id used twice and both places, or ``None`` if all differ."""
    first_place: dict[str, str] = {}
    for each_id, place in zip(ids, places, strict=True):
        if each_id in first_place:
            return (
                f"id {each_id!r} is used by both {first_place[each_id]} and {place}; "
                "give each provider a unique name"
            )
        first_place[each_id] = place
    return None
