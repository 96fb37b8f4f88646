"""The fake OpenAI server, exercised through the real `openai` SDK over loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
import urllib.error
import urllib.request

import jsonschema
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from langchain_pllm.testing import FakeOpenAIServer, Fault, Reply

USER = [{"role": "user", "content": "hello there world"}]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "detailed": {"type": "boolean"},
                "ratio": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "where": {
                    "type": "object",
                    "properties": {"lat": {"type": "number"}},
                    "required": ["lat"],
                },
                "optional": {"type": "string"},
            },
            "required": ["city", "days", "unit", "detailed", "ratio", "tags", "where"],
        },
    },
}
OTHER_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}


@pytest.fixture
def client(fake_openai_server: FakeOpenAIServer) -> OpenAI:
    return OpenAI(base_url=fake_openai_server.base_url, api_key="sk-test", max_retries=0)


@pytest.fixture
def aclient(fake_openai_server: FakeOpenAIServer) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=fake_openai_server.base_url, api_key="sk-test", max_retries=0)


def test_lifecycle_is_fast_and_urls_are_loopback() -> None:
    began = time.perf_counter()
    for _ in range(5):
        with FakeOpenAIServer() as server:
            assert server.url.startswith("http://127.0.0.1:")
            assert server.base_url == server.url + "/v1"
            assert server.port > 0
    assert (time.perf_counter() - began) / 5 < 0.1
    with pytest.raises(RuntimeError):
        _ = server.url  # stopped


def test_start_stop_explicit_is_idempotent() -> None:
    server = FakeOpenAIServer().start()
    assert server.start() is server
    client = OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    assert client.chat.completions.create(model="m", messages=USER).choices
    server.stop()
    server.stop()


def test_chat_echo_usage_and_log(
    client: OpenAI,
    fake_openai_server: FakeOpenAIServer,
) -> None:
    before = time.monotonic()
    messages = [{"role": "system", "content": "be brief"}, *USER]
    result = client.chat.completions.create(model="my-model", messages=messages)
    assert result.choices[0].message.content == "echo: hello there world"
    assert result.choices[0].finish_reason == "stop"
    assert result.model == "my-model"
    # 2 + 3 words, plus 3 per message; 4 words in the reply.
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (11, 4)
    assert result.usage.total_tokens == 15
    (record,) = fake_openai_server.requests
    assert before <= record.time <= time.monotonic()
    assert record.path == "/v1/chat/completions"
    assert record.api_key == "sk-test"
    assert record.status == 200
    assert record.stream is False
    assert record.body["model"] == "my-model"
    assert record.headers["authorization"] == "Bearer sk-test"
    assert record.usage == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    fake_openai_server.clear()
    assert fake_openai_server.requests == []


def test_content_parts_are_read(client: OpenAI) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "part one"}]}]
    result = client.chat.completions.create(model="m", messages=messages)
    assert result.choices[0].message.content == "echo: part one"


def test_reply_text_and_responder(
    client: OpenAI,
    fake_openai_server: FakeOpenAIServer,
) -> None:
    fake_openai_server.reply_text = "fixed answer"
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == (
        "fixed answer"
    )
    answers = iter([Reply(text="wrong"), "right"])
    fake_openai_server.set_responder(lambda body: next(answers))
    first = client.chat.completions.create(model="m", messages=USER)
    second = client.chat.completions.create(model="m", messages=USER)
    assert [first.choices[0].message.content, second.choices[0].message.content] == [
        "wrong",
        "right",
    ]
    fake_openai_server.set_responder(lambda body: Reply(text="cut", finish_reason="length"))
    assert client.chat.completions.create(model="m", messages=USER).choices[0].finish_reason == (
        "length"
    )
    fake_openai_server.set_responder(lambda body: None)  # None falls back to reply_text
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == (
        "fixed answer"
    )


def test_default_tool_call_synthesizes_arguments(client: OpenAI) -> None:
    result = client.chat.completions.create(model="m", messages=USER, tools=[WEATHER_TOOL])
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert args == {
        "city": "x",
        "days": 1,
        "unit": "celsius",
        "detailed": True,
        "ratio": 1.5,
        "tags": [],
        "where": {"lat": 1.5},
    }
    jsonschema.validate(args, WEATHER_TOOL["function"]["parameters"])


def test_forced_tool_and_tool_result(client: OpenAI) -> None:
    forced = client.chat.completions.create(
        model="m",
        messages=USER,
        tools=[WEATHER_TOOL, OTHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
    )
    calls = forced.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.name == "lookup"
    assert json.loads(calls[0].function.arguments) == {"q": "x"}
    follow_up = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump()]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny 20C"},
    ]
    answer = client.chat.completions.create(model="m", messages=follow_up, tools=[OTHER_TOOL])
    assert answer.choices[0].message.content == "result: sunny 20C"
    assert answer.choices[0].message.tool_calls is None
    none_choice = client.chat.completions.create(
        model="m", messages=USER, tools=[OTHER_TOOL], tool_choice="none"
    )
    assert none_choice.choices[0].message.content == "echo: hello there world"


def test_structured_output(client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "pet": {"$ref": "#/$defs/Pet"},
            "nick": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["name", "age", "pet", "nick"],
        "additionalProperties": False,
        "$defs": {
            "Pet": {
                "type": "object",
                "properties": {"kind": {"type": "string", "enum": ["cat", "dog"]}},
                "required": ["kind"],
            }
        },
    }
    result = client.chat.completions.create(
        model="m",
        messages=USER,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "Person", "schema": schema, "strict": True},
        },
    )
    value = json.loads(result.choices[0].message.content or "")
    jsonschema.validate(value, schema)
    assert value["pet"] == {"kind": "cat"}
    json_mode = client.chat.completions.create(
        model="m", messages=USER, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(json_mode.choices[0].message.content or ""), dict)


def test_stream_text_with_usage(
    client: OpenAI,
    fake_openai_server: FakeOpenAIServer,
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta]
    text = "".join(p for p in pieces if p)
    assert text == "echo: hello there world"
    assert len([p for p in pieces if p]) == 4  # one chunk per word
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens"}) == {
        "prompt_tokens": 6,
        "completion_tokens": 4,
    }
    (record,) = fake_openai_server.requests
    assert record.stream is True
    assert record.usage == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
    without_usage = list(client.chat.completions.create(model="m", messages=USER, stream=True))
    assert all(c.usage is None for c in without_usage)


def test_stream_tool_call_deltas(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="m", messages=USER, tools=[WEATHER_TOOL], stream=True
    )
    name, arguments, argument_chunks, finish = None, "", 0, None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or ():
            if delta.id:
                name = delta.function.name if delta.function else None
            if delta.function and delta.function.arguments:
                arguments += delta.function.arguments
                argument_chunks += 1
    assert name == "get_weather"
    assert argument_chunks > 1
    assert json.loads(arguments)["city"] == "x"
    assert finish == "tool_calls"


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
        (529, openai.InternalServerError),
    ],
)
def test_status_faults_raise_sdk_errors(
    client: OpenAI,
    fake_openai_server: FakeOpenAIServer,
    status: int,
    error_class: type[openai.APIStatusError],
) -> None:
    fake_openai_server.enqueue(Fault(status=status, message="nope"))
    with pytest.raises(error_class) as caught:
        client.chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["message"] == "nope"
    assert set(body) == {"message", "type", "param", "code"}
    assert fake_openai_server.requests[0].status == status
    # The queue is consumed: the next call succeeds.
    assert client.chat.completions.create(model="m", messages=USER).choices


def test_rate_limit_headers_and_code(
    client: OpenAI,
    fake_openai_server: FakeOpenAIServer,
) -> None:
    fake_openai_server.enqueue(
        Fault(status=429, retry_after=2.5),
        Fault(status=400, code="context_length_exceeded", message="too long"),
    )
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="m", messages=USER)
    assert limited.value.response.headers["retry-after"] == "2.5"
    assert limited.value.response.headers["retry-after-ms"] == "2500"
    assert limited.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.BadRequestError) as overflow:
        client.chat.completions.create(model="m", messages=USER)
    assert overflow.value.code == "context_length_exceeded"


def test_drop_and_malformed(
    client: OpenAI,
    fake_openai_server: FakeOpenAIServer,
) -> None:
    fake_openai_server.enqueue(Fault(drop=True), Fault(malformed=True))
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=USER)
    with pytest.raises(ValueError):  # json.JSONDecodeError from the SDK's parser
        client.chat.completions.create(model="m", messages=USER)
    assert fake_openai_server.requests[0].status == 0
    assert client.chat.completions.create(model="m", messages=USER).choices


def test_stream_cut_after(
    client: OpenAI,
    fake_openai_server: FakeOpenAIServer,
) -> None:
    fake_openai_server.enqueue(Fault(cut_after=2))
    received: list[str] = []

    def consume() -> None:
        for chunk in client.chat.completions.create(model="m", messages=USER, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIConnectionError):
        consume()
    assert received == ["echo: ", "hello "]


def test_stream_error_status_before_first_chunk(
    client: OpenAI,
    fake_openai_server: FakeOpenAIServer,
) -> None:
    fake_openai_server.enqueue(Fault(status=503))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=USER, stream=True)


def test_fault_for_key_and_times(fake_openai_server: FakeOpenAIServer) -> None:
    bad = OpenAI(base_url=fake_openai_server.base_url, api_key="sk-bad", max_retries=0)
    good = OpenAI(base_url=fake_openai_server.base_url, api_key="sk-good", max_retries=0)
    fake_openai_server.fault_for_key("sk-bad", Fault(status=401))
    for _ in range(3):
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="m", messages=USER)
        assert good.chat.completions.create(model="m", messages=USER).choices
    fake_openai_server.fault_for_key("sk-bad", Fault(status=429), times=2)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError):
            bad.chat.completions.create(model="m", messages=USER)
    assert bad.chat.completions.create(model="m", messages=USER).choices
    fake_openai_server.fault_for_key("sk-bad", Fault(status=500))
    fake_openai_server.clear_faults()
    assert bad.chat.completions.create(model="m", messages=USER).choices


def test_fault_rate_is_seeded(fake_openai_server: FakeOpenAIServer) -> None:
    client = OpenAI(base_url=fake_openai_server.base_url, api_key="k", max_retries=0)

    def outcomes() -> list[int]:
        fake_openai_server.set_fault_rate(0.5, [Fault(status=500), Fault(status=429)], seed=7)
        statuses = []
        for _ in range(20):
            try:
                client.chat.completions.create(model="m", messages=USER)
                statuses.append(200)
            except openai.APIStatusError as exc:
                statuses.append(exc.status_code)
        return statuses

    first, second = outcomes(), outcomes()
    assert first == second
    assert {200, 500, 429} == set(first)
    with pytest.raises(ValueError):
        fake_openai_server.set_fault_rate(1.5, [Fault(status=500)])


def test_missing_key_is_401(fake_openai_server: FakeOpenAIServer) -> None:
    request = urllib.request.Request(
        fake_openai_server.base_url + "/chat/completions",
        data=json.dumps({"model": "m", "messages": USER}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 401
    assert json.loads(caught.value.read())["error"]["code"] == "invalid_api_key"


def test_embeddings_base64_and_float(
    client: OpenAI,
    fake_openai_server: FakeOpenAIServer,
) -> None:
    texts = ["alpha beta", "gamma", "alpha beta"]
    result = client.embeddings.create(model="emb", input=texts)  # SDK asks for base64
    vectors = [item.embedding for item in result.data]
    assert [item.index for item in result.data] == [0, 1, 2]
    assert all(len(v) == 8 for v in vectors)
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-5) for v in vectors)
    assert vectors[0] == vectors[2]
    assert vectors[0] != vectors[1]
    assert result.usage.prompt_tokens == 5  # words
    assert fake_openai_server.requests[0].body["encoding_format"] == "base64"
    assert fake_openai_server.requests[0].usage == {"prompt_tokens": 5, "total_tokens": 5}
    floats = client.embeddings.create(model="emb", input=texts, encoding_format="float")
    assert [item.embedding for item in floats.data][1] == pytest.approx(vectors[1], rel=1e-6)
    sized = client.embeddings.create(model="emb", input="one", dimensions=5)
    assert len(sized.data[0].embedding) == 5


def test_embeddings_base64_is_little_endian_float32(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    request = urllib.request.Request(
        fake_openai_server.base_url + "/embeddings",
        data=json.dumps({"model": "e", "input": [[1, 2, 3]], "encoding_format": "base64"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        payload = json.loads(response.read())
    raw = base64.b64decode(payload["data"][0]["embedding"])
    values = struct.unpack("<8f", raw)
    assert math.isclose(math.hypot(*values), 1.0, rel_tol=1e-5)


def test_embeddings_batch_limit() -> None:
    with FakeOpenAIServer(max_batch=3, dimensions=4) as server:
        client = OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        assert len(client.embeddings.create(model="e", input=["a", "b", "c"]).data[0].embedding)
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model="e", input=["a", "b", "c", "d"])
        assert "limit of 3" in str(caught.value)


async def test_async_client_and_concurrent_latency(
    aclient: AsyncOpenAI,
    fake_openai_server: FakeOpenAIServer,
) -> None:
    fake_openai_server.fault_for_key("sk-slow", Fault(latency=0.4))
    slow_client = AsyncOpenAI(
        base_url=fake_openai_server.base_url, api_key="sk-slow", max_retries=0
    )
    began = time.perf_counter()
    slow = asyncio.create_task(slow_client.chat.completions.create(model="m", messages=USER))
    await asyncio.sleep(0.05)
    fast = await aclient.chat.completions.create(model="m", messages=USER)
    fast_elapsed = time.perf_counter() - began
    assert fast.choices[0].message.content == "echo: hello there world"
    assert fast_elapsed < 0.35  # not stuck behind the slow request
    assert (await slow).choices[0].message.content == "echo: hello there world"
    assert time.perf_counter() - began >= 0.4
    await slow_client.close()


async def test_async_faults_stream_and_embeddings(
    aclient: AsyncOpenAI,
    fake_openai_server: FakeOpenAIServer,
) -> None:
    fake_openai_server.enqueue(Fault(status=429, retry_after=1))
    with pytest.raises(openai.RateLimitError) as caught:
        await aclient.chat.completions.create(model="m", messages=USER)
    assert caught.value.response.headers["retry-after"] == "1"
    stream = await aclient.chat.completions.create(model="m", messages=USER, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "echo: hello there world"
    result = await aclient.embeddings.create(model="e", input=["x y"])
    assert len(result.data[0].embedding) == 8
    many = await asyncio.gather(
        *[aclient.chat.completions.create(model="m", messages=USER) for _ in range(50)]
    )
    assert len(many) == 50
    assert len(fake_openai_server.requests) == 53
