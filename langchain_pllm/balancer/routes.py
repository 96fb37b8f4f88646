"""Which keys a call may go to: those serving its ``model=`` and taking its media.

A call's ``model=`` picks keys, it does not rewrite them: ``invoke(..., model="gpt-4o")`` on a
pool of OpenAI and Anthropic keys goes only to the keys whose ``model`` (or one of whose
``aliases``) is ``gpt-4o``, balanced among them as usual, and each key still sends its own
model name. That makes groups in one pool possible (``aliases: [fast]`` on the cheap keys,
``model="fast"`` on a call). A name no key serves is the caller's mistake, raised before any
key is tried, listing what the pool serves.

Media routes the same way: a call holding an audio block goes only to keys whose vendor takes
audio (``Provider.media_kinds``), never to one that would drop the block without a word.

The tables are built once per balancer; a lookup is one dict read.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_pllm.balancer.picker import Member
from langchain_pllm.exceptions import InvalidCallError

__all__ = ["ModelRoutes"]


class ModelRoutes:
    """Model name or alias -> the member indexes serving it."""

    __slots__ = ("_kinds", "_members", "_names", "_routes", "_taking")

    def __init__(self, members: Sequence[Member]) -> None:
        routes: dict[str, set[int]] = {}
        for m in members:
            for name in (m.config.model, *m.config.aliases):
                routes.setdefault(name, set()).add(m.index)
        size = len(members)
        # None stands for "every member": the picker's unfiltered (fastest) path.
        self._routes: dict[str, frozenset[int] | None] = {
            name: None if len(idx) == size else frozenset(idx) for name, idx in routes.items()
        }
        self._names = sorted(routes)
        self._members = list(members)
        self._kinds = {m.index: m.provider.media_kinds for m in members}
        # media kinds -> members whose vendor takes them all, filled on first use (a few kinds).
        self._taking: dict[frozenset[str], frozenset[int] | None] = {}

    def members_for(self, model: str | None) -> frozenset[int] | None:
        """The indexes of the members serving ``model`` (``None``: all of them).

        Raises:
            InvalidCallError: no member serves ``model``.
        """
        if model is None:
            return None
        try:
            return self._routes[model]
        except KeyError:
            raise InvalidCallError(
                f"no key of this pool serves model={model!r}; the pool serves: "
                f"{', '.join(self._names)} (a key's `aliases:` list adds names)"
            ) from None

    def members_taking(self, kinds: frozenset[str]) -> frozenset[int] | None:
        """The members whose vendor takes every media kind in ``kinds`` (``None``: all).

        Raises:
            InvalidCallError: no vendor of the pool takes them.
        """
        if not kinds:
            return None
        found = self._taking.get(kinds, False)
        if found is not False:
            return found  # type: ignore[return-value]
        able = frozenset(i for i, taken in self._kinds.items() if kinds <= taken)
        if not able:
            vendors = ", ".join(sorted({m.config.vendor for m in self._members}))
            raise InvalidCallError(
                f"no vendor of this pool ({vendors}) takes {' and '.join(sorted(kinds))} "
                "blocks; remove the block or add a key of a vendor that reads it"
            )
        result = None if len(able) == len(self._kinds) else able
        self._taking[kinds] = result
        return result

    def select(self, model: str | None, kinds: frozenset[str]) -> frozenset[int] | None:
        """The members that may serve a call with ``model=`` and media ``kinds`` (``None``: all).

        Raises:
            InvalidCallError: no member serves both; the message says which part failed.
        """
        by_model = self.members_for(model)
        by_media = self.members_taking(kinds)
        if by_media is None:
            return by_model
        if by_model is None:
            return by_media
        both = by_model & by_media
        if not both:
            raise InvalidCallError(
                f"no key serving model={model!r} takes {' and '.join(sorted(kinds))} blocks"
            )
        return both
