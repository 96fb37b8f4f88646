"""``BalancedEmbeddings``: a pool of embedding keys as one LangChain ``Embeddings``.

A large input is cut into batches no larger than the smallest batch limit in the pool and no
larger than an even share per available provider, so the batches spread over every key at once;
they run concurrently (threads on the sync path, tasks on the async one), each through the
balancer with its limits and failover, and come back in input order.
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, ClassVar

from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_pllm.balancer import Balancer
from langchain_pllm.balancer.picker import Member
from langchain_pllm.exceptions import PllmConfigError
from langchain_pllm.pool_face import Capability, PoolFace
from langchain_pllm.progress import BatchReport, embedding_progress
from langchain_pllm.providers.base import EmbeddingResult

__all__ = ["BalancedEmbeddings"]


class _VectorSpace:
    """What every embeddings face of one pool agrees on: batch size and each key's vector size.

    Kept per balancer (so shared exactly as the balancer is: by pool, settings and clock), not
    in it: the balancer is blind to what a face does with a provider.
    """

    __slots__ = ("batch_limit", "dims")

    def __init__(self, balancer: Balancer) -> None:
        self.batch_limit = min(m.provider.batch_limit for m in balancer.members)
        """Most texts per embeddings request that every provider of the pool takes."""
        self.dims: dict[str, int] = {}
        """Vector size each provider returned; one pool must use one size."""


_SPACES: weakref.WeakKeyDictionary[Balancer, _VectorSpace] = weakref.WeakKeyDictionary()
_SPACES_LOCK = threading.Lock()


def _vector_space_of(balancer: Balancer) -> _VectorSpace:
    """The ``_VectorSpace`` of the pool behind ``balancer`` (built on first use)."""
    with _SPACES_LOCK:
        space = _SPACES.get(balancer)
        if space is None:
            space = _SPACES[balancer] = _VectorSpace(balancer)
        return space


class BalancedEmbeddings(PoolFace, Embeddings):
    """A pool of embedding keys across vendors behind one LangChain ``Embeddings``.

    Setup:
        ``pip install langchain-pllm``; keys come from the config.

    Instantiate:
        .. code-block:: python

            from langchain_pllm import BalancedEmbeddings

            emb = BalancedEmbeddings.from_config("pllm.yaml")   # the ``embedding:`` section
            # or
            emb = BalancedEmbeddings(providers=[
                {"vendor": "openai", "api_key": "sk-...", "model": "text-embedding-3-small"},
                {"vendor": "openai", "api_key": "sk-...", "model": "text-embedding-3-small"},
            ])

    Embed single text:
        .. code-block:: python

            vector = emb.embed_query("hello")

    Embed multiple texts:
        .. code-block:: python

            vectors = emb.embed_documents(texts)   # order kept; batches spread over the keys

    Async:
        .. code-block:: python

            vector = await emb.aembed_query("hello")
            vectors = await emb.aembed_documents(texts)

    Progress:
        ``show_progress=True`` draws a ``PllmProgress`` of each ``embed_documents`` call;
        ``callbacks=[PllmProgress()]`` counts every call's texts and retries in one handler.

    Every provider of one pool must give vectors of the same dimension: a mismatch raises
    ``PllmConfigError`` naming both providers instead of mixing vector spaces.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    capability: ClassVar[Capability] = "embeddings"

    # The pool fields (providers, balancer, api_key, clock), from_config, balancer_instance and
    # get_stats come from PoolFace.
    max_concurrency: int = 16
    """Most batches in flight at once for one ``embed_documents`` call."""
    show_progress: bool = False
    """Draw a ``PllmProgress`` of each ``embed_documents`` call (as LangChain embeddings do)."""
    callbacks: list[Any] | None = Field(default=None, exclude=True, repr=False)
    """Handlers told of each finished batch: ``PllmProgress`` (``on_embed_*`` events)."""

    _space: _VectorSpace | None = PrivateAttr(default=None)

    @property
    def _vector_space(self) -> _VectorSpace:
        space = self._space
        if space is None:
            space = self._space = _vector_space_of(self.balancer_instance)
        return space

    # Planning ----------------------------------------------------------------------------------

    def _batches(self, texts: list[str], balancer: Balancer) -> list[tuple[int, list[str]]]:
        # An even share per key (keys that are open or resting just leave their share queued
        # for the others), cut to the smallest batch limit in the pool. Reading each key's live
        # state here would cost a round trip per key with the Redis state.
        limit = self._vector_space.batch_limit
        size = max(1, min(limit, math.ceil(len(texts) / len(balancer.members))))
        return [(start, texts[start : start + size]) for start in range(0, len(texts), size)]

    def _tokens(self, batch: list[str]) -> int:
        return sum(len(t) for t in batch) // 4 + len(batch) if self._has_tpm else 0

    def _vectors(self, member: Member, result: EmbeddingResult, texts: int) -> list[list[float]]:
        """The vectors of one batch, checked: one per text, of the pool's one size."""
        if result.vectors:
            self._check_dimension(member, result.vectors)
        if len(result.vectors) != texts:
            raise PllmConfigError(
                f"provider {member.config.id!r} returned {len(result.vectors)} vectors for "
                f"{texts} texts",
                field="embedding",
            )
        return result.vectors

    def _check_dimension(self, member: Member, vectors: list[list[float]]) -> None:
        dims = self._vector_space.dims
        dim = len(vectors[0])
        for pid, other in list(dims.items()):
            if other != dim:
                raise PllmConfigError(
                    f"providers {pid!r} ({other} dimensions) and {member.config.id!r} "
                    f"({dim} dimensions) give vectors of different sizes; one embeddings pool "
                    "must use one model (or dimension) everywhere",
                    field="embedding",
                )
        dims[member.config.id] = dim
        if any(len(v) != dim for v in vectors):
            raise PllmConfigError(
                f"provider {member.config.id!r} returned vectors of mixed sizes", field="embedding"
            )

    # Sync --------------------------------------------------------------------------------------

    def _embed_batch(
        self, balancer: Balancer, batch: list[str], report: BatchReport | None = None
    ) -> list[list[float]]:
        result, member, attempts = balancer.call(
            lambda p: p.embed(batch), tokens=self._tokens(batch), tokens_of=_tokens_of
        )
        vectors = self._vectors(member, result, len(batch))
        if report is not None:
            report.batch(len(batch), attempts)
        return vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts; batches spread over the pool concurrently, order kept."""
        if not texts:
            return []
        with embedding_progress(self.callbacks, self.show_progress, len(texts)) as report:
            return self._embed_all(list(texts), report)

    def _embed_all(self, texts: list[str], report: BatchReport | None = None) -> list[list[float]]:
        balancer = self.balancer_instance
        batches = self._batches(texts, balancer)
        if len(batches) == 1:
            return self._embed_batch(balancer, batches[0][1], report)
        out: list[list[float]] = [[] for _ in texts]
        workers = min(len(batches), self.max_concurrency)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pllm-embed")
        try:
            futures = {
                pool.submit(self._embed_batch, balancer, b, report): start for start, b in batches
            }
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in done:
                error = fut.exception()
                if error is not None:
                    # Fail fast: batches not yet started are dropped rather than spending
                    # quota on a result that would be thrown away.
                    raise error
            for fut, start in futures.items():
                vectors = fut.result()
                out[start : start + len(vectors)] = vectors
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return out

    def embed_query(self, text: str) -> list[float]:
        """Embed one text."""
        return self._embed_all([text])[0]

    # Async -------------------------------------------------------------------------------------

    async def _aembed_batch(
        self,
        balancer: Balancer,
        batch: list[str],
        gate: asyncio.Semaphore,
        report: BatchReport | None = None,
    ) -> list[list[float]]:
        async with gate:
            result, member, attempts = await balancer.acall(
                lambda p: p.aembed(batch), tokens=self._tokens(batch), tokens_of=_tokens_of
            )
        vectors = self._vectors(member, result, len(batch))
        if report is not None:
            report.batch(len(batch), attempts)
        return vectors

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async twin of ``embed_documents``."""
        if not texts:
            return []
        with embedding_progress(self.callbacks, self.show_progress, len(texts)) as report:
            return await self._aembed_all(list(texts), report)

    async def _aembed_all(
        self, texts: list[str], report: BatchReport | None = None
    ) -> list[list[float]]:
        balancer = self.balancer_instance
        batches = self._batches(texts, balancer)
        gate = asyncio.Semaphore(self.max_concurrency)
        tasks = [
            asyncio.ensure_future(self._aembed_batch(balancer, b, gate, report)) for _, b in batches
        ]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            # Fail fast: the other batches are cancelled (their keys released), not left
            # running to spend quota on a result nobody reads.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [v for vectors in results for v in vectors]

    async def aembed_query(self, text: str) -> list[float]:
        """Async twin of ``embed_query``."""
        return (await self._aembed_all([text]))[0]


def _tokens_of(result: EmbeddingResult) -> int | None:
    return result.tokens
