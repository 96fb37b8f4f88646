"""How ``pllm check --ping`` judges a key from the error its one request raised."""

from __future__ import annotations

from langchain_core.exceptions import ModelPermissionDeniedError, ModelRateLimitError

from langchain_pllm.ping import USABLE, PingResult, kind_of


def _spent(error: Exception) -> Exception:
    # What providers do to a spent key's error: keep the status's class, mark it.
    error.quota_exhausted = True  # type: ignore[attr-defined]
    return error


def test_a_spent_key_is_spent_and_unusable_not_merely_rate_limited() -> None:
    # OpenAI's insufficient_quota is a 429: its class says "busy", the mark says "spent".
    spent = _spent(ModelRateLimitError("You exceeded your current quota"))
    assert kind_of(spent) == "spent"
    assert kind_of(_spent(ModelPermissionDeniedError("balance"))) == "spent"
    assert not PingResult("llm", "k", "openai", "m", kind_of(spent), 0.1).usable
    # A busy key is still usable.
    busy = ModelRateLimitError("slow down")
    assert kind_of(busy) == "rate-limited"
    assert "rate-limited" in USABLE
    unmarked = ModelRateLimitError("slow down")
    unmarked.quota_exhausted = False  # type: ignore[attr-defined]
    assert kind_of(unmarked) == "rate-limited"


def test_the_table_shows_names_and_models_as_written() -> None:
    from io import StringIO

    from langchain_pllm.ping import ping_table
    from langchain_pllm.terminal import console_for

    out = StringIO()
    result = PingResult("llm", "key[/]", "openai", "m[red]x", "ok", 0.01)
    console_for(out, plain=True).print(ping_table([result], plain=True))
    assert "key[/]" in out.getvalue()
    assert "m[red]x" in out.getvalue()
