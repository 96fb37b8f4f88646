"""pytest fixtures that start a fake vendor server around each test.

Load them with ``pytest_plugins = ["langchain_pllm.testing.pytest_plugin"]`` in a top-level
conftest, or import the fixtures by name. Each is function-scoped: a fresh server (free port,
empty request log, no faults) per test, stopped when the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from langchain_pllm.testing.anthropic_server import FakeAnthropicServer
from langchain_pllm.testing.gemini_server import FakeGeminiServer
from langchain_pllm.testing.openai_server import FakeOpenAIServer
from langchain_pllm.testing.zhipu_server import FakeZhipuServer


@pytest.fixture
def fake_openai_server() -> Iterator[FakeOpenAIServer]:
    """A running ``FakeOpenAIServer``; give ``.base_url`` to the ``openai`` SDK."""
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def fake_anthropic_server() -> Iterator[FakeAnthropicServer]:
    """A running ``FakeAnthropicServer``; give ``.base_url`` to the ``anthropic`` SDK."""
    with FakeAnthropicServer() as server:
        yield server


@pytest.fixture
def fake_gemini_server() -> Iterator[FakeGeminiServer]:
    """A running ``FakeGeminiServer``; give ``.base_url`` to ``google-genai`` (v1beta)."""
    with FakeGeminiServer() as server:
        yield server


@pytest.fixture
def fake_zhipu_server() -> Iterator[FakeZhipuServer]:
    """A running ``FakeZhipuServer``; give ``.base_url`` to the ``zhipuai`` SDK."""
    with FakeZhipuServer() as server:
        yield server
