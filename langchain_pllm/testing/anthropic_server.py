"""A fake Anthropic Messages API speaking the real wire format.

Serves ``POST /v1/messages``: JSON replies with ``text`` and ``tool_use`` content blocks, and SSE
streams with the full event sequence (``message_start``, ``content_block_start``,
``content_block_delta`` with ``text_delta`` / ``input_json_delta``, ``content_block_stop``,
``message_delta``, ``message_stop``), each frame with its ``event:`` line, without which the SDK
yields nothing. Errors use ``{"type": "error", "error": {"type", "message"}}``, so the
``anthropic`` SDK raises ``RateLimitError``, ``OverloadedError`` (529) and the rest. A budget adds
``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``
(resets as RFC 3339 instants) to every reply. The prompt cache, when on, follows Anthropic's
rule that only a prompt marked with ``cache_control`` is cached, up to its last marker.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from langchain_pllm.testing.budgets import Reading, rfc3339
from langchain_pllm.testing.faults import Fault
from langchain_pllm.testing.prompt_cache import CacheUse
from langchain_pllm.testing.replies import Conversation, Reply, json_pieces, text_pieces
from langchain_pllm.testing.server import FakeVendorServer, RequestRejected
from langchain_pllm.testing.wire import Frame, sse

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}

_CREDIT_MESSAGE = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
    "to upgrade or purchase credits."
)


class FakeAnthropicServer(FakeVendorServer):
    """Fake Anthropic API: point ``Anthropic(base_url=srv.base_url, ...)`` at it.

    Path: ``POST /v1/messages``; ``base_url`` is the root URL (the SDK adds ``/v1``). The key is
    read from ``x-api-key`` or ``Authorization: Bearer``. As the real API does, it refuses with 400
    a request without an ``anthropic-version`` header, ``model`` or ``max_tokens``, with no
    messages, a role other than user/assistant, or an empty message or text block (except a
    final assistant turn). ``Fault.error_type`` (or, failing that, ``Fault.code``) sets the error
    ``type``.
    Anthropic has no embeddings endpoint. See ``FakeVendorServer`` for arguments.
    """

    vendor = "anthropic"
    api_prefix = ""

    def _routes(self) -> list[tuple[str, str, Any]]:
        return [("POST", "/v1/messages", self._handle_messages)]

    async def _handle_messages(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_chat(request, "claude-sonnet-4-5")

    def _api_key_of(self, request: web.Request) -> str | None:
        return request.headers.get("x-api-key") or super()._api_key_of(request)

    def _check_request(self, request: web.Request, body: dict[str, Any]) -> None:
        if "anthropic-version" not in request.headers:
            raise RequestRejected(400, "anthropic-version: header is required")
        if not isinstance(body.get("max_tokens"), int):
            raise RequestRejected(400, "max_tokens: Field required")
        if not body.get("model"):
            raise RequestRejected(400, "model: Field required")

    def spent_fault(self) -> Fault:
        """400 ``invalid_request_error``: "Your credit balance is too low ..."."""
        return Fault(status=400, error_type="invalid_request_error", message=_CREDIT_MESSAGE)

    def _error_body(self, fault: Fault) -> dict[str, Any]:
        status = fault.status or 500
        default = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "")
        error_type = fault.error_type or fault.code or default
        return {
            "type": "error",
            "error": {"type": error_type or "invalid_request_error", "message": fault.message},
            "request_id": f"req_{self._next_id()}",
        }

    def _rate_headers(self, readings: tuple[Reading, ...], wall: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        for reading in readings:
            prefix = "anthropic-ratelimit-" + reading.resource.replace("_", "-")
            if reading.limit is not None:
                headers[f"{prefix}-limit"] = str(reading.limit)
            if reading.remaining is not None:
                headers[f"{prefix}-remaining"] = str(reading.remaining)
            if reading.reset is not None:
                headers[f"{prefix}-reset"] = rfc3339(wall + reading.reset)
        return headers

    def _budget_error(self, exceeded: Reading, model: str) -> Fault:
        resource = exceeded.resource.replace("_", " ")
        return Fault(
            status=429,
            retry_after=exceeded.reset,
            message=f"This request would exceed the rate limit for your organization (org-fake) "
            f"of {exceeded.limit} {resource} per {exceeded.per:g} seconds. For details, refer "
            "to: https://docs.claude.com/en/api/rate-limits.",
        )

    def _concurrency_error(self, limit: int) -> Fault:
        return Fault(
            status=429, message=f"Too many concurrent requests for this key (limit {limit})."
        )

    def _conversation(self, body: dict[str, Any]) -> Conversation:
        conversation = Conversation()
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise RequestRejected(400, "messages: Field required")
        if not messages:
            raise RequestRejected(400, "messages: at least one message is required")
        _check_messages(messages)
        system = body.get("system")
        breakpoint_at = 0
        if system:
            conversation.message_texts.append(_blocks_text(system))
            if _has_marker(system):
                breakpoint_at = 1
        for message in messages:
            if _has_marker(message.get("content")):
                breakpoint_at = len(conversation.message_texts) + 1
            text = _blocks_text(message.get("content"))
            conversation.message_texts.append(text)
            if message.get("role") == "user":
                conversation.last_user_text = _blocks_text(message.get("content"), plain=True)
        last = messages[-1]
        if last.get("role") == "user" and isinstance(last.get("content"), list):
            results = [b for b in last["content"] if b.get("type") == "tool_result"]
            if results:
                conversation.tool_result = _blocks_text(results[-1].get("content"))
        tool_choice = body.get("tool_choice") or {}
        if tool_choice.get("type") != "none":
            for tool in body.get("tools") or ():
                if "input_schema" in tool:  # server tools (web search...) have none
                    conversation.tools.append((tool["name"], tool["input_schema"]))
            if tool_choice.get("type") == "tool":
                conversation.forced_tool = tool_choice.get("name")
            conversation.tool_required = tool_choice.get("type") == "any"
        # Anthropic caches only up to the last `cache_control` marker (all of it for a
        # request-level marker); with none, nothing.
        conversation.cache_breakpoint = None if body.get("cache_control") else breakpoint_at
        output_format = (body.get("output_config") or {}).get("format") or body.get("output_format")
        if isinstance(output_format, dict) and output_format.get("type") == "json_schema":
            conversation.response_schema = output_format.get("schema") or {}
        return conversation

    def _usage(self, prompt: int, completion: int, cache: CacheUse) -> dict[str, Any]:
        # Anthropic's input_tokens leave out what was read from or written to the cache.
        return {
            "input_tokens": prompt - cache.read - cache.written,
            "output_tokens": completion,
            "cache_creation_input_tokens": cache.written,
            "cache_read_input_tokens": cache.read,
        }

    def _content_blocks(self, reply: Reply, message_id: str) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if reply.text:
            blocks.append({"type": "text", "text": reply.text})
        for index, (name, args) in enumerate(reply.tool_calls or ()):
            blocks.append(
                {
                    "type": "tool_use",
                    "id": reply.call_id(index, f"toolu_{message_id}_{index}"),
                    "name": name,
                    "input": args,
                }
            )
        return blocks

    def _message(
        self, body: dict[str, Any], model: str, message_id: str, reply: Reply
    ) -> dict[str, Any]:
        stop_reason = reply.resolved_finish_reason()
        return {
            "id": f"msg_{message_id}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", model),
            "content": self._content_blocks(reply, message_id),
            "stop_reason": _STOP_REASONS.get(stop_reason, stop_reason),
            "stop_sequence": None,
        }

    def _chat_body(
        self, body: dict[str, Any], model: str, reply: Reply, usage: dict[str, Any]
    ) -> dict[str, Any]:
        message = self._message(body, model, self._next_id(), reply)
        message["usage"] = usage
        return message

    def _chat_frames(
        self, body: dict[str, Any], model: str, reply: Reply, usage: dict[str, Any]
    ) -> list[Frame]:
        message_id = self._next_id()
        final = self._message(body, model, message_id, reply)
        start = {
            **final,
            "content": [],
            "stop_reason": None,
            "usage": {**usage, "output_tokens": 1},
        }
        frames: list[Frame] = [
            (sse({"type": "message_start", "message": start}, "message_start"), False),
            (sse({"type": "ping"}, "ping"), False),
        ]
        for index, block in enumerate(final["content"]):
            opening: dict[str, Any]
            deltas: list[dict[str, Any]]
            if block["type"] == "text":
                opening = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": p} for p in text_pieces(block["text"])]
            else:
                opening = {**block, "input": {}}
                arguments = json.dumps(block["input"])
                deltas = [
                    {"type": "input_json_delta", "partial_json": p} for p in json_pieces(arguments)
                ]
            event = {"type": "content_block_start", "index": index, "content_block": opening}
            frames.append((sse(event, "content_block_start"), False))
            for delta in deltas:
                event = {"type": "content_block_delta", "index": index, "delta": delta}
                frames.append((sse(event, "content_block_delta"), True))
            event = {"type": "content_block_stop", "index": index}
            frames.append((sse(event, "content_block_stop"), False))
        closing = {
            "type": "message_delta",
            "delta": {"stop_reason": final["stop_reason"], "stop_sequence": None},
            "usage": usage,  # cumulative: replaces, not adds to, message_start's counts
        }
        frames.append((sse(closing, "message_delta"), False))
        frames.append((sse({"type": "message_stop"}, "message_stop"), False))
        return frames

    def _malformed_frame(self) -> bytes:
        return b'event: message_start\ndata: {"type": "message_start", "message": {\n\n'


def _check_messages(messages: list[Any]) -> None:
    """Refuse what the real Messages API refuses with 400: roles and empty content."""
    last = len(messages) - 1
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestRejected(400, f"messages.{index}: Input should be a valid dictionary")
        if message.get("role") not in ("user", "assistant"):
            raise RequestRejected(
                400, f"messages.{index}.role: Input should be 'user' or 'assistant'"
            )
        content = message.get("content")
        final_assistant = index == last and message["role"] == "assistant"
        if content in ("", [], None) and not final_assistant:
            raise RequestRejected(
                400,
                f"messages.{index}: all messages must have non-empty content except for the "
                "optional final assistant message",
            )
        for block in content if isinstance(content, list) else ():
            if isinstance(block, dict) and block.get("type") == "text" and not block.get("text"):
                raise RequestRejected(400, "messages: text content blocks must be non-empty")


def _has_marker(content: Any) -> bool:
    """Whether a system prompt, message content or tool list carries a ``cache_control``."""
    if isinstance(content, list):
        return any(isinstance(b, dict) and b.get("cache_control") for b in content)
    return False


def _blocks_text(content: Any, plain: bool = False) -> str:
    """Text of Anthropic content: a string or blocks (with ``plain``, text blocks only)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return str(content)
    texts: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif plain:
            continue
        elif kind == "tool_use":
            texts.append(json.dumps(block.get("input", {})))
        elif kind == "tool_result":
            texts.append(_blocks_text(block.get("content")))
    return " ".join(t for t in texts if t)
