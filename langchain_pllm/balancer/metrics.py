"""What the balancer tells the world about each attempt: recent stats, and OpenTelemetry metrics.

The balancer calls ``PoolObserver`` at three points: an attempt ended (``attempt``), a request
went on to another attempt (``retried``), a request had to wait for capacity (``waited``). The
observer keeps each key's ``RecentAttempts`` (read by ``get_stats``) and, when the ``[otel]``
extra is installed, records through the OpenTelemetry API only; the application picks the SDK
and exporter, and without one the API's no-op meter takes the calls.

Instruments follow the GenAI semantic conventions where they have one:
``gen_ai.client.token.usage`` (histogram, ``gen_ai.token.type`` input/output) and
``gen_ai.client.operation.duration`` (seconds, ``error.type`` on failures), each with
``gen_ai.operation.name``, ``gen_ai.provider.name`` and ``gen_ai.request.model``. The pool's own
are named ``pllm.*``: attempts by outcome, retries, waits, and observable gauges read from the
state when a reader collects: requests in flight, each window's use and limit, the provider's
state (one series per state, 1 for the current one) and the seconds it still rests. The five
gauges share one ``get_stats`` per pool per collection. Every series carries
``pllm.provider.id`` (the provider's name or id) and never anything of the key.

Without the extra the import below fails once, at import time, and the observer keeps only
the recent stats: no instrument, no call, no cost.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from langchain_pllm._version import __version__
from langchain_pllm.balancer.recent import RecentAttempts, TokenUsage
from langchain_pllm.state.base import Lease, Outcome

if TYPE_CHECKING:
    from langchain_pllm.balancer.picker import Member

try:
    from opentelemetry import metrics as _otel
except ImportError:  # the [otel] extra is not installed
    _otel = None  # type: ignore[assignment]

__all__ = ["OPERATION", "OTEL_AVAILABLE", "PoolObserver", "operation"]

OTEL_AVAILABLE = _otel is not None

OPERATION: contextvars.ContextVar[str] = contextvars.ContextVar("pllm_operation", default="chat")
"""The GenAI operation a balancer call serves: ``chat`` unless a face says otherwise."""

# Our vendor names where the GenAI conventions name the provider differently.
_PROVIDER_NAMES = {"google": "gcp.gemini", "zhipu": "zhipu_ai"}
_STATES = ("closed", "half_open", "open")
_OUTCOMES = {o: o.name.lower() for o in Outcome}
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)


@contextlib.contextmanager
def operation(name: str) -> Iterator[None]:
    """Label the balancer calls made inside the block as GenAI operation ``name``."""
    token = OPERATION.set(name)
    try:
        yield
    finally:
        OPERATION.reset(token)


def _labels(m: Member) -> dict[str, str]:
    cfg = m.config
    return {
        "gen_ai.provider.name": _PROVIDER_NAMES.get(cfg.vendor, cfg.vendor),
        "gen_ai.request.model": cfg.model,
        "pllm.provider.id": cfg.id,
    }


class _Instruments:
    """The process's OpenTelemetry instruments, built once when the first pool needs them.

    Once per process because a meter keeps the first instrument of a name and ignores the
    callbacks of a second: the gauges read every live pool in one callback instead.
    """

    def __init__(self) -> None:
        assert _otel is not None
        meter = _otel.get_meter("langchain_pllm", __version__)
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens used per attempt, by gen_ai.token.type (input, output).",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Duration of each attempt on a provider.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.attempts = meter.create_counter(
            "pllm.attempts", unit="{attempt}", description="Attempts by pllm.outcome."
        )
        self.retries = meter.create_counter(
            "pllm.retries", unit="{attempt}", description="Attempts that retried a request."
        )
        self.waits = meter.create_counter(
            "pllm.waits", unit="{wait}", description="Requests that waited for free capacity."
        )
        self.pools: weakref.WeakSet[PoolObserver] = weakref.WeakSet()
        self.collection = _Collection(self.pools)

        def gauge(name: str, unit: str, description: str, read: _Reader) -> None:
            self.collection.gauges.add(name)

            def callback(_options: Any) -> Iterable[Any]:
                out = []
                for labels, row in self.collection.rows(name):
                    for value, extra in read(row):
                        out.append(_otel_observation(value, {**labels, **extra}))
                return out

            meter.create_observable_gauge(name, [callback], unit=unit, description=description)

        gauge(
            "pllm.provider.active_requests",
            "{request}",
            "Requests in flight on the provider (fleet-wide with a shared state).",
            lambda r: [(r.get("active_requests") or 0, {})],
        )
        gauge("pllm.provider.window.usage", "1", "Use of each window.", _window_reader("used"))
        gauge("pllm.provider.window.limit", "1", "Limit of each window.", _window_reader("limit"))
        gauge(
            "pllm.provider.state",
            "1",
            "1 for the provider's current state (closed, half_open, open, ...), else 0.",
            _state_reader,
        )
        gauge(
            "pllm.provider.resting",
            "s",
            "Seconds the provider still rests after a 429.",
            lambda r: [(r.get("resting_for") or 0.0, {})],
        )


_Rows = list[tuple[dict[str, str], dict[str, Any]]]


class _Collection:
    """One ``get_stats`` per pool per collection, shared by the gauges.

    The OpenTelemetry Python API has no callback for several instruments at once, and a reader
    calls each gauge's callback in turn; each would read the state (a Redis round trip per key)
    on its own. So the first gauge of a collection reads every live pool and the others reuse
    those rows. A collection is told from the next by the gauges themselves: a gauge asking
    again for rows it has read starts a new one. The age bound keeps a gauge that a collection
    skipped (a reader's timeout) from reading rows of an earlier one.

    Args:
        pools: The live pools (held weakly by the caller).
    """

    MAX_AGE = 1.0
    """Seconds rows may be reused within one collection (real time: readers run on it)."""

    def __init__(self, pools: Iterable[PoolObserver]) -> None:
        self._pools = pools
        self.gauges: set[str] = set()
        """The name of every gauge that reads the rows."""
        self._unread: set[str] = set()
        self._rows: _Rows = []
        self._taken = 0.0
        self._lock = threading.Lock()

    def rows(self, gauge: str) -> _Rows:
        """Every live pool's labels and stats rows, for ``gauge`` in this collection."""
        with self._lock:
            fresh = time.monotonic() - self._taken < self.MAX_AGE
            if gauge not in self._unread or not fresh:
                # Nothing is left to reuse if the read below fails: the next gauge reads again.
                self._unread, self._rows = set(), []
                self._rows = [row for pool in list(self._pools) for row in pool.rows()]
                self._unread, self._taken = set(self.gauges), time.monotonic()
            self._unread.discard(gauge)
            return self._rows


_INSTRUMENTS: _Instruments | None = None
_INSTRUMENTS_LOCK = threading.Lock()


def _instruments() -> _Instruments:
    global _INSTRUMENTS
    with _INSTRUMENTS_LOCK:
        if _INSTRUMENTS is None:
            _INSTRUMENTS = _Instruments()
        return _INSTRUMENTS


_Reader = Callable[[dict[str, Any]], list[tuple[float, dict[str, str]]]]


def _otel_observation(value: float, labels: dict[str, str]) -> Any:
    assert _otel is not None
    return _otel.Observation(value, labels)


def _window_reader(field: str) -> _Reader:
    def read(row: dict[str, Any]) -> list[tuple[float, dict[str, str]]]:
        listed = row.get("windows")
        if isinstance(listed, list):
            windows = [(str(w.get("name")), w.get(field)) for w in listed]
        else:
            windows = [("requests", row.get("window_used" if field == "used" else "rate_limit"))]
            windows.append(("tokens", row.get("tokens_in_window" if field == "used" else "tpm")))
        return [(v, {"pllm.window": name}) for name, v in windows if v is not None]

    return read


def _state_reader(row: dict[str, Any]) -> list[tuple[float, dict[str, str]]]:
    current = str(row.get("state"))
    states = _STATES if current in _STATES else (*_STATES, current)
    return [(1 if s == current else 0, {"pllm.state": s}) for s in states]


class PoolObserver:
    """Recent stats per member and, with the ``[otel]`` extra, OpenTelemetry metrics.

    Args:
        members: The balancer's members (indexed by ``Member.index``).
        stats: The balancer's ``get_stats``; held weakly, so gauges never keep a pool alive.
        born: When the pool was built (a younger pool's requests/s are over its age).
    """

    def __init__(
        self,
        members: list[Member],
        stats: Callable[[], dict[str, dict[str, Any]]],
        born: float = -math.inf,
    ) -> None:
        self.recent = [RecentAttempts(born) for _ in members]
        self.labels = [_labels(m) for m in members]
        self._ids = {m.config.id: i for i, m in enumerate(members)}
        self._stats = weakref.WeakMethod(stats)
        self._otel: _Instruments | None = None
        if _otel is not None:
            self._otel = _instruments()
            self._otel.pools.add(self)

    def rows(self) -> _Rows:
        """Each provider's labels and stats row, for the gauges (empty once the pool is gone)."""
        stats = self._stats()
        if stats is None:
            return []
        return [(self.labels[self._ids[pid]], row) for pid, row in stats().items()]

    def attempt(
        self, m: Member, lease: Lease, outcome: Outcome, used: int | None, now: float
    ) -> None:
        """An attempt on ``m`` ended with ``outcome`` at ``now``, having used ``used`` tokens."""
        latency = max(0.0, now - lease.started)
        ok = outcome is Outcome.SUCCESS
        self.recent[m.index].add(now, latency if ok else None, used)
        ins = self._otel
        if ins is None:
            return
        op = OPERATION.get()
        labels = {**self.labels[m.index], "gen_ai.operation.name": op}
        ins.attempts.add(1, {**labels, "pllm.outcome": _OUTCOMES[outcome]})
        if outcome is not Outcome.CANCELLED:
            ins.duration.record(
                latency, labels if ok else {**labels, "error.type": _OUTCOMES[outcome]}
            )
        if isinstance(used, TokenUsage):
            ins.tokens.record(used.input_tokens, {**labels, "gen_ai.token.type": "input"})
            if op != "embeddings":  # embeddings have no output tokens
                ins.tokens.record(used.output_tokens, {**labels, "gen_ai.token.type": "output"})

    def retried(self, m: Member) -> None:
        """A request that failed on another key got an attempt on ``m``."""
        if self._otel is not None:
            self._otel.retries.add(1, self.labels[m.index])

    def waited(self) -> None:
        """A request found no capacity and began to wait."""
        if self._otel is not None:
            self._otel.waits.add(1)

    def stats(self, m: Member, now: float) -> dict[str, Any]:
        """The recent-stats fields of ``m`` for ``get_stats``."""
        return self.recent[m.index].stats(now)
