"""API keys never leave the pool: not in repr, str, stats, serialization, traces, logs or errors.

And a wrong config given to the faces raises ``PllmConfigError`` naming the field, without
echoing the key.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.exceptions import ModelAuthenticationError
from langchain_core.load import dumpd, dumps
from langchain_core.tracers.context import collect_runs
from pydantic import BaseModel

from langchain_pllm import (
    BalancedChatModel,
    BalancedEmbeddings,
    NoProviderAvailableError,
    PllmConfigError,
)
from langchain_pllm.balancer import ManualClock
from langchain_pllm.testing import FakeOpenAIServer, Fault

MODEL = "gpt-4o-mini"


@pytest.fixture
def srv() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def secrets() -> list[str]:
    return [f"sk-SECRET-{uuid.uuid4().hex}" for _ in range(2)]


def entry(base: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"vendor": "openai", "api_key": key, "model": MODEL, "api_base": base, **extra}


def assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text
        assert secret.removeprefix("sk-SECRET-")[:12] not in text  # not even a fragment


class Answer(BaseModel):
    """An answer."""

    text: str


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.seen.append({"serialized": serialized, "messages": messages, **kwargs})

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.seen.append({"response": response, **kwargs})

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        self.seen.append({"error": repr(error), "text": str(error), **kwargs})


# The model objects -----------------------------------------------------------------------------


def test_keys_absent_from_repr_str_stats_and_dumps(
    srv: FakeOpenAIServer, secrets: list[str]
) -> None:
    model = BalancedChatModel(
        providers=[entry(srv.base_url, k) for k in secrets], api_key=secrets[0]
    )
    bound = model.bind_tools([add])
    structured = model.with_structured_output(Answer)
    texts = [
        repr(model),
        str(model),
        repr(model.providers),
        repr(model.providers[0]),
        str(model.providers[0].api_key),
        repr(model.get_stats()),
        json.dumps(model.get_stats()),
        repr(model._identifying_params),
        model.model_dump_json(),
        repr(model.model_dump()),
        dumps(model),
        json.dumps(dumpd(model)),
        repr(bound),
        dumps(bound),
        json.dumps(dumpd(bound)),
        repr(structured),
        dumps(structured),
        json.dumps(dumpd(structured)),
        dumps(model, pretty=True),
    ]
    for text in texts:
        assert_no_secret(text, secrets)
    model.invoke("use the keys")  # a live balancer and clients change nothing
    for text in (repr(model), dumps(model), repr(model.get_stats()), repr(model.balancer_instance)):
        assert_no_secret(text, secrets)


def test_embeddings_keep_keys_out_too(srv: FakeOpenAIServer, secrets: list[str]) -> None:
    emb = BalancedEmbeddings(providers=[entry(srv.base_url, k) for k in secrets])
    emb.embed_documents(["a", "b", "c"])
    for text in (repr(emb), str(emb), repr(emb.get_stats()), dumps(emb), emb.model_dump_json()):
        assert_no_secret(text, secrets)


# A run's traces --------------------------------------------------------------------------------


def test_keys_absent_from_callbacks_and_tracer_runs(
    srv: FakeOpenAIServer, secrets: list[str]
) -> None:
    model = BalancedChatModel(providers=[entry(srv.base_url, k) for k in secrets])
    recorder = Recorder()
    with collect_runs() as collected:
        model.invoke("hello", config={"callbacks": [recorder]})
        model.bind_tools([add]).invoke("add", config={"callbacks": [recorder]})
        list(model.stream("streamed", config={"callbacks": [recorder]}))
        structured = model.with_structured_output(Answer)
        structured.invoke("structured", config={"callbacks": [recorder]})
    assert recorder.seen
    assert collected.traced_runs
    assert_no_secret(json.dumps(recorder.seen, default=repr), secrets)
    for run in collected.traced_runs:
        assert_no_secret(run.model_dump_json(), secrets)
        assert_no_secret(json.dumps(run.serialized or {}, default=repr), secrets)
        assert_no_secret(json.dumps(run.extra or {}, default=repr), secrets)
        for child in run.child_runs:
            assert_no_secret(child.model_dump_json(), secrets)


async def test_keys_absent_from_astream_events(srv: FakeOpenAIServer, secrets: list[str]) -> None:
    model = BalancedChatModel(providers=[entry(srv.base_url, k) for k in secrets])
    events = [e async for e in model.astream_events("hi", version="v2")]
    assert events
    assert_no_secret(json.dumps(events, default=repr), secrets)


# Errors and logs -------------------------------------------------------------------------------


def test_keys_absent_from_errors_and_logs(
    srv: FakeOpenAIServer, secrets: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = ManualClock()
    model = BalancedChatModel(
        providers=[entry(srv.base_url, k) for k in secrets],
        clock=clock,
        max_retries=1,
        balancer={"max_wait": 5},
    )
    recorder = Recorder()
    srv.set_fault_rate(1.0, [Fault(status=401)])
    with pytest.raises(ModelAuthenticationError) as auth:
        model.invoke("who am I", config={"callbacks": [recorder]})
    with pytest.raises(NoProviderAvailableError) as none_left:
        model.invoke("anyone?")  # both breakers are open now
    srv.clear_faults()
    clock.advance(300)  # the health interval: the probe goes out and closes the breaker
    model.invoke("fine")
    texts = [
        str(auth.value),
        repr(auth.value),
        str(auth.value.__cause__),
        str(none_left.value),
        repr(none_left.value.states),
        json.dumps(recorder.seen, default=repr),
        caplog.text,
    ]
    texts += [str(r.args) for r in caplog.records]
    for text in texts:
        assert_no_secret(text, secrets)
    # The key did reach the vendor, where it belongs.
    assert {r.api_key for r in srv.requests} <= set(secrets)


def test_keys_from_the_environment_stay_hidden(
    srv: FakeOpenAIServer, secrets: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLLM_TEST_KEY", secrets[0])
    yaml_text = f"""
llm:
  use: openai
  openai:
    - api_key: ${{PLLM_TEST_KEY}}
      model: {MODEL}
      api_base: {srv.base_url}
"""
    model = BalancedChatModel.from_config(yaml_text)
    assert model.invoke("env").content == "echo: env"
    assert srv.requests[0].api_key == secrets[0]
    for text in (repr(model), dumps(model), repr(model.get_stats())):
        assert_no_secret(text, secrets)


# Config errors through the faces ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"vendor": "opena"}, "providers[0].vendor"),
        ({"rate_limit": "twenty"}, "providers[0].rate_limit"),
        ({"rate_limit": -5}, "providers[0].rate_limit"),
        ({"tpm": 0}, "providers[0].tpm"),
        ({"weight": -1}, "providers[0].weight"),
        ({"timeout": "soon"}, "providers[0].timeout"),
        ({"api_base": "ftp://example.com"}, "providers[0].api_base"),
        ({"api_key": None}, "providers[0].api_key"),
        ({"model": ""}, "providers[0].model"),
        ({"modle": "typo"}, "providers[0].modle"),
    ],
)
def test_constructor_config_errors_name_the_field(
    secrets: list[str], change: dict[str, Any], field: str
) -> None:
    provider = {**entry("http://127.0.0.1:9/v1", secrets[0]), **change}
    with pytest.raises(PllmConfigError) as info:
        BalancedChatModel(providers=[provider])
    assert info.value.field == field
    assert str(info.value).startswith(field)
    assert_no_secret(str(info.value), secrets)
    assert info.value.__cause__ is None or secrets[0] not in repr(info.value.__cause__)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"providers": []}, "providers"),
        ({"balancer": {"retry_policy": "sometimes"}}, "balancer.retry_policy"),
        ({"retry_policy": "sometimes"}, "balancer.retry_policy"),
        ({"max_retries": -1}, "balancer.max_retries"),
        ({"balancer": {"breaker_threshold": 0}}, "balancer.breaker_threshold"),
        ({"balancer": {"health_check_interval": "later"}}, "balancer.health_check_interval"),
        ({"balancer": {"state": "postgres://x"}}, "balancer.state"),
        ({"balancer": {"windoww": 60}}, "balancer.windoww"),
    ],
)
def test_constructor_balancer_errors_name_the_field(
    secrets: list[str], kwargs: dict[str, Any], field: str
) -> None:
    args = {"providers": [entry("http://127.0.0.1:9/v1", secrets[0])], **kwargs}
    with pytest.raises(PllmConfigError) as info:
        BalancedChatModel(**args)
    assert info.value.field == field
    assert_no_secret(str(info.value), secrets)


def test_embeddings_constructor_refuses_a_chat_only_vendor(secrets: list[str]) -> None:
    with pytest.raises(PllmConfigError) as info:
        BalancedEmbeddings(
            providers=[{**entry("http://127.0.0.1:9/v1", secrets[0]), "vendor": "deepseek"}]
        )
    assert info.value.field == "providers[0].vendor"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (
            {"llm": {"use": "openai", "openai": [{"model": MODEL, "rate_limit": -1}]}},
            "llm.openai[0].rate_limit",
        ),
        ({"llm": {"use": "openai, anthropic", "openai": [{"model": MODEL}]}}, "llm.use"),
        (
            {
                "llm": {"use": "openai", "openai": [{"model": MODEL}]},
                "balancer": {"max_retries": "x"},
            },
            "balancer.max_retries",
        ),
        ({"embedding": {"use": "openai", "openai": [{"model": MODEL}]}}, "llm"),
    ],
)
def test_from_config_errors_name_the_field(
    secrets: list[str], config: dict[str, Any], field: str
) -> None:
    for section in ("llm", "embedding"):
        for item in config.get(section, {}).get("openai", []):
            item["api_key"] = secrets[0]
    with pytest.raises(PllmConfigError) as info:
        BalancedChatModel.from_config(config)
    assert info.value.field == field
    assert_no_secret(str(info.value), secrets)


def test_from_config_yaml_error_names_the_field(secrets: list[str]) -> None:
    yaml_text = f"""
llm:
  use: openai
  openai:
    - api_key: {secrets[0]}
      model: {MODEL}
      tpm: lots
"""
    with pytest.raises(PllmConfigError) as info:
        BalancedChatModel.from_config(yaml_text)
    assert info.value.field == "llm.openai[0].tpm"
    assert_no_secret(str(info.value), secrets)


def test_embeddings_from_config_without_embedding_section(secrets: list[str]) -> None:
    config = {"llm": {"use": "openai", "openai": [{"api_key": secrets[0], "model": MODEL}]}}
    with pytest.raises(PllmConfigError) as info:
        BalancedEmbeddings.from_config(config)
    assert info.value.field == "embedding"


def test_a_redis_password_in_the_state_url_stays_hidden() -> None:
    from langchain_pllm import BalancedEmbeddings
    from langchain_pllm.config import load_config

    password = f"pw-{uuid.uuid4().hex}"
    url = f"redis://user:{password}@127.0.0.1:6399/0"
    providers = [{"vendor": "openai", "api_key": "sk-x", "model": "m"}]
    chat = BalancedChatModel(providers=providers, balancer={"state": url})
    emb = BalancedEmbeddings(providers=providers, balancer={"state": url})
    for face in (chat, emb):
        for text in (repr(face), str(face), face.model_dump_json(), dumps(face)):
            assert password not in text
            assert "127.0.0.1:6399" in text  # the rest of the URL is still there to read
    assert chat.balancer.state == url  # the real value is kept for connecting
    config = load_config({"llm": {"openai": providers}, "balancer": {"state": url}})
    assert password not in repr(config)
    assert password not in config.model_dump_json()
    # Handing a BalancerConfig to a face keeps the real URL.
    again = BalancedChatModel(providers=providers, balancer=config.balancer)
    assert again.balancer.state == url
