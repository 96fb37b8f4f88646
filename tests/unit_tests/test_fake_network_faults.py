"""Network faults over real HTTP: a refused port, a reset mid-body, a slow stream, a slow reply."""

from __future__ import annotations

import time

import anthropic
import httpx2
import openai
import pytest
import zhipuai
from anthropic import Anthropic
from google import genai
from google.genai import types
from openai import AsyncOpenAI, OpenAI
from zhipuai import ZhipuAI

from langchain_pllm.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeZhipuServer,
    Fault,
    closed_port_url,
)

USER = [{"role": "user", "content": "hello there world"}]


def test_closed_port_refuses_every_sdk() -> None:
    url = closed_port_url()
    assert url.startswith("http://127.0.0.1:")
    began = time.perf_counter()
    with pytest.raises(openai.APIConnectionError):
        OpenAI(base_url=url + "/v1", api_key="sk", max_retries=0).chat.completions.create(
            model="m", messages=USER
        )
    with pytest.raises(anthropic.APIConnectionError):
        Anthropic(base_url=url, api_key="ak", max_retries=0).messages.create(
            model="c", max_tokens=9, messages=USER
        )
    with pytest.raises(zhipuai.APIConnectionError):
        ZhipuAI(
            api_key="kid.secret", base_url=url + "/api/paas/v4", max_retries=0
        ).chat.completions.create(model="glm-4", messages=USER)
    client = genai.Client(
        api_key="g", http_options=types.HttpOptions(base_url=url, api_version="v1beta")
    )
    with pytest.raises(httpx2.ConnectError):
        client.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert time.perf_counter() - began < 5  # refused at once, never a timeout


def test_openai_reset_mid_body(fake_openai_server: FakeOpenAIServer) -> None:
    fake_openai_server.enqueue(Fault(cut_body=True), Fault(cut_body=True))
    client = OpenAI(base_url=fake_openai_server.base_url, api_key="sk", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=USER)
    with pytest.raises(openai.APIConnectionError):
        client.embeddings.create(model="e", input=["x"])
    # The status line went out before the reset.
    assert [r.status for r in fake_openai_server.requests] == [200, 200]
    assert client.chat.completions.create(model="m", messages=USER).choices


async def test_openai_async_reset_mid_body(fake_openai_server: FakeOpenAIServer) -> None:
    fake_openai_server.enqueue(Fault(cut_body=True))
    client = AsyncOpenAI(base_url=fake_openai_server.base_url, api_key="sk", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="m", messages=USER)
    await client.close()


def test_anthropic_reset_mid_body(fake_anthropic_server: FakeAnthropicServer) -> None:
    fake_anthropic_server.enqueue(Fault(cut_body=True))
    client = Anthropic(base_url=fake_anthropic_server.base_url, api_key="ak", max_retries=0)
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model="c", max_tokens=9, messages=USER)


def test_gemini_reset_mid_body(fake_gemini_server: FakeGeminiServer) -> None:
    fake_gemini_server.enqueue(Fault(cut_body=True))
    client = genai.Client(
        api_key="g",
        http_options=types.HttpOptions(base_url=fake_gemini_server.base_url, api_version="v1beta"),
    )
    with pytest.raises(httpx2.RemoteProtocolError):
        client.models.generate_content(model="gemini-2.0-flash", contents="hi")


def test_zhipu_reset_mid_body(fake_zhipu_server: FakeZhipuServer) -> None:
    fake_zhipu_server.enqueue(Fault(cut_body=True))
    client = ZhipuAI(api_key="kid.secret", base_url=fake_zhipu_server.base_url, max_retries=0)
    with pytest.raises(zhipuai.APIConnectionError):
        client.chat.completions.create(model="glm-4", messages=USER)


def test_slow_stream_is_cut_by_a_read_timeout(fake_openai_server: FakeOpenAIServer) -> None:
    fake_openai_server.enqueue(Fault(chunk_delay=0.6))
    client = OpenAI(base_url=fake_openai_server.base_url, api_key="sk", max_retries=0, timeout=0.3)
    received: list[str] = []

    def consume() -> None:
        for chunk in client.chat.completions.create(model="m", messages=USER, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    began = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        consume()
    assert received == []  # the headers came at once, the first chunk too late
    assert time.perf_counter() - began < 2


def test_slow_stream_delivers_every_chunk_in_time(
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    fake_anthropic_server.enqueue(Fault(chunk_delay=0.1))
    client = Anthropic(base_url=fake_anthropic_server.base_url, api_key="ak", max_retries=0)
    began = time.perf_counter()
    with client.messages.stream(model="c", max_tokens=9, messages=USER) as stream:
        text = "".join(stream.text_stream)
    assert text == "echo: hello there world"
    assert time.perf_counter() - began >= 0.4  # four content chunks, 0.1 s apart


def test_slow_reply_times_out(fake_zhipu_server: FakeZhipuServer) -> None:
    fake_zhipu_server.enqueue(Fault(latency=1.0))
    client = ZhipuAI(
        api_key="kid.secret", base_url=fake_zhipu_server.base_url, max_retries=0, timeout=0.3
    )
    with pytest.raises(zhipuai.APITimeoutError):
        client.chat.completions.create(model="glm-4", messages=USER)
