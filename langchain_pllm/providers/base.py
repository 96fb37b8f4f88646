"""What a provider is: one API key and model of one vendor, spoken to through its official SDK.

A provider converts LangChain messages to its vendor's wire format and back, and classifies
every SDK exception once into LangChain's model errors (see ``langchain_pllm.exceptions``).
It knows nothing of balancing: it is handed a request and either returns an ``AIMessage`` /
yields ``AIMessageChunk``s or raises a classified error. Like httpx's transports it is a pair
of sync and async twins; SDK clients are built lazily, once per provider (and, for async
clients, once per event loop, since their connection pools belong to a loop).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage

from langchain_pllm.providers.transport import declare_key, pooled_sdk_client

if TYPE_CHECKING:
    from langchain_pllm.config import ProviderConfig

__all__ = [
    "ATTEMPT_BUDGET",
    "REPLY_ESTIMATE",
    "ChatRequest",
    "EmbeddingResult",
    "Provider",
    "estimate_tokens",
    "pooled_sdk_client",
]

C = TypeVar("C")


@dataclass(slots=True)
class ChatRequest:
    """One chat request as the faces hand it to a provider.

    ``params`` holds the standard LangChain call parameters under their LangChain names
    (``temperature``, ``max_tokens``, ``top_p``, ``stop``, ``tools`` in OpenAI tool format,
    ``tool_choice``, ``response_format``, ``parallel_tool_calls``, ...); each provider maps them
    to its vendor's names and drops (with a warning, once) what its vendor does not take.
    """

    messages: Sequence[BaseMessage]
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None


@dataclass(slots=True)
class EmbeddingResult:
    """Vectors for one batch, in input order, and the tokens the vendor counted (if it said)."""

    vectors: list[list[float]]
    tokens: int | None = None


class _PerLoop(Generic[C]):
    """One object per running event loop, dropped with the loop."""

    __slots__ = ("_by_loop",)

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, C] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, build: Any) -> C:
        loop = asyncio.get_running_loop()
        obj = self._by_loop.get(loop)
        if obj is None:
            obj = self._by_loop[loop] = build()
        return obj


# Seconds left before the current request's overall deadline (``balancer.request_timeout``),
# set by the balancer around each attempt when a deadline exists.
ATTEMPT_BUDGET: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "pllm_attempt_budget", default=None
)


class Provider:
    """Base class of every vendor provider, and the extension point for a vendor of your own.

    A provider is one key and model of one vendor (``self.config``, a ``ProviderConfig``); the
    balancer builds one per pool entry and calls it from many threads and event loops at once.
    To add a vendor, subclass ``Provider`` and register it; a config can then name it like a
    built-in vendor (a ``myvendor:`` section, ``use: myvendor``, ``{"vendor": "myvendor"}``):

    .. code-block:: python

        from langchain_pllm import register_vendor
        from langchain_pllm.providers import Provider

        class MyProvider(Provider):
            model_provider = "myvendor"
            ...

        register_vendor("myvendor", MyProvider, api_base="https://api.example.com/v1")

    What a subclass provides:

    - ``model_provider`` (required): the vendor name LangChain reads from
      ``response_metadata["model_provider"]``; ``register_vendor`` refuses a class without it.
    - ``chat``/``achat`` (a chat vendor): take a ``ChatRequest`` (``request.params`` holds
      LangChain's call parameters under their LangChain names: map the ones your vendor takes,
      drop the others with ``warn_once``) and return an ``AIMessage`` with ``usage_metadata``
      when the vendor counts tokens (the balancer settles token limits from it) and
      ``response_metadata`` ``finish_reason`` and ``model_name``. Bound the call with
      ``attempt_timeout(request)``.
    - ``stream``/``astream``: yield ``AIMessageChunk``s; usage, if any, rides on exactly one
      chunk. A failure before the first chunk is retried on another key unseen by the caller.
    - ``embed``/``aembed`` (an embeddings vendor, with ``supports_embeddings = True``): take at
      most ``batch_limit`` texts (``embed_batch_limit`` is the vendor's own cap; a config's
      ``batch_size`` overrides it) and return an ``EmbeddingResult`` with vectors in input order.
    - **Errors**: raise only ``langchain_core.exceptions`` model errors, built with
      ``langchain_pllm.exceptions.model_error`` so they carry ``retry_after``, ``status_code``
      and ``provider`` (``self.id``), with the SDK error as the cause. The balancer reads nothing
      else: ``ModelRateLimitError`` rests the key for ``retry_after``; ``ModelAPIError``,
      ``ModelConnectionError`` and ``ModelTimeoutError`` count toward its breaker and retry
      elsewhere; ``ModelAuthenticationError``, ``ModelPermissionDeniedError`` and
      ``ModelNotFoundError`` open its breaker at once; ``ModelInvalidRequestError``,
      ``ContextOverflowError`` and ``ModelRefusalError`` reach the caller at once. Any other
      exception reaches the caller unretried. ``class_for_status`` and ``retry_after_of`` map an
      HTTP status and headers for you.
    - Clients (optional): ``_build_sync_client``/``_build_async_client`` build your SDK's
      clients; ``sync_client`` builds one per provider and ``async_client`` one per event loop,
      on first use. A provider that needs no client leaves them alone.

    Sync methods must not run an event loop (``asyncio.run``): notebooks already run one.
    """

    vendor: ClassVar[str]
    """Config name of the built-in vendor (``openai``, ``anthropic``...); a registered provider
    may leave it out (its config's ``vendor`` names it)."""
    model_provider: ClassVar[str]
    """LangChain's name for the vendor in ``response_metadata["model_provider"]``."""
    supports_chat: ClassVar[bool] = True
    supports_embeddings: ClassVar[bool] = False
    """Whether the vendor has an embeddings API; an embeddings pool refuses a vendor without."""
    embed_batch_limit: ClassVar[int] = 2048
    """Most texts the vendor takes in one embeddings request."""
    media_kinds: ClassVar[frozenset[str]] = frozenset({"image"})
    """Kinds of media block (``image``, ``file``, ``audio``, ``video``) the vendor takes in a
    request; a call holding another kind goes only to keys whose vendor takes it."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        declare_key(config)  # before any client: the endpoint's shared pool is sized from it
        self.id = config.id
        self.model = config.model
        self._sync_client: Any = None
        self._async_clients: _PerLoop[Any] = _PerLoop()
        self._build_lock = threading.Lock()
        self._warned: set[str] = set()

    # Clients -----------------------------------------------------------------------------------

    @property
    def sync_client(self) -> Any:
        """The SDK's sync client, built on first use."""
        client = self._sync_client
        if client is None:
            with self._build_lock:  # two threads must not each build (and leak) a client
                client = self._sync_client
                if client is None:
                    client = self._sync_client = self._build_sync_client()
        return client

    def attempt_timeout(self, request: ChatRequest) -> float | None:
        """Seconds this attempt may take (``None``: the SDK's default).

        The tightest of the key's own ``timeout``, the call's ``timeout`` and what is left of
        the request's overall deadline (``balancer.request_timeout``).
        """
        timeout = self.config.timeout
        if request.timeout is not None and (timeout is None or request.timeout < timeout):
            timeout = request.timeout
        budget = ATTEMPT_BUDGET.get()
        if budget is not None and (timeout is None or budget < timeout):
            timeout = max(budget, 0.001)
        return timeout

    def prepare(self, asynchronous: bool) -> None:
        """Build the client a call is about to need, before a rate-limit slot is reserved.

        Building an SDK client takes milliseconds; doing it after the reservation would start
        the first request late and crowd the window's requests together.
        """
        if asynchronous:
            self._async_clients.get(self._build_async_client)
        elif self._sync_client is None:
            _ = self.sync_client

    @property
    def async_client(self) -> Any:
        """The SDK's async client for the running event loop, built on first use."""
        return self._async_clients.get(self._build_async_client)

    def _build_sync_client(self) -> Any:
        """Build the SDK's sync client; ``None`` (the default) for a provider without one."""
        return None

    def _build_async_client(self) -> Any:
        """Build the SDK's async client for the running loop; ``None`` (default) for none."""
        return None

    @property
    def batch_limit(self) -> int:
        """Most texts per embeddings request for this provider."""
        return self.config.batch_size or self.embed_batch_limit

    # Chat --------------------------------------------------------------------------------------

    def chat(self, request: ChatRequest) -> AIMessage:
        """Send one chat request; return the reply or raise a classified model error."""
        raise NotImplementedError(f"{self.config.vendor} does not serve chat")

    async def achat(self, request: ChatRequest) -> AIMessage:
        """Async twin of ``chat``."""
        raise NotImplementedError(f"{self.config.vendor} does not serve chat")

    def stream(self, request: ChatRequest) -> Iterator[AIMessageChunk]:
        """Stream one chat request. Usage, if any, rides on exactly one chunk (not cumulative)."""
        raise NotImplementedError(f"{self.config.vendor} does not stream chat")

    def astream(self, request: ChatRequest) -> AsyncIterator[AIMessageChunk]:
        """Async twin of ``stream``."""
        raise NotImplementedError(f"{self.config.vendor} does not stream chat")

    # Embeddings --------------------------------------------------------------------------------

    def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        """Embed one batch (at most ``batch_limit`` texts).

        ``dimensions``: the vector size the face asks for (sent to vendors that take one);
        given only when set, so a provider of your own may leave the argument out.
        """
        raise NotImplementedError(f"{self.config.vendor} does not serve embeddings")

    async def aembed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        """Async twin of ``embed``."""
        raise NotImplementedError(f"{self.config.vendor} does not serve embeddings")

    # Helpers -----------------------------------------------------------------------------------

    def warn_once(self, what: str, message: str) -> None:
        """Warn about a dropped parameter once per provider, not once per request."""
        if what not in self._warned:
            self._warned.add(what)
            import warnings

            warnings.warn(message, stacklevel=3)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, model={self.model!r})"


REPLY_ESTIMATE = 256
"""Reply tokens reserved (tokens, cost) for a request without ``max_tokens``."""


def estimate_tokens(messages: Sequence[BaseMessage], max_tokens: int | None) -> int:
    """A cheap upper-leaning guess of a request's tokens, reserved before the call.

    Four characters a token for the prompt, plus the reply budget (or ``REPLY_ESTIMATE`` when
    unbounded); the real usage replaces the guess when the reply arrives.
    """
    chars = 0
    for m in messages:
        content = m.content
        if isinstance(content, str):
            chars += len(content)
        else:
            for block in content:
                chars += len(block) if isinstance(block, str) else len(str(block.get("text", "")))
    return chars // 4 + 4 * len(messages) + (max_tokens if max_tokens else REPLY_ESTIMATE)
