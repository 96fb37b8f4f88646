"""The fake Zhipu server, exercised through the real `zhipuai` SDK over loopback HTTP."""

from __future__ import annotations

import json
import math

import httpx
import pytest
import zhipuai
from openai import AsyncOpenAI
from zhipuai import ZhipuAI

from langchain_pllm.testing import FakeZhipuServer, Fault

USER = [{"role": "user", "content": "hello there world"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string"}},
            "required": ["q"],
        },
    },
}


@pytest.fixture
def client(fake_zhipu_server: FakeZhipuServer) -> ZhipuAI:
    return ZhipuAI(api_key="kid.secret", base_url=fake_zhipu_server.base_url, max_retries=0)


def test_chat_usage_and_log(
    client: ZhipuAI,
    fake_zhipu_server: FakeZhipuServer,
) -> None:
    assert fake_zhipu_server.base_url == fake_zhipu_server.url + "/api/paas/v4"
    result = client.chat.completions.create(model="glm-4-flash", messages=USER)
    assert result.choices[0].message.content == "echo: hello there world"
    assert result.choices[0].finish_reason == "stop"
    assert result.model == "glm-4-flash"
    assert result.request_id
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (6, 4)
    (record,) = fake_zhipu_server.requests
    assert record.path == "/api/paas/v4/chat/completions"
    assert record.api_key == "kid.secret"
    assert record.usage == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}


def test_jwt_auth_logs_key_id_and_matches_key_faults(
    fake_zhipu_server: FakeZhipuServer,
) -> None:
    signed = ZhipuAI(
        api_key="kid.secret",
        base_url=fake_zhipu_server.base_url,
        max_retries=0,
        disable_token_cache=False,
    )
    fake_zhipu_server.fault_for_key("kid.secret", Fault(status=429), times=1)
    with pytest.raises(zhipuai.APIReachLimitError):
        signed.chat.completions.create(model="glm-4", messages=USER)
    assert signed.chat.completions.create(model="glm-4", messages=USER).choices
    records = fake_zhipu_server.requests
    assert [r.api_key for r in records] == ["kid", "kid"]
    assert records[0].headers["authorization"].count(".") == 2  # a JWT, not the raw key


def test_tool_calls_and_stream(
    client: ZhipuAI,
    fake_zhipu_server: FakeZhipuServer,
) -> None:
    result = client.chat.completions.create(model="glm-4", messages=USER, tools=[TOOL])
    calls = result.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.name == "lookup"
    assert json.loads(calls[0].function.arguments) == {"q": "x"}
    assert result.choices[0].finish_reason == "tool_calls"
    chunks = list(client.chat.completions.create(model="glm-4", messages=USER, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there world"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None  # Zhipu puts usage on the finishing chunk
    assert chunks[-1].usage.completion_tokens == 4
    assert fake_zhipu_server.requests[-1].stream is True


def test_embeddings_and_batch_limit(client: ZhipuAI) -> None:
    result = client.embeddings.create(model="embedding-3", input=["a b", "c"])
    vectors = [item.embedding for item in result.data]
    assert [len(v) for v in vectors] == [8, 8]
    assert all(math.isclose(math.hypot(*v), 1.0) for v in vectors)
    assert result.usage.prompt_tokens == 3
    with pytest.raises(zhipuai.APIRequestFailedError):
        client.embeddings.create(model="embedding-3", input=[f"t{i}" for i in range(65)])


@pytest.mark.parametrize(
    ("status", "code", "error_class", "expected_code"),
    [
        (400, "1261", zhipuai.APIRequestFailedError, "1261"),
        (401, None, zhipuai.APIAuthenticationError, "1000"),
        (429, None, zhipuai.APIReachLimitError, "1302"),
        (500, None, zhipuai.APIInternalError, "500"),
        (503, None, zhipuai.APIServerFlowExceedError, "1305"),
        (404, None, zhipuai.APIStatusError, "1211"),
    ],
)
def test_status_faults_raise_sdk_errors(
    client: ZhipuAI,
    fake_zhipu_server: FakeZhipuServer,
    status: int,
    code: str | None,
    error_class: type[zhipuai.APIStatusError],
    expected_code: str,
) -> None:
    fake_zhipu_server.enqueue(Fault(status=status, code=code, retry_after=2, message="nope"))
    with pytest.raises(error_class) as caught:
        client.chat.completions.create(model="glm-4", messages=USER)
    assert caught.value.status_code == status
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.response.json() == {"error": {"code": expected_code, "message": "nope"}}


def test_drop_and_cut(
    client: ZhipuAI,
    fake_zhipu_server: FakeZhipuServer,
) -> None:
    fake_zhipu_server.enqueue(Fault(drop=True), Fault(cut_after=1))
    with pytest.raises(zhipuai.APIConnectionError):
        client.chat.completions.create(model="glm-4", messages=USER)
    texts: list[str] = []

    def consume() -> None:
        for chunk in client.chat.completions.create(model="glm-4", messages=USER, stream=True):
            texts.append(chunk.choices[0].delta.content or "")

    with pytest.raises(httpx.TransportError):
        consume()
    assert texts == ["", "echo: "]


async def test_async_through_openai_compatible_client(
    fake_zhipu_server: FakeZhipuServer,
) -> None:
    # zhipuai has no asyncio client; its endpoint is OpenAI-compatible.
    client = AsyncOpenAI(base_url=fake_zhipu_server.base_url, api_key="kid.secret", max_retries=0)
    result = await client.chat.completions.create(model="glm-4", messages=USER)
    assert result.choices[0].message.content == "echo: hello there world"
    embedded = await client.embeddings.create(model="embedding-3", input=["a"])
    assert len(embedded.data[0].embedding) == 8
    await client.close()
