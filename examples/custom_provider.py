"""Your own vendor in the pool: a ``Provider`` subclass, registered once, named from YAML.

``GatewayProvider`` talks to an OpenAI-compatible HTTP API (an in-house gateway, say) with plain
httpx instead of a vendor SDK. Registered as ``gateway``, it joins a pool from YAML exactly like
the built-in vendors: rate limits, breakers, failover and ``get_stats()`` all apply.

Runs offline against the package's fake OpenAI server: ``python examples/custom_provider.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from langchain_core.exceptions import (
    ModelAPIError,
    ModelConnectionError,
    ModelError,
    ModelTimeoutError,
)
from langchain_core.messages import AIMessage, AIMessageChunk, convert_to_openai_messages
from langchain_core.messages.ai import UsageMetadata

from langchain_pllm import BalancedChatModel, BalancedEmbeddings, register_vendor
from langchain_pllm.providers import (
    ChatRequest,
    EmbeddingResult,
    Provider,
    class_for_status,
    model_error,
    retry_after_of,
)
from langchain_pllm.testing import FakeOpenAIServer, Fault

# The LangChain call parameters this gateway takes; others are dropped with one warning.
_PARAMS = ("temperature", "max_tokens", "top_p", "stop")


class GatewayProvider(Provider):
    """One key of an OpenAI-compatible gateway, spoken to with httpx."""

    model_provider = "gateway"
    supports_embeddings = True
    embed_batch_limit = 256

    # Clients: the base class builds one sync client per provider and one async client per
    # event loop, on first use.
    def _build_sync_client(self) -> httpx.Client:
        return httpx.Client(base_url=self.config.api_base, headers=self._auth())

    def _build_async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.config.api_base, headers=self._auth())

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_key.get_secret_value()}"}

    # Chat ----------------------------------------------------------------------------------

    def chat(self, request: ChatRequest) -> AIMessage:
        try:
            response = self.sync_client.post(
                "/chat/completions", json=self._body(request), timeout=self._timeout(request)
            )
        except httpx.HTTPError as exc:
            raise self._classified(exc) from exc
        return self._message(self._checked(response))

    async def achat(self, request: ChatRequest) -> AIMessage:
        try:
            response = await self.async_client.post(
                "/chat/completions", json=self._body(request), timeout=self._timeout(request)
            )
        except httpx.HTTPError as exc:
            raise self._classified(exc) from exc
        return self._message(self._checked(response))

    def stream(self, request: ChatRequest) -> Iterator[AIMessageChunk]:
        body = self._body(request, stream=True)
        try:
            with self.sync_client.stream(
                "POST", "/chat/completions", json=body, timeout=self._timeout(request)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    self._checked(response)
                for line in response.iter_lines():
                    yield from self._chunks(line)
        except httpx.HTTPError as exc:
            raise self._classified(exc) from exc

    async def astream(self, request: ChatRequest) -> AsyncIterator[AIMessageChunk]:
        body = self._body(request, stream=True)
        try:
            async with self.async_client.stream(
                "POST", "/chat/completions", json=body, timeout=self._timeout(request)
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._checked(response)
                async for line in response.aiter_lines():
                    for chunk in self._chunks(line):
                        yield chunk
        except httpx.HTTPError as exc:
            raise self._classified(exc) from exc

    # Embeddings ----------------------------------------------------------------------------

    def embed(self, texts: list[str]) -> EmbeddingResult:
        try:
            response = self.sync_client.post("/embeddings", json=self._embed_body(texts))
        except httpx.HTTPError as exc:
            raise self._classified(exc) from exc
        return self._vectors(self._checked(response))

    async def aembed(self, texts: list[str]) -> EmbeddingResult:
        try:
            response = await self.async_client.post("/embeddings", json=self._embed_body(texts))
        except httpx.HTTPError as exc:
            raise self._classified(exc) from exc
        return self._vectors(self._checked(response))

    # Wire format ---------------------------------------------------------------------------

    def _timeout(self, request: ChatRequest) -> float:
        return self.attempt_timeout(request) or 60.0

    def _body(self, request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": convert_to_openai_messages(list(request.messages)),
        }
        for name, value in request.params.items():
            if name in _PARAMS:
                if value is not None:
                    body[name] = value
            else:
                self.warn_once(name, f"the gateway takes no {name!r}; it was dropped")
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _embed_body(self, texts: list[str]) -> dict[str, Any]:
        return {"model": self.model, "input": texts, "encoding_format": "float"}

    def _message(self, data: dict[str, Any]) -> AIMessage:
        choice = data["choices"][0]
        return AIMessage(
            content=choice["message"].get("content") or "",
            usage_metadata=_usage(data.get("usage")),
            response_metadata={
                "finish_reason": choice.get("finish_reason"),
                "model_name": data.get("model", self.model),
                "model_provider": self.model_provider,
            },
        )

    def _chunks(self, line: str) -> Iterator[AIMessageChunk]:
        if not line.startswith("data: ") or line == "data: [DONE]":
            return
        data = json.loads(line[len("data: ") :])
        usage = _usage(data.get("usage"))
        if usage is not None:  # the last frame, with choices: []
            yield AIMessageChunk(content="", usage_metadata=usage)
        for choice in data.get("choices") or ():
            text = (choice.get("delta") or {}).get("content") or ""
            if choice.get("finish_reason"):
                meta = {"finish_reason": choice["finish_reason"], "model_name": data.get("model")}
                yield AIMessageChunk(content=text, response_metadata=meta)
            elif text:
                yield AIMessageChunk(content=text)

    def _vectors(self, data: dict[str, Any]) -> EmbeddingResult:
        rows = sorted(data["data"], key=lambda row: row["index"])
        tokens = (data.get("usage") or {}).get("prompt_tokens")
        return EmbeddingResult(vectors=[row["embedding"] for row in rows], tokens=tokens)

    # Errors: classify once, onto LangChain's model errors; the balancer reads nothing else.

    def _checked(self, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if status >= 400:
            raise model_error(
                class_for_status(status),
                f"{self.id}: HTTP {status}: {response.text[:200]}",
                retry_after=retry_after_of(response.headers),
                status_code=status,
                provider=self.id,
            )
        try:
            data: dict[str, Any] = response.json()
        except ValueError as exc:
            raise self._classified(exc) from exc
        return data

    def _classified(self, exc: Exception) -> ModelError:
        if isinstance(exc, httpx.TimeoutException):
            cls: type[ModelError] = ModelTimeoutError
        elif isinstance(exc, httpx.TransportError):
            cls = ModelConnectionError
        else:  # an unreadable reply is the gateway's fault, like a 5xx
            cls = ModelAPIError
        return model_error(cls, f"{self.id}: {type(exc).__name__}", cause=exc, provider=self.id)


def _usage(raw: dict[str, Any] | None) -> UsageMetadata | None:
    if not raw:
        return None
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    return UsageMetadata(
        input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion
    )


register_vendor("gateway", GatewayProvider)

CONFIG = """
llm:
  use: gateway
  gateway:
    - {api_key: sk-team-a, api_base: "${GATEWAY_URL}", model: gpt-4o-mini, rate_limit: 60}
    - {api_key: sk-team-b, api_base: "${GATEWAY_URL}", model: gpt-4o-mini, name: team-b}
embedding:
  gateway:
    - {api_key: sk-team-a, api_base: "${GATEWAY_URL}", model: text-embedding-3-small}
"""


def main() -> None:
    with FakeOpenAIServer() as gateway:
        os.environ["GATEWAY_URL"] = gateway.base_url
        model = BalancedChatModel.from_config(CONFIG)
        reply = model.invoke("Say hello.")
        print(f"invoke: {reply.response_metadata['provider']}: {reply.content}")

        # One 429 on team A's key: the request fails over to team B unseen by the caller.
        gateway.fault_for_key("sk-team-a", Fault(status=429, retry_after=30), times=1)
        for i in range(2):
            # Two prompts: one prompt sent twice is one conversation and keeps its key.
            reply = model.invoke(f"Say hello again ({i}).")
            meta = reply.response_metadata
            print(f"invoke: {meta['provider']} after {meta['attempts']} attempt(s)")

        streamed = "".join(str(chunk.content) for chunk in model.stream("Count to three."))
        print(f"stream: {streamed}")
        reply = asyncio.run(model.ainvoke("And asynchronously?"))
        print(f"ainvoke: {reply.response_metadata['provider']}: {reply.content}")

        vectors = BalancedEmbeddings.from_config(CONFIG).embed_documents(["a", "b", "c"])
        print(f"embed: {len(vectors)} vectors of {len(vectors[0])} floats")

        for provider, stats in model.get_stats().items():
            print(
                f"stats: {provider} vendor={stats['vendor']} requests={stats['total_requests']} "
                f"tokens={stats['total_tokens']} state={stats['state']} "
                f"resting={stats['resting_for']:.0f}s"
            )


if __name__ == "__main__":
    main()
