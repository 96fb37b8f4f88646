"""Stats people read and OpenTelemetry metrics, against the fake servers' own logs.

The OpenTelemetry SDK is in the test group only (the package records through the API): a
process-wide ``MeterProvider`` with an ``InMemoryMetricReader`` is installed once here, and each
test reads only the series of its own model name, so other tests' pools never mix in.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from langchain_pllm import BalancedChatModel, BalancedEmbeddings
from langchain_pllm.balancer.balancer import Balancer
from langchain_pllm.testing import FakeAnthropicServer, FakeOpenAIServer, Fault

# One transport: the counts below accumulate over module-scoped servers, one metric reader and
# the process-wide balancer, so a second run of a test would double them. The transport does
# not change what is counted; test_transport_faults covers both.
HTTP_BACKENDS = ("aiohttp",)

# The package needs no OpenTelemetry (the [otel] extra); the test group installs the SDK, so
# only a run outside scripts/setup.sh's venv skips these.
_NO_OTEL = "opentelemetry-sdk is not installed: pip install -e '.[otel]' opentelemetry-sdk"
sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics", reason=_NO_OTEL)
sdk_export = pytest.importorskip("opentelemetry.sdk.metrics.export", reason=_NO_OTEL)
otel_metrics = pytest.importorskip("opentelemetry.metrics", reason=_NO_OTEL)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reader() -> Any:
    reader = sdk_export.InMemoryMetricReader()
    otel_metrics.set_meter_provider(sdk_metrics.MeterProvider(metric_readers=[reader]))
    return reader


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[FakeOpenAIServer, FakeAnthropicServer]]:
    with FakeOpenAIServer() as openai_srv, FakeAnthropicServer() as anthropic_srv:
        yield openai_srv, anthropic_srv


def points(reader: Any, name: str, model: str) -> list[tuple[dict[str, Any], Any]]:
    """Every data point of metric ``name`` whose series is of ``model`` (attributes, point)."""
    out = []
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    attrs = dict(point.attributes)
                    if attrs.get("gen_ai.request.model") == model:
                        out.append((attrs, point))
    return out


def summed(reader: Any, name: str, model: str, *by: str) -> Counter[tuple[Any, ...]]:
    """Sums (histograms) or values (counters, gauges) of ``name`` grouped by attributes ``by``."""
    out: Counter[tuple[Any, ...]] = Counter()
    for attrs, point in points(reader, name, model):
        value = point.sum if hasattr(point, "bucket_counts") else point.value
        out[tuple(attrs.get(b) for b in by)] += value
    return out


def pool(
    servers: tuple[FakeOpenAIServer, FakeAnthropicServer], model: str, **kwargs: Any
) -> BalancedChatModel:
    openai_srv, anthropic_srv = servers
    return BalancedChatModel(
        providers=[
            {
                "vendor": "openai",
                "api_key": "sk-m-1",
                "model": model,
                "api_base": openai_srv.base_url,
            },
            {
                "vendor": "openai",
                "api_key": "sk-m-2",
                "model": model,
                "api_base": openai_srv.base_url,
            },
            {
                "vendor": "anthropic",
                "api_key": "sk-m-3",
                "model": model,
                "api_base": anthropic_srv.base_url,
            },
        ],
        **kwargs,
    )


def served(servers: tuple[FakeOpenAIServer, FakeAnthropicServer], model: str) -> list[Any]:
    return [r for srv in servers for r in srv.requests if r.model == model and r.status == 200]


async def test_token_usage_equals_the_servers_usage_over_invoke_stream_and_batch(
    reader: Any, servers: tuple[FakeOpenAIServer, FakeAnthropicServer]
) -> None:
    built = time.monotonic()  # the pool is younger than this
    model = pool(servers, "otel-chat")
    for i in range(6):
        model.invoke(f"question {i} " + "word " * i)
    for _ in model.stream("stream me a reply"):
        pass
    async for _ in model.astream("and an async one"):
        pass
    await model.abatch([f"batch item {i}" for i in range(12)])

    log = served(servers, "otel-chat")
    assert len(log) == 20
    expected_in = sum(r.prompt_tokens for r in log)
    expected_out = sum(r.completion_tokens for r in log)
    assert expected_in > 0
    assert expected_out > 0

    usage = summed(reader, "gen_ai.client.token.usage", "otel-chat", "gen_ai.token.type")
    assert usage == {("input",): expected_in, ("output",): expected_out}
    # Per provider too, under the GenAI names of the vendors.
    by_provider = summed(
        reader, "gen_ai.client.token.usage", "otel-chat", "pllm.provider.id", "gen_ai.provider.name"
    )
    for pid, vendor, keys in (("openai-0", "openai", 0), ("anthropic-0", "anthropic", None)):
        mine = [
            r
            for r in log
            if (vendor == "anthropic") == (r.path.endswith("/messages"))
            and (keys is None or r.key_index == keys)
        ]
        assert by_provider[(pid, vendor)] == sum(
            r.prompt_tokens + r.completion_tokens for r in mine
        )

    ops = summed(reader, "gen_ai.client.operation.duration", "otel-chat", "gen_ai.operation.name")
    assert set(ops) == {("chat",)}
    durations = points(reader, "gen_ai.client.operation.duration", "otel-chat")
    assert sum(p.count for _, p in durations) == 20
    attempts = summed(reader, "pllm.attempts", "otel-chat", "pllm.outcome")
    assert attempts == {("success",): 20}

    # The same numbers in get_stats, and the stats people read beside them.
    stats = model.get_stats()
    age = max(1.0, min(60.0, time.monotonic() - built))  # a young pool's rate: over its age
    assert sum(s["input_tokens"] for s in stats.values()) == expected_in
    assert sum(s["output_tokens"] for s in stats.values()) == expected_out
    assert sum(s["total_requests"] for s in stats.values()) == 20
    for row in stats.values():
        assert row["input_tokens"] + row["output_tokens"] == row["total_tokens"]
        assert 0 < row["latency_p50"] <= row["latency_p95"]
        assert row["total_requests"] / age <= row["requests_per_second"] <= row["total_requests"]
    text = str(model.stats_table())
    assert "req/s" in text
    assert "latency p50/p95" in text
    assert "ms" in text


def test_retries_outcomes_and_gauges_read_the_pool(
    reader: Any, servers: tuple[FakeOpenAIServer, FakeAnthropicServer]
) -> None:
    openai_srv, _ = servers
    model = pool(servers, "otel-faults")
    openai_srv.enqueue(Fault(status=401))  # a bad key: its breaker opens at once
    msg = model.invoke("hello")
    assert msg.response_metadata["attempts"] == 2

    attempts = summed(reader, "pllm.attempts", "otel-faults", "pllm.outcome")
    assert attempts == {("trip",): 1, ("success",): 1}
    retries = summed(reader, "pllm.retries", "otel-faults", "pllm.provider.id")
    assert sum(retries.values()) == 1
    failed = summed(reader, "gen_ai.client.operation.duration", "otel-faults", "error.type")
    assert set(failed) == {(None,), ("trip",)}

    # The failed key's breaker opened: one series per state, 1 for the current.
    failed_id = next(pid for pid, row in model.get_stats().items() if row["state"] == "open")
    states = summed(reader, "pllm.provider.state", "otel-faults", "pllm.provider.id", "pllm.state")
    assert states[(failed_id, "open")] == 1
    assert states[(failed_id, "closed")] == 0
    assert sum(v for (pid, st), v in states.items() if st == "closed") == 2
    in_flight = summed(reader, "pllm.provider.active_requests", "otel-faults", "pllm.provider.id")
    assert set(in_flight.values()) == {0}
    assert len(in_flight) == 3


def test_window_gauges_show_use_of_each_limit(
    reader: Any, servers: tuple[FakeOpenAIServer, FakeAnthropicServer]
) -> None:
    openai_srv, _ = servers
    model = BalancedChatModel(
        providers=[
            {
                "vendor": "openai",
                "api_key": "sk-w-1",
                "model": "otel-window",
                "api_base": openai_srv.base_url,
                "rate_limit": 10,
                "tpm": 10_000,
            }
        ]
    )
    for _ in range(3):
        model.invoke("hi")
    used = summed(reader, "pllm.provider.window.usage", "otel-window", "pllm.window")
    limit = summed(reader, "pllm.provider.window.limit", "otel-window", "pllm.window")
    assert used[("requests",)] == 3
    assert limit == {("requests",): 10, ("tokens",): 10_000}
    tokens = sum(r.prompt_tokens + r.completion_tokens for r in served(servers, "otel-window"))
    assert used[("tokens",)] == tokens


GAUGES = (
    "pllm.provider.active_requests",
    "pllm.provider.window.usage",
    "pllm.provider.window.limit",
    "pllm.provider.state",
    "pllm.provider.resting",
)


def test_the_gauges_share_one_read_of_the_stats_per_collection(
    reader: Any, servers: tuple[FakeOpenAIServer, FakeAnthropicServer], monkeypatch: Any
) -> None:
    # Count the reads of this pool's stats (each a state read per key: Redis round trips with
    # a shared state); the pool's observer takes the counting method when it is built.
    reads: Counter[int] = Counter()
    get_stats = Balancer.get_stats

    def counted(self: Balancer) -> dict[str, dict[str, Any]]:
        reads[id(self)] += 1
        return get_stats(self)

    monkeypatch.setattr(Balancer, "get_stats", counted)
    openai_srv, _ = servers
    model = BalancedChatModel(
        providers=[
            {
                "vendor": "openai",
                "api_key": f"sk-once-{i}",
                "model": "otel-once",
                "api_base": openai_srv.base_url,
                "rate_limit": 50,
            }
            for i in range(3)
        ]
    )
    model.invoke("hi")
    mine = id(model.balancer_instance)
    for collection in range(1, 4):
        before = reads[mine]
        data = reader.get_metrics_data()
        assert reads[mine] - before == 1, f"collection {collection}"
    # And every gauge still carries every provider of the pool, from that one read.
    seen = {
        (metric.name, point.attributes["pllm.provider.id"])
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
        if point.attributes.get("gen_ai.request.model") == "otel-once"
    }
    ids = set(model.get_stats())
    assert {(name, pid) for name in GAUGES for pid in ids} - seen == set()
    assert len(ids) == 3


def test_no_series_carries_anything_of_a_key(
    reader: Any, servers: tuple[FakeOpenAIServer, FakeAnthropicServer]
) -> None:
    # Named and unnamed providers, a failing key: every attribute of every series, gauges too.
    openai_srv, _ = servers
    openai_srv.fault_for_key("sk-leak-failing", Fault(status=500))
    model = BalancedChatModel(
        providers=[
            {
                "vendor": "openai",
                "api_key": k,
                "model": "otel-keys",
                "api_base": openai_srv.base_url,
            }
            for k in ("sk-leak-unnamed", "sk-leak-failing")
        ]
        + [
            {
                "name": "named",
                "vendor": "openai",
                "api_key": "sk-leak-named",
                "model": "otel-keys",
                "api_base": openai_srv.base_url,
            }
        ]
    )
    for i in range(6):
        model.invoke(f"hi {i}")
    data = reader.get_metrics_data()
    seen = set()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attrs = dict(point.attributes)
                    if attrs.get("gen_ai.request.model") != "otel-keys":
                        continue
                    seen.add(metric.name)
                    for name, value in attrs.items():
                        assert "sk-leak" not in f"{name}={value}", metric.name
    assert {"gen_ai.client.token.usage", "pllm.attempts", "pllm.provider.state"} <= seen
    ids = {pid for (pid,) in summed(reader, "pllm.attempts", "otel-keys", "pllm.provider.id")}
    assert ids == {"openai-0", "openai-1", "named"}


def test_embeddings_record_input_tokens_as_the_embeddings_operation(
    reader: Any, servers: tuple[FakeOpenAIServer, FakeAnthropicServer]
) -> None:
    openai_srv, _ = servers
    emb = BalancedEmbeddings(
        providers=[
            {"vendor": "openai", "api_key": k, "model": "otel-emb", "api_base": openai_srv.base_url}
            for k in ("sk-e-1", "sk-e-2")
        ]
    )
    emb.embed_documents([f"text number {i}" for i in range(40)])
    log = served(servers, "otel-emb")
    usage = summed(
        reader,
        "gen_ai.client.token.usage",
        "otel-emb",
        "gen_ai.token.type",
        "gen_ai.operation.name",
    )
    assert usage == {("input", "embeddings"): sum(r.prompt_tokens for r in log)}
    stats = emb.get_stats()
    assert sum(s["input_tokens"] for s in stats.values()) == sum(r.prompt_tokens for r in log)
    assert all(s["output_tokens"] == 0 for s in stats.values())


_NO_OTEL = r"""
import importlib.abc, sys

class NoOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoOpenTelemetry())
from langchain_pllm import BalancedChatModel
from langchain_pllm.balancer import metrics
from langchain_pllm.testing import FakeOpenAIServer

assert not metrics.OTEL_AVAILABLE
with FakeOpenAIServer() as srv:
    model = BalancedChatModel(
        providers=[{"vendor": "openai", "api_key": "sk-x", "model": "m", "api_base": srv.base_url}]
    )
    model.invoke("hi")
    row = model.get_stats()["openai-0"]
    assert model.balancer_instance.observer._otel is None
    assert "opentelemetry" not in sys.modules
    print(row["total_requests"], row["input_tokens"] > 0, row["latency_p50"] is not None)
"""


def test_without_the_extra_nothing_is_recorded_and_stats_still_read() -> None:
    child = subprocess.run(
        [sys.executable, "-c", _NO_OTEL],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["1", "True", "True"]
