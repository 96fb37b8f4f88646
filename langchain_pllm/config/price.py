"""The price of a provider's tokens, and what one reply cost at that price.

A ``price`` is per million tokens, in whatever currency the user writes (the package never
converts). Input splits in two: tokens the vendor served from its prompt cache
(``cached_input``, usually half the price or less) and the rest. That split is why prompt-cache
affinity pays, and why a reply's cost needs the usage's cache-read count, not only its totals.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from langchain_pllm.config.checks import checked_number

__all__ = ["Price"]

_PER = 1_000_000.0


class Price(BaseModel):
    """Prices per million tokens: ``input``, ``output`` and ``cached_input`` (default: input)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    input: float
    """Price of a million uncached input tokens."""
    output: float
    """Price of a million output tokens (reasoning included, as vendors bill it)."""
    cached_input: float | None = None
    """Price of a million input tokens read from the prompt cache; ``None``: the input price."""

    @field_validator("input", "output", "cached_input", mode="before")
    @classmethod
    def _check_price(cls, value: Any, info: Any) -> float | None:
        if value is None and info.field_name == "cached_input":
            return None
        return checked_number(value, f"price.{info.field_name}", positive=False)

    @model_validator(mode="after")
    def _default_cached(self) -> Price:
        if self.cached_input is None:
            object.__setattr__(self, "cached_input", self.input)
        return self

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        """What a reply cost: ``input_tokens`` counts every input token, cached ones included.

        Args:
            input_tokens: All input tokens of the reply (LangChain's ``input_tokens``).
            output_tokens: Output tokens.
            cached_tokens: The part of ``input_tokens`` read from the vendor's prompt cache.

        Returns:
            The cost in the price's currency.
        """
        cached = min(max(cached_tokens, 0), input_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        return (
            (input_tokens - cached) * self.input
            + cached * cached_price
            + output_tokens * self.output
        ) / _PER
