"""Shared pieces of error classification: HTTP status to LangChain error class, Retry-After.

Every vendor ends up speaking HTTP, so the classification of a status code is one table here;
each provider adds only what its SDK spells differently (exception classes, context-overflow
codes such as Zhipu's ``1261``).
"""

from __future__ import annotations

import contextlib
import email.utils
import time
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelError,
    ModelInvalidRequestError,
    ModelNotFoundError,
    ModelPermissionDeniedError,
    ModelRateLimitError,
    ModelTimeoutError,
)

from langchain_pllm.exceptions import InvalidCallError, model_error

E = TypeVar("E", bound=BaseException)

__all__ = [
    "CONTEXT_OVERFLOW_HINTS",
    "SHAPE_ERRORS",
    "caller_fault",
    "class_for_status",
    "is_context_overflow",
    "malformed_reply",
    "mark_spent",
    "parsing_reply",
    "retry_after_of",
    "says_balance",
]

CONTEXT_OVERFLOW_HINTS = (
    "context_length_exceeded",
    "context length",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "exceeds the context window",
    "input tokens exceed",
)


def class_for_status(status: int) -> type[ModelError]:
    """The LangChain model error class for an HTTP status code."""
    if status == 429:
        return ModelRateLimitError
    if status == 401:
        return ModelAuthenticationError
    if status == 403:
        return ModelPermissionDeniedError
    if status == 404:
        return ModelNotFoundError
    if status == 408:
        return ModelTimeoutError
    if status >= 500 or status == 409:
        # 529 is Anthropic's "overloaded": a server-side condition like 503.
        return ModelAPIError
    return ModelInvalidRequestError


# Words of a vendor's message saying the money is gone (SiliconFlow's 403 and Zhipu's 429 have
# no documented code for it; their text does).
_BALANCE_HINTS = ("balance", "余额", "arrears", "欠费", "recharge", "top up")


def says_balance(message: str) -> bool:
    """Whether an error message says the account's balance is gone."""
    low = message.lower()
    return any(hint in low for hint in _BALANCE_HINTS)


def mark_spent(err: E, spent: bool) -> E:
    """Mark ``err`` as a spent key (money or a quota gone) when ``spent``.

    The balancer reads only LangChain's error classes and this one attribute,
    ``quota_exhausted``: such a key rests until its quota resets, never counts toward its
    breaker, and the request fails over at once.
    """
    err.quota_exhausted = spent  # type: ignore[attr-defined]
    return err


def mark_crowded(err: E, crowded: bool) -> E:
    """Mark ``err`` as "too many requests in flight on this key" (Zhipu ``1302``).

    The balancer reads the attribute ``concurrency_exceeded``: it lowers the key's concurrency
    cap for a while instead of resting the key.
    """
    err.concurrency_exceeded = crowded  # type: ignore[attr-defined]
    return err


def spent_class(spent: bool, cls: type[ModelError]) -> type[ModelError]:
    """The class of a spent-key error: the status's own, but never "your request is wrong".

    A 400 or 402 for money is the key's condition, not the request's: it reaches a caller (when
    every key is spent) as a permission error. 429s stay rate limits, 403s permission errors.
    """
    if spent and issubclass(cls, ModelInvalidRequestError):
        return ModelPermissionDeniedError
    return cls


def is_context_overflow(message: str) -> bool:
    """Whether an error message says the prompt was too long."""
    low = message.lower()
    return any(hint in low for hint in CONTEXT_OVERFLOW_HINTS)


def retry_after_of(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if not headers:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except (TypeError, ValueError):
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(raw))
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def overflow_or(cls: type[ModelError], message: str) -> type[ModelError]:
    """Refine a bad-request class into ``ContextOverflowError`` when the message says so."""
    if cls is ModelInvalidRequestError and is_context_overflow(message):
        return ContextOverflowError
    return cls


# What reading a reply of the wrong shape raises (a missing key, an empty list, a null where a
# list was promised, bad base64, a response model that does not validate).
SHAPE_ERRORS = (KeyError, IndexError, TypeError, AttributeError, ValueError)


def caller_fault(exc: BaseException, provider_id: str) -> InvalidCallError | None:
    """The caller's error hidden in a client-side exception, or ``None`` if it is not one.

    Text that cannot be encoded (a lone surrogate) fails inside the SDK while it writes the
    body: nothing was sent, every key would fail alike, so it must never be read as a malformed
    reply (retried, counted toward a breaker). The faces' pre-flight check catches it first;
    this is the guard for what reaches a provider another way.
    """
    if isinstance(exc, UnicodeEncodeError):
        err = InvalidCallError(
            f"{provider_id}: the request holds text that cannot be encoded "
            f"({exc.object[exc.start : exc.end]!r} at position {exc.start}: a lone surrogate)"
        )
        err.__cause__ = exc
        return err
    return None


def malformed_reply(provider_id: str, exc: BaseException) -> Exception:
    """The error for a reply that does not have the vendor's documented shape.

    A 200 with a body we cannot read is the vendor's fault, like a 5xx: it counts toward the
    breaker and is retried on another key, instead of escaping as a bare ``IndexError``;
    unless ``caller_fault`` finds it was the caller's.
    """
    caller = caller_fault(exc, provider_id)
    if caller is not None:
        return caller
    return model_error(
        ModelAPIError,
        f"{provider_id}: malformed response: {type(exc).__name__}: {exc}",
        cause=exc,
        provider=provider_id,
    )


@contextlib.contextmanager
def parsing_reply(provider_id: str) -> Iterator[None]:
    """Raise ``malformed_reply`` for a ``SHAPE_ERRORS`` raised inside the block.

    Per stream chunk, a plain ``try``/``except SHAPE_ERRORS`` does the same without the
    context manager's generator (a few µs a chunk).
    """
    try:
        yield
    except SHAPE_ERRORS as e:
        raise malformed_reply(provider_id, e) from e
