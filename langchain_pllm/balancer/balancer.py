"""The balancer: pick a provider, wait for capacity, call, classify the outcome, retry elsewhere.

It runs a caller-supplied function against a chosen provider and sees only LangChain's model
errors (the providers classified their SDKs' exceptions), mapping each onto an ``Outcome`` for
the state and onto a decision: retry elsewhere, or raise now. It knows no vendor format. Sync
and async paths are mirror images; the sync path never touches asyncio, so it also works from a
thread whose event loop is running (Jupyter).

Per attempt the hot path is: one lock for the pick, one state ``acquire``, the call, one state
``release``, one lock for the picker's bookkeeping. Waiting (every live provider at its limit)
sleeps until the earliest parked provider may have room or a release wakes it, never polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

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

from langchain_pllm.balancer.affinity import AffinityMap
from langchain_pllm.balancer.crowding import ConcurrencyCuts
from langchain_pllm.balancer.learned import Handle, LearnedLimits
from langchain_pllm.balancer.metrics import PoolObserver
from langchain_pllm.balancer.picker import Member, Picker
from langchain_pllm.balancer.quota import (
    DayPeriods,
    budget_full,
    cost_ask,
    cost_used,
    window_stats,
)
from langchain_pllm.balancer.reasons import blocked_reason
from langchain_pllm.balancer.routes import ModelRoutes
from langchain_pllm.clock import Clock
from langchain_pllm.config.models import with_http_backend
from langchain_pllm.exceptions import NoProviderAvailableError, model_error
from langchain_pllm.providers import build_provider
from langchain_pllm.providers.base import ATTEMPT_BUDGET, Provider
from langchain_pllm.providers.rate_headers import HEADER_LIMITS, HEADER_REST
from langchain_pllm.state.base import BreakerPolicy, Lease, Outcome, Periods, StateBackend

if TYPE_CHECKING:
    from langchain_pllm.config import BalancerConfig, PoolConfig

__all__ = ["Balancer", "outcome_of"]

logger = logging.getLogger("langchain_pllm")

T = TypeVar("T")
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


_PICKER_FAILED = {
    Outcome.SUCCESS: False,
    Outcome.FAILURE: True,
    Outcome.TRIP: True,
    Outcome.RATE_LIMITED: None,
    Outcome.NEUTRAL: None,
    Outcome.CANCELLED: None,
    Outcome.EXHAUSTED: None,
}


class _Attempts:
    """One request's retry bookkeeping: attempts made, keys that failed it, the last error."""

    __slots__ = (
        "affinity",
        "clock",
        "count",
        "deadline",
        "last_error",
        "limit",
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
        balancer: Balancer,
        avoid: set[int] | None,
        only: frozenset[int] | None = None,
        affinity: bytes | None = None,
        spill: bool | None = None,
        resume: bool = True,
    ) -> None:
        self.clock = balancer.clock
        self.only = only  # the members serving the call's model=; None: all
        timeout = balancer.config.request_timeout
        self.deadline = self.clock.now() + timeout if timeout else math.inf
        # The conversation's key, looked up once per request (``_recall``): a retry skips it
        # like any key it tried.
        self.affinity = affinity if balancer.affinity is not None else None
        self.resume = resume  # False: the request starts its conversation (note, do not look up)
        self.prefer: Member | None = None
        self.shared: str | None = None  # the key a shared state named for the conversation
        self.spill = balancer.config.spill if spill is None else spill
        self.limit = balancer.max_attempts
        self.tried: set[int] | None = set(avoid) if avoid else None
        self.count = 0
        self.retry = False
        self.last_error: BaseException | None = None
        self.wait_start = 0.0
        self.wait_until: float | None = None  # set while one acquire waits for capacity

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
        the provider (its ``async with``), and a timeout error is raised.
        """
        if self.deadline == math.inf:
            return await anext(it)
        left = self.deadline - self.clock.now()
        if left <= 0:
            raise self.deadline_error(m)
        try:
            return await asyncio.wait_for(anext(it), left)
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

    def again(self) -> bool:
        """After the release of a failed attempt: whether to try another key now.

        The deadline is read here, after the twin's release rather than in ``failed``: a
        release to a remote state takes time of its own.
        """
        return self.retry and self.clock.now() < self.deadline


class Balancer:
    """Spreads calls over one pool of providers. Shared by every face built from the same pool."""

    def __init__(
        self,
        pool: PoolConfig,
        config: BalancerConfig,
        *,
        clock: Clock,
        state: StateBackend,
        providers: list[Provider] | None = None,
    ) -> None:
        self.pool = pool
        self.config = config
        self.clock = clock
        self.state = state
        built = providers or [
            build_provider(with_http_backend(p, config.http_backend)) for p in pool.providers
        ]
        self.members = [Member(i, prov, prov.config, config.window) for i, prov in enumerate(built)]
        self.by_id = {m.config.id: m for m in self.members}
        self.by_key = {m.key: m for m in self.members}
        self.picker = Picker(self.members)
        self.routes = ModelRoutes(self.members)
        self.affinity = (
            AffinityMap(config.affinity_size, config.affinity_ttl)
            if config.affinity != "off"
            else None
        )
        self.breaker = BreakerPolicy(config.breaker_threshold, config.health_check_interval)
        policy = config.retry_policy
        self.max_attempts = (
            math.inf
            if policy == "infinite"
            else 2
            if policy == "retry_once"
            else 1 + config.max_retries
        )
        self._lock = threading.Lock()
        self._waiters: list[Callable[[], None]] = []
        self._local = state.is_local
        self.observer = PoolObserver(self.members, self.get_stats)
        # Keys with calendar day windows (quota_reset): their current day, from the wall clock.
        self._days = {
            m.index: DayPeriods(m.limits, m.config.quota_reset)
            for m in self.members
            if m.limits.calendar and m.config.quota_reset is not None
        }
        self._spent_logged: set[int] = set()  # spent keys already logged in this episode
        self.learned = LearnedLimits()  # limits the vendors' headers taught, per process
        self.cuts = ConcurrencyCuts(config.window)  # caps lowered by "too much concurrency"
        self._learned_leases: dict[int, list[Handle]] = {}  # id(lease) -> its reservations
        self._last_ask: dict[int, float] = {}  # each budgeted key's last cost estimate

    # Acquire / release -------------------------------------------------------------------------

    def _no_provider(self, waited: float, only: frozenset[int] | None) -> NoProviderAvailableError:
        now = self.clock.now()
        states: dict[str, str] = {}
        reasons: list[str] = []
        for m in self.members:
            if only is not None and m.index not in only:
                continue
            snap = self.state.snapshot(m.key, m.limits, now)
            states[m.config.id] = snap.state
            if len(reasons) < 20:  # a pool of hundreds: the first keys tell the story
                reasons.append(f"{m.config.id}: {blocked_reason(m, snap, now)}")
        more = len(states) - len(reasons)
        detail = "; ".join(reasons) + (f"; and {more} more" if more > 0 else "")
        return NoProviderAvailableError(
            f"no provider had capacity within {waited:.3g}s (max_wait {self.config.max_wait:g}s): "
            f"{detail}",
            waited=waited,
            states=states,
        )

    def _wait_until(self, req: _Attempts, now: float) -> float:
        # The infinite policy retries "until success, cancellation or timeout": only the
        # request's own deadline bounds its waits, not max_wait.
        if self.max_attempts == math.inf:
            return req.deadline
        return min(req.deadline, now + self.config.max_wait)

    def _gave_up(self, req: _Attempts, waited: float) -> BaseException:
        # After a real failure, the caller gets that failure: "no capacity" would mask it (the
        # remaining keys are resting or open because of errors like it). Waiting is pointless
        # when nothing can free up before the deadline.
        if req.last_error is not None:
            return req.last_error
        return self._no_provider(waited, req.only)

    def _wait_target(self, req: _Attempts, wake: float, now: float) -> float:
        """Nothing has capacity until ``wake``: the time to wait until, or raise."""
        if req.wait_until is None:
            self.observer.waited()
            req.wait_start = now
            req.wait_until = self._wait_until(req, now)
        if now >= req.wait_until or (req.last_error is not None and wake > req.wait_until):
            raise self._gave_up(req, now - req.wait_start)
        return min(wake, req.wait_until)

    def _refused(self, m: Member, wake: float, now: float) -> None:
        with self._lock:
            self.picker.reject(m, wake, now)

    def _abandoned(self, m: Member) -> None:
        # Cancelled (or failed) between the pick and the state's answer: undo the pick. A
        # lease a remote state granted meanwhile is that state's to give back.
        with self._lock:
            self.picker.undo(m)

    def _acquire(self, req: _Attempts, tokens: int) -> tuple[Member, Lease]:
        clock = self.clock
        req.wait_until = None
        while True:
            now = clock.now()
            with self._lock:
                c = self.picker.candidate(req.tried or (), now, req.only, req.prefer, req.spill)
                if not isinstance(c, Member):
                    event = threading.Event()
                    self._waiters.append(event.set)
            if isinstance(c, Member):
                held = self._learned_hold(c, tokens, now)
                if held is not None and not isinstance(held, list):
                    self._refused(c, held, now)
                    continue
                try:
                    c.provider.prepare(False)
                    extra = self._quota_args(c, now, tokens)
                    r = self.state.acquire(c.key, c.limits, tokens, now, self.breaker, **extra)
                except BaseException:
                    self._learned_keep(held, None)
                    self._abandoned(c)
                    raise
                self._learned_keep(held, r)
                if isinstance(r, Lease):
                    if req.count:
                        self.observer.retried(c)
                    HEADER_REST.set(None)  # this attempt's reply headers report afresh
                    HEADER_LIMITS.set(None)
                    return c, r
                self._refused(c, r, now)
                continue
            clock.wait(event, self._wait_target(req, c, now))

    async def _aacquire(self, req: _Attempts, tokens: int) -> tuple[Member, Lease]:
        clock = self.clock
        req.wait_until = None
        while True:
            now = clock.now()
            with self._lock:
                c = self.picker.candidate(req.tried or (), now, req.only, req.prefer, req.spill)
                if not isinstance(c, Member):
                    event = asyncio.Event()
                    self._waiters.append(_async_setter(event))
            if isinstance(c, Member):
                held = self._learned_hold(c, tokens, now)
                if held is not None and not isinstance(held, list):
                    self._refused(c, held, now)
                    continue
                try:
                    c.provider.prepare(True)
                    extra = self._quota_args(c, now, tokens)
                    if self._local:
                        r = self.state.acquire(c.key, c.limits, tokens, now, self.breaker, **extra)
                    else:
                        r = await self.state.aacquire(
                            c.key, c.limits, tokens, now, self.breaker, **extra
                        )
                except BaseException:
                    self._learned_keep(held, None)
                    self._abandoned(c)
                    raise
                self._learned_keep(held, r)
                if isinstance(r, Lease):
                    if req.count:
                        self.observer.retried(c)
                    HEADER_REST.set(None)  # this attempt's reply headers report afresh
                    HEADER_LIMITS.set(None)
                    return c, r
                self._refused(c, r, now)
                continue
            await clock.await_event(event, self._wait_target(req, c, now))

    def _learned_hold(self, m: Member, tokens: int, now: float) -> float | list[Handle] | None:
        # Learned limits and 1302 cuts (per process) are checked before the state, so a key
        # that learned "5 a minute" is refused here like a full window, and freed if the state
        # refuses; a cut key is refused like one at its concurrency cap (a release frees it).
        if not self.learned and not self.cuts:
            return None
        with self._lock:
            cap = self.cuts.cap(m.index, now) if self.cuts else None
            if cap is not None and m.active > cap:  # ``active`` counts this pick already
                return math.inf
            return self.learned.reserve(m.index, tokens, now) if self.learned else None

    def _learned_keep(self, held: float | list[Handle] | None, r: Lease | float | None) -> None:
        if not isinstance(held, list):
            return
        with self._lock:
            if isinstance(r, Lease):
                self._learned_leases[id(r)] = held
            else:
                LearnedLimits.settle(held, None, cancel=True)

    def _learn(self, m: Member, lease: Lease, outcome: Outcome, used: int | None) -> None:
        held = self._learned_leases.pop(id(lease), None) if self._learned_leases else None
        if held is not None:
            LearnedLimits.settle(held, used, cancel=False)
        stated = HEADER_LIMITS.get() if outcome is Outcome.SUCCESS else None
        if stated:
            self.learned.learn(m.index, m.limits, stated, self.clock.now())

    def _periods(self, m: Member, now: float) -> Periods | None:
        days = self._days.get(m.index) if self._days else None
        return days.periods(now, self.clock.wall()) if days is not None else None

    def _quota_args(self, m: Member, now: float, tokens: int | None = None) -> dict[str, Any]:
        # Only keys with calendar days send periods, so a state written before them still works.
        periods = self._periods(m, now) if self._days else None
        out: dict[str, Any] = {"periods": periods} if periods is not None else {}
        if tokens is not None and m.limits.windows:
            ask = cost_ask(m.config, m.limits, tokens)
            if ask is not None:
                out["ask"] = ask
                self._last_ask[m.index] = ask["cost"]  # what "budget" in get_stats measures by
        return out

    def _usage(self, m: Member, tokens_used: int | None) -> dict[str, Any]:
        # Only a key with a budget sends its real cost, so other keys' releases stay as they were.
        usage = cost_used(m.config, m.limits, tokens_used) if m.limits.windows else None
        return {"usage": usage} if usage is not None else {}

    def _retry_after(self, m: Member, outcome: Outcome, exc: BaseException | None) -> float | None:
        if outcome is Outcome.EXHAUSTED:
            # Until the key's day resets when it has calendar days, else the configured rest.
            days = self._days.get(m.index)
            if days is not None:
                now = self.clock.now()
                return days.next_reset(now, self.clock.wall()) - now
            return self.config.exhausted_rest
        if outcome is Outcome.SUCCESS:
            # The reply's rate-limit headers said a resource is used up: rest until its reset.
            return HEADER_REST.get()
        if outcome is not Outcome.RATE_LIMITED:
            return None
        ra = getattr(exc, "retry_after", None)
        if ra is None and getattr(exc, "concurrency_exceeded", False):
            return None  # the lowered cap answers it; the key's other slots keep serving
        return self.config.default_retry_after if ra is None else float(ra)

    # Affinity ----------------------------------------------------------------------------------

    # With a shared state the fleet's answer wins (another process may have moved the
    # conversation); this process's map answers when the state knows nothing or is away. A
    # shared state costs one read per request that continues a conversation, and one write
    # when a conversation starts or moves.

    def _recalled(self, req: _Attempts, shared: str | None) -> None:
        req.shared = shared
        key = shared
        if key is None and self.affinity is not None and req.affinity is not None:
            key = self.affinity.get(req.affinity, self.clock.now())
        req.prefer = self.by_key.get(key) if key is not None else None

    def _recall(self, req: _Attempts) -> None:
        if req.affinity is not None and req.resume:
            shared = None if self._local else self.state.recall_conversation(req.affinity)
            self._recalled(req, shared)

    async def _arecall(self, req: _Attempts) -> None:
        if req.affinity is not None and req.resume:
            shared = None if self._local else await self.state.arecall_conversation(req.affinity)
            self._recalled(req, shared)

    def _remembered(self, req: _Attempts, m: Member) -> bytes | None:
        """Note locally that ``m`` served the conversation; the digest if the fleet must know."""
        digest = req.affinity
        if digest is None or self.affinity is None:
            return None
        changed = self.affinity.put(digest, m.key, self.clock.now())
        if self._local:
            return None
        # A continuing turn knows what the fleet said; a first turn (not looked up) writes
        # only what this process did not already hold, so a one-shot prompt repeated on one
        # key costs no write.
        if req.resume:
            return None if req.shared == m.key else digest
        return digest if changed else None

    def _remember(self, req: _Attempts, m: Member) -> None:
        digest = self._remembered(req, m)
        if digest is not None:
            self.state.remember_conversation(digest, m.key, self.config.affinity_ttl)

    async def _aremember(self, req: _Attempts, m: Member) -> None:
        digest = self._remembered(req, m)
        if digest is not None:
            await self.state.aremember_conversation(digest, m.key, self.config.affinity_ttl)

    def _after_release(
        self,
        m: Member,
        lease: Lease,
        outcome: Outcome,
        used: int | None = None,
        exc: BaseException | None = None,
    ) -> None:
        self.observer.attempt(m, lease, outcome, used, self.clock.now())
        with self._lock:
            if exc is not None and getattr(exc, "concurrency_exceeded", False):
                self.cuts.refused(m.index, m.active, self.clock.now())  # before ``done``
            self.picker.done(m, _PICKER_FAILED[outcome])
            self._learn(m, lease, outcome, used)
            waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()
        if outcome is Outcome.EXHAUSTED:
            if m.index not in self._spent_logged:
                self._spent_logged.add(m.index)
                logger.warning(
                    "provider %s: key spent (money or quota gone); resting it, then one probe",
                    m.config.id,
                )
        elif outcome is Outcome.SUCCESS and self._spent_logged:
            self._spent_logged.discard(m.index)

    def _release(
        self,
        m: Member,
        lease: Lease,
        outcome: Outcome,
        tokens_used: int | None = None,
        exc: BaseException | None = None,
    ) -> None:
        self.state.release(
            lease,
            outcome,
            self.clock.now(),
            self.breaker,
            tokens_used=tokens_used,
            retry_after=self._retry_after(m, outcome, exc),
            **self._usage(m, tokens_used),
        )
        self._after_release(m, lease, outcome, tokens_used, exc)

    async def _arelease(
        self,
        m: Member,
        lease: Lease,
        outcome: Outcome,
        tokens_used: int | None = None,
        exc: BaseException | None = None,
    ) -> None:
        if self._local:
            # No await: nothing can cancel it halfway.
            self._release(m, lease, outcome, tokens_used, exc)
            return
        await _shielded(self._arelease_remote(m, lease, outcome, tokens_used, exc))

    async def _arelease_remote(
        self,
        m: Member,
        lease: Lease,
        outcome: Outcome,
        tokens_used: int | None,
        exc: BaseException | None,
    ) -> None:
        try:
            await self.state.arelease(
                lease,
                outcome,
                self.clock.now(),
                self.breaker,
                tokens_used=tokens_used,
                retry_after=self._retry_after(m, outcome, exc),
                **self._usage(m, tokens_used),
            )
        finally:
            self._after_release(m, lease, outcome, tokens_used, exc)

    # Calls -------------------------------------------------------------------------------------

    def call(
        self,
        fn: Callable[[Provider], T],
        *,
        tokens: int = 0,
        tokens_of: Callable[[T], int | None] | None = None,
        avoid: set[int] | None = None,
        only: frozenset[int] | None = None,
        affinity: bytes | None = None,
        resume: bool = True,
        spill: bool | None = None,
    ) -> tuple[T, Member, int]:
        """Run ``fn`` on a chosen provider, retrying elsewhere as the policy allows.

        Args:
            fn: The provider call.
            tokens: Tokens to reserve on the chosen key (estimate; settled after).
            tokens_of: Reads the real token usage off the result.
            avoid: Member indexes to avoid if any other can serve.
            only: Member indexes that may serve at all (``routes.members_for(model)``).
            affinity: The conversation's digest: note the key that serves it.
            resume: Whether the request continues the conversation: go back to its key.
            spill: Whether the request may go to a higher tier (``None``: the config's).

        Returns:
            The result, the member that served it and the number of attempts made.
        """
        req = _Attempts(self, avoid, only, affinity, spill, resume)
        self._recall(req)
        while True:
            m, lease = self._acquire(req, tokens)
            req.count += 1
            token = req.set_budget()
            try:
                result = fn(m.provider)
            except BaseException as e:
                self._release(m, lease, req.failed(m, e), None, e)
                if req.again():
                    continue
                raise
            finally:
                if token is not None:
                    ATTEMPT_BUDGET.reset(token)
            used = tokens_of(result) if tokens_of else None
            self._release(m, lease, Outcome.SUCCESS, used)
            self._remember(req, m)
            return result, m, req.count

    async def acall(
        self,
        fn: Callable[[Provider], Awaitable[T]],
        *,
        tokens: int = 0,
        tokens_of: Callable[[T], int | None] | None = None,
        avoid: set[int] | None = None,
        only: frozenset[int] | None = None,
        affinity: bytes | None = None,
        resume: bool = True,
        spill: bool | None = None,
    ) -> tuple[T, Member, int]:
        """Async twin of ``call``."""
        req = _Attempts(self, avoid, only, affinity, spill, resume)
        await self._arecall(req)
        while True:
            m, lease = await self._aacquire(req, tokens)
            req.count += 1
            token = req.set_budget()
            try:
                result = await fn(m.provider)
            except BaseException as e:
                await self._arelease(m, lease, req.failed(m, e), None, e)
                if req.again():
                    continue
                raise
            finally:
                if token is not None:
                    ATTEMPT_BUDGET.reset(token)
            used = tokens_of(result) if tokens_of else None
            await self._arelease(m, lease, Outcome.SUCCESS, used)
            await self._aremember(req, m)
            return result, m, req.count

    def stream(
        self,
        open_stream: Callable[[Provider], Iterator[C]],
        *,
        tokens: int = 0,
        tokens_of: Callable[[C], int | None] | None = None,
        avoid: set[int] | None = None,
        only: frozenset[int] | None = None,
        affinity: bytes | None = None,
        resume: bool = True,
        spill: bool | None = None,
    ) -> Iterator[tuple[C, Member, int]]:
        """Stream from a chosen provider; fail over only while nothing has been yielded."""
        req = _Attempts(self, avoid, only, affinity, spill, resume)
        self._recall(req)
        while True:
            m, lease = self._acquire(req, tokens)
            req.count += 1
            used = 0
            started = False
            it = open_stream(m.provider)
            try:
                while True:
                    # The budget is read by the provider when the stream opens (first next);
                    # it must not leak into the caller's code between chunks.
                    budget = req.set_budget()
                    try:
                        chunk = next(it)
                    except StopIteration:
                        break
                    finally:
                        if budget is not None:
                            ATTEMPT_BUDGET.reset(budget)
                    req.check_deadline(m)
                    if tokens_of is not None:
                        used += tokens_of(chunk) or 0
                    started = True
                    yield chunk, m, req.count
            except BaseException as e:
                outcome = req.failed(m, e, started)
                close = getattr(it, "close", None)
                if close is not None:
                    close()
                self._release(m, lease, outcome, used or None, e)
                if req.again():
                    continue
                raise
            self._release(m, lease, Outcome.SUCCESS, used or None)
            self._remember(req, m)
            return

    async def astream(
        self,
        open_stream: Callable[[Provider], AsyncIterator[C]],
        *,
        tokens: int = 0,
        tokens_of: Callable[[C], int | None] | None = None,
        avoid: set[int] | None = None,
        only: frozenset[int] | None = None,
        affinity: bytes | None = None,
        resume: bool = True,
        spill: bool | None = None,
    ) -> AsyncIterator[tuple[C, Member, int]]:
        """Async twin of ``stream``."""
        req = _Attempts(self, avoid, only, affinity, spill, resume)
        await self._arecall(req)
        while True:
            m, lease = await self._aacquire(req, tokens)
            req.count += 1
            used = 0
            started = False
            it = open_stream(m.provider)
            try:
                while True:
                    budget = req.set_budget()
                    try:
                        chunk = await req.next_chunk(it, m)
                    except StopAsyncIteration:
                        break
                    finally:
                        if budget is not None:
                            ATTEMPT_BUDGET.reset(budget)
                    if tokens_of is not None:
                        used += tokens_of(chunk) or 0
                    started = True
                    yield chunk, m, req.count
            except BaseException as e:
                outcome = req.failed(m, e, started)
                aclose = getattr(it, "aclose", None)
                if aclose is not None:
                    # The stream is already broken; its own error is the one to keep.
                    with contextlib.suppress(Exception):
                        await aclose()
                await self._arelease(m, lease, outcome, used or None, e)
                if req.again():
                    continue
                raise
            await self._arelease(m, lease, Outcome.SUCCESS, used or None)
            await self._aremember(req, m)
            return

    # Stats -------------------------------------------------------------------------------------

    def count_validation_failure(self, member: Member) -> None:
        """Count an output of ``member`` that failed its validator."""
        self.state.count_validation_failure(member.key)

    async def acount_validation_failure(self, member: Member) -> None:
        """Async twin of ``count_validation_failure``."""
        await self.state.acount_validation_failure(member.key)

    def count_spend(self, member: Member, cost: float | None, cached_tokens: int) -> None:
        """Add a reply's cost and cached input tokens to ``member``'s totals (if there are any)."""
        if cost or cached_tokens:
            self.state.count_spend(member.key, cost or 0.0, cached_tokens)

    async def acount_spend(self, member: Member, cost: float | None, cached_tokens: int) -> None:
        """Async twin of ``count_spend``."""
        if cost or cached_tokens:
            await self.state.acount_spend(member.key, cost or 0.0, cached_tokens)

    def get_stats(self) -> dict[str, dict[str, Any]]:
        """Per-provider stats as DESIGN.md section 2 lists them (plus a few extras)."""
        now = self.clock.now()
        out: dict[str, dict[str, Any]] = {}
        for m in self.members:
            snap = self.state.snapshot(m.key, m.limits, now, **self._quota_args(m, now))
            cfg = m.config
            out[cfg.id] = {
                "vendor": cfg.vendor,
                "model": cfg.model,
                "total_requests": snap.total_requests,
                "total_tokens": snap.total_tokens,
                "error_count": snap.error_count,
                "active_requests": snap.active_requests,
                "state": snap.state,
                "window_used": snap.window_used,
                "rate_limit": cfg.rate_limit,
                "tpm": cfg.tpm,
                "tokens_in_window": snap.tokens_in_window,
                "validation_failures": snap.validation_failures,
                "resting_for": max(0.0, snap.rest_until - now, snap.exhausted_until - now),
                "tier": cfg.tier,
                # None for a key without a price: "no price" is not "free".
                "cost": snap.cost if cfg.price is not None or snap.cost else None,
                "cached_tokens": snap.cached_tokens,
                **self.observer.stats(m, now),
            }
            cut = self.cuts.stats(m.index, now) if self.cuts else None
            if cut is not None:
                out[cfg.id]["concurrency_cut"] = cut
            learned = self.learned.stats(m.index, now) if self.learned else []
            if m.limits.windows or learned:
                windows = window_stats(m.limits, snap, now)
                out[cfg.id]["windows"] = windows + learned
                ask = self._last_ask.get(m.index, 0.0)
                if snap.state == "closed" and budget_full(windows, ask):
                    out[cfg.id]["state"] = "budget"  # spent its budget, not at a request limit
        return out


def _async_setter(event: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # that waiter's loop is gone
            loop.call_soon_threadsafe(event.set)

    return wake


async def _shielded(aw: Awaitable[None]) -> None:
    """Finish a release even if the caller is being cancelled, so no slot leaks."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
