"""Spent-key errors and concurrency caps of the fake servers, as each vendor's SDK raises them."""

from __future__ import annotations

import asyncio
import threading

import anthropic
import openai
import pytest
import zhipuai
from anthropic import Anthropic
from google import genai
from google.genai import errors, types
from openai import AsyncOpenAI, OpenAI
from zhipuai import ZhipuAI

from langchain_pllm.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeZhipuServer,
    Fault,
)

USER = [{"role": "user", "content": "hello there world"}]


def _openai(server: FakeOpenAIServer, key: str) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=key, max_retries=0)


def _gemini(server: FakeGeminiServer, key: str) -> genai.Client:
    return genai.Client(
        api_key=key, http_options=types.HttpOptions(base_url=server.base_url, api_version="v1beta")
    )


def test_openai_insufficient_quota_per_key(fake_openai_server: FakeOpenAIServer) -> None:
    fake_openai_server.spend_key("sk-spent")
    spent, healthy = _openai(fake_openai_server, "sk-spent"), _openai(fake_openai_server, "sk-ok")
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            spent.chat.completions.create(model="m", messages=USER)
        assert healthy.chat.completions.create(model="m", messages=USER).choices
    error = caught.value
    assert error.status_code == 429
    assert error.code == "insufficient_quota"
    assert error.type == "insufficient_quota"
    assert isinstance(error.body, dict)
    assert "exceeded your current quota" in error.body["message"]
    assert "retry-after" not in error.response.headers  # a spent key has no Retry-After
    fake_openai_server.refill_key("sk-spent")
    assert spent.chat.completions.create(model="m", messages=USER).choices


def test_a_whole_server_can_be_spent(fake_openai_server: FakeOpenAIServer) -> None:
    fake_openai_server.spend_key()
    for key in ("sk-a", "sk-b"):
        with pytest.raises(openai.RateLimitError):
            _openai(fake_openai_server, key).chat.completions.create(model="m", messages=USER)
        with pytest.raises(openai.RateLimitError):
            _openai(fake_openai_server, key).embeddings.create(model="e", input=["x"])
    fake_openai_server.refill_key()
    assert (
        _openai(fake_openai_server, "sk-a")
        .chat.completions.create(model="m", messages=USER)
        .choices
    )


def test_deepseek_insufficient_balance_is_402() -> None:
    with FakeOpenAIServer(flavor="deepseek") as server:
        server.spend_key("sk-ds")
        with pytest.raises(openai.APIStatusError) as caught:
            _openai(server, "sk-ds").chat.completions.create(model="deepseek-chat", messages=USER)
    assert type(caught.value) is openai.APIStatusError  # the SDK has no class for 402
    assert caught.value.status_code == 402
    assert caught.value.body == {
        "message": "Insufficient Balance",
        "type": "unknown_error",
        "param": None,
        "code": "invalid_request_error",
    }


def test_siliconflow_spent_key_and_error_shape() -> None:
    with FakeOpenAIServer(flavor="siliconflow") as server:
        server.spend_key("sk-sf")
        client = _openai(server, "sk-sf")
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model="Qwen/Qwen2.5-7B-Instruct", messages=USER)
        assert caught.value.status_code == 403
        assert caught.value.code == "30001"
        assert caught.value.response.json() == {
            "code": 30001,
            "message": "Sorry, your account balance is insufficient",
            "data": None,
        }
        # Every error of this flavor takes SiliconFlow's shape, not OpenAI's.
        server.refill_key("sk-sf")
        server.enqueue(Fault(status=400, code="20012", message="Model does not exist."))
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="nope", messages=USER)
        assert bad.value.response.json() == {
            "code": 20012,
            "message": "Model does not exist.",
            "data": None,
        }


def test_anthropic_credit_balance_too_low(fake_anthropic_server: FakeAnthropicServer) -> None:
    fake_anthropic_server.spend_key("ak-spent")
    client = Anthropic(base_url=fake_anthropic_server.base_url, api_key="ak-spent", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="c", max_tokens=9, messages=USER)
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("Your credit balance is too low")
    other = Anthropic(base_url=fake_anthropic_server.base_url, api_key="ak-ok", max_retries=0)
    assert other.messages.create(model="c", max_tokens=9, messages=USER).content


@pytest.mark.parametrize(
    ("per", "quota_id"),
    [
        ("day", "GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
        ("minute", "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
    ],
)
def test_gemini_quota_failure_details(
    fake_gemini_server: FakeGeminiServer, per: str, quota_id: str
) -> None:
    fault = fake_gemini_server.quota_fault(per=per, retry_delay=37)
    fake_gemini_server.spend_key("g-spent", fault)
    client = _gemini(fake_gemini_server, "g-spent")
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    details = caught.value.details["error"]["details"]
    types_ = [d["@type"] for d in details]
    assert "type.googleapis.com/google.rpc.QuotaFailure" in types_
    failure = details[types_.index("type.googleapis.com/google.rpc.QuotaFailure")]
    assert failure["violations"][0]["quotaId"] == quota_id
    retry = details[types_.index("type.googleapis.com/google.rpc.RetryInfo")]
    assert retry["retryDelay"] == "37s"
    assert "Please retry in 37s" in (caught.value.message or "")


def test_gemini_spent_key_by_default_names_a_daily_quota(
    fake_gemini_server: FakeGeminiServer,
) -> None:
    fake_gemini_server.spend_key("g-spent")
    client = _gemini(fake_gemini_server, "g-spent")
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content_stream(model="gemini-2.0-flash", contents="hi").__next__()
    violation = caught.value.details["error"]["details"][0]["violations"][0]
    assert "PerDay" in violation["quotaId"]


@pytest.mark.parametrize("code", ["1113", "1304"])
def test_zhipu_spent_codes(fake_zhipu_server: FakeZhipuServer, code: str) -> None:
    fake_zhipu_server.spend_key("kid.secret", fake_zhipu_server.spent_fault(code=code))
    client = ZhipuAI(api_key="kid.secret", base_url=fake_zhipu_server.base_url, max_retries=0)
    with pytest.raises(zhipuai.APIReachLimitError) as caught:
        client.chat.completions.create(model="glm-4", messages=USER)
    assert caught.value.status_code == 429
    assert caught.value.response.json()["error"]["code"] == code
    # The same key signed as a JWT is the same account.
    signed = ZhipuAI(
        api_key="kid.secret",
        base_url=fake_zhipu_server.base_url,
        max_retries=0,
        disable_token_cache=False,
    )
    with pytest.raises(zhipuai.APIReachLimitError):
        signed.chat.completions.create(model="glm-4", messages=USER)


def test_zhipu_concurrency_cap_answers_1302(fake_zhipu_server: FakeZhipuServer) -> None:
    fake_zhipu_server.set_concurrency_limit(2, api_key="kid.secret")
    fake_zhipu_server.fault_for_key("kid.secret", Fault(latency=0.5))
    client = ZhipuAI(api_key="kid.secret", base_url=fake_zhipu_server.base_url, max_retries=0)
    outcomes: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            client.chat.completions.create(model="glm-4", messages=USER)
            result = "ok"
        except zhipuai.APIReachLimitError as exc:
            result = exc.response.json()["error"]["code"]
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(outcomes) == ["1302", "1302", "1302", "ok", "ok"]
    records = fake_zhipu_server.requests
    assert max(r.in_flight for r in records) >= 3
    assert {r.status for r in records if r.in_flight > 2} == {429}
    assert fake_zhipu_server.in_flight("kid.secret") == 0
    fake_zhipu_server.set_concurrency_limit(None, api_key="kid.secret")
    fake_zhipu_server.clear_faults()
    assert client.chat.completions.create(model="glm-4", messages=USER).choices


def test_zhipu_concurrency_fault_can_be_scripted(fake_zhipu_server: FakeZhipuServer) -> None:
    fake_zhipu_server.enqueue(fake_zhipu_server.concurrency_fault())
    client = ZhipuAI(api_key="kid.secret", base_url=fake_zhipu_server.base_url, max_retries=0)
    with pytest.raises(zhipuai.APIReachLimitError) as caught:
        client.chat.completions.create(model="glm-4", messages=USER)
    assert caught.value.response.json()["error"]["code"] == "1302"


async def test_openai_concurrency_cap_for_every_key(fake_openai_server: FakeOpenAIServer) -> None:
    fake_openai_server.set_concurrency_limit(1)
    fake_openai_server.fault_for_key(None, Fault(latency=0.3))
    clients = [
        AsyncOpenAI(base_url=fake_openai_server.base_url, api_key=k, max_retries=0)
        for k in ("sk-a", "sk-a", "sk-b")
    ]

    async def call(client: AsyncOpenAI) -> int:
        try:
            await client.chat.completions.create(model="m", messages=USER)
        except openai.RateLimitError:
            return 429
        return 200

    outcomes = await asyncio.gather(*(call(c) for c in clients))
    for client in clients:
        await client.close()
    assert sorted(outcomes) == [200, 200, 429]  # sk-a's second request is over its cap
    indexes = {r.api_key: r.key_index for r in fake_openai_server.requests}
    assert indexes["sk-a"] != indexes["sk-b"]
    assert set(indexes.values()) == {0, 1}
