"""Zhipu AI (BigModel open platform, GLM models) through ``zhipuai`` (chat and embeddings).

Zhipu's ``/api/paas/v4`` API is shaped like OpenAI's Chat Completions, so messages are written
as OpenAI dicts. The sync path uses the ``zhipuai`` SDK (``max_retries=0``: it otherwise
retries three times with backoff). ``zhipuai`` has no asyncio client (its
``chat.asyncCompletions`` is a server-side task API, and ``asyncio.to_thread`` would be bounded
by the default thread pool), so the async path speaks to the same OpenAI-compatible endpoint
through ``openai.AsyncOpenAI``: one connection pool per event loop, true concurrency. Both send
the raw key as a Bearer token. Zhipu takes only ``tool_choice="auto"``: a named tool is forced
by offering only that tool, ``"required"`` is sent as ``"auto"`` with a warning, and ``"none"``
sends no tools. It has JSON mode but no JSON-schema mode: a ``json_schema`` response format is
sent as ``json_object`` with the schema added to the system prompt. A too-long prompt is HTTP
400 with error code ``1261`` (``ContextOverflowError``); code ``1113`` (account in arrears) is
``ModelPermissionDeniedError`` so the key is taken out instead of resting as rate limited.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import openai
import zhipuai
from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelConnectionError,
    ModelError,
    ModelPermissionDeniedError,
    ModelTimeoutError,
)
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from zhipuai.api_resource.chat.completions import Completions as ZhipuCompletions

from langchain_pllm.exceptions import model_error
from langchain_pllm.providers.base import (
    ChatRequest,
    EmbeddingResult,
    Provider,
    pooled_sdk_client,
)
from langchain_pllm.providers.convert import (
    CONTENT_FILTER,
    TRANSLATED_PARAMS,
    error_object,
    json_format_of,
    make_usage,
    openai_function_of,
    stop_sequences,
    to_openai_messages,
    tool_choice_of,
)
from langchain_pllm.providers.errors import (
    caller_fault,
    class_for_status,
    mark_crowded,
    mark_spent,
    overflow_or,
    parsing_reply,
    retry_after_of,
    says_balance,
    spent_class,
)
from langchain_pllm.providers.openai import classify_openai_error

__all__ = ["ZhipuProvider", "classify_zhipu_error"]

# Body fields of Zhipu's chat API that LangChain callers may pass straight through.
_ZHIPU_FIELDS = frozenset(
    {
        "temperature",
        "top_p",
        "do_sample",
        "seed",
        "request_id",
        "user_id",
        "thinking",
        "meta",
        "sensitive_word_check",
        "tool_stream",
        "watermark_enabled",
        "extra",
    }
)
# Keyword arguments each client's create() takes; other body fields travel in extra_body.
_SYNC_KWARGS = frozenset(inspect.signature(ZhipuCompletions.create).parameters)
_ASYNC_KWARGS = frozenset(
    inspect.signature(openai.resources.chat.AsyncCompletions.create).parameters
)

_CONTEXT_OVERFLOW_CODES = frozenset({"1261"})
# Spent keys: 1113 account in arrears, 1304 the day's calls used up, 1308 and 1310 a plan's
# 5-hour / weekly / monthly quota used up; a 429 whose text says the balance is gone.
_SPENT_CODES = frozenset({"1113", "1304", "1308", "1310"})
_DEAD_KEY_CODES = frozenset({"1113"})  # account in arrears: a permission error to a caller
_FINISH_REASONS = {"sensitive": CONTENT_FILTER}


def _is_spent(status: int, code: str | None, text: str) -> bool:
    return code in _SPENT_CODES or (status == 429 and says_balance(text))


def _zhipu_class(status: int, code: str | None, text: str) -> type[ModelError]:
    if code in _CONTEXT_OVERFLOW_CODES:
        return ContextOverflowError
    if code in _DEAD_KEY_CODES:
        return ModelPermissionDeniedError
    return spent_class(_is_spent(status, code, text), overflow_or(class_for_status(status), text))


def classify_zhipu_error(exc: BaseException, provider_id: str) -> BaseException:
    """Map a ``zhipuai`` or (async path) ``openai`` exception onto a LangChain model error."""
    caller = caller_fault(exc, provider_id)
    if caller is not None:
        return caller
    if isinstance(exc, zhipuai.APIStatusError):
        status = exc.status_code
        code: str | None = None
        text = str(exc)
        try:
            body = exc.response.json()
        except ValueError:
            body = None
        error = error_object(body)
        if error.get("code") is not None:
            code = str(error["code"])
        text = str(error.get("message") or text)
        err = mark_spent(
            model_error(
                _zhipu_class(status, code, text),
                f"{provider_id}: HTTP {status}: code {code}: {text}",
                cause=exc,
                retry_after=retry_after_of(exc.response.headers),
                status_code=status,
                provider=provider_id,
            ),
            _is_spent(status, code, text),
        )
        return mark_crowded(err, code == "1302")  # too many in flight on this key
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        code = str(exc.code) if exc.code is not None else None
        err = mark_spent(
            model_error(
                _zhipu_class(status, code, exc.message),
                f"{provider_id}: HTTP {status}: code {code}: {exc.message}",
                cause=exc,
                retry_after=retry_after_of(exc.response.headers),
                status_code=status,
                provider=provider_id,
            ),
            _is_spent(status, code, exc.message),
        )
        return mark_crowded(err, code == "1302")  # too many in flight on this key
    if isinstance(exc, openai.OpenAIError):
        return classify_openai_error(exc, provider_id)
    if isinstance(exc, (zhipuai.APITimeoutError, httpx.TimeoutException, httpx2.TimeoutException)):
        return model_error(
            ModelTimeoutError, f"{provider_id}: timed out", cause=exc, provider=provider_id
        )
    if isinstance(exc, (zhipuai.APIConnectionError, httpx.TransportError, httpx2.TransportError)):
        return model_error(
            ModelConnectionError,
            f"{provider_id}: connection failed: {type(exc).__name__}",
            cause=exc,
            provider=provider_id,
        )
    if isinstance(exc, (zhipuai.ZhipuAIError, ValueError)):
        return model_error(
            ModelAPIError,
            f"{provider_id}: malformed response: {type(exc).__name__}",
            cause=exc,
            provider=provider_id,
        )
    return exc


_SDK_ERRORS = (
    zhipuai.ZhipuAIError,
    openai.OpenAIError,
    httpx.HTTPError,
    httpx2.HTTPError,
    ValueError,
)


def _usage(u: Any) -> UsageMetadata | None:
    if u is None:
        return None
    prompt = int(getattr(u, "prompt_tokens", 0) or 0)
    completion = int(getattr(u, "completion_tokens", 0) or 0)
    return make_usage(
        prompt,
        completion,
        getattr(u, "total_tokens", None),
        cache_read=_detail(u, "prompt_tokens_details", "cached_tokens"),
        reasoning=_detail(u, "completion_tokens_details", "reasoning_tokens"),
    )


def _detail(u: Any, group: str, name: str) -> Any:
    # zhipuai's CompletionUsage declares no details: they arrive as extra fields, plain dicts.
    details = getattr(u, group, None)
    if isinstance(details, dict):
        return details.get(name)
    return getattr(details, name, None) if details is not None else None


def _finish(raw: str | None) -> str | None:
    return _FINISH_REASONS.get(raw, raw) if raw else None


@dataclass(slots=True)
class _Stream:
    usage: Any = None
    finish_raw: str | None = None
    response_id: str | None = None


class ZhipuProvider(Provider):
    """A key of Zhipu AI's open platform (GLM chat models, ``embedding-3``)."""

    vendor = "zhipu"
    model_provider = "zhipuai"
    supports_embeddings = True
    media_kinds = frozenset({"image"})  # the GLM-4V models
    embed_batch_limit = 64

    def _build_sync_client(self) -> Any:
        args: dict[str, Any] = {
            "api_key": self.config.api_key.get_secret_value(),
            "base_url": self.config.api_base,
            "max_retries": 0,
        }
        if self.config.timeout is not None:
            args["timeout"] = self.config.timeout
        return zhipuai.ZhipuAI(**args)

    def _build_async_client(self) -> Any:
        return pooled_sdk_client(openai.AsyncOpenAI, self.config)

    # Request -----------------------------------------------------------------------------------

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body Zhipu takes, in its own field names."""
        params = request.params
        messages = to_openai_messages(request.messages)
        body: dict[str, Any] = {"model": params.get("model") or self.model}
        max_tokens = params.get("max_tokens") or params.get("max_completion_tokens")
        if max_tokens:
            body["max_tokens"] = max_tokens
        for key, value in params.items():
            if value is None or key in TRANSLATED_PARAMS:
                continue
            if key in _ZHIPU_FIELDS:
                body[key] = value
            else:
                self.warn_once(key, f"{self.id}: Zhipu takes no {key!r}; it is not sent")
        stop = stop_sequences(params.get("stop"))
        if stop:
            if len(stop) > 1:
                self.warn_once("stop", f"{self.id}: Zhipu takes one stop word; the first is sent")
            body["stop"] = stop[:1]
        if params.get("parallel_tool_calls") is not None:
            self.warn_once(
                "parallel_tool_calls", f"{self.id}: Zhipu takes no 'parallel_tool_calls'"
            )
        tools = [dict(t) for t in params.get("tools") or ()]
        choice = tool_choice_of(params.get("tool_choice"))
        if tools and (choice is None or choice.mode != "none"):
            if choice is not None and choice.mode == "tool":
                # Zhipu only takes "auto": offering just the named tool forces it as far as
                # the API allows.
                named = [
                    t for t in tools if (openai_function_of(t) or {}).get("name") == choice.name
                ]
                tools = named or tools
            elif choice is not None and choice.mode == "required":
                self.warn_once(
                    "tool_choice",
                    f"{self.id}: Zhipu only takes tool_choice='auto'; 'required' is sent as auto",
                )
            body["tools"] = tools
            body["tool_choice"] = "auto"
        json_format = json_format_of(params.get("response_format"))
        if json_format is not None:
            body["response_format"] = {"type": "json_object"}
            if json_format.schema is not None:
                note = "Reply with one JSON object only, matching this JSON schema:\n" + json.dumps(
                    json_format.schema
                )
                messages = [{"role": "system", "content": note}, *messages]
        body["messages"] = messages
        return body

    @staticmethod
    def _split(body: dict[str, Any], kwargs_taken: frozenset[str]) -> dict[str, Any]:
        """Body fields as create() keyword arguments, the rest in ``extra_body``."""
        args: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in body.items():
            (args if key in kwargs_taken else extra)[key] = value
        if extra:
            args["extra_body"] = extra
        return args

    def _sync_args(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        args = self._split(self._body(request), _SYNC_KWARGS)
        if stream:
            args["stream"] = True
        timeout = self.attempt_timeout(request)
        if timeout is not None:
            args["timeout"] = timeout
        return args

    def _async_args(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        args = self._split(self._body(request), _ASYNC_KWARGS)
        if stream:
            # Zhipu puts usage on its last chunk by itself; no stream_options.
            args["stream"] = True
        timeout = self.attempt_timeout(request)
        if timeout is not None:
            args["timeout"] = timeout
        return args

    # Reply -------------------------------------------------------------------------------------

    def _message(self, resp: Any) -> AIMessage:
        choice = resp.choices[0]
        msg = choice.message
        if choice.finish_reason == "network_error":
            raise model_error(
                ModelAPIError,
                f"{self.id}: Zhipu reported an inference failure (finish_reason network_error)",
                provider=self.id,
            )
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
        response_id = getattr(resp, "id", None) or getattr(resp, "request_id", None)
        metadata: dict[str, Any] = {
            "finish_reason": _finish(choice.finish_reason),
            "model_name": resp.model or self.model,
            "model_provider": self.model_provider,
            "id": response_id,
        }
        if choice.finish_reason != metadata["finish_reason"]:
            metadata["stop_reason"] = choice.finish_reason
        kwargs: dict[str, Any] = {}
        reasoning = getattr(msg, "reasoning_content", None)
        if reasoning:
            kwargs["reasoning_content"] = reasoning
        return AIMessage(
            content=msg.content or "",
            tool_calls=tool_calls,
            invalid_tool_calls=invalid,
            usage_metadata=_usage(resp.usage),
            response_metadata=metadata,
            additional_kwargs=kwargs,
            id=response_id,
        )

    def _chunk(self, raw: Any, state: _Stream) -> AIMessageChunk | None:
        state.response_id = state.response_id or getattr(raw, "id", None)
        if getattr(raw, "usage", None) is not None:
            state.usage = raw.usage  # cumulative where repeated: keep the last only
        if not raw.choices:
            return None
        choice = raw.choices[0]
        if choice.finish_reason:
            state.finish_raw = choice.finish_reason
        delta = choice.delta
        if delta is None:
            return None
        tool_chunks = [
            tool_call_chunk(
                name=tc.function.name if tc.function else None,
                args=tc.function.arguments if tc.function else None,
                id=tc.id,
                index=tc.index,
            )
            for tc in delta.tool_calls or ()
        ]
        reasoning = getattr(delta, "reasoning_content", None)
        if not (delta.content or tool_chunks or reasoning):
            return None
        return AIMessageChunk(
            content=delta.content or "",
            tool_call_chunks=tool_chunks,
            additional_kwargs={"reasoning_content": reasoning} if reasoning else {},
            id=state.response_id,
        )

    def _last_chunk(self, state: _Stream) -> AIMessageChunk:
        if state.finish_raw == "network_error":
            raise model_error(
                ModelAPIError,
                f"{self.id}: Zhipu reported an inference failure (finish_reason network_error)",
                provider=self.id,
            )
        metadata: dict[str, Any] = {}
        finish = _finish(state.finish_raw)
        if finish is not None:
            metadata["finish_reason"] = finish
            if finish != state.finish_raw:
                metadata["stop_reason"] = state.finish_raw
        return AIMessageChunk(
            content="",
            usage_metadata=_usage(state.usage),
            response_metadata=metadata,
            id=state.response_id,
        )

    # Chat --------------------------------------------------------------------------------------

    def chat(self, request: ChatRequest) -> AIMessage:
        """One chat completion through ``zhipuai``."""
        args = self._sync_args(request, False)
        try:
            resp = self.sync_client.chat.completions.create(**args)
        except _SDK_ERRORS as e:
            raise classify_zhipu_error(e, self.id) from e
        with parsing_reply(self.id):
            return self._message(resp)

    async def achat(self, request: ChatRequest) -> AIMessage:
        """One chat completion through the OpenAI-compatible endpoint, async."""
        args = self._async_args(request, False)
        try:
            resp = await self.async_client.chat.completions.create(**args)
        except _SDK_ERRORS as e:
            raise classify_zhipu_error(e, self.id) from e
        with parsing_reply(self.id):
            return self._message(resp)

    def stream(self, request: ChatRequest) -> Iterator[AIMessageChunk]:
        """Stream a chat completion through ``zhipuai``."""
        args = self._sync_args(request, True)
        state = _Stream()
        raws = None
        try:
            raws = self.sync_client.chat.completions.create(**args)
            for raw in raws:
                with parsing_reply(self.id):
                    chunk = self._chunk(raw, state)
                if chunk is not None:
                    yield chunk
        except _SDK_ERRORS as e:
            raise classify_zhipu_error(e, self.id) from e
        finally:
            # zhipuai's StreamResponse is no context manager: a stream left early (or past
            # its deadline) must close its HTTP response here, or the connection stays open.
            response = getattr(raws, "response", None)
            if response is not None:
                response.close()
        with parsing_reply(self.id):
            yield self._last_chunk(state)

    async def astream(self, request: ChatRequest) -> AsyncIterator[AIMessageChunk]:
        """Stream a chat completion through the OpenAI-compatible endpoint, async."""
        args = self._async_args(request, True)
        state = _Stream()
        try:
            raws = await self.async_client.chat.completions.create(**args)
            async with raws:
                async for raw in raws:
                    with parsing_reply(self.id):
                        chunk = self._chunk(raw, state)
                    if chunk is not None:
                        yield chunk
        except _SDK_ERRORS as e:
            raise classify_zhipu_error(e, self.id) from e
        with parsing_reply(self.id):
            yield self._last_chunk(state)

    # Embeddings --------------------------------------------------------------------------------

    @staticmethod
    def _embedding_result(resp: Any) -> EmbeddingResult:
        data = sorted(resp.data, key=lambda d: d.index)
        usage = getattr(resp, "usage", None)
        return EmbeddingResult(
            vectors=[list(d.embedding) for d in data],
            tokens=getattr(usage, "total_tokens", None) if usage else None,
        )

    def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        """One embeddings call (at most 64 texts for ``embedding-3``)."""
        extra: dict[str, Any] = {} if dimensions is None else {"dimensions": dimensions}
        try:
            resp = self.sync_client.embeddings.create(input=texts, model=self.model, **extra)
        except _SDK_ERRORS as e:
            raise classify_zhipu_error(e, self.id) from e
        with parsing_reply(self.id):
            return self._embedding_result(resp)

    async def aembed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        """One embeddings call, async, through the OpenAI-compatible endpoint."""
        extra: dict[str, Any] = {} if dimensions is None else {"dimensions": dimensions}
        try:
            resp = await self.async_client.embeddings.create(
                input=texts, model=self.model, encoding_format="float", **extra
            )
        except _SDK_ERRORS as e:
            raise classify_zhipu_error(e, self.id) from e
        with parsing_reply(self.id):
            return self._embedding_result(resp)
