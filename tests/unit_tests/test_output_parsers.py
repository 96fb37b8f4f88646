"""Validators as output parsers: verdicts, retry prompts, LCEL use and streaming."""

from __future__ import annotations

import dataclasses
import pickle
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from langchain_core.exceptions import ModelRefusalError, OutputParserException
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import RunnableGenerator, RunnableLambda
from pydantic import BaseModel

from langchain_pllm.output_parsers import (
    JsonValidator,
    RegexValidator,
    TextValidator,
    ValidationResult,
)

EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
PHONE = r"\+?(\d{1,3})?[ -]?\(?(\d{3})\)?[ -]?(\d{3})[ -]?(\d{4})"

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer": {"type": "string"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "price": {"type": "number"}},
                "required": ["name", "price"],
            },
        },
    },
    "required": ["customer", "items"],
}


class Item(BaseModel):
    name: str
    price: float


class Order(BaseModel):
    customer: str
    items: list[Item]


def _stream_of(*pieces: str) -> RunnableGenerator:
    """A runnable that streams the given pieces, like a chat model's text stream."""

    def generate(_: Iterator[Any]) -> Iterator[str]:
        yield from pieces

    async def agenerate(_: AsyncIterator[Any]) -> AsyncIterator[str]:
        for piece in pieces:
            yield piece

    return RunnableGenerator(generate, agenerate)


# --- JsonValidator: finding JSON ---------------------------------------------------------------


def test_json_valid_object() -> None:
    result = JsonValidator().validate('{"name": "Ada", "age": 36}')
    assert result == ValidationResult(True, {"name": "Ada", "age": 36}, None, None)
    assert result


def test_json_valid_array() -> None:
    assert JsonValidator().parse(' [1, {"a": 2}, "x"]\n') == [1, {"a": 2}, "x"]


def test_json_syntax_error_names_the_problem_and_position() -> None:
    result = JsonValidator().validate('{"a": 1, "b": 2,}')
    assert not result.is_valid
    assert result.value is None
    assert "not valid JSON" in result.error
    assert "line 1, column 17" in result.error


def test_json_single_quotes_are_a_syntax_error_not_no_json() -> None:
    result = JsonValidator().validate("Here you go: {'a': 1}")
    assert not result.is_valid
    assert "not valid JSON" in result.error
    assert "double quotes" in result.error


def test_json_in_prose() -> None:
    text = 'Sure! The record is {"id": 7, "tags": ["x", "y"]}. Anything else?'
    assert JsonValidator().parse(text) == {"id": 7, "tags": ["x", "y"]}


def test_json_in_code_fences() -> None:
    fenced = 'Result:\n```json\n{"ok": true}\n```\nDone.'
    bare = "```\n[1, 2, 3]\n```"
    inline = '```{"k": null}```'
    assert JsonValidator().parse(fenced) == {"ok": True}
    assert JsonValidator().parse(bare) == [1, 2, 3]
    assert JsonValidator().parse(inline) == {"k": None}


def test_json_fenced_block_wins_over_other_code_blocks() -> None:
    text = 'Code:\n```python\nx = {1: 2}\n```\nData:\n```json\n{"x": 2}\n```'
    assert JsonValidator().parse(text) == {"x": 2}


def test_json_brackets_inside_strings_do_not_confuse_the_scan() -> None:
    text = 'Answer: {"expr": "a[0] } { b]", "n": 1} -- and a stray ] at the end'
    assert JsonValidator().parse(text) == {"expr": "a[0] } { b]", "n": 1}


def test_json_object_preferred_over_a_cited_array_in_prose() -> None:
    text = 'As shown in [1], the answer is {"value": 42}.'
    assert JsonValidator().parse(text) == {"value": 42}


def test_json_array_in_prose_keeps_its_elements_together() -> None:
    assert JsonValidator().parse('The list: [{"a": 1}, {"a": 2}] as asked.') == [
        {"a": 1},
        {"a": 2},
    ]


def test_json_stray_quote_in_prose_does_not_hide_the_json() -> None:
    assert JsonValidator().parse('He said "hi [there]. {"a": 1}') == {"a": 1}


def test_json_no_json_found() -> None:
    result = JsonValidator().validate("I am sorry, I cannot produce that.")
    assert not result.is_valid
    assert result.error == "no JSON object or array was found in the answer"


def test_json_cut_off_answer_is_reported_as_cut_off() -> None:
    result = JsonValidator().validate('Here: {"a": 1, "b": [1, 2')
    assert not result.is_valid
    assert "cut off" in result.error
    assert "'{' is never closed" in result.error


def test_json_empty_and_scalar_answers_are_refused() -> None:
    empty = JsonValidator().validate("  \n")
    scalar = JsonValidator().validate("42")
    assert "empty" in empty.error
    assert scalar.error == "the answer is a JSON number; expected a JSON object or array"


def test_json_bracket_laden_prose_stays_fast() -> None:
    # One linear pass: 100,000 unclosed brackets must not cost a scan each.
    result = JsonValidator().validate("[" * 100_000)
    assert "cut off" in result.error
    assert JsonValidator().parse("[1] " * 5_000 + '{"a": 1}') == {"a": 1}


# --- JsonValidator: strict mode ----------------------------------------------------------------


def test_json_strict_accepts_pure_json() -> None:
    assert JsonValidator(strict=True).parse('\n  {"a": [1, 2]}  \n') == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ('Here it is: {"a": 1}', "starts with text"),
        ('```json\n{"a": 1}\n```', "starts with a code fence"),
    ],
)
def test_json_strict_refuses_anything_around_the_json(text: str, found: str) -> None:
    result = JsonValidator(strict=True).validate(text)
    assert not result.is_valid
    assert "pure JSON" in result.error
    assert found in result.error
    assert JsonValidator(strict=False).parse(text) == {"a": 1}


def test_json_strict_refuses_trailing_text() -> None:
    result = JsonValidator(strict=True).validate('{"a": 1} Hope this helps!')
    assert not result.is_valid
    assert "Extra data" in result.error


# --- JsonValidator: schemas --------------------------------------------------------------------


def test_json_schema_success_returns_the_parsed_json() -> None:
    text = '{"customer": "Ada", "items": [{"name": "tea", "price": 2.5}]}'
    assert JsonValidator(ORDER_SCHEMA).parse(text) == {
        "customer": "Ada",
        "items": [{"name": "tea", "price": 2.5}],
    }


def test_json_schema_failure_names_the_path_of_the_field() -> None:
    text = (
        '{"customer": "Ada", "items": [{"name": "tea", "price": 2}, {"name": "jam", '
        '"price": 3}, {"name": "cake", "price": "cheap"}]}'
    )
    result = JsonValidator(ORDER_SCHEMA).validate(text)
    assert not result.is_valid
    assert "$.items[2].price: 'cheap' is not of type 'number'" in result.error


def test_json_schema_missing_property_path() -> None:
    result = JsonValidator(ORDER_SCHEMA).validate('{"items": [{"name": "tea"}]}')
    assert not result.is_valid
    assert "$.customer: required property is missing" in result.error
    assert "$.items[0].price: required property is missing" in result.error


def test_json_schema_picks_the_candidate_that_passes() -> None:
    text = 'For example {"x": 1}. My answer: {"customer": "Bo", "items": []}'
    assert JsonValidator(ORDER_SCHEMA).parse(text) == {"customer": "Bo", "items": []}


def test_json_pydantic_model_success_returns_an_instance() -> None:
    order = JsonValidator(Order).parse(
        'Done:\n```json\n{"customer": "Ada", "items": [{"name": "tea", "price": "2.5"}]}\n```'
    )
    assert order == Order(customer="Ada", items=[Item(name="tea", price=2.5)])


def test_json_pydantic_model_failure_names_the_path() -> None:
    text = '{"customer": "Ada", "items": [{"name": "tea", "price": 1}, {"name": "jam"}]}'
    result = JsonValidator(Order).validate(text)
    assert not result.is_valid
    assert "$.items[1].price: required property is missing" in result.error
    bad_type = JsonValidator(Order).validate(
        '{"customer": "Ada", "items": [{"name": "t", "price": "x"}]}'
    )
    assert "$.items[0].price: Input should be a valid number" in bad_type.error
    assert "(got 'x')" in bad_type.error


def test_json_array_schema_looks_for_arrays_only() -> None:
    validator = JsonValidator({"type": "array", "items": {"type": "integer"}})
    assert validator.parse('Numbers {"not": "this"}: [3, 1, 2]') == [3, 1, 2]
    assert "a JSON array" in validator.get_format_instructions()


def test_json_bad_schema_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match=r"schema: not a valid JSON Schema at \$\.type"):
        JsonValidator({"type": 5})
    with pytest.raises(ValueError, match="schema: expected a JSON Schema dict or a pydantic"):
        JsonValidator(int)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strct"):
        JsonValidator(strct=True)


def test_json_format_instructions_carry_the_schema() -> None:
    instructions = JsonValidator(Order).get_format_instructions()
    assert "a JSON object" in instructions
    assert '"customer"' in instructions
    assert '"price"' in instructions
    assert "not the schema itself" in instructions
    assert "no code fence" in JsonValidator(strict=True).get_format_instructions()


# --- retry prompts and the exception -----------------------------------------------------------


def test_json_retry_prompt_says_what_was_wrong_and_what_is_expected() -> None:
    validator = JsonValidator(ORDER_SCHEMA)
    result = validator.validate('{"customer": "Ada", "items": [{"name": "tea", "price": "2"}]}')
    prompt = result.retry_prompt
    assert prompt is not None
    assert result.error in prompt
    assert "$.items[0].price" in prompt
    assert validator.get_format_instructions() in prompt
    assert '"required": ["customer", "items"]' in prompt
    assert prompt == validator.retry_prompt_for(result.error)


def test_parse_raises_output_parser_exception_carrying_the_retry_prompt() -> None:
    validator = JsonValidator(Order)
    text = '{"customer": 5}'
    with pytest.raises(OutputParserException) as caught:
        validator.parse(text)
    error = caught.value
    verdict = validator.validate(text)
    assert error.llm_output == text
    assert error.send_to_llm is True
    assert error.observation == verdict.retry_prompt
    assert error.retry_prompt == verdict.retry_prompt  # type: ignore[attr-defined]
    assert error.validation_result == verdict  # type: ignore[attr-defined]
    assert verdict.error in str(error)
    assert "$.customer" in str(error)


def test_validation_result_is_a_frozen_record() -> None:
    result = ValidationResult(False, None, "bad", "fix it")
    assert not result
    assert (result.is_valid, result.value, result.error, result.retry_prompt) == (
        False,
        None,
        "bad",
        "fix it",
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.is_valid = True  # type: ignore[misc]


# --- LCEL use and streaming --------------------------------------------------------------------


def test_json_in_lcel_chain_invoke_batch_stream() -> None:
    chain = RunnableLambda(lambda _: '{"a": 1}') | JsonValidator()
    assert chain.invoke("x") == {"a": 1}
    assert chain.batch(["x", "y"]) == [{"a": 1}, {"a": 1}]
    assert list(chain.stream("x")) == [{"a": 1}]


async def test_json_in_lcel_chain_async() -> None:
    chain = RunnableLambda(lambda _: "ok ```json\n[1, 2]\n```") | JsonValidator()
    assert await chain.ainvoke("x") == [1, 2]
    assert await chain.abatch(["x"]) == [[1, 2]]
    assert [chunk async for chunk in chain.astream("x")] == [[1, 2]]


def test_json_invalid_in_chain_raises_with_retry_prompt() -> None:
    chain = RunnableLambda(lambda _: "no json today") | JsonValidator()
    with pytest.raises(OutputParserException) as caught:
        chain.invoke("x")
    assert "no JSON object or array" in caught.value.observation


def test_json_reads_ai_messages_and_raises_refusals() -> None:
    validator = JsonValidator()
    assert validator.invoke(AIMessage(content='{"x": 1}')) == {"x": 1}
    assert validator.validate(AIMessage(content="[true]")).value == [True]
    refusal = AIMessage(content=[{"type": "refusal", "refusal": "I can't help with that"}])
    with pytest.raises(ModelRefusalError, match="I can't help with that"):
        validator.invoke(refusal)


def test_json_streams_partial_objects_then_the_final_value() -> None:
    pieces = ['Sure:\n```json\n{"na', 'me": "Ad', 'a", "langs": ["en"', ', "fr"]}\n```']
    chunks = list((_stream_of(*pieces) | JsonValidator()).stream(None))
    assert chunks == [
        {},
        {"name": "Ad"},
        {"name": "Ada", "langs": ["en"]},
        {"name": "Ada", "langs": ["en", "fr"]},
    ]


def test_json_streaming_ai_message_chunks() -> None:
    message_chunks = [AIMessageChunk(content='{"x"'), AIMessageChunk(content=": [1, 2]}")]
    assert list(JsonValidator().transform(iter(message_chunks))) == [{}, {"x": [1, 2]}]


def test_json_streaming_with_a_model_yields_the_validated_instance_last() -> None:
    pieces = ['{"customer": "Ada", ', '"items": [{"name": "tea", ', '"price": 2}]}']
    chunks = list((_stream_of(*pieces) | JsonValidator(Order)).stream(None))
    assert chunks[0] == {"customer": "Ada"}
    assert chunks[-1] == Order(customer="Ada", items=[Item(name="tea", price=2)])
    assert all(isinstance(chunk, dict) for chunk in chunks[:-1])


def test_json_streaming_raises_when_the_final_answer_fails_the_schema() -> None:
    stream = _stream_of('{"customer": ', '"Ada"}') | JsonValidator(Order)
    seen = []
    with pytest.raises(OutputParserException) as caught:
        seen.extend(stream.stream(None))
    assert seen == [{}, {"customer": "Ada"}]
    assert "$.items: required property is missing" in caught.value.observation


async def test_json_astream_partial_objects() -> None:
    stream = _stream_of('{"a": 1, ', '"b": 2}') | JsonValidator()
    chunks = [chunk async for chunk in stream.astream(None)]
    assert chunks == [{"a": 1}, {"a": 1, "b": 2}]


def test_json_streaming_diff_mode_yields_json_patches() -> None:
    patches = list(JsonValidator(diff=True).transform(iter(['{"x": 1', ', "y": 2}'])))
    assert patches == [
        [{"op": "replace", "path": "", "value": {"x": 1}}],
        [{"op": "add", "path": "/y", "value": 2}],
    ]


def test_validators_pickle_and_repr() -> None:
    json_validator = pickle.loads(pickle.dumps(JsonValidator(Order, strict=True)))
    assert json_validator.strict is True
    assert json_validator.parse('{"customer": "A", "items": []}') == Order(customer="A", items=[])
    regex = pickle.loads(pickle.dumps(RegexValidator(PHONE)))
    assert regex.parse("555 123 4567").group(4) == "4567"
    assert "Order" in repr(JsonValidator(Order))
    assert "lambda" in repr(TextValidator(lambda text: True))
    assert JsonValidator().asdict()["_type"] == "pllm_json_validator"


# --- RegexValidator ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write to ada.lovelace@example.co.uk today", "ada.lovelace@example.co.uk"),
        ("bob+news@mail.example.com", "bob+news@mail.example.com"),
        ("no address here", None),
        ("ada@localhost", None),
    ],
)
def test_regex_email_pattern(text: str, expected: str | None) -> None:
    result = RegexValidator(EMAIL, description="an email address").validate(text)
    assert result.is_valid is (expected is not None)
    if expected is None:
        assert "expected an email address" in result.error
    else:
        assert result.value.group(0) == expected


def test_regex_phone_pattern_groups() -> None:
    match = RegexValidator(PHONE, full_match=True).parse(" +1 (415) 555-0199\n")
    assert match.groups() == ("1", "415", "555", "0199")
    assert RegexValidator(PHONE, full_match=True).validate("call 415-555-0199").is_valid is False


def test_regex_search_versus_full_match() -> None:
    assert RegexValidator(r"\d+").parse("order 66 done").group(0) == "66"
    result = RegexValidator(r"\d+", full_match=True).validate("order 66 done")
    assert not result.is_valid
    assert "as a whole does not match" in result.error


def test_regex_compiled_pattern() -> None:
    validator = RegexValidator(re.compile(r"ID-(\d+)", re.IGNORECASE))
    assert validator.parse("your id-42").group(1) == "42"
    assert validator.pattern == r"ID-(\d+)"
    assert validator.flags & re.IGNORECASE


def test_regex_case_insensitive_flag() -> None:
    assert RegexValidator("yes|no", re.IGNORECASE, full_match=True).parse("YES").group(0) == "YES"
    assert not RegexValidator("yes|no", full_match=True).validate("YES").is_valid
    assert "(case-insensitive)" in RegexValidator("yes", re.I).get_format_instructions()


def test_regex_retry_prompt_shows_pattern_and_description() -> None:
    validator = RegexValidator(r"\d{4}-\d{2}-\d{2}", full_match=True, description="an ISO date")
    result = validator.validate("next Tuesday")
    assert result.retry_prompt is not None
    assert r"`\d{4}-\d{2}-\d{2}`" in result.retry_prompt
    assert "an ISO date" in result.retry_prompt
    assert "Write nothing else" in result.retry_prompt
    assert result.error in result.retry_prompt


def test_regex_bad_construction() -> None:
    with pytest.raises(ValueError, match="flags: a compiled pattern already carries its flags"):
        RegexValidator(re.compile("a"), re.IGNORECASE)
    with pytest.raises(ValueError, match=r"pattern: '\(ab' is not a valid regular expression"):
        RegexValidator("(ab")
    with pytest.raises(ValueError, match="bytes patterns"):
        RegexValidator(re.compile(b"a"))  # type: ignore[arg-type]


def test_regex_in_a_streaming_chain_checks_the_whole_text() -> None:
    chain = _stream_of("call 555", "-0199 now") | RegexValidator(r"(\d{3})-(\d{4})")
    chunks = list(chain.stream(None))
    assert len(chunks) == 1
    assert chunks[0].groups() == ("555", "0199")


# --- TextValidator -----------------------------------------------------------------------------


def test_text_custom_function_success_returns_stripped_text() -> None:
    validator = TextValidator(lambda text: text.endswith("?"))
    assert validator.parse("  Why not?\n") == "Why not?"


def test_text_custom_function_failure_with_reason() -> None:
    def one_word(text: str) -> tuple[bool, str]:
        return len(text.split()) == 1, f"reply with one word, not {len(text.split())}"

    result = TextValidator(one_word, description="a single word").validate("Paris, France")
    assert not result.is_valid
    assert result.error == "reply with one word, not 2"
    assert "reply with one word, not 2" in result.retry_prompt
    assert "Reply with a single word." in result.retry_prompt


def test_text_custom_function_failure_without_reason() -> None:
    result = TextValidator(str.isupper, description="capital letters").validate("quiet")
    assert result.error == "the answer failed the check: expected capital letters"


def test_text_exception_in_function_is_a_failed_validation() -> None:
    def fussy(text: str) -> bool:
        raise ValueError(f"cannot judge {text!r}")

    result = TextValidator(fussy).validate("hello")
    assert not result.is_valid
    assert result.error == "validator raised ValueError: cannot judge 'hello'"
    with pytest.raises(OutputParserException) as caught:
        TextValidator(fussy).parse("hello")
    assert "validator raised ValueError" in caught.value.observation


def test_text_no_function_means_always_valid() -> None:
    validator = TextValidator()
    for text in ("", "anything at all", "{}"):
        assert validator.validate(text).is_valid


def test_text_truthy_results_count_as_valid() -> None:
    validator = TextValidator(re.compile(r"\bcat\b").search)
    assert validator.validate("the cat sat").is_valid
    assert not validator.validate("concatenate").is_valid


def test_text_length_bounds() -> None:
    validator = TextValidator(min_length=3, max_length=5)
    assert validator.parse(" abcd ") == "abcd"
    too_short = validator.validate("ab")
    too_long = validator.validate("abcdef")
    assert too_short.error == "the answer is 2 characters long; it must be at least 3"
    assert too_long.error == "the answer is 6 characters long; it must be at most 5"
    assert "3 to 5 characters long" in too_long.retry_prompt


def test_text_bad_construction() -> None:
    with pytest.raises(ValueError, match=r"min_length \(5\) is greater than max_length \(2\)"):
        TextValidator(min_length=5, max_length=2)
    with pytest.raises(ValueError, match="func: expected a callable"):
        TextValidator("not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length: must be 0 or more"):
        TextValidator(max_length=-1)

    async def async_check(text: str) -> bool:
        return True

    with pytest.raises(ValueError, match="func: async functions are not supported"):
        TextValidator(async_check)


def test_text_validator_in_a_chain() -> None:
    chain = RunnableLambda(lambda _: AIMessage(content=" done \n")) | TextValidator(max_length=4)
    assert chain.invoke("x") == "done"
    assert chain.batch(["x", "y"]) == ["done", "done"]


def test_output_types() -> None:
    assert RegexValidator("a").OutputType == re.Match[str]
    assert TextValidator().OutputType is str
    assert JsonValidator()._type == "pllm_json_validator"
    assert RegexValidator("a")._type == "pllm_regex_validator"
    assert TextValidator()._type == "pllm_text_validator"
