"""OpenAI and the vendors speaking its wire format (SiliconFlow, DeepSeek), via the ``openai`` SDK.

Messages become Chat Completions dicts; replies become ``AIMessage``s with ``usage_metadata``
and the response metadata LangChain's own ``ChatOpenAI`` sets. Every ``openai`` exception is
classified here, once. The SDK's own retries are off (``max_retries=0``): the balancer retries,
on another key.
"""

from __future__ import annotations

import array
import base64
import json
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
from langchain_core.exceptions import ModelAPIError, ModelConnectionError, ModelTimeoutError
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk

from langchain_pllm.exceptions import model_error
from langchain_pllm.providers.base import (
    ChatRequest,
    EmbeddingResult,
    Provider,
    pooled_sdk_client,
)
from langchain_pllm.providers.convert import make_usage, to_openai_messages
from langchain_pllm.providers.errors import (
    SHAPE_ERRORS,
    caller_fault,
    class_for_status,
    malformed_reply,
    mark_spent,
    overflow_or,
    parsing_reply,
    retry_after_of,
    says_balance,
    spent_class,
)
from langchain_pllm.providers.rate_headers import openai_limits, openai_rest, report
from langchain_pllm.providers.transport import aiohttp_connection_failure

__all__ = ["DeepSeekProvider", "OpenAIProvider", "SiliconFlowProvider", "classify_openai_error"]

# Newer OpenAI models refuse max_tokens; compatible servers only know max_tokens.
_COMPLETION_TOKENS_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def classify_openai_error(exc: BaseException, provider_id: str) -> BaseException:
    """Map an ``openai`` SDK exception onto a LangChain model error (cause kept)."""
    caller = caller_fault(exc, provider_id)
    if caller is not None:
        return caller
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"{provider_id}: HTTP {status}: {exc.message}"
        spent = _is_spent(exc)
        cls = spent_class(spent, overflow_or(class_for_status(status), f"{exc.message} {exc.code}"))
        return mark_spent(
            model_error(
                cls,
                message,
                cause=exc,
                retry_after=retry_after_of(exc.response.headers),
                status_code=status,
                provider=provider_id,
            ),
            spent,
        )
    if isinstance(exc, openai.APITimeoutError) and not aiohttp_connection_failure(exc):
        return model_error(
            ModelTimeoutError, f"{provider_id}: timed out", cause=exc, provider=provider_id
        )
    if isinstance(exc, openai.APIConnectionError):
        return model_error(
            ModelConnectionError,
            f"{provider_id}: connection failed: {exc}",
            cause=exc,
            provider=provider_id,
        )
    if isinstance(exc, (openai.APIResponseValidationError, json.JSONDecodeError, openai.APIError)):
        return model_error(
            ModelAPIError,
            f"{provider_id}: malformed response: {exc}",
            cause=exc,
            provider=provider_id,
        )
    return exc


# UnicodeEncodeError: text the SDK cannot encode while writing the body (the caller's fault).
_SDK_ERRORS = (openai.OpenAIError, json.JSONDecodeError, UnicodeEncodeError)


def _is_spent(exc: openai.APIStatusError) -> bool:
    """OpenAI's 429 ``insufficient_quota``, DeepSeek's 402, SiliconFlow's 403 about balance."""
    status = exc.status_code
    if status == 402:
        return True
    if status == 429:
        return "insufficient_quota" in (exc.code, exc.type)
    return status == 403 and says_balance(str(exc.message))


def _usage(u: dict[str, Any] | None) -> UsageMetadata | None:
    if not u:
        return None
    return make_usage(
        u.get("prompt_tokens") or 0,
        u.get("completion_tokens") or 0,
        u.get("total_tokens") or None,  # a 0 total beside counts is a server's omission
        cache_read=(u.get("prompt_tokens_details") or {}).get("cached_tokens"),
        reasoning=(u.get("completion_tokens_details") or {}).get("reasoning_tokens"),
    )


class OpenAIProvider(Provider):
    """A key of OpenAI (or of a server that speaks its Chat Completions format)."""

    vendor = "openai"
    model_provider = "openai"
    supports_embeddings = True
    media_kinds = frozenset({"image", "file", "audio"})
    embed_batch_limit = 2048

    def _build_sync_client(self) -> Any:
        return pooled_sdk_client(openai.OpenAI, self.config)

    def _build_async_client(self) -> Any:
        return pooled_sdk_client(openai.AsyncOpenAI, self.config)

    # Request -----------------------------------------------------------------------------------

    def _payload(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        params = request.params
        model = params.get("model") or self.model
        payload: dict[str, Any] = {"model": model, "messages": to_openai_messages(request.messages)}
        for key, value in params.items():
            if value is None or key == "model":
                continue
            if key == "max_tokens":
                # Newer OpenAI models refuse max_tokens; compatible servers only know it.
                if self.vendor == "openai" and model.startswith(_COMPLETION_TOKENS_PREFIXES):
                    key = "max_completion_tokens"
                payload[key] = value
            elif key == "stop":
                if value:
                    payload["stop"] = value
            elif key == "extra_body":
                payload.update(value)
            else:
                # Everything else goes to the vendor as given: OpenAI-compatible servers take
                # their own extras (top_k, enable_thinking, ...) at the top level of the body.
                payload[key] = value
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return payload

    def _options(self, request: ChatRequest) -> dict[str, Any]:
        timeout = self.attempt_timeout(request)
        return {"timeout": timeout} if timeout is not None else {}

    # Reply -------------------------------------------------------------------------------------

    def _message(self, resp: dict[str, Any]) -> AIMessage:
        choice = resp["choices"][0]
        msg = choice.get("message") or {}
        tool_calls = []
        invalid = []
        for tc in msg.get("tool_calls") or ():
            fn = tc.get("function") or {}
            raw_args = fn.get("arguments")
            try:
                args = json.loads(raw_args) if raw_args else {}
                if not isinstance(args, dict):
                    raise TypeError(f"tool arguments must be a JSON object, got {raw_args!r}")
                tool_calls.append(tool_call(name=fn.get("name", ""), args=args, id=tc.get("id")))
            except (json.JSONDecodeError, TypeError) as e:
                invalid.append(
                    invalid_tool_call(
                        name=fn.get("name"), args=raw_args, id=tc.get("id"), error=str(e)
                    )
                )
        metadata: dict[str, Any] = {
            "finish_reason": choice.get("finish_reason"),
            "model_name": resp.get("model") or self.model,
            "model_provider": self.model_provider,
            "id": resp.get("id"),
        }
        if resp.get("system_fingerprint"):
            metadata["system_fingerprint"] = resp["system_fingerprint"]
        kwargs: dict[str, Any] = {}
        if msg.get("refusal"):
            kwargs["refusal"] = msg["refusal"]
        if msg.get("reasoning_content"):
            kwargs["reasoning_content"] = msg["reasoning_content"]  # DeepSeek's reasoner
        return AIMessage(
            content=msg.get("content") or "",
            tool_calls=tool_calls,
            invalid_tool_calls=invalid,
            usage_metadata=_usage(resp.get("usage")),
            response_metadata=metadata,
            additional_kwargs=kwargs,
            id=resp.get("id"),
        )

    def _chunk(
        self, chunk: dict[str, Any], usage: UsageMetadata | None
    ) -> tuple[AIMessageChunk | None, UsageMetadata | None]:
        """One SSE chunk as a message chunk, and the usage seen so far.

        Usage is held back and sent once, after the stream: servers differ (on the finish chunk,
        on a final ``include_usage`` chunk, cumulative on every chunk), and summing the chunks
        of a stream would count it more than once. The last report is the total.
        """
        usage = _usage(chunk.get("usage")) or usage
        choices = chunk.get("choices")
        if not choices:
            return None, usage
        choice = choices[0]
        delta = choice.get("delta") or {}
        finish = choice.get("finish_reason")
        content = delta.get("content")
        deltas = delta.get("tool_calls")
        extra: dict[str, Any] = {}
        for key in ("reasoning_content", "refusal"):
            if delta.get(key):
                extra[key] = delta[key]
        if not finish and not content and not deltas and not extra:
            # The opening role-only chunk carries nothing: skipping it keeps "before the first
            # chunk" meaning "before any content", so a stream that dies at once fails over.
            return None, usage
        tool_chunks = []
        for tc in deltas or ():
            fn = tc.get("function") or {}
            tool_chunks.append(
                tool_call_chunk(
                    name=fn.get("name"),
                    args=fn.get("arguments"),
                    id=tc.get("id"),
                    index=tc.get("index"),
                )
            )
        # Chunk metadata is merged by concatenating strings, so the finish reason rides on one
        # chunk only and the face adds model name and provider once, at the end.
        return (
            AIMessageChunk(
                content=content or "",
                tool_call_chunks=tool_chunks,
                additional_kwargs=extra,
                response_metadata={"finish_reason": finish} if finish else {},
                id=chunk.get("id"),
            ),
            usage,
        )

    # Chat --------------------------------------------------------------------------------------
    #
    # Through the SDK's documented raw ``post``: its transport, auth, timeouts and error classes,
    # without re-validating a body we already built in wire format or building pydantic models
    # for a reply we read once. That is about a third of the SDK's per-call CPU.

    def chat(self, request: ChatRequest) -> AIMessage:
        """One Chat Completions call."""
        body = self._payload(request, False)
        try:
            raw = self.sync_client.post(
                "/chat/completions",
                body=body,
                options=self._options(request),
                cast_to=httpx2.Response,
            )
        except _SDK_ERRORS as e:
            raise classify_openai_error(e, self.id) from e
        return self._raw_message(raw)

    async def achat(self, request: ChatRequest) -> AIMessage:
        """One Chat Completions call, async."""
        body = self._payload(request, False)
        try:
            raw = await self.async_client.post(
                "/chat/completions",
                body=body,
                options=self._options(request),
                cast_to=httpx2.Response,
            )
        except _SDK_ERRORS as e:
            raise classify_openai_error(e, self.id) from e
        return self._raw_message(raw)

    def _raw_message(self, raw: httpx2.Response) -> AIMessage:
        # The raw response costs no more than cast_to=dict and carries the rate-limit headers.
        report(openai_rest(raw.headers), openai_limits(raw.headers))
        with parsing_reply(self.id):
            return self._message(json.loads(raw.content))

    def stream(self, request: ChatRequest) -> Iterator[AIMessageChunk]:
        """Stream a Chat Completions call."""
        body = self._payload(request, True)
        usage: UsageMetadata | None = None
        try:
            with self.sync_client.post(
                "/chat/completions",
                body=body,
                options=self._options(request),
                cast_to=dict,
                stream=True,
                stream_cls=openai.Stream[dict],
            ) as events:
                report(openai_rest(events.response.headers), openai_limits(events.response.headers))
                for raw in events:
                    try:
                        chunk, usage = self._chunk(raw, usage)
                    except SHAPE_ERRORS as e:
                        raise malformed_reply(self.id, e) from e
                    if chunk is not None:
                        yield chunk
        except _SDK_ERRORS as e:
            raise classify_openai_error(e, self.id) from e
        if usage is not None:
            yield AIMessageChunk(content="", usage_metadata=usage)

    async def astream(self, request: ChatRequest) -> AsyncIterator[AIMessageChunk]:
        """Stream a Chat Completions call, async."""
        body = self._payload(request, True)
        usage: UsageMetadata | None = None
        try:
            events = await self.async_client.post(
                "/chat/completions",
                body=body,
                options=self._options(request),
                cast_to=dict,
                stream=True,
                stream_cls=openai.AsyncStream[dict],
            )
            report(openai_rest(events.response.headers), openai_limits(events.response.headers))
            async with events:
                async for raw in events:
                    try:
                        chunk, usage = self._chunk(raw, usage)
                    except SHAPE_ERRORS as e:
                        raise malformed_reply(self.id, e) from e
                    if chunk is not None:
                        yield chunk
        except _SDK_ERRORS as e:
            raise classify_openai_error(e, self.id) from e
        if usage is not None:
            yield AIMessageChunk(content="", usage_metadata=usage)

    # Embeddings --------------------------------------------------------------------------------

    def _embed_body(self, texts: list[str], dimensions: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "base64"}
        if dimensions is not None:
            body["dimensions"] = dimensions
        return body

    @staticmethod
    def _embedding_result(resp: dict[str, Any]) -> EmbeddingResult:
        data = sorted(resp["data"], key=lambda d: d.get("index", 0))
        usage = resp.get("usage") or {}
        return EmbeddingResult(
            vectors=[_vector(d["embedding"]) for d in data],
            tokens=usage.get("total_tokens", usage.get("prompt_tokens")),
        )

    def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        """One embeddings call."""
        body = self._embed_body(texts, dimensions)
        try:
            resp = self.sync_client.post("/embeddings", body=body, cast_to=dict)
        except _SDK_ERRORS as e:
            raise classify_openai_error(e, self.id) from e
        with parsing_reply(self.id):
            return self._embedding_result(resp)

    async def aembed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        """One embeddings call, async."""
        body = self._embed_body(texts, dimensions)
        try:
            resp = await self.async_client.post("/embeddings", body=body, cast_to=dict)
        except _SDK_ERRORS as e:
            raise classify_openai_error(e, self.id) from e
        with parsing_reply(self.id):
            return self._embedding_result(resp)


def _vector(raw: str | list[float]) -> list[float]:
    """An embedding as floats: base64 of little-endian float32 (compact), or a JSON list."""
    if isinstance(raw, str):
        values = array.array("f", base64.b64decode(raw))
        if sys.byteorder != "little":
            values.byteswap()
        return values.tolist()
    return [float(x) for x in raw]


class SiliconFlowProvider(OpenAIProvider):
    """SiliconFlow: the OpenAI wire format at its own endpoint."""

    vendor = "siliconflow"
    model_provider = "siliconflow"


class DeepSeekProvider(OpenAIProvider):
    """DeepSeek: the OpenAI wire format at its own endpoint (chat only)."""

    vendor = "deepseek"
    model_provider = "deepseek"
    supports_embeddings = False
    media_kinds = frozenset()  # deepseek-chat reads text only
