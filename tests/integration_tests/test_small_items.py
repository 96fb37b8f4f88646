"""The smaller promises of issue 9, one test each, over the fake servers."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.exceptions import ModelAuthenticationError, ModelRateLimitError
from langchain_core.messages import HumanMessage
from langchain_core.outputs import LLMResult

from langchain_pllm import (
    BalancedChatModel,
    BalancedEmbeddings,
    NoProviderAvailableError,
    PllmConfigError,
    ValidationFailedError,
    load_config,
)
from langchain_pllm.balancer import ManualClock
from langchain_pllm.cli import main as pllm
from langchain_pllm.exceptions import ValidationFailedError as DeepValidationFailedError
from langchain_pllm.testing import FakeVendorServer, Fault
from tests.integration_tests.vendor_pool import VENDORS, entry, sent_by, servers

__all__ = ["servers"]  # the module-scoped fixture, used by name


def test_get_num_tokens_needs_no_tokenizer(servers: dict[str, FakeVendorServer]) -> None:
    model = BalancedChatModel(providers=[entry(servers, "openai")])
    assert model.get_num_tokens("hello world, how are you?") == 7  # 25 chars / 4, rounded up
    assert model.get_num_tokens("你好世界") == 4  # one a CJK character
    assert model.get_num_tokens_from_messages([]) == 0


class _Ends(BaseCallbackHandler):
    def __init__(self) -> None:
        self.results: list[LLMResult] = []

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self.results.append(response)


@pytest.mark.parametrize("vendor", VENDORS)
def test_llm_output_carries_token_usage_and_model_name(
    servers: dict[str, FakeVendorServer], vendor: str
) -> None:
    e = entry(servers, vendor)
    model = BalancedChatModel(providers=[e], clock=ManualClock())
    ends = _Ends()
    msg = model.invoke("hello there", config={"callbacks": [ends]})
    (result,) = ends.results
    assert result.llm_output is not None
    usage = msg.usage_metadata
    assert usage is not None
    assert result.llm_output["token_usage"] == {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": usage["output_tokens"],
        "total_tokens": usage["total_tokens"],
    }
    assert result.llm_output["model_name"] == msg.response_metadata["model_name"]


def test_batch_llm_output_sums_usage(servers: dict[str, FakeVendorServer]) -> None:
    model = BalancedChatModel(providers=[entry(servers, "openai")], clock=ManualClock())
    one = model.generate([[HumanMessage("a b")], [HumanMessage("a b")]])
    assert one.llm_output is not None
    single = model.invoke("a b").usage_metadata
    assert single is not None
    assert one.llm_output["token_usage"]["total_tokens"] == 2 * single["total_tokens"]


def test_no_provider_available_says_per_key_what_blocked_it(
    servers: dict[str, FakeVendorServer],
) -> None:
    clock = ManualClock()
    a = entry(servers, "openai", rate_limit=1, name="limited")
    b = entry(servers, "anthropic", name="resting")
    model = BalancedChatModel(providers=[a, b], clock=clock, max_wait=0)
    servers["anthropic"].fault_for_key(b["api_key"], Fault(status=429, retry_after=30), times=1)
    model.invoke("one")  # the first key in order takes its window's one slot
    with pytest.raises(ModelRateLimitError):
        model.invoke("two")  # the other key's 429 rests it; the caller gets that error
    with pytest.raises(NoProviderAvailableError) as info:
        model.invoke("three")
    text = str(info.value)
    assert "limited: request window full (1/1 in 60s)" in text
    assert "resting: resting for 30s" in text
    assert info.value.states == {"limited": "closed", "resting": "closed"}


def test_no_provider_available_names_an_open_breaker_without_blaming_repeated_failures(
    servers: dict[str, FakeVendorServer],
) -> None:
    # One 401 opens the breaker at once: the reason must not say "after repeated failures".
    e = entry(servers, "openai", name="revoked")
    model = BalancedChatModel(providers=[e], clock=ManualClock(), max_wait=0, max_retries=0)
    servers["openai"].fault_for_key(e["api_key"], Fault(status=401), times=1)
    with pytest.raises(ModelAuthenticationError):
        model.invoke("one")
    with pytest.raises(NoProviderAvailableError) as info:
        model.invoke("two")
    text = str(info.value)
    assert "revoked: breaker open (an auth or not-found error" in text
    assert "after repeated failures" not in text
    assert info.value.states == {"revoked": "open"}


def test_validation_failed_error_is_exported() -> None:
    assert ValidationFailedError is DeepValidationFailedError


# Constructor arguments ---------------------------------------------------------------------------


def test_unknown_chat_arguments_move_to_model_kwargs_with_a_warning_and_reach_the_vendor(
    servers: dict[str, FakeVendorServer],
) -> None:
    e = entry(servers, "openai")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = BalancedChatModel(providers=[e], temprature=0.0, seed=7)
    messages = [str(w.message) for w in caught]
    assert any("temprature" in m and "did you mean 'temperature'" in m for m in messages)
    assert any(m.startswith("seed is not a parameter") for m in messages)
    assert model.model_kwargs == {"temprature": 0.0, "seed": 7}
    model.invoke("hello")
    (request,) = sent_by(servers["openai"], e["api_key"])
    assert request.body["seed"] == 7


def test_every_balancer_setting_is_a_keyword_of_both_faces(
    servers: dict[str, FakeVendorServer],
) -> None:
    chat = BalancedChatModel(
        providers=[entry(servers, "openai")], max_wait=0.2, request_timeout=5, window=30
    )
    assert (chat.balancer.max_wait, chat.balancer.request_timeout) == (0.2, 5.0)
    assert chat.balancer.window == 30.0
    emb = BalancedEmbeddings(providers=[entry(servers, "openai")], breaker_threshold=7)
    assert emb.balancer.breaker_threshold == 7


def test_max_wait_as_a_keyword_bounds_the_wait(servers: dict[str, FakeVendorServer]) -> None:
    clock = ManualClock()
    model = BalancedChatModel(
        providers=[entry(servers, "openai", rate_limit=1)], clock=clock, max_wait=0
    )
    model.invoke("one")
    with pytest.raises(NoProviderAvailableError):
        model.invoke("two")  # max_wait=0: no wait for the window's slot


def test_unknown_embeddings_arguments_are_refused(servers: dict[str, FakeVendorServer]) -> None:
    with pytest.raises(PllmConfigError, match="did you mean 'dimensions'"):
        BalancedEmbeddings(providers=[entry(servers, "openai")], dimenions=256)


# Config and command line --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_base", "problem"),
    [
        ("http://exa mple.com:99", "contains a space"),
        ("http://example.com:99999", "out of range"),
        ("https://:8080/v1", "no host"),
    ],
)
def test_api_base_is_validated_as_a_url(api_base: str, problem: str) -> None:
    with pytest.raises(PllmConfigError, match=problem) as info:
        load_config(
            {
                "llm": {
                    "use": "openai",
                    "openai": [{"api_key": "k", "model": "m", "api_base": api_base}],
                }
            }
        )
    assert info.value.field is not None
    assert "api_base" in info.value.field


def test_pllm_check_refuses_a_bad_api_base(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "pllm.yaml"
    cfg.write_text(
        "llm:\n  use: openai\n  openai:\n"
        "    - {api_key: k, model: m, api_base: 'http://exa mple.com:99999'}\n"
    )
    assert pllm(["check", str(cfg)]) == 2
    assert "api_base" in capsys.readouterr().err


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_pllm_chat_prints_one_line_on_a_vendor_error(
    servers: dict[str, FakeVendorServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    stream: bool,
) -> None:
    e = entry(servers, "openai")
    servers["openai"].fault_for_key(e["api_key"], Fault(status=401, message="bad key"))
    cfg = tmp_path / "pllm.yaml"
    cfg.write_text(
        "llm:\n  use: openai\n  openai:\n"
        f"    - {{api_key: {e['api_key']}, model: m, api_base: '{e['api_base']}'}}\n"
    )
    code = pllm(["chat", str(cfg), "hi", *(["--stream"] if stream else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1
    assert err[0].startswith("pllm chat: ModelAuthenticationError: ")
    assert "401" in err[0]
