"""Output validators: check what a model wrote and tell it how to do better.

Each validator is a LangChain ``BaseOutputParser``, so it ends an LCEL chain like any parser
(``model | JsonValidator(schema)``), and it also answers ``validate(text)`` with a
``ValidationResult`` instead of raising. When an answer is rejected, the result (and the
``OutputParserException`` that ``parse`` raises) carries a *retry prompt*: a message for the
model that says what was wrong and restates the expected format, which
``BalancedChatModel.with_validation`` sends back, preferably to another provider.
``JsonValidator`` finds JSON in prose or code fences, checks it against a JSON Schema or a
pydantic model and streams partial objects; ``RegexValidator`` checks a pattern;
``TextValidator`` runs a custom check and length bounds. Finding the JSON is
``langchain_pllm.json_search``'s work and checking it against a schema is
``langchain_pllm.schema_check``'s; this module decides and words the verdicts.
"""

from __future__ import annotations

import inspect
import json
import re
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from langchain_core.exceptions import ModelRefusalError, OutputParserException
from langchain_core.messages import BaseMessage, BaseMessageChunk
from langchain_core.output_parsers import BaseOutputParser
from langchain_core.output_parsers.transform import BaseCumulativeTransformOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from langchain_pllm.json_search import NoJsonFound, find_json, kind_name, partial_json
from langchain_pllm.schema_check import (
    check_json_schema,
    check_model,
    is_pydantic_model,
    json_schema_checker,
)

__all__ = [
    "JsonValidator",
    "OutputValidator",
    "RegexValidator",
    "TextValidator",
    "ValidationResult",
]

T = TypeVar("T")

TextCheck = Callable[[str], Any]
"""A custom check: returns a bool (or anything truthy) or a ``(bool, reason)`` pair."""


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """The verdict on one model answer.

    ``value`` is what ``parse`` would return (``None`` when invalid); ``error`` says what was
    wrong and ``retry_prompt`` is the message to send the model for another try (both ``None``
    when valid). A result is truthy exactly when it is valid.
    """

    is_valid: bool
    value: Any = None
    error: str | None = None
    retry_prompt: str | None = None

    def __bool__(self) -> bool:
        return self.is_valid


class _Rejected(Exception):  # an internal verdict
    """Raised inside a validator's check to reject an answer with a reason."""


class OutputValidator(BaseOutputParser[T]):
    """Base of the validators: ``validate`` decides, ``parse`` raises on a rejected answer.

    Subclasses implement ``_check(text)``, returning the parsed value or raising ``_Rejected``
    with the reason, and ``get_format_instructions()``, which the retry prompt repeats.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    def __init__(self, **kwargs: Any) -> None:
        # Declared so type checkers accept the subclasses' fields passed on to pydantic.
        super().__init__(**kwargs)

    def validate(self, text: str | BaseMessage) -> ValidationResult:  # type: ignore[override]
        """Check one answer without raising.

        Args:
            text: The model's answer, or the message carrying it.

        Returns:
            The verdict; when invalid it holds the reason and the retry prompt.
        """
        if isinstance(text, BaseMessage):
            text = text.text
        try:
            value = self._check(text)
        except _Rejected as rejected:
            error = str(rejected)
            return ValidationResult(False, None, error, self.retry_prompt_for(error))
        return ValidationResult(True, value)

    def parse(self, text: str) -> T:
        """Return the validated value of an answer.

        Args:
            text: The model's answer.

        Returns:
            The value (what ``validate(text).value`` holds).

        Raises:
            OutputParserException: The answer was rejected. ``observation`` and the extra
                attribute ``retry_prompt`` hold the message for the model, ``llm_output`` the
                answer, ``validation_result`` the whole verdict; ``send_to_llm`` is true.
        """
        result = self.validate(text)
        if not result.is_valid:
            raise _rejection_error(result, text)
        return cast("T", result.value)

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> T:
        """Validate the first generation; a refusal is raised as ``ModelRefusalError``.

        Args:
            result: Candidate generations; only the first is read.
            partial: Ignored here; ``JsonValidator`` uses it while streaming.

        Returns:
            The validated value.
        """
        generation = result[0]
        if isinstance(generation, ChatGeneration):
            # A refusal is not a format slip: asking again the same way would not fix it.
            _raise_if_refused(generation.message)
        return self.parse(generation.text)

    def retry_prompt_for(self, error: str) -> str:
        """Build the message that asks the model to answer again.

        Args:
            error: What was wrong with the previous answer.

        Returns:
            A prompt naming the problem and restating the expected format.
        """
        return (
            f"Your previous answer was rejected: {error}.\n\n"
            f"What is expected: {self.get_format_instructions()}\n\n"
            "Answer again, fixing this problem and following the instructions exactly."
        )

    @abstractmethod
    def _check(self, text: str) -> T:
        """Return the value of a valid answer or raise ``_Rejected`` with the reason."""


class JsonValidator(OutputValidator[Any], BaseCumulativeTransformOutputParser[Any]):
    """Find JSON in an answer and optionally check it against a schema.

    The answer may be pure JSON, a fenced ```json block, or JSON inside prose; only objects and
    arrays count. With ``strict=True`` nothing but the JSON (and surrounding whitespace) is
    accepted. With a JSON Schema dict the parsed JSON is returned; with a pydantic model, the
    model instance. A schema failure names the path of the field, e.g. ``$.items[2].price``.

    Streaming (``(model | JsonValidator()).stream(...)``) yields partial objects while the text
    arrives, unchecked by the schema, then the validated final value if it differs from the last
    partial one (always, for a pydantic model); an invalid final answer raises at the end.

    Example:
        .. code-block:: python

            validator = JsonValidator({"type": "object", "required": ["name"]})
            validator.parse('Sure: {"name": "Ada"}')  # {"name": "Ada"}
            validator.validate('{"nom": "Ada"}').error
            # "the answer does not match the schema: $.name: required property is missing"
    """

    # Restated: the streaming base, listed second, would otherwise bring back extra="ignore".
    model_config = OutputValidator.model_config

    schema_: dict[str, Any] | type[BaseModel] | None = Field(default=None, alias="schema")
    """JSON Schema dict or pydantic model the JSON must satisfy; ``None`` checks syntax only."""
    strict: bool = False
    """Accept only pure JSON: no prose and no code fence around it."""

    _schema_checker: Any = PrivateAttr(default=None)
    _model_schema: dict[str, Any] | None = PrivateAttr(default=None)

    def __init__(
        self,
        schema: dict[str, Any] | type[BaseModel] | None = None,
        *,
        strict: bool = False,
        **kwargs: Any,
    ) -> None:
        if schema is not None and not isinstance(schema, dict) and not is_pydantic_model(schema):
            msg = (
                f"schema: expected a JSON Schema dict or a pydantic BaseModel subclass, got "
                f"{schema!r}. Pass e.g. {{'type': 'object'}} or a pydantic.BaseModel subclass."
            )
            raise ValueError(msg)
        checker = json_schema_checker(schema) if isinstance(schema, dict) else None
        super().__init__(schema=schema, strict=strict, **kwargs)
        self._schema_checker = checker

    @property
    def _type(self) -> str:
        return "pllm_json_validator"

    def get_format_instructions(self) -> str:
        """Describe the JSON expected, with its schema when one is set.

        Returns:
            Instructions suitable for a prompt.
        """
        parts = [f"Reply with {self._kind_name()}."]
        schema = self._schema_dict()
        if schema is not None:
            parts.append(
                "It must be valid against this JSON Schema (give an instance of the schema, "
                f"not the schema itself):\n```json\n{json.dumps(schema, ensure_ascii=False)}\n```"
            )
        if self.strict:
            parts.append("Output only the JSON: no explanation and no code fence around it.")
        else:
            parts.append("Output only the JSON, or the JSON in one ```json code block.")
        return "\n".join(parts)

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        """Validate the first generation, or while streaming return its partial JSON.

        Args:
            result: Candidate generations; only the first is read.
            partial: Return the JSON parsed so far (unchecked), or ``None`` if none yet.

        Returns:
            The validated value, or the partial JSON.
        """
        if partial:
            return self._parse_partial(result[0].text)
        return super().parse_result(result)

    def _diff(self, prev: Any | None, next: Any) -> Any:
        import jsonpatch  # a langchain-core dependency

        return jsonpatch.make_patch(prev, next).patch

    def _transform(self, input: Iterator[str | BaseMessage]) -> Iterator[Any]:
        accumulated: GenerationChunk | ChatGenerationChunk | None = None
        previous: Any = None
        for chunk in input:
            accumulated = _accumulate(accumulated, chunk)
            partial = self._parse_partial(accumulated.text)
            if partial is not None and partial != previous:
                yield self._diff(previous, partial) if self.diff else partial
                previous = partial
        yield from self._final_chunks(accumulated, previous)

    async def _atransform(
        self,
        input: AsyncIterator[str | BaseMessage],
    ) -> AsyncIterator[Any]:
        accumulated: GenerationChunk | ChatGenerationChunk | None = None
        previous: Any = None
        async for chunk in input:
            accumulated = _accumulate(accumulated, chunk)
            partial = self._parse_partial(accumulated.text)
            if partial is not None and partial != previous:
                yield self._diff(previous, partial) if self.diff else partial
                previous = partial
        for final in self._final_chunks(accumulated, previous):
            yield final

    def _final_chunks(
        self, accumulated: GenerationChunk | ChatGenerationChunk | None, previous: Any
    ) -> Iterator[Any]:
        # Partial values skip the schema; the whole answer must still pass it.
        final = self.parse_result([accumulated or Generation(text="")])
        if isinstance(final, BaseModel):
            yield self._diff(previous, final.model_dump(mode="json")) if self.diff else final
        elif final != previous:
            yield self._diff(previous, final) if self.diff else final

    def _check(self, text: str) -> Any:
        try:
            return find_json(
                text, openers=self._containers, strict=self.strict, check=self._validate_json
            )
        except NoJsonFound as not_found:
            raise _Rejected(str(not_found)) from None

    def _validate_json(self, value: Any) -> Any:
        """Return the value for parsed JSON, or raise ``SchemaMismatch`` with its problems."""
        if isinstance(self.schema_, dict):
            checker = self._schema_checker or json_schema_checker(self.schema_)
            self._schema_checker = checker
            return check_json_schema(checker, value)
        if self.schema_ is not None:
            return check_model(self.schema_, value)
        return value

    def _parse_partial(self, text: str) -> Any:
        return partial_json(text, openers=self._containers, strict=self.strict)

    @property
    def _containers(self) -> str:
        """Opening brackets the schema allows at the top level: ``{``, ``[`` or both."""
        schema = self._schema_dict()
        kind = schema.get("type") if schema else None
        if kind == "object":
            return "{"
        if kind == "array":
            return "["
        return "{["

    def _kind_name(self) -> str:
        return kind_name(self._containers)

    def _schema_dict(self) -> dict[str, Any] | None:
        if self.schema_ is None or isinstance(self.schema_, dict):
            return self.schema_
        # Built once: pydantic takes milliseconds, and streaming asks on every chunk.
        if self._model_schema is None:
            self._model_schema = self.schema_.model_json_schema()
        return self._model_schema


class RegexValidator(OutputValidator[re.Match[str]]):
    r"""Check an answer against a regular expression and return the ``re.Match``.

    Surrounding whitespace of the answer is ignored. By default the pattern may match anywhere
    (``re.search``); ``full_match=True`` requires the whole answer to match.

    Example:
        .. code-block:: python

            email = RegexValidator(r"[\w.+-]+@([\w-]+\.)+\w+", description="an email address")
            email.parse("Write to ada@example.com").group(0)  # "ada@example.com"
    """

    pattern: str
    """The regular expression source."""
    flags: int = 0
    """``re`` flags such as ``re.IGNORECASE``."""
    full_match: bool = False
    """Require the whole (stripped) answer to match, instead of any part of it."""
    description: str | None = None
    """What the pattern stands for, in words for the model, e.g. ``"an email address"``."""

    _compiled: re.Pattern[str] | None = PrivateAttr(default=None)

    def __init__(
        self,
        pattern: str | re.Pattern[str],
        flags: int = 0,
        *,
        full_match: bool = False,
        description: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(pattern, re.Pattern):
            if flags:
                msg = (
                    "flags: a compiled pattern already carries its flags; pass the flags to "
                    "re.compile() or give the pattern as a string with flags=..."
                )
                raise ValueError(msg)
            compiled = pattern
            flags = pattern.flags & ~re.UNICODE  # str patterns get UNICODE anyway
        else:
            compiled = _compile(pattern, flags)
        if not isinstance(compiled.pattern, str):
            msg = "pattern: bytes patterns cannot check text answers; use a str pattern."
            raise ValueError(msg)
        super().__init__(
            pattern=compiled.pattern,
            flags=flags,
            full_match=full_match,
            description=description,
            **kwargs,
        )
        self._compiled = compiled

    @property
    def _type(self) -> str:
        return "pllm_regex_validator"

    def get_format_instructions(self) -> str:
        """Describe the answer the pattern accepts.

        Returns:
            Instructions suitable for a prompt.
        """
        where = "Your whole reply must match" if self.full_match else "Your reply must contain"
        if not self.full_match:
            where += " text matching"
        options = " (case-insensitive)" if self.flags & re.IGNORECASE else ""
        lines = [f"{where} the regular expression `{self.pattern}`{options}."]
        if self.description:
            lines.insert(0, f"Reply with {self.description}.")
        if self.full_match:
            lines.append("Write nothing else.")
        return " ".join(lines)

    def _check(self, text: str) -> re.Match[str]:
        compiled = self._compiled or _compile(self.pattern, self.flags)
        self._compiled = compiled
        stripped = text.strip()
        match = compiled.fullmatch(stripped) if self.full_match else compiled.search(stripped)
        if match is not None:
            return match
        expected = f" (expected {self.description})" if self.description else ""
        if self.full_match:
            raise _Rejected(f"the answer as a whole does not match `{self.pattern}`{expected}")
        raise _Rejected(f"no part of the answer matches `{self.pattern}`{expected}")


class TextValidator(OutputValidator[str]):
    r"""Check an answer with a custom function and optional length bounds; return the text.

    ``func`` takes the (stripped) answer and returns a bool, or ``(bool, reason)`` so the retry
    prompt can say why. Anything truthy counts as valid, so ``pattern.search`` works too. An
    exception inside ``func`` rejects the answer with ``"validator raised <Type>: <message>"``
    rather than crashing the chain. Without ``func`` and bounds every answer is valid.

    Example:
        .. code-block:: python

            def one_word(text: str) -> tuple[bool, str]:
                return len(text.split()) == 1, "reply with a single word"


            TextValidator(one_word, max_length=20).parse(" Paris\n")  # "Paris"
    """

    func: TextCheck | None = None
    """The custom check; ``None`` accepts any text within the length bounds."""
    min_length: int | None = None
    """Fewest characters allowed (after stripping)."""
    max_length: int | None = None
    """Most characters allowed (after stripping)."""
    description: str | None = None
    """What the check wants, in words for the model, e.g. ``"a haiku"``."""
    strip: bool = True
    """Strip surrounding whitespace before checking; the stripped text is returned."""

    def __init__(
        self,
        func: TextCheck | None = None,
        *,
        min_length: int | None = None,
        max_length: int | None = None,
        description: str | None = None,
        **kwargs: Any,
    ) -> None:
        if func is not None and not callable(func):
            msg = f"func: expected a callable taking the answer text, got {func!r}."
            raise ValueError(msg)
        if func is not None and inspect.iscoroutinefunction(func):
            msg = "func: async functions are not supported; pass a plain function."
            raise ValueError(msg)
        for name, bound in (("min_length", min_length), ("max_length", max_length)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)):
                msg = f"{name}: expected an int or None, got {bound!r}."
                raise ValueError(msg)
            if bound is not None and bound < 0:
                msg = f"{name}: must be 0 or more, got {bound}."
                raise ValueError(msg)
        if min_length is not None and max_length is not None and min_length > max_length:
            msg = (
                f"min_length ({min_length}) is greater than max_length ({max_length}); "
                "no answer could pass. Swap them or raise max_length."
            )
            raise ValueError(msg)
        super().__init__(
            func=func,
            min_length=min_length,
            max_length=max_length,
            description=description,
            **kwargs,
        )

    @property
    def _type(self) -> str:
        return "pllm_text_validator"

    def get_format_instructions(self) -> str:
        """Describe the text expected: the description and the length bounds.

        Returns:
            Instructions suitable for a prompt.
        """
        parts = [f"Reply with {self.description}." if self.description else "Reply in text."]
        low, high = self.min_length, self.max_length
        if low is not None and high is not None:
            parts.append(f"The reply must be {low} to {high} characters long.")
        elif low is not None:
            parts.append(f"The reply must be at least {low} characters long.")
        elif high is not None:
            parts.append(f"The reply must be at most {high} characters long.")
        return " ".join(parts)

    def _check(self, text: str) -> str:
        if self.strip:
            text = text.strip()
        if self.min_length is not None and len(text) < self.min_length:
            raise _Rejected(
                f"the answer is {len(text)} characters long; it must be at least {self.min_length}"
            )
        if self.max_length is not None and len(text) > self.max_length:
            raise _Rejected(
                f"the answer is {len(text)} characters long; it must be at most {self.max_length}"
            )
        if self.func is None:
            return text
        try:
            verdict = self.func(text)
        except Exception as exc:  # a user's bug must not crash the chain
            raise _Rejected(f"validator raised {type(exc).__name__}: {exc}") from exc
        reason = None
        if isinstance(verdict, tuple):
            if len(verdict) != 2:
                raise _Rejected(
                    f"validator returned a tuple of {len(verdict)} items; expected (bool, reason)"
                )
            verdict, reason = verdict
        if verdict:
            return text
        if reason:
            raise _Rejected(str(reason))
        wanted = f": expected {self.description}" if self.description else ""
        raise _Rejected(f"the answer failed the check{wanted}")


# --- helpers -----------------------------------------------------------------------------------


def _compile(pattern: str, flags: int) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        msg = f"pattern: expected a str or compiled re.Pattern, got {pattern!r}."
        raise ValueError(msg)
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        msg = (
            f"pattern: {pattern!r} is not a valid regular expression ({exc}). Fix it, or pass "
            "re.escape(text) to match text literally."
        )
        raise ValueError(msg) from exc


def _rejection_error(result: ValidationResult, text: str) -> OutputParserException:
    error = OutputParserException(
        result.error,
        observation=result.retry_prompt,
        llm_output=text,
        send_to_llm=True,
    )
    error.retry_prompt = result.retry_prompt  # type: ignore[attr-defined]
    error.validation_result = result  # type: ignore[attr-defined]
    return error


def _raise_if_refused(message: BaseMessage) -> None:
    for block in message.content_blocks:
        if block["type"] == "refusal":
            raise ModelRefusalError.from_refusal(block, raw_message=message)


def _accumulate(
    accumulated: GenerationChunk | ChatGenerationChunk | None, chunk: str | BaseMessage
) -> GenerationChunk | ChatGenerationChunk:
    piece: GenerationChunk | ChatGenerationChunk
    if isinstance(chunk, BaseMessageChunk):
        piece = ChatGenerationChunk(message=chunk)
    elif isinstance(chunk, BaseMessage):
        piece = ChatGenerationChunk(message=BaseMessageChunk(**chunk.model_dump()))
    else:
        piece = GenerationChunk(text=chunk)
    return piece if accumulated is None else accumulated + piece  # type: ignore[operator]
