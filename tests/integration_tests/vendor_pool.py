"""Fake servers of every vendor, started once per module, for the per-vendor theme tests.

Tests that share them keep apart by key: each builds its pool with fresh API keys
(``fresh_key``) and reads only its own keys' requests (``sent_by``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from langchain_pllm.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeVendorServer,
    FakeZhipuServer,
    RecordedRequest,
)

VENDORS = ("openai", "anthropic", "google", "zhipu")
MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "google": "gemini-2.5-flash",
    "zhipu": "glm-4-flash",
}
_SERVERS: dict[str, type[FakeVendorServer]] = {
    "openai": FakeOpenAIServer,
    "anthropic": FakeAnthropicServer,
    "google": FakeGeminiServer,
    "zhipu": FakeZhipuServer,
}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeVendorServer]]:
    """One running fake server per vendor, for the whole module."""
    started: dict[str, FakeVendorServer] = {}
    try:
        for vendor, cls in _SERVERS.items():
            started[vendor] = cls().__enter__()
        yield started
    finally:
        for srv in started.values():
            srv.__exit__(None, None, None)


def fresh_key(vendor: str) -> str:
    """An API key no other test uses."""
    return f"k-{vendor}-{uuid.uuid4().hex[:12]}"


def entry(servers: dict[str, FakeVendorServer], vendor: str, **extra: Any) -> dict[str, Any]:
    """A pool entry for ``vendor`` on its fake server, with a fresh key."""
    return {
        "vendor": vendor,
        "api_key": fresh_key(vendor),
        "model": MODELS[vendor],
        "api_base": servers[vendor].base_url,
        **extra,
    }


def sent_by(srv: FakeVendorServer, key: str) -> list[RecordedRequest]:
    """The requests ``srv`` received with ``key``."""
    return [r for r in srv.requests if r.api_key == key]
