"""The fake servers' prompt cache: cached input tokens per key, in each vendor's usage fields."""

from __future__ import annotations

from typing import Any

from anthropic import Anthropic
from google import genai
from google.genai import types
from openai import OpenAI
from zhipuai import ZhipuAI

from langchain_pllm.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeZhipuServer,
)
from langchain_pllm.testing.prompt_cache import PromptCache, prompt_segments

SYSTEM = {"role": "system", "content": "you are a careful assistant"}  # 5 words + 3 = 8 tokens
TURN_1 = {"role": "user", "content": "hello there world"}  # 6 tokens
ANSWER_1 = {"role": "assistant", "content": "echo: hello there world"}  # 7 tokens
TURN_2 = {"role": "user", "content": "and now"}  # 5 tokens


def test_cache_reads_the_longest_known_prefix_per_key() -> None:
    cache = PromptCache()
    chain = prompt_segments(["m", []], ["a b", "c", "d e f"], [5, 4, 6])
    assert [tokens for _, tokens in chain] == [5, 9, 15]
    first = cache.use("k1", chain[:2])
    assert (first.read, first.written) == (0, 9)
    second = cache.use("k1", chain)
    assert (second.read, second.written) == (9, 6)
    assert cache.use("k2", chain).read == 0  # another key has its own cache
    other_model = prompt_segments(["m2", []], ["a b", "c", "d e f"], [5, 4, 6])
    assert cache.use("k1", other_model).read == 0
    assert cache.use("k1", chain, cacheable=1).read == 5
    cache.clear("k1")
    assert cache.use("k1", chain).read == 0


def test_cache_keeps_only_long_prefixes_and_is_bounded() -> None:
    cache = PromptCache(min_tokens=10, max_prefixes=2)
    chain = prompt_segments("root", ["a", "b", "c", "d"], [6, 6, 6, 6])
    cache.use("k", chain)  # stores 12, 18, 24 and keeps the last two
    assert cache.use("k", chain[:3]).read == 18
    assert cache.use("k", chain[:2]).read == 0  # 12: evicted by the bound
    assert cache.use("k", chain[:1]).read == 0  # 6 tokens: never stored


def _openai_usage(client: OpenAI, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    return client.chat.completions.create(model="m", messages=messages, **kwargs).usage


def test_openai_reports_cached_tokens_per_key() -> None:
    with FakeOpenAIServer(prompt_cache=True) as server:
        a = OpenAI(base_url=server.base_url, api_key="sk-a", max_retries=0)
        b = OpenAI(base_url=server.base_url, api_key="sk-b", max_retries=0)
        first = _openai_usage(a, [SYSTEM, TURN_1])
        assert first.prompt_tokens == 14
        assert first.prompt_tokens_details.cached_tokens == 0
        second = _openai_usage(a, [SYSTEM, TURN_1, ANSWER_1, TURN_2])
        assert second.prompt_tokens == 26
        assert second.prompt_tokens_details.cached_tokens == 14
        assert _openai_usage(b, [SYSTEM, TURN_1]).prompt_tokens_details.cached_tokens == 0
        # Streams report it too, in the usage chunk.
        chunks = list(
            a.chat.completions.create(
                model="m",
                messages=[SYSTEM, TURN_1, ANSWER_1, TURN_2],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 26
        assert [r.cached_tokens for r in server.requests] == [0, 14, 0, 26]
        # Another model is another cache; a changed system prompt shares nothing.
        other = a.chat.completions.create(model="m2", messages=[SYSTEM, TURN_1]).usage
        assert other.prompt_tokens_details.cached_tokens == 0
        changed = {"role": "system", "content": "you are a careless assistant"}
        assert _openai_usage(a, [changed, TURN_1]).prompt_tokens_details.cached_tokens == 0
        server.clear_prompt_cache("sk-a")
        assert _openai_usage(a, [SYSTEM, TURN_1]).prompt_tokens_details.cached_tokens == 0


def test_tools_are_part_of_the_cached_prefix() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with FakeOpenAIServer(prompt_cache=True, reply_text="ok") as server:
        client = OpenAI(base_url=server.base_url, api_key="sk-a", max_retries=0)
        _openai_usage(client, [SYSTEM, TURN_1], tools=[tool])
        assert _openai_usage(client, [SYSTEM, TURN_1]).prompt_tokens_details.cached_tokens == 0
        again = _openai_usage(client, [SYSTEM, TURN_1], tools=[tool])
        assert again.prompt_tokens_details.cached_tokens == 14


def test_cache_off_by_default_keeps_usage_as_before(fake_openai_server: FakeOpenAIServer) -> None:
    client = OpenAI(base_url=fake_openai_server.base_url, api_key="sk-a", max_retries=0)
    for _ in range(2):
        usage = _openai_usage(client, [SYSTEM, TURN_1])
        assert usage.prompt_tokens_details is None
    assert fake_openai_server.requests[-1].usage == {
        "prompt_tokens": 14,
        "completion_tokens": 4,
        "total_tokens": 18,
    }


def test_cache_min_tokens() -> None:
    with FakeOpenAIServer(prompt_cache=True, cache_min_tokens=20) as server:
        client = OpenAI(base_url=server.base_url, api_key="sk-a", max_retries=0)
        long_turn = [SYSTEM, TURN_1, ANSWER_1, TURN_2]
        _openai_usage(client, long_turn)
        assert _openai_usage(client, [SYSTEM, TURN_1]).prompt_tokens_details.cached_tokens == 0
        assert _openai_usage(client, long_turn).prompt_tokens_details.cached_tokens == 26


def test_deepseek_reports_hit_and_miss_tokens() -> None:
    with FakeOpenAIServer(flavor="deepseek", prompt_cache=True) as server:
        client = OpenAI(base_url=server.base_url, api_key="sk-a", max_retries=0)
        client.chat.completions.create(model="deepseek-chat", messages=[SYSTEM, TURN_1])
        raw = client.chat.completions.with_raw_response.create(
            model="deepseek-chat", messages=[SYSTEM, TURN_1, ANSWER_1, TURN_2]
        )
        usage = raw.http_response.json()["usage"]
    assert usage["prompt_cache_hit_tokens"] == 14
    assert usage["prompt_cache_miss_tokens"] == 12
    assert usage["prompt_tokens_details"] == {"cached_tokens": 14}


def test_zhipu_reports_cached_tokens_in_invoke_and_stream() -> None:
    with FakeZhipuServer(prompt_cache=True) as server:
        client = ZhipuAI(api_key="kid.secret", base_url=server.base_url, max_retries=0)
        client.chat.completions.create(model="glm-4", messages=[SYSTEM, TURN_1])
        result = client.chat.completions.create(
            model="glm-4", messages=[SYSTEM, TURN_1, ANSWER_1, TURN_2]
        )
        assert result.usage is not None
        # zhipuai's non-streamed usage type has no details field: they arrive untyped.
        assert result.usage.model_dump()["prompt_tokens_details"] == {"cached_tokens": 14}
        chunks = list(
            client.chat.completions.create(
                model="glm-4", messages=[SYSTEM, TURN_1, ANSWER_1, TURN_2], stream=True
            )
        )
        final = [c for c in chunks if c.usage is not None][-1]
        assert final.usage is not None
        assert final.usage.prompt_tokens_details.cached_tokens == 26


def _marked(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]


def test_anthropic_caches_up_to_its_last_marker() -> None:
    with FakeAnthropicServer(prompt_cache=True) as server:
        client = Anthropic(base_url=server.base_url, api_key="ak-a", max_retries=0)
        system = _marked("you are a careful assistant")  # 8 tokens
        first = client.messages.create(
            model="c", max_tokens=9, system=system, messages=[TURN_1]
        ).usage
        # The system prompt is written to the cache; the user turn is plain input.
        assert (first.cache_creation_input_tokens, first.cache_read_input_tokens) == (8, 0)
        assert first.input_tokens == 6
        turn_2 = {"role": "user", "content": _marked("and now")}
        second = client.messages.create(
            model="c", max_tokens=9, system=system, messages=[TURN_1, ANSWER_1, turn_2]
        ).usage
        assert second.cache_read_input_tokens == 8
        assert second.cache_creation_input_tokens == 18  # 6 + 7 + 5 up to the new marker
        assert second.input_tokens == 0
        # Without a marker nothing is cached, even a prefix seen before.
        plain = client.messages.create(
            model="c", max_tokens=9, system="you are a careful assistant", messages=[TURN_1]
        ).usage
        assert (plain.cache_read_input_tokens, plain.cache_creation_input_tokens) == (0, 0)
        # Streams: message_start and message_delta carry the same cache counts.
        with client.messages.stream(
            model="c", max_tokens=9, system=system, messages=[TURN_1, ANSWER_1, turn_2]
        ) as stream:
            final = stream.get_final_message().usage
        assert final.cache_read_input_tokens == 26
        assert final.input_tokens == 0


def test_anthropic_request_level_marker_caches_everything() -> None:
    with FakeAnthropicServer(prompt_cache=True) as server:
        client = Anthropic(base_url=server.base_url, api_key="ak-a", max_retries=0)
        kwargs: dict[str, Any] = {"extra_body": {"cache_control": {"type": "ephemeral"}}}
        client.messages.create(model="c", max_tokens=9, messages=[TURN_1], **kwargs)
        usage = client.messages.create(
            model="c", max_tokens=9, messages=[TURN_1, ANSWER_1, TURN_2], **kwargs
        ).usage
        assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (6, 12)


def test_gemini_reports_cached_content_tokens() -> None:
    with FakeGeminiServer(prompt_cache=True) as server:
        client = genai.Client(
            api_key="g-a",
            http_options=types.HttpOptions(base_url=server.base_url, api_version="v1beta"),
        )
        config = types.GenerateContentConfig(system_instruction="you are a careful assistant")
        first = client.models.generate_content(
            model="gemini-2.0-flash", contents="hello there world", config=config
        )
        assert first.usage_metadata is not None
        assert first.usage_metadata.cached_content_token_count is None  # only sent on a hit
        contents = [
            types.Content(role="user", parts=[types.Part(text="hello there world")]),
            types.Content(role="model", parts=[types.Part(text="echo: hello there world")]),
            types.Content(role="user", parts=[types.Part(text="and now")]),
        ]
        second = client.models.generate_content(
            model="gemini-2.0-flash", contents=contents, config=config
        )
        assert second.usage_metadata is not None
        assert second.usage_metadata.cached_content_token_count == 14
        assert second.usage_metadata.prompt_token_count == 26
        chunks = list(
            client.models.generate_content_stream(
                model="gemini-2.0-flash", contents=contents, config=config
            )
        )
        assert all(c.usage_metadata.cached_content_token_count == 26 for c in chunks)
