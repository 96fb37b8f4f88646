"""The fake Anthropic server, exercised through the real `anthropic` SDK over loopback HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import anthropic
import httpx2
import pytest
from anthropic import Anthropic, AsyncAnthropic

from langchain_pllm.testing import FakeAnthropicServer, Fault, Reply

USER = [{"role": "user", "content": "hello there world"}]
TOOL = {
    "name": "lookup",
    "description": "Look something up.",
    "input_schema": {
        "type": "object",
        "properties": {"q": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["q", "n"],
    },
}
OTHER = {"name": "other", "input_schema": {"type": "object", "properties": {}}}


@pytest.fixture
def client(fake_anthropic_server: FakeAnthropicServer) -> Anthropic:
    return Anthropic(base_url=fake_anthropic_server.base_url, api_key="ak-1", max_retries=0)


def _post(server: FakeAnthropicServer, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(
        server.url + "/v1/messages",
        data=json.dumps({"model": "c", "max_tokens": 5, "messages": USER}).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_message_text_usage_and_log(
    client: Anthropic,
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    assert fake_anthropic_server.base_url == fake_anthropic_server.url
    message = client.messages.create(
        model="claude-x", max_tokens=50, system="be brief", messages=USER
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: hello there world"
    assert message.stop_reason == "end_turn"
    assert message.model == "claude-x"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 4)
    (record,) = fake_anthropic_server.requests
    assert record.path == "/v1/messages"
    assert record.api_key == "ak-1"
    assert "anthropic-version" in record.headers
    assert record.usage is not None
    assert (record.usage["input_tokens"], record.usage["output_tokens"]) == (11, 4)
    assert record.status == 200


def test_x_api_key_and_version_header(
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    status, body = _post(
        fake_anthropic_server, {"x-api-key": "ak-raw", "anthropic-version": "2023-06-01"}
    )
    assert status == 200
    assert body["content"][0]["text"] == "echo: hello there world"
    assert fake_anthropic_server.requests[-1].api_key == "ak-raw"
    status, body = _post(fake_anthropic_server, {"x-api-key": "ak-raw"})
    assert status == 400
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in body["error"]["message"]
    status, body = _post(fake_anthropic_server, {"anthropic-version": "2023-06-01"})
    assert (status, body["error"]["type"]) == (401, "authentication_error")


def test_tool_use_forced_and_result(client: Anthropic) -> None:
    message = client.messages.create(model="c", max_tokens=50, messages=USER, tools=[TOOL])
    (block,) = message.content
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("lookup", {"q": "x", "n": 1})
    assert message.stop_reason == "tool_use"
    forced = client.messages.create(
        model="c",
        max_tokens=50,
        messages=USER,
        tools=[TOOL, OTHER],
        tool_choice={"type": "tool", "name": "other"},
    )
    assert forced.content[0].type == "tool_use"
    assert forced.content[0].name == "other"
    follow_up = [
        *USER,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True)]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "42 items"}],
        },
    ]
    answer = client.messages.create(model="c", max_tokens=50, messages=follow_up, tools=[TOOL])
    assert answer.content[0].type == "text"
    assert answer.content[0].text == "result: 42 items"


def test_responder_scripts_text_and_tools(
    client: Anthropic,
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    fake_anthropic_server.set_responder(
        lambda body: Reply(text="thinking", tool_calls=[("lookup", {"q": "a"})])
    )
    message = client.messages.create(model="c", max_tokens=50, messages=USER, tools=[TOOL])
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.stop_reason == "tool_use"


def test_stream_text_events_and_usage(
    client: Anthropic,
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    events = list(client.messages.create(model="c", max_tokens=50, messages=USER, stream=True))
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_delta") == 4
    start, delta = events[0], events[-2]
    assert start.type == "message_start"
    assert delta.type == "message_delta"
    assert start.message.usage.input_tokens == 6
    assert start.message.usage.output_tokens == 1
    assert delta.usage.output_tokens == 4
    assert delta.delta.stop_reason == "end_turn"
    with client.messages.stream(model="c", max_tokens=50, messages=USER) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == "echo: hello there world"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (6, 4)
    assert fake_anthropic_server.requests[-1].stream is True


def test_stream_tool_use(client: Anthropic) -> None:
    with client.messages.stream(model="c", max_tokens=50, messages=USER, tools=[TOOL]) as stream:
        json_deltas = [
            e
            for e in stream
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
        ]
        final = stream.get_final_message()
    assert len(json_deltas) > 1
    assert final.content[0].type == "tool_use"
    assert final.content[0].input == {"q": "x", "n": 1}
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (503, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_status_faults_raise_sdk_errors(
    client: Anthropic,
    fake_anthropic_server: FakeAnthropicServer,
    status: int,
    error_class: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    fake_anthropic_server.enqueue(Fault(status=status, retry_after=3, message="nope"))
    with pytest.raises(error_class) as caught:
        client.messages.create(model="c", max_tokens=5, messages=USER)
    assert caught.value.status_code == status
    assert caught.value.response.headers["retry-after"] == "3"
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"] == {"type": error_type, "message": "nope"}


def test_error_code_overrides_type(
    client: Anthropic,
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    fake_anthropic_server.enqueue(Fault(status=413, code="request_too_large"))
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="c", max_tokens=5, messages=USER)
    assert caught.value.status_code == 413
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "request_too_large"


def test_drop_malformed_and_cut(
    client: Anthropic,
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    fake_anthropic_server.enqueue(Fault(drop=True), Fault(malformed=True), Fault(cut_after=2))
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model="c", max_tokens=5, messages=USER)
    with pytest.raises(ValueError):
        client.messages.create(model="c", max_tokens=5, messages=USER)
    texts: list[str] = []

    def consume() -> None:
        for event in client.messages.create(model="c", max_tokens=5, messages=USER, stream=True):
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                texts.append(event.delta.text)

    # Mid-stream, the SDK lets its HTTP layer's error through unwrapped.
    with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):
        consume()
    assert texts == ["echo: ", "hello "]


def test_fault_for_key(fake_anthropic_server: FakeAnthropicServer) -> None:
    bad = Anthropic(base_url=fake_anthropic_server.base_url, api_key="ak-bad", max_retries=0)
    good = Anthropic(base_url=fake_anthropic_server.base_url, api_key="ak-good", max_retries=0)
    fake_anthropic_server.fault_for_key("ak-bad", Fault(status=529), times=1)
    with pytest.raises(anthropic.OverloadedError):
        bad.messages.create(model="c", max_tokens=5, messages=USER)
    assert good.messages.create(model="c", max_tokens=5, messages=USER).content
    assert bad.messages.create(model="c", max_tokens=5, messages=USER).content


async def test_async_client(fake_anthropic_server: FakeAnthropicServer) -> None:
    client = AsyncAnthropic(base_url=fake_anthropic_server.base_url, api_key="ak", max_retries=0)
    message = await client.messages.create(model="c", max_tokens=5, messages=USER)
    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: hello there world"
    async with client.messages.stream(model="c", max_tokens=5, messages=USER) as stream:
        pieces = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == "echo: hello there world"
    assert final.usage.output_tokens == 4
    fake_anthropic_server.enqueue(Fault(status=429, retry_after=1))
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(model="c", max_tokens=5, messages=USER)
    await client.close()


def test_structured_output_config(client: Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "rank": {"type": "integer"}},
        "required": ["city", "rank"],
        "additionalProperties": False,
    }
    message = client.messages.create(
        model="c",
        max_tokens=50,
        messages=USER,
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert message.content[0].type == "text"
    assert json.loads(message.content[0].text) == {"city": "x", "rank": 1}
