"""The balanced embeddings over real HTTP: large inputs spread over every key at once, order kept.

1,000 texts over two keys must leave as at least two requests, one per key, in flight at the
same time, and come back in input order, each vector equal to the text embedded alone. A pool
whose providers answer with different vector sizes is an error, never a silent mix.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.exceptions import ModelInvalidRequestError

from langchain_pllm import BalancedEmbeddings
from langchain_pllm.balancer import ManualClock
from langchain_pllm.testing import FakeOpenAIServer, Fault
from langchain_pllm.testing.replies import embedding_vector

# One transport (tests/integration_tests/conftest.py): batching and failover over intact replies;
# many requests in flight at once and cancelled batches run on both.
pytestmark = pytest.mark.one_transport

MODEL = "text-embedding-3-small"
DIMS = 8
TEXTS = [f"text number {i} about {i % 7} things" for i in range(1000)]


@pytest.fixture
def srv() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(dimensions=DIMS) as server:
        yield server


def new_key() -> str:
    return f"sk-test-{uuid.uuid4().hex[:16]}"


def entry(srv: FakeOpenAIServer, key: str, **extra: Any) -> dict[str, Any]:
    return {"vendor": "openai", "api_key": key, "model": MODEL, "api_base": srv.base_url, **extra}


def make(
    srv: FakeOpenAIServer, n: int = 2, *, extra: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[BalancedEmbeddings, list[str]]:
    keys = [new_key() for _ in range(n)]
    emb = BalancedEmbeddings(
        providers=[entry(srv, k, **(extra or {})) for k in keys], clock=ManualClock(), **kwargs
    )
    return emb, keys


def inputs_of(srv: FakeOpenAIServer, status: int = 200) -> list[list[str]]:
    out = []
    for r in srv.requests:
        if r.status == status:
            raw = r.body["input"]
            out.append([raw] if isinstance(raw, str) else list(raw))
    return out


def assert_vectors_match(texts: list[str], vectors: list[list[float]]) -> None:
    assert len(vectors) == len(texts)
    for text, vector in zip(texts, vectors, strict=True):
        assert vector == pytest.approx(list(embedding_vector(text, DIMS)), abs=1e-6)


def assert_idle(emb: BalancedEmbeddings) -> None:
    stats = emb.get_stats()
    assert all(s["active_requests"] == 0 for s in stats.values()), stats


# Spreading a large input -----------------------------------------------------------------------


def test_1000_texts_over_two_keys_go_out_at_once_in_order(srv: FakeOpenAIServer) -> None:
    emb, keys = make(srv)
    srv.latency = 0.3
    vectors = emb.embed_documents(TEXTS)
    srv.latency = 0.0
    assert len(srv.requests) >= 2
    assert set(Counter(r.api_key for r in srv.requests)) == set(keys)
    # In flight together: every request arrived before the first could have been answered.
    arrivals = [r.time for r in srv.requests]
    assert max(arrivals) - min(arrivals) < 0.25
    # Every text sent exactly once, and the answers put back in input order.
    sent = [t for batch in inputs_of(srv) for t in batch]
    assert Counter(sent) == Counter(TEXTS)
    assert_vectors_match(TEXTS, vectors)
    sample = [0, 1, 499, 500, 501, 998, 999]
    assert [vectors[i] for i in sample] == [emb.embed_query(TEXTS[i]) for i in sample]
    assert_idle(emb)


@pytest.mark.both_transports
async def test_async_1000_texts_over_two_keys_go_out_at_once_in_order(
    srv: FakeOpenAIServer,
) -> None:
    emb, keys = make(srv)
    srv.latency = 0.3
    vectors = await emb.aembed_documents(TEXTS)
    srv.latency = 0.0
    assert len(srv.requests) >= 2
    assert {r.api_key for r in srv.requests} == set(keys)
    arrivals = [r.time for r in srv.requests]
    assert max(arrivals) - min(arrivals) < 0.25
    assert_vectors_match(TEXTS, vectors)
    sample = [0, 499, 500, 999]
    assert [vectors[i] for i in sample] == [await emb.aembed_query(TEXTS[i]) for i in sample]
    assert_idle(emb)


@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_batches_respect_the_providers_batch_size(
    srv: FakeOpenAIServer, run_async: bool
) -> None:
    emb, keys = make(srv, extra={"batch_size": 100})
    srv.latency = 0.1  # all ten batches in flight together, so picks follow the load
    vectors = await emb.aembed_documents(TEXTS) if run_async else emb.embed_documents(TEXTS)
    batches = inputs_of(srv)
    assert len(batches) == 10
    assert all(len(b) <= 100 for b in batches)
    served = Counter(r.api_key for r in srv.requests)
    if run_async:
        # Every pick happens before any answer: the least-loaded rule splits them evenly.
        assert served == dict.fromkeys(keys, 5)
    else:
        # Threads start one by one, so a fast key may take one more; both share the work.
        assert set(served) == set(keys)
        assert min(served.values()) >= 3
    assert_vectors_match(TEXTS, vectors)


def test_uneven_split_over_three_keys_keeps_order(srv: FakeOpenAIServer) -> None:
    emb, keys = make(srv, 3)
    texts = TEXTS[:101]
    vectors = emb.embed_documents(texts)
    assert {r.api_key for r in srv.requests} == set(keys)
    assert_vectors_match(texts, vectors)


def test_small_input_and_empty_input(srv: FakeOpenAIServer) -> None:
    emb, _ = make(srv)
    assert emb.embed_documents([]) == []
    assert srv.requests == []
    vector = emb.embed_query("hello")
    assert len(vector) == DIMS
    assert_vectors_match(["hello"], [vector])
    assert len(srv.requests) == 1


# Failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_a_failing_batch_fails_over_and_order_is_kept(
    srv: FakeOpenAIServer, run_async: bool
) -> None:
    emb, (a, b) = make(srv)
    srv.fault_for_key(a, Fault(status=500), times=1)
    texts = TEXTS[:200]
    vectors = await emb.aembed_documents(texts) if run_async else emb.embed_documents(texts)
    assert_vectors_match(texts, vectors)
    failed = [r for r in srv.requests if r.status != 200]
    assert len(failed) == 1
    assert failed[0].api_key == a
    sent = [t for batch in inputs_of(srv) for t in batch]
    assert Counter(sent) == Counter(texts)  # the failed share was resent once, elsewhere
    assert emb.get_stats()["openai-0"]["error_count"] == 1
    assert_idle(emb)


def test_429_rests_the_key_and_the_batch_is_served(srv: FakeOpenAIServer) -> None:
    emb, (a, _) = make(srv)
    srv.fault_for_key(a, Fault(status=429, retry_after=12), times=1)
    vectors = emb.embed_documents(TEXTS[:50])
    assert_vectors_match(TEXTS[:50], vectors)
    assert emb.get_stats()["openai-0"]["resting_for"] == pytest.approx(12.0)


def test_400_is_raised_without_retries(srv: FakeOpenAIServer) -> None:
    emb, _ = make(srv, max_retries=5)
    srv.set_fault_rate(1.0, [Fault(status=400)])
    with pytest.raises(ModelInvalidRequestError):
        emb.embed_query("x")
    assert len(srv.requests) == 1


def test_token_counts_equal_the_servers_usage(srv: FakeOpenAIServer) -> None:
    emb, _ = make(srv)
    emb.embed_documents(TEXTS[:300])
    emb.embed_query("one more text")
    served = sum(r.usage["total_tokens"] for r in srv.requests if r.usage)
    stats = emb.get_stats()
    assert sum(s["total_tokens"] for s in stats.values()) == served > 0
    assert sum(s["total_requests"] for s in stats.values()) == len(srv.requests)


# Dimensions ------------------------------------------------------------------------------------


@pytest.fixture
def wide_srv() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(dimensions=DIMS * 2) as server:
        yield server


def mixed_pool(srv: FakeOpenAIServer, wide_srv: FakeOpenAIServer) -> BalancedEmbeddings:
    return BalancedEmbeddings(
        providers=[entry(srv, new_key()), entry(wide_srv, new_key())], clock=ManualClock()
    )


def test_a_key_answering_another_size_fails_over_in_one_call(
    srv: FakeOpenAIServer, wide_srv: FakeOpenAIServer
) -> None:
    # Same model on both keys, but one answers vectors of another size: that key is failing
    # (breaker count), its batch goes to the other key, and no size is ever mixed in.
    emb = mixed_pool(srv, wide_srv)
    vectors = emb.embed_documents(TEXTS[:100])
    assert len({len(v) for v in vectors}) == 1
    stats = emb.get_stats()
    errors = sorted(s["error_count"] for s in stats.values())
    assert errors[0] == 0
    assert errors[1] >= 1
    assert srv.requests  # both answered; the sizes disagreed
    assert wide_srv.requests


async def test_a_key_answering_another_size_across_calls_fails_over(
    srv: FakeOpenAIServer, wide_srv: FakeOpenAIServer
) -> None:
    emb = mixed_pool(srv, wide_srv)
    first = await emb.aembed_query("first")  # openai-0: 8 dimensions, the pool's size now
    assert len(first) == DIMS
    second = await emb.aembed_query("second")  # openai-1: 16 dimensions: failed over
    assert second == pytest.approx(list(embedding_vector("second", DIMS)))
    stats = emb.get_stats()
    assert (stats["openai-0"]["error_count"], stats["openai-1"]["error_count"]) == (0, 1)


def test_from_config_builds_the_embedding_pool(srv: FakeOpenAIServer) -> None:
    key = new_key()
    emb = BalancedEmbeddings.from_config(
        {
            "embedding": {
                "use": "openai",
                "openai": [{"api_key": key, "model": MODEL, "api_base": srv.base_url}],
            }
        }
    )
    assert_vectors_match(["configured"], [emb.embed_query("configured")])
    assert srv.requests[0].api_key == key


def _one_bad_batch(srv: FakeOpenAIServer) -> tuple[BalancedEmbeddings, list[str]]:
    keys = [new_key() for _ in range(4)]
    emb = BalancedEmbeddings(providers=[entry(srv, k, batch_size=10) for k in keys])
    srv.fault_for_key(keys[0], Fault(status=400, message="bad input"), times=1)
    for k in keys[1:]:
        srv.fault_for_key(k, Fault(latency=0.6), times=1)
    return emb, [f"text {i}" for i in range(40)]


def test_a_failed_batch_fails_the_call_fast(srv: FakeOpenAIServer) -> None:
    import time

    emb, texts = _one_bad_batch(srv)
    started = time.monotonic()
    with pytest.raises(ModelInvalidRequestError):
        emb.embed_documents(texts)
    # Raised when the 400 came back, not after the slow batches (0.6 s) finished.
    assert time.monotonic() - started < 0.5


@pytest.mark.both_transports
async def test_async_a_failed_batch_cancels_the_others(srv: FakeOpenAIServer) -> None:
    import asyncio

    emb, texts = _one_bad_batch(srv)
    with pytest.raises(ModelInvalidRequestError):
        await emb.aembed_documents(texts)
    # The other batches were cancelled, and their keys released, before the error came out.
    assert len(asyncio.all_tasks()) == 1
    assert_idle(emb)
