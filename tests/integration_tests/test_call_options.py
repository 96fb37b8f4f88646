"""One behaviour per call option across vendors: the README's table, one test per cell.

Each cell sends one call option through a one-key pool of one vendor and asserts what that
vendor's fake server received (and whether the provider warned that it dropped the option).
Then: ``timeout`` bounds every vendor's attempt and is never a body field; structured output by
``json_schema`` reaches every vendor; media is converted or routed, never dropped.
"""

from __future__ import annotations

import base64
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.exceptions import ModelTimeoutError
from langchain_core.messages import HumanMessage
from pydantic import BaseModel

from langchain_pllm import BalancedChatModel, InvalidCallError
from langchain_pllm.balancer import ManualClock
from langchain_pllm.testing import FakeVendorServer
from tests.integration_tests.vendor_pool import VENDORS, entry, sent_by, servers

# One transport (tests/integration_tests/conftest.py): options reach each vendor's body the same way
# on both; the call timeout is the transport's to enforce, so that test runs on both.
pytestmark = pytest.mark.one_transport

__all__ = ["servers"]  # the module-scoped fixture, used by name

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "P", "schema": SCHEMA}}
TOOL = {
    "type": "function",
    "function": {"name": "add", "description": "Add.", "parameters": SCHEMA},
}
OTHER_TOOL = {
    "type": "function",
    "function": {"name": "sub", "description": "Subtract.", "parameters": SCHEMA},
}

OPTIONS: dict[str, dict[str, Any]] = {
    "stop": {"stop": ["X", "Y"]},
    "max_tokens": {"max_tokens": 7},
    "temperature": {"temperature": 0.3},
    "top_p": {"top_p": 0.5},
    "seed": {"seed": 7},
    "response_format": {"response_format": RESPONSE_FORMAT},
    "tool_choice": {
        "tools": [TOOL, OTHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "add"}},
    },
    "timeout": {"timeout": 30},
}

Body = dict[str, Any]


def gen(body: Body) -> Body:
    return body.get("generationConfig") or {}


def system_text(body: Body) -> str:
    return " ".join(m["content"] for m in body["messages"] if m["role"] == "system")


# (option, vendor) -> (what the vendor's body shows, whether the provider warns it dropped or
# narrowed the option). The README's "Call options across vendors" table says the same.
CELLS: dict[tuple[str, str], tuple[Callable[[Body], bool], bool]] = {
    ("stop", "openai"): (lambda b: b["stop"] == ["X", "Y"], False),
    ("stop", "anthropic"): (lambda b: b["stop_sequences"] == ["X", "Y"], False),
    ("stop", "google"): (lambda b: gen(b)["stopSequences"] == ["X", "Y"], False),
    ("stop", "zhipu"): (lambda b: b["stop"] == ["X"], True),  # Zhipu takes one stop word
    ("max_tokens", "openai"): (lambda b: b["max_tokens"] == 7, False),
    ("max_tokens", "anthropic"): (lambda b: b["max_tokens"] == 7, False),
    ("max_tokens", "google"): (lambda b: gen(b)["maxOutputTokens"] == 7, False),
    ("max_tokens", "zhipu"): (lambda b: b["max_tokens"] == 7, False),
    ("temperature", "openai"): (lambda b: b["temperature"] == 0.3, False),
    ("temperature", "anthropic"): (lambda b: "temperature" not in b, True),
    ("temperature", "google"): (lambda b: gen(b)["temperature"] == 0.3, False),
    ("temperature", "zhipu"): (lambda b: b["temperature"] == 0.3, False),
    ("top_p", "openai"): (lambda b: b["top_p"] == 0.5, False),
    ("top_p", "anthropic"): (lambda b: "top_p" not in b, True),
    ("top_p", "google"): (lambda b: gen(b)["topP"] == 0.5, False),
    ("top_p", "zhipu"): (lambda b: b["top_p"] == 0.5, False),
    ("seed", "openai"): (lambda b: b["seed"] == 7, False),
    ("seed", "anthropic"): (lambda b: "seed" not in b, True),
    ("seed", "google"): (lambda b: gen(b)["seed"] == 7, False),
    ("seed", "zhipu"): (lambda b: b["seed"] == 7, False),
    ("response_format", "openai"): (lambda b: b["response_format"] == RESPONSE_FORMAT, False),
    ("response_format", "anthropic"): (
        lambda b: (
            b["tool_choice"] == {"type": "tool", "name": "P"}
            and b["tools"][0]["input_schema"] == SCHEMA
        ),
        False,
    ),
    ("response_format", "google"): (
        lambda b: (
            gen(b)["responseMimeType"] == "application/json"
            and gen(b)["responseJsonSchema"] == SCHEMA
        ),
        False,
    ),
    ("response_format", "zhipu"): (
        lambda b: b["response_format"] == {"type": "json_object"} and '"a"' in system_text(b),
        False,
    ),
    ("tool_choice", "openai"): (
        lambda b: b["tool_choice"] == {"type": "function", "function": {"name": "add"}},
        False,
    ),
    ("tool_choice", "anthropic"): (
        lambda b: b["tool_choice"] == {"type": "tool", "name": "add"},
        False,
    ),
    ("tool_choice", "google"): (
        lambda b: (
            b["toolConfig"]["functionCallingConfig"]
            == {"mode": "ANY", "allowedFunctionNames": ["add"]}
        ),
        False,
    ),
    # Zhipu takes only "auto": the named tool is forced by offering it alone.
    ("tool_choice", "zhipu"): (
        lambda b: (
            b["tool_choice"] == "auto" and [t["function"]["name"] for t in b["tools"]] == ["add"]
        ),
        False,
    ),
    # Never a body field: the attempt is bounded by the client (see the tests below).
    ("timeout", "openai"): (lambda b: "timeout" not in b, False),
    ("timeout", "anthropic"): (lambda b: "timeout" not in b, False),
    ("timeout", "google"): (lambda b: "timeout" not in b and "timeout" not in gen(b), False),
    ("timeout", "zhipu"): (lambda b: "timeout" not in b, False),
}


@pytest.mark.parametrize(("option", "vendor"), list(CELLS), ids=[f"{o}-{v}" for o, v in CELLS])
def test_option_cell(servers: dict[str, FakeVendorServer], option: str, vendor: str) -> None:
    e = entry(servers, vendor)
    model = BalancedChatModel(providers=[e], clock=ManualClock())
    check, warns = CELLS[(option, vendor)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.invoke("hello", **OPTIONS[option])
    (request,) = sent_by(servers[vendor], e["api_key"])
    assert check(request.body), request.body
    dropped = [w for w in caught if option in str(w.message) or "stop word" in str(w.message)]
    assert bool(dropped) is warns


def test_every_cell_of_the_table_is_tested() -> None:
    assert set(CELLS) == {(o, v) for o in OPTIONS for v in VENDORS}


# timeout ---------------------------------------------------------------------------------------


@pytest.mark.both_transports
@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_a_call_timeout_bounds_the_attempt_on_every_vendor(
    servers: dict[str, FakeVendorServer], vendor: str, run_async: bool
) -> None:
    e = entry(servers, vendor)
    model = BalancedChatModel(providers=[e], max_retries=0)
    srv = servers[vendor]
    srv.latency = 2.0
    started = time.monotonic()
    call = model.ainvoke("hello", timeout=0.3) if run_async else None
    try:
        with pytest.raises(ModelTimeoutError):
            await call if call is not None else model.invoke("hello", timeout=0.3)
    finally:
        srv.latency = 0.0
    assert time.monotonic() - started < 1.6  # the 2 s reply was not waited for
    (request,) = sent_by(srv, e["api_key"])
    assert "timeout" not in request.body


# Structured output -----------------------------------------------------------------------------


class Person(BaseModel):
    name: str
    age: int


@pytest.mark.parametrize("vendor", VENDORS)
async def test_json_schema_structured_output_on_every_vendor(
    servers: dict[str, FakeVendorServer], vendor: str
) -> None:
    e = entry(servers, vendor)
    model = BalancedChatModel(providers=[e], clock=ManualClock())
    structured = model.with_structured_output(Person, method="json_schema")
    person = structured.invoke("Who?")
    assert isinstance(person, Person)
    assert isinstance(await structured.ainvoke("Who?"), Person)
    body = sent_by(servers[vendor], e["api_key"])[0].body
    assert "age" in str(body)  # the schema went with the request


def test_json_schema_over_a_mixed_pool_parses_every_call(
    servers: dict[str, FakeVendorServer],
) -> None:
    model = BalancedChatModel(providers=[entry(servers, v) for v in VENDORS], clock=ManualClock())
    structured = model.with_structured_output(Person, method="json_schema")
    assert all(isinstance(p, Person) for p in structured.batch(["Who?"] * 8))


# Media -----------------------------------------------------------------------------------------

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()
ANTHROPIC_IMAGE = {
    "type": "image",
    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
}
AUDIO = {"type": "audio", "base64": PNG, "mime_type": "audio/wav"}


def test_an_anthropic_style_image_reaches_gemini_as_a_part(
    servers: dict[str, FakeVendorServer],
) -> None:
    e = entry(servers, "google")
    model = BalancedChatModel(providers=[e], clock=ManualClock())
    model.invoke([HumanMessage(content=[{"type": "text", "text": "what?"}, ANTHROPIC_IMAGE])])
    (request,) = sent_by(servers["google"], e["api_key"])
    parts = request.body["contents"][0]["parts"]
    assert parts[1]["inlineData"]["data"] == PNG
    assert parts[1]["inlineData"]["mime_type"] == "image/png"


def test_media_a_vendor_cannot_take_goes_to_keys_that_can(
    servers: dict[str, FakeVendorServer],
) -> None:
    entries = [entry(servers, v) for v in VENDORS]
    model = BalancedChatModel(providers=entries, clock=ManualClock())
    question = [HumanMessage(content=[{"type": "text", "text": "hear this"}, AUDIO])]
    served = {model.invoke(question).response_metadata["vendor"] for _ in range(4)}
    assert served <= {"openai", "google"}  # Anthropic and Zhipu take no audio
    anthropic_key = entries[1]["api_key"]
    assert sent_by(servers["anthropic"], anthropic_key) == []


def test_media_no_vendor_of_the_pool_takes_is_a_clear_error(
    servers: dict[str, FakeVendorServer],
) -> None:
    e = entry(servers, "anthropic")
    model = BalancedChatModel(providers=[e], clock=ManualClock())
    with pytest.raises(InvalidCallError, match=r"anthropic.*audio"):
        model.invoke([HumanMessage(content=[{"type": "text", "text": "hear"}, AUDIO])])
    assert sent_by(servers["anthropic"], e["api_key"]) == []
    assert model.get_stats()["anthropic-0"]["error_count"] == 0


@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
async def test_zhipu_takes_image_url_as_a_bare_string(
    servers: dict[str, FakeVendorServer], run_async: bool
) -> None:
    e = entry(servers, "zhipu")
    model = BalancedChatModel(providers=[e], clock=ManualClock())
    image = {"type": "image_url", "image_url": "https://example.com/cat.png"}
    question = [HumanMessage(content=[{"type": "text", "text": "see"}, image])]
    reply = await model.ainvoke(question) if run_async else model.invoke(question)
    assert reply.content == "echo: see"
    (request,) = sent_by(servers["zhipu"], e["api_key"])
    part = request.body["messages"][0]["content"][1]
    assert part["image_url"] == {"url": "https://example.com/cat.png"}
