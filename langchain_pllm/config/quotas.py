"""A key's quotas as the vendor states them: the ``limits:`` block and ``quota_reset``.

``limits:`` maps a resource (requests, tokens, input_tokens, output_tokens, cost) to one
string or a list in the notation of the ``limits`` package (``15/minute``, ``1500 per day``,
``10/2 minutes``), parsed by that package rather than by hand; ``concurrency`` is a count.
``quota_reset: "00:00 America/Los_Angeles"`` makes a key's one-day windows calendar days that
end at that local time (an IANA zone, read by ``zoneinfo``, so DST moves the reset with it).
What comes out is plain data (``QuotaWindow``) that the state layer reads; nothing here knows
how windows are kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from langchain_pllm.config.checks import checked_int, fail, show

__all__ = [
    "DAY",
    "RESOURCES",
    "QuotaLimits",
    "QuotaReset",
    "QuotaWindow",
    "parse_limits",
    "parse_quota_reset",
]

#: What a window can count, in the order stats list them.
RESOURCES = ("requests", "tokens", "input_tokens", "output_tokens", "cost")
DAY = 86_400.0

_EXAMPLE = "e.g. limits: {requests: [15/minute, 1500/day], tokens: 1000000/minute, concurrency: 4}"


@dataclass(frozen=True, slots=True)
class QuotaWindow:
    """``limit`` units of ``resource`` per ``period`` seconds."""

    resource: str
    limit: float
    period: float


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """A parsed ``limits:`` block: its windows and its concurrency cap."""

    windows: tuple[QuotaWindow, ...] = ()
    concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class QuotaReset:
    """The local time of day at which a key's day windows reset."""

    at: time
    zone: str

    @property
    def tzinfo(self) -> ZoneInfo:
        """The zone as a ``tzinfo``."""
        return ZoneInfo(self.zone)


_MONEY = re.compile(r"^(\d*\.\d+)(\s*(?:/|per\s).*)$")


def _windows_of(resource: str, value: Any) -> list[QuotaWindow]:
    items = value if isinstance(value, (list, tuple)) else [value]
    out: list[QuotaWindow] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise fail(
                f"{resource} must be a string such as '15/minute' or a list of them, "
                f"got {show(item)}; {_EXAMPLE}"
            )
        text = str(item).strip()
        # The ``limits`` package takes a while to import (~0.1 s): only configs using it pay.
        from limits import parse_many

        # Money is decimal ('0.01/minute') but the package counts whole units: a cost amount
        # with a fraction is read apart and the package reads only its period ('1/minute').
        money = _MONEY.match(text) if resource == "cost" else None
        try:
            parsed = parse_many(f"1{money[2]}" if money else text)
        except ValueError:
            parsed = []
        if money and len(parsed) == 1:
            out.append(QuotaWindow(resource, float(money[1]), float(parsed[0].get_expiry())))
            continue
        if not parsed or any(p.amount < 0 for p in parsed):
            raise fail(
                f"{resource}: cannot read {show(item)}; write N/unit with a unit from "
                f"second to day ('15/minute', '1500 per day', '10/2 minutes'); {_EXAMPLE}"
            )
        out.extend(QuotaWindow(resource, float(p.amount), float(p.get_expiry())) for p in parsed)
    return out


def parse_limits(value: Any) -> QuotaLimits:
    """Read a ``limits:`` block.

    Args:
        value: The mapping from YAML or a dict.

    Returns:
        The windows (one per limit, sorted by resource then period) and the concurrency cap.
        An already parsed ``QuotaLimits`` is returned as is.

    Raises:
        PydanticCustomError: through ``fail``; config validation turns it into a
            ``PllmConfigError`` naming the field, with a good example.
    """
    if isinstance(value, QuotaLimits):
        return value
    if not isinstance(value, Mapping):
        raise fail(f"limits must be a mapping, got {show(value)}; {_EXAMPLE}")
    windows: list[QuotaWindow] = []
    concurrency: int | None = None
    for resource, given in value.items():
        if resource == "concurrency":
            concurrency = checked_int(given, "concurrency", minimum=1)
            continue
        if resource not in RESOURCES:
            raise fail(
                f"no resource {show(resource)}; the resources are "
                f"{', '.join(RESOURCES)} and concurrency; {_EXAMPLE}"
            )
        windows.extend(_windows_of(str(resource), given))
    order = {name: i for i, name in enumerate(RESOURCES)}
    windows.sort(key=lambda w: (order[w.resource], w.period))
    return QuotaLimits(tuple(windows), concurrency)


_RESET = re.compile(r"^\s*(\d{1,2}):(\d{2})\s+(\S+)\s*$")


def parse_quota_reset(value: Any) -> QuotaReset:
    """Read ``quota_reset: "HH:MM Area/City"``."""
    if isinstance(value, QuotaReset):
        return value
    hint = "write the local time and IANA zone, e.g. quota_reset: '00:00 America/Los_Angeles'"
    match = _RESET.match(value) if isinstance(value, str) else None
    if match is None:
        raise fail(f"cannot read {show(value)}; {hint}")
    hour, minute, zone = int(match[1]), int(match[2]), match[3]
    if hour > 23 or minute > 59:
        raise fail(f"{show(value)} is not a time of day; {hint}")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise fail(f"unknown time zone {show(zone)}; {hint}") from None
    return QuotaReset(time(hour, minute), zone)
