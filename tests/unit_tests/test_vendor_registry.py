"""The vendor registry, provider-id numbering, and a third-party provider built from public names.

The third-party provider (``ParrotProvider``) imports only ``langchain_pllm`` and
``langchain_pllm.providers``, registers itself, and then serves a pool loaded from YAML like a
built-in vendor: invoke, stream, their async twins, embeddings, failover and ``get_stats()``.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from langchain_core.exceptions import ModelRateLimitError
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.ai import UsageMetadata

from langchain_pllm import (
    BalancedChatModel,
    BalancedEmbeddings,
    PllmConfigError,
    load_config,
    register_vendor,
)
from langchain_pllm.balancer import ManualClock
from langchain_pllm.config import (
    VENDORS,
    PoolConfig,
    ProviderConfig,
    pool_from_providers,
    provider_id,
    vendor_names,
)
from langchain_pllm.config.ids import VendorCounter
from langchain_pllm.config.vendors import remove_vendor, vendor_spec
from langchain_pllm.providers import (
    ChatRequest,
    EmbeddingResult,
    Provider,
    model_error,
    provider_class,
)


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """Each test starts and ends with only the built-in vendors, each with its own class."""
    yield
    for name in vendor_names():
        spec = vendor_spec(name)
        if spec is not None and not spec.builtin:
            remove_vendor(name)


# --- a third-party provider, from public names only -------------------------------------------


class ParrotProvider(Provider):
    """Answers with the last message in capitals; a key starting ``limited`` is always at 429."""

    model_provider = "parrot"
    supports_embeddings = True
    embed_batch_limit = 2

    def _answer(self, request: ChatRequest) -> list[str]:
        if self.config.api_key.get_secret_value().startswith("limited"):
            raise model_error(
                ModelRateLimitError,
                f"{self.id}: slow down",
                retry_after=30.0,
                status_code=429,
                provider=self.id,
            )
        return str(request.messages[-1].content).upper().split()

    def _usage(self, words: list[str]) -> UsageMetadata:
        return UsageMetadata(
            input_tokens=len(words), output_tokens=len(words), total_tokens=2 * len(words)
        )

    def chat(self, request: ChatRequest) -> AIMessage:
        words = self._answer(request)
        return AIMessage(
            content=" ".join(words),
            usage_metadata=self._usage(words),
            response_metadata={"finish_reason": "stop", "model_name": self.model},
        )

    async def achat(self, request: ChatRequest) -> AIMessage:
        return self.chat(request)

    def stream(self, request: ChatRequest) -> Iterator[AIMessageChunk]:
        words = self._answer(request)
        for index, word in enumerate(words):
            yield AIMessageChunk(content=word if index == 0 else f" {word}")
        yield AIMessageChunk(
            content="",
            usage_metadata=self._usage(words),
            response_metadata={"finish_reason": "stop"},
        )

    async def astream(self, request: ChatRequest) -> AsyncIterator[AIMessageChunk]:
        for chunk in self.stream(request):
            yield chunk

    def embed(self, texts: list[str]) -> EmbeddingResult:
        assert len(texts) <= self.batch_limit
        return EmbeddingResult(vectors=[[float(len(t)), 1.0] for t in texts], tokens=len(texts))

    async def aembed(self, texts: list[str]) -> EmbeddingResult:
        return self.embed(texts)


class MuteProvider(Provider):
    """A chat-only vendor: it has no embeddings API."""

    model_provider = "mute"


PARROT_YAML = textwrap.dedent(
    """
    llm:
      use: parrot
      parrot:
        - {api_key: parrot-a, model: p1}
        - {api_key: parrot-b, model: p1, name: second}
    embedding:
      parrot:
        - {api_key: parrot-a, model: e1}
    balancer:
      max_retries: 2
    """
)


def test_a_registered_provider_serves_a_pool_loaded_from_yaml() -> None:
    register_vendor("parrot", ParrotProvider, api_base="https://parrot.invalid/v1/")
    config = load_config(PARROT_YAML)
    assert config.llm is not None
    assert [p.id for p in config.llm.providers] == ["parrot-0", "second"]
    assert {p.api_base for p in config.llm.providers} == {"https://parrot.invalid/v1"}

    model = BalancedChatModel.from_config(PARROT_YAML, clock=ManualClock())
    reply = model.invoke("hello there")
    assert reply.content == "HELLO THERE"
    assert reply.response_metadata["model_provider"] == "parrot"
    assert reply.response_metadata["vendor"] == "parrot"
    assert reply.response_metadata["provider"] in {"parrot-0", "second"}
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["total_tokens"] == 4

    chunks = list(model.stream("one two three"))
    assert "".join(str(c.content) for c in chunks) == "ONE TWO THREE"
    assert [c.usage_metadata is not None for c in chunks].count(True) == 1

    stats = model.get_stats()
    assert set(stats) == {"parrot-0", "second"}
    assert all(s["vendor"] == "parrot" and s["state"] == "closed" for s in stats.values())
    assert sum(s["total_requests"] for s in stats.values()) == 2
    assert sum(s["total_tokens"] for s in stats.values()) == 4 + 6
    assert sum(s["error_count"] for s in stats.values()) == 0

    vectors = BalancedEmbeddings.from_config(PARROT_YAML).embed_documents(["a", "bbb", "cc"])
    assert vectors == [[1.0, 1.0], [3.0, 1.0], [2.0, 1.0]]  # two batches, order kept


async def test_a_registered_provider_serves_async_calls() -> None:
    register_vendor("parrot", ParrotProvider)
    model = BalancedChatModel.from_config(PARROT_YAML, clock=ManualClock())
    reply = await model.ainvoke("async hello")
    assert reply.content == "ASYNC HELLO"
    text = "".join([str(chunk.content) async for chunk in model.astream("a b")])
    assert text == "A B"
    assert sum(s["total_requests"] for s in model.get_stats().values()) == 2
    vectors = await BalancedEmbeddings.from_config(PARROT_YAML).aembed_documents(["xy"])
    assert vectors == [[2.0, 1.0]]


def test_a_registered_provider_fails_over_like_a_builtin_one() -> None:
    register_vendor("parrot", ParrotProvider)
    model = BalancedChatModel(
        providers=[
            {"vendor": "parrot", "api_key": "limited-key", "model": "p"},
            {"vendor": "parrot", "api_key": "good-key", "model": "p"},
        ],
        clock=ManualClock(),
    )
    for _ in range(3):
        assert model.invoke("again").content == "AGAIN"
    stats = model.get_stats()
    assert stats["parrot-1"]["total_requests"] == 3
    assert stats["parrot-0"]["resting_for"] == pytest.approx(30.0)  # its Retry-After, read once


def test_an_embeddings_pool_refuses_a_registered_chat_only_vendor() -> None:
    register_vendor("mute", MuteProvider)
    BalancedChatModel(providers=[{"vendor": "mute", "api_key": "k", "model": "m"}])
    with pytest.raises(PllmConfigError, match="no embeddings API") as info:
        BalancedEmbeddings(providers=[{"vendor": "mute", "api_key": "k", "model": "m"}])
    assert info.value.field == "providers[0].vendor"


# --- the registry ------------------------------------------------------------------------------


def test_an_unregistered_vendor_is_refused_with_a_suggestion() -> None:
    entry = "{api_key: k, model: m}"
    with pytest.raises(PllmConfigError, match="unknown vendor section 'parrot'") as info:
        load_config(f"llm:\n  parrot:\n    - {entry}\n")
    assert info.value.field == "llm.parrot"
    register_vendor("parrot", ParrotProvider)
    assert load_config(f"llm:\n  use: parrot\n  parrot:\n    - {entry}\n").llm is not None
    with pytest.raises(PllmConfigError, match="did you mean 'parrot'") as info:
        ProviderConfig(vendor="parot", api_key="k", model="m")
    assert "vendor must be one of: openai, " in str(info.value)
    assert str(info.value).endswith("zhipu, parrot")
    with pytest.raises(PllmConfigError, match="did you mean 'parrot'"):
        load_config(f"llm:\n  use: parot\n  parrot:\n    - {entry}\n")
    with pytest.raises(PllmConfigError, match="did you mean 'parrot'"):
        provider_class("parot")


def test_registered_names_follow_the_builtin_ones_and_can_be_removed() -> None:
    assert vendor_names() == VENDORS
    register_vendor("parrot", ParrotProvider)
    assert vendor_names() == (*VENDORS, "parrot")
    assert provider_class("parrot") is ParrotProvider
    remove_vendor("parrot")
    assert vendor_names() == VENDORS
    with pytest.raises(PllmConfigError, match="only a registered vendor"):
        remove_vendor("openai")
    with pytest.raises(PllmConfigError, match="only a registered vendor"):
        remove_vendor("parrot")


def test_a_vendor_without_a_default_endpoint_leaves_api_base_empty() -> None:
    register_vendor("parrot", ParrotProvider)
    assert ProviderConfig(vendor="parrot", api_key="k", model="m").api_base == ""
    given = ProviderConfig(vendor="parrot", api_key="k", model="m", api_base="http://x/v1/")
    assert given.api_base == "http://x/v1"


def test_a_builtin_name_is_refused_unless_replace_is_given() -> None:
    with pytest.raises(
        PllmConfigError, match=r"'openai': it is a built-in vendor; .* replace=True"
    ):
        register_vendor("openai", ParrotProvider)
    assert provider_class("openai").__name__ == "OpenAIProvider"

    register_vendor("openai", ParrotProvider, replace=True)
    assert provider_class("openai") is ParrotProvider
    remove_vendor("openai")  # the built-in class comes back
    assert provider_class("openai").__name__ == "OpenAIProvider"
    assert ProviderConfig(vendor="openai", api_key="k", model="m").api_base == (
        "https://api.openai.com/v1"
    )


def test_a_replaced_builtin_keeps_its_endpoint_unless_one_is_given() -> None:
    # Left out, api_base must not become "": an OpenAI-SDK provider would then get an empty
    # base URL and every request of the pool would fail.
    try:
        register_vendor("siliconflow", ParrotProvider, replace=True)
        entry = ProviderConfig(vendor="siliconflow", api_key="k", model="m")
        assert entry.api_base == "https://api.siliconflow.cn/v1"
        register_vendor(
            "siliconflow", ParrotProvider, api_base="https://proxy.invalid/v1/", replace=True
        )
        entry = ProviderConfig(vendor="siliconflow", api_key="k", model="m")
        assert entry.api_base == "https://proxy.invalid/v1"
    finally:
        remove_vendor("siliconflow")
    register_vendor("parrot", ParrotProvider)  # a new name still gets no endpoint by default
    assert ProviderConfig(vendor="parrot", api_key="k", model="m").api_base == ""


def test_registering_again_is_harmless_but_taking_a_name_needs_replace() -> None:
    register_vendor("parrot", ParrotProvider)
    register_vendor("parrot", ParrotProvider)  # a re-run notebook cell
    with pytest.raises(PllmConfigError, match=r"it is registered to <class .*ParrotProvider'>"):
        register_vendor("parrot", MuteProvider)
    with pytest.raises(PllmConfigError, match="replace=True"):
        register_vendor("parrot", ParrotProvider, api_base="https://other.invalid")
    register_vendor("parrot", MuteProvider, replace=True)
    assert provider_class("parrot") is MuteProvider


class _NoModelProvider(Provider):
    pass


@pytest.mark.parametrize(
    ("provider", "fragment"),
    [
        (object, "subclass of langchain_pllm.providers.Provider"),
        (_NoModelProvider, "model_provider"),
    ],
)
def test_register_refuses_what_is_not_a_complete_provider(provider: Any, fragment: str) -> None:
    with pytest.raises(TypeError, match=fragment):
        register_vendor("parrot", provider)
    assert "parrot" not in vendor_names()


@pytest.mark.parametrize("name", ["Parrot", "use", "", "9lives", "two words", "a.b"])
def test_register_refuses_a_malformed_or_reserved_name(name: str) -> None:
    with pytest.raises(PllmConfigError, match="cannot register vendor"):
        register_vendor(name, ParrotProvider)
    assert vendor_names() == VENDORS


def test_register_refuses_an_endpoint_that_is_not_http() -> None:
    with pytest.raises(PllmConfigError, match="http:// or https://") as info:
        register_vendor("parrot", ParrotProvider, api_base="ftp://parrot.invalid")
    assert info.value.field == "api_base"


# --- provider ids -----------------------------------------------------------------------------


def test_provider_id_is_vendor_and_index() -> None:
    assert provider_id("openai", 0) == "openai-0"
    assert provider_id("my-vendor", 12) == "my-vendor-12"


def test_vendor_counter_numbers_each_vendor_on_its_own() -> None:
    counter = VendorCounter()
    taken = [counter.take(v) for v in ("openai", "openai", "anthropic", "openai", "anthropic")]
    assert taken == [0, 1, 0, 2, 1]


def test_every_road_into_a_pool_numbers_providers_alike() -> None:
    entries: list[dict[str, Any]] = [
        {"vendor": "openai", "api_key": "a", "model": "m"},
        {"vendor": "anthropic", "api_key": "b", "model": "m"},
        {"vendor": "openai", "api_key": "c", "model": "m", "name": "named"},
        {"vendor": "openai", "api_key": "d", "model": "m"},
    ]
    expected = ["openai-0", "anthropic-0", "named", "openai-2"]
    assert [p.id for p in pool_from_providers(entries).providers] == expected
    assert [p.id for p in PoolConfig(providers=tuple(entries)).providers] == expected  # type: ignore[arg-type]
    built = [ProviderConfig(**entry) for entry in entries]
    assert [p.id for p in pool_from_providers(built).providers] == expected
    # YAML groups providers by vendor section; each still counts among its vendor's own.
    sections = {
        "llm": {
            "openai": [
                {"api_key": "a", "model": "m"},
                {"api_key": "c", "model": "m", "name": "named"},
                {"api_key": "d", "model": "m"},
            ],
            "anthropic": [{"api_key": "b", "model": "m"}],
        }
    }
    loaded = load_config(sections).llm
    assert loaded is not None
    assert sorted(p.id for p in loaded.providers) == sorted(expected)


def test_every_builtin_row_names_a_provider_class_in_the_providers_package() -> None:
    # The rows name their class as text, imported by importlib: the layer test cannot see these
    # imports, so a row pointing above the providers (a face, the balancer) is caught here.
    for name in VENDORS:
        spec = vendor_spec(name)
        assert spec is not None
        assert isinstance(spec.provider, str)
        module, _, _ = spec.provider.partition(":")
        assert module.startswith("langchain_pllm.providers."), spec
        assert issubclass(provider_class(name), Provider)
