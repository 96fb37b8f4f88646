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
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from langchain_pllm.balancer.affinity import AffinityMap, ConversationKeys
from langchain_pllm.balancer.attempts import PICKER_FAILED, AttemptPolicy, Attempts, outcome_of
from langchain_pllm.balancer.metrics import PoolObserver
from langchain_pllm.balancer.picker import Member, Picker
from langchain_pllm.balancer.process_limits import ProcessLimits
from langchain_pllm.balancer.reasons import no_provider_error
from langchain_pllm.balancer.routes import ModelRoutes
from langchain_pllm.balancer.state_args import StateArgs
from langchain_pllm.balancer.stats import pool_stats
from langchain_pllm.clock import Clock
from langchain_pllm.config.models import with_http_backend
from langchain_pllm.providers import build_provider
from langchain_pllm.providers.base import ATTEMPT_BUDGET, Provider
from langchain_pllm.providers.rate_headers import HEADER_LIMITS, HEADER_REST
from langchain_pllm.state.base import BreakerPolicy, Lease, Outcome, StateBackend

if TYPE_CHECKING:
    from langchain_pllm.config import BalancerConfig, PoolConfig

__all__ = ["Balancer", "outcome_of"]

logger = logging.getLogger("langchain_pllm")

T = TypeVar("T")
C = TypeVar("C")


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
        self._lock = threading.Lock()
        self.affinity = (
            ConversationKeys(
                AffinityMap(config.affinity_size, config.affinity_ttl), state, self.by_key, clock
            )
            if config.affinity != "off"
            else None
        )
        self.breaker = BreakerPolicy(config.breaker_threshold, config.health_check_interval)
        self.policy = AttemptPolicy(config, clock)  # read once: not per call from pydantic
        self._waiters: list[Callable[[], None]] = []
        self._local = state.is_local
        self.observer = PoolObserver(self.members, self.get_stats, clock.now())
        self.args = StateArgs(self.members, clock, config)  # what the state hears per key
        self._spent_logged: set[int] = set()  # spent keys already logged in this episode
        self.limits = ProcessLimits(config.window, self._lock)  # learned here, per process

    # Acquire / release -------------------------------------------------------------------------

    def _wait_target(self, req: Attempts, wake: float, now: float) -> float:
        """Nothing has capacity until ``wake``: the time to wait until, or raise.

        The caller notes the request's attempts on what this raises (``Attempts.gave_up``).
        """
        if req.wait_until is None:
            self.observer.waited()
        until = req.wait_target(wake, now)
        if until is not None:
            return until
        # After a real failure, the caller gets that failure: "no capacity" would mask it (the
        # remaining keys are resting or open because of errors like it).
        if req.last_error is not None:
            raise req.last_error
        waited = now - req.wait_start
        max_wait = self.config.max_wait
        raise no_provider_error(self.members, self.state, req.only, now, waited, max_wait)

    def _refused(self, m: Member, wake: float, now: float) -> None:
        with self._lock:
            self.picker.reject(m, wake, now)

    def _abandoned(self, m: Member) -> None:
        # Cancelled (or failed) between the pick and the state's answer: undo the pick. A
        # lease a remote state granted meanwhile is that state's to give back.
        with self._lock:
            self.picker.undo(m)

    def _acquire(self, req: Attempts, tokens: int) -> tuple[Member, Lease]:
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
                held = None if self.limits.idle else self.limits.hold(c, tokens, now)
                if held is not None and not isinstance(held, list):
                    self._refused(c, held, now)
                    continue
                try:
                    c.provider.prepare(False)
                    r = self._take(c, tokens, now)
                except BaseException as e:
                    self.limits.keep(held, None)
                    self._abandoned(c)
                    req.gave_up(e)  # a state error or a cancellation ends the request too
                    raise
                if held is not None:
                    self.limits.keep(held, r)
                if isinstance(r, Lease):
                    if req.count:
                        self.observer.retried(c)
                    _fresh_headers()
                    return c, r
                self._refused(c, r, now)
                continue
            try:
                clock.wait(event, self._wait_target(req, c, now))
            except BaseException as e:  # given up, or interrupted while waiting
                req.gave_up(e)
                raise

    async def _aacquire(self, req: Attempts, tokens: int) -> tuple[Member, Lease]:
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
                held = None if self.limits.idle else self.limits.hold(c, tokens, now)
                if held is not None and not isinstance(held, list):
                    self._refused(c, held, now)
                    continue
                try:
                    c.provider.prepare(True)
                    if self._local:
                        r = self._take(c, tokens, now)
                    else:
                        extra = self.args.acquire(c, now, tokens)
                        r = await self.state.aacquire(
                            c.key, c.limits, tokens, now, self.breaker, **extra
                        )
                except BaseException as e:
                    self.limits.keep(held, None)
                    self._abandoned(c)
                    req.gave_up(e)  # a state error or a cancellation ends the request too
                    raise
                if held is not None:
                    self.limits.keep(held, r)
                if isinstance(r, Lease):
                    if req.count:
                        self.observer.retried(c)
                    _fresh_headers()
                    return c, r
                self._refused(c, r, now)
                continue
            try:
                await clock.await_event(event, self._wait_target(req, c, now))
            except BaseException as e:  # given up, or cancelled while waiting
                req.gave_up(e)
                raise

    def _take(self, c: Member, tokens: int, now: float) -> Lease | float:
        """The state's sync acquire: the extra keywords only for keys that have them.

        Only keys with calendar days or budgets send them, so a state written before them
        still works (and an empty ``**`` costs a dict merge per call on the hot path).
        """
        if self.args.needed:
            extra = self.args.acquire(c, now, tokens)
            return self.state.acquire(c.key, c.limits, tokens, now, self.breaker, **extra)
        return self.state.acquire(c.key, c.limits, tokens, now, self.breaker)

    def _after_release(
        self,
        m: Member,
        lease: Lease,
        outcome: Outcome,
        used: int | None = None,
        exc: BaseException | None = None,
    ) -> None:
        now = self.clock.now()
        self.observer.attempt(m, lease, outcome, used, now)
        limits = self.limits
        # Skipped when it has nothing to do: no reservation held, nothing to learn from.
        learn = (
            not limits.idle
            or exc is not None
            or (outcome is Outcome.SUCCESS and HEADER_LIMITS.get() is not None)
        )
        with self._lock:
            if learn:
                limits.released(m, lease, outcome, used, exc, now)  # before ``done``
            self.picker.done(m, PICKER_FAILED[outcome])
            waiters: list[Callable[[], None]] | tuple[()] = self._waiters or ()
            if waiters:
                self._waiters = []  # a new list only when someone waits
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
        args = self.args
        rest = args.rest(m, outcome, exc)
        now = self.clock.now()
        if args.needed:
            usage = args.usage(m, tokens_used)
            self.state.release(
                lease,
                outcome,
                now,
                self.breaker,
                tokens_used=tokens_used,
                retry_after=rest,
                **usage,
            )
        else:
            self.state.release(
                lease, outcome, now, self.breaker, tokens_used=tokens_used, retry_after=rest
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
            args = self.args
            usage = args.usage(m, tokens_used)
            await self.state.arelease(
                lease,
                outcome,
                self.clock.now(),
                self.breaker,
                tokens_used=tokens_used,
                retry_after=args.rest(m, outcome, exc),
                **usage,
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

        Raises:
            BaseException: The last attempt's error, ``NoProviderAvailableError`` when no
                key had capacity in time, or what interrupted the request (a cancellation, a
                state error); each carries ``attempts``, the attempts made.
        """
        req = self.policy.start(avoid, only, affinity, spill, resume)
        if req.affinity is not None and self.affinity is not None:
            self.affinity.recall(req)
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
                req.gave_up(e)
                raise
            finally:
                if token is not None:
                    ATTEMPT_BUDGET.reset(token)
            used = tokens_of(result) if tokens_of else None
            self._release(m, lease, Outcome.SUCCESS, used)
            if req.affinity is not None and self.affinity is not None:
                self.affinity.remember(req, m)
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
        req = self.policy.start(avoid, only, affinity, spill, resume)
        if req.affinity is not None and self.affinity is not None:
            await self.affinity.arecall(req)
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
                req.gave_up(e)
                raise
            finally:
                if token is not None:
                    ATTEMPT_BUDGET.reset(token)
            used = tokens_of(result) if tokens_of else None
            await self._arelease(m, lease, Outcome.SUCCESS, used)
            if req.affinity is not None and self.affinity is not None:
                await self.affinity.aremember(req, m)
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
        req = self.policy.start(avoid, only, affinity, spill, resume)
        if req.affinity is not None and self.affinity is not None:
            self.affinity.recall(req)
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
                req.gave_up(e)
                raise
            self._release(m, lease, Outcome.SUCCESS, used or None)
            if req.affinity is not None and self.affinity is not None:
                self.affinity.remember(req, m)
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
        req = self.policy.start(avoid, only, affinity, spill, resume)
        if req.affinity is not None and self.affinity is not None:
            await self.affinity.arecall(req)
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
                req.gave_up(e)
                raise
            await self._arelease(m, lease, Outcome.SUCCESS, used or None)
            if req.affinity is not None and self.affinity is not None:
                await self.affinity.aremember(req, m)
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
        return pool_stats(self.members, self.state, self.args, self.limits, self.observer, now)


def _fresh_headers() -> None:
    """This attempt's reply headers report afresh (a set only where a reply left a value)."""
    if HEADER_REST.get() is not None:
        HEADER_REST.set(None)
    if HEADER_LIMITS.get() is not None:
        HEADER_LIMITS.set(None)


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
