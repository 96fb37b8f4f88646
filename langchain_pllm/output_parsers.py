"""Output validators: check what a model wrote and tell it how to do better.

Each validator is a LangChain ``BaseOutputParser``, so it ends an LCEL chain like any parser
(``model | JsonValidator(schema)``), and it also answers ``validate(text)`` with a
``ValidationResult`` instead of raising. When an answer is rejected, the result (and the
``OutputParserException`` that ``parse`` raises) carries a *retry prompt*: a message for the
model that says what was wrong and restates the expected format, which
``BalancedChatModel.with_validation`` sends back, preferably to another provider.
``JsonValidator`` finds JSON in prose or code fences, checks it against a JSON Schema or a
pydantic model and streams partial objects; ``RegexValidator`` checks a pattern;
``TextValidator`` runs a custom check and length bounds.
"""

from __future__ import annotations

import inspect
import json
import re
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar, cast

from langchain_core.exceptions import ModelRefusalError, OutputParserException
from langchain_core.messages import BaseMessage, BaseMessageChunk
from langchain_core.output_parsers import BaseOutputParser
from langchain_core.output_parsers.transform import BaseCumulativeTransformOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk
from langchain_core.utils.json import parse_partial_json
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from pydantic import ValidationError as PydanticValidationError

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
        if schema is not None and not isinstance(schema, dict) and not _is_pydantic_model(schema):
            msg = (
                f"schema: expected a JSON Schema dict or a pydantic BaseModel subclass, got "
                f"{schema!r}. Pass e.g. {{'type': 'object'}} or a pydantic.BaseModel subclass."
            )
            raise ValueError(msg)
        checker = _build_schema_checker(schema) if isinstance(schema, dict) else None
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
        stripped = text.strip()
        if not stripped:
            raise _Rejected(f"the answer is empty; expected {self._kind_name()}")
        search = _JsonSearch(self)
        value = search.try_candidate(stripped, "the answer", whole=True)
        if value is not _NOT_FOUND or self.strict:
            return value if value is not _NOT_FOUND else search.reject_strict(stripped)
        for fence in _FENCE_RE.finditer(text):
            if fence.group(1).lower() in ("", "json", "json5", "jsonc"):
                value = search.try_candidate(fence.group(2).strip(), "the ```json block")
                if value is not _NOT_FOUND:
                    return value
        # An object wins over an earlier array: prose cites "[1]" far more often than it
        # wraps the answer in a bare array. Spans inside an accepted array are its elements.
        first_array: Any = _NOT_FOUND
        covered_until = 0
        for start, end in _bracket_spans(text, self._containers):
            if start < covered_until:
                continue
            where = f"the JSON starting at character {start}"
            value = search.try_candidate(text[start:end], where)
            if value is _NOT_FOUND:
                continue
            if text[start] == "{" or "{" not in self._containers:
                return value
            if first_array is _NOT_FOUND:
                first_array = value
            covered_until = end
        return first_array if first_array is not _NOT_FOUND else search.reject()

    def _validate_json(self, value: Any) -> Any:
        """Return the value for parsed JSON, or raise ``_Rejected`` with its schema errors."""
        if isinstance(self.schema_, dict):
            checker = self._schema_checker or _build_schema_checker(self.schema_)
            self._schema_checker = checker
            errors = sorted(checker.iter_errors(value), key=_jsonschema_relevance())
            if errors:
                raise _Rejected(_summarise([_describe_jsonschema_error(e) for e in errors]))
            return value
        if self.schema_ is not None:
            try:
                return self.schema_.model_validate(value)
            except PydanticValidationError as exc:
                raise _Rejected(
                    _summarise([_describe_pydantic_error(e) for e in exc.errors()])
                ) from exc
        return value

    def _parse_partial(self, text: str) -> Any:
        start = _partial_json_start(text, self._containers, strict=self.strict)
        if start is None:
            return None
        body = text[start:]
        end, _ = _bracket_end(body, 0)
        if end is not None:
            body = body[:end]
        elif "```" in body:
            body = body[: body.index("```")]
        try:
            return parse_partial_json(body)
        except ValueError:
            return None

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
        return {"{": "a JSON object", "[": "a JSON array"}.get(
            self._containers, "a JSON object or array"
        )

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


# --- JSON search -------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)```", re.DOTALL)
_JSON_TOKEN_RE = re.compile(r'\\.|["{}\[\]]', re.DOTALL)
_CLOSING = {"{": "}", "[": "]"}
_MAX_QUOTED_OPENERS = 32  # each costs a scan to the end of the text
_MAX_PARSE_ATTEMPTS = 256  # each costs a json.loads of its candidate
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_NOT_FOUND = object()


class _JsonSearch:
    """Tries JSON candidates in order and remembers why the first failures failed."""

    def __init__(self, validator: JsonValidator) -> None:
        self.validator = validator
        self.tried: set[str] = set()
        self.syntax_error: str | None = None
        self.schema_error: str | None = None
        self.scalar_error: str | None = None
        self.attempts = 0

    def try_candidate(self, candidate: str, where: str, *, whole: bool = False) -> Any:
        """Return the value if ``candidate`` is acceptable JSON, else ``_NOT_FOUND``."""
        if not candidate or candidate in self.tried or self.attempts >= _MAX_PARSE_ATTEMPTS:
            return _NOT_FOUND
        self.tried.add(candidate)
        self.attempts += 1
        try:
            parsed = json.loads(candidate, strict=self.validator.strict)
        except (ValueError, RecursionError) as exc:
            # Prose that merely is not JSON says nothing; broken JSON says what to fix.
            if (candidate[0] in "{[" or not whole) and self.syntax_error is None:
                self.syntax_error = _syntax_error_text(candidate, where, exc)
            return _NOT_FOUND
        if not isinstance(parsed, (dict, list)):
            if whole:
                self.scalar_error = (
                    f"the answer is a JSON {_json_type_name(parsed)}; "
                    f"expected {self.validator._kind_name()}"
                )
            return _NOT_FOUND
        try:
            return self.validator._validate_json(parsed)
        except _Rejected as rejected:
            if self.schema_error is None:
                self.schema_error = f"{where} does not match the schema: {rejected}"
            return _NOT_FOUND

    def reject_strict(self, stripped: str) -> NoReturn:
        """Reject a strict answer: only the whole answer counted."""
        error = self.schema_error or self.scalar_error or self.syntax_error
        if error is None:
            found = "a code fence" if stripped.startswith("```") else "text"
            error = (
                f"the answer must be pure JSON ({self.validator._kind_name()}) with nothing "
                f"around it, but it starts with {found}"
            )
        raise _Rejected(error)

    def reject(self) -> NoReturn:
        """Raise the most telling reason why no candidate was accepted."""
        error = self.schema_error or self.syntax_error or self.scalar_error
        raise _Rejected(error or f"no {self.validator._kind_name()[2:]} was found in the answer")


def _bracket_spans(text: str, openers: str) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` of each balanced ``{...}``/``[...]`` span, in order of start.

    One pass matches every bracket, skipping brackets inside JSON strings, so bracket-laden
    prose costs linear time. The first bracket left open at the end yields ``(start,
    len(text))`` too, so that a cut-off answer is reported as such, not as "no JSON found".
    """
    spans: list[tuple[int, int]] = []
    quoted_openers: list[int] = []
    stack: list[tuple[int, str]] = []
    in_string = False
    for token in _JSON_TOKEN_RE.finditer(text):
        char = token.group()
        if not stack:
            # Outside any bracket this is prose: its quotes and closers mean nothing.
            if char in _CLOSING:
                stack.append((token.start(), _CLOSING[char]))
        elif char[0] == "\\":
            continue
        elif char == '"':
            in_string = not in_string
        elif in_string:
            if char in openers:
                quoted_openers.append(token.start())
        elif char in _CLOSING:
            stack.append((token.start(), _CLOSING[char]))
        elif char == stack[-1][1]:
            start, _ = stack.pop()
            spans.append((start, token.end()))
        else:
            stack.clear()  # a mismatched closer ends every bracket still open
    cut_off = [start for start, _ in stack if text[start] in openers][:1]
    spans.extend((start, len(text)) for start in cut_off)
    # A bracket that sat inside a "string" may be real JSON after a stray quote in prose,
    # e.g. 'he said "hi [1]... {"a": 1}'; scan a few of those on their own.
    for start in quoted_openers[:_MAX_QUOTED_OPENERS]:
        end, _ = _bracket_end(text, start)
        if end is not None:
            spans.append((start, end))
    yield from sorted(span for span in spans if text[span[0]] in openers)


def _bracket_end(text: str, start: int) -> tuple[int | None, bool]:
    """Find the bracket closing ``text[start]``, skipping brackets inside JSON strings.

    Returns:
        ``(index just past it, False)``; ``(None, True)`` if the text ends first (cut off);
        ``(None, False)`` on a mismatched closing bracket.
    """
    stack: list[str] = []
    in_string = False
    for token in _JSON_TOKEN_RE.finditer(text, start):
        char = token.group()
        if char[0] == "\\":
            continue
        if char == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif char in _CLOSING:
            stack.append(_CLOSING[char])
        elif not stack or stack.pop() != char:
            return None, False
        elif not stack:
            return token.end(), False
    return None, True


def _partial_json_start(text: str, openers: str, *, strict: bool) -> int | None:
    """Where the JSON begins in a partial answer, or ``None`` if it has not begun yet."""
    stripped = text.lstrip()
    offset = len(text) - len(stripped)
    if strict:
        return offset if stripped[:1] in openers and stripped else None
    fence = re.search(r"```[ \t]*(?:json\w*)?[ \t]*\n", text, re.IGNORECASE)
    search_from = fence.end() if fence else 0
    positions = [p for p in (text.find(c, search_from) for c in openers) if p >= 0]
    return min(positions) if positions else None


def _syntax_error_text(candidate: str, where: str, exc: BaseException) -> str:
    if candidate[0] in _CLOSING and _bracket_end(candidate, 0)[1]:
        return f"{where} is cut off: its opening '{candidate[0]}' is never closed"
    if isinstance(exc, json.JSONDecodeError):
        return f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    if isinstance(exc, RecursionError):
        return f"{where} is not valid JSON (nested too deeply)"
    return f"{where} is not valid JSON ({exc})"


def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array"


# --- schema checks -----------------------------------------------------------------------------


def _is_pydantic_model(schema: object) -> bool:
    return isinstance(schema, type) and issubclass(schema, BaseModel)


def _build_schema_checker(schema: dict[str, Any]) -> Any:
    """A ``jsonschema`` validator for ``schema``; a bad schema is a ``ValueError`` now."""
    try:
        import jsonschema
        from jsonschema.exceptions import SchemaError
    except ImportError as exc:  # pragma: no cover - jsonschema is installed with the test deps
        msg = (
            "schema: checking a JSON Schema dict needs the 'jsonschema' package "
            "(pip install jsonschema); or pass a pydantic model as the schema instead."
        )
        raise ImportError(msg) from exc
    checker_class = jsonschema.validators.validator_for(schema)
    try:
        checker_class.check_schema(schema)
    except SchemaError as exc:
        path = _json_path(exc.absolute_path)
        msg = f"schema: not a valid JSON Schema at {path}: {exc.message}. Fix the schema."
        raise ValueError(msg) from exc
    return checker_class(schema)


def _jsonschema_relevance() -> Callable[[Any], Any]:
    from jsonschema.exceptions import relevance

    return cast("Callable[[Any], Any]", relevance)


def _describe_jsonschema_error(error: Any) -> str:
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [key for key in error.validator_value if key not in error.instance]
        if missing:
            return f"{_json_path([*path, missing[0]])}: required property is missing"
    return f"{_json_path(path)}: {error.message}"


def _describe_pydantic_error(error: Any) -> str:
    path = _json_path(part for part in error["loc"] if isinstance(part, (str, int)))
    if error["type"] == "missing":
        return f"{path}: required property is missing"
    got = repr(error.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"{path}: {error['msg']} (got {got})"


def _summarise(problems: list[str], limit: int = 5) -> str:
    shown = "; ".join(problems[:limit])
    more = len(problems) - limit
    return shown + (f"; and {more} more problem(s)" if more > 0 else "")


def _json_path(parts: Iterable[str | int]) -> str:
    """Render a location as a JSONPath such as ``$.items[2].price``."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _IDENTIFIER_RE.fullmatch(part):
            path += f".{part}"
        else:
            path += f"[{json.dumps(part)}]"
    return path


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
