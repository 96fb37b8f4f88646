"""One pool across all six vendors, each behind its own fake server, with injected faults.

A batch of 300 must come back complete, in order and each answer exactly once although a fifth
of the requests fail; a tool-calling agent must finish its three turns correctly while each turn
is forced onto a different vendor, so tool calls and tool results cross vendor formats.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from langchain_pllm import BalancedChatModel
from langchain_pllm.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeVendorServer,
    FakeZhipuServer,
    Fault,
    Reply,
)

# One transport (tests/integration_tests/conftest.py): cross-vendor conversion and balancing over
# intact replies (network faults at volume are in test_chat_balancing, per vendor in
# test_transport_faults); a cut stream runs on both.
pytestmark = pytest.mark.one_transport

VENDOR_SERVERS: dict[str, type[FakeVendorServer]] = {
    "openai": FakeOpenAIServer,
    "siliconflow": FakeOpenAIServer,
    "deepseek": FakeOpenAIServer,
    "anthropic": FakeAnthropicServer,
    "google": FakeGeminiServer,
    "zhipu": FakeZhipuServer,
}


@pytest.fixture
def servers() -> Iterator[dict[str, FakeVendorServer]]:
    started = {vendor: cls().start() for vendor, cls in VENDOR_SERVERS.items()}
    try:
        yield started
    finally:
        for srv in started.values():
            srv.stop()


def key_of(vendor: str) -> str:
    return f"key-{vendor}"


def pool(servers: dict[str, FakeVendorServer], vendors: list[str], **kwargs: Any) -> Any:
    providers = [
        {
            "vendor": v,
            "api_key": key_of(v),
            "model": f"{v}-model",
            "api_base": servers[v].base_url,
        }
        for v in vendors
    ]
    return BalancedChatModel(providers=providers, **kwargs)


def _delivered(servers: dict[str, FakeVendorServer]) -> int:
    return sum(
        1 for srv in servers.values() for r in srv.requests if r.status == 200 and r.fault is None
    )


def _inject_faults(servers: dict[str, FakeVendorServer]) -> None:
    faults = [Fault(status=500), Fault(status=503), Fault(drop=True)]
    for seed, srv in enumerate(servers.values()):
        srv.set_fault_rate(0.2, faults, seed=seed)


BALANCER = {"breaker_threshold": 1000, "max_retries": 8}


def _check_batch(
    servers: dict[str, FakeVendorServer], prompts: list[str], answers: list[Any]
) -> None:
    assert [a.content for a in answers] == [f"echo: {p}" for p in prompts]
    # Each answer reached the caller once: exactly one successful exchange per prompt.
    assert _delivered(servers) == len(prompts)
    faulted = sum(1 for srv in servers.values() for r in srv.requests if r.fault is not None)
    assert faulted > 30  # about a fifth of ~375 attempts failed and were retried elsewhere
    assert max(a.response_metadata["attempts"] for a in answers) > 1
    assert {a.response_metadata["vendor"] for a in answers} == set(VENDOR_SERVERS)
    providers = {a.response_metadata["model_provider"] for a in answers}
    assert {"anthropic", "google_genai", "zhipuai", "openai", "deepseek"} <= providers


def test_batch_of_300_with_faults(servers: dict[str, FakeVendorServer]) -> None:
    _inject_faults(servers)
    model = pool(servers, list(VENDOR_SERVERS), balancer=BALANCER)
    prompts = [f"question {i}" for i in range(300)]
    answers = model.batch(prompts, config={"max_concurrency": 12})
    _check_batch(servers, prompts, answers)


async def test_abatch_of_300_with_faults(servers: dict[str, FakeVendorServer]) -> None:
    _inject_faults(servers)
    model = pool(servers, list(VENDOR_SERVERS), balancer=BALANCER)
    prompts = [f"question {i}" for i in range(300)]
    answers = await model.abatch(prompts, config={"max_concurrency": 48})
    _check_batch(servers, prompts, answers)


@pytest.mark.both_transports
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_stream_cut_before_content_fails_over_unseen(
    servers: dict[str, FakeVendorServer], mode: str
) -> None:
    vendors = ["anthropic", "google", "zhipu"]
    for v in vendors:
        # Each vendor's first stream dies before its first content frame (after
        # message_start / the role chunk, where the vendor sends those).
        servers[v].enqueue(Fault(cut_after=0))
    model = pool(servers, vendors, balancer={"max_retries": 3})
    if mode == "sync":
        chunks = list(model.stream("one two three"))
    else:
        chunks = [c async for c in model.astream("one two three")]
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.content == "echo: one two three"  # no text from the dead streams
    assert full.response_metadata["attempts"] == 4
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    assert sorted(r.fault is not None for v in vendors for r in servers[v].requests) == [
        False,
        True,
        True,
        True,
    ]


# The agent --------------------------------------------------------------------------------------


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def _tool_results(vendor: str, body: dict[str, Any]) -> list[str]:
    """The tool results a request carries, in each vendor's own wire format."""
    results: list[str] = []
    if vendor == "anthropic":
        for message in body["messages"]:
            for block in message["content"] if isinstance(message["content"], list) else ():
                if block.get("type") == "tool_result":
                    content = block["content"]
                    results.append(content if isinstance(content, str) else content[0]["text"])
    elif vendor == "google":
        for content in body["contents"]:
            for part in content["parts"]:
                response = part.get("functionResponse") or part.get("function_response")
                if response is not None:
                    results.append(str(response["response"]["result"]))
    else:
        results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    return results


def _agent_responder(
    vendor: str, srv: FakeVendorServer
) -> Callable[[dict[str, Any]], Reply | None]:
    """Compute (2 + 3) * 4 in three turns, from the tool results as this vendor received them.

    After answering once the server rate-limits its key, so the next turn must go elsewhere.
    """

    def respond(body: dict[str, Any]) -> Reply:
        results = _tool_results(vendor, body)
        srv.fault_for_key(key_of(vendor), Fault(status=429, retry_after=600))
        if not results:
            return Reply(tool_calls=[("add", {"a": 2, "b": 3})])
        if len(results) == 1:
            return Reply(tool_calls=[("multiply", {"a": int(results[0]), "b": 4})])
        return Reply(text=f"The answer is {results[-1]}.")

    return respond


def _react_agent(model: BalancedChatModel) -> Any:
    try:
        from langchain.agents import create_agent  # type: ignore[import-not-found]

        return create_agent(model, [add, multiply])
    except ImportError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # moved to langchain.agents, not installed here
        from langgraph.prebuilt import create_react_agent

        return create_react_agent(model, [add, multiply])


@pytest.mark.parametrize("mode", ["sync", "async", "streaming"])
async def test_agent_turns_cross_vendors(servers: dict[str, FakeVendorServer], mode: str) -> None:
    vendors = ["anthropic", "google", "zhipu"]
    for v in vendors:
        servers[v].set_responder(_agent_responder(v, servers[v]))
    # streaming: every turn is a merged stream, Anthropic's as a list of its own blocks.
    model = pool(servers, vendors, balancer={"max_retries": 4}, streaming=mode == "streaming")
    agent = _react_agent(model)
    question = {"messages": [HumanMessage("What is (2 + 3) * 4?")]}
    state = agent.invoke(question) if mode != "async" else await agent.ainvoke(question)
    messages = state["messages"]
    ai = [m for m in messages if isinstance(m, AIMessage)]
    tools = [m for m in messages if isinstance(m, ToolMessage)]
    assert [m.content for m in tools] == ["5", "20"]
    assert ai[-1].content == "The answer is 20."
    assert len(ai) == 3
    # Every turn was served by another vendor, each reading the others' tool calls.
    assert sorted(m.response_metadata["vendor"] for m in ai) == sorted(vendors)
    assert [tc["name"] for m in ai for tc in m.tool_calls] == ["add", "multiply"]
    assert all(json.dumps(tc["args"]) for m in ai for tc in m.tool_calls)


def test_pllm_avoid_steers_a_turn_to_another_vendor(
    servers: dict[str, FakeVendorServer],
) -> None:
    model = pool(servers, ["anthropic", "google", "zhipu"], max_retries=0)
    served = []
    avoid: list[str] = []
    for _ in range(3):
        msg = model.invoke("hello", pllm_avoid=list(avoid))
        served.append(msg.response_metadata["vendor"])
        avoid.append(msg.response_metadata["provider"])
    assert sorted(served) == ["anthropic", "google", "zhipu"]


# An Anthropic reply in the history, read by every vendor ---------------------------------------

ANTHROPIC_REPLY = AIMessage(
    content=[
        {"type": "thinking", "thinking": "Add them.", "signature": "sig=="},
        {"type": "text", "text": "Sure."},
        {"type": "tool_use", "id": "toolu_9", "name": "add", "input": {"a": 2, "b": 3}},
    ],
    tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "toolu_9", "type": "tool_call"}],
    response_metadata={"model_provider": "anthropic"},
)


def _assistant_turn(vendor: str, body: dict[str, Any]) -> Any:
    if vendor == "google":
        (turn,) = [c for c in body["contents"] if c["role"] == "model"]
        return turn["parts"]
    (turn,) = [m for m in body["messages"] if m["role"] == "assistant"]
    return turn


@pytest.mark.parametrize("vendor", ["openai", "deepseek", "zhipu", "google", "anthropic"])
def test_anthropic_reply_with_thinking_and_tool_use_in_history(
    servers: dict[str, FakeVendorServer], vendor: str
) -> None:
    history = [
        HumanMessage("2 + 3?"),
        ANTHROPIC_REPLY,
        ToolMessage("5", tool_call_id="toolu_9"),
    ]
    pool(servers, [vendor], max_retries=0).bind_tools([add]).invoke(history)
    sent = _assistant_turn(vendor, servers[vendor].requests[-1].body)
    if vendor == "anthropic":
        # Thinking goes back with its signature; the call goes once, from tool_calls.
        assert sent["content"] == ANTHROPIC_REPLY.content
    elif vendor == "google":
        assert sent[0] == {"text": "Sure."}
        assert sent[1]["functionCall"] == {"name": "add", "args": {"a": 2, "b": 3}}
        assert len(sent) == 2
    else:
        # Chat Completions takes text and tool calls only: no thinking or tool_use parts.
        assert sent["content"] == "Sure."
        assert [tc["id"] for tc in sent["tool_calls"]] == ["toolu_9"]
        assert json.loads(sent["tool_calls"][0]["function"]["arguments"]) == {"a": 2, "b": 3}
        assert set(sent) <= {"role", "content", "tool_calls"}
