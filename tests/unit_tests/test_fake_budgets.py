"""Rate-limit budgets of the fake servers: headers, 429s and windows, over each vendor's SDK."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import anthropic
import openai
import pytest
import zhipuai
from anthropic import Anthropic
from google import genai
from google.genai import errors, types
from openai import AsyncOpenAI, OpenAI
from zhipuai import ZhipuAI

from langchain_pllm.balancer import ManualClock
from langchain_pllm.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeZhipuServer,
    Limit,
    RateBudget,
)
from langchain_pllm.testing.budgets import go_duration, rfc3339

USER = [{"role": "user", "content": "hello there world"}]  # 6 prompt tokens, 4 completion


def _openai(server: FakeOpenAIServer, key: str = "sk-a") -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=key, max_retries=0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.02, "20ms"),
        (0.0004, "1ms"),
        (1, "1s"),
        (59.9, "59.9s"),
        (360, "6m0s"),
        (90.5, "1m30.5s"),
        (3725, "1h2m5s"),
        (0, "0ms"),
    ],
)
def test_go_durations_as_openai_writes_them(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_rfc3339_instants() -> None:
    instant = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert rfc3339(instant) == "2026-01-02T03:04:05Z"
    assert rfc3339(instant + 0.25) == "2026-01-02T03:04:05.250Z"


def test_openai_headers_count_down_and_reset_with_the_clock(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    clock = ManualClock()
    budget = RateBudget(requests=3, tokens=Limit(100, per=60), window=1.0, clock=clock.now)
    fake_openai_server.set_budget(budget)
    client = _openai(fake_openai_server)
    seen = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="m", messages=USER)
        seen.append(raw.headers)
        clock.advance(0.25)
    first, _, third = seen
    assert first["x-ratelimit-limit-requests"] == "3"
    assert first["x-ratelimit-remaining-requests"] == "2"
    assert first["x-ratelimit-reset-requests"] == "1s"
    assert first["x-ratelimit-limit-tokens"] == "100"
    assert first["x-ratelimit-remaining-tokens"] == "90"  # 6 in + 4 out
    assert first["x-ratelimit-reset-tokens"] == "1m0s"
    assert third["x-ratelimit-remaining-requests"] == "0"
    assert third["x-ratelimit-reset-requests"] == "500ms"
    assert third["x-ratelimit-remaining-tokens"] == "70"
    # The fourth request in the same second does not fit: 429 with Retry-After and headers.
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=USER)
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"
    headers = caught.value.response.headers
    assert headers["retry-after"] == "0.25"
    assert headers["retry-after-ms"] == "250"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert fake_openai_server.requests[-1].status == 429
    assert fake_openai_server.requests[-1].response_headers["retry-after"] == "0.25"
    assert budget.used("sk-a", "requests") == 3  # a refused request consumes nothing
    # Once the window has passed, the key serves again with a fresh window.
    clock.advance(0.25)
    raw = client.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"


def test_each_key_has_its_own_counters_and_a_key_budget_wins(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    clock = ManualClock()
    fake_openai_server.set_budget(RateBudget(requests=1, clock=clock.now))
    fake_openai_server.set_budget(RateBudget(requests=5, clock=clock.now), api_key="sk-big")
    a, b, big = (_openai(fake_openai_server, k) for k in ("sk-a", "sk-b", "sk-big"))
    assert a.chat.completions.create(model="m", messages=USER).choices
    assert b.chat.completions.create(model="m", messages=USER).choices
    with pytest.raises(openai.RateLimitError):
        a.chat.completions.create(model="m", messages=USER)
    for _ in range(5):
        assert big.chat.completions.create(model="m", messages=USER).choices
    fake_openai_server.set_budget(None)
    for _ in range(3):
        assert a.chat.completions.create(model="m", messages=USER).choices


def test_token_budget_refuses_a_request_that_does_not_fit(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    clock = ManualClock()
    fake_openai_server.set_budget(RateBudget(tokens=25, clock=clock.now))
    client = _openai(fake_openai_server)
    client.chat.completions.create(model="m", messages=USER)  # 10 tokens
    client.chat.completions.create(model="m", messages=USER)  # 20
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=USER)
    assert caught.value.type == "tokens"
    assert caught.value.response.headers["x-ratelimit-remaining-tokens"] == "5"
    assert caught.value.response.headers["retry-after"] == "60"


def test_pinned_headers_are_reported_and_not_enforced(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    fake_openai_server.set_budget(
        RateBudget().pin("requests", limit=500, remaining=0, reset=20), api_key="sk-a"
    )
    client = _openai(fake_openai_server)
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="m", messages=USER)
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        assert raw.headers["x-ratelimit-reset-requests"] == "20s"
        assert raw.headers["x-ratelimit-limit-requests"] == "500"
        assert "x-ratelimit-limit-tokens" not in raw.headers
    other = _openai(fake_openai_server, "sk-b")
    raw = other.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert "x-ratelimit-remaining-requests" not in raw.headers


async def test_stream_replies_carry_the_headers(fake_openai_server: FakeOpenAIServer) -> None:
    clock = ManualClock()
    fake_openai_server.set_budget(RateBudget(requests=2, tokens=1000, clock=clock.now))
    client = AsyncOpenAI(base_url=fake_openai_server.base_url, api_key="sk-a", max_retries=0)
    async with client.chat.completions.with_streaming_response.create(
        model="m", messages=USER, stream=True
    ) as response:
        assert response.headers["x-ratelimit-remaining-requests"] == "1"
        assert response.headers["x-ratelimit-remaining-tokens"] == "990"
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = await response.parse()
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "echo: hello there world"
    await client.chat.completions.create(model="m", messages=USER, stream=True)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="m", messages=USER, stream=True)
    await client.close()


async def test_concurrent_requests_never_overdraw_a_budget(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    clock = ManualClock()
    fake_openai_server.set_budget(RateBudget(requests=5, clock=clock.now))
    client = AsyncOpenAI(base_url=fake_openai_server.base_url, api_key="sk-a", max_retries=0)

    async def one() -> int:
        try:
            await client.chat.completions.create(model="m", messages=USER)
        except openai.RateLimitError:
            return 429
        return 200

    outcomes = await asyncio.gather(*(one() for _ in range(12)))
    await client.close()
    assert sorted(outcomes) == [200] * 5 + [429] * 7


@pytest.mark.parametrize("flavor", ["deepseek", "siliconflow"])
def test_compatible_flavors_send_no_headers_but_answer_429(flavor: str) -> None:
    clock = ManualClock()
    with FakeOpenAIServer(flavor=flavor) as server:
        server.set_budget(RateBudget(requests=1, window=30, clock=clock.now))
        client = _openai(server)
        raw = client.chat.completions.with_raw_response.create(model="m", messages=USER)
        assert not [h for h in raw.headers if h.startswith("x-ratelimit")]
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m", messages=USER)
        assert caught.value.response.headers["retry-after"] == "30"


def test_anthropic_headers_for_every_resource(fake_anthropic_server: FakeAnthropicServer) -> None:
    clock = ManualClock()
    wall = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    budget = RateBudget(
        requests=50,
        tokens=1000,
        input_tokens=Limit(40, per=60),
        output_tokens=Limit(8, per=60),
        clock=clock.now,
        wall=lambda: wall.timestamp() + clock.now() - 1000.0,
    )
    fake_anthropic_server.set_budget(budget)
    client = Anthropic(base_url=fake_anthropic_server.base_url, api_key="ak-a", max_retries=0)
    raw = client.messages.with_raw_response.create(model="c", max_tokens=9, messages=USER)
    headers = raw.headers
    assert headers["anthropic-ratelimit-requests-limit"] == "50"
    assert headers["anthropic-ratelimit-requests-remaining"] == "49"
    assert headers["anthropic-ratelimit-requests-reset"] == "2026-03-01T12:01:00Z"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "990"
    assert headers["anthropic-ratelimit-input-tokens-limit"] == "40"
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "34"  # 6 in
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "4"  # 4 out
    clock.advance(15)
    # Output tokens run out first: the next reply's 4 fit, the one after does not.
    raw = client.messages.with_raw_response.create(model="c", max_tokens=9, messages=USER)
    reset = raw.headers["anthropic-ratelimit-output-tokens-reset"]
    assert datetime.fromisoformat(reset) == wall + timedelta(seconds=60)
    assert raw.headers["anthropic-ratelimit-output-tokens-remaining"] == "0"
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="c", max_tokens=9, messages=USER)
    assert caught.value.response.headers["retry-after"] == "45"
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "rate_limit_error"
    assert "output tokens" in body["error"]["message"]


def test_anthropic_stream_carries_the_headers(fake_anthropic_server: FakeAnthropicServer) -> None:
    fake_anthropic_server.set_budget(RateBudget().pin("input_tokens", remaining=0, reset=7))
    client = Anthropic(base_url=fake_anthropic_server.base_url, api_key="ak-a", max_retries=0)
    with client.messages.with_streaming_response.create(
        model="c", max_tokens=9, messages=USER, stream=True
    ) as response:
        assert response.headers["anthropic-ratelimit-input-tokens-remaining"] == "0"
        reset = datetime.fromisoformat(response.headers["anthropic-ratelimit-input-tokens-reset"])
        assert abs((reset - datetime.now(UTC)).total_seconds() - 7) < 2
        assert any(event.type == "message_stop" for event in response.parse())


def test_gemini_budget_answers_quota_failure(fake_gemini_server: FakeGeminiServer) -> None:
    clock = ManualClock()
    fake_gemini_server.set_budget(
        RateBudget(requests=Limit(1, per=60), clock=clock.now), api_key="g-minute"
    )
    fake_gemini_server.set_budget(
        RateBudget(requests=Limit(1, per=86_400), clock=clock.now), api_key="g-day"
    )
    for key, quota_id in [
        ("g-minute", "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
        ("g-day", "GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
    ]:
        client = genai.Client(
            api_key=key,
            http_options=types.HttpOptions(
                base_url=fake_gemini_server.base_url, api_version="v1beta"
            ),
        )
        response = client.models.generate_content(model="gemini-2.0-flash", contents="hi")
        assert response.sdk_http_response is not None
        assert not [h for h in response.sdk_http_response.headers or {} if "ratelimit" in h]
        clock.advance(20)
        with pytest.raises(errors.ClientError) as caught:
            client.models.generate_content(model="gemini-2.0-flash", contents="hi")
        assert caught.value.code == 429
        assert caught.value.status == "RESOURCE_EXHAUSTED"
        details = caught.value.details["error"]["details"]
        (violation,) = details[0]["violations"]
        assert violation["quotaId"] == quota_id
        assert violation["quotaDimensions"]["model"] == "gemini-2.0-flash"
        assert details[-1]["@type"] == "type.googleapis.com/google.rpc.RetryInfo"
        expected = 40 if key == "g-minute" else 86_380
        assert details[-1]["retryDelay"] == f"{expected}s"


def test_zhipu_budget_answers_its_codes(fake_zhipu_server: FakeZhipuServer) -> None:
    clock = ManualClock()
    fake_zhipu_server.set_budget(RateBudget(requests=1, clock=clock.now))
    fake_zhipu_server.set_budget(
        RateBudget(requests=Limit(1, per=86_400), clock=clock.now), api_key="day.secret"
    )
    for key, code in [("kid.secret", "1303"), ("day.secret", "1304")]:
        client = ZhipuAI(api_key=key, base_url=fake_zhipu_server.base_url, max_retries=0)
        assert client.chat.completions.create(model="glm-4", messages=USER).choices
        with pytest.raises(zhipuai.APIReachLimitError) as caught:
            client.chat.completions.create(model="glm-4", messages=USER)
        assert caught.value.status_code == 429
        assert caught.value.response.json()["error"]["code"] == code
        assert "retry-after" in caught.value.response.headers


def test_zhipu_budget_follows_the_key_id_when_the_sdk_signs_jwts(
    fake_zhipu_server: FakeZhipuServer,
) -> None:
    clock = ManualClock()
    fake_zhipu_server.set_budget(RateBudget(requests=1, clock=clock.now), api_key="kid.secret")
    signed = ZhipuAI(
        api_key="kid.secret",
        base_url=fake_zhipu_server.base_url,
        max_retries=0,
        disable_token_cache=False,
    )
    assert signed.chat.completions.create(model="glm-4", messages=USER).choices
    with pytest.raises(zhipuai.APIReachLimitError):
        signed.chat.completions.create(model="glm-4", messages=USER)


def test_embeddings_count_against_the_budget(fake_openai_server: FakeOpenAIServer) -> None:
    clock = ManualClock()
    fake_openai_server.set_budget(RateBudget(requests=10, tokens=6, clock=clock.now))
    client = _openai(fake_openai_server)
    raw = client.embeddings.with_raw_response.create(model="e", input=["one two", "three"])
    assert raw.headers["x-ratelimit-remaining-tokens"] == "3"
    assert raw.headers["x-ratelimit-remaining-requests"] == "9"
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="e", input=["a b c d"])
