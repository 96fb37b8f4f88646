"""Anthropic's Messages API through the ``anthropic`` SDK (chat only): the calls and their errors.

The wire format (messages, tools, the forced JSON tool, replies and stream events) is
``providers.anthropic_convert``'s; this module builds the clients, makes the calls and
classifies what the SDK raises. An error inside a stream arrives as an event of an HTTP 200
response: its ``type`` stands for the status it would have had.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import anthropic
import httpx2
from langchain_core.exceptions import (
    ModelAPIError,
    ModelConnectionError,
    ModelTimeoutError,
)
from langchain_core.messages import AIMessage, AIMessageChunk

from langchain_pllm.exceptions import InvalidCallError, model_error
from langchain_pllm.providers.anthropic_convert import (
    AnthropicStreamReader,
    message_of,
    request_payload,
)
from langchain_pllm.providers.base import ChatRequest, Provider, pooled_sdk_client
from langchain_pllm.providers.convert import JsonFormat, error_object
from langchain_pllm.providers.errors import (
    caller_fault,
    class_for_status,
    mark_spent,
    overflow_or,
    parsing_reply,
    retry_after_of,
    spent_class,
)
from langchain_pllm.providers.rate_headers import anthropic_limits, anthropic_rest, report

__all__ = ["AnthropicProvider", "classify_anthropic_error"]

# Error types of an error sent inside a stream (HTTP status 200) to the status they stand for.
_ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


# 429s that are spent money dressed as rate limits (the SDK's EnforcedSpendLimitReachedError and
# ContractSpendLimitReachedError, subclasses of its RateLimitError).
_SPENT_CODES = frozenset({"enforced_spend_limit_reached", "contract_spend_limit_reached"})


def classify_anthropic_error(exc: BaseException, provider_id: str) -> BaseException:
    """Map an ``anthropic`` SDK (or transport) exception onto a LangChain model error."""
    caller = caller_fault(exc, provider_id)
    if caller is not None:
        return caller
    if isinstance(exc, anthropic.APIStatusError):
        error = error_object(exc.body)
        error_type = str(error.get("type") or "")
        text = str(error.get("message") or exc.message)
        status = exc.status_code
        if status < 400:  # an error event inside a 200 stream
            status = _ERROR_TYPE_STATUS.get(error_type, 500)
        # A key without credit is spent: it rests until its money may be back, then one probe.
        details = error.get("details")
        code = details.get("error_code") if isinstance(details, Mapping) else None
        spent = status == 402 or code in _SPENT_CODES or "credit balance" in text.lower()
        cls = spent_class(spent, overflow_or(class_for_status(status), text))
        return mark_spent(
            model_error(
                cls,
                f"{provider_id}: HTTP {status}: {error_type or 'error'}: {text}",
                cause=exc,
                retry_after=retry_after_of(exc.response.headers),
                status_code=status,
                provider=provider_id,
            ),
            spent,
        )
    if isinstance(exc, (anthropic.APITimeoutError, httpx2.TimeoutException)):
        return model_error(
            ModelTimeoutError, f"{provider_id}: timed out", cause=exc, provider=provider_id
        )
    if isinstance(exc, (anthropic.APIConnectionError, httpx2.TransportError)):
        return model_error(
            ModelConnectionError,
            f"{provider_id}: connection failed: {type(exc).__name__}",
            cause=exc,
            provider=provider_id,
        )
    if isinstance(exc, (anthropic.AnthropicError, ValueError)):
        return model_error(
            ModelAPIError,
            f"{provider_id}: malformed response: {type(exc).__name__}: {exc}",
            cause=exc,
            provider=provider_id,
        )
    return exc


_SDK_ERRORS = (anthropic.AnthropicError, httpx2.HTTPError, ValueError)

# The SDK's per-model cap on non-streaming max_tokens (``create`` reads it), if it has one.
_NONSTREAMING_TOKENS: Mapping[str, int] = getattr(
    sys.modules.get("anthropic._constants"), "MODEL_NONSTREAMING_TOKENS", {}
)

# The SDK's retired models and their end-of-life dates (``create`` warns from it), if it has one.
try:
    from anthropic.resources.messages.messages import DEPRECATED_MODELS as _RETIRED
except ImportError:  # an SDK without the table: no warning, as it would give none
    _RETIRED = {}


class AnthropicProvider(Provider):
    """A key of Anthropic's Messages API."""

    vendor = "anthropic"
    model_provider = "anthropic"
    supports_embeddings = False
    media_kinds = frozenset({"image", "file"})

    def _build_sync_client(self) -> Any:
        return pooled_sdk_client(anthropic.Anthropic, self.config)

    def _build_async_client(self) -> Any:
        return pooled_sdk_client(anthropic.AsyncAnthropic, self.config)

    def _payload(self, request: ChatRequest) -> tuple[dict[str, Any], JsonFormat | None]:
        """The ``messages.create`` arguments, and the JSON format a forced tool stands for."""
        payload, json_format = request_payload(
            request.params,
            request.messages,
            model=self.model,
            provider_id=self.id,
            warn_once=self.warn_once,
        )
        timeout = self.attempt_timeout(request)
        if timeout is not None:
            payload["timeout"] = timeout
        return payload, json_format

    def _stream_reader(
        self, payload: dict[str, Any], json_format: JsonFormat | None
    ) -> AnthropicStreamReader:
        return AnthropicStreamReader(
            payload, json_format, model_provider=self.model_provider, provider_id=self.id
        )

    # Chat --------------------------------------------------------------------------------------

    # Replies through the SDK's raw ``post`` (as the OpenAI provider does): its transport, auth,
    # headers, timeouts and error classes, without the typed ``create``'s request options and
    # reply models, about 400 µs of CPU a call (~30% of the SDK's). Streams stay typed.

    def _post_args(self, client: Any, payload: dict[str, Any]) -> dict[str, Any]:
        """``post`` arguments for the ``messages.create`` arguments ``payload``."""
        body = dict(payload)
        options: dict[str, Any] = {}
        headers = dict(body.pop("extra_headers", None) or {})
        for name in ("user_profile_id", "workspace_id"):
            value = body.pop(name, None)
            if value is not None:
                headers.setdefault("anthropic-" + name.replace("_", "-"), value)
        if headers:
            options["headers"] = headers
        query = body.pop("extra_query", None)
        if query:
            options["params"] = query
        extra = body.pop("extra_body", None)
        if extra:
            options["extra_json"] = extra
        retired = _RETIRED.get(body["model"])
        if retired is not None:  # what ``create`` says (streams still go through it)
            warnings.warn(
                f"The model '{body['model']}' is deprecated and will reach end-of-life on "
                f"{retired}.",
                DeprecationWarning,
                stacklevel=4,
            )
        if "timeout" in body:
            options["timeout"] = body.pop("timeout")
        elif client.timeout == anthropic.DEFAULT_TIMEOUT:
            # What ``create`` does first: refuse a non-streaming call that may outrun the
            # default 10 minutes (the caller should stream), else keep that default. The
            # guard is a private SDK method: an SDK without it keeps the client's timeout.
            guard = getattr(client, "_calculate_nonstreaming_timeout", None)
            if guard is not None:
                try:
                    options["timeout"] = guard(
                        body["max_tokens"], _NONSTREAMING_TOKENS.get(body["model"])
                    )
                except ValueError as e:  # nothing was sent: every key would refuse it alike
                    raise InvalidCallError(f"{self.id}: {e}") from e
        return {"body": body, "options": options, "cast_to": httpx2.Response}

    def _raw_message(self, raw: httpx2.Response, json_format: JsonFormat | None) -> AIMessage:
        report(anthropic_rest(raw.headers), anthropic_limits(raw.headers))
        with parsing_reply(self.id):
            return message_of(
                json.loads(raw.content),
                json_format,
                model_provider=self.model_provider,
                provider_id=self.id,
            )

    def chat(self, request: ChatRequest) -> AIMessage:
        """One Messages API call."""
        payload, json_format = self._payload(request)
        client = self.sync_client
        args = self._post_args(client, payload)  # a refused call raises before the try
        try:
            raw = client.post("/v1/messages", **args)
        except _SDK_ERRORS as e:
            raise classify_anthropic_error(e, self.id) from e
        return self._raw_message(raw, json_format)

    async def achat(self, request: ChatRequest) -> AIMessage:
        """One Messages API call, async."""
        payload, json_format = self._payload(request)
        client = self.async_client
        args = self._post_args(client, payload)  # a refused call raises before the try
        try:
            raw = await client.post("/v1/messages", **args)
        except _SDK_ERRORS as e:
            raise classify_anthropic_error(e, self.id) from e
        return self._raw_message(raw, json_format)

    def stream(self, request: ChatRequest) -> Iterator[AIMessageChunk]:
        """Stream a Messages API call."""
        payload, json_format = self._payload(request)
        reader = self._stream_reader(payload, json_format)
        try:
            with self.sync_client.messages.create(**payload, stream=True) as events:
                report(
                    anthropic_rest(events.response.headers),
                    anthropic_limits(events.response.headers),
                )
                for event in events:
                    with parsing_reply(self.id):
                        chunk = reader.chunk(event)
                    if chunk is not None:
                        yield chunk
        except _SDK_ERRORS as e:
            raise classify_anthropic_error(e, self.id) from e
        with parsing_reply(self.id):
            last = reader.last_chunk()
        yield last

    async def astream(self, request: ChatRequest) -> AsyncIterator[AIMessageChunk]:
        """Stream a Messages API call, async."""
        payload, json_format = self._payload(request)
        reader = self._stream_reader(payload, json_format)
        try:
            events = await self.async_client.messages.create(**payload, stream=True)
            report(
                anthropic_rest(events.response.headers), anthropic_limits(events.response.headers)
            )
            async with events:
                async for event in events:
                    with parsing_reply(self.id):
                        chunk = reader.chunk(event)
                    if chunk is not None:
                        yield chunk
        except _SDK_ERRORS as e:
            raise classify_anthropic_error(e, self.id) from e
        with parsing_reply(self.id):
            last = reader.last_chunk()
        yield last
