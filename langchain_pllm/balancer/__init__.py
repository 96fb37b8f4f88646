"""Pick a provider, wait for capacity, retry, break circuits, count: vendor-blind.

``shared_balancer`` hands every face built from the same pool, balancer settings and clock the
same ``Balancer``, so a model, its ``bind_tools`` copy and a second model made from the same
config share one SDK client per key, one pick order and one view of load.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

from langchain_pllm.balancer.balancer import Balancer, outcome_of
from langchain_pllm.balancer.picker import Member, Picker
from langchain_pllm.clock import DEFAULT_CLOCK, Clock, ManualClock, MonotonicClock
from langchain_pllm.state import state_for

if TYPE_CHECKING:
    from langchain_pllm.config import BalancerConfig, PoolConfig

__all__ = [
    "DEFAULT_CLOCK",
    "Balancer",
    "Clock",
    "ManualClock",
    "Member",
    "MonotonicClock",
    "Picker",
    "outcome_of",
    "shared_balancer",
]

_SHARED: weakref.WeakValueDictionary[tuple[object, ...], Balancer] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def shared_balancer(
    pool: PoolConfig, config: BalancerConfig, clock: Clock | None = None
) -> Balancer:
    """The balancer of this process for ``pool`` and ``config`` (built on first use)."""
    clock = clock or DEFAULT_CLOCK
    key = (pool, config, id(clock))
    with _SHARED_LOCK:
        balancer = _SHARED.get(key)
        if balancer is None or balancer.clock is not clock:
            balancer = Balancer(pool, config, clock=clock, state=state_for(config, clock))
            _SHARED[key] = balancer
        return balancer
