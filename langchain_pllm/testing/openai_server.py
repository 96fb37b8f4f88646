"""A fake OpenAI-compatible server (OpenAI, SiliconFlow, DeepSeek) speaking the real wire format.

Serves `POST /v1/chat/completions` (JSON and SSE streams, tool calls, `response_format`) and
`POST /v1/embeddings` (float lists or base64 float32, as the `openai` SDK asks by default).
Errors use OpenAI's `{"error": {"message", "type", "param", "code"}}` body and rate limits carry
both `Retry-After` and `retry-after-ms`, so the `openai` SDK raises its real exception classes.
The chat-completion formatting is shared with the Zhipu server, whose API is a near copy.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from langchain_pllm.testing.replies import (
    Conversation,
    Reply,
    embedding_base64,
    json_pieces,
    text_pieces,
)
from langchain_pllm.testing.server import FakeVendorServer, Frame, RequestRejected, sse

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


class OpenAIChatFormat(FakeVendorServer):
    """Chat completions in OpenAI's format; the base of the OpenAI and Zhipu fakes."""

    #: Whether the final stream chunk carrying `finish_reason` also carries usage (Zhipu).
    usage_on_finish_chunk = False

    def _conversation(self, body: dict[str, Any]) -> Conversation:
        conversation = Conversation()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestRejected(400, "'messages' must be a non-empty array.")
        for message in messages:
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

    def _usage(self, prompt: int, completion: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _finish_reason(self, reply: Reply) -> str:
        reason = reply.resolved_finish_reason()
        return _FINISH_REASONS.get(reason, reason)

    def _tool_calls(self, reply: Reply, request_id: str) -> list[dict[str, Any]]:
        return [
            {
                "id": f"call_{request_id}_{index}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for index, (name, args) in enumerate(reply.tool_calls or ())
        ]

    def _chat_body(
        self, body: dict[str, Any], model: str, reply: Reply, usage: dict[str, Any]
    ) -> dict[str, Any]:
        request_id = str(self._next_id())
        message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = self._tool_calls(reply, request_id)
        return {
            "id": f"chatcmpl-{request_id}",
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
        request_id = str(self._next_id())
        head = {
            "id": f"chatcmpl-{request_id}",
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
    """Fake OpenAI API: point `OpenAI(base_url=srv.base_url, ...)` at it.

    Paths: `POST /v1/chat/completions`, `POST /v1/embeddings`. The API key is read from
    `Authorization: Bearer`. Error bodies follow OpenAI's shape; `Fault.code` becomes
    `error.code` (e.g. ``"context_length_exceeded"``). See `FakeVendorServer` for arguments.
    """

    vendor = "openai"
    api_prefix = "/v1"
    default_max_batch = 2048

    def _routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("POST", "/v1/chat/completions", self._handle_chat),
            ("POST", "/v1/embeddings", self._handle_embeddings),
        ]

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_chat(request, "gpt-4o-mini")

    async def _handle_embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_embeddings(request, "text-embedding-3-small")

    def _error_body(self, status: int, message: str, code: str | None) -> dict[str, Any]:
        error_type, default_code = _ERROR_TYPES.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        return {
            "error": {
                "message": message,
                "type": error_type,
                "param": None,
                "code": code if code is not None else default_code,
            }
        }

    def _error_headers(self, retry_after: float | None) -> dict[str, str]:
        headers = super()._error_headers(retry_after)
        if retry_after is not None:
            headers["retry-after-ms"] = str(int(retry_after * 1000))
        return headers


def _finish_choice(finish_reason: str) -> dict[str, Any]:
    return {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}


def _content_text(content: Any) -> str:
    """Text of an OpenAI message `content`: a string, or the text of its parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return str(content)
