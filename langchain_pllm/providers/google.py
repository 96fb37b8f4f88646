"""Google's Gemini API through ``google-genai`` (chat and embeddings).

Not the deprecated ``google-generativeai``, whose REST transport cannot stream. LangChain
messages become Gemini ``contents``: system prompts go to ``system_instruction``, AI messages
are ``model`` turns with ``function_call`` parts, tool results are ``function_response`` parts
in a user turn (named after the call they answer), and turns of one role are merged. Tools are
declared with their full JSON schema (``parameters_json_schema``) and JSON output uses
``response_json_schema``, so no schema is cut down to Gemini's OpenAPI subset. Gemini gives its
function calls no ids: ids are derived from the response id and the call's position, so a stream
and its merged message agree. Gemini repeats cumulative ``usageMetadata`` on every stream chunk;
only the last is reported, once. The balancer retries, not the SDK: google-genai retries HTTP
errors only under ``HttpRetryOptions``, but without them its async (aiohttp) path retries a
dropped connection once after sleeping 1 to 10 seconds, so the client is given
``HttpRetryOptions(attempts=1)``: a single attempt, which also turns that implicit retry off.
``HttpOptions.timeout`` is in milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
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
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, SystemMessage
from langchain_core.messages import ToolMessage as LCToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call, tool_call_chunk

from langchain_pllm.exceptions import model_error
from langchain_pllm.providers.base import ChatRequest, EmbeddingResult, Provider
from langchain_pllm.providers.convert import (
    CONTENT_FILTER,
    LENGTH,
    STOP,
    TOOL_CALLS,
    error_object,
    json_format_of,
    make_usage,
    media_of,
    openai_function_of,
    stable_tool_call_id,
    stop_sequences,
    text_of,
    tool_choice_of,
    tool_names_by_id,
)
from langchain_pllm.providers.errors import (
    class_for_status,
    overflow_or,
    parsing_reply,
    retry_after_of,
)

__all__ = ["GoogleProvider", "classify_google_error", "to_gemini_contents"]

# LangChain parameter -> GenerateContentConfig field, where the names differ.
_RENAMED = {"max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens"}
_CONFIG_FIELDS = frozenset(genai_types.GenerateContentConfig.model_fields)
_MAPPED = frozenset(
    {"model", "stop", "tools", "tool_choice", "response_format", "parallel_tool_calls", "n"}
)

_FINISH_REASONS = {
    "STOP": STOP,
    "MAX_TOKENS": LENGTH,
    "SAFETY": CONTENT_FILTER,
    "RECITATION": CONTENT_FILTER,
    "BLOCKLIST": CONTENT_FILTER,
    "PROHIBITED_CONTENT": CONTENT_FILTER,
    "SPII": CONTENT_FILTER,
    "IMAGE_SAFETY": CONTENT_FILTER,
    "IMAGE_PROHIBITED_CONTENT": CONTENT_FILTER,
    "IMAGE_RECITATION": CONTENT_FILTER,
    "MODEL_ARMOR": CONTENT_FILTER,
}

# Gemini 3 checks that a model turn's first function call carries the thought signature it was
# given. Calls made by another vendor have none; this documented value skips the check.
_FOREIGN_SIGNATURE = base64.urlsafe_b64decode("skip_thought_signature_validator")
_SIGNATURES_KEY = "gemini_thought_signatures"

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


def classify_google_error(exc: BaseException, provider_id: str) -> BaseException:
    """Map a ``google-genai`` (or transport) exception onto a LangChain model error."""
    if isinstance(exc, genai_errors.APIError):
        status = int(exc.code or 500)
        text = str(exc.message or "")
        cls = overflow_or(class_for_status(status), text)
        if cls is ModelInvalidRequestError and _OVERFLOW.search(text):
            cls = ContextOverflowError
        return model_error(
            cls,
            f"{provider_id}: HTTP {status}: {exc.status or 'error'}: {text}",
            cause=exc,
            retry_after=_status_retry_after(exc) if status == 429 else None,
            status_code=status,
            provider=provider_id,
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
    return exc


_SDK_ERRORS = (
    genai_errors.APIError,
    genai_errors.UnknownApiResponseError,
    httpx2.HTTPError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    ConnectionError,
    json.JSONDecodeError,
    pydantic.ValidationError,
)


# Messages --------------------------------------------------------------------------------------


def _parts(content: str | Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain content as Gemini parts (text, inline data, file data)."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, str):
            if block:
                parts.append({"text": block})
            continue
        if not isinstance(block, Mapping):
            continue
        if block.get("type", "text") == "text":
            if block.get("text"):
                parts.append({"text": str(block["text"])})
            continue
        media = media_of(block)
        if media is None:
            continue
        if media.data is not None:
            parts.append(
                {
                    "inline_data": {
                        "mime_type": media.mime_type or "application/octet-stream",
                        "data": base64.b64decode(media.data),
                    }
                }
            )
        else:
            # Gemini fetches Files-API, gs:// and (for recent models) public http(s) URLs.
            parts.append({"file_data": {"file_uri": media.url, "mime_type": media.mime_type}})
    return parts


def _model_parts(message: AIMessage) -> list[dict[str, Any]]:
    parts = _parts(message.content)
    signatures = message.additional_kwargs.get(_SIGNATURES_KEY) or {}
    for i, tc in enumerate(message.tool_calls):
        part: dict[str, Any] = {"function_call": {"name": tc["name"], "args": tc["args"]}}
        signature = signatures.get(tc["id"]) if tc["id"] else None
        if signature:
            part["thought_signature"] = base64.b64decode(signature)
        elif i == 0:
            part["thought_signature"] = _FOREIGN_SIGNATURE
        parts.append(part)
    return parts


def _tool_result_parts(message: LCToolMessage, names: Mapping[str, str]) -> list[dict[str, Any]]:
    """A tool result as a ``function_response`` part, then its images and files as parts.

    Media go beside the function response, in the same user turn, as ``inline_data`` or
    ``file_data`` parts (as LangChain's ``ChatGoogleGenerativeAI`` sends them): the model sees
    them, where base64 inside the JSON response would only be text to it.
    """
    name = message.name or names.get(message.tool_call_id) or "tool"
    content = message.content
    media: list[Any] = []
    if isinstance(content, str):
        text = content
    else:
        rest: list[Any] = []
        for block in content:
            (media if media_of(block) is not None else rest).append(block)
        text = text_of(rest)
        if not text and rest:
            text = json.dumps(rest, default=str)  # blocks of no known kind: sent as JSON
    result: Any = text
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        result = parsed
    key = "error" if message.status == "error" else "result"
    response = result if isinstance(result, dict) else {key: result}
    return [{"function_response": {"name": name, "response": response}}, *_parts(media)]


def to_gemini_contents(
    messages: Sequence[BaseMessage],
) -> tuple[str | None, list[dict[str, Any]]]:
    """LangChain messages to ``(system_instruction, contents)`` for ``generate_content``."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names = tool_names_by_id(messages)
    for m in messages:
        if isinstance(m, SystemMessage):
            text = text_of(m.content)
            if text:
                system.append(text)
            continue
        if isinstance(m, AIMessage):
            role, parts = "model", _model_parts(m)
        elif isinstance(m, LCToolMessage):
            role, parts = "user", _tool_result_parts(m, names)
        else:
            role, parts = "user", _parts(m.content)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return ("\n\n".join(system) or None), contents


def _tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    declarations: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for tool in tools:
        fn = openai_function_of(tool)
        if fn is None:
            others.append(dict(tool))  # a Gemini tool (google_search, code_execution...)
            continue
        declaration: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            declaration["description"] = fn["description"]
        if fn.get("parameters"):
            declaration["parameters_json_schema"] = fn["parameters"]
        declarations.append(declaration)
    out = [{"function_declarations": declarations}] if declarations else []
    return out + others


# Replies ---------------------------------------------------------------------------------------


def _usage(meta: Any) -> UsageMetadata | None:
    if meta is None:
        return None
    prompt = (meta.prompt_token_count or 0) + (meta.tool_use_prompt_token_count or 0)
    thoughts = meta.thoughts_token_count or 0
    output = (meta.candidates_token_count or 0) + thoughts
    return make_usage(
        prompt,
        output,
        meta.total_token_count if meta.total_token_count is not None else prompt + output,
        cache_read=meta.cached_content_token_count,
        reasoning=thoughts,
    )


@dataclass(slots=True)
class _Reading:
    """What one response (or stream chunk) says."""

    text: str
    reasoning: str
    calls: list[tuple[str, dict[str, Any], str | None, bytes | None]]
    finish_raw: str | None


def _read(resp: Any) -> _Reading:
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[tuple[str, dict[str, Any], str | None, bytes | None]] = []
    finish_raw: str | None = None
    candidates = resp.candidates or ()
    if candidates:
        candidate = candidates[0]
        if candidate.finish_reason is not None:
            finish_raw = str(getattr(candidate.finish_reason, "value", candidate.finish_reason))
        content = candidate.content
        for part in (content.parts if content is not None else None) or ():
            if part.function_call is not None:
                fc = part.function_call
                calls.append((fc.name or "", dict(fc.args or {}), fc.id, part.thought_signature))
            elif part.text:
                (reasoning if part.thought else texts).append(part.text)
    else:
        feedback = getattr(resp, "prompt_feedback", None)
        if feedback is not None and feedback.block_reason is not None:
            finish_raw = "SAFETY"  # the prompt itself was blocked
    return _Reading("".join(texts), "".join(reasoning), calls, finish_raw)


@dataclass(slots=True)
class _Stream:
    """What a stream has said so far that only its end may report."""

    usage: Any = None
    finish_raw: str | None = None
    response_id: str | None = None
    calls: int = 0


def _finish(finish_raw: str | None, has_calls: bool) -> str | None:
    if finish_raw is None:
        return None
    finish = _FINISH_REASONS.get(finish_raw, STOP)
    return TOOL_CALLS if has_calls and finish == STOP else finish


def _signature_text(signature: bytes | None) -> str | None:
    return base64.b64encode(signature).decode() if signature else None


class GoogleProvider(Provider):
    """A key of Google's Gemini API (AI Studio), chat and embeddings."""

    vendor = "google"
    model_provider = "google_genai"
    supports_embeddings = True
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

    # Request -----------------------------------------------------------------------------------

    def _request(self, request: ChatRequest) -> dict[str, Any]:
        params = request.params
        system, contents = to_gemini_contents(request.messages)
        config: dict[str, Any] = {}
        if system:
            config["system_instruction"] = system
        for key, value in params.items():
            if value is None or key in _MAPPED:
                continue
            name = _RENAMED.get(key, key)
            if name in _CONFIG_FIELDS:
                config[name] = value
            else:
                self.warn_once(key, f"{self.id}: Gemini takes no {key!r}; it is not sent")
        if params.get("n") not in (None, 1):
            self.warn_once("n", f"{self.id}: one candidate is read; 'n' is not sent")
        stop = stop_sequences(params.get("stop"))
        if stop:
            config["stop_sequences"] = stop
        tools = _tools(params.get("tools") or ())
        if tools:
            config["tools"] = tools
            config["automatic_function_calling"] = {"disable": True}
            choice = tool_choice_of(params.get("tool_choice"))
            if choice is not None:
                calling: dict[str, Any] = {
                    "mode": {"required": "ANY", "tool": "ANY"}.get(choice.mode, choice.mode.upper())
                }
                if choice.mode == "tool":
                    calling["allowed_function_names"] = [choice.name]
                config["tool_config"] = {"function_calling_config": calling}
        json_format = json_format_of(params.get("response_format"))
        if json_format is not None:
            config["response_mime_type"] = "application/json"
            if json_format.schema is not None:
                config["response_json_schema"] = json_format.schema
        timeout = self.attempt_timeout(request)
        if timeout is not None:
            config["http_options"] = {"timeout": max(1, int(timeout * 1000))}
        return {
            "model": params.get("model") or self.model,
            "contents": contents,
            "config": config or None,
        }

    # Reply -------------------------------------------------------------------------------------

    def _tool_calls(
        self, reading: _Reading, response_id: str | None, start: int
    ) -> tuple[list[tuple[str, str, dict[str, Any]]], dict[str, str]]:
        """``(id, name, args)`` of each call, and the thought signatures by call id."""
        calls = []
        signatures: dict[str, str] = {}
        for offset, (name, args, given_id, signature) in enumerate(reading.calls):
            call_id = given_id or stable_tool_call_id(response_id, start + offset, name)
            calls.append((call_id, name, args))
            text = _signature_text(signature)
            if text:
                signatures[call_id] = text
        return calls, signatures

    def _message(self, resp: Any) -> AIMessage:
        reading = _read(resp)
        response_id = getattr(resp, "response_id", None)
        calls, signatures = self._tool_calls(reading, response_id, 0)
        kwargs: dict[str, Any] = {}
        if reading.reasoning:
            kwargs["reasoning_content"] = reading.reasoning
        if signatures:
            kwargs[_SIGNATURES_KEY] = signatures
        metadata: dict[str, Any] = {
            "finish_reason": _finish(reading.finish_raw, bool(calls)),
            "stop_reason": reading.finish_raw,
            "model_name": getattr(resp, "model_version", None) or self.model,
            "model_provider": self.model_provider,
        }
        if response_id:
            metadata["id"] = response_id
        return AIMessage(
            content=reading.text,
            tool_calls=[tool_call(name=n, args=a, id=i) for i, n, a in calls],
            usage_metadata=_usage(resp.usage_metadata),
            response_metadata=metadata,
            additional_kwargs=kwargs,
            id=response_id,
        )

    def _chunk(self, state: _Stream, resp: Any) -> AIMessageChunk | None:
        reading = _read(resp)
        response_id = getattr(resp, "response_id", None)
        if response_id:
            state.response_id = response_id
        if resp.usage_metadata is not None:
            state.usage = resp.usage_metadata  # cumulative: keep the last only
        if reading.finish_raw is not None:
            state.finish_raw = reading.finish_raw
        start = state.calls
        calls, signatures = self._tool_calls(reading, response_id, start)
        state.calls = start + len(calls)
        if not (reading.text or reading.reasoning or calls):
            return None
        kwargs: dict[str, Any] = {}
        if reading.reasoning:
            kwargs["reasoning_content"] = reading.reasoning
        if signatures:
            kwargs[_SIGNATURES_KEY] = signatures
        return AIMessageChunk(
            content=reading.text,
            additional_kwargs=kwargs,
            tool_call_chunks=[
                tool_call_chunk(name=n, args=json.dumps(a), id=i, index=start + k)
                for k, (i, n, a) in enumerate(calls)
            ],
            id=response_id,
        )

    def _last_chunk(self, state: _Stream) -> AIMessageChunk:
        # One chunk carries the finish reason and the usage, each exactly once.
        metadata: dict[str, Any] = {}
        if state.finish_raw is not None:
            metadata["finish_reason"] = _finish(state.finish_raw, state.calls > 0)
            metadata["stop_reason"] = state.finish_raw
        return AIMessageChunk(
            content="",
            usage_metadata=_usage(state.usage),
            response_metadata=metadata,
            id=state.response_id,
        )

    # Chat --------------------------------------------------------------------------------------

    def chat(self, request: ChatRequest) -> AIMessage:
        """One ``generateContent`` call."""
        args = self._request(request)
        try:
            resp = self.sync_client.models.generate_content(**args)
        except _SDK_ERRORS as e:
            raise classify_google_error(e, self.id) from e
        with parsing_reply(self.id):
            return self._message(resp)

    async def achat(self, request: ChatRequest) -> AIMessage:
        """One ``generateContent`` call, async."""
        args = self._request(request)
        try:
            resp = await self.async_client.aio.models.generate_content(**args)
        except _SDK_ERRORS as e:
            raise classify_google_error(e, self.id) from e
        with parsing_reply(self.id):
            return self._message(resp)

    def stream(self, request: ChatRequest) -> Iterator[AIMessageChunk]:
        """Stream a ``streamGenerateContent`` call."""
        args = self._request(request)
        state = _Stream()
        try:
            for resp in self.sync_client.models.generate_content_stream(**args):
                with parsing_reply(self.id):
                    chunk = self._chunk(state, resp)
                if chunk is not None:
                    yield chunk
        except _SDK_ERRORS as e:
            raise classify_google_error(e, self.id) from e
        with parsing_reply(self.id):
            yield self._last_chunk(state)

    async def astream(self, request: ChatRequest) -> AsyncIterator[AIMessageChunk]:
        """Stream a ``streamGenerateContent`` call, async."""
        args = self._request(request)
        state = _Stream()
        try:
            responses = await self.async_client.aio.models.generate_content_stream(**args)
            async for resp in responses:
                with parsing_reply(self.id):
                    chunk = self._chunk(state, resp)
                if chunk is not None:
                    yield chunk
        except _SDK_ERRORS as e:
            raise classify_google_error(e, self.id) from e
        with parsing_reply(self.id):
            yield self._last_chunk(state)

    # Embeddings --------------------------------------------------------------------------------

    @staticmethod
    def _embedding_result(resp: Any) -> EmbeddingResult:
        vectors = [list(e.values or ()) for e in resp.embeddings or ()]
        return EmbeddingResult(vectors=vectors, tokens=None)

    def embed(self, texts: list[str]) -> EmbeddingResult:
        """One ``batchEmbedContents`` call (at most 100 texts)."""
        try:
            resp = self.sync_client.models.embed_content(model=self.model, contents=texts)
        except _SDK_ERRORS as e:
            raise classify_google_error(e, self.id) from e
        with parsing_reply(self.id):
            return self._embedding_result(resp)

    async def aembed(self, texts: list[str]) -> EmbeddingResult:
        """One ``batchEmbedContents`` call, async."""
        try:
            resp = await self.async_client.aio.models.embed_content(
                model=self.model, contents=texts
            )
        except _SDK_ERRORS as e:
            raise classify_google_error(e, self.id) from e
        with parsing_reply(self.id):
            return self._embedding_result(resp)
