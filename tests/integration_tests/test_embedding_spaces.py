"""One vector space per embeddings pool, enforced; a wrong reply is that key's failure."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from langchain_pllm import BalancedEmbeddings, PllmConfigError
from langchain_pllm.balancer import ManualClock
from langchain_pllm.testing import FakeOpenAIServer, FakeVendorServer
from langchain_pllm.testing.replies import embedding_vector
from tests.integration_tests.vendor_pool import entry, sent_by, servers

# One transport (tests/integration_tests/conftest.py): vector sizes are read from intact replies.
pytestmark = pytest.mark.one_transport

__all__ = ["servers"]  # the module-scoped fixture, used by name

TEXTS = [f"text {i}" for i in range(12)]
EMBEDDING_MODELS = {
    "openai": "text-embedding-3-small",
    "google": "text-embedding-004",
    "zhipu": "embedding-3",
}


def test_two_models_in_one_pool_are_refused_naming_both_entries(
    servers: dict[str, FakeVendorServer],
) -> None:
    # Same dimension, unrelated spaces: never split texts across them.
    a = entry(servers, "openai", model="text-embedding-ada-002")
    b = entry(servers, "openai", model="text-embedding-3-small")
    with pytest.raises(PllmConfigError) as info:
        BalancedEmbeddings(providers=[a, b])
    text = str(info.value)
    assert "openai-0" in text
    assert "openai-1" in text
    assert "text-embedding-ada-002" in text
    assert "vector_space" in text


def test_one_model_under_two_names_joins_by_vector_space(
    servers: dict[str, FakeVendorServer],
) -> None:
    a = entry(servers, "openai", model="BAAI/bge-m3", vector_space="bge-m3")
    b = entry(servers, "zhipu", model="bge-m3-zh", vector_space="bge-m3")
    emb = BalancedEmbeddings(providers=[a, b], clock=ManualClock())
    vectors = emb.embed_documents(TEXTS)
    assert len(vectors) == len(TEXTS)
    assert sent_by(servers["openai"], a["api_key"])
    assert sent_by(servers["zhipu"], b["api_key"])
    c = entry(servers, "google", model="text-embedding-004", vector_space="other")
    with pytest.raises(PllmConfigError, match="different vector spaces"):
        BalancedEmbeddings(providers=[a, c])


def test_vector_space_from_yaml(servers: dict[str, FakeVendorServer]) -> None:
    a = entry(servers, "openai")
    yaml = f"""
embedding:
  use: openai
  openai:
    - api_key: {a["api_key"]}
      api_base: {a["api_base"]}
      model: bge-m3
      vector_space: bge-m3
"""
    emb = BalancedEmbeddings.from_config(yaml)
    assert emb.providers[0].vector_space == "bge-m3"


@pytest.mark.parametrize("vendor", ["openai", "google", "zhipu"])
@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_dimensions_is_sent_and_every_vector_has_it(
    servers: dict[str, FakeVendorServer], vendor: str, run_async: bool
) -> None:
    e = entry(servers, vendor, model=EMBEDDING_MODELS[vendor])
    emb = BalancedEmbeddings(providers=[e], dimensions=4, clock=ManualClock())
    texts = TEXTS[:3]
    vectors = await emb.aembed_documents(texts) if run_async else emb.embed_documents(texts)
    assert vectors == [pytest.approx(list(embedding_vector(t, 4))) for t in texts]
    body = sent_by(servers[vendor], e["api_key"])[0].body
    assert "4" in str(body)  # dimensions / outputDimensionality, in the vendor's spelling


class _ShortReplyServer(FakeOpenAIServer):
    """An OpenAI server that answers one vector too few."""

    def _embedding_body(
        self, body: dict[str, Any], model: str, vectors: list[tuple[float, ...]], tokens: int
    ) -> dict[str, Any]:
        return super()._embedding_body(body, model, vectors[:-1], tokens)


@pytest.fixture(scope="module")
def short_srv() -> Iterator[FakeOpenAIServer]:
    with _ShortReplyServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def wide_srv() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(dimensions=16) as srv:
        yield srv


@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_a_reply_with_too_few_vectors_fails_over_and_counts_against_the_key(
    servers: dict[str, FakeVendorServer], short_srv: FakeOpenAIServer, run_async: bool
) -> None:
    bad = entry(servers, "openai", api_base=short_srv.base_url, name="short")
    good = entry(servers, "openai", name="good")
    emb = BalancedEmbeddings(providers=[bad, good], clock=ManualClock())
    texts = TEXTS[:4]
    vectors = await emb.aembed_documents(texts) if run_async else emb.embed_documents(texts)
    assert vectors == [pytest.approx(list(embedding_vector(t, 8))) for t in texts]
    stats = emb.get_stats()
    assert stats["short"]["error_count"] >= 1
    assert stats["good"]["error_count"] == 0
    assert sent_by(short_srv, bad["api_key"])  # it was tried, and failed over


def test_vectors_of_another_size_than_asked_fail_over(
    servers: dict[str, FakeVendorServer], wide_srv: FakeOpenAIServer
) -> None:
    # `dimensions` fixes the size; a key answering 16 where 8 were asked is failing.
    wide = entry(servers, "openai", api_base=wide_srv.base_url, name="wide")
    good = entry(servers, "openai", name="good")
    emb = BalancedEmbeddings(providers=[wide, good], clock=ManualClock(), dimensions=8)
    wide_srv.set_responder(None)
    assert all(len(v) == 8 for v in emb.embed_documents(TEXTS))
    assert emb.get_stats()["good"]["error_count"] == 0


def test_wrong_sizes_open_the_breaker_after_the_threshold(
    servers: dict[str, FakeVendorServer], short_srv: FakeOpenAIServer
) -> None:
    bad = entry(servers, "openai", api_base=short_srv.base_url, name="short")
    good = entry(servers, "openai", name="good")
    emb = BalancedEmbeddings(
        providers=[bad, good], clock=ManualClock(), balancer={"breaker_threshold": 2}
    )
    for text in TEXTS[:6]:
        emb.embed_query(text)
    assert emb.get_stats()["short"]["state"] == "open"


def test_a_string_is_not_a_list_of_texts(servers: dict[str, FakeVendorServer]) -> None:
    e = entry(servers, "openai")
    emb = BalancedEmbeddings(providers=[e], clock=ManualClock())
    with pytest.raises(TypeError, match="single string"):
        emb.embed_documents("hello")  # type: ignore[arg-type]
    assert sent_by(servers["openai"], e["api_key"]) == []
