"""Errors raised by langchain-pllm.

Vendor failures are not ours: each provider classifies its SDK's exceptions once into
LangChain's own model errors (``langchain_core.exceptions``), keeping the SDK error as
``__cause__`` and adding three attributes the balancer reads: ``retry_after`` (seconds from a
``Retry-After`` header, or ``None``), ``status_code`` and ``provider`` (the provider id that
failed). Code that already catches ``ModelRateLimitError`` from ``ChatOpenAI`` keeps working.

The tree::

    Exception
    ├── langchain_core.exceptions.ModelError          (vendor failures, classified per provider)
    │   ├── ModelRateLimitError        is_retryable   429: the key rests for Retry-After
    │   ├── ModelAPIError              is_retryable   5xx: counts toward the breaker
    │   ├── ModelConnectionError       is_retryable   counts toward the breaker
    │   ├── ModelTimeoutError          is_retryable   counts toward the breaker
    │   ├── ModelAuthenticationError                  401: opens the breaker at once
    │   ├── ModelPermissionDeniedError                403: opens the breaker at once
    │   ├── ModelNotFoundError                        404: opens the breaker at once
    │   ├── ModelInvalidRequestError                  400: raised at once, no breaker count
    │   │   └── InvalidCallError (also ValueError)   the caller's fault, found before sending
    │   ├── ContextOverflowError                      raised at once, no breaker count
    │   └── ModelRefusalError                         raised at once, no breaker count
    └── PllmError                                     (ours)
        ├── PllmConfigError (also ValueError)         bad config: names the field and the fix
        ├── NoProviderAvailableError                  no capacity within the wait deadline
        └── ValidationFailedError (also OutputParserException)
                                                      with_validation ran out of retries
"""

from __future__ import annotations

from typing import Any, TypeVar

from langchain_core.exceptions import ModelError, ModelInvalidRequestError, OutputParserException

__all__ = [
    "InvalidCallError",
    "NoProviderAvailableError",
    "PllmConfigError",
    "PllmError",
    "ValidationFailedError",
    "model_error",
]

E = TypeVar("E", bound=ModelError)


class PllmError(Exception):
    """Base class of every error langchain-pllm raises itself."""


class PllmConfigError(PllmError, ValueError):
    """A configuration value is missing or wrong.

    The message names the field (as a dotted path such as ``llm.openai[1].rate_limit``) and
    says how to fix it.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NoProviderAvailableError(PllmError):
    """No provider had capacity before the request's wait deadline.

    Raised only when nothing was tried or every provider stayed at its limit, resting or open;
    a real vendor error that ends a request is raised as itself, never masked as this one.
    ``waited`` is the seconds spent waiting; ``states`` maps provider id to its state then.
    """

    def __init__(
        self, message: str, *, waited: float = 0.0, states: dict[str, str] | None = None
    ) -> None:
        self.waited = waited
        self.states = dict(states or {})
        super().__init__(message)


class InvalidCallError(ModelInvalidRequestError, ValueError):
    """The call itself is wrong, found before a byte was sent: the caller's fault, not a key's.

    An empty conversation, text that cannot be encoded (a lone surrogate), a ``model=`` no key
    serves, media no vendor of the pool takes. It is raised at once: never retried, never
    counted toward a breaker or in a key's ``error_count``. Catch it as ``ValueError`` or as
    LangChain's ``ModelInvalidRequestError``.
    """

    retry_after: float | None = None
    status_code: int | None = None
    provider: str | None = None


class ValidationFailedError(PllmError, OutputParserException):
    """``with_validation`` ran out of retries; ``attempts`` holds each raw output and reason."""

    def __init__(self, message: str, *, attempts: list[dict[str, Any]]) -> None:
        self.attempts = attempts
        OutputParserException.__init__(self, message)


def model_error(
    cls: type[E],
    message: str,
    *,
    cause: BaseException | None = None,
    retry_after: float | None = None,
    status_code: int | None = None,
    provider: str | None = None,
) -> E:
    """Build a LangChain model error carrying what the balancer needs.

    Args:
        cls: The ``langchain_core.exceptions`` class for this kind of failure.
        message: Human-readable message; never include an API key.
        cause: The SDK exception, kept as ``__cause__``.
        retry_after: Seconds the vendor asked us to wait, if it said.
        status_code: HTTP status, if there was a response.
        provider: Id of the provider that failed.

    Returns:
        The error, ready to raise.
    """
    err = cls(message)
    err.retry_after = retry_after  # type: ignore[attr-defined]
    err.status_code = status_code  # type: ignore[attr-defined]
    err.provider = provider  # type: ignore[attr-defined]
    if cause is not None:
        err.__cause__ = cause
    return err
