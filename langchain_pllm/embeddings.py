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
from langchain_core.exceptions import ModelAPIError
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_pllm.balancer import Balancer
from langchain_pllm.balancer.metrics import operation
from langchain_pllm.balancer.recent import TokenUsage
from langchain_pllm.config import PoolConfig, ProviderConfig
from langchain_pllm.exceptions import PllmConfigError, model_error
from langchain_pllm.pool_face import Capability, PoolFace
from langchain_pllm.preflight import check_texts
from langchain_pllm.progress import BatchReport, embedding_progress
from langchain_pllm.providers.base import EmbeddingResult, Provider

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
        self.dims: dict[int | None, int] = {}
        """The pool's vector size per requested ``dimensions`` (``None``: the model's own),
        learned from the first good reply; a key answering another size is failing."""


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

    One vector space per pool: every provider names the same ``model`` (or entries declare
    the same ``vector_space:``, one open model served by two vendors under two names), else
    ``PllmConfigError`` at construction naming both entries. A reply with the wrong number of
    vectors, or vectors of another size than the pool's, is that key's failure: it counts
    toward its breaker and the batch fails over to another key.
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
    dimensions: int | None = None
    """Vector size to ask for, sent to the vendors that take one (OpenAI ``dimensions``,
    Gemini ``outputDimensionality``, Zhipu ``dimensions``); every vector must have it."""

    _space: _VectorSpace | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        """Validate the pool (one vector space) and the balancer settings."""
        super().__init__(**data)
        _check_one_space(self._pool)

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

    def _checked(self, provider: Provider, result: EmbeddingResult, texts: int) -> EmbeddingResult:
        """One batch's reply, checked inside the attempt: a wrong reply fails that key.

        One vector per text, each of the pool's one size (``dimensions``, else the size of the
        first good reply). Raised as ``ModelAPIError`` so the balancer counts it toward the
        key's breaker and sends the batch to another key.
        """
        vectors = result.vectors
        problem = None
        if len(vectors) != texts:
            problem = f"{len(vectors)} vectors for {texts} texts"
        else:
            dims = self._vector_space.dims
            want = self.dimensions or dims.get(None)
            sizes = {len(v) for v in vectors}
            if want is None and len(sizes) == 1:
                want = dims.setdefault(None, sizes.pop())
                sizes = {want}
            if sizes != {want}:
                problem = (
                    f"vectors of {sorted(sizes)} dimensions where the pool's are {want}: "
                    "the same model should not give another size"
                )
        if problem is not None:
            raise model_error(
                ModelAPIError,
                f"{provider.id}: wrong embeddings reply: {problem}",
                provider=provider.id,
            )
        return result

    def _embed(self, provider: Provider, batch: list[str]) -> EmbeddingResult:
        if self.dimensions is None:
            return self._checked(provider, provider.embed(batch), len(batch))
        result = provider.embed(batch, dimensions=self.dimensions)
        return self._checked(provider, result, len(batch))

    async def _aembed(self, provider: Provider, batch: list[str]) -> EmbeddingResult:
        if self.dimensions is None:
            result = await provider.aembed(batch)
        else:
            result = await provider.aembed(batch, dimensions=self.dimensions)
        return self._checked(provider, result, len(batch))

    # Sync --------------------------------------------------------------------------------------

    def _embed_batch(
        self, balancer: Balancer, batch: list[str], report: BatchReport | None = None
    ) -> list[list[float]]:
        with operation("embeddings"):
            result, _, attempts = balancer.call(
                lambda p: self._embed(p, batch), tokens=self._tokens(batch), tokens_of=_tokens_of
            )
        vectors = result.vectors
        if report is not None:
            report.batch(len(batch), attempts)
        return vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts; batches spread over the pool concurrently, order kept."""
        texts = check_texts(texts)
        if not texts:
            return []
        with embedding_progress(self.callbacks, self.show_progress, len(texts)) as report:
            return self._embed_all(texts, report)

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
        return self._embed_all(check_texts([text]))[0]

    # Async -------------------------------------------------------------------------------------

    async def _aembed_batch(
        self,
        balancer: Balancer,
        batch: list[str],
        gate: asyncio.Semaphore,
        report: BatchReport | None = None,
    ) -> list[list[float]]:
        async with gate:
            with operation("embeddings"):
                result, _, attempts = await balancer.acall(
                    lambda p: self._aembed(p, batch),
                    tokens=self._tokens(batch),
                    tokens_of=_tokens_of,
                )
        vectors = result.vectors
        if report is not None:
            report.batch(len(batch), attempts)
        return vectors

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async twin of ``embed_documents``."""
        texts = check_texts(texts)
        if not texts:
            return []
        with embedding_progress(self.callbacks, self.show_progress, len(texts)) as report:
            return await self._aembed_all(texts, report)

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
        return (await self._aembed_all(check_texts([text])))[0]


def _tokens_of(result: EmbeddingResult) -> int | None:
    # Embeddings have input tokens only.
    return None if result.tokens is None else TokenUsage(result.tokens, 0)


def _check_one_space(pool: PoolConfig) -> None:
    """Every entry of an embeddings pool in one vector space, or ``PllmConfigError``.

    An entry's space is its ``vector_space`` if it declares one, else its ``model``: vectors
    of two models are not comparable even when their sizes match (``text-embedding-ada-002``
    and ``text-embedding-3-small`` are both 1536 wide).
    """
    first = pool.providers[0]
    space = first.vector_space or first.model
    for i, p in enumerate(pool.providers[1:], start=1):
        other = p.vector_space or p.model
        if other != space:
            raise PllmConfigError(
                f"providers {first.id!r} ({_space_name(first)}) and {p.id!r} "
                f"({_space_name(p)}) are in different vector spaces; one embeddings pool must "
                "use one model, or entries serving one model under two names must declare the "
                "same `vector_space:`",
                field=f"providers[{i}]",
            )


def _space_name(p: ProviderConfig) -> str:
    if p.vector_space:
        return f"vector_space {p.vector_space!r}, model {p.model!r}"
    return f"model {p.model!r}"
