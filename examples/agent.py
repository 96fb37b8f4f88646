"""A tool-calling agent whose turns may land on different vendors of one pool.

Runs offline against the built-in fake vendor servers: `python examples/agent.py`. With real
keys, build the model with `BalancedChatModel.from_config("examples/pllm.yaml")` instead.
"""

from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool

from langchain_pllm import BalancedChatModel
from langchain_pllm.testing import FakeAnthropicServer, FakeGeminiServer, FakeOpenAIServer


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def main() -> None:
    with FakeOpenAIServer() as o, FakeAnthropicServer() as a, FakeGeminiServer() as g:
        model = BalancedChatModel(
            providers=[
                {
                    "vendor": "openai",
                    "api_key": "sk-1",
                    "model": "gpt-4o-mini",
                    "api_base": o.base_url,
                },
                {
                    "vendor": "anthropic",
                    "api_key": "sk-2",
                    "model": "claude-x",
                    "api_base": a.base_url,
                },
                {
                    "vendor": "google",
                    "api_key": "sk-3",
                    "model": "gemini-x",
                    "api_base": g.base_url,
                },
            ]
        ).bind_tools([add])
        messages = [HumanMessage("What is 2 + 3? Use the tool.")]
        for _ in range(3):
            reply = model.invoke(messages)
            print(f"{reply.response_metadata['vendor']:>9}: {reply.content or reply.tool_calls}")
            messages.append(reply)
            if not reply.tool_calls:
                break
            for call in reply.tool_calls:
                messages.append(ToolMessage(str(add.invoke(call["args"])), tool_call_id=call["id"]))


if __name__ == "__main__":
    main()
