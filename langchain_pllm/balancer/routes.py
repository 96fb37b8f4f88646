"""Which keys a call's ``model=`` may go to: the members serving that model or alias.

A call's ``model=`` picks keys, it does not rewrite them: ``invoke(..., model="gpt-4o")`` on a
pool of OpenAI and Anthropic keys goes only to the keys whose ``model`` (or one of whose
``aliases``) is ``gpt-4o``, balanced among them as usual, and each key still sends its own
model name. That makes groups in one pool possible (``aliases: [fast]`` on the cheap keys,
``model="fast"`` on a call). A name no key serves is the caller's mistake, raised before any
key is tried, listing what the pool serves.

The table is built once per balancer; a lookup is one dict read.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_pllm.balancer.picker import Member
from langchain_pllm.exceptions import InvalidCallError

__all__ = ["ModelRoutes"]


class ModelRoutes:
    """Model name or alias -> the member indexes serving it."""

    __slots__ = ("_names", "_routes")

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
