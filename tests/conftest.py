"""Shared fixtures: the fake vendor servers of ``langchain_pllm.testing``."""

from langchain_pllm.testing.pytest_plugin import (  # noqa: F401
    fake_anthropic_server,
    fake_gemini_server,
    fake_openai_server,
    fake_zhipu_server,
)
