"""AnthropicProvider over real HTTP against FakeAnthropicServer, through BalancedChatModel."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    ModelRefusalError,
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

from langchain_pllm import BalancedChatModel
from langchain_pllm.exceptions import InvalidCallError
from langchain_pllm.testing import FakeAnthropicServer, Fault, Reply

KEY = "sk-ant-secret-key"
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


def model_for(srv: FakeAnthropicServer, **kwargs: Any) -> BalancedChatModel:
    provider = {
        "vendor": "anthropic",
        "api_key": KEY,
        "model": "claude-x",
        "api_base": srv.base_url,
    }
    provider.update(kwargs.pop("provider", {}))
    return BalancedChatModel(providers=[provider], max_retries=0, **kwargs)


def joined(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    return full


def expected_usage(srv: FakeAnthropicServer) -> dict[str, int]:
    rec = srv.requests[-1]
    return {
        "input_tokens": rec.prompt_tokens,
        "output_tokens": rec.completion_tokens,
        "total_tokens": rec.prompt_tokens + rec.completion_tokens,
    }


def test_invoke_converts_system_history_and_reports_usage(
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    srv = fake_anthropic_server
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
    assert meta["stop_reason"] == "end_turn"
    assert meta["model_provider"] == "anthropic"
    assert meta["vendor"] == "anthropic"
    assert meta["model_name"] == "claude-x"
    assert msg.usage_metadata == expected_usage(srv)
    body = srv.requests[-1].body
    assert body["system"] == [{"type": "text", "text": "be brief"}]
    assert body["max_tokens"] == 1024  # Anthropic requires it
    # Consecutive user turns merged: the API wants alternation.
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert [b["text"] for b in body["messages"][2]["content"]] == ["hello", "there"]


def test_params_are_mapped_and_unknown_ones_dropped_with_one_warning(
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    srv = fake_anthropic_server
    model = model_for(srv, temperature=0.3, max_tokens=50, stop=["END"])
    with pytest.warns(UserWarning, match="takes no") as record:
        model.invoke("hi", top_p=0.5)
    warned = " ".join(str(w.message) for w in record)
    assert "'temperature'" in warned
    assert "'top_p'" in warned
    body = srv.requests[-1].body
    assert body["max_tokens"] == 50
    assert body["stop_sequences"] == ["END"]
    assert "temperature" not in body
    assert "top_p" not in body
    # Warned once per provider, not once per request.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.invoke("again")


def test_images_base64_and_url(fake_anthropic_server: FakeAnthropicServer) -> None:
    srv = fake_anthropic_server
    content: list[str | dict[str, Any]] = [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image", "url": "https://example.com/cat.jpg"},
        {"type": "image", "base64": PNG, "mime_type": "image/png"},
    ]
    model_for(srv).invoke([HumanMessage(content=content)])
    blocks = srv.requests[-1].body["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
    }
    assert blocks[2] == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.com/cat.jpg"},
    }
    assert blocks[3]["source"]["data"] == PNG


def test_stream_counts_usage_once_and_finish_once(
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    srv = fake_anthropic_server
    chunks = list(model_for(srv).stream("one two three"))
    full = joined(chunks)
    assert full.content == "echo: one two three"
    assert len(chunks) > 3
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    # message_start and message_delta both carry counts; adding them would double count.
    assert full.usage_metadata == expected_usage(srv)
    assert sum(1 for c in chunks if "finish_reason" in c.response_metadata) == 1
    assert full.response_metadata["finish_reason"] == "stop"
    assert full.response_metadata["model_name"] == "claude-x"
    assert full.response_metadata["model_provider"] == "anthropic"


async def test_ainvoke_and_astream(fake_anthropic_server: FakeAnthropicServer) -> None:
    srv = fake_anthropic_server
    model = model_for(srv)
    msg = await model.ainvoke("async hello")
    assert msg.content == "echo: async hello"
    assert msg.usage_metadata == expected_usage(srv)
    chunks = [c async for c in model.astream("async stream")]
    full = joined(chunks)
    assert full.content == "echo: async stream"
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    assert full.usage_metadata == expected_usage(srv)
    assert full.response_metadata["finish_reason"] == "stop"


def _tool_round_trip(model: BalancedChatModel, srv: FakeAnthropicServer) -> None:
    bound = model.bind_tools([add])
    question: list[BaseMessage] = [HumanMessage("what is 2 + 3?")]
    first = bound.invoke(question)
    assert isinstance(first, AIMessage)
    assert first.response_metadata["finish_reason"] == "tool_calls"
    call = first.tool_calls[0]
    assert call["name"] == "add"
    assert call["id"]
    assert srv.requests[-1].body["tools"][0]["name"] == "add"
    assert srv.requests[-1].body["tools"][0]["input_schema"]["required"] == ["a", "b"]
    result = ToolMessage(str(add(**call["args"])), tool_call_id=call["id"])
    final = bound.invoke([*question, first, result])
    assert final.content == f"result: {result.content}"
    sent = srv.requests[-1].body["messages"]
    assert sent[1]["content"] == [
        {"type": "tool_use", "id": call["id"], "name": "add", "input": call["args"]}
    ]
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": result.content}],
    }


def test_tool_call_round_trip(fake_anthropic_server: FakeAnthropicServer) -> None:
    _tool_round_trip(model_for(fake_anthropic_server), fake_anthropic_server)


def test_stream_tool_call_chunks(fake_anthropic_server: FakeAnthropicServer) -> None:
    srv = fake_anthropic_server
    # Fake reply ids are unique per process, so the tool call's id is scripted to be known.
    srv.set_responder(
        lambda body: Reply(
            text="let me add", tool_calls=[("add", {"a": 2, "b": 3})], call_ids=["toolu_1_0"]
        )
    )
    chunks = list(model_for(srv).bind_tools([add]).stream("2 + 3"))
    full = joined(chunks)
    call = {"name": "add", "args": {"a": 2, "b": 3}, "id": "toolu_1_0", "type": "tool_call"}
    assert full.tool_calls == [call]
    # Tools offered: list content from the first chunk, every block tagged with its index, as
    # ChatAnthropic streams; the merged blocks are one text block and one tool_use block.
    assert all(isinstance(c.content, list) for c in chunks[:-1])
    assert all("index" in b for c in chunks for b in c.content if isinstance(b, dict))
    assert full.text == "let me add"
    assert [b["type"] for b in full.content if isinstance(b, dict)] == ["text", "tool_use"]
    assert all(tc["index"] is not None for c in chunks for tc in c.tool_call_chunks)
    assert full.content_blocks == [
        {"type": "text", "text": "let me add", "index": 0},
        {**call, "index": 1},
    ]
    assert full.response_metadata["finish_reason"] == "tool_calls"
    assert full.usage_metadata == expected_usage(srv)
    # Sent back, the merged message's call goes out once, from tool_calls.
    result = ToolMessage("5", tool_call_id="toolu_1_0")
    model_for(srv).bind_tools([add]).invoke([HumanMessage("2 + 3"), full, result])
    assert srv.requests[-1].body["messages"][1]["content"] == [
        {"type": "text", "text": "let me add"},
        {"type": "tool_use", "id": "toolu_1_0", "name": "add", "input": {"a": 2, "b": 3}},
    ]


def _tool_call_block(message: BaseMessage) -> dict[str, Any]:
    (block,) = [b for b in message.content_blocks if b["type"] == "tool_call"]
    return dict(block)


@pytest.mark.parametrize("output_version", ["v0", "v1"])
async def test_tool_calls_appear_in_content_blocks(
    fake_anthropic_server: FakeAnthropicServer, output_version: str
) -> None:
    srv = fake_anthropic_server
    srv.set_responder(lambda body: Reply(text="adding", tool_calls=[("add", {"a": 2, "b": 3})]))
    bound = model_for(srv, output_version=output_version).bind_tools([add])
    replies: list[BaseMessage] = [
        bound.invoke("2 + 3"),
        joined(list(bound.stream("2 + 3"))),
        await bound.ainvoke("2 + 3"),
        joined([c async for c in bound.astream("2 + 3")]),
    ]
    for reply in replies:
        assert isinstance(reply, AIMessage)
        (call,) = reply.tool_calls
        assert call["name"] == "add"
        assert call["args"] == {"a": 2, "b": 3}
        block = _tool_call_block(reply)
        assert (block["name"], block["args"], block["id"]) == ("add", call["args"], call["id"])
        assert reply.text == "adding"


def test_text_reply_with_tools_offered_is_a_string_when_invoked(
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    srv = fake_anthropic_server
    srv.set_responder(lambda body: Reply(text="no tool needed"))
    msg = model_for(srv).bind_tools([add]).invoke("hi")
    assert msg.content == "no tool needed"
    assert msg.content_blocks == [{"type": "text", "text": "no tool needed"}]


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("required", {"type": "any"}),
        ("add", {"type": "tool", "name": "add"}),
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
    ],
)
def test_tool_choice_mapping(
    fake_anthropic_server: FakeAnthropicServer, choice: str, wire: dict[str, Any]
) -> None:
    srv = fake_anthropic_server
    model_for(srv).bind_tools([add], tool_choice=choice).invoke("2 + 3")
    assert srv.requests[-1].body["tool_choice"] == wire


def test_parallel_tool_calls_false(fake_anthropic_server: FakeAnthropicServer) -> None:
    srv = fake_anthropic_server
    model_for(srv).bind_tools([add], parallel_tool_calls=False).invoke("2 + 3")
    assert srv.requests[-1].body["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }


def test_structured_output_function_calling(fake_anthropic_server: FakeAnthropicServer) -> None:
    srv = fake_anthropic_server
    person = model_for(srv).with_structured_output(Person).invoke("who?")
    assert person == Person(name="x", age=1)
    assert srv.requests[-1].body["tool_choice"] == {"type": "tool", "name": "Person"}


@pytest.mark.parametrize("method", ["json_schema", "json_mode"])
def test_json_response_format_becomes_forced_tool(
    fake_anthropic_server: FakeAnthropicServer, method: str
) -> None:
    srv = fake_anthropic_server
    if method == "json_schema":
        runnable = model_for(srv).with_structured_output(Person, method="json_schema")
        assert runnable.invoke("who?") == Person(name="x", age=1)
        assert srv.requests[-1].body["tool_choice"] == {"type": "tool", "name": "Person"}
    else:
        raw = model_for(srv).invoke("who?", response_format={"type": "json_object"})
        assert json.loads(str(raw.content)) == {}
        assert raw.tool_calls == []
        assert raw.response_metadata["finish_reason"] == "stop"
    # The streamed form yields the JSON as text too.
    chunks = list(model_for(srv).stream("who?", response_format={"type": "json_object"}))
    assert json.loads(str(joined(chunks).content)) == {}


def test_refusal_maps_to_content_filter_and_raises_on_structured_path(
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    srv = fake_anthropic_server
    srv.set_responder(lambda body: Reply(text="I can't help with that.", finish_reason="refusal"))
    msg = model_for(srv).invoke("bad request")
    assert msg.response_metadata["finish_reason"] == "content_filter"
    assert msg.response_metadata["stop_reason"] == "refusal"
    srv.set_responder(lambda body: Reply(text=None, finish_reason="refusal"))
    with pytest.raises(ModelRefusalError):
        model_for(srv).with_structured_output(Person, method="json_schema").invoke("bad")


ERRORS = [
    (Fault(status=500), ModelAPIError),
    (Fault(status=529), ModelAPIError),
    (Fault(status=401), ModelAuthenticationError),
    (Fault(status=400, message="messages: bad"), ModelInvalidRequestError),
    (
        Fault(status=400, message="prompt is too long: 250000 tokens > 200000 maximum"),
        ContextOverflowError,
    ),
    (Fault(drop=True), ModelConnectionError),
]


@pytest.mark.parametrize(("fault", "error"), ERRORS)
def test_errors_are_classified(
    fake_anthropic_server: FakeAnthropicServer, fault: Fault, error: type[ModelError]
) -> None:
    srv = fake_anthropic_server
    srv.enqueue(fault)
    with pytest.raises(error) as info:
        model_for(srv).invoke("hi")
    assert info.value.provider == "anthropic-0"  # type: ignore[attr-defined]
    assert KEY not in str(info.value)
    if fault.status:
        assert info.value.status_code == fault.status  # type: ignore[attr-defined]


def test_rate_limit_keeps_retry_after(fake_anthropic_server: FakeAnthropicServer) -> None:
    srv = fake_anthropic_server
    srv.enqueue(Fault(status=429, retry_after=7))
    with pytest.raises(ModelRateLimitError) as info:
        model_for(srv).invoke("hi")
    assert info.value.retry_after == 7.0  # type: ignore[attr-defined]
    assert len(srv.requests) == 1  # the SDK's own retries are off


@pytest.mark.parametrize(
    ("fault", "error"),
    [(Fault(status=429, retry_after=3), ModelRateLimitError), (Fault(status=529), ModelAPIError)],
)
async def test_async_and_stream_errors(
    fake_anthropic_server: FakeAnthropicServer, fault: Fault, error: type[ModelError]
) -> None:
    srv = fake_anthropic_server
    srv.enqueue(fault)
    with pytest.raises(error):
        await model_for(srv).ainvoke("hi")
    srv.enqueue(fault)
    # Another model name: another key identity, not resting after the first 429.
    with pytest.raises(error):
        [c async for c in model_for(srv, provider={"model": "claude-y"}).astream("hi")]


def test_cut_stream_is_a_connection_error(fake_anthropic_server: FakeAnthropicServer) -> None:
    srv = fake_anthropic_server
    srv.enqueue(Fault(cut_after=1))
    with pytest.raises(ModelConnectionError):
        list(model_for(srv).stream("one two three four"))


def test_timeout(fake_anthropic_server: FakeAnthropicServer) -> None:
    srv = fake_anthropic_server
    srv.enqueue(Fault(latency=1.0))
    with pytest.raises(ModelTimeoutError):
        model_for(srv, provider={"timeout": 0.2}).invoke("hi")


@pytest.mark.parametrize("form", ["sdk model", "reply json"])
def test_usage_counts_cached_input_and_thinking(form: str) -> None:
    # The fake reports no cache use, so the usage is built here. Plain calls read the reply's
    # JSON (a raw post); streams read the SDK's own Usage model: both count the same.
    import anthropic

    from langchain_pllm.providers.anthropic_convert import usage_of

    usage: Any = {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
        "output_tokens_details": {"thinking_tokens": 3},
    }
    if form == "sdk model":
        usage = anthropic.types.Usage.model_validate(usage)
    assert usage_of(usage) == {
        "input_tokens": 130,
        "output_tokens": 5,
        "total_tokens": 135,
        "input_token_details": {"cache_read": 100, "cache_creation": 20},
        "output_token_details": {"reasoning": 3},
    }
    assert usage_of(usage) == {
        "input_tokens": 130,
        "output_tokens": 5,
        "total_tokens": 135,
        "input_token_details": {"cache_read": 100, "cache_creation": 20},
        "output_token_details": {"reasoning": 3},
    }


async def test_the_raw_post_sends_extra_headers_body_and_workspace(
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    srv = fake_anthropic_server
    model = model_for(srv)
    kwargs: dict[str, Any] = {
        "extra_headers": {"x-trace": "t-1"},
        "extra_body": {"metadata": {"user_id": "u-1"}},
        "workspace_id": "ws-1",
    }
    assert (model.invoke("hi", **kwargs)).content == "echo: hi"
    assert (await model.ainvoke("hi", **kwargs)).content == "echo: hi"
    for rec in srv.requests[-2:]:
        assert rec.headers["x-trace"] == "t-1"
        assert rec.headers["anthropic-workspace-id"] == "ws-1"
        assert rec.headers["anthropic-version"]  # the SDK's own headers still go
        assert rec.body["metadata"] == {"user_id": "u-1"}
        assert "workspace_id" not in rec.body
        assert "extra_headers" not in rec.body


# Thinking: FakeAnthropicServer does not think, so a canned Messages API reply stands in -----

_THINKING_BLOCKS: list[dict[str, Any]] = [
    {"type": "thinking", "thinking": "Add them.", "signature": "sig=="},
    {"type": "text", "text": "Sure."},
    {"type": "tool_use", "id": "toolu_9", "name": "add", "input": {"a": 2, "b": 3}},
]


def _thinking_events() -> list[dict[str, Any]]:
    """The stream of the reply above, in the Messages API's event order."""
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_9",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 1},
            },
        }
    ]
    deltas: list[list[dict[str, Any]]] = [
        [
            {"type": "thinking_delta", "thinking": "Add "},
            {"type": "thinking_delta", "thinking": "them."},
            {"type": "signature_delta", "signature": "sig=="},
        ],
        [{"type": "text_delta", "text": "Sure."}],
        [
            {"type": "input_json_delta", "partial_json": '{"a": 2,'},
            {"type": "input_json_delta", "partial_json": ' "b": 3}'},
        ],
    ]
    starts: list[dict[str, Any]] = [
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "toolu_9", "name": "add", "input": {}},
    ]
    for index, (start, pieces) in enumerate(zip(starts, deltas, strict=True)):
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        events.extend({"type": "content_block_delta", "index": index, "delta": d} for d in pieces)
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 20},
        }
    )
    events.append({"type": "message_stop"})
    return events


@pytest.fixture
def thinking_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A Messages API endpoint that always replies with thinking, text and a tool call."""
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            if body.get("stream"):
                payload = "".join(
                    f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in _thinking_events()
                ).encode()
                kind = "text/event-stream"
            else:
                reply = {
                    "id": "msg_9",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-x",
                    "content": _THINKING_BLOCKS,
                    "stop_reason": "tool_use",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 10, "output_tokens": 21},
                }
                payload, kind = json.dumps(reply).encode(), "application/json"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_thinking_text_and_tool_use_are_anthropic_blocks(
    thinking_server: tuple[str, list[dict[str, Any]]],
) -> None:
    base_url, bodies = thinking_server
    provider = {"vendor": "anthropic", "api_key": KEY, "model": "claude-x", "api_base": base_url}
    model = BalancedChatModel(providers=[provider], max_retries=0).bind_tools(
        [add], thinking={"type": "enabled", "budget_tokens": 1024}
    )
    invoked = model.invoke("2 + 3")
    assert invoked.content == _THINKING_BLOCKS
    chunks = list(model.stream("2 + 3"))
    streamed = joined(chunks)
    assert all(isinstance(c.content, list) for c in chunks[:-1])  # the last is the face's
    assert [b["type"] for b in streamed.content if isinstance(b, dict)] == [
        "thinking",
        "text",
        "tool_use",
    ]
    expected_call = {"name": "add", "args": {"a": 2, "b": 3}, "id": "toolu_9", "type": "tool_call"}
    for reply in (invoked, streamed):
        assert reply.tool_calls == [expected_call]
        blocks = reply.content_blocks
        assert [b["type"] for b in blocks] == ["reasoning", "text", "tool_call"]
        reasoning = dict(blocks[0])
        assert reasoning["reasoning"] == "Add them."
        assert reasoning["extras"] == {"signature": "sig=="}
        assert reply.text == "Sure."
        # The next turn sends the thinking back, signature kept, and the call once.
        model.invoke([HumanMessage("2 + 3"), reply, ToolMessage("5", tool_call_id="toolu_9")])
        assert bodies[-1]["messages"][1] == {
            "role": "assistant",
            "content": _THINKING_BLOCKS,
        }


def test_v1_stream_of_blocks_ends_without_a_stray_empty_text_block(
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    model = model_for(fake_anthropic_server, output_version="v1")
    merged = joined(list(model.bind_tools([add]).stream("add 2 and 3")))
    assert isinstance(merged.content, list)
    assert [b["type"] for b in merged.content] == ["tool_call"]  # type: ignore[index]
    assert merged.tool_calls[0]["name"] == "add"


# The non-streaming guard reads a private SDK method ------------------------------------------


async def test_a_call_still_works_on_an_sdk_without_the_private_timeout_guard(
    fake_anthropic_server: FakeAnthropicServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ``create`` refuses long non-streaming calls through ``_calculate_nonstreaming_timeout``,
    # a private method a later SDK may drop: the raw post then keeps the client's timeout.
    from anthropic._base_client import BaseClient

    monkeypatch.delattr(BaseClient, "_calculate_nonstreaming_timeout")
    model = model_for(fake_anthropic_server)
    assert model.invoke("hi").content == "echo: hi"
    assert (await model.ainvoke("hi")).content == "echo: hi"


async def test_a_non_streaming_call_that_may_outrun_the_default_timeout_is_refused(
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    model = model_for(fake_anthropic_server)
    sent = len(fake_anthropic_server.requests)
    # The caller's error, found before a byte was sent: not retried, no key blamed.
    with pytest.raises(InvalidCallError, match="Streaming is required"):
        model.invoke("hi", max_tokens=100_000)
    with pytest.raises(InvalidCallError, match="Streaming is required"):
        await model.ainvoke("hi", max_tokens=100_000)
    assert len(fake_anthropic_server.requests) == sent  # refused before anything was sent


async def test_a_retired_model_warns_on_invoke_as_on_stream(
    fake_anthropic_server: FakeAnthropicServer,
) -> None:
    # ``create`` warns for a model the SDK lists as deprecated; the raw post must too.
    from anthropic.resources.messages.messages import DEPRECATED_MODELS

    retired = next(iter(DEPRECATED_MODELS))
    model = model_for(fake_anthropic_server, provider={"model": retired})

    def warned(seen: list[warnings.WarningMessage]) -> bool:
        return any(
            issubclass(w.category, DeprecationWarning) and retired in str(w.message) for w in seen
        )

    # Only DeprecationWarning is let through (``pytest.warns`` would re-emit the sync pool's
    # sockets' ResourceWarning at exit, noise unrelated to this test).
    for call in (lambda: model.invoke("hi"), lambda: list(model.stream("hi"))):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", DeprecationWarning)
            call()
        assert warned(seen)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", DeprecationWarning)
        await model.ainvoke("hi")
    assert warned(seen)
