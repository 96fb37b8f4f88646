"""What a reply cost: its usage at its provider's price, cached input apart.

``usage_metadata`` already carries every vendor's cache-read count (``input_token_details
["cache_read"]``, parsed by each provider), so one rule prices them all. A stream reports usage
on some of its chunks; ``StreamSpend`` adds them up as LangChain does, so the final chunk can
carry the cost of the whole reply.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages.ai import UsageMetadata, add_usage

from langchain_pllm.config import Price

__all__ = ["StreamSpend", "reply_spend"]


def reply_spend(price: Price | None, usage: UsageMetadata | None) -> tuple[float | None, int]:
    """The cost of a reply (``None`` without a price or usage) and its cached input tokens."""
    if not usage:
        return None, 0
    details: Any = usage.get("input_token_details") or {}
    cached = int(details.get("cache_read") or 0)
    if price is None:
        return None, cached
    return price.cost(usage["input_tokens"], usage["output_tokens"], cached), cached


class StreamSpend:
    """Sums the usage a stream's chunks report."""

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: UsageMetadata | None = None

    def add(self, usage: UsageMetadata | None) -> None:
        """Add one chunk's usage."""
        if usage:
            self.usage = add_usage(self.usage, usage)
