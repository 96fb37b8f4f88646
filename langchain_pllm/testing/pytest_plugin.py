"""pytest fixtures that start a fake vendor server around each test.

Load it with ``pytest_plugins = ["langchain_pllm.testing.pytest_plugin"]`` in a conftest, or
import the fixtures by name. Each fixture is function-scoped: a fresh server (free port, empty
request log, no faults) per test, stopped when the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from langchain_pllm.testing.openai_server import FakeOpenAIServer


@pytest.fixture
def fake_openai_server() -> Iterator[FakeOpenAIServer]:
    """A running `FakeOpenAIServer`; use `.base_url` for the `openai` SDK."""
    with FakeOpenAIServer() as server:
        yield server
