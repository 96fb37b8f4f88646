"""A LangGraph agent over a mixed pool keeps every message of every vendor.

``add_messages`` merges by message id: two replies sharing an id (two vendors' fakes both
answering ``chatcmpl-1``, or a stream whose last chunk had another id) would overwrite each
other and the conversation would lose turns. Over OpenAI, Anthropic, Gemini and Zhipu keys,
invoked and streamed, every reply stays.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from langchain_pllm import BalancedChatModel
from langchain_pllm.balancer import ManualClock
from langchain_pllm.testing import FakeVendorServer
from tests.integration_tests.vendor_pool import VENDORS, entry, servers

__all__ = ["servers"]  # the module-scoped fixture, used by name


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def agent_graph(model: BalancedChatModel, replies: list[AIMessage]) -> Any:
    llm = model.bind_tools([add])

    def agent(state: MessagesState) -> dict[str, list[BaseMessage]]:
        reply = llm.invoke(state["messages"])
        replies.append(reply)
        return {"messages": [reply]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([add]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    graph.add_edge("agent", END)
    return graph.compile(checkpointer=InMemorySaver())


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_an_agent_over_a_mixed_pool_keeps_every_message(
    servers: dict[str, FakeVendorServer], streaming: bool
) -> None:
    # Affinity off: by default a conversation keeps its key (its prompt cache); this test sends
    # one conversation round every vendor to prove each turn's messages survive the mix.
    model = BalancedChatModel(
        providers=[entry(servers, v) for v in VENDORS],
        streaming=streaming,
        clock=ManualClock(),
        balancer={"affinity": "off"},
    )
    replies: list[AIMessage] = []
    app = agent_graph(model, replies)
    config = {"configurable": {"thread_id": f"t-{streaming}"}}
    turns = [f"turn {i}: add 2 and 3" for i in range(8)]
    for text in turns:
        app.invoke({"messages": [HumanMessage(text)]}, config)
    messages = app.get_state(config).values["messages"]
    ids = [m.id for m in messages]
    assert len(ids) == len(set(ids))  # no reply overwrote another
    kept = {m.id for m in messages if isinstance(m, AIMessage)}
    assert kept == {r.id for r in replies}
    humans = [m.content for m in messages if isinstance(m, HumanMessage)]
    assert humans == turns
    tools = [m for m in messages if isinstance(m, ToolMessage)]
    assert len(messages) == len(turns) + len(replies) + len(tools)
    served = {r.response_metadata["vendor"] for r in replies}
    assert served == set(VENDORS)  # the turns went round the mixed pool
    assert any(r.tool_calls for r in replies)


def test_every_chunk_of_a_stream_carries_one_id(servers: dict[str, FakeVendorServer]) -> None:
    for vendor in VENDORS:
        model = BalancedChatModel(providers=[entry(servers, vendor)], clock=ManualClock())
        ids = {chunk.id for chunk in model.stream("one two three")}
        assert len(ids) == 1, (vendor, ids)
