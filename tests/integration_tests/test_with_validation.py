"""``with_validation`` over real HTTP: re-asking with the retry prompt, on another provider."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.prompts import ChatPromptTemplate
from pydantic import BaseModel

from langchain_pllm import BalancedChatModel, JsonValidator, RegexValidator, TextValidator
from langchain_pllm.exceptions import ValidationFailedError
from langchain_pllm.testing import FakeOpenAIServer, Reply

# One transport (tests/integration_tests/conftest.py): validators read intact replies.
pytestmark = pytest.mark.one_transport


class Person(BaseModel):
    name: str
    age: int


def _last_user_text(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


@pytest.fixture
def servers() -> Iterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        yield a, b


def _model(a: FakeOpenAIServer, b: FakeOpenAIServer) -> BalancedChatModel:
    return BalancedChatModel(
        providers=[
            {
                "vendor": "openai",
                "name": "a",
                "api_key": "sk-a",
                "model": "m",
                "api_base": a.base_url,
            },
            {
                "vendor": "openai",
                "name": "b",
                "api_key": "sk-b",
                "model": "m",
                "api_base": b.base_url,
            },
        ],
        max_retries=0,
    )


def test_valid_the_first_time(servers: tuple[FakeOpenAIServer, FakeOpenAIServer]) -> None:
    a, b = servers
    for srv in servers:
        srv.set_responder(lambda body: Reply(text='Sure: {"name": "Ada", "age": 36}'))
    value = _model(a, b).with_validation(JsonValidator(Person)).invoke("who?")
    assert value == Person(name="Ada", age=36)
    assert len(a.requests) + len(b.requests) == 1


def test_valid_after_a_retry_on_another_provider_with_the_retry_prompt(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer],
) -> None:
    a, b = servers
    # Provider a always answers with prose; b answers with JSON.
    a.set_responder(lambda body: Reply(text="Ada is thirty-six."))
    b.set_responder(lambda body: Reply(text='{"name": "Ada", "age": 36}'))
    model = _model(a, b)
    value = model.with_validation(JsonValidator(Person), max_retries=2).invoke("who?")
    assert value == Person(name="Ada", age=36)
    # The first request went to a (fewest active, then least recently used: index order).
    assert len(a.requests) == 1
    assert len(b.requests) == 1
    retry = b.requests[0].body["messages"]
    assert [m["role"] for m in retry] == ["user", "assistant", "user"]
    assert retry[1]["content"] == "Ada is thirty-six."
    prompt = _last_user_text(b.requests[0].body)
    assert "no JSON object was found" in prompt
    assert "name" in prompt  # what is expected: the schema's fields
    stats = model.get_stats()
    assert stats["a"]["validation_failures"] == 1
    assert stats["b"]["validation_failures"] == 0


def test_retries_exhausted_keep_every_attempt(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer],
) -> None:
    a, b = servers
    for srv in servers:
        srv.set_responder(lambda body: Reply(text="no digits here"))
    runnable = _model(a, b).with_validation(RegexValidator(r"\d{3}-\d{4}"), max_retries=2)
    with pytest.raises(ValidationFailedError) as info:
        runnable.invoke("phone?")
    attempts = info.value.attempts
    assert len(attempts) == 3
    assert all(x["output"] == "no digits here" for x in attempts)
    assert all("\\d{3}-\\d{4}" in x["error"] for x in attempts)
    assert {x["provider"] for x in attempts} == {"a", "b"}
    assert len(a.requests) + len(b.requests) == 3


def test_text_validator_with_a_custom_check(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer],
) -> None:
    a, b = servers
    a.set_responder(lambda body: Reply(text="a very long and rambling answer"))
    b.set_responder(lambda body: Reply(text="short"))

    def one_word(text: str) -> tuple[bool, str]:
        return (len(text.split()) == 1, "answer with exactly one word")

    value = _model(a, b).with_validation(TextValidator(one_word)).invoke("one word please")
    assert value == "short"
    assert "exactly one word" in _last_user_text(b.requests[0].body)


def test_batch_validates_each_item_on_its_own_in_order(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer],
) -> None:
    a, b = servers

    def answer(body: dict[str, Any]) -> Reply:
        first = str(body["messages"][0]["content"])
        n = first.rsplit(" ", 1)[-1]
        if len(body["messages"]) == 1 and int(n) % 2:
            return Reply(text=f"number {n}, in words")  # odd items fail the first time
        return Reply(text=f'{{"n": {n}}}')

    for srv in servers:
        srv.set_responder(answer)
    runnable = _model(a, b).with_validation(JsonValidator(), max_retries=1)
    inputs = [f"item {i}" for i in range(20)]
    assert runnable.batch(inputs, config={"max_concurrency": 5}) == [{"n": i} for i in range(20)]
    assert len(a.requests) + len(b.requests) == 30  # 20 first tries + 10 retries


async def test_async_and_inside_an_lcel_pipeline(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer],
) -> None:
    a, b = servers
    a.set_responder(lambda body: Reply(text="nope"))
    b.set_responder(lambda body: Reply(text="code: 4242"))
    prompt = ChatPromptTemplate.from_messages([("user", "give a code for {who}")])
    chain = prompt | _model(a, b).with_validation(RegexValidator(r"code: (\d+)"))
    match = await chain.ainvoke({"who": "me"})
    assert match.group(1) == "4242"
    results = await chain.abatch([{"who": "x"}, {"who": "y"}])
    assert [m.group(1) for m in results] == ["4242", "4242"]


def test_bad_arguments_are_clear_errors(
    servers: tuple[FakeOpenAIServer, FakeOpenAIServer],
) -> None:
    model = _model(*servers)
    with pytest.raises(ValueError, match="max_retries"):
        model.with_validation(JsonValidator(), max_retries=-1)
    with pytest.raises(TypeError, match="validator must be"):
        model.with_validation("json")
