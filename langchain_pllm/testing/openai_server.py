"""A fake OpenAI-compatible server (OpenAI, SiliconFlow, DeepSeek) speaking the real wire format.

Serves ``POST /v1/chat/completions`` (JSON and SSE streams, tool calls, ``response_format``) and
``POST /v1/embeddings`` (float lists or base64 float32, as the ``openai`` SDK asks by default).
Errors use OpenAI's ``{"error": {"message", "type", "param", "code"}}`` body and rate limits carry
both ``Retry-After`` and ``retry-after-ms``, so the ``openai`` SDK raises its real exception
classes.
A budget adds ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` to every reply. The
``flavor`` picks what differs between the vendors behind this API: DeepSeek's ``402`` spent key and
``prompt_cache_hit_tokens``, SiliconFlow's ``{"code", "message", "data"}`` error bodies and its
``403`` spent key. The chat-completion formatting is shared with the Zhipu server.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from langchain_pllm.testing.budgets import Reading, go_duration
from langchain_pllm.testing.faults import Fault
from langchain_pllm.testing.prompt_cache import CacheUse
from langchain_pllm.testing.replies import (
    Conversation,
    Reply,
    embedding_base64,
    json_pieces,
    text_pieces,
)
from langchain_pllm.testing.server import FakeVendorServer, RequestRejected
from langchain_pllm.testing.wire import Frame, sse

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}

_FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "tool_calls"}

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")

#: Header names per budget resource (OpenAI counts requests and tokens only).
_HEADER_NAMES = {"requests": "requests", "tokens": "tokens"}

_FLAVORS = ("openai", "deepseek", "siliconflow")
_DEFAULT_MODELS = {
    "openai": ("gpt-4o-mini", "text-embedding-3-small"),
    "deepseek": ("deepseek-chat", "deepseek-embedding"),
    "siliconflow": ("Qwen/Qwen2.5-7B-Instruct", "BAAI/bge-m3"),
}
# SiliconFlow documents 20012 (model does not exist) and 30001 (balance); the others stand in.
_SILICONFLOW_CODES = {400: 20015, 401: 20001, 403: 30011, 404: 20012, 429: 50001, 503: 50603}


class OpenAIChatFormat(FakeVendorServer):
    """Chat completions in OpenAI's format; the base of the OpenAI and Zhipu fakes."""

    #: Whether the final stream chunk carrying `finish_reason` also carries usage (Zhipu).
    usage_on_finish_chunk = False
    #: What a completion id starts with; the rest is unique across servers and vendors.
    chat_id_prefix = "chatcmpl-"

    def _conversation(self, body: dict[str, Any]) -> Conversation:
        conversation = Conversation()
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise RequestRejected(400, "Missing required parameter: 'messages'.")
        if not messages:
            raise RequestRejected(
                400,
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                "empty_array",
            )
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in _ROLES:
                role = message.get("role") if isinstance(message, dict) else message
                raise RequestRejected(
                    400,
                    f"Invalid value for 'messages[{index}].role': {role!r}. Supported values "
                    f"are: {', '.join(repr(r) for r in _ROLES)}.",
                    "invalid_value",
                )
            text = _content_text(message.get("content"))
            for call in message.get("tool_calls") or ():
                text += " " + str(call.get("function", {}).get("arguments", ""))
            conversation.message_texts.append(text)
            if message.get("role") == "user":
                conversation.last_user_text = text
        if messages[-1].get("role") == "tool":
            conversation.tool_result = _content_text(messages[-1].get("content"))
        tool_choice = body.get("tool_choice")
        if tool_choice != "none":
            for tool in body.get("tools") or ():
                function = tool.get("function") or {}
                conversation.tools.append((function["name"], function.get("parameters") or {}))
            if isinstance(tool_choice, dict):
                conversation.forced_tool = (tool_choice.get("function") or {}).get("name")
            conversation.tool_required = tool_choice == "required"
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            conversation.response_schema = (response_format.get("json_schema") or {}).get(
                "schema", {}
            )
        conversation.json_mode = response_format.get("type") == "json_object"
        return conversation

    def _check_request(self, request: web.Request, body: dict[str, Any]) -> None:
        if not body.get("model"):
            raise RequestRejected(400, "you must provide a model parameter")

    def _usage(self, prompt: int, completion: int, cache: CacheUse) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if self.prompt_cache_enabled:
            # As the real APIs do, the details come with every reply once caching is on.
            usage["prompt_tokens_details"] = {"cached_tokens": cache.read}
        return usage

    def _finish_reason(self, reply: Reply) -> str:
        reason = reply.resolved_finish_reason()
        return _FINISH_REASONS.get(reason, reason)

    def _tool_calls(self, reply: Reply, request_id: str) -> list[dict[str, Any]]:
        return [
            {
                "id": reply.call_id(index, f"call_{request_id}_{index}"),
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for index, (name, args) in enumerate(reply.tool_calls or ())
        ]

    def _chat_body(
        self, body: dict[str, Any], model: str, reply: Reply, usage: dict[str, Any]
    ) -> dict[str, Any]:
        request_id = self._next_id()
        message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = self._tool_calls(reply, request_id)
        return {
            "id": f"{self.chat_id_prefix}{request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", model),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self._finish_reason(reply),
                }
            ],
            "usage": usage,
            "system_fingerprint": None,
        }

    def _chat_frames(
        self, body: dict[str, Any], model: str, reply: Reply, usage: dict[str, Any]
    ) -> list[Frame]:
        request_id = self._next_id()
        head = {
            "id": f"{self.chat_id_prefix}{request_id}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", model),
            "system_fingerprint": None,
        }

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return sse({**head, "choices": [choice]})

        frames: list[Frame] = [(chunk({"role": "assistant", "content": ""}), False)]
        for piece in text_pieces(reply.text or ""):
            frames.append((chunk({"content": piece}), True))
        for index, call in enumerate(self._tool_calls(reply, request_id)):
            function = call["function"]
            opening = {**call, "index": index, "function": {"name": function["name"]}}
            opening["function"]["arguments"] = ""
            frames.append((chunk({"tool_calls": [opening]}), True))
            for piece in json_pieces(function["arguments"]):
                delta = {"index": index, "function": {"arguments": piece}}
                frames.append((chunk({"tool_calls": [delta]}), True))
        final = {**head, "choices": [_finish_choice(self._finish_reason(reply))]}
        if self.usage_on_finish_chunk:
            final["usage"] = usage
        frames.append((sse(final), False))
        if (body.get("stream_options") or {}).get("include_usage"):
            frames.append((sse({**head, "choices": [], "usage": usage}), False))
        frames.append((b"data: [DONE]\n\n", False))
        return frames

    def _embedding_texts(self, body: dict[str, Any]) -> list[str]:
        raw = body["input"]
        if isinstance(raw, str):
            return [raw]
        if not isinstance(raw, list):
            raise TypeError("'input' must be a string or an array")
        if raw and all(isinstance(item, int) for item in raw):
            return [" ".join(map(str, raw))]  # one text given as token ids
        return [item if isinstance(item, str) else " ".join(map(str, item)) for item in raw]

    def _embedding_body(
        self, body: dict[str, Any], model: str, vectors: list[tuple[float, ...]], tokens: int
    ) -> dict[str, Any]:
        as_base64 = body.get("encoding_format") == "base64"
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": embedding_base64(vector) if as_base64 else list(vector),
                }
                for index, vector in enumerate(vectors)
            ],
            "model": body.get("model", model),
            "usage": self._embedding_usage(tokens),
        }


class FakeOpenAIServer(OpenAIChatFormat):
    """Fake OpenAI API: point ``OpenAI(base_url=srv.base_url, ...)`` at it.

    Paths: ``POST /v1/chat/completions``, ``POST /v1/embeddings``. The API key is read from
    ``Authorization: Bearer``. Error bodies follow OpenAI's shape; ``Fault.code`` becomes
    ``error.code`` (e.g. ``"context_length_exceeded"``) and ``Fault.error_type`` ``error.type``.
    A request without ``model``, with an empty ``messages`` array or an unknown role is refused
    with 400, as the real API does. See ``FakeVendorServer`` for the other arguments.

    Args:
        flavor: ``"openai"`` (default), ``"deepseek"`` or ``"siliconflow"``: the vendor's
            error bodies, spent-key error, cached-token fields and rate-limit headers
            (only OpenAI sends ``x-ratelimit-*``; the others only answer 429).
        **kwargs: As ``FakeVendorServer``.
    """

    vendor = "openai"
    api_prefix = "/v1"
    default_max_batch = 2048

    def __init__(self, *, flavor: str = "openai", **kwargs: Any) -> None:
        if flavor not in _FLAVORS:
            raise ValueError(f"flavor must be one of {_FLAVORS}, got {flavor!r}")
        super().__init__(**kwargs)
        self.flavor = flavor

    def _routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("POST", "/v1/chat/completions", self._handle_chat),
            ("POST", "/v1/embeddings", self._handle_embeddings),
        ]

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_chat(request, _DEFAULT_MODELS[self.flavor][0])

    async def _handle_embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_embeddings(request, _DEFAULT_MODELS[self.flavor][1])

    def spent_fault(self) -> Fault:
        """The flavor's spent-key error.

        OpenAI: 429 with ``type`` and ``code`` ``insufficient_quota`` and no ``Retry-After``;
        DeepSeek: 402 "Insufficient Balance"; SiliconFlow: 403 with code 30001.
        """
        if self.flavor == "deepseek":
            return Fault(
                status=402,
                message="Insufficient Balance",
                error_type="unknown_error",
                code="invalid_request_error",
            )
        if self.flavor == "siliconflow":
            return Fault(
                status=403, code="30001", message="Sorry, your account balance is insufficient"
            )
        return Fault(
            status=429,
            code="insufficient_quota",
            error_type="insufficient_quota",
            message="You exceeded your current quota, please check your plan and billing "
            "details. For more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors.",
        )

    def _error_body(self, fault: Fault) -> dict[str, Any]:
        status = fault.status or 500
        if self.flavor == "siliconflow":
            code = fault.code or _SILICONFLOW_CODES.get(status, 50000 if status >= 500 else 20015)
            return {"code": _as_int(code), "message": fault.message, "data": None}
        error_type, default_code = _ERROR_TYPES.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        return {
            "error": {
                "message": fault.message,
                "type": fault.error_type or error_type,
                "param": None,
                "code": fault.code if fault.code is not None else default_code,
            }
        }

    def _error_headers(self, fault: Fault) -> dict[str, str]:
        headers = super()._error_headers(fault)
        if fault.retry_after is not None:
            headers["retry-after-ms"] = str(int(fault.retry_after * 1000))
        return headers

    def _usage(self, prompt: int, completion: int, cache: CacheUse) -> dict[str, Any]:
        usage = super()._usage(prompt, completion, cache)
        if self.flavor == "deepseek" and self.prompt_cache_enabled:
            usage["prompt_cache_hit_tokens"] = cache.read
            usage["prompt_cache_miss_tokens"] = prompt - cache.read
        return usage

    def _rate_headers(self, readings: tuple[Reading, ...], wall: float) -> dict[str, str]:
        if self.flavor != "openai":
            return {}
        headers: dict[str, str] = {}
        for reading in readings:
            name = _HEADER_NAMES.get(reading.resource)
            if name is None:
                continue
            if reading.limit is not None:
                headers[f"x-ratelimit-limit-{name}"] = str(reading.limit)
            if reading.remaining is not None:
                headers[f"x-ratelimit-remaining-{name}"] = str(reading.remaining)
            if reading.reset is not None:
                headers[f"x-ratelimit-reset-{name}"] = go_duration(reading.reset)
        return headers

    def _budget_error(self, exceeded: Reading, model: str) -> Fault:
        kind = "requests" if exceeded.resource == "requests" else "tokens"
        message = (
            f"Rate limit reached for {model} in organization org-fake on {kind} per "
            f"{_unit(exceeded.per)}: Limit {exceeded.limit}, Remaining {exceeded.remaining}. "
            f"Please try again in {go_duration(exceeded.reset or 0)}."
        )
        return Fault(
            status=429,
            retry_after=exceeded.reset,
            message=message,
            error_type=kind if self.flavor == "openai" else None,
            code="rate_limit_exceeded" if self.flavor != "siliconflow" else None,
        )

    def _concurrency_error(self, limit: int) -> Fault:
        return Fault(
            status=429,
            code="rate_limit_exceeded",
            message=f"Too many concurrent requests for this key (limit {limit}).",
        )


def _unit(per: float | None) -> str:
    """OpenAI's name for a window length (min, day), or the seconds."""
    names = {60.0: "min", 86_400.0: "day"}
    return names.get(float(per or 0), f"{per or 0:g}s")


def _as_int(code: str | int) -> int | str:
    try:
        return int(code)
    except (TypeError, ValueError):
        return code


def _finish_choice(finish_reason: str) -> dict[str, Any]:
    return {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}


def _content_text(content: Any) -> str:
    """Text of an OpenAI message ``content``: a string, or the text of its parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return str(content)
