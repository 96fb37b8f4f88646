"""Fault descriptions and the schedule that decides which request gets which fault.

A fake server asks its ``FaultSchedule`` once per request, at arrival; the schedule answers from,
in this order, the faults bound to the request's API key, the fault bound to every key, the
queue of one-shot faults, and the seeded random injection. Everything is guarded by one lock
because the server's event loop and the test's thread both touch it.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fault:
    """What a fake server does wrong for one request.

    Attributes:
        status: HTTP status of an error reply in the vendor's error format (429, 500, 503,
            401, 403, 404, 400, 529, ...). ``None`` keeps the normal reply (useful with only
            ``latency``, or with ``malformed``, ``drop`` or ``cut_after``).
        retry_after: Seconds sent in the ``Retry-After`` header (and ``retry-after-ms`` for
            OpenAI-style servers).
        latency: Seconds to wait before answering; an async sleep, other requests go on.
        drop: Close the connection without any response (a reset before the headers).
        malformed: Answer 200 with a body that is not valid JSON.
        cut_after: For streams: send this many content chunks, then reset the connection
            (a non-streamed reply is dropped whole).
        cut_body: For non-streamed replies: send the status line, the headers (with the full
            ``Content-Length``) and half of the JSON body, then reset the connection.
        chunk_delay: For streams: seconds to wait before each content chunk (a slow stream
            that a deadline can cut).
        message: Error message placed in the vendor's error body.
        code: Vendor error code (e.g. Zhipu ``"1261"``, OpenAI ``"context_length_exceeded"``,
            an Anthropic error type or a Gemini status string).
        error_type: The error's ``type`` where the vendor has one apart from the code (OpenAI's
            ``"insufficient_quota"``, Anthropic's ``"invalid_request_error"``).
        details: Extra detail objects for vendors whose errors carry them (Gemini's
            ``google.rpc.QuotaFailure`` and ``google.rpc.RetryInfo``).
    """

    status: int | None = None
    retry_after: float | None = None
    latency: float = 0.0
    drop: bool = False
    malformed: bool = False
    cut_after: int | None = None
    cut_body: bool = False
    chunk_delay: float = 0.0
    message: str = ""
    code: str | None = None
    error_type: str | None = None
    details: tuple[dict[str, Any], ...] = ()

    @property
    def is_error(self) -> bool:
        """Whether this fault answers with an error status instead of a reply."""
        return self.status is not None and self.status >= 300


class FaultSchedule:
    """Thread-safe source of faults: per key, queued, and random at a seeded rate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        # api_key -> (fault, remaining uses or None for unlimited); `None` is every key
        self._by_key: dict[str | None, tuple[Fault, int | None]] = {}
        self._rate = 0.0
        self._rate_faults: list[Fault] = []
        self._rng = random.Random(0)

    def enqueue(self, *faults: Fault) -> None:
        """Append one-shot faults, consumed one per request in arrival order."""
        with self._lock:
            self._queue.extend(faults)

    def for_key(self, api_key: str | None, fault: Fault | None, times: int | None = None) -> None:
        """Give every request made with ``api_key`` this fault (at most ``times`` times).

        ``api_key=None`` binds the fault to every key (a key's own fault still comes first);
        ``fault=None`` removes the binding.
        """
        with self._lock:
            if fault is None:
                self._by_key.pop(api_key, None)
            else:
                self._by_key[api_key] = (fault, times)

    def set_rate(self, rate: float, faults: list[Fault], seed: int = 0) -> None:
        """Inject one of ``faults`` (picked at random) into a ``rate`` share of requests."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be within [0, 1], got {rate}")
        if rate and not faults:
            raise ValueError("a non-zero fault rate needs at least one fault")
        with self._lock:
            self._rate = rate
            self._rate_faults = list(faults)
            self._rng = random.Random(seed)

    def clear(self) -> None:
        """Forget every scheduled fault."""
        with self._lock:
            self._queue.clear()
            self._by_key.clear()
            self._rate = 0.0
            self._rate_faults = []

    def pending(self) -> int:
        """Number of queued one-shot faults not yet consumed."""
        with self._lock:
            return len(self._queue)

    def next_fault(self, api_keys: tuple[str, ...]) -> Fault | None:
        """Return the fault for a request authenticated by any of ``api_keys``, if any."""
        if not (self._queue or self._by_key or self._rate):
            return None  # the common case, kept lock-free
        with self._lock:
            for key in (*api_keys, None):
                entry = self._by_key.get(key)
                if entry is None:
                    continue
                fault, remaining = entry
                if remaining is not None:
                    if remaining <= 0:
                        del self._by_key[key]
                        continue
                    self._by_key[key] = (fault, remaining - 1)
                return fault
            if self._queue:
                return self._queue.popleft()
            if self._rate and self._rng.random() < self._rate:
                return self._rng.choice(self._rate_faults)
        return None
