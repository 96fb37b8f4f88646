"""OpenAI and the vendors speaking its wire format (SiliconFlow, DeepSeek), via the ``openai`` SDK.

Messages become Chat Completions dicts; replies become ``AIMessage``s with ``usage_metadata``
and the response metadata LangChain's own ``ChatOpenAI`` sets. Every ``openai`` exception is
classified here, once. The SDK's own retries are off (``max_retries=0``): the balancer retries,
on another key.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import openai
from langchain_core.exceptions import ModelAPIError, ModelConnectionError, ModelTimeoutError
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.messages.utils import convert_to_openai_messages

from langchain_pllm.exceptions import model_error
from langchain_pllm.providers.base import ChatRequest, EmbeddingResult, Provider
from langchain_pllm.providers.errors import class_for_status, overflow_or, retry_after_of

__all__ = ["DeepSeekProvider", "OpenAIProvider", "SiliconFlowProvider", "classify_openai_error"]

# Parameters the Chat Completions API takes under the same name as LangChain's.
_PASSTHROUGH = (
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "response_format",
    "parallel_tool_calls",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "user",
    "n",
    "reasoning_effort",
    "service_tier",
    "metadata",
    "store",
    "modalities",
    "prediction",
)
# Newer OpenAI models refuse max_tokens; compatible servers only know max_tokens.
_COMPLETION_TOKENS_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def classify_openai_error(exc: BaseException, provider_id: str) -> BaseException:
    """Map an ``openai`` SDK exception onto a LangChain model error (cause kept)."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = f"{provider_id}: HTTP {status}: {exc.message}"
        cls = overflow_or(class_for_status(status), f"{exc.message} {exc.code or ''}")
        return model_error(
            cls,
            message,
            cause=exc,
            retry_after=retry_after_of(exc.response.headers),
            status_code=status,
            provider=provider_id,
        )
    if isinstance(exc, openai.APITimeoutError):
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


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(
        b if isinstance(b, str) else str(b.get("text", ""))
        for b in content
        if isinstance(b, (str, dict))
    )


def to_openai_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages to Chat Completions dicts, with a fast path for plain text."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m.content, str) and type(m) in _SIMPLE_ROLES:
            out.append({"role": _SIMPLE_ROLES[type(m)], "content": m.content})
        elif isinstance(m, AIMessage) and isinstance(m.content, str) and not m.tool_calls:
            out.append({"role": "assistant", "content": m.content})
        else:
            out.extend(convert_to_openai_messages([m]))
    return out


_SIMPLE_ROLES: dict[type, str] = {HumanMessage: "user", SystemMessage: "system"}


def _usage(u: Any) -> UsageMetadata | None:
    if u is None:
        return None
    usage = UsageMetadata(
        input_tokens=u.prompt_tokens or 0,
        output_tokens=u.completion_tokens or 0,
        total_tokens=u.total_tokens or ((u.prompt_tokens or 0) + (u.completion_tokens or 0)),
    )
    details = getattr(u, "prompt_tokens_details", None)
    if details is not None and getattr(details, "cached_tokens", None):
        usage["input_token_details"] = {"cache_read": details.cached_tokens}
    details = getattr(u, "completion_tokens_details", None)
    if details is not None and getattr(details, "reasoning_tokens", None):
        usage["output_token_details"] = {"reasoning": details.reasoning_tokens}
    return usage


class OpenAIProvider(Provider):
    """A key of OpenAI (or of a server that speaks its Chat Completions format)."""

    vendor = "openai"
    model_provider = "openai"
    supports_embeddings = True
    embed_batch_limit = 2048

    def _client_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "api_key": self.config.api_key.get_secret_value(),
            "base_url": self.config.api_base,
            "max_retries": 0,
        }
        if self.config.timeout is not None:
            args["timeout"] = self.config.timeout
        return args

    def _build_sync_client(self) -> Any:
        return openai.OpenAI(**self._client_args())

    def _build_async_client(self) -> Any:
        return openai.AsyncOpenAI(**self._client_args())

    # Request -----------------------------------------------------------------------------------

    def _payload(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        params = request.params
        payload: dict[str, Any] = {"model": params.get("model") or self.model}
        payload["messages"] = to_openai_messages(request.messages)
        extra: dict[str, Any] = {}
        for key, value in params.items():
            if value is None or key == "model":
                continue
            if key in _PASSTHROUGH:
                if key == "stop" and not value:
                    continue
                payload[key] = value
            elif key == "max_tokens":
                name = "max_tokens"
                if self.vendor == "openai" and payload["model"].startswith(
                    _COMPLETION_TOKENS_PREFIXES
                ):
                    name = "max_completion_tokens"
                payload[name] = value
            elif key == "max_completion_tokens":
                payload[key] = value
            elif key in ("top_k", "extra_body"):
                if key == "extra_body":
                    extra.update(value)
                else:
                    extra[key] = value
            else:
                extra[key] = value
        if extra:
            payload["extra_body"] = extra
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        if request.timeout is not None:
            payload["timeout"] = request.timeout
        return payload

    # Reply -------------------------------------------------------------------------------------

    def _message(self, resp: Any) -> AIMessage:
        choice = resp.choices[0]
        msg = choice.message
        tool_calls = []
        invalid = []
        for tc in msg.tool_calls or ():
            fn = tc.function
            try:
                args = json.loads(fn.arguments) if fn.arguments else {}
                tool_calls.append(tool_call(name=fn.name, args=args, id=tc.id))
            except json.JSONDecodeError as e:
                invalid.append(
                    invalid_tool_call(name=fn.name, args=fn.arguments, id=tc.id, error=str(e))
                )
        metadata: dict[str, Any] = {
            "finish_reason": choice.finish_reason,
            "model_name": resp.model,
            "model_provider": self.model_provider,
            "id": resp.id,
        }
        if getattr(resp, "system_fingerprint", None):
            metadata["system_fingerprint"] = resp.system_fingerprint
        kwargs: dict[str, Any] = {}
        if getattr(msg, "refusal", None):
            kwargs["refusal"] = msg.refusal
        return AIMessage(
            content=msg.content or "",
            tool_calls=tool_calls,
            invalid_tool_calls=invalid,
            usage_metadata=_usage(resp.usage),
            response_metadata=metadata,
            additional_kwargs=kwargs,
            id=resp.id,
        )

    def _chunk(self, chunk: Any) -> AIMessageChunk | None:
        usage = _usage(chunk.usage) if getattr(chunk, "usage", None) else None
        if not chunk.choices:
            if usage is None:
                return None
            return AIMessageChunk(content="", usage_metadata=usage)
        choice = chunk.choices[0]
        delta = choice.delta
        if (
            not choice.finish_reason
            and usage is None
            and (delta is None or (not delta.content and not delta.tool_calls))
        ):
            # The opening role-only chunk carries nothing: skipping it keeps "before the first
            # chunk" meaning "before any content", so a stream that dies at once fails over.
            return None
        tool_chunks = []
        for tc in delta.tool_calls or ():
            fn = tc.function
            tool_chunks.append(
                tool_call_chunk(
                    name=fn.name if fn else None,
                    args=fn.arguments if fn else None,
                    id=tc.id,
                    index=tc.index,
                )
            )
        # Chunk metadata is merged by concatenating strings, so the finish reason rides on one
        # chunk only and the face adds model name and provider once, at the end.
        metadata: dict[str, Any] = (
            {"finish_reason": choice.finish_reason} if choice.finish_reason else {}
        )
        return AIMessageChunk(
            content=(delta.content or "") if delta else "",
            tool_call_chunks=tool_chunks,
            usage_metadata=usage,
            response_metadata=metadata,
            id=chunk.id,
        )

    # Chat --------------------------------------------------------------------------------------

    def chat(self, request: ChatRequest) -> AIMessage:
        """One Chat Completions call."""
        try:
            resp = self.sync_client.chat.completions.create(**self._payload(request, False))
            return self._message(resp)
        except (openai.OpenAIError, json.JSONDecodeError) as e:
            raise classify_openai_error(e, self.id) from e

    async def achat(self, request: ChatRequest) -> AIMessage:
        """One Chat Completions call, async."""
        try:
            resp = await self.async_client.chat.completions.create(**self._payload(request, False))
            return self._message(resp)
        except (openai.OpenAIError, json.JSONDecodeError) as e:
            raise classify_openai_error(e, self.id) from e

    def stream(self, request: ChatRequest) -> Iterator[AIMessageChunk]:
        """Stream a Chat Completions call."""
        try:
            with self.sync_client.chat.completions.create(**self._payload(request, True)) as s:
                for raw in s:
                    chunk = self._chunk(raw)
                    if chunk is not None:
                        yield chunk
        except (openai.OpenAIError, json.JSONDecodeError) as e:
            raise classify_openai_error(e, self.id) from e

    async def astream(self, request: ChatRequest) -> AsyncIterator[AIMessageChunk]:
        """Stream a Chat Completions call, async."""
        try:
            s = await self.async_client.chat.completions.create(**self._payload(request, True))
            async with s:
                async for raw in s:
                    chunk = self._chunk(raw)
                    if chunk is not None:
                        yield chunk
        except (openai.OpenAIError, json.JSONDecodeError) as e:
            raise classify_openai_error(e, self.id) from e

    # Embeddings --------------------------------------------------------------------------------

    def _embed_args(self, texts: list[str]) -> dict[str, Any]:
        return {"model": self.model, "input": texts}

    @staticmethod
    def _embedding_result(resp: Any) -> EmbeddingResult:
        data = sorted(resp.data, key=lambda d: d.index)
        usage = getattr(resp, "usage", None)
        return EmbeddingResult(
            vectors=[list(d.embedding) for d in data],
            tokens=getattr(usage, "total_tokens", None) if usage else None,
        )

    def embed(self, texts: list[str]) -> EmbeddingResult:
        """One embeddings call."""
        try:
            return self._embedding_result(
                self.sync_client.embeddings.create(**self._embed_args(texts))
            )
        except (openai.OpenAIError, json.JSONDecodeError) as e:
            raise classify_openai_error(e, self.id) from e

    async def aembed(self, texts: list[str]) -> EmbeddingResult:
        """One embeddings call, async."""
        try:
            resp = await self.async_client.embeddings.create(**self._embed_args(texts))
            return self._embedding_result(resp)
        except (openai.OpenAIError, json.JSONDecodeError) as e:
            raise classify_openai_error(e, self.id) from e


class SiliconFlowProvider(OpenAIProvider):
    """SiliconFlow: the OpenAI wire format at its own endpoint."""

    vendor = "siliconflow"
    model_provider = "siliconflow"


class DeepSeekProvider(OpenAIProvider):
    """DeepSeek: the OpenAI wire format at its own endpoint (chat only)."""

    vendor = "deepseek"
    model_provider = "deepseek"
    supports_embeddings = False
