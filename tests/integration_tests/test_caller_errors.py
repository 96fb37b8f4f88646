"""The caller's mistake is the caller's: bad input never harms a key, on every vendor.

Each bad call raises ``InvalidCallError`` (a ``ValueError`` and LangChain's
``ModelInvalidRequestError``) before a byte is sent, or, for what only the vendor can judge (its
400), is raised after one attempt; either way the key keeps ``error_count`` 0 and a closed
breaker, and the next good call succeeds on it.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.exceptions import ModelInvalidRequestError
from langchain_core.messages import HumanMessage, SystemMessage

from langchain_pllm import BalancedChatModel, InvalidCallError
from langchain_pllm.balancer import ManualClock
from langchain_pllm.providers.base import ChatRequest
from langchain_pllm.testing import FakeVendorServer, Fault
from tests.integration_tests.vendor_pool import VENDORS, entry, sent_by, servers

__all__ = ["servers"]  # the module-scoped fixture, used by name

BAD_INPUTS: dict[str, Any] = {
    "no-messages": [],
    "empty-text": "",
    "only-system": [SystemMessage("You are terse.")],
    "lone-surrogate": "cut emoji \ud83d",
    "surrogate-in-a-block": [HumanMessage(content=[{"type": "text", "text": "x \udc00 y"}])],
    # Anthropic answered this with a 400, Gemini's SDK refused it, OpenAI and Zhipu replied.
    "only-empty-text-blocks": [HumanMessage(content=[{"type": "text", "text": ""}, ""])],
}


def one_key_model(
    servers: dict[str, FakeVendorServer], vendor: str
) -> tuple[BalancedChatModel, str]:
    e = entry(servers, vendor)
    model = BalancedChatModel(providers=[e], max_retries=3, clock=ManualClock())
    return model, e["api_key"]


def assert_key_unharmed(model: BalancedChatModel) -> None:
    for stats in model.get_stats().values():
        assert stats["error_count"] == 0
        assert stats["state"] == "closed"
        assert stats["active_requests"] == 0


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("bad", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_at_once_and_leaves_the_key_healthy(
    servers: dict[str, FakeVendorServer], vendor: str, bad: str
) -> None:
    model, key = one_key_model(servers, vendor)
    with pytest.raises(InvalidCallError) as info:
        model.invoke(BAD_INPUTS[bad])
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ModelInvalidRequestError)
    assert sent_by(servers[vendor], key) == []  # decided before a byte was sent
    assert_key_unharmed(model)
    assert model.invoke("hello").content == "echo: hello"  # the next good call is served


@pytest.mark.parametrize("vendor", VENDORS)
async def test_bad_input_async_and_streamed_the_same(
    servers: dict[str, FakeVendorServer], vendor: str
) -> None:
    model, key = one_key_model(servers, vendor)
    with pytest.raises(InvalidCallError):
        await model.ainvoke([])
    with pytest.raises(InvalidCallError):
        async for _ in model.astream("cut \ud83d"):
            pass
    with pytest.raises(InvalidCallError):
        for _ in model.stream([SystemMessage("only a system message")]):
            pass
    assert sent_by(servers[vendor], key) == []
    assert_key_unharmed(model)
    assert (await model.ainvoke("hello")).content == "echo: hello"


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_vendor_400_is_raised_after_one_attempt_without_harm(
    servers: dict[str, FakeVendorServer], vendor: str
) -> None:
    # What only the vendor can judge (its 400) would fail on every key: no retry, no breaker
    # count, no error counted against the key.
    e1, e2 = entry(servers, vendor), entry(servers, vendor)
    model = BalancedChatModel(providers=[e1, e2], max_retries=3, clock=ManualClock())
    srv = servers[vendor]
    srv.fault_for_key(e1["api_key"], Fault(status=400, message="bad field"), times=1)
    srv.fault_for_key(e2["api_key"], Fault(status=400, message="bad field"), times=1)
    with pytest.raises(ModelInvalidRequestError):
        model.invoke("hello")
    assert len(sent_by(srv, e1["api_key"]) + sent_by(srv, e2["api_key"])) == 1
    assert_key_unharmed(model)
    srv.clear_faults()  # the key not tried still holds its 400
    assert model.invoke("hello").content == "echo: hello"


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_model_no_key_serves_is_refused_before_sending(
    servers: dict[str, FakeVendorServer], vendor: str
) -> None:
    model, key = one_key_model(servers, vendor)
    with pytest.raises(InvalidCallError, match="no key of this pool serves model='gpt-9'"):
        model.invoke("hello", model="gpt-9")
    assert sent_by(servers[vendor], key) == []
    assert_key_unharmed(model)


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_a_provider_never_reads_unencodable_text_as_a_bad_reply(
    servers: dict[str, FakeVendorServer], vendor: str, run_async: bool
) -> None:
    # Below the faces' check: a provider handed a lone surrogate directly must call it the
    # caller's error (Anthropic and Zhipu once called it a malformed reply: retried, breaker).
    model, key = one_key_model(servers, vendor)
    provider = model.balancer_instance.members[0].provider
    request = ChatRequest([HumanMessage("cut \ud83d")])
    try:
        if run_async:
            reply = await provider.achat(request)
        else:
            reply = provider.chat(request)
    except InvalidCallError:
        assert sent_by(servers[vendor], key) == []
        return
    # google-genai escapes the surrogate in JSON (\ud83d) and sends it; the vendor judges.
    assert vendor == "google"
    assert reply.content
