"""ZhipuProvider over real HTTP against FakeZhipuServer, through the faces.

The sync path goes through the ``zhipuai`` SDK, the async path through ``openai.AsyncOpenAI``
at the same OpenAI-compatible endpoint; both are exercised here.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelError,
    ModelInvalidRequestError,
    ModelPermissionDeniedError,
    ModelRateLimitError,
    ModelTimeoutError,
)
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic import BaseModel

from langchain_pllm import BalancedChatModel, BalancedEmbeddings
from langchain_pllm.testing import FakeZhipuServer, Fault, Reply
from langchain_pllm.testing.replies import embedding_vector

KEY = "zhipu-key-id.secret-part"


class Person(BaseModel):
    name: str
    age: int


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def model_for(srv: FakeZhipuServer, **kwargs: Any) -> BalancedChatModel:
    provider = {"vendor": "zhipu", "api_key": KEY, "model": "glm-x", "api_base": srv.base_url}
    provider.update(kwargs.pop("provider", {}))
    return BalancedChatModel(providers=[provider], max_retries=0, **kwargs)


def joined(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    return full


def expected_usage(srv: FakeZhipuServer) -> dict[str, int]:
    rec = srv.requests[-1]
    return {
        "input_tokens": rec.prompt_tokens,
        "output_tokens": rec.completion_tokens,
        "total_tokens": rec.prompt_tokens + rec.completion_tokens,
    }


def test_invoke_sends_history_and_reports_usage(fake_zhipu_server: FakeZhipuServer) -> None:
    srv = fake_zhipu_server
    msg = model_for(srv).invoke(
        [SystemMessage("be brief"), HumanMessage("first"), AIMessage("one"), HumanMessage("hi")]
    )
    assert msg.content == "echo: hi"
    meta = msg.response_metadata
    assert meta["finish_reason"] == "stop"
    assert meta["model_provider"] == "zhipuai"
    assert meta["vendor"] == "zhipu"
    assert meta["model_name"] == "glm-x"
    assert msg.usage_metadata == expected_usage(srv)
    rec = srv.requests[-1]
    assert rec.path == "/api/paas/v4/chat/completions"
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    assert [m["role"] for m in rec.body["messages"]] == ["system", "user", "assistant", "user"]


def test_params_are_mapped(fake_zhipu_server: FakeZhipuServer) -> None:
    srv = fake_zhipu_server
    model = model_for(srv, temperature=0.3, max_tokens=50, top_p=0.9)
    model.invoke("hi", stop=["END"], do_sample=False)
    body = srv.requests[-1].body
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 50
    assert body["top_p"] == 0.9
    assert body["stop"] == ["END"]
    assert body["do_sample"] is False
    with pytest.warns(UserWarning, match="logit_bias"):
        model.invoke("hi", logit_bias={"1": 2})
    assert "logit_bias" not in srv.requests[-1].body


def test_stream_counts_usage_once(fake_zhipu_server: FakeZhipuServer) -> None:
    srv = fake_zhipu_server
    chunks = list(model_for(srv).stream("one two three"))
    full = joined(chunks)
    assert full.content == "echo: one two three"
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    assert full.usage_metadata == expected_usage(srv)
    assert sum(1 for c in chunks if "finish_reason" in c.response_metadata) == 1
    assert full.response_metadata["finish_reason"] == "stop"
    assert full.response_metadata["model_name"] == "glm-x"
    # Zhipu puts usage on its last chunk itself; asking for a usage chunk as well would
    # make a compatible server send it twice.
    assert "stream_options" not in srv.requests[-1].body


async def test_ainvoke_and_astream_through_openai_compatible_endpoint(
    fake_zhipu_server: FakeZhipuServer,
) -> None:
    srv = fake_zhipu_server
    model = model_for(srv)
    msg = await model.ainvoke("async hello")
    assert msg.content == "echo: async hello"
    assert msg.usage_metadata == expected_usage(srv)
    assert srv.requests[-1].path == "/api/paas/v4/chat/completions"
    assert srv.requests[-1].headers["user-agent"].startswith("AsyncOpenAI")
    chunks = [c async for c in model.astream("async stream")]
    full = joined(chunks)
    assert full.content == "echo: async stream"
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    assert full.usage_metadata == expected_usage(srv)
    assert full.response_metadata["finish_reason"] == "stop"


def _round_trip(first: AIMessage, srv: FakeZhipuServer) -> tuple[ToolMessage, dict[str, Any]]:
    assert first.response_metadata["finish_reason"] == "tool_calls"
    call = first.tool_calls[0]
    assert call["name"] == "add"
    assert call["id"]
    return ToolMessage(str(add(**call["args"])), tool_call_id=call["id"]), dict(call)


def test_tool_call_round_trip(fake_zhipu_server: FakeZhipuServer) -> None:
    srv = fake_zhipu_server
    bound = model_for(srv).bind_tools([add])
    question: list[BaseMessage] = [HumanMessage("what is 2 + 3?")]
    first = bound.invoke(question)
    assert isinstance(first, AIMessage)
    result, call = _round_trip(first, srv)
    assert srv.requests[-1].body["tools"][0]["function"]["name"] == "add"
    final = bound.invoke([*question, first, result])
    assert final.content == f"result: {result.content}"
    sent = srv.requests[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call["id"]
    assert sent[2] == {"role": "tool", "tool_call_id": call["id"], "content": result.content}


async def test_async_tool_call_round_trip(fake_zhipu_server: FakeZhipuServer) -> None:
    srv = fake_zhipu_server
    bound = model_for(srv).bind_tools([add])
    question: list[BaseMessage] = [HumanMessage("what is 2 + 3?")]
    first = await bound.ainvoke(question)
    assert isinstance(first, AIMessage)
    result, _ = _round_trip(first, srv)
    final = await bound.ainvoke([*question, first, result])
    assert final.content == f"result: {result.content}"


def test_stream_tool_call_chunks(fake_zhipu_server: FakeZhipuServer) -> None:
    srv = fake_zhipu_server
    srv.set_responder(lambda body: Reply(tool_calls=[("add", {"a": 2, "b": 3})]))
    chunks = list(model_for(srv).bind_tools([add]).stream("2 + 3"))
    full = joined(chunks)
    assert [(tc["name"], tc["args"]) for tc in full.tool_calls] == [("add", {"a": 2, "b": 3})]
    assert all(tc["index"] == 0 for c in chunks for tc in c.tool_call_chunks)
    assert full.response_metadata["finish_reason"] == "tool_calls"


def test_tool_choice_only_auto(fake_zhipu_server: FakeZhipuServer) -> None:
    srv = fake_zhipu_server

    def mul(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    model_for(srv).bind_tools([add, mul], tool_choice="mul").invoke("2 * 3")
    body = srv.requests[-1].body
    # Zhipu takes only "auto": a named tool is forced by offering only that tool.
    assert body["tool_choice"] == "auto"
    assert [t["function"]["name"] for t in body["tools"]] == ["mul"]
    model_for(srv).bind_tools([add, mul], tool_choice="none").invoke("2 * 3")
    assert "tools" not in srv.requests[-1].body


def test_structured_output_function_calling(fake_zhipu_server: FakeZhipuServer) -> None:
    srv = fake_zhipu_server
    assert model_for(srv).with_structured_output(Person).invoke("who?") == Person(name="x", age=1)


def test_json_schema_is_sent_as_json_mode_with_the_schema(
    fake_zhipu_server: FakeZhipuServer,
) -> None:
    srv = fake_zhipu_server
    srv.set_responder(lambda body: '{"name": "Ann", "age": 30}')
    runnable = model_for(srv).with_structured_output(Person, method="json_schema")
    assert runnable.invoke("who?") == Person(name="Ann", age=30)
    body = srv.requests[-1].body
    assert body["response_format"] == {"type": "json_object"}
    assert '"required": ["name", "age"]' in body["messages"][0]["content"]


def test_sensitive_finish_is_content_filter(fake_zhipu_server: FakeZhipuServer) -> None:
    srv = fake_zhipu_server
    srv.set_responder(lambda body: Reply(text="", finish_reason="sensitive"))
    msg = model_for(srv).invoke("bad")
    assert msg.response_metadata["finish_reason"] == "content_filter"
    assert msg.response_metadata["stop_reason"] == "sensitive"


ERRORS = [
    (Fault(status=500), ModelAPIError),
    (Fault(status=503), ModelAPIError),
    (Fault(status=401), ModelAuthenticationError),
    (Fault(status=400), ModelInvalidRequestError),
    (Fault(status=400, code="1261", message="Prompt exceeds max length"), ContextOverflowError),
    (Fault(status=429, code="1113", message="account in arrears"), ModelPermissionDeniedError),
    (Fault(drop=True), ModelConnectionError),
]


@pytest.mark.parametrize(("fault", "error"), ERRORS)
def test_errors_are_classified(
    fake_zhipu_server: FakeZhipuServer, fault: Fault, error: type[ModelError]
) -> None:
    srv = fake_zhipu_server
    srv.enqueue(fault)
    with pytest.raises(error) as info:
        model_for(srv).invoke("hi")
    assert info.value.provider == "zhipu-0"  # type: ignore[attr-defined]
    assert KEY not in str(info.value)
    if fault.status:
        assert info.value.status_code == fault.status  # type: ignore[attr-defined]


@pytest.mark.parametrize(("fault", "error"), ERRORS)
async def test_async_errors_are_classified(
    fake_zhipu_server: FakeZhipuServer, fault: Fault, error: type[ModelError]
) -> None:
    srv = fake_zhipu_server
    srv.enqueue(fault)
    with pytest.raises(error):
        await model_for(srv).ainvoke("hi")


def test_rate_limit_keeps_retry_after(fake_zhipu_server: FakeZhipuServer) -> None:
    srv = fake_zhipu_server
    srv.enqueue(Fault(status=429, retry_after=7))
    with pytest.raises(ModelRateLimitError) as info:
        model_for(srv).invoke("hi")
    assert info.value.retry_after == 7.0  # type: ignore[attr-defined]
    assert len(srv.requests) == 1  # zhipuai would retry 3 times by default


async def test_async_rate_limit_and_stream_errors(fake_zhipu_server: FakeZhipuServer) -> None:
    srv = fake_zhipu_server
    srv.enqueue(Fault(status=429, retry_after=4))
    with pytest.raises(ModelRateLimitError) as info:
        [c async for c in model_for(srv).astream("hi")]
    assert info.value.retry_after == 4.0  # type: ignore[attr-defined]
    srv.enqueue(Fault(cut_after=1))
    with pytest.raises(ModelConnectionError):
        [c async for c in model_for(srv, provider={"model": "glm-y"}).astream("one two three")]
    srv.enqueue(Fault(cut_after=1))
    with pytest.raises(ModelConnectionError):
        list(model_for(srv, provider={"model": "glm-z"}).stream("one two three"))


def test_timeout(fake_zhipu_server: FakeZhipuServer) -> None:
    srv = fake_zhipu_server
    srv.enqueue(Fault(latency=1.0))
    with pytest.raises(ModelTimeoutError):
        model_for(srv, provider={"timeout": 0.2}).invoke("hi")


def _embeddings(srv: FakeZhipuServer) -> BalancedEmbeddings:
    return BalancedEmbeddings(
        providers=[
            {"vendor": "zhipu", "api_key": KEY, "model": "embedding-3", "api_base": srv.base_url}
        ],
        max_retries=0,
    )


def test_embeddings_batch_by_64(fake_zhipu_server: FakeZhipuServer) -> None:
    srv = fake_zhipu_server
    texts = [f"text {i}" for i in range(150)]
    vectors = _embeddings(srv).embed_documents(texts)
    assert vectors == [pytest.approx(list(embedding_vector(t, srv.dimensions))) for t in texts]
    calls = [r for r in srv.requests if r.path.endswith("/embeddings")]
    assert len(calls) == 3
    assert max(len(r.body["input"]) for r in calls) == 64


async def test_aembeddings(fake_zhipu_server: FakeZhipuServer) -> None:
    srv = fake_zhipu_server
    texts = [f"text {i}" for i in range(70)]
    vectors = await _embeddings(srv).aembed_documents(texts)
    assert vectors == [pytest.approx(list(embedding_vector(t, srv.dimensions))) for t in texts]
    assert all(r.body["encoding_format"] == "float" for r in srv.requests)
