"""``request_timeout`` bounds a stream in flight, and a stream left early frees its key.

A slow stream (the fake waits before each content chunk) outlives the deadline: the caller
keeps the chunks already yielded, then gets ``ModelTimeoutError``; the key is released and the
vendor's HTTP stream closed (the fake sees no request in flight for that key).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from langchain_core.exceptions import ModelTimeoutError
from langchain_core.messages import BaseMessageChunk

from langchain_pllm import BalancedChatModel
from langchain_pllm.testing import FakeVendorServer, Fault
from tests.integration_tests.vendor_pool import VENDORS, entry, servers

__all__ = ["servers"]  # the module-scoped fixture, used by name

PROMPT = "one two three four five six seven eight nine ten eleven twelve"


def slow_model(
    servers: dict[str, FakeVendorServer], vendor: str, timeout: float
) -> tuple[BalancedChatModel, str]:
    e = entry(servers, vendor)
    servers[vendor].fault_for_key(e["api_key"], Fault(chunk_delay=0.25))
    model = BalancedChatModel(providers=[e], balancer={"request_timeout": timeout})
    return model, e["api_key"]


async def wait_closed(srv: FakeVendorServer, key: str) -> None:
    # The server learns of a closed stream on its next write; a few chunk delays at most.
    for _ in range(100):
        if srv.in_flight(key) == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the vendor's stream for {key} is still open")


def drain(stream: Iterator[BaseMessageChunk], into: list[str]) -> None:
    for chunk in stream:
        into.append(chunk.text)


async def adrain(stream: AsyncIterator[BaseMessageChunk], into: list[str]) -> None:
    async for chunk in stream:
        into.append(chunk.text)


def assert_released(model: BalancedChatModel) -> None:
    stats = next(iter(model.get_stats().values()))
    assert stats["active_requests"] == 0


async def released(model: BalancedChatModel) -> None:
    # LangChain's astream does not close the model's inner _astream when the caller leaves;
    # the event loop's async-generator finalizer does, a few loop turns later.
    for _ in range(200):
        if next(iter(model.get_stats().values()))["active_requests"] == 0:
            return
        await asyncio.sleep(0.005)
    assert_released(model)


# The stream under test is a sync one (sync clients always speak httpx): one transport.
@pytest.mark.one_transport
@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_slow_stream_ends_at_the_deadline_sync(
    servers: dict[str, FakeVendorServer], vendor: str
) -> None:
    model, key = slow_model(servers, vendor, timeout=1.0)
    received: list[str] = []
    started = time.monotonic()
    with pytest.raises(ModelTimeoutError, match="request_timeout"):
        drain(model.stream(PROMPT), received)
    elapsed = time.monotonic() - started
    assert elapsed < 2.2  # twelve chunks at 0.25 s would take 3 s
    assert received  # chunks already yielded stay yielded
    assert "".join(received) in f"echo: {PROMPT}"
    assert_released(model)
    await wait_closed(servers[vendor], key)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_slow_stream_ends_at_the_deadline_async(
    servers: dict[str, FakeVendorServer], vendor: str
) -> None:
    model, key = slow_model(servers, vendor, timeout=1.0)
    received: list[str] = []
    started = time.monotonic()
    with pytest.raises(ModelTimeoutError, match="request_timeout"):
        await adrain(model.astream(PROMPT), received)
    assert time.monotonic() - started < 1.8  # the pending read is cancelled at the deadline
    assert received
    assert_released(model)
    await wait_closed(servers[vendor], key)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_stream_within_its_deadline_is_untouched(
    servers: dict[str, FakeVendorServer], vendor: str
) -> None:
    e = entry(servers, vendor)
    model = BalancedChatModel(providers=[e], balancer={"request_timeout": 30})
    text = "".join(c.text for c in model.stream(PROMPT))
    assert text == f"echo: {PROMPT}"
    text = "".join([c.text async for c in model.astream(PROMPT)])
    assert text == f"echo: {PROMPT}"
    assert_released(model)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_stream_left_early_frees_its_key_and_closes_the_vendor_stream(
    servers: dict[str, FakeVendorServer], vendor: str
) -> None:
    e = entry(servers, vendor)
    servers[vendor].fault_for_key(e["api_key"], Fault(chunk_delay=0.05))
    model = BalancedChatModel(providers=[e])
    stream = model.stream(PROMPT)
    next(stream)
    stream.close()
    assert_released(model)
    await wait_closed(servers[vendor], e["api_key"])
    astream = model.astream(PROMPT)
    await astream.__anext__()
    await astream.aclose()
    await released(model)
    await wait_closed(servers[vendor], e["api_key"])
