"""Reply ids, the real APIs' 400s, and JSON mode, over real HTTP with each vendor's SDK."""

from __future__ import annotations

import json

import anthropic
import httpx2
import jsonschema
import openai
import pytest
import zhipuai
from anthropic import Anthropic
from google import genai
from google.genai import errors, types
from openai import OpenAI
from zhipuai import ZhipuAI

from langchain_pllm.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeZhipuServer,
    Reply,
)

USER = [{"role": "user", "content": "hello there world"}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def _gemini(server: FakeGeminiServer, key: str = "g-key") -> genai.Client:
    return genai.Client(
        api_key=key, http_options=types.HttpOptions(base_url=server.base_url, api_version="v1beta")
    )


def test_ids_are_unique_across_servers_and_vendors(
    fake_openai_server: FakeOpenAIServer,
    fake_zhipu_server: FakeZhipuServer,
    fake_anthropic_server: FakeAnthropicServer,
    fake_gemini_server: FakeGeminiServer,
) -> None:
    with FakeOpenAIServer() as second_openai:
        clients = [
            OpenAI(base_url=srv.base_url, api_key="sk", max_retries=0)
            for srv in (fake_openai_server, second_openai)
        ]
        zhipu = ZhipuAI(api_key="kid.secret", base_url=fake_zhipu_server.base_url, max_retries=0)
        claude = Anthropic(base_url=fake_anthropic_server.base_url, api_key="ak", max_retries=0)
        gemini = _gemini(fake_gemini_server)
        ids: list[str] = []
        for _ in range(3):
            for client in clients:
                ids.append(client.chat.completions.create(model="m", messages=USER).id)
            ids.append(zhipu.chat.completions.create(model="glm-4", messages=USER).id or "")
            ids.append(claude.messages.create(model="c", max_tokens=9, messages=USER).id)
            reply = gemini.models.generate_content(model="gemini-2.0-flash", contents="hi")
            ids.append(reply.response_id or "")
    assert all(ids)
    assert len(set(ids)) == len(ids) == 15
    # Each vendor keeps its own id prefix.
    assert ids[0].startswith("chatcmpl-")
    assert ids[2].startswith("glm-")
    assert ids[3].startswith("msg_")
    assert ids[4].startswith("resp-")


def test_every_chunk_of_a_stream_has_the_reply_id(
    fake_openai_server: FakeOpenAIServer,
    fake_zhipu_server: FakeZhipuServer,
    fake_gemini_server: FakeGeminiServer,
) -> None:
    client = OpenAI(base_url=fake_openai_server.base_url, api_key="sk", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert len(chunks) > 4
    assert len({c.id for c in chunks}) == 1
    zhipu = ZhipuAI(api_key="kid.secret", base_url=fake_zhipu_server.base_url, max_retries=0)
    zchunks = list(zhipu.chat.completions.create(model="glm-4", messages=USER, stream=True))
    assert len(zchunks) > 4
    assert len({c.id for c in zchunks}) == 1
    gemini = _gemini(fake_gemini_server)  # kept: a throwaway client closes mid-call
    gchunks = list(
        gemini.models.generate_content_stream(model="gemini-2.0-flash", contents="one two three")
    )
    assert len(gchunks) > 2
    assert len({c.response_id for c in gchunks}) == 1


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"messages": []}, "empty array"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_openai_refuses_what_the_real_api_refuses(
    fake_openai_server: FakeOpenAIServer, kwargs: dict, needle: str
) -> None:
    client = OpenAI(base_url=fake_openai_server.base_url, api_key="sk", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", **kwargs)
    assert needle in caught.value.message
    assert caught.value.type == "invalid_request_error"
    assert fake_openai_server.requests[-1].status == 400
    assert client.chat.completions.create(model="m", messages=USER).choices


def test_openai_refuses_a_request_without_model(fake_openai_server: FakeOpenAIServer) -> None:
    client = OpenAI(base_url=fake_openai_server.base_url, api_key="sk", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="", messages=USER)
    assert "model" in caught.value.message


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "user", "content": ""}]}, "non-empty content"),
        ({"messages": [{"role": "user", "content": []}]}, "non-empty content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
            "text content blocks must be non-empty",
        ),
        ({"messages": [{"role": "system", "content": "x"}]}, "'user' or 'assistant'"),
    ],
)
def test_anthropic_refuses_what_the_real_api_refuses(
    fake_anthropic_server: FakeAnthropicServer, kwargs: dict, needle: str
) -> None:
    client = Anthropic(base_url=fake_anthropic_server.base_url, api_key="ak", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="c", max_tokens=9, **kwargs)
    assert needle in caught.value.message
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "invalid_request_error"
    assert fake_anthropic_server.requests[-1].status == 400


def test_anthropic_takes_an_empty_final_assistant_turn(
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    client = Anthropic(base_url=fake_anthropic_server.base_url, api_key="ak", max_retries=0)
    messages = [*USER, {"role": "assistant", "content": ""}]
    assert client.messages.create(model="c", max_tokens=9, messages=messages).content


@pytest.mark.parametrize(
    ("contents", "needle"),
    [
        ([], "contents is not specified"),
        ([{"role": "user", "parts": []}], "contents.parts must not be empty"),
        ([{"role": "wizard", "parts": [{"text": "x"}]}], "valid role"),
    ],
)
def test_gemini_refuses_what_the_real_api_refuses(
    fake_gemini_server: FakeGeminiServer, contents: list, needle: str
) -> None:
    # Raw REST (the SDK refuses some of these before sending), read by the SDK's own parser.
    response = httpx2.post(
        fake_gemini_server.url + "/v1beta/models/gemini-2.0-flash:generateContent",
        json={"contents": contents},
        headers={"x-goog-api-key": "g-key"},
    )
    with pytest.raises(errors.ClientError) as caught:
        errors.APIError.raise_for_response(response)
    assert caught.value.code == 400
    assert caught.value.status == "INVALID_ARGUMENT"
    assert needle in (caught.value.message or "")
    assert fake_gemini_server.requests[-1].status == 400


def test_gemini_sdk_gets_400_for_a_content_without_parts(
    fake_gemini_server: FakeGeminiServer,
) -> None:
    client = _gemini(fake_gemini_server)
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(
            model="gemini-2.0-flash", contents=[types.Content(role="user", parts=[])]
        )
    assert caught.value.code == 400


def test_zhipu_refuses_empty_messages_with_its_code(fake_zhipu_server: FakeZhipuServer) -> None:
    client = ZhipuAI(api_key="kid.secret", base_url=fake_zhipu_server.base_url, max_retries=0)
    with pytest.raises(zhipuai.APIRequestFailedError) as caught:
        client.chat.completions.create(model="glm-4", messages=[])
    assert caught.value.status_code == 400
    assert caught.value.response.json()["error"]["code"] == "1214"


def test_zhipu_json_mode_fits_the_schema_in_the_prompt(fake_zhipu_server: FakeZhipuServer) -> None:
    client = ZhipuAI(api_key="kid.secret", base_url=fake_zhipu_server.base_url, max_retries=0)
    note = "Reply with one JSON object only, matching this JSON schema:\n" + json.dumps(PERSON)
    result = client.chat.completions.create(
        model="glm-4",
        messages=[{"role": "system", "content": note}, *USER],
        response_format={"type": "json_object"},
    )
    value = json.loads(result.choices[0].message.content or "")
    jsonschema.validate(value, PERSON)
    # Without a schema anywhere, JSON mode still answers an object.
    plain = client.chat.completions.create(
        model="glm-4", messages=USER, response_format={"type": "json_object"}
    )
    assert json.loads(plain.choices[0].message.content or "") == {"echo": "hello there world"}


def test_zhipu_json_schema_and_tools_answer_as_openai_does(
    fake_zhipu_server: FakeZhipuServer,
) -> None:
    client = ZhipuAI(api_key="kid.secret", base_url=fake_zhipu_server.base_url, max_retries=0)
    result = client.chat.completions.create(
        model="glm-4",
        messages=USER,
        response_format={"type": "json_schema", "json_schema": {"name": "P", "schema": PERSON}},
    )
    jsonschema.validate(json.loads(result.choices[0].message.content or ""), PERSON)
    tool = {"type": "function", "function": {"name": "Person", "parameters": PERSON}}
    called = client.chat.completions.create(model="glm-4", messages=USER, tools=[tool])
    (call,) = called.choices[0].message.tool_calls or []
    jsonschema.validate(json.loads(call.function.arguments), PERSON)


def test_scripted_tool_call_ids(
    fake_openai_server: FakeOpenAIServer, fake_anthropic_server: FakeAnthropicServer
) -> None:
    def script(body: dict) -> Reply:
        return Reply(tool_calls=[("f", {}), ("g", {})], call_ids=["call_known"])

    fake_openai_server.set_responder(script)
    fake_anthropic_server.set_responder(script)
    client = OpenAI(base_url=fake_openai_server.base_url, api_key="sk", max_retries=0)
    calls = client.chat.completions.create(model="m", messages=USER).choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].id == "call_known"
    assert calls[1].id.startswith("call_")  # beyond the scripted ids: generated, unique
    assert calls[1].id != "call_known"
    claude = Anthropic(base_url=fake_anthropic_server.base_url, api_key="ak", max_retries=0)
    blocks = claude.messages.create(model="c", max_tokens=9, messages=USER).content
    assert [getattr(b, "id", None) for b in blocks][:1] == ["call_known"]
