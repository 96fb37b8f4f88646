"""A fake Zhipu (BigModel open platform) API speaking the real wire format.

Zhipu's ``/api/paas/v4`` API is OpenAI-shaped, so chat formatting comes from the OpenAI fake;
what differs is here: the paths, a ``request_id`` in replies, usage on the final stream chunk,
float-list embeddings capped at 64 texts, the error body `{"error": {"code": "1261",
"message"}}`` with Zhipu's numeric business codes (all quota errors are HTTP 429: ``1113` the
account is in arrears, ``1302`` too many concurrent requests, ``1303`` too frequent, ``1304`` the
day's calls used up), and authentication by either the raw ``id.secret`` key or the HS256 JWT
the ``zhipuai`` SDK signs from it (faults, budgets and caches then follow the key id).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aiohttp import web

from langchain_pllm.testing.budgets import Reading
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

#: Zhipu's messages for its quota codes (the real API words them in Chinese or English).
_QUOTA_MESSAGES = {
    "1113": "Your account is in arrears, please recharge and try again",
    "1302": "High concurrency usage of this API, please reduce concurrency or contact "
    "customer service to increase limits",
    "1303": "High frequency usage of this API, please reduce frequency or contact customer "
    "service to increase limits",
    "1304": "The daily call limit for this API has been reached, contact customer service "
    "to purchase more",
}


class FakeZhipuServer(OpenAIChatFormat):
    """Fake Zhipu API: point ``ZhipuAI(api_key=..., base_url=srv.base_url)`` at it.

    Paths: ``/api/paas/v4/chat/completions``, ``/api/paas/v4/embeddings``. ``Fault.code`` becomes
    ``error.code`` (e.g. ``"1261"`` for a too-long prompt). Faults, budgets and concurrency caps
    bound to an ``id.secret`` key also hit requests signed as a JWT from it. A concurrency cap
    (``set_concurrency_limit``) answers ``1302``; an exceeded budget ``1303`` (``1304`` for a
    window of a day or more). See ``FakeVendorServer`` for arguments.
    """

    vendor = "zhipu"
    api_prefix = "/api/paas/v4"
    default_max_batch = 64
    usage_on_finish_chunk = True
    chat_id_prefix = "glm-"

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

    def _key_identity(self, api_key: str) -> str:
        return _key_id(api_key)

    def spent_fault(self, code: str = "1113") -> Fault:
        """HTTP 429 with a spent-quota business code.

        Args:
            code: ``"1113"`` (account in arrears, the default) or ``"1304"`` (the day's
                calls used up).
        """
        return Fault(status=429, code=code, message=_QUOTA_MESSAGES.get(code, "Quota exhausted"))

    def concurrency_fault(self) -> Fault:
        """HTTP 429 with code 1302: too many concurrent requests (a rate limit, not spent)."""
        return Fault(status=429, code="1302", message=_QUOTA_MESSAGES["1302"])

    def _concurrency_error(self, limit: int) -> Fault:
        return self.concurrency_fault()

    def _budget_error(self, exceeded: Reading, model: str) -> Fault:
        code = "1304" if (exceeded.per or 0) >= 86_400 else "1303"
        return Fault(
            status=429, code=code, message=_QUOTA_MESSAGES[code], retry_after=exceeded.reset
        )

    def _error_body(self, fault: Fault) -> dict[str, Any]:
        status = fault.status or 500
        default = _ERROR_CODES.get(status, "500" if status >= 500 else "1210")
        # Zhipu's codes are numeric strings; a shared check's OpenAI code takes Zhipu's default.
        code = fault.code if fault.code and fault.code.isdigit() else default
        return {"error": {"code": code, "message": fault.message}}

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
    """The ``api_key`` claim of a Zhipu JWT; the signature is not checked (no secret here)."""
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
