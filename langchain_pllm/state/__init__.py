"""Where windows, breakers and counters live: ``memory`` (default) or ``redis://``.

``state_for`` returns the one backend of this process for a state URL, clock and settings, so
every balancer that names the same URL shares one truth per key.
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
    from langchain_pllm.clock import Clock
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

_REMOTE: dict[tuple[object, ...], StateBackend] = {}
_REMOTE_LOCK = threading.Lock()


def state_for(config: BalancerConfig, clock: Clock) -> StateBackend:
    """The shared state backend named by ``config.state`` for this clock.

    Backends are shared by URL, clock and every setting that shapes one (lease length,
    Redis timeout, local share, key prefix, whose clock is used), so a model with other
    settings gets a backend of its own rather than the first one's settings.
    """
    url = config.state
    if url == "memory":
        return memory_state_for(clock)
    from langchain_pllm.state.redis import RedisState

    redis_url, options = RedisState.options_from_config(config, clock)
    key = (redis_url, id(clock), *sorted(options.items()))
    with _REMOTE_LOCK:
        backend = _REMOTE.get(key)
        if backend is None:
            backend = _REMOTE[key] = RedisState(redis_url, **options)
        return backend
