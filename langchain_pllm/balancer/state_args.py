"""What the balancer tells the state about a key beyond its tokens, on acquire and on release.

The state keeps no clock and prices nothing, so per key the balancer sends: on acquire, the
current calendar day of its one-day windows (``quota_reset``) and the estimated cost a budget
reserves; on release, the reply's real cost and how long the key rests after the attempt's
outcome (a 429's ``Retry-After``, a spent key's day or ``exhausted_rest``, a reply whose
rate-limit headers say a resource is used up). A key with none of these sends nothing more,
so a state written before them still works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_pllm.balancer.picker import Member
from langchain_pllm.balancer.quota import DayPeriods, cost_ask, cost_used, has_budget
from langchain_pllm.clock import Clock
from langchain_pllm.providers.rate_headers import HEADER_REST
from langchain_pllm.state.base import Outcome, Periods

if TYPE_CHECKING:
    from langchain_pllm.config import BalancerConfig

__all__ = ["StateArgs"]


class StateArgs:
    """The per-key keywords of ``StateBackend.acquire`` and ``release``, and their memory.

    Args:
        members: The pool's members.
        clock: The balancer's clock (its wall time names calendar days).
        config: The balancer's settings (``default_retry_after``, ``exhausted_rest``).
    """

    __slots__ = (
        "_budgeted",
        "_clock",
        "_days",
        "_default_rest",
        "_exhausted_rest",
        "last_ask",
        "needed",
    )

    def __init__(self, members: list[Member], clock: Clock, config: BalancerConfig) -> None:
        self._clock = clock
        self._default_rest = config.default_retry_after
        self._exhausted_rest = config.exhausted_rest
        # Keys with calendar day windows (quota_reset): their current day, from the wall clock.
        self._days = {
            m.index: DayPeriods(m.limits, m.config.quota_reset)
            for m in members
            if m.limits.calendar and m.config.quota_reset is not None
        }
        self._budgeted = frozenset(m.index for m in members if has_budget(m.config, m.limits))
        self.last_ask: dict[int, float] = {}  # each budgeted key's last cost estimate
        # Whether any key has calendar days or a budget; without, ``acquire`` and ``usage``
        # always answer ``{}`` and the balancer does not ask them.
        self.needed = bool(self._days) or bool(self._budgeted)

    def _periods(self, m: Member, now: float) -> Periods | None:
        days = self._days.get(m.index)
        return days.periods(now, self._clock.wall()) if days is not None else None

    def acquire(self, m: Member, now: float, tokens: int | None = None) -> dict[str, Any]:
        """Keywords of an acquire (or a snapshot, without ``tokens``) of ``m`` at ``now``."""
        periods = self._periods(m, now) if self._days else None
        out: dict[str, Any] = {"periods": periods} if periods is not None else {}
        if tokens is not None and m.index in self._budgeted:
            ask = out["ask"] = cost_ask(m.config, tokens)
            self.last_ask[m.index] = ask["cost"]  # what "budget" in get_stats measures by
        return out

    def usage(self, m: Member, tokens_used: int | None) -> dict[str, Any]:
        """Keywords of a release: the real cost, only for a key with a budget."""
        usage = cost_used(m.config, tokens_used) if m.index in self._budgeted else None
        return {"usage": usage} if usage is not None else {}

    def rest(self, m: Member, outcome: Outcome, exc: BaseException | None) -> float | None:
        """How long ``m`` rests after an attempt that ended in ``outcome`` (``None``: not)."""
        if outcome is Outcome.EXHAUSTED:
            # Until the key's day resets when it has calendar days, else the configured rest.
            days = self._days.get(m.index)
            if days is not None:
                now = self._clock.now()
                return days.next_reset(now, self._clock.wall()) - now
            return self._exhausted_rest
        if outcome is Outcome.SUCCESS:
            # The reply's rate-limit headers said a resource is used up: rest until its reset.
            return HEADER_REST.get()
        if outcome is not Outcome.RATE_LIMITED:
            return None
        ra = getattr(exc, "retry_after", None)
        if ra is None and getattr(exc, "concurrency_exceeded", False):
            return None  # the lowered cap answers it; the key's other slots keep serving
        return self._default_rest if ra is None else float(ra)
