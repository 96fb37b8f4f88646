"""Replies that break the vendor's documented shape, over real HTTP, for every vendor.

A 200 whose body cannot be read is the vendor's failure, like a 5xx: the request fails over to
another key instead of escaping as a bare ``IndexError``. And OpenAI-compatible servers that
report stream usage more than once (on the finish chunk and again at the end, or cumulatively
on every chunk) are counted once.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from langchain_pllm import BalancedChatModel, BalancedEmbeddings
from langchain_pllm.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeZhipuServer,
)
from langchain_pllm.testing.server import sse


def _first_reply_broken(base: type, broken: dict[str, Any]) -> type:
    """A fake server whose first chat (or embeddings) reply is ``broken``."""

    class Broken(base):  # type: ignore[valid-type,misc]
        served = 0

        def _chat_body(self, *args: Any) -> Any:
            self.served += 1
            return broken if self.served == 1 else super()._chat_body(*args)

        def _embedding_body(self, *args: Any) -> Any:
            self.served += 1
            return broken if self.served == 1 else super()._embedding_body(*args)

    return Broken


@pytest.mark.parametrize(
    ("server", "vendor", "broken"),
    [
        (FakeOpenAIServer, "openai", {"id": "x", "object": "chat.completion", "choices": []}),
        (FakeAnthropicServer, "anthropic", {"type": "message", "content": None}),
        (FakeGeminiServer, "google", {"candidates": [{"content": {"parts": "oops"}}]}),
        (FakeZhipuServer, "zhipu", {"id": "x", "choices": []}),
    ],
    ids=["openai", "anthropic", "google", "zhipu"],
)
def test_a_reply_of_the_wrong_shape_fails_over(
    server: type, vendor: str, broken: dict[str, Any]
) -> None:
    with _first_reply_broken(server, broken)() as srv:
        model = BalancedChatModel(
            providers=[
                {"vendor": vendor, "api_key": f"k{i}", "model": "m", "api_base": srv.base_url}
                for i in range(2)
            ],
            max_retries=2,
        )
        reply = model.invoke("hi")
        assert reply.content == "echo: hi"
        assert reply.response_metadata["attempts"] == 2
        stats = model.get_stats()
        assert sum(s["error_count"] for s in stats.values()) == 1


def test_embeddings_with_a_broken_vector_fail_over() -> None:
    broken = {"object": "list", "data": [{"index": 0, "embedding": "!!not base64"}]}
    with _first_reply_broken(FakeOpenAIServer, broken)() as srv:
        emb = BalancedEmbeddings(
            providers=[
                {"vendor": "openai", "api_key": f"k{i}", "model": "e", "api_base": srv.base_url}
                for i in range(2)
            ]
        )
        assert len(emb.embed_query("hi")) == 8
        assert len(srv.requests) == 2


class _UsageOnEveryChunk(FakeOpenAIServer):
    """Repeats the cumulative usage on every stream chunk, as some compatible servers do."""

    def _chat_frames(self, body: Any, model: Any, reply: Any, usage: Any) -> Any:
        frames = []
        for frame, content in super()._chat_frames(body, model, reply, usage):
            if frame.startswith(b"data: {"):
                data = json.loads(frame[6:])
                data["usage"] = usage
                frame = sse(data)
            frames.append((frame, content))
        return frames


@pytest.mark.parametrize("shape", ["finish chunk and final chunk", "every chunk"])
def test_stream_usage_reported_more_than_once_is_counted_once(shape: str) -> None:
    srv = _UsageOnEveryChunk() if shape == "every chunk" else FakeOpenAIServer()
    if shape != "every chunk":
        srv.usage_on_finish_chunk = True  # type: ignore[attr-defined]
    with srv:
        model = BalancedChatModel(
            providers=[
                {
                    "vendor": "siliconflow",
                    "api_key": "k",
                    "model": "Qwen/Qwen2.5-7B-Instruct",
                    "api_base": srv.base_url,
                    "tpm": 100_000,
                }
            ]
        )
        full = None
        for chunk in model.stream("hello there my friend"):
            full = chunk if full is None else full + chunk
        srv_usage = srv.requests[-1].usage
        assert srv_usage is not None
        expected = srv_usage["total_tokens"]
        assert full is not None
        assert full.usage_metadata is not None
        assert full.usage_metadata["total_tokens"] == expected
        stats = model.get_stats()["siliconflow-0"]
        assert stats["total_tokens"] == expected
        assert stats["tokens_in_window"] == expected
