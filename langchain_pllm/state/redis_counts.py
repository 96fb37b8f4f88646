"""The Redis state's reads and counters: snapshots, fleet-wide counts, conversation affinity.

Calls that reserve nothing: they read a key (``snapshot``), add to its counters
(``count_validation_failure``, ``count_spend``) or keep which key served a conversation. Each
is one script or command; while Redis is away they answer from, or count into, the local
fallback. ``RedisReads`` is a mixin of ``RedisState`` (``redis.py``), which holds the
connections, the fallback and the layout these calls use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_pllm.state.base import KeySnapshot, Limits, Periods
from langchain_pllm.state.redis_client import UNAVAILABLE
from langchain_pllm.state.redis_scripts import COUNT_SPEND, COUNT_VALIDATION, SNAPSHOT

if TYPE_CHECKING:
    from langchain_pllm.state.fallback import LocalFallback
    from langchain_pllm.state.redis_client import AsyncClient, SyncClient
    from langchain_pllm.state.redis_layout import RedisLayout
    from langchain_pllm.state.redis_scripts import Script

__all__ = ["RedisReads"]


class RedisReads:
    """Snapshots, counters and conversation affinity of ``RedisState`` (a mixin)."""

    _client: SyncClient
    _fallback: LocalFallback
    _layout: RedisLayout

    if TYPE_CHECKING:  # provided by RedisState

        def _run(self, script: Script, keys: tuple[str, ...], args: tuple[str, ...]) -> Any: ...

        async def _arun(
            self, script: Script, keys: tuple[str, ...], args: tuple[str, ...]
        ) -> Any: ...

        def _aclient(self) -> AsyncClient: ...

        def _usable(self, now: float) -> bool: ...

        async def _ausable(self, now: float) -> bool: ...

        def _away(self, exc: BaseException, now: float | None = None) -> None: ...

    def snapshot(
        self, key: str, limits: Limits, now: float, periods: Periods | None = None
    ) -> KeySnapshot:
        """Read a key's fleet-wide state (this process's own while Redis is away)."""
        fallback = self._fallback
        if fallback.active and not self._usable(now):
            return fallback.snapshot(key, limits, now)
        try:
            reply = self._run(SNAPSHOT, *self._layout.snapshot(key, limits, now, periods))
        except UNAVAILABLE as exc:
            self._away(exc, now)
            return fallback.snapshot(key, limits, now)
        return self._layout.snapshot_of(reply, now)

    async def asnapshot(
        self, key: str, limits: Limits, now: float, periods: Periods | None = None
    ) -> KeySnapshot:
        """Async twin of ``snapshot``."""
        fallback = self._fallback
        if fallback.active and not await self._ausable(now):
            return fallback.snapshot(key, limits, now)
        try:
            reply = await self._arun(SNAPSHOT, *self._layout.snapshot(key, limits, now, periods))
        except UNAVAILABLE as exc:
            self._away(exc, now)
            return fallback.snapshot(key, limits, now)
        return self._layout.snapshot_of(reply, now)

    def count_validation_failure(self, key: str) -> None:
        """Count an output that failed its validator, fleet-wide.

        While Redis is away it is counted locally, and this call never tries Redis again:
        it has no ``now`` to replay the fallback's starts with.
        """
        fallback = self._fallback
        if fallback.active:
            fallback.local.count_validation_failure(key)
            return
        try:
            self._run(COUNT_VALIDATION, *self._layout.count_validation(key))
        except UNAVAILABLE as exc:
            self._away(exc)
            fallback.local.count_validation_failure(key)

    async def acount_validation_failure(self, key: str) -> None:
        """Async twin of ``count_validation_failure``."""
        fallback = self._fallback
        if fallback.active:
            fallback.local.count_validation_failure(key)
            return
        try:
            await self._arun(COUNT_VALIDATION, *self._layout.count_validation(key))
        except UNAVAILABLE as exc:
            self._away(exc)
            fallback.local.count_validation_failure(key)

    def count_spend(self, key: str, cost: float, cached_tokens: int) -> None:
        """Add a reply's cost and cached tokens to the fleet's totals of ``key``.

        Locally while Redis is away, like ``count_validation_failure`` (and not replayed).
        """
        fallback = self._fallback
        if fallback.active:
            fallback.local.count_spend(key, cost, cached_tokens)
            return
        try:
            self._run(COUNT_SPEND, *self._layout.count_spend(key, cost, cached_tokens))
        except UNAVAILABLE as exc:
            self._away(exc)
            fallback.local.count_spend(key, cost, cached_tokens)

    async def acount_spend(self, key: str, cost: float, cached_tokens: int) -> None:
        """Async twin of ``count_spend``."""
        fallback = self._fallback
        if fallback.active:
            fallback.local.count_spend(key, cost, cached_tokens)
            return
        try:
            await self._arun(COUNT_SPEND, *self._layout.count_spend(key, cost, cached_tokens))
        except UNAVAILABLE as exc:
            self._away(exc)
            fallback.local.count_spend(key, cost, cached_tokens)

    def recall_conversation(self, digest: bytes) -> str | None:
        """The key that served conversation ``digest`` last, fleet-wide (``None``: Redis away)."""
        if self._fallback.active:
            return None  # the balancer's own map answers meanwhile
        try:
            found = self._client.get(self._layout.conversation_key(digest))
        except UNAVAILABLE as exc:
            self._away(exc)
            return None
        return found if isinstance(found, str) else None

    async def arecall_conversation(self, digest: bytes) -> str | None:
        """Async twin of ``recall_conversation``."""
        if self._fallback.active:
            return None
        try:
            found = await self._aclient().get(self._layout.conversation_key(digest))
        except UNAVAILABLE as exc:
            self._away(exc)
            return None
        return found if isinstance(found, str) else None

    def remember_conversation(self, digest: bytes, key: str, ttl: float) -> None:
        """Note fleet-wide that ``key`` served conversation ``digest``, for ``ttl`` seconds."""
        if self._fallback.active:
            return
        try:
            self._client.set(self._layout.conversation_key(digest), key, px=int(ttl * 1000))
        except UNAVAILABLE as exc:
            self._away(exc)

    async def aremember_conversation(self, digest: bytes, key: str, ttl: float) -> None:
        """Async twin of ``remember_conversation``."""
        if self._fallback.active:
            return
        try:
            await self._aclient().set(
                self._layout.conversation_key(digest), key, px=int(ttl * 1000)
            )
        except UNAVAILABLE as exc:
            self._away(exc)
