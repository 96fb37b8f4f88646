"""Google's Gemini API through ``google-genai`` (chat and embeddings): the calls and their errors.

Not the deprecated ``google-generativeai``, whose REST transport cannot stream. The wire format
(contents, tools, config, replies and stream chunks) is ``providers.google_convert``'s; this
module builds the client, makes the calls and classifies what the SDK raises. The balancer
retries, not the SDK: google-genai retries HTTP errors only under ``HttpRetryOptions``, but
without them its async (aiohttp) path retries a dropped connection once after sleeping 1 to 10
seconds, so the client is given ``HttpRetryOptions(attempts=1)``: a single attempt, which also
turns that implicit retry off. ``HttpOptions.timeout`` is in milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiohttp
import httpx2
import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelConnectionError,
    ModelInvalidRequestError,
    ModelTimeoutError,
)
from langchain_core.messages import AIMessage, AIMessageChunk

from langchain_pllm.exceptions import InvalidCallError, model_error
from langchain_pllm.providers.base import ChatRequest, EmbeddingResult, Provider
from langchain_pllm.providers.convert import error_object
from langchain_pllm.providers.errors import (
    caller_fault,
    class_for_status,
    mark_spent,
    overflow_or,
    parsing_reply,
    retry_after_of,
    spent_class,
)
from langchain_pllm.providers.google_convert import (
    GeminiStreamReader,
    embedding_result_of,
    message_of,
    request_args,
)
from langchain_pllm.providers.tls import bundled_context

__all__ = ["GoogleProvider", "classify_google_error"]

_OVERFLOW = re.compile(r"input token count.*exceeds|exceeds the maximum number of tokens", re.I)
_RETRY_DELAY = re.compile(r"^\s*([0-9.]+)s\s*$")


def _status_retry_after(exc: genai_errors.APIError) -> float | None:
    headers = getattr(exc.response, "headers", None)
    found = retry_after_of(headers) if headers is not None else None
    if found is not None:
        return found
    # Gemini's 429 body carries google.rpc.RetryInfo {"retryDelay": "13s"}.
    for item in error_object(exc.details).get("details") or ():
        if isinstance(item, Mapping) and "retryDelay" in item:
            match = _RETRY_DELAY.match(str(item["retryDelay"]))
            if match:
                return float(match.group(1))
    return None


def _day_quota_spent(exc: genai_errors.APIError) -> bool:
    """Whether a 429's ``QuotaFailure`` names a per-day quota: the day's quota is gone.

    One 429 may list several violations (per minute and per day together); any per-day one
    means the key cannot serve before the day resets, whatever else is listed.
    """
    for item in error_object(exc.details).get("details") or ():
        if isinstance(item, Mapping) and str(item.get("@type", "")).endswith("QuotaFailure"):
            for violation in item.get("violations") or ():
                if isinstance(violation, Mapping) and "PerDay" in str(violation.get("quotaId")):
                    return True
    return False


def classify_google_error(exc: BaseException, provider_id: str) -> BaseException:
    """Map a ``google-genai`` (or transport) exception onto a LangChain model error."""
    caller = caller_fault(exc, provider_id)
    if caller is not None:
        return caller
    if isinstance(exc, genai_errors.APIError):
        status = int(exc.code or 500)
        text = str(exc.message or "")
        spent = status == 429 and _day_quota_spent(exc)
        cls = spent_class(spent, overflow_or(class_for_status(status), text))
        if cls is ModelInvalidRequestError and _OVERFLOW.search(text):
            cls = ContextOverflowError
        return mark_spent(
            model_error(
                cls,
                f"{provider_id}: HTTP {status}: {exc.status or 'error'}: {text}",
                cause=exc,
                retry_after=_status_retry_after(exc) if status == 429 else None,
                status_code=status,
                provider=provider_id,
            ),
            spent,
        )
    if isinstance(exc, (httpx2.TimeoutException, asyncio.TimeoutError)):
        return model_error(
            ModelTimeoutError, f"{provider_id}: timed out", cause=exc, provider=provider_id
        )
    if isinstance(exc, (httpx2.TransportError, aiohttp.ClientError, ConnectionError)):
        return model_error(
            ModelConnectionError,
            f"{provider_id}: connection failed: {type(exc).__name__}",
            cause=exc,
            provider=provider_id,
        )
    if isinstance(exc, pydantic.ValidationError) and "Response" in str(exc.title):
        # The SDK validates the reply into its response models: a reply that does not fit is
        # the vendor's failure (retried elsewhere), not a bad request of ours.
        return model_error(
            ModelAPIError,
            f"{provider_id}: malformed response: {exc.title} does not validate",
            cause=exc,
            provider=provider_id,
        )
    if isinstance(exc, pydantic.ValidationError):
        return model_error(
            ModelInvalidRequestError,
            f"{provider_id}: request or reply does not fit google-genai's types: {exc}",
            cause=exc,
            provider=provider_id,
        )
    if isinstance(exc, (json.JSONDecodeError, genai_errors.UnknownApiResponseError)):
        return model_error(
            ModelAPIError,
            f"{provider_id}: malformed response: {type(exc).__name__}",
            cause=exc,
            provider=provider_id,
        )
    if isinstance(exc, ValueError):
        # google-genai checks a request before sending it ("contents are required"): the
        # caller's fault, the same on every key.
        err = InvalidCallError(f"{provider_id}: google-genai refused the request: {exc}")
        err.__cause__ = exc
        return err
    return exc


_SDK_ERRORS = (
    ValueError,
    genai_errors.APIError,
    genai_errors.UnknownApiResponseError,
    httpx2.HTTPError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
    json.JSONDecodeError,
    pydantic.ValidationError,
)


class GoogleProvider(Provider):
    """A key of Google's Gemini API (AI Studio), chat and embeddings."""

    vendor = "google"
    model_provider = "google_genai"
    supports_embeddings = True
    media_kinds = frozenset({"image", "file", "audio", "video"})
    embed_batch_limit = 100

    def _client(self) -> genai.Client:
        base = self.config.api_base.rstrip("/")
        version = "v1beta"
        for suffix in ("/v1beta", "/v1alpha", "/v1"):
            if base.endswith(suffix):
                base, version = base[: -len(suffix)], suffix[1:]
                break
        http: dict[str, Any] = {
            "base_url": base,
            "api_version": version,
            # Not a retry policy: one attempt. Without any retry options the aiohttp path
            # silently retries a dropped connection once, after sleeping 1-10 s.
            "retry_options": genai_types.HttpRetryOptions(attempts=1),
            # The context the SDK would build for its aiohttp session, built once (tls.py).
            "async_client_args": {"ssl": bundled_context()},
        }
        if self.config.timeout is not None:
            http["timeout"] = int(self.config.timeout * 1000)  # milliseconds
        return genai.Client(
            api_key=self.config.api_key.get_secret_value(),
            http_options=genai_types.HttpOptions(**http),
        )

    def _build_sync_client(self) -> Any:
        return self._client()

    def _build_async_client(self) -> Any:
        # The Client itself is kept (per loop): a dropped Client closes the `.aio` it owns.
        return self._client()

    def _request(self, request: ChatRequest) -> dict[str, Any]:
        return request_args(
            request.params,
            request.messages,
            model=self.model,
            timeout=self.attempt_timeout(request),
            provider_id=self.id,
            warn_once=self.warn_once,
        )

    def _message(self, resp: Any) -> AIMessage:
        with parsing_reply(self.id):
            return message_of(resp, model=self.model, model_provider=self.model_provider)

    # Chat --------------------------------------------------------------------------------------

    def chat(self, request: ChatRequest) -> AIMessage:
        """One ``generateContent`` call."""
        args = self._request(request)
        try:
            resp = self.sync_client.models.generate_content(**args)
        except _SDK_ERRORS as e:
            raise classify_google_error(e, self.id) from e
        return self._message(resp)

    async def achat(self, request: ChatRequest) -> AIMessage:
        """One ``generateContent`` call, async."""
        args = self._request(request)
        try:
            resp = await self.async_client.aio.models.generate_content(**args)
        except _SDK_ERRORS as e:
            raise classify_google_error(e, self.id) from e
        return self._message(resp)

    def stream(self, request: ChatRequest) -> Iterator[AIMessageChunk]:
        """Stream a ``streamGenerateContent`` call."""
        args = self._request(request)
        reader = GeminiStreamReader()
        try:
            for resp in self.sync_client.models.generate_content_stream(**args):
                with parsing_reply(self.id):
                    chunk = reader.chunk(resp)
                if chunk is not None:
                    yield chunk
        except _SDK_ERRORS as e:
            raise classify_google_error(e, self.id) from e
        with parsing_reply(self.id):
            last = reader.last_chunk()
        yield last

    async def astream(self, request: ChatRequest) -> AsyncIterator[AIMessageChunk]:
        """Stream a ``streamGenerateContent`` call, async."""
        args = self._request(request)
        reader = GeminiStreamReader()
        try:
            responses = await self.async_client.aio.models.generate_content_stream(**args)
            async for resp in responses:
                with parsing_reply(self.id):
                    chunk = reader.chunk(resp)
                if chunk is not None:
                    yield chunk
        except _SDK_ERRORS as e:
            raise classify_google_error(e, self.id) from e
        with parsing_reply(self.id):
            last = reader.last_chunk()
        yield last

    # Embeddings --------------------------------------------------------------------------------

    def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        """One ``batchEmbedContents`` call (at most 100 texts)."""
        try:
            resp = self.sync_client.models.embed_content(
                model=self.model, contents=texts, config=_embed_config(dimensions)
            )
        except _SDK_ERRORS as e:
            raise classify_google_error(e, self.id) from e
        with parsing_reply(self.id):
            return embedding_result_of(resp)

    async def aembed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        """One ``batchEmbedContents`` call, async."""
        try:
            resp = await self.async_client.aio.models.embed_content(
                model=self.model, contents=texts, config=_embed_config(dimensions)
            )
        except _SDK_ERRORS as e:
            raise classify_google_error(e, self.id) from e
        with parsing_reply(self.id):
            return embedding_result_of(resp)


def _embed_config(dimensions: int | None) -> genai_types.EmbedContentConfig | None:
    return (
        None
        if dimensions is None
        else genai_types.EmbedContentConfig(output_dimensionality=dimensions)
    )
