"""A fake Zhipu (BigModel open platform) API speaking the real wire format.

Zhipu's `/api/paas/v4` API is OpenAI-shaped, so chat formatting comes from the OpenAI fake;
what differs is here: the paths, a `request_id` in replies, usage on the final stream chunk,
float-list embeddings capped at 64 texts, the error body `{"error": {"code": "1261",
"message"}}` with Zhipu's numeric codes, and authentication by either the raw `id.secret` key
or the HS256 JWT the `zhipuai` SDK signs from it (the log then shows the key id).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aiohttp import web

from langchain_pllm.testing.faults import Fault
from langchain_pllm.testing.openai_server import OpenAIChatFormat
from langchain_pllm.testing.replies import Reply

_ERROR_CODES = {
    400: "1214",  # invalid parameter
    401: "1000",  # authentication failed
    403: "1220",  # no permission for this API
    404: "1211",  # model does not exist
    429: "1302",  # too many concurrent requests
    500: "500",
    503: "1305",  # service overloaded
}


class FakeZhipuServer(OpenAIChatFormat):
    """Fake Zhipu API: point `ZhipuAI(api_key=..., base_url=srv.base_url)` at it.

    Paths: `/api/paas/v4/chat/completions`, `/api/paas/v4/embeddings`. `Fault.code` becomes
    `error.code` (e.g. ``"1261"`` for a too-long prompt). Faults bound to an ``id.secret`` key
    also hit requests signed as a JWT from it. See `FakeVendorServer` for arguments.
    """

    vendor = "zhipu"
    api_prefix = "/api/paas/v4"
    default_max_batch = 64
    usage_on_finish_chunk = True

    def _routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("POST", "/api/paas/v4/chat/completions", self._handle_chat),
            ("POST", "/api/paas/v4/embeddings", self._handle_embeddings),
        ]

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_chat(request, "glm-4-flash")

    async def _handle_embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_embeddings(request, "embedding-3")

    def _api_key_of(self, request: web.Request) -> str | None:
        token = super()._api_key_of(request)
        if token is not None and token.count(".") == 2:
            key_id = _jwt_key_id(token)
            if key_id is not None:
                return key_id
        return token

    def fault_for_key(self, api_key: str, fault: Fault, times: int | None = None) -> None:
        """Give every request with `api_key` (raw or JWT-signed) this fault."""
        super().fault_for_key(_key_id(api_key), fault, times)

    def _fault_keys(self, api_key: str | None) -> tuple[str, ...]:
        return (_key_id(api_key),) if api_key else ()

    def _error_body(self, status: int, message: str, code: str | None) -> dict[str, Any]:
        default = _ERROR_CODES.get(status, "500" if status >= 500 else "1210")
        return {"error": {"code": code or default, "message": message}}

    def _chat_body(
        self, body: dict[str, Any], model: str, reply: Reply, usage: dict[str, Any]
    ) -> dict[str, Any]:
        payload = super()._chat_body(body, model, reply, usage)
        payload["request_id"] = payload["id"]
        return payload

    def _embedding_body(
        self, body: dict[str, Any], model: str, vectors: list[tuple[float, ...]], tokens: int
    ) -> dict[str, Any]:
        payload = super()._embedding_body({**body, "encoding_format": "float"}, model, vectors, 0)
        payload["usage"] = self._embedding_usage(tokens)
        return payload

    def _embedding_usage(self, tokens: int) -> dict[str, Any] | None:
        return {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}


def _key_id(api_key: str) -> str:
    """The id part of an ``id.secret`` key (what a JWT signed from it names)."""
    return api_key.split(".", 1)[0] if api_key.count(".") == 1 else api_key


def _jwt_key_id(token: str) -> str | None:
    """The `api_key` claim of a Zhipu JWT; the signature is not checked (no secret here)."""
    try:
        header_part, payload_part, _ = token.split(".")
        header = json.loads(_b64url(header_part))
        payload = json.loads(_b64url(payload_part))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        return None
    key_id = payload.get("api_key") if isinstance(payload, dict) else None
    return key_id if isinstance(key_id, str) else None


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
