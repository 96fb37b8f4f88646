"""A fake Gemini API (generativelanguage) speaking the real REST wire format.

Serves ``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse`` (frames
of ``GenerateContentResponse`` with cumulative ``usageMetadata``, the last with ``finishReason``),
``:batchEmbedContents`` and ``:embedContent`` (the ``v1`` prefix is accepted too). The key comes
from ``x-goog-api-key`` or ``?key=``. Errors use ``{"error": {"code", "message", "status"}}`` (with
``details`` where the real API gives them), so ``google-genai`` raises ``errors.ClientError`` /
``errors.ServerError`` with the right ``.status``. Gemini sends no rate-limit headers: a budget
only answers 429 ``RESOURCE_EXHAUSTED``, whose ``google.rpc.QuotaFailure`` names a per-minute or
per-day quota, with a ``google.rpc.RetryInfo`` delay, as the real API words it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from aiohttp import web

from langchain_pllm.testing.budgets import Reading
from langchain_pllm.testing.faults import Fault
from langchain_pllm.testing.prompt_cache import CacheUse
from langchain_pllm.testing.replies import Conversation, Reply, text_pieces
from langchain_pllm.testing.server import FakeVendorServer, RequestRejected
from langchain_pllm.testing.wire import Frame, sse

_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_FINISH_REASONS = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}

_QUOTA_HELP = "https://ai.google.dev/gemini-api/docs/rate-limits"
# (resource, per) -> (quota id, metric) as the free tier names them.
_QUOTA_IDS = {
    ("requests", "day"): (
        "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
        "generate_content_free_tier_requests",
    ),
    ("requests", "minute"): (
        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
        "generate_content_free_tier_requests",
    ),
    ("tokens", "minute"): (
        "GenerateContentInputTokensPerModelPerMinute-FreeTier",
        "generate_content_free_tier_input_token_count",
    ),
    ("tokens", "day"): (
        "GenerateContentInputTokensPerModelPerDay-FreeTier",
        "generate_content_free_tier_input_token_count",
    ),
}


class FakeGeminiServer(FakeVendorServer):
    """Fake Gemini API: point ``google-genai`` at it.

    Usage::

        client = genai.Client(
            api_key="g-key",
            http_options=types.HttpOptions(base_url=srv.base_url, api_version="v1beta"),
        )

    ``Fault.code`` replaces the error ``status`` string and ``Fault.details`` fills ``details``.
    Embedding batches default to at most 100 texts, as the real ``batchEmbedContents``. Empty
    ``contents``, a content with no parts or a role other than user/model is refused with 400
    ``INVALID_ARGUMENT``, as the real API does. See ``FakeVendorServer`` for arguments.
    """

    vendor = "google"
    api_prefix = ""
    default_max_batch = 100

    def _routes(self) -> list[tuple[str, str, Any]]:
        return [("POST", "/{version:v1beta|v1}/models/{target}", self._handle_model_call)]

    async def _handle_model_call(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].rpartition(":")
        if method == "generateContent":
            return await self._serve_chat(request, model, stream=False)
        if method == "streamGenerateContent":
            return await self._serve_chat(request, model, stream=True)
        if method in ("batchEmbedContents", "embedContent"):
            return await self._serve_embeddings(request, model)
        payload = self._error_body(Fault(status=404, message=f"Method {method!r} is not found."))
        return web.json_response(payload, status=404)

    def _api_key_of(self, request: web.Request) -> str | None:
        return request.headers.get("x-goog-api-key") or request.query.get("key")

    def _error_body(self, fault: Fault) -> dict[str, Any]:
        status = fault.status or 500
        fallback = "INTERNAL" if status >= 500 else "INVALID_ARGUMENT"
        error: dict[str, Any] = {
            "code": status,
            "message": fault.message,
            "status": fault.code or _STATUSES.get(status, fallback),
        }
        if fault.details:
            error["details"] = list(fault.details)
        return {"error": error}

    def quota_fault(
        self,
        per: str = "day",
        resource: str = "requests",
        retry_delay: float = 37.0,
        model: str = "gemini-2.0-flash",
        limit: int = 50,
    ) -> Fault:
        """429 ``RESOURCE_EXHAUSTED`` with ``QuotaFailure``, ``Help`` and ``RetryInfo`` details.

        Args:
            per: ``"day"`` (a spent daily quota: ``quotaId`` has ``PerDay``) or ``"minute"``
                (a rate limit: ``PerMinute``).
            resource: ``"requests"`` or ``"tokens"`` (input tokens).
            retry_delay: Seconds in ``RetryInfo.retryDelay`` (written like ``"37s"``).
            model: The model named in the quota dimensions.
            limit: The quota value reported.
        """
        quota_id, metric = _QUOTA_IDS[(resource, per)]
        delay = f"{retry_delay:g}s"
        message = (
            "You exceeded your current quota, please check your plan and billing details. "
            f"For more information on this error, head to: {_QUOTA_HELP}.\n"
            f"* Quota exceeded for metric: generativelanguage.googleapis.com/{metric}, "
            f"limit: {limit}, model: {model}\nPlease retry in {delay}."
        )
        details = (
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": f"generativelanguage.googleapis.com/{metric}",
                        "quotaId": quota_id,
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": str(limit),
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {"description": "Learn more about Gemini API quotas", "url": _QUOTA_HELP}
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
        )
        return Fault(status=429, code="RESOURCE_EXHAUSTED", message=message, details=details)

    def spent_fault(self) -> Fault:
        """The daily quota used up: ``quota_fault(per="day")``."""
        return self.quota_fault(per="day")

    def _budget_error(self, exceeded: Reading, model: str) -> Fault:
        per = "day" if (exceeded.per or 0) >= 86_400 else "minute"
        resource = "requests" if exceeded.resource == "requests" else "tokens"
        reset = exceeded.reset or 0.0
        fault = self.quota_fault(per, resource, round(reset, 3), model, exceeded.limit or 0)
        # The real API puts the delay only in RetryInfo; the header helps clients that read it.
        return replace(fault, retry_after=reset)

    def _concurrency_error(self, limit: int) -> Fault:
        return Fault(status=429, message=f"Too many concurrent requests (limit {limit}).")

    def _conversation(self, body: dict[str, Any]) -> Conversation:
        conversation = Conversation()
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise RequestRejected(
                400, "* GenerateContentRequest.contents: contents is not specified\n"
            )
        for index, content in enumerate(contents):
            if not isinstance(content, dict) or not content.get("parts"):
                raise RequestRejected(
                    400,
                    f"* GenerateContentRequest.contents[{index}].parts: contents.parts must "
                    "not be empty.\n",
                )
            if content.get("role", "user") not in ("user", "model", "function", "tool"):
                raise RequestRejected(
                    400,
                    f"Please use a valid role: user, model. (got {content.get('role')!r})",
                )
        system = _field(body, "systemInstruction")
        if system:
            conversation.message_texts.append(_parts_text(system.get("parts")))
        for content in contents:
            conversation.message_texts.append(_parts_text(content.get("parts")))
            if content.get("role", "user") == "user":
                text = _parts_text(content.get("parts"), plain=True)
                conversation.last_user_text = text or conversation.last_user_text
        responses = [
            _field(part, "functionResponse")
            for part in contents[-1].get("parts") or ()
            if isinstance(part, dict) and _field(part, "functionResponse")
        ]
        if responses:
            conversation.tool_result = _function_response_text(responses[-1])
        calling = _field(_field(body, "toolConfig") or {}, "functionCallingConfig") or {}
        mode = str(calling.get("mode", "AUTO")).upper()
        if mode != "NONE":
            for tool in body.get("tools") or ():
                for declaration in _field(tool, "functionDeclarations") or ():
                    schema = _field(declaration, "parametersJsonSchema") or _field(
                        declaration, "parameters"
                    )
                    conversation.tools.append((declaration["name"], schema or {}))
            allowed = _field(calling, "allowedFunctionNames") or []
            if mode == "ANY":
                conversation.tool_required = True
                conversation.forced_tool = allowed[0] if allowed else None
        config = _field(body, "generationConfig") or {}
        schema = _field(config, "responseJsonSchema") or _field(config, "responseSchema")
        if schema:
            conversation.response_schema = schema
        conversation.json_mode = _field(config, "responseMimeType") == "application/json"
        return conversation

    def _usage(self, prompt: int, completion: int, cache: CacheUse) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": completion,
            "totalTokenCount": prompt + completion,
        }
        if cache.read:
            # Gemini counts cached tokens inside promptTokenCount and names them apart.
            usage["cachedContentTokenCount"] = cache.read
        return usage

    def _response(
        self,
        model: str,
        response_id: str,
        parts: list[dict[str, Any]],
        usage: dict[str, Any],
        finish_reason: str | None,
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish_reason is not None:
            candidate["finishReason"] = finish_reason
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": response_id,
        }

    def _parts(self, reply: Reply) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = [{"text": reply.text}] if reply.text else []
        for name, args in reply.tool_calls or ():
            parts.append({"functionCall": {"name": name, "args": args}})
        return parts

    def _finish_reason(self, reply: Reply) -> str:
        reason = reply.resolved_finish_reason()
        return _FINISH_REASONS.get(reason, reason)

    def _chat_body(
        self, body: dict[str, Any], model: str, reply: Reply, usage: dict[str, Any]
    ) -> dict[str, Any]:
        response_id = f"resp-{self._next_id()}"
        return self._response(
            model, response_id, self._parts(reply), usage, self._finish_reason(reply)
        )

    def _chat_frames(
        self, body: dict[str, Any], model: str, reply: Reply, usage: dict[str, Any]
    ) -> list[Frame]:
        response_id = f"resp-{self._next_id()}"
        prompt = usage["promptTokenCount"]
        pieces: list[list[dict[str, Any]]] = [
            [{"text": piece}] for piece in text_pieces(reply.text or "") if piece
        ]
        pieces += [[part] for part in self._parts(Reply(tool_calls=reply.tool_calls))]
        if not pieces:
            pieces = [[{"text": ""}]]
        frames: list[Frame] = []
        produced = 0
        for index, parts in enumerate(pieces):
            last = index == len(pieces) - 1
            if last:
                so_far = dict(usage)  # the exact totals of the JSON reply
            else:
                produced += sum(
                    len(str(p.get("text", "")).split()) + (1 if "functionCall" in p else 0)
                    for p in parts
                )
                completion = min(produced, usage["candidatesTokenCount"])
                so_far = {
                    **usage,
                    "candidatesTokenCount": completion,
                    "totalTokenCount": prompt + completion,
                }
            finish = self._finish_reason(reply) if last else None
            frame = self._response(model, response_id, parts, so_far, finish)
            frames.append((sse(frame), True))
        return frames

    def _malformed_frame(self) -> bytes:
        return b'data: {"candidates": [{"content": \n\n'

    def _embedding_texts(self, body: dict[str, Any]) -> list[str]:
        if "requests" in body:
            return [_parts_text(r["content"].get("parts")) for r in body["requests"]]
        return [_parts_text(body["content"].get("parts"))]

    def _embedding_dimensions(self, body: dict[str, Any]) -> int | None:
        source = (body.get("requests") or [body])[0]
        value = _field(source, "outputDimensionality")
        return int(value) if value else None

    def _embedding_usage(self, tokens: int) -> dict[str, Any] | None:
        return {"promptTokenCount": tokens, "totalTokenCount": tokens}

    def _embedding_body(
        self, body: dict[str, Any], model: str, vectors: list[tuple[float, ...]], tokens: int
    ) -> dict[str, Any]:
        if "requests" in body:
            return {"embeddings": [{"values": list(vector)} for vector in vectors]}
        return {"embedding": {"values": list(vectors[0])}}


def _field(container: dict[str, Any], camel_name: str) -> Any:
    """A field by its camelCase name or its snake_case twin (the API accepts both)."""
    if camel_name in container:
        return container[camel_name]
    snake_name = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel_name)
    return container.get(snake_name)


def _parts_text(parts: Any, plain: bool = False) -> str:
    """Text of Gemini parts (with ``plain``, text parts only)."""
    if not isinstance(parts, list):
        return ""
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        if "text" in part:
            texts.append(str(part["text"]))
        elif plain:
            continue
        elif _field(part, "functionCall"):
            texts.append(json.dumps(_field(part, "functionCall").get("args", {})))
        elif _field(part, "functionResponse"):
            texts.append(_function_response_text(_field(part, "functionResponse")))
    return " ".join(t for t in texts if t)


def _function_response_text(function_response: dict[str, Any]) -> str:
    """The tool output: a lone wrapped value (``{"result": ...}``) unwrapped, else JSON."""
    response = function_response.get("response")
    if isinstance(response, dict) and len(response) == 1:
        (value,) = response.values()
        return value if isinstance(value, str) else json.dumps(value)
    return json.dumps(response)
