"""Quotas over real HTTP: many windows per key, calendar days, spent keys of every vendor.

The official SDKs talk to the fake vendor servers; time is a ``ManualClock`` (its wall time for
calendar days), so minutes and days pass in microseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from langchain_pllm import BalancedChatModel
from langchain_pllm.clock import ManualClock
from langchain_pllm.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeVendorServer,
    FakeZhipuServer,
    Fault,
    RateBudget,
)

# One transport (tests/integration_tests/conftest.py): what the balancer decides from status codes
# and bodies; the rate-limit headers the transport hands over run on both.
pytestmark = pytest.mark.one_transport

LA = ZoneInfo("America/Los_Angeles")


def _served_by(model: BalancedChatModel) -> str:
    return str(model.invoke("hi").response_metadata["provider"])


def test_a_key_with_two_request_windows_never_exceeds_either(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    srv = fake_openai_server
    clock = ManualClock()
    base = {"vendor": "openai", "model": "gpt-4o-mini", "api_base": srv.base_url}
    model = BalancedChatModel(
        providers=[
            {**base, "api_key": "sk-small", "name": "small",
             "limits": {"requests": ["3/second", "10/minute"]}},
            {**base, "api_key": "sk-big", "name": "big"},
        ],
        clock=clock,
    )  # fmt: skip
    served: list[tuple[float, str]] = []
    for _ in range(40):
        served.append((clock.now(), _served_by(model)))
        clock.advance(0.25)
    keys = [r.api_key for r in srv.requests]
    assert keys == ["sk-small" if p == "small" else "sk-big" for _, p in served]
    small = [t for t, p in served if p == "small"]
    assert len(small) == 10  # all of the minute, and no more
    assert len(served) - len(small) == 30  # the other key takes the rest
    for t in small:  # never more than 3 in any second
        assert sum(1 for u in small if t <= u < t + 1.0) <= 3
    windows = model.get_stats()["small"]["windows"]
    assert [(w["limit"], w["period"], w["used"]) for w in windows] == [(3, 1, 0), (10, 60, 10)]


def test_a_key_at_its_day_quota_waits_for_midnight_in_los_angeles(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    srv = fake_openai_server
    clock = ManualClock(wall=datetime(2026, 11, 1, 22, 0, tzinfo=LA))  # DST ends at 02:00
    base = {"vendor": "openai", "model": "gpt-4o-mini", "api_base": srv.base_url}
    model = BalancedChatModel(
        providers=[
            {**base, "api_key": "sk-day", "name": "day", "limits": {"requests": "2/day"},
             "quota_reset": "00:00 America/Los_Angeles"},
            {**base, "api_key": "sk-other", "name": "other"},
        ],
        clock=clock,
    )  # fmt: skip
    assert [_served_by(model) for _ in range(4)] == ["day", "other", "day", "other"]
    assert [_served_by(model) for _ in range(2)] == ["other", "other"]
    stats = model.get_stats()["day"]["windows"][0]
    assert stats["calendar"]
    assert stats["used"] == 2
    assert stats["resets_in"] == pytest.approx(2 * 3600)
    clock.advance(2 * 3600 - 1)
    assert [_served_by(model) for _ in range(2)] == ["other", "other"]
    clock.advance(1)  # midnight, 2026-11-02 in Los Angeles
    assert _served_by(model) == "day"
    assert model.get_stats()["day"]["windows"][0]["used"] == 1


@pytest.fixture
def caplog_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="langchain_pllm"):
        yield caplog


def test_a_spent_key_gets_one_request_per_rest_and_never_opens_its_breaker(
    fake_openai_server: FakeOpenAIServer, caplog_warnings: pytest.LogCaptureFixture
) -> None:
    srv = fake_openai_server
    srv.spend_key("sk-spent")  # 429 insufficient_quota, no Retry-After
    clock = ManualClock()
    base = {"vendor": "openai", "model": "gpt-4o-mini", "api_base": srv.base_url}
    model = BalancedChatModel(
        providers=[
            {**base, "api_key": "sk-spent", "name": "spent"},
            {**base, "api_key": "sk-ok", "name": "ok"},
        ],
        clock=clock,
    )
    rest = 3600.0  # balancer.exhausted_rest's default
    for _hour in range(5):  # five rests: more than the breaker threshold of 3
        for _ in range(10):
            reply = model.invoke("hi")
            assert reply.response_metadata["provider"] == "ok"
            clock.advance(1.0)
        stats = model.get_stats()["spent"]
        assert stats["state"] == "exhausted"
        assert stats["resting_for"] == pytest.approx(rest - 10.0)
        clock.advance(rest - 10.0)
    spent_calls = [r for r in srv.requests if r.api_key == "sk-spent"]
    assert len(spent_calls) == 5  # exactly one probe per rest
    logged = [r for r in caplog_warnings.records if "key spent" in r.getMessage()]
    assert len(logged) == 1  # once, not once per probe
    srv.refill_key("sk-spent")
    assert _served_by(model) == "spent"  # the probe after the rest finds money again
    assert model.get_stats()["spent"]["state"] == "closed"


def _pool(srv: FakeVendorServer, vendor: str, model: str) -> list[dict[str, Any]]:
    base = {"vendor": vendor, "model": model, "api_base": srv.base_url}
    return [
        {**base, "api_key": "key-spent", "name": "spent"},
        {**base, "api_key": "key-ok", "name": "ok"},
    ]


SPENT_CASES = [
    ("deepseek", lambda: FakeOpenAIServer(flavor="deepseek"), None),  # 402
    ("siliconflow", lambda: FakeOpenAIServer(flavor="siliconflow"), None),  # 403 balance
    ("anthropic", FakeAnthropicServer, None),  # 400 credit balance too low
    ("anthropic", FakeAnthropicServer, Fault(status=402, error_type="billing_error")),
    ("google", FakeGeminiServer, None),  # 429 QuotaFailure PerDay
    ("zhipu", FakeZhipuServer, None),  # 1113 arrears
    ("zhipu", FakeZhipuServer, "1304"),  # the day's calls used up
]


@pytest.mark.parametrize(("vendor", "make", "variant"), SPENT_CASES)
def test_every_vendors_spent_key_error_makes_the_key_exhausted(
    vendor: str, make: Any, variant: Any
) -> None:
    clock = ManualClock()
    with make() as srv:
        fault = variant
        if isinstance(variant, str):
            fault = srv.spent_fault(code=variant)
        srv.spend_key("key-spent", fault)
        model = BalancedChatModel(providers=_pool(srv, vendor, "m-1"), clock=clock)
        for _ in range(3):
            reply = model.invoke("hi")
            assert reply.response_metadata["provider"] == "ok"
            assert reply.response_metadata["attempts"] in (1, 2)
            clock.advance(1.0)
        assert sum(1 for r in srv.requests if r.api_key == "key-spent") == 1
        stats = model.get_stats()["spent"]
    assert stats["state"] == "exhausted"
    assert stats["resting_for"] == pytest.approx(3600.0 - 3.0)


def test_a_per_minute_gemini_quota_is_a_rate_limit_not_a_spent_key(
    fake_gemini_server: FakeGeminiServer,
) -> None:
    srv = fake_gemini_server
    srv.fault_for_key("key-spent", srv.quota_fault(per="minute"), times=1)
    model = BalancedChatModel(providers=_pool(srv, "google", "gemini-x"), clock=ManualClock())
    assert _served_by(model) == "ok"
    assert model.get_stats()["spent"]["state"] == "closed"


@pytest.mark.both_transports
@pytest.mark.parametrize("timeout", [None, 30.0])
@pytest.mark.parametrize("mode", ["invoke", "stream", "ainvoke", "astream"])
async def test_remaining_requests_0_rests_the_key_until_the_header_reset(
    fake_openai_server: FakeOpenAIServer, mode: str, timeout: float | None
) -> None:
    # With a request_timeout an async stream's reads are bounded by the deadline: the headers
    # its first read reports must still reach the balancer (no task of its own on 3.11+).
    srv = fake_openai_server
    srv.set_budget(RateBudget().pin("requests", limit=60, remaining=0, reset=20), "sk-a")
    clock = ManualClock()
    model = BalancedChatModel(
        providers=_pool_of(srv, "openai", ["sk-a", "sk-b"]), clock=clock, request_timeout=timeout
    )

    async def call() -> str:
        if mode == "invoke":
            return str(model.invoke("hi").response_metadata["provider"])
        if mode == "ainvoke":
            return str((await model.ainvoke("hi")).response_metadata["provider"])
        chunks = (
            list(model.stream("hi")) if mode == "stream" else [c async for c in model.astream("hi")]
        )
        return str(chunks[-1].response_metadata["provider"])

    assert await call() == "sk-a"  # the reply says: no requests left for 20 s
    assert model.get_stats()["sk-a"]["resting_for"] == pytest.approx(20.0, abs=0.01)
    for _ in range(3):
        assert await call() == "sk-b"
        clock.advance(6.0)  # 18 s
    clock.advance(1.9)
    assert await call() == "sk-b"
    clock.advance(0.2)
    srv.set_budget(None, "sk-a")
    assert {await call(), await call()} == {"sk-a", "sk-b"}


@pytest.mark.parametrize("resource", ["input_tokens", "output_tokens"])
def test_anthropic_token_headers_rest_the_key(
    fake_anthropic_server: FakeAnthropicServer, resource: str
) -> None:
    srv = fake_anthropic_server
    srv.set_budget(RateBudget().pin(resource, limit=8000, remaining=0, reset=30), "sk-a")
    clock = ManualClock()
    model = BalancedChatModel(
        providers=_pool_of(srv, "anthropic", ["sk-a", "sk-b"], "claude-x"), clock=clock
    )
    assert _served_by(model) == "sk-a"
    assert model.get_stats()["sk-a"]["resting_for"] == pytest.approx(30.0, abs=1.5)
    assert [_served_by(model) for _ in range(3)] == ["sk-b"] * 3
    clock.advance(31.5)
    srv.set_budget(None, "sk-a")
    assert {_served_by(model), _served_by(model)} == {"sk-a", "sk-b"}


def test_headers_with_room_left_change_nothing(fake_openai_server: FakeOpenAIServer) -> None:
    srv = fake_openai_server
    srv.set_budget(RateBudget(requests=100, tokens=100_000))
    model = BalancedChatModel(
        providers=_pool_of(srv, "openai", ["sk-a", "sk-b"]), clock=ManualClock()
    )
    assert [_served_by(model) for _ in range(4)] == ["sk-a", "sk-b", "sk-a", "sk-b"]
    assert model.get_stats()["sk-a"]["resting_for"] == 0.0


def _pool_of(
    srv: FakeVendorServer, vendor: str, keys: list[str], model: str = "gpt-4o-mini"
) -> list[dict[str, Any]]:
    return [
        {"vendor": vendor, "model": model, "api_base": srv.base_url, "api_key": k, "name": k}
        for k in keys
    ]


@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_input_and_output_windows_settle_to_the_replys_usage(
    fake_anthropic_server: FakeAnthropicServer, mode: str
) -> None:
    [entry] = _pool_of(fake_anthropic_server, "anthropic", ["sk-a"], "claude-x")
    entry["limits"] = {"input_tokens": "40000/minute", "output_tokens": "8000/minute"}
    model = BalancedChatModel(providers=[entry], clock=ManualClock())
    if mode == "invoke":
        usage = model.invoke("hello there world").usage_metadata
    else:
        chunks = list(model.stream("hello there world"))
        usage = [c for c in chunks if c.usage_metadata][-1].usage_metadata
    assert usage is not None
    windows = model.get_stats()["sk-a"]["windows"]
    assert [(w["resource"], w["used"]) for w in windows] == [
        ("input_tokens", usage["input_tokens"]),
        ("output_tokens", usage["output_tokens"]),
    ]


def test_a_key_learns_the_vendors_request_limit_from_its_headers(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    srv = fake_openai_server
    # The vendor says 5 a minute, 4 left after the first reply; it enforces nothing itself here.
    srv.set_budget(RateBudget().pin("requests", limit=5, remaining=4, reset=60), "sk-a")
    clock = ManualClock()
    model = BalancedChatModel(providers=_pool_of(srv, "openai", ["sk-a", "sk-b"]), clock=clock)
    served: list[tuple[float, str]] = []
    for _ in range(40):
        served.append((clock.now(), _served_by(model)))
        clock.advance(5.0)  # 200 s: more than three minutes
    starts = [t for t, p in served if p == "sk-a"]
    for t in starts:  # the first reply taught the limit, and it counts: never 6 in 60 s
        assert sum(1 for u in starts if t <= u < t + 60.0) <= 5
    assert len(starts) >= 15  # and the key still serves up to it, minute after minute
    [learned] = [w for w in model.get_stats()["sk-a"]["windows"] if w.get("learned")]
    assert (learned["resource"], learned["limit"], learned["period"]) == ("requests", 5, 60)
    assert "windows" not in model.get_stats()["sk-b"]  # sk-b's replies state no limits
    srv.set_budget(None, "sk-a")


def test_a_configured_limit_lower_than_the_vendors_wins(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    srv = fake_openai_server
    srv.set_budget(RateBudget().pin("requests", limit=50, remaining=49, reset=60), "sk-a")
    [entry] = _pool_of(srv, "openai", ["sk-a"])
    entry["limits"] = {"requests": "3/minute"}
    model = BalancedChatModel(providers=[entry], clock=ManualClock())
    for _ in range(3):
        _served_by(model)
    windows = model.get_stats()["sk-a"]["windows"]
    assert [(w["limit"], w.get("learned", False)) for w in windows] == [(3, False)]
    srv.set_budget(None, "sk-a")


def test_unparsable_limit_headers_teach_nothing(fake_openai_server: FakeOpenAIServer) -> None:
    from langchain_pllm.providers.rate_headers import openai_limits

    assert openai_limits({"x-ratelimit-limit-requests": "lots"}) == {}
    assert openai_limits({}) == {}
    assert openai_limits(
        {"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "900"}
    ) == {"tokens": (1000.0, 100.0, None)}


# Both: what the vendor sees in flight at once is what the transport's connection pool lets out.
@pytest.mark.both_transports
async def test_zhipu_1302_lowers_the_keys_concurrency_then_it_grows_back(
    fake_zhipu_server: FakeZhipuServer,
) -> None:
    import asyncio

    srv = fake_zhipu_server
    srv.latency = 0.6  # requests overlap, so the vendor sees them in flight together
    srv.set_concurrency_limit(2, "ka.secret")
    clock = ManualClock()
    model = BalancedChatModel(
        providers=_pool_of(srv, "zhipu", ["ka.secret", "kb.secret"], "glm-4-flash"),
        clock=clock,
        balancer={"window": 60},
    )

    async def burst(n: int) -> list[str]:
        replies = await asyncio.gather(*(model.ainvoke("hi") for _ in range(n)))
        return [str(r.response_metadata["provider"]) for r in replies]

    assert len(await burst(6)) == 6  # ka takes 3, one answers 1302 and fails over to kb
    refused = sum(1 for r in srv.requests if r.api_key in ("ka", "ka.secret") and r.status == 429)
    assert refused >= 1
    assert model.get_stats()["ka.secret"]["concurrency_cut"]["cap"] == 2
    before = len(srv.requests)
    assert len(await burst(6)) == 6
    assert not [r for r in srv.requests[before:] if r.status == 429]  # the cap held it to 2
    clock.advance(60.0)
    assert model.get_stats()["ka.secret"]["concurrency_cut"]["cap"] == 3  # grows by one
    clock.advance(60.0)
    assert "concurrency_cut" not in model.get_stats()["ka.secret"]  # back above what failed
