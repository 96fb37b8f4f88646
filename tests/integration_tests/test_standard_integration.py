"""LangChain's standard integration suites, run over real HTTP against the package's fake vendors.

Each chat pool mixes two vendors (OpenAI with Anthropic, Google with Zhipu), so a balanced pool
must pass as one standard chat model whichever vendor serves. The balancer alternates between
idle keys, so the calls of one test reach both vendors; each pool runs twice, its first call
pinned to one vendor and then to the other, which makes every outcome independent of test order
and selection. The embeddings pool mixes OpenAI, Gemini and Zhipu. The fake servers echo by
default; where a standard test checks what a capable model would answer (call
``magic_function(3)`` with 3, keep a Unicode name, return the joke JSON that was asked for) a
scripted responder gives that answer, as a test double should. The image and PDF tests download
their samples from the internet; here the same kind of bytes are served from memory instead.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    EmbeddingsIntegrationTests,
)
from langchain_tests.integration_tests import chat_models as standard_chat_tests

from langchain_pllm import BalancedChatModel, BalancedEmbeddings
from langchain_pllm.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeVendorServer,
    FakeZhipuServer,
    Reply,
)

# One transport (tests/integration_tests/conftest.py): LangChain's contract over intact replies;
# streams and network faults on both transports are in test_chat_streaming, test_stream_deadline and
# test_transport_faults.
pytestmark = pytest.mark.one_transport

CHAT_VENDORS: dict[str, type[FakeVendorServer]] = {
    "openai": FakeOpenAIServer,
    "anthropic": FakeAnthropicServer,
    "google": FakeGeminiServer,
    "zhipu": FakeZhipuServer,
}
EMBEDDING_VENDORS: dict[str, type[FakeVendorServer]] = {
    "openai": FakeOpenAIServer,
    "google": FakeGeminiServer,
    "zhipu": FakeZhipuServer,
}
CHAT_MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-6",
    "google": "gemini-2.5-flash",
    "zhipu": "glm-4-flash",
}
EMBEDDING_MODELS = {
    "openai": "text-embedding-3-small",
    "google": "text-embedding-004",
    "zhipu": "embedding-3",
}

# Filled by the module fixture; the suites' `*_params` properties read the base URLs from here.
_servers: dict[str, FakeVendorServer] = {}

JOKE = {
    "setup": "Why did the cat sit on the computer?",
    "punchline": "To keep an eye on the mouse.",
}
_MAGIC_CALL = re.compile(r"magic_function\((-?\d+)\)")
_QUOTED_NAME = re.compile(r"named '([^']+)'")


# Scripted replies ------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(b.get("text", ""))
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _openai_view(body: dict[str, Any]) -> tuple[str, list[str], bool, bool]:
    """(last user text, offered tool names, awaiting a tool result's answer, JSON mode)."""
    messages = body.get("messages") or []
    user = [m for m in messages if m.get("role") == "user"]
    text = _text_of(user[-1].get("content")) if user else ""
    tools = [t["function"]["name"] for t in body.get("tools") or ()]
    after_tool = bool(messages) and messages[-1].get("role") == "tool"
    json_mode = (body.get("response_format") or {}).get("type") == "json_object"
    return text, tools, after_tool, json_mode


def _anthropic_view(body: dict[str, Any]) -> tuple[str, list[str], bool, bool]:
    messages = body.get("messages") or []
    user = [m for m in messages if m.get("role") == "user"]
    text = _text_of(user[-1].get("content")) if user else ""
    tools = [t["name"] for t in body.get("tools") or () if "name" in t]
    last = messages[-1].get("content") if messages else None
    after_tool = isinstance(last, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in last
    )
    # Our Anthropic provider turns JSON mode into a forced call of a tool named `json_output`.
    json_mode = (body.get("tool_choice") or {}).get("name") == "json_output"
    return text, tools, after_tool, json_mode


def _gemini_view(body: dict[str, Any]) -> tuple[str, list[str], bool, bool]:
    contents = body.get("contents") or []
    user = [c for c in contents if c.get("role", "user") == "user"]
    parts = user[-1].get("parts") if user else None
    text = " ".join(str(p["text"]) for p in parts or () if isinstance(p, dict) and "text" in p)
    tools = [
        d["name"]
        for t in body.get("tools") or ()
        for d in t.get("functionDeclarations") or t.get("function_declarations") or ()
    ]
    last_parts = contents[-1].get("parts") if contents else None
    after_tool = any(
        isinstance(p, dict) and ("functionResponse" in p or "function_response" in p)
        for p in last_parts or ()
    )
    config = body.get("generationConfig") or body.get("generation_config") or {}
    mime = config.get("responseMimeType") or config.get("response_mime_type")
    return text, tools, after_tool, mime == "application/json"


def _scripted(
    text: str, tools: list[str], after_tool: bool, json_mode: bool, json_as_tool: bool
) -> Reply | None:
    """What a capable model would answer where the standard tests check the content."""
    if after_tool:
        return None
    if json_mode and "punchline" in text:
        if json_as_tool:
            return Reply(tool_calls=[("json_output", dict(JOKE))])
        return Reply(text=json.dumps(JOKE))
    magic = _MAGIC_CALL.search(text)
    if "magic_function" in tools and magic:
        return Reply(tool_calls=[("magic_function", {"input": int(magic.group(1))})])
    name = _QUOTED_NAME.search(text)
    if "unicode_customer" in tools and name:
        args = {"customer_name": name.group(1), "description": "A new customer."}
        return Reply(tool_calls=[("unicode_customer", args)])
    return None


def _openai_responder(body: dict[str, Any]) -> Reply | None:
    return _scripted(*_openai_view(body), json_as_tool=False)


def _anthropic_responder(body: dict[str, Any]) -> Reply | None:
    return _scripted(*_anthropic_view(body), json_as_tool=True)


def _gemini_responder(body: dict[str, Any]) -> Reply | None:
    return _scripted(*_gemini_view(body), json_as_tool=False)


RESPONDERS = {
    "openai": _openai_responder,
    "anthropic": _anthropic_responder,
    "google": _gemini_responder,
    "zhipu": _openai_responder,  # Zhipu's chat API is OpenAI's format
}


# Offline samples for the image and PDF tests ---------------------------------------------------


def _png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x80\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 72 72]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)


class _Download:
    def __init__(self, content: bytes) -> None:
        self.content = content


class _OfflineHttpx:
    """Stands in for the `httpx` module the standard chat tests download samples with."""

    @staticmethod
    def get(url: str, **_: Any) -> _Download:
        if url.endswith(".png"):
            return _Download(_png_1x1())
        if url.endswith(".pdf"):
            return _Download(_PDF)
        raise AssertionError(f"no offline sample for {url}")


# Fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def fake_vendors() -> Iterator[dict[str, FakeVendorServer]]:
    """One fake server per vendor for the whole module; the pools point at them."""
    started: dict[str, FakeVendorServer] = {}
    try:
        for vendor, cls in CHAT_VENDORS.items():
            started[f"chat-{vendor}"] = cls().start()
        for vendor, cls in EMBEDDING_VENDORS.items():
            started[f"embedding-{vendor}"] = cls().start()
        for vendor, responder in RESPONDERS.items():
            started[f"chat-{vendor}"].set_responder(responder)
        _servers.update(started)
        yield started
    finally:
        _servers.clear()
        for srv in started.values():
            srv.stop()


@pytest.fixture(autouse=True)
def offline_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(standard_chat_tests, "httpx", _OfflineHttpx)


# The suites ------------------------------------------------------------------------------------


class _MixedPoolChatTests(ChatModelIntegrationTests):
    """The standard chat suite on a pool of two keys of two vendors.

    The balancer alternates between idle keys, so the calls of one test go to both vendors in
    turn; each test starts on `first_vendor`, which keeps every outcome independent of the
    order and selection of tests.
    """

    vendors: tuple[str, str] = ("openai", "anthropic")
    first_vendor = "openai"
    #: Whether every vendor of the pool gets PDFs, and media inside tool results, in a form
    #: its API documents (set per pool below).
    pdf_inputs = True
    media_in_tool_results = True
    # LangChain's VCR tests (skipped: "VCR not set up") replay cassettes recorded from a real
    # vendor; tests here never call one, so `enable_vcr_tests` stays off.

    @pytest.fixture(autouse=True)
    def first_call_goes_to(self, request: pytest.FixtureRequest, model: BalancedChatModel) -> str:
        """Leave `first_vendor` the least recently used key, so the test's first call goes there."""
        if request.node.get_closest_marker("vcr"):
            return self.first_vendor  # cassette tests make no live call (and skip here)
        for _ in range(2):
            served = model.invoke("warm-up").response_metadata["vendor"]
            if served != self.first_vendor:
                return self.first_vendor
        raise AssertionError("the pool does not alternate between its two idle keys")

    @property
    def chat_model_class(self) -> type[BalancedChatModel]:
        return BalancedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "providers": [
                {
                    "vendor": vendor,
                    "api_key": f"key-{vendor}",
                    "model": CHAT_MODELS[vendor],
                    "api_base": _servers[f"chat-{vendor}"].base_url,
                }
                for vendor in self.vendors
            ]
        }

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_image_urls(self) -> bool:
        return True

    @property
    def supports_pdf_inputs(self) -> bool:
        return self.pdf_inputs

    @property
    def supports_image_tool_message(self) -> bool:
        return self.media_in_tool_results

    @property
    def supports_pdf_tool_message(self) -> bool:
        return self.media_in_tool_results

    @property
    def supports_audio_inputs(self) -> bool:
        # Skips LangChain's audio test: OpenAI takes `input_audio` only on its audio models
        # and Anthropic documents no audio input, so no pool here can promise it.
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_anthropic_inputs(self) -> bool:
        # Anthropic-format history (tool_use / thinking blocks, cache_control) is read by every
        # provider; note the fakes accept any content part, so this checks no vendor's refusal.
        return True

    @property
    def model_override_value(self) -> str | None:
        # A call's `model=` picks the keys serving that model (it never rewrites another
        # vendor's model name): one vendor's model is served by that vendor's key alone.
        return CHAT_MODELS[self.vendors[-1]]

    def test_pool_is_mixed(self, model: BalancedChatModel) -> None:
        """Consecutive calls go to both vendors, first_vendor first, and answer alike."""
        replies = [model.invoke("ping") for _ in range(2)]
        served = [r.response_metadata["vendor"] for r in replies]
        assert served[0] == self.first_vendor
        assert set(served) == set(self.vendors)
        assert [r.text for r in replies] == ["echo: ping", "echo: ping"]


class TestOpenAIAnthropicPoolOpenAIFirst(_MixedPoolChatTests):
    vendors = ("openai", "anthropic")
    first_vendor = "openai"


class TestOpenAIAnthropicPoolAnthropicFirst(_MixedPoolChatTests):
    vendors = ("openai", "anthropic")
    first_vendor = "anthropic"


class _GoogleZhipuPool(_MixedPoolChatTests):
    vendors = ("google", "zhipu")
    # Zhipu's chat API documents no inline PDF part (the provider would send OpenAI's `file`
    # part), and the Google provider writes media of a tool result into the function response
    # as JSON text rather than as media parts: neither is claimed for this pool.
    pdf_inputs = False
    media_in_tool_results = False


class TestGoogleZhipuPoolGoogleFirst(_GoogleZhipuPool):
    first_vendor = "google"


class TestGoogleZhipuPoolZhipuFirst(_GoogleZhipuPool):
    first_vendor = "zhipu"


class TestBalancedEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[BalancedEmbeddings]:
        return BalancedEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {
            "providers": [
                {
                    "vendor": vendor,
                    "api_key": f"key-{vendor}",
                    "model": EMBEDDING_MODELS[vendor],
                    "api_base": _servers[f"embedding-{vendor}"].base_url,
                    # The fakes embed every text alike: one space under three model names.
                    "vector_space": "fake-space",
                }
                for vendor in EMBEDDING_VENDORS
            ]
        }
