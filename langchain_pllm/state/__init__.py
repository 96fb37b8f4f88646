"""Where windows, breakers and counters live: ``memory`` (default) or ``redis://``.

``state_for`` returns the one backend of this process for a state URL and clock, so every
balancer that names the same URL shares one truth per key.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from langchain_pllm.state.base import (
    BreakerPolicy,
    KeySnapshot,
    Lease,
    Limits,
    Outcome,
    StateBackend,
)
from langchain_pllm.state.memory import MemoryState, memory_state_for

if TYPE_CHECKING:
    from langchain_pllm.balancer.clock import Clock
    from langchain_pllm.config import BalancerConfig

__all__ = [
    "BreakerPolicy",
    "KeySnapshot",
    "Lease",
    "Limits",
    "MemoryState",
    "Outcome",
    "StateBackend",
    "state_for",
]

_REMOTE: dict[tuple[str, int], StateBackend] = {}
_REMOTE_LOCK = threading.Lock()


def state_for(config: BalancerConfig, clock: Clock) -> StateBackend:
    """The shared state backend named by ``config.state`` for this clock."""
    url = config.state
    if url == "memory":
        return memory_state_for(clock)
    with _REMOTE_LOCK:
        key = (url, id(clock))
        backend = _REMOTE.get(key)
        if backend is None:
            from langchain_pllm.state.redis import RedisState

            backend = _REMOTE[key] = RedisState.from_config(config, clock)
        return backend
