"""Fake vendor servers on loopback that speak each vendor's real wire format, with faults."""

from langchain_pllm.testing.faults import Fault
from langchain_pllm.testing.openai_server import FakeOpenAIServer
from langchain_pllm.testing.replies import Reply
from langchain_pllm.testing.server import FakeVendorServer, RecordedRequest

__all__ = ["FakeOpenAIServer", "FakeVendorServer", "Fault", "RecordedRequest", "Reply"]
