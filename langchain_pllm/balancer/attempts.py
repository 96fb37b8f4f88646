"""One request's attempts: how a failed attempt counts for its key, and whether to try again.

``outcome_of`` maps the LangChain model error a provider raised onto an ``Outcome`` for the
state and a decision (retry elsewhere, or raise now); ``Attempts`` keeps one request's retry
bookkeeping against its policy (``AttemptPolicy``, read once from the config) and deadline:
the keys it tried, the last error, the attempt budget each provider call may take. Both are
written once for the four call paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeVar

from langchain_core.exceptions import (
    ModelAPIError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelError,
    ModelNotFoundError,
    ModelPermissionDeniedError,
    ModelRateLimitError,
    ModelTimeoutError,
)

from langchain_pllm.balancer.picker import Member
from langchain_pllm.clock import Clock
from langchain_pllm.exceptions import model_error
from langchain_pllm.providers.base import ATTEMPT_BUDGET
from langchain_pllm.state.base import Outcome

if TYPE_CHECKING:
    from langchain_pllm.config import BalancerConfig

__all__ = ["PICKER_FAILED", "AttemptPolicy", "Attempts", "outcome_of"]

C = TypeVar("C")

_TRIP = (ModelAuthenticationError, ModelPermissionDeniedError, ModelNotFoundError)
_TRANSIENT = (ModelAPIError, ModelConnectionError, ModelTimeoutError)


def outcome_of(exc: BaseException) -> tuple[Outcome, bool]:
    """How an exception from a provider call counts for its key, and whether to retry elsewhere."""
    if getattr(exc, "quota_exhausted", False):
        # The provider marked a spent key (money or a daily quota gone): fail over at once.
        return Outcome.EXHAUSTED, True
    if isinstance(exc, ModelRateLimitError):
        return Outcome.RATE_LIMITED, True
    if isinstance(exc, _TRANSIENT):
        return Outcome.FAILURE, True
    if isinstance(exc, _TRIP):
        return Outcome.TRIP, True
    if isinstance(exc, ModelError):
        # Invalid request, context overflow, refusal: it would fail on every key.
        return (Outcome.FAILURE, True) if exc.is_retryable else (Outcome.NEUTRAL, False)
    if isinstance(exc, Exception):
        return Outcome.NEUTRAL, False
    return Outcome.CANCELLED, False  # CancelledError, KeyboardInterrupt, GeneratorExit


#: What a released attempt tells the picker: failed (True), succeeded (False), neither (None).
PICKER_FAILED = {
    Outcome.SUCCESS: False,
    Outcome.FAILURE: True,
    Outcome.TRIP: True,
    Outcome.RATE_LIMITED: None,
    Outcome.NEUTRAL: None,
    Outcome.CANCELLED: None,
    Outcome.EXHAUSTED: None,
}


class Attempts:
    """One request's retry bookkeeping: attempts made, keys that failed it, the last error.

    Args:
        clock: The balancer's clock.
        timeout: The request's ``request_timeout`` (``None``: no deadline).
        limit: Most attempts the retry policy allows (``math.inf``: no bound).
        max_wait: Longest one acquire waits for capacity (within the deadline).
        spill: Whether the request may go to a higher tier.
        avoid: Member indexes to avoid if any other can serve.
        only: The members serving the call's ``model=`` (``None``: all).
        affinity: The conversation's digest, when the pool keeps affinity.
        resume: Whether the request continues its conversation (look its key up).
    """

    __slots__ = (
        "affinity",
        "clock",
        "count",
        "deadline",
        "last_error",
        "limit",
        "max_wait",
        "only",
        "prefer",
        "resume",
        "retry",
        "shared",
        "spill",
        "tried",
        "wait_start",
        "wait_until",
    )

    def __init__(
        self,
        clock: Clock,
        timeout: float | None,
        limit: float,
        max_wait: float,
        spill: bool,
        avoid: set[int] | None,
        only: frozenset[int] | None,
        affinity: bytes | None,
        resume: bool,
    ) -> None:
        self.clock = clock
        self.only = only
        self.deadline = clock.now() + timeout if timeout else math.inf
        # The conversation's key, looked up once per request (``recall``): a retry skips it
        # like any key it tried.
        self.affinity = affinity
        self.resume = resume  # False: the request starts its conversation (note, do not look up)
        self.prefer: Member | None = None
        self.shared: str | None = None  # the key a shared state named for the conversation
        self.spill = spill
        self.limit = limit
        self.max_wait = max_wait
        self.tried: set[int] | None = set(avoid) if avoid else None
        self.count = 0
        self.retry = False
        self.last_error: BaseException | None = None
        self.wait_start = 0.0
        self.wait_until: float | None = None  # set while one acquire waits for capacity

    def wait_target(self, wake: float, now: float) -> float | None:
        """Nothing has capacity until ``wake``: the time to wait until, ``None`` to give up.

        An acquire's first wait starts its window (``max_wait``, within the deadline). After
        a real failure, waiting past the window for a key to free up is pointless.
        """
        if self.wait_until is None:
            self.wait_start = now
            self.wait_until = min(self.deadline, now + self.max_wait)
        if now >= self.wait_until or (self.last_error is not None and wake > self.wait_until):
            return None
        return min(wake, self.wait_until)

    def set_budget(self) -> contextvars.Token[float | None] | None:
        """Tell the provider how long this attempt may take, if the request has a deadline."""
        if self.deadline == math.inf:
            return None
        return ATTEMPT_BUDGET.set(self.deadline - self.clock.now())

    def deadline_error(self, m: Member) -> ModelTimeoutError:
        """The error of an attempt still running when the request's deadline passed."""
        return model_error(
            ModelTimeoutError,
            f"{m.config.id}: request_timeout passed while the stream was in flight",
            provider=m.config.id,
        )

    def check_deadline(self, m: Member) -> None:
        """Between two chunks of a sync stream: stop once the request's deadline has passed.

        The sync path cannot interrupt a blocked read; the SDK's read timeout (the budget
        left when the stream opened) bounds a stall, and this check ends a stream that keeps
        trickling.
        """
        if self.clock.now() >= self.deadline:
            raise self.deadline_error(m)

    async def next_chunk(self, it: AsyncIterator[C], m: Member) -> C:
        """The next chunk of an async stream, within the request's deadline.

        On the deadline the pending read is cancelled, which closes the vendor's stream inside
        the provider (its ``async with``), and a timeout error is raised. The read runs in the
        caller's task (``asyncio.timeout``), not in a task of its own as ``wait_for`` runs it
        on Python 3.11: what the provider reports through context variables while it reads
        (the reply's rate-limit headers, read when the stream opens) must reach the release.
        """
        if self.deadline == math.inf:
            return await anext(it)
        left = self.deadline - self.clock.now()
        if left <= 0:
            raise self.deadline_error(m)
        try:
            if sys.version_info >= (3, 11):
                async with asyncio.timeout(left):
                    return await anext(it)
            return await asyncio.wait_for(anext(it), left)  # 3.10: headers stay in its task
        except asyncio.TimeoutError:
            raise self.deadline_error(m) from None

    def failed(self, m: Member, exc: BaseException, started: bool = False) -> Outcome:
        """The failure rule of every call path, written once: classify a failed attempt on ``m``.

        Returns how the failure counts for the key (what the twin then releases it with), and
        notes whether the policy allows another attempt elsewhere. ``started``: a stream has
        yielded; the caller has seen text, so it is never retried.
        """
        outcome, retry = outcome_of(exc)
        self.retry = retry = retry and not started and self.count < self.limit
        if retry:
            if self.tried is None:
                self.tried = set()
            self.tried.add(m.index)
            self.last_error = exc
        return outcome

    def gave_up(self, exc: BaseException) -> BaseException:
        """Note on the error the request ends with how many attempts it made (``exc.attempts``).

        A caller counting retries (``PllmProgress``) then counts those of a request that
        finally failed too; ``0`` when no key ever had capacity for it.
        """
        with contextlib.suppress(AttributeError, TypeError):  # an exception refusing attributes
            exc.attempts = self.count  # type: ignore[attr-defined]
        return exc

    def again(self) -> bool:
        """After the release of a failed attempt: whether to try another key now.

        The deadline is read here, after the twin's release rather than in ``failed``: a
        release to a remote state takes time of its own.
        """
        return self.retry and self.clock.now() < self.deadline


class AttemptPolicy:
    """What every request of a pool starts from, read once from the balancer's settings.

    Args:
        config: The balancer's settings (retry policy, timeouts, spill, affinity).
        clock: The balancer's clock.
    """

    __slots__ = ("affinity", "clock", "limit", "max_wait", "spill", "timeout")

    def __init__(self, config: BalancerConfig, clock: Clock) -> None:
        policy = config.retry_policy
        self.limit = (
            math.inf
            if policy == "infinite"
            else 2
            if policy == "retry_once"
            else 1 + config.max_retries
        )
        # The infinite policy retries "until success, cancellation or timeout": only the
        # request's own deadline bounds its waits, not max_wait.
        self.max_wait = math.inf if self.limit == math.inf else config.max_wait
        self.timeout = config.request_timeout
        self.spill = config.spill
        self.affinity = config.affinity != "off"
        self.clock = clock

    def start(
        self,
        avoid: set[int] | None,
        only: frozenset[int] | None,
        affinity: bytes | None,
        spill: bool | None,
        resume: bool,
    ) -> Attempts:
        """A request's bookkeeping (see ``Balancer.call`` for the arguments)."""
        return Attempts(
            self.clock,
            self.timeout,
            self.limit,
            self.max_wait,
            self.spill if spill is None else spill,
            avoid,
            only,
            affinity if self.affinity else None,
            resume,
        )
