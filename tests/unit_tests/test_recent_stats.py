"""A key's recent attempts: latency percentiles over a ring, requests/s, token kinds."""

from __future__ import annotations

import copy
import pickle

import pytest

from langchain_pllm.balancer.recent import LATENCY_SAMPLES, RATE_SPAN, RecentAttempts, TokenUsage


def test_token_usage_is_an_int_whose_sum_keeps_its_kinds() -> None:
    a, b = TokenUsage(3, 4), TokenUsage(10, 0, total=12)
    assert a == 7
    assert b == 12
    used = 0
    for chunk in (a, None, b):
        used += chunk or 0  # the balancer's stream rule
    assert isinstance(used, TokenUsage)
    assert (int(used), used.input_tokens, used.output_tokens) == (19, 13, 4)
    assert a + 1 == 8
    assert type(a + 1) is int
    assert not TokenUsage(0, 0)


def test_percentiles_read_the_last_samples_only() -> None:
    recent = RecentAttempts()
    for i in range(100):
        recent.add(1000.0, (i + 1) / 1000, None)  # 1ms .. 100ms
    stats = recent.stats(1000.0)
    assert stats["latency_p50"] == pytest.approx(0.050)
    assert stats["latency_p95"] == pytest.approx(0.095)
    # A full ring of slow attempts pushes every fast one out.
    for _ in range(LATENCY_SAMPLES):
        recent.add(1000.0, 2.0, None)
    stats = recent.stats(1000.0)
    assert stats["latency_p50"] == stats["latency_p95"] == 2.0


def test_failures_count_for_the_rate_but_not_the_latency() -> None:
    recent = RecentAttempts()
    recent.add(5.0, None, None)
    stats = recent.stats(5.0)
    assert stats["latency_p50"] is None
    assert stats["requests_per_second"] == pytest.approx(1 / RATE_SPAN)


def test_requests_per_second_covers_the_last_minute() -> None:
    recent = RecentAttempts()
    for second in range(120):  # 2 a second for two minutes
        recent.add(second + 0.25, 0.1, TokenUsage(1, 2))
        recent.add(second + 0.75, 0.1, None)
    assert recent.stats(119.9)["requests_per_second"] == pytest.approx(2.0)
    # Thirty quiet seconds later half the minute is empty; after a minute all of it.
    assert recent.stats(149.9)["requests_per_second"] == pytest.approx(1.0)
    assert recent.stats(180.0)["requests_per_second"] == 0.0
    stats = recent.stats(180.0)
    assert (stats["input_tokens"], stats["output_tokens"]) == (120, 240)


def test_a_young_key_divides_by_its_age_not_the_minute() -> None:
    recent = RecentAttempts(born=100.0)
    for second in range(5):  # 3 a second for the first five seconds
        for quarter in (0.25, 0.5, 0.75):
            recent.add(100 + second + quarter, 0.1, None)
    assert recent.stats(105.0)["requests_per_second"] == pytest.approx(15 / 5)
    # Quiet since: the age keeps growing, then the window is the minute again.
    assert recent.stats(130.0)["requests_per_second"] == pytest.approx(15 / 30)
    # A minute old: the minute (second 100 has just left it).
    assert recent.stats(160.0)["requests_per_second"] == pytest.approx(12 / RATE_SPAN)
    # Less than a second old: over one second, not a spike over milliseconds.
    assert RecentAttempts(born=100.0).span(100.01) == 1.0


def test_token_usage_survives_copy_and_pickle() -> None:
    # A memory state's running total starts as 0 + usage, so get_stats() hands one out.
    usage = TokenUsage(3, 4, 9)
    for clone in (
        copy.copy(usage),
        copy.deepcopy({"total_tokens": usage})["total_tokens"],
        pickle.loads(pickle.dumps(usage)),
    ):
        assert clone == 9
        assert isinstance(clone, TokenUsage)
        assert (clone.input_tokens, clone.output_tokens) == (3, 4)


def test_stats_of_a_memory_pool_can_be_copied_and_pickled() -> None:
    from langchain_pllm import BalancedChatModel
    from langchain_pllm.testing import FakeOpenAIServer

    with FakeOpenAIServer() as srv:
        model = BalancedChatModel(
            providers=[
                {"vendor": "openai", "api_key": "sk-c", "model": "m", "api_base": srv.base_url}
            ]
        )
        model.invoke("hi")
        model.invoke("hi again")
        stats = model.get_stats()
    assert stats["openai-0"]["total_tokens"] > 0
    assert copy.deepcopy(stats) == stats
    assert pickle.loads(pickle.dumps(stats)) == stats
