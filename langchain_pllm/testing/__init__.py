"""Fake vendor servers on loopback that speak each vendor's real wire format, with faults.

Point the official SDKs (`openai`, `anthropic`, `google-genai`, `zhipuai`) at a server's
`base_url`, script replies with `reply_text` or `set_responder`, inject `Fault`s (status codes
with `Retry-After`, latency, dropped connections, malformed bodies, cut streams) and read back
every request from `requests`. Fixtures for pytest live in `langchain_pllm.testing.pytest_plugin`.
"""

from langchain_pllm.testing.anthropic_server import FakeAnthropicServer
from langchain_pllm.testing.faults import Fault
from langchain_pllm.testing.gemini_server import FakeGeminiServer
from langchain_pllm.testing.openai_server import FakeOpenAIServer
from langchain_pllm.testing.replies import Reply, synthesize
from langchain_pllm.testing.server import FakeVendorServer, RecordedRequest
from langchain_pllm.testing.zhipu_server import FakeZhipuServer

__all__ = [
    "FakeAnthropicServer",
    "FakeGeminiServer",
    "FakeOpenAIServer",
    "FakeVendorServer",
    "FakeZhipuServer",
    "Fault",
    "RecordedRequest",
    "Reply",
    "synthesize",
]
