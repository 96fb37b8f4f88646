"""A call's ``model=`` picks keys, it does not rewrite them; ``aliases`` make model groups."""

from __future__ import annotations

from collections import Counter

import pytest

from langchain_pllm import BalancedChatModel, InvalidCallError
from langchain_pllm.balancer import ManualClock
from langchain_pllm.testing import FakeVendorServer
from tests.integration_tests.vendor_pool import entry, sent_by, servers

# One transport (tests/integration_tests/conftest.py): routing picks the keys before a byte is sent.
pytestmark = pytest.mark.one_transport

__all__ = ["servers"]  # the module-scoped fixture, used by name


@pytest.fixture
def pool(servers: dict[str, FakeVendorServer]) -> tuple[BalancedChatModel, dict[str, str]]:
    entries = [
        entry(servers, "openai", model="gpt-4o", name="oa-1"),
        entry(servers, "openai", model="gpt-4o", name="oa-2"),
        entry(servers, "anthropic", aliases=["fast"], name="claude"),
        entry(servers, "google", aliases=["fast", "vision"], name="gemini"),
        entry(servers, "zhipu", name="glm"),
    ]
    model = BalancedChatModel(providers=entries, clock=ManualClock())
    return model, {e["name"]: e["api_key"] for e in entries}


def served(chat: BalancedChatModel, n: int, run: str = "invoke", **kwargs: object) -> Counter:
    out: Counter[str] = Counter()
    for _ in range(n):
        if run == "stream":
            chunks = list(chat.stream("hello", **kwargs))
            out[chunks[-1].response_metadata["provider"]] += 1
        else:
            out[chat.invoke("hello", **kwargs).response_metadata["provider"]] += 1
    return out


@pytest.mark.parametrize("run", ["invoke", "stream"])
def test_model_goes_only_to_keys_serving_it_balanced_among_them(
    servers: dict[str, FakeVendorServer], pool: tuple[BalancedChatModel, dict[str, str]], run: str
) -> None:
    model, keys = pool
    assert served(model, 6, run, model="gpt-4o") == {"oa-1": 3, "oa-2": 3}
    for name in ("claude", "gemini", "glm"):
        vendor = {"claude": "anthropic", "gemini": "google", "glm": "zhipu"}[name]
        assert sent_by(servers[vendor], keys[name]) == []
    sent = sent_by(servers["openai"], keys["oa-1"]) + sent_by(servers["openai"], keys["oa-2"])
    assert {r.body["model"] for r in sent} == {"gpt-4o"}


def test_an_alias_is_a_group_each_key_sending_its_own_model(
    servers: dict[str, FakeVendorServer], pool: tuple[BalancedChatModel, dict[str, str]]
) -> None:
    model, keys = pool
    assert served(model, 4, model="fast") == {"claude": 2, "gemini": 2}
    (claude,) = {r.body["model"] for r in sent_by(servers["anthropic"], keys["claude"])}
    assert claude == "claude-haiku-4-5"  # the key's model, never "fast"
    assert served(model, 2, model="vision") == {"gemini": 2}
    assert sent_by(servers["openai"], keys["oa-1"]) == []
    assert sent_by(servers["zhipu"], keys["glm"]) == []


@pytest.mark.both_transports  # an async stream (Anthropic's) through the transport
async def test_async_routing_and_no_model_means_every_key(
    pool: tuple[BalancedChatModel, dict[str, str]],
) -> None:
    model, _ = pool
    msg = await model.ainvoke("hello", model="glm-4-flash")
    assert msg.response_metadata["provider"] == "glm"
    chunks = [c async for c in model.astream("hello", model="claude-haiku-4-5")]
    assert chunks[-1].response_metadata["provider"] == "claude"
    assert set(served(model, 5)) == {"oa-1", "oa-2", "claude", "gemini", "glm"}


def test_no_key_serving_the_model_is_a_clear_error_listing_the_pool(
    pool: tuple[BalancedChatModel, dict[str, str]],
) -> None:
    model, _ = pool
    with pytest.raises(InvalidCallError) as info:
        model.invoke("hello", model="gpt-5")
    text = str(info.value)
    for name in ("gpt-4o", "claude-haiku-4-5", "gemini-2.5-flash", "glm-4-flash", "fast"):
        assert name in text
    for stats in model.get_stats().values():
        assert (stats["total_requests"], stats["error_count"]) == (0, 0)


def test_aliases_from_yaml(servers: dict[str, FakeVendorServer]) -> None:
    a, b = entry(servers, "openai"), entry(servers, "anthropic")
    yaml = f"""
llm:
  use: openai, anthropic
  openai:
    - api_key: {a["api_key"]}
      api_base: {a["api_base"]}
      model: gpt-4o-mini
      aliases: [cheap]
  anthropic:
    - api_key: {b["api_key"]}
      api_base: {b["api_base"]}
      model: claude-haiku-4-5
"""
    model = BalancedChatModel.from_config(yaml, clock=ManualClock())
    assert model.invoke("hi", model="cheap").response_metadata["vendor"] == "openai"
    assert sent_by(servers["anthropic"], b["api_key"]) == []


def test_a_constructor_model_routes_every_call_and_the_calls_own_wins(
    servers: dict[str, FakeVendorServer],
) -> None:
    # BalancedChatModel(..., model=...) as ChatOpenAI takes it: moved to model_kwargs with a
    # warning, then it picks keys on every call (it was once dropped after the warning).
    a, b = entry(servers, "openai"), entry(servers, "anthropic")
    with pytest.warns(UserWarning, match="model is not a parameter.*applies to every call"):
        model = BalancedChatModel(providers=[a, b], model="claude-haiku-4-5", clock=ManualClock())
    assert set(served(model, 4)) == {"anthropic-0"}
    assert sent_by(servers["openai"], a["api_key"]) == []
    assert set(served(model, 2, model="gpt-4o-mini")) == {"openai-0"}
    assert {r.body["model"] for r in sent_by(servers["openai"], a["api_key"])} == {"gpt-4o-mini"}
    with pytest.raises(InvalidCallError, match="model='gpt-9'"):
        BalancedChatModel(providers=[a, b], model_kwargs={"model": "gpt-9"}).invoke("hello")
