"""Value checks and error wording: every config problem becomes one ``PllmConfigError``.

The validators of the config models call the checks here; pydantic's own errors are translated
here into messages that name the dotted path of the bad value (``llm.openai[1].rate_limit``) and
say how to fix it. Messages are written from pydantic's error locations and types, never from its
input echo, so an API key cannot leak into an error or a log.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from langchain_pllm.config.vendors import vendor_names
from langchain_pllm.exceptions import PllmConfigError

__all__ = [
    "checked_int",
    "checked_number",
    "checked_text",
    "config_error",
    "fail",
    "join_path",
    "show",
    "suggest",
    "unknown_vendor",
    "vendor_choices",
]

# One error type for every message we write ourselves: pydantic formats ``{message}`` from ctx,
# and the converter below reads it back without ever touching the offending input.
_OWN_ERROR = "pllm_config"

_FIX_HINTS: dict[str, str] = {
    "rate_limit": "requests per window, e.g. 20; leave it out for no limit",
    "tpm": "tokens per window, e.g. 100000; leave it out for no limit",
    "max_concurrency": "requests in flight at once, e.g. 8; leave it out for no limit",
    "batch_size": "texts per embeddings request, e.g. 64; leave it out for the vendor's limit",
    "weight": "a share relative to the other providers, e.g. 1 or 2.5",
    "timeout": "seconds per attempt, e.g. 30; leave it out for the SDK default",
    "max_retries": "further attempts after a failure, e.g. 3",
    "breaker_threshold": "consecutive failures that open a breaker, e.g. 3",
    "health_check_interval": "seconds before an open breaker is probed, e.g. 300",
    "window": "length of the rate-limit window in seconds, e.g. 60",
    "max_wait": "seconds a request may wait for capacity, e.g. 120",
    "request_timeout": "overall seconds per request including retries; leave it out for none",
    "default_retry_after": "seconds to rest after a 429 without Retry-After, e.g. 1",
    "redis_timeout": "seconds per Redis call, e.g. 0.25",
    "local_share": "share of each limit one process takes without Redis, e.g. 0.5",
    "outage": "exact (limits kept while Redis is away) or share (availability first)",
    "tier": "the spending order, 1 (first) or higher, e.g. 2 for paid keys behind free ones",
    "affinity_ttl": "seconds a conversation keeps its key after its last turn, e.g. 3600",
    "affinity_size": "most conversations remembered, e.g. 100000",
}

_MISSING_HINTS: dict[str, str] = {
    "api_key": "write the key, or ${ENV_VAR} in YAML to read it from the environment",
    "model": "write the vendor's model name, e.g. gpt-4o-mini",
    "providers": "add at least one provider",
}


# --- wording ----------------------------------------------------------------------------------


def fail(message: str) -> PydanticCustomError:
    """An error for a validator to raise; ``config_error`` passes ``message`` through as is."""
    return PydanticCustomError(_OWN_ERROR, "{message}", {"message": message})


def show(value: Any) -> str:
    """A value as an error message quotes it, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def suggest(word: str, choices: Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the closest choice, or ``""`` if none is close."""
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def vendor_choices() -> str:
    """The vendors a config may name, registered ones included, as messages list them."""
    return ", ".join(vendor_names())


def unknown_vendor(value: Any) -> str:
    """The message for a ``vendor`` value no registered vendor has, with the closest name."""
    if not isinstance(value, str):
        return f"unknown vendor {type(value).__name__}; vendor must be one of: {vendor_choices()}"
    return (
        f"unknown vendor {show(value)}; {suggest(value, vendor_names())}"
        f"vendor must be one of: {vendor_choices()}"
    )


def join_path(prefix: str, loc: Iterable[int | str]) -> str:
    """A dotted error path: ``("llm", ["openai", 1, "model"])`` gives ``llm.openai[1].model``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _with_hint(name: str, text: str) -> str:
    hint = _FIX_HINTS.get(name)
    return f"{text} ({hint})" if hint else text


# --- value checks -----------------------------------------------------------------------------


def _as_int(value: Any) -> int | None:
    """Return ``value`` as an int if it is one (a whole float or a digit string counts), else None.

    Strings count because ``${VAR}`` interpolation always yields strings; bools never count.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def checked_int(value: Any, name: str, *, minimum: int) -> int:
    """``value`` as an int of at least ``minimum``, or a ``fail`` error saying what to write."""
    number = _as_int(value)
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if number is None or number < minimum:
        raise fail(_with_hint(name, f"{name} must be {what}, got {show(value)}"))
    return number


def checked_number(value: Any, name: str, *, positive: bool, at_most: float | None = None) -> float:
    """``value`` as a finite float (> 0 or >= 0, and at most ``at_most``), or a ``fail`` error."""
    number = _as_number(value)
    if positive:
        what, bad = "a positive number", number is None or number <= 0
    else:
        what, bad = "a number >= 0", number is None or number < 0
    if at_most is not None:
        what = f"{what} no larger than {at_most:g}"
        bad = bad or (number is not None and number > at_most)
    if bad or number is None:
        raise fail(_with_hint(name, f"{name} must be {what}, got {show(value)}"))
    return number


def checked_text(value: Any, name: str, hint: str) -> str:
    """``value`` stripped, if it is a non-empty string, or a ``fail`` error ending in ``hint``."""
    if not isinstance(value, str):
        raise fail(f"{name} must be a string, got {type(value).__name__}; {hint}")
    text = value.strip()
    if not text:
        raise fail(f"{name} is empty; {hint}")
    return text


# --- converting pydantic errors into ours -----------------------------------------------------


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The config model inside a field's type (``PoolConfig | None``, ``tuple[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel]:
    model = root
    for part in loc:
        if isinstance(part, str) and part in model.model_fields:
            model = _model_in(model.model_fields[part].annotation) or model
    return model


def _user_keys(model: type[BaseModel]) -> list[str]:
    # ``id`` is derived from ``name``; suggesting it would send people the wrong way.
    return [key for key in model.model_fields if key != "id"]


def _describe_error(error: Mapping[str, Any], root: type[BaseModel]) -> str:
    loc: tuple[int | str, ...] = tuple(error["loc"])
    name = str(loc[-1]) if loc else "value"
    kind = error["type"]
    if kind == _OWN_ERROR:
        return str(error["msg"])
    if kind == "missing":
        if name == "vendor":
            hint = f"one of: {vendor_choices()}"
        else:
            hint = _MISSING_HINTS.get(name, "add it")
        return f"{name} is required; {hint}"
    if kind == "extra_forbidden":
        known = _user_keys(_model_at(root, loc[:-1]))
        return f"unknown key '{name}'; {suggest(name, known)}known keys: {', '.join(known)}"
    # Pydantic's own ``msg`` describes the expected type and never repeats the input.
    return f"{name}: {error['msg']}"


def config_error(exc: ValidationError, prefix: str, root: type[BaseModel]) -> PllmConfigError:
    """Translate pydantic's error into ours: the first problem's path and text, then the others.

    Args:
        exc: What validating ``root`` raised.
        prefix: Path of ``root`` in the whole config (``llm.openai[1]``); ``""`` at the top.
        root: The model that was validated, to name the keys it knows.

    Returns:
        The error to raise (``from None``: pydantic's error keeps the raw input).
    """
    problems = [
        (join_path(prefix, error["loc"]), _describe_error(error, root))
        for error in exc.errors(include_url=False, include_input=False)
    ]
    field, message = problems[0]
    if len(problems) > 1:
        others = "; ".join(f"{path or '(top)'}: {text}" for path, text in problems[1:])
        message = f"{message} (also: {others})"
    return PllmConfigError(message, field=field or None)
