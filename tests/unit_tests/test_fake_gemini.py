"""The fake Gemini server, exercised through the real `google-genai` SDK over loopback HTTP."""

from __future__ import annotations

import json
import math
import urllib.request

import httpx2
import jsonschema
import pytest
from google import genai
from google.genai import errors, types

from langchain_pllm.testing import FakeGeminiServer, Fault, Reply

MODEL = "gemini-2.0-flash"
LOOKUP = types.FunctionDeclaration(
    name="lookup",
    description="Look something up.",
    parameters=types.Schema(
        type=types.Type.OBJECT,
        properties={
            "q": types.Schema(type=types.Type.STRING),
            "n": types.Schema(type=types.Type.INTEGER),
            "mode": types.Schema(type=types.Type.STRING, enum=["fast", "slow"]),
        },
        required=["q", "n", "mode"],
    ),
)
OTHER = types.FunctionDeclaration(
    name="other",
    parameters_json_schema={"type": "object", "properties": {"flag": {"type": "boolean"}}},
)


def _client(server: FakeGeminiServer, key: str = "g-key") -> genai.Client:
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(base_url=server.base_url, api_version="v1beta"),
    )


@pytest.fixture
def client(fake_gemini_server: FakeGeminiServer) -> genai.Client:
    return _client(fake_gemini_server)


def test_generate_text_usage_and_log(
    client: genai.Client,
    fake_gemini_server: FakeGeminiServer,
) -> None:
    response = client.models.generate_content(
        model=MODEL,
        contents="hello there world",
        config=types.GenerateContentConfig(system_instruction="be brief"),
    )
    assert response.text == "echo: hello there world"
    assert response.candidates
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count) == (11, 4)
    assert usage.total_token_count == 15
    (record,) = fake_gemini_server.requests
    assert record.path == f"/v1beta/models/{MODEL}:generateContent"
    assert record.api_key == "g-key"
    assert record.status == 200
    assert record.usage == {
        "promptTokenCount": 11,
        "candidatesTokenCount": 4,
        "totalTokenCount": 15,
    }


def test_function_calls_forced_and_response(client: genai.Client) -> None:
    response = client.models.generate_content(
        model=MODEL,
        contents="hello",
        config=types.GenerateContentConfig(tools=[types.Tool(function_declarations=[LOOKUP])]),
    )
    assert response.function_calls
    (call,) = response.function_calls
    assert (call.name, call.args) == ("lookup", {"q": "x", "n": 1, "mode": "fast"})
    forced = client.models.generate_content(
        model=MODEL,
        contents="hello",
        config=types.GenerateContentConfig(
            tools=[types.Tool(function_declarations=[LOOKUP, OTHER])],
            tool_config=types.ToolConfig(
                function_calling_config=types.FunctionCallingConfig(
                    mode=types.FunctionCallingConfigMode.ANY, allowed_function_names=["other"]
                )
            ),
        ),
    )
    assert forced.function_calls
    assert forced.function_calls[0].name == "other"
    assert forced.function_calls[0].args == {"flag": True}
    history = [
        types.Content(role="user", parts=[types.Part(text="hello")]),
        types.Content(role="model", parts=[types.Part(function_call=call)]),
        types.Content(
            role="user",
            parts=[types.Part.from_function_response(name="lookup", response={"result": "7 hits"})],
        ),
    ]
    answer = client.models.generate_content(
        model=MODEL,
        contents=history,
        config=types.GenerateContentConfig(tools=[types.Tool(function_declarations=[LOOKUP])]),
    )
    assert answer.text == "result: 7 hits"


def test_structured_output(client: genai.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    response = client.models.generate_content(
        model=MODEL,
        contents="hello",
        config=types.GenerateContentConfig(
            response_mime_type="application/json", response_json_schema=schema
        ),
    )
    value = json.loads(response.text or "")
    jsonschema.validate(value, schema)
    assert value == {"name": "x", "age": 1}


def test_stream_cumulative_usage(
    client: genai.Client,
    fake_gemini_server: FakeGeminiServer,
) -> None:
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="hello there world"))
    assert "".join(c.text or "" for c in chunks) == "echo: hello there world"
    assert len(chunks) == 4
    counts = [c.usage_metadata.candidates_token_count for c in chunks if c.usage_metadata]
    assert counts == sorted(counts)
    assert counts[-1] == 4
    assert all(c.usage_metadata and c.usage_metadata.prompt_token_count == 6 for c in chunks)
    finishes = [c.candidates[0].finish_reason for c in chunks if c.candidates]
    assert finishes[:-1] == [None, None, None]
    assert finishes[-1] == types.FinishReason.STOP
    (record,) = fake_gemini_server.requests
    assert record.path.endswith(":streamGenerateContent")
    assert record.stream is True
    assert record.usage is not None
    assert record.usage["candidatesTokenCount"] == 4


def test_stream_function_call(client: genai.Client) -> None:
    chunks = list(
        client.models.generate_content_stream(
            model=MODEL,
            contents="hello",
            config=types.GenerateContentConfig(tools=[types.Tool(function_declarations=[LOOKUP])]),
        )
    )
    calls = [call for chunk in chunks for call in chunk.function_calls or ()]
    assert [call.name for call in calls] == ["lookup"]


def test_embeddings_batch_single_and_limit(
    client: genai.Client,
    fake_gemini_server: FakeGeminiServer,
) -> None:
    result = client.models.embed_content(model="text-embedding-004", contents=["a b", "c", "a b"])
    assert result.embeddings
    vectors = [e.values or [] for e in result.embeddings]
    assert len(vectors) == 3
    assert all(len(v) == 8 for v in vectors)
    assert all(math.isclose(math.hypot(*v), 1.0) for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert fake_gemini_server.requests[-1].path.endswith(":batchEmbedContents")
    assert fake_gemini_server.requests[-1].prompt_tokens == 5
    single = client.models.embed_content(
        model="text-embedding-004",
        contents="a b",
        config=types.EmbedContentConfig(output_dimensionality=4),
    )
    assert single.embeddings
    assert len(single.embeddings[0].values or []) == 4
    with pytest.raises(errors.ClientError) as caught:
        client.models.embed_content(model="e", contents=[f"t{i}" for i in range(101)])
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    ("status", "error_class", "status_name"),
    [
        (400, errors.ClientError, "INVALID_ARGUMENT"),
        (401, errors.ClientError, "UNAUTHENTICATED"),
        (403, errors.ClientError, "PERMISSION_DENIED"),
        (404, errors.ClientError, "NOT_FOUND"),
        (429, errors.ClientError, "RESOURCE_EXHAUSTED"),
        (500, errors.ServerError, "INTERNAL"),
        (503, errors.ServerError, "UNAVAILABLE"),
    ],
)
def test_status_faults_raise_sdk_errors(
    client: genai.Client,
    fake_gemini_server: FakeGeminiServer,
    status: int,
    error_class: type[errors.APIError],
    status_name: str,
) -> None:
    fake_gemini_server.enqueue(Fault(status=status, retry_after=4, message="nope"))
    with pytest.raises(error_class) as caught:
        client.models.generate_content(model=MODEL, contents="hello")
    assert (caught.value.code, caught.value.status) == (status, status_name)
    assert caught.value.message == "nope"
    assert caught.value.response.headers["retry-after"] == "4"


def test_drop_and_cut(
    client: genai.Client,
    fake_gemini_server: FakeGeminiServer,
) -> None:
    fake_gemini_server.enqueue(Fault(drop=True), Fault(cut_after=1))
    with pytest.raises(httpx2.TransportError):
        client.models.generate_content(model=MODEL, contents="hello")
    texts: list[str] = []

    def consume() -> None:
        for chunk in client.models.generate_content_stream(model=MODEL, contents="hello there"):
            texts.append(chunk.text or "")

    with pytest.raises(httpx2.TransportError):
        consume()
    assert texts == ["echo: "]


def test_key_from_query_and_fault_for_key(
    fake_gemini_server: FakeGeminiServer,
) -> None:
    fake_gemini_server.fault_for_key("g-bad", Fault(status=403))
    bad = _client(fake_gemini_server, "g-bad")  # a throwaway genai client closes itself
    with pytest.raises(errors.ClientError):
        bad.models.generate_content(model=MODEL, contents="x")
    good = _client(fake_gemini_server, "g-good")
    assert good.models.generate_content(model=MODEL, contents="x").text == "echo: x"


async def test_async_client(
    client: genai.Client,
    fake_gemini_server: FakeGeminiServer,
) -> None:
    fake_gemini_server.set_responder(lambda body: Reply(text="async answer here"))
    response = await client.aio.models.generate_content(model=MODEL, contents="hello")
    assert response.text == "async answer here"
    pieces = [
        chunk.text or ""
        async for chunk in await client.aio.models.generate_content_stream(
            model=MODEL, contents="hello"
        )
    ]
    assert pieces == ["async ", "answer ", "here"]
    fake_gemini_server.enqueue(Fault(status=429))
    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(model=MODEL, contents="hello")
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    embedded = await client.aio.models.embed_content(model="e", contents=["a"])
    assert embedded.embeddings


def test_embed_content_single_route(fake_gemini_server: FakeGeminiServer) -> None:
    request = urllib.request.Request(
        f"{fake_gemini_server.url}/v1beta/models/e:embedContent?key=g-q",
        data=json.dumps({"content": {"parts": [{"text": "a b"}]}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        payload = json.loads(response.read())
    assert len(payload["embedding"]["values"]) == 8
    assert fake_gemini_server.requests[-1].api_key == "g-q"
