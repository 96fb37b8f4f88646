"""Tiers and affinity in the picker, the affinity map, conversation digests, prices in config."""

from __future__ import annotations

import math
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_pllm import PllmConfigError, load_config
from langchain_pllm.balancer.affinity import AffinityMap
from langchain_pllm.balancer.picker import Member, Picker
from langchain_pllm.config import Price, balancer_from_mapping, pool_from_providers
from langchain_pllm.conversation import conversation_digest
from langchain_pllm.providers import build_provider


def members(*tiers: int) -> list[Member]:
    pool = pool_from_providers(
        [
            {"vendor": "openai", "api_key": f"k{i}", "model": "m", "tier": t}
            for i, t in enumerate(tiers)
        ]
    )
    return [Member(i, build_provider(p), p, 60.0) for i, p in enumerate(pool.providers)]


def pick(picker: Picker, *args: Any, **kwargs: Any) -> Member:
    m = picker.candidate(*args, **kwargs)
    assert isinstance(m, Member)
    return m


# Tiers in the picker -------------------------------------------------------------------------


def test_tier_two_only_when_every_tier_one_member_is_parked() -> None:
    ms = members(2, 1, 1, 3)
    picker = Picker(ms)
    assert picker.tiers == [1, 2, 3]
    first = pick(picker, (), 0.0)
    second = pick(picker, (), 0.0)
    assert {first.index, second.index} == {1, 2}  # tier 1, listed order does not matter
    picker.reject(first, 10.0, 0.0)
    picker.reject(second, 20.0, 0.0)
    assert pick(picker, (), 0.0) is ms[0]  # tier 2
    picker.reject(ms[0], 30.0, 0.0)
    assert pick(picker, (), 0.0) is ms[3]  # tier 3
    picker.reject(ms[3], 40.0, 0.0)
    assert picker.candidate((), 0.0) == 10.0  # nothing ready: the earliest wake of any tier
    assert pick(picker, (), 10.0) is first  # back to tier 1 the moment it has room


def test_a_request_that_may_not_spill_sees_only_the_first_tier() -> None:
    ms = members(1, 2)
    picker = Picker(ms)
    picker.reject(pick(picker, (), 0.0), 5.0, 0.0)
    assert picker.candidate((), 0.0, spill=False) == 5.0  # waits for its tier...
    assert pick(picker, (), 0.0) is ms[1]  # ...where a spilling request goes on


def test_a_retry_prefers_an_untried_member_of_its_own_tier() -> None:
    ms = members(1, 1, 2)
    picker = Picker(ms)
    a = pick(picker, (), 0.0)
    picker.done(a, True)
    assert pick(picker, {a.index}, 0.0).tier == 1
    assert pick(picker, {0, 1}, 0.0) is ms[2]  # tier 1 all tried: tier 2 before a repeat
    assert pick(picker, {0, 1, 2}, 0.0).tier == 1  # all tried: the best of the first tier


# Affinity in the picker ----------------------------------------------------------------------


def test_the_preferred_member_is_taken_when_ready_and_not_overloaded() -> None:
    ms = members(1, 1, 1)
    picker = Picker(ms)
    assert pick(picker, (), 0.0, prefer=ms[2]) is ms[2]
    assert pick(picker, (), 0.0, prefer=ms[2]) is ms[2]  # one more in flight than the least: still
    assert pick(picker, (), 0.0, prefer=ms[2]) is not ms[2]  # two more: the usual pick
    assert pick(picker, {2}, 0.0, prefer=ms[2]) is not ms[2]  # a retry skips it like any tried key


def test_affinity_never_overrides_a_park_or_a_tier() -> None:
    ms = members(1, 2)
    picker = Picker(ms)
    assert pick(picker, (), 0.0, prefer=ms[1]) is ms[0]  # tier 1 has room: the tier wins
    picker.reject(ms[0], 9.0, 0.0)
    assert pick(picker, (), 0.0, prefer=ms[1]) is ms[1]
    picker.reject(ms[1], 5.0, 0.0)
    assert picker.candidate((), 0.0, prefer=ms[1]) == 5.0  # parked: not taken


# The affinity map ----------------------------------------------------------------------------


def test_affinity_map_forgets_after_its_ttl_and_beyond_its_size() -> None:
    amap = AffinityMap(size=2, ttl=10.0)
    amap.put(b"a", "k1", 0.0)
    assert amap.get(b"a", 9.9) == "k1"
    assert amap.get(b"a", 10.0) is None
    amap.put(b"b", "k2", 0.0)
    amap.put(b"c", "k3", 0.0)
    amap.put(b"d", "k4", 0.0)
    assert len(amap) == 2
    assert amap.get(b"b", 1.0) is None  # least recently written went first
    amap.put(b"c", "k5", 1.0)  # moved: written again
    assert amap.get(b"c", 1.0) == "k5"


# Conversation digests ------------------------------------------------------------------------

SYSTEM = SystemMessage("You are helpful.")


def test_every_turn_of_a_conversation_has_the_digest_of_its_start() -> None:
    first = [SYSTEM, HumanMessage("Plan a trip.")]
    later = [*first, AIMessage("Where to?"), HumanMessage("Rome.")]
    digest, continues = conversation_digest("prefix", first, None, None)
    assert digest is not None
    assert len(digest) == 16
    assert continues is False  # a first turn starts it: the usual pick, its key noted
    assert conversation_digest("prefix", later, None, None) == (digest, True)
    assert b"trip" not in digest
    others = [
        [SystemMessage("You are terse."), HumanMessage("Plan a trip.")],
        [SYSTEM, HumanMessage("Plan a walk.")],
    ]
    for other in others:
        assert conversation_digest("prefix", other, None, None)[0] != digest
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert conversation_digest("prefix", first, tools, None)[0] != digest


def test_a_session_id_wins_and_modes_limit_what_names_a_conversation() -> None:
    prompt = [SYSTEM, HumanMessage("hi")]
    by_session = conversation_digest("prefix", prompt, None, "s-1")
    assert by_session[1] is True  # a named session always goes back to its key
    assert by_session == conversation_digest("session", [HumanMessage("other")], None, "s-1")
    assert by_session[0] != conversation_digest("prefix", prompt, None, None)[0]
    assert conversation_digest("session", prompt, None, None) == (None, False)
    assert conversation_digest("off", prompt, None, "s-1") == (None, False)
    assert conversation_digest("prefix", [AIMessage("x")], None, None) == (None, False)


# Config --------------------------------------------------------------------------------------


def test_price_cost_splits_cached_input() -> None:
    price = Price(input=0.15, output=0.60, cached_input=0.075)
    assert price.cost(1_000_000, 1_000_000, 400_000) == pytest.approx(0.09 + 0.03 + 0.60)
    assert Price(input=1.0, output=2.0).cost(100, 0, 50) == pytest.approx(100e-6)


def test_tier_price_and_affinity_from_yaml() -> None:
    config = load_config(
        """
llm:
  use: openai
  openai:
    - {api_key: k1, model: m, tier: 1}
    - {api_key: k2, model: m, tier: 2, price: {input: 0.15, output: 0.6, cached_input: 0.075}}
balancer:
  affinity: off
  spill: false
"""
    )
    assert config.llm is not None
    free, paid = config.llm.providers
    assert (free.tier, free.price) == (1, None)
    assert paid.tier == 2
    assert paid.price == Price(input=0.15, output=0.6, cached_input=0.075)
    assert config.balancer.affinity == "off"
    assert config.balancer.spill is False
    assert balancer_from_mapping({}).affinity == "prefix"


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"tier": 0}, "tier"),
        ({"price": {"input": -1, "output": 1}}, "price"),
        ({"price": {"input": 1}}, "price"),
    ],
)
def test_bad_tiers_and_prices_name_the_field(entry: dict[str, Any], field: str) -> None:
    with pytest.raises(PllmConfigError) as err:
        pool_from_providers([{"vendor": "openai", "api_key": "k", "model": "m", **entry}])
    assert field in str(err.value)


def test_bad_affinity_is_a_config_error() -> None:
    with pytest.raises(PllmConfigError, match="affinity"):
        balancer_from_mapping({"affinity": "sticky"})


def test_inf_wake_without_parked_members() -> None:
    picker = Picker(members(1))
    m = pick(picker, (), 0.0)
    picker.reject(m, math.inf, 0.0)  # only a release frees it: polled soon
    assert 0.0 < picker.next_wake() <= 0.05
