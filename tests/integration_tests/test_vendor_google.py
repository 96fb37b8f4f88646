"""GoogleProvider (google-genai) over real HTTP against FakeGeminiServer, through the faces."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelError,
    ModelInvalidRequestError,
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
from langchain_pllm.testing import FakeGeminiServer, Fault, Reply
from langchain_pllm.testing.replies import embedding_vector

# One transport (tests/integration_tests/conftest.py): the google-genai SDK never takes
# ``http_backend``: both runs would be one.
pytestmark = pytest.mark.one_transport

KEY = "AIza-secret-key"
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class Person(BaseModel):
    name: str
    age: int


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def model_for(srv: FakeGeminiServer, **kwargs: Any) -> BalancedChatModel:
    provider = {"vendor": "google", "api_key": KEY, "model": "gemini-x", "api_base": srv.base_url}
    provider.update(kwargs.pop("provider", {}))
    return BalancedChatModel(providers=[provider], max_retries=0, **kwargs)


def field(container: dict[str, Any], camel: str) -> Any:
    """A wire field by its camelCase name or its snake_case twin: google-genai sends some
    nested fields (``parameters_json_schema``, ``mime_type``) in snake_case, which the API
    accepts."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    return container[camel] if camel in container else container[snake]


def joined(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    return full


def expected_usage(srv: FakeGeminiServer) -> dict[str, int]:
    rec = srv.requests[-1]
    return {
        "input_tokens": rec.prompt_tokens,
        "output_tokens": rec.completion_tokens,
        "total_tokens": rec.prompt_tokens + rec.completion_tokens,
    }


def test_invoke_converts_system_history_and_reports_usage(
    fake_gemini_server: FakeGeminiServer,
) -> None:
    srv = fake_gemini_server
    msg = model_for(srv).invoke(
        [
            SystemMessage("be brief"),
            HumanMessage("first"),
            AIMessage("answer one"),
            HumanMessage("hello"),
            HumanMessage("there"),
        ]
    )
    assert msg.content == "echo: hello there"
    meta = msg.response_metadata
    assert meta["finish_reason"] == "stop"
    assert meta["stop_reason"] == "STOP"
    assert meta["model_provider"] == "google_genai"
    assert meta["vendor"] == "google"
    assert meta["model_name"] == "gemini-x"
    assert msg.usage_metadata == expected_usage(srv)
    rec = srv.requests[-1]
    assert rec.path == "/v1beta/models/gemini-x:generateContent"
    assert rec.headers["x-goog-api-key"] == KEY
    assert rec.body["systemInstruction"]["parts"] == [{"text": "be brief"}]
    assert [c["role"] for c in rec.body["contents"]] == ["user", "model", "user"]
    assert rec.body["contents"][2]["parts"] == [{"text": "hello"}, {"text": "there"}]


def test_params_are_mapped(fake_gemini_server: FakeGeminiServer) -> None:
    srv = fake_gemini_server
    model = model_for(srv, temperature=0.3, max_tokens=50, top_p=0.9, stop=["END"])
    model.invoke("hi", top_k=5, seed=7)
    config = srv.requests[-1].body["generationConfig"]
    assert config == {
        "temperature": 0.3,
        "maxOutputTokens": 50,
        "topP": 0.9,
        "topK": 5,
        "seed": 7,
        "stopSequences": ["END"],
    }
    with pytest.warns(UserWarning, match="logit_bias"):
        model.invoke("hi", logit_bias={"1": 2})


def test_images_base64_and_url(fake_gemini_server: FakeGeminiServer) -> None:
    srv = fake_gemini_server
    content: list[str | dict[str, Any]] = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image", "url": "https://example.com/cat.jpg"},
    ]
    model_for(srv).invoke([HumanMessage(content=content)])
    parts = srv.requests[-1].body["contents"][0]["parts"]
    inline = field(parts[1], "inlineData")
    assert field(inline, "mimeType") == "image/png"
    data = inline["data"]  # google-genai sends bytes as unpadded url-safe base64
    assert base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)) == base64.b64decode(PNG)
    file_data = field(parts[2], "fileData")
    assert field(file_data, "fileUri") == "https://example.com/cat.jpg"
    assert field(file_data, "mimeType") == "image/jpeg"


def test_stream_reports_last_cumulative_usage_once(fake_gemini_server: FakeGeminiServer) -> None:
    srv = fake_gemini_server
    chunks = list(model_for(srv).stream("one two three"))
    full = joined(chunks)
    assert full.content == "echo: one two three"
    # Gemini repeats cumulative usageMetadata on every frame; summing would overcount.
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    assert full.usage_metadata == expected_usage(srv)
    assert sum(1 for c in chunks if "finish_reason" in c.response_metadata) == 1
    assert full.response_metadata["finish_reason"] == "stop"
    assert full.response_metadata["model_name"] == "gemini-x"
    assert srv.requests[-1].path.endswith(":streamGenerateContent")


async def test_ainvoke_and_astream(fake_gemini_server: FakeGeminiServer) -> None:
    srv = fake_gemini_server
    model = model_for(srv)
    msg = await model.ainvoke("async hello")
    assert msg.content == "echo: async hello"
    assert msg.usage_metadata == expected_usage(srv)
    chunks = [c async for c in model.astream("async stream")]
    full = joined(chunks)
    assert full.content == "echo: async stream"
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    assert full.usage_metadata == expected_usage(srv)


def test_tool_call_round_trip(fake_gemini_server: FakeGeminiServer) -> None:
    srv = fake_gemini_server
    bound = model_for(srv).bind_tools([add])
    question: list[BaseMessage] = [HumanMessage("what is 2 + 3?")]
    first = bound.invoke(question)
    assert isinstance(first, AIMessage)
    assert first.response_metadata["finish_reason"] == "tool_calls"
    call = first.tool_calls[0]
    assert call["name"] == "add"
    assert call["id"].startswith("call_")  # Gemini gives none: generated
    declaration = srv.requests[-1].body["tools"][0]["functionDeclarations"][0]
    assert declaration["name"] == "add"
    assert field(declaration, "parametersJsonSchema")["required"] == ["a", "b"]
    result = ToolMessage(str(add(**call["args"])), tool_call_id=call["id"])
    final = bound.invoke([*question, first, result])
    assert final.content == f"result: {result.content}"
    sent = srv.requests[-1].body["contents"]
    assert sent[1]["role"] == "model"
    assert sent[1]["parts"][0]["functionCall"] == {"name": "add", "args": call["args"]}
    assert sent[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "add", "response": {"result": result.content}}}],
    }


def test_tool_call_ids_are_stable_between_stream_and_invoke(
    fake_gemini_server: FakeGeminiServer,
) -> None:
    srv = fake_gemini_server
    srv.set_responder(
        lambda body: Reply(tool_calls=[("add", {"a": 2, "b": 3}), ("add", {"a": 1, "b": 1})])
    )
    chunks = list(model_for(srv).bind_tools([add]).stream("2 + 3 and 1 + 1"))
    full = joined(chunks)
    assert [tc["args"] for tc in full.tool_calls] == [{"a": 2, "b": 3}, {"a": 1, "b": 1}]
    ids = [tc["id"] for tc in full.tool_calls]
    assert len(set(ids)) == 2
    assert [tc["index"] for c in chunks for tc in c.tool_call_chunks] == [0, 1]
    assert full.response_metadata["finish_reason"] == "tool_calls"
    assert full.usage_metadata == expected_usage(srv)


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("required", {"mode": "ANY"}),
        ("add", {"mode": "ANY", "allowedFunctionNames": ["add"]}),
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
    ],
)
def test_tool_choice_mapping(
    fake_gemini_server: FakeGeminiServer, choice: str, wire: dict[str, Any]
) -> None:
    srv = fake_gemini_server
    model_for(srv).bind_tools([add], tool_choice=choice).invoke("2 + 3")
    assert srv.requests[-1].body["toolConfig"]["functionCallingConfig"] == wire


def test_structured_output_function_calling(fake_gemini_server: FakeGeminiServer) -> None:
    srv = fake_gemini_server
    assert model_for(srv).with_structured_output(Person).invoke("who?") == Person(name="x", age=1)


def test_structured_output_json_schema(fake_gemini_server: FakeGeminiServer) -> None:
    srv = fake_gemini_server
    runnable = model_for(srv).with_structured_output(Person, method="json_schema")
    assert runnable.invoke("who?") == Person(name="x", age=1)
    config = srv.requests[-1].body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"]["required"] == ["name", "age"]


ERRORS = [
    (Fault(status=500), ModelAPIError),
    (Fault(status=503), ModelAPIError),
    (Fault(status=401), ModelAuthenticationError),
    (Fault(status=400, message="Invalid JSON payload"), ModelInvalidRequestError),
    (
        Fault(
            status=400,
            message="The input token count (1200000) exceeds the maximum number of tokens "
            "allowed (1048576).",
        ),
        ContextOverflowError,
    ),
    (Fault(drop=True), ModelConnectionError),
]


@pytest.mark.parametrize(("fault", "error"), ERRORS)
def test_errors_are_classified(
    fake_gemini_server: FakeGeminiServer, fault: Fault, error: type[ModelError]
) -> None:
    srv = fake_gemini_server
    srv.enqueue(fault)
    with pytest.raises(error) as info:
        model_for(srv).invoke("hi")
    assert info.value.provider == "google-0"  # type: ignore[attr-defined]
    assert KEY not in str(info.value)
    if fault.status:
        assert info.value.status_code == fault.status  # type: ignore[attr-defined]


def test_rate_limit_keeps_retry_after(fake_gemini_server: FakeGeminiServer) -> None:
    srv = fake_gemini_server
    srv.enqueue(Fault(status=429, retry_after=7))
    with pytest.raises(ModelRateLimitError) as info:
        model_for(srv).invoke("hi")
    assert info.value.retry_after == 7.0  # type: ignore[attr-defined]
    assert len(srv.requests) == 1


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(status=429, retry_after=3), ModelRateLimitError),
        (Fault(status=500), ModelAPIError),
        # The aiohttp path would retry a dropped connection by itself after 1-10 s.
        (Fault(drop=True), ModelConnectionError),
    ],
)
async def test_async_and_stream_errors(
    fake_gemini_server: FakeGeminiServer, fault: Fault, error: type[ModelError]
) -> None:
    srv = fake_gemini_server
    srv.enqueue(fault)
    with pytest.raises(error):
        await model_for(srv).ainvoke("hi")
    srv.enqueue(fault)
    with pytest.raises(error):
        [c async for c in model_for(srv, provider={"model": "gemini-y"}).astream("hi")]
    assert len(srv.requests) == 2


def test_cut_stream_is_a_connection_error(fake_gemini_server: FakeGeminiServer) -> None:
    srv = fake_gemini_server
    srv.enqueue(Fault(cut_after=1))
    with pytest.raises(ModelConnectionError):
        list(model_for(srv).stream("one two three four"))


def test_timeout_is_sent_in_milliseconds(fake_gemini_server: FakeGeminiServer) -> None:
    srv = fake_gemini_server
    srv.enqueue(Fault(latency=1.0))
    with pytest.raises(ModelTimeoutError):
        model_for(srv, provider={"timeout": 0.2}).invoke("hi")
    # A timeout read as seconds (200 s) would have let this answer arrive.
    srv.enqueue(Fault(latency=1.0))
    with pytest.raises(ModelTimeoutError):
        model_for(srv, timeout=0.2, provider={"model": "gemini-y"}).invoke("hi")


def test_embeddings_batch_by_100(fake_gemini_server: FakeGeminiServer) -> None:
    srv = fake_gemini_server
    emb = BalancedEmbeddings(
        providers=[
            {"vendor": "google", "api_key": KEY, "model": "text-embedding-004", "api_base": srv.url}
        ],
        max_retries=0,
    )
    texts = [f"text {i}" for i in range(250)]
    vectors = emb.embed_documents(texts)
    assert vectors == [pytest.approx(list(embedding_vector(t, srv.dimensions))) for t in texts]
    calls = [r for r in srv.requests if r.path.endswith(":batchEmbedContents")]
    assert len(calls) == 3
    assert max(len(r.body["requests"]) for r in calls) == 100


async def test_aembeddings(fake_gemini_server: FakeGeminiServer) -> None:
    srv = fake_gemini_server
    emb = BalancedEmbeddings(
        providers=[
            {"vendor": "google", "api_key": KEY, "model": "text-embedding-004", "api_base": srv.url}
        ],
        max_retries=0,
    )
    assert await emb.aembed_query("hello") == pytest.approx(
        list(embedding_vector("hello", srv.dimensions))
    )
    srv.enqueue(Fault(status=429, retry_after=2))
    with pytest.raises(ModelRateLimitError):
        await emb.aembed_query("again")


def test_usage_counts_thoughts_and_cache() -> None:
    # The fake reports neither; the SDK's own usage type stands in for a real reply.
    from google.genai import types

    from langchain_pllm.providers.google_convert import usage_of

    meta = types.GenerateContentResponseUsageMetadata(
        prompt_token_count=10,
        candidates_token_count=5,
        thoughts_token_count=3,
        cached_content_token_count=4,
        total_token_count=18,
    )
    assert usage_of(meta) == {
        "input_tokens": 10,
        "output_tokens": 8,
        "total_tokens": 18,
        "input_token_details": {"cache_read": 4},
        "output_token_details": {"reasoning": 3},
    }


def test_tool_result_media_are_parts_beside_the_function_response(
    fake_gemini_server: FakeGeminiServer,
) -> None:
    srv = fake_gemini_server
    call = {"name": "add", "args": {"a": 2, "b": 3}, "id": "call_1", "type": "tool_call"}
    result = ToolMessage(
        content=[
            {"type": "text", "text": "the chart"},
            {"type": "image", "base64": PNG, "mime_type": "image/png"},
            {"type": "file", "url": "https://example.com/a.pdf", "mime_type": "application/pdf"},
        ],
        tool_call_id="call_1",
    )
    history = [HumanMessage("chart it"), AIMessage("", tool_calls=[call]), result]
    model_for(srv).bind_tools([add]).invoke(history)
    turn = srv.requests[-1].body["contents"][2]
    assert turn["role"] == "user"
    function_response, image, document = turn["parts"]
    # The text is the result; the media are parts the model sees, not base64 inside JSON.
    assert function_response == {
        "functionResponse": {"name": "add", "response": {"result": "the chart"}}
    }
    inline = field(image, "inlineData")
    assert field(inline, "mimeType") == "image/png"
    data = inline["data"]  # unpadded url-safe base64, as google-genai sends bytes
    assert base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)) == base64.b64decode(PNG)
    file_data = field(document, "fileData")
    assert field(file_data, "fileUri") == "https://example.com/a.pdf"
    assert field(file_data, "mimeType") == "application/pdf"
    assert PNG not in str(function_response)
