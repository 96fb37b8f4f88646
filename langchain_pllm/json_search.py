"""Find the JSON in a model's answer: pure JSON, a fenced ```json block, or JSON inside prose.

Models wrap JSON in explanations and code fences, cite ``[1]`` in prose and get cut off
mid-object. ``find_json`` tries the candidates in a fixed order (the whole answer, fenced
blocks, then every balanced bracket span) and either returns the first acceptable value or
raises ``NoJsonFound`` with the most telling reason, worded for the model's retry prompt.
``partial_json`` reads the JSON written so far while an answer streams. One linear pass matches
the brackets, so bracket-laden prose cannot make the search quadratic. What counts as
acceptable beyond syntax is the caller's ``check``, which refuses a candidate by raising
``SchemaMismatch``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from langchain_core.utils.json import parse_partial_json

from langchain_pllm.schema_check import SchemaMismatch

__all__ = ["NoJsonFound", "find_json", "kind_name", "partial_json"]

_FENCE_RE = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)```", re.DOTALL)
_JSON_FENCE_LANGUAGES = ("", "json", "json5", "jsonc")
_JSON_TOKEN_RE = re.compile(r'\\.|["{}\[\]]', re.DOTALL)
_CLOSING = {"{": "}", "[": "]"}
_MAX_QUOTED_OPENERS = 32  # each costs a scan to the end of the text
_MAX_PARSE_ATTEMPTS = 256  # each costs a json.loads of its candidate

_NOT_FOUND = object()


class NoJsonFound(ValueError):
    """No acceptable JSON in an answer; the message says why, for the model to fix."""


def kind_name(openers: str) -> str:
    """Name the JSON wanted, for messages: ``"a JSON object"``, ``"a JSON array"`` or both.

    Args:
        openers: Opening brackets allowed at the top level: ``"{"``, ``"["`` or ``"{["``.

    Returns:
        The words for the kind, with its article.
    """
    return {"{": "a JSON object", "[": "a JSON array"}.get(openers, "a JSON object or array")


def find_json(
    text: str,
    *,
    openers: str,
    strict: bool,
    check: Callable[[Any], Any],
) -> Any:
    """Return the first acceptable JSON value in an answer.

    Args:
        text: The model's answer.
        openers: Opening brackets allowed at the top level: ``"{"``, ``"["`` or ``"{["``.
        strict: Accept only the whole answer as JSON (no prose, no code fence), parsed with
            ``json.loads(strict=True)``.
        check: Called with each parsed candidate; returns the value to give back, or raises
            ``SchemaMismatch`` saying how the candidate fails its schema.

    Returns:
        What ``check`` returned for the first candidate it accepted.

    Raises:
        NoJsonFound: No candidate was accepted; the message is the most telling reason.
    """
    stripped = text.strip()
    if not stripped:
        raise NoJsonFound(f"the answer is empty; expected {kind_name(openers)}")
    search = _JsonSearch(openers, strict, check)
    value = search.try_candidate(stripped, "the answer", whole=True)
    if value is not _NOT_FOUND or strict:
        return value if value is not _NOT_FOUND else search.reject_strict(stripped)
    for fence in _FENCE_RE.finditer(text):
        if fence.group(1).lower() in _JSON_FENCE_LANGUAGES:
            value = search.try_candidate(fence.group(2).strip(), "the ```json block")
            if value is not _NOT_FOUND:
                return value
    # An object wins over an earlier array: prose cites "[1]" far more often than it
    # wraps the answer in a bare array. Spans inside an accepted array are its elements.
    first_array: Any = _NOT_FOUND
    covered_until = 0
    for start, end in _bracket_spans(text, openers):
        if start < covered_until:
            continue
        value = search.try_candidate(text[start:end], f"the JSON starting at character {start}")
        if value is _NOT_FOUND:
            continue
        if text[start] == "{" or "{" not in openers:
            return value
        if first_array is _NOT_FOUND:
            first_array = value
        covered_until = end
    return first_array if first_array is not _NOT_FOUND else search.reject()


def partial_json(text: str, *, openers: str, strict: bool) -> Any:
    """The JSON written so far in a streaming answer, unchecked; ``None`` if none yet.

    Args:
        text: The answer received so far.
        openers: Opening brackets allowed at the top level: ``"{"``, ``"["`` or ``"{["``.
        strict: Only JSON at the very start of the answer counts.

    Returns:
        The partial value (open strings, objects and arrays closed), or ``None``.
    """
    start = _partial_json_start(text, openers, strict=strict)
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


class _JsonSearch:
    """Tries JSON candidates in order and remembers why the first failures failed."""

    def __init__(self, openers: str, strict: bool, check: Callable[[Any], Any]) -> None:
        self.openers = openers
        self.strict = strict
        self.check = check
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
            parsed = json.loads(candidate, strict=self.strict)
        except (ValueError, RecursionError) as exc:
            # Prose that merely is not JSON says nothing; broken JSON says what to fix.
            if (candidate[0] in "{[" or not whole) and self.syntax_error is None:
                self.syntax_error = _syntax_error_text(candidate, where, exc)
            return _NOT_FOUND
        if not isinstance(parsed, (dict, list)):
            if whole:
                self.scalar_error = (
                    f"the answer is a JSON {_json_type_name(parsed)}; "
                    f"expected {kind_name(self.openers)}"
                )
            return _NOT_FOUND
        try:
            return self.check(parsed)
        except SchemaMismatch as refused:
            if self.schema_error is None:
                self.schema_error = f"{where} does not match the schema: {refused}"
            return _NOT_FOUND

    def reject_strict(self, stripped: str) -> NoReturn:
        """Reject a strict answer: only the whole answer counted."""
        error = self.schema_error or self.scalar_error or self.syntax_error
        if error is None:
            found = "a code fence" if stripped.startswith("```") else "text"
            error = (
                f"the answer must be pure JSON ({kind_name(self.openers)}) with nothing "
                f"around it, but it starts with {found}"
            )
        raise NoJsonFound(error)

    def reject(self) -> NoReturn:
        """Raise the most telling reason why no candidate was accepted."""
        error = self.schema_error or self.syntax_error or self.scalar_error
        raise NoJsonFound(error or f"no {kind_name(self.openers)[2:]} was found in the answer")


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
