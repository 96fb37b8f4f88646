"""Configuration: YAML text, a YAML file or a mapping in, validated frozen config objects out.

``load_config`` reads the format of DESIGN.md section 3 (an ``llm:`` and an ``embedding:`` pool of
vendor sections, plus ``balancer:`` settings), expands ``${VAR}`` and ``${VAR:-default}`` from the
environment, and builds ``PllmConfig``. ``pool_from_providers`` and ``balancer_from_mapping`` build
the same objects from the keyword arguments of the chat and embeddings models. Every problem is
raised as one ``PllmConfigError`` whose ``field`` is the dotted path of the bad value
(``llm.openai[1].rate_limit``) and whose message says how to fix it; messages are written here from
pydantic's error locations and types, never from its input echo, so an API key cannot leak into an
error or a log.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from langchain_pllm.exceptions import PllmConfigError
from langchain_pllm.urls import redact_url

__all__ = [
    "DEFAULT_API_BASE",
    "VENDORS",
    "BalancerConfig",
    "PllmConfig",
    "PoolConfig",
    "ProviderConfig",
    "balancer_from_mapping",
    "load_config",
    "pool_from_providers",
    "redact_url",
]

VENDORS: tuple[str, ...] = ("openai", "siliconflow", "deepseek", "anthropic", "google", "zhipu")
"""Vendors a provider may name; each has its own SDK adapter in ``langchain_pllm.providers``."""

DEFAULT_API_BASE: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "siliconflow": "https://api.siliconflow.cn/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "anthropic": "https://api.anthropic.com",
    "google": "https://generativelanguage.googleapis.com",
    "zhipu": "https://open.bigmodel.cn/api/paas/v4",
}
"""The endpoint each vendor's SDK is pointed at when a provider gives no ``api_base``."""

# One error type for every message we write ourselves: pydantic formats ``{message}`` from ctx,
# and the converter below reads it back without ever touching the offending input.
_OWN_ERROR = "pllm_config"

_STATE_SCHEMES = ("redis://", "rediss://", "unix://")
_TOP_LEVEL_KEYS = ("llm", "embedding", "balancer")
_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_LOOKS_LIKE_YAML_FLOW = re.compile(r"^\s*[\[{]")

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
}


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError(_OWN_ERROR, "{message}", {"message": message})


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def _with_hint(name: str, text: str) -> str:
    hint = _FIX_HINTS.get(name)
    return f"{text} ({hint})" if hint else text


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


def _checked_int(value: Any, name: str, *, minimum: int) -> int:
    number = _as_int(value)
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if number is None or number < minimum:
        raise _fail(_with_hint(name, f"{name} must be {what}, got {_show(value)}"))
    return number


def _checked_number(
    value: Any, name: str, *, positive: bool, at_most: float | None = None
) -> float:
    number = _as_number(value)
    if positive:
        what, bad = "a positive number", number is None or number <= 0
    else:
        what, bad = "a number >= 0", number is None or number < 0
    if at_most is not None:
        what = f"{what} no larger than {at_most:g}"
        bad = bad or (number is not None and number > at_most)
    if bad or number is None:
        raise _fail(_with_hint(name, f"{name} must be {what}, got {_show(value)}"))
    return number


def _checked_text(value: Any, name: str, hint: str) -> str:
    if not isinstance(value, str):
        raise _fail(f"{name} must be a string, got {type(value).__name__}; {hint}")
    text = value.strip()
    if not text:
        raise _fail(f"{name} is empty; {hint}")
    return text


class _ConfigModel(BaseModel):
    """Base of the config models: frozen, strict about keys, and raising ``PllmConfigError``."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", hide_input_in_errors=True, use_attribute_docstrings=True
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            # ``from None``: pydantic's error keeps the raw input, which may hold a key.
            raise _config_error(exc, "", type(self)) from None

    # Tell pydantic this __init__ only validates like BaseModel's: otherwise model_validate and
    # nested validation would run it too, and our error would be re-wrapped as a ValueError.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


class ProviderConfig(_ConfigModel):
    """One API key and model at one endpoint: the unit the balancer picks, limits and retries.

    Two objects with the same vendor, endpoint, model and key stand for the same provider (see
    ``key_fingerprint``); the balancer shares limits, breakers and stats between them.
    """

    vendor: str
    """Which SDK talks to this provider: one of ``VENDORS``."""
    api_key: SecretStr
    """The vendor API key; never shown by ``repr``/``str`` or in errors."""
    model: str
    """Model name sent to the vendor, e.g. ``gpt-4o-mini``."""
    api_base: str = Field(default="", validate_default=True)
    """Endpoint URL; defaults to ``DEFAULT_API_BASE[vendor]``; stored without a trailing slash."""
    rate_limit: int | None = None
    """Requests allowed per sliding window; ``None`` means unlimited."""
    tpm: int | None = None
    """Tokens allowed per sliding window; ``None`` means unlimited."""
    max_concurrency: int | None = None
    """Requests in flight at once; ``None`` means unlimited."""
    weight: float = 1.0
    """Relative share of traffic among otherwise equal providers."""
    timeout: float | None = None
    """Seconds allowed for one attempt; ``None`` leaves the SDK default."""
    name: str | None = None
    """A readable, unique name; it becomes the ``id``."""
    batch_size: int | None = None
    """Embeddings only: the most texts sent in one request, overriding the vendor's limit."""
    id: str = Field(default="", validate_default=True)
    """Identity within a pool: ``name`` if given, else ``<vendor>-<index in its vendor list>``."""

    @field_validator("vendor", mode="before")
    @classmethod
    def _check_vendor(cls, value: Any) -> str:
        if not isinstance(value, str) or value not in VENDORS:
            shown = _show(value) if isinstance(value, str) else type(value).__name__
            suggestion = _suggest(value, VENDORS) if isinstance(value, str) else ""
            raise _fail(
                f"unknown vendor {shown}; {suggestion}vendor must be one of: {', '.join(VENDORS)}"
            )
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _check_api_key(cls, value: Any) -> SecretStr:
        # Messages here never show the value: it is, or is near to, a secret.
        hint = "write the key, or ${ENV_VAR} in YAML to read it from the environment"
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None:
            raise _fail(f"api_key is required; {hint}")
        if not isinstance(value, str):
            raise _fail(
                f"api_key must be a string, got {type(value).__name__}; {hint} "
                "(quote it in YAML if it looks like a number)"
            )
        key = value.strip()
        if not key:
            raise _fail(f"api_key is empty; {hint}")
        return SecretStr(key)

    @field_validator("model", mode="before")
    @classmethod
    def _check_model(cls, value: Any) -> str:
        return _checked_text(value, "model", "write the vendor's model name, e.g. gpt-4o-mini")

    @field_validator("api_base", mode="before")
    @classmethod
    def _check_api_base(cls, value: Any, info: ValidationInfo) -> str:
        if value is None or value == "":
            vendor = info.data.get("vendor")
            # An invalid vendor is reported on its own; an empty base here adds no second error.
            return DEFAULT_API_BASE.get(vendor, "") if isinstance(vendor, str) else ""
        hint = "write a URL such as https://api.openai.com/v1, or leave it out for the default"
        url = _checked_text(value, "api_base", hint)
        if not url.startswith(("http://", "https://")):
            raise _fail(f"api_base must start with http:// or https://, got {_show(url)}; {hint}")
        return url.rstrip("/")

    @field_validator("rate_limit", "tpm", "max_concurrency", "batch_size", mode="before")
    @classmethod
    def _check_counts(cls, value: Any, info: ValidationInfo) -> int | None:
        if value is None:
            return None
        return _checked_int(value, info.field_name or "value", minimum=1)

    @field_validator("weight", mode="before")
    @classmethod
    def _check_weight(cls, value: Any) -> float:
        return _checked_number(value, "weight", positive=True)

    @field_validator("timeout", mode="before")
    @classmethod
    def _check_timeout(cls, value: Any) -> float | None:
        if value is None:
            return None
        return _checked_number(value, "timeout", positive=True)

    @field_validator("name", mode="before")
    @classmethod
    def _check_name(cls, value: Any) -> str | None:
        if value is None:
            return None
        return _checked_text(value, "name", "write a short unique name such as openai-main")

    @field_validator("id", mode="before")
    @classmethod
    def _check_id(cls, value: Any, info: ValidationInfo) -> str:
        name = info.data.get("name")
        if value is None or value == "":
            if name:
                return str(name)
            vendor = info.data.get("vendor")
            return f"{vendor}-0" if isinstance(vendor, str) else ""
        provider_id = _checked_text(value, "id", "set name instead; the id follows it")
        if name and provider_id != name:
            raise _fail(f"id {provider_id!r} differs from name {name!r}; set only name")
        return provider_id

    @property
    def key_fingerprint(self) -> str:
        """A short digest naming this key, model and endpoint; the key cannot be recovered from it.

        Equal for every object built from the same vendor, ``api_base``, model and key, so state
        (windows, breakers, stats) can be shared per real key rather than per Python object.
        """
        material = "\0".join(
            (self.vendor, self.api_base, self.model, self.api_key.get_secret_value())
        )
        return hashlib.sha256(material.encode("utf-8")).hexdigest()[:16]


class PoolConfig(_ConfigModel):
    """The providers one face (chat or embeddings) balances over, in order, with unique ids."""

    providers: tuple[ProviderConfig, ...]
    """At least one provider; ids are unique."""

    @model_validator(mode="before")
    @classmethod
    def _assign_ids(cls, data: Any) -> Any:
        # Number providers per vendor in list order (openai-0, openai-1, anthropic-0), unless the
        # caller already set the id or a name; this is what lets a plain list of dicts be a pool.
        if not isinstance(data, Mapping):
            return data
        entries = data.get("providers")
        if not isinstance(entries, (list, tuple)):
            return data
        counts: dict[str, int] = {}
        numbered: list[Any] = []
        for entry in entries:
            if isinstance(entry, ProviderConfig):
                vendor: Any = entry.vendor
                fixed = "id" in entry.model_fields_set or entry.name is not None
            elif isinstance(entry, Mapping):
                vendor = entry.get("vendor")
                fixed = bool(entry.get("id")) or bool(entry.get("name"))
            else:
                numbered.append(entry)
                continue
            if not isinstance(vendor, str):
                numbered.append(entry)
                continue
            index = counts.get(vendor, 0)
            counts[vendor] = index + 1
            if fixed:
                numbered.append(entry)
            elif isinstance(entry, ProviderConfig):
                numbered.append(entry.model_copy(update={"id": f"{vendor}-{index}"}))
            else:
                numbered.append({**entry, "id": f"{vendor}-{index}"})
        return {**data, "providers": tuple(numbered)}

    @model_validator(mode="after")
    def _check_pool(self) -> PoolConfig:
        if not self.providers:
            raise _fail("the pool has no providers; add at least one")
        places = [f"providers[{index}]" for index in range(len(self.providers))]
        duplicate = _find_duplicate_id([p.id for p in self.providers], places)
        if duplicate:
            raise _fail(duplicate)
        return self


class BalancerConfig(_ConfigModel):
    """How requests are retried, when breakers open, how long requests wait, where state lives."""

    retry_policy: Literal["fixed", "infinite", "retry_once"] = "fixed"
    """``fixed``: up to ``max_retries`` more attempts; ``retry_once``: one; ``infinite``: no cap."""
    max_retries: int = 3
    """Further attempts after the first under the ``fixed`` policy."""
    breaker_threshold: int = 3
    """Consecutive failures that open a provider's circuit breaker."""
    health_check_interval: float = 300.0
    """Seconds an open breaker waits before one probe request may close it."""
    state: str = "memory"
    """``memory`` (this process) or a ``redis://``, ``rediss://`` or ``unix://`` URL (shared)."""
    window: float = 60.0
    """Length of the sliding rate-limit window, in seconds."""
    max_wait: float = 120.0
    """The longest a request waits for free capacity before ``NoProviderAvailableError``."""
    request_timeout: float | None = None
    """Overall deadline of one request including retries; ``None`` means none."""
    default_retry_after: float = 1.0
    """Seconds a provider rests after a 429 that gave no ``Retry-After``."""
    redis_timeout: float = 0.25
    """Seconds allowed per Redis call before falling back to local limits."""
    local_share: float | None = None
    """Share of each limit one process takes while Redis is unreachable; ``None``: one share per
    live process sharing that Redis (counted by heartbeats)."""

    @field_validator("retry_policy", mode="before")
    @classmethod
    def _check_retry_policy(cls, value: Any) -> str:
        choices = ("fixed", "infinite", "retry_once")
        if not isinstance(value, str) or value not in choices:
            suggestion = _suggest(value, choices) if isinstance(value, str) else ""
            raise _fail(
                f"retry_policy must be one of: {', '.join(choices)}, got {_show(value)}; "
                f"{suggestion}".rstrip("; ")
            )
        return value

    @field_validator("max_retries", mode="before")
    @classmethod
    def _check_max_retries(cls, value: Any) -> int:
        return _checked_int(value, "max_retries", minimum=0)

    @field_validator("breaker_threshold", mode="before")
    @classmethod
    def _check_breaker_threshold(cls, value: Any) -> int:
        return _checked_int(value, "breaker_threshold", minimum=1)

    @field_validator("health_check_interval", "window", "redis_timeout", mode="before")
    @classmethod
    def _check_positive(cls, value: Any, info: ValidationInfo) -> float:
        return _checked_number(value, info.field_name or "value", positive=True)

    @field_validator("max_wait", "default_retry_after", mode="before")
    @classmethod
    def _check_non_negative(cls, value: Any, info: ValidationInfo) -> float:
        return _checked_number(value, info.field_name or "value", positive=False)

    @field_validator("request_timeout", mode="before")
    @classmethod
    def _check_request_timeout(cls, value: Any) -> float | None:
        if value is None:
            return None
        return _checked_number(value, "request_timeout", positive=True)

    @field_validator("local_share", mode="before")
    @classmethod
    def _check_local_share(cls, value: Any) -> float | None:
        if value is None:
            return None
        return _checked_number(value, "local_share", positive=True, at_most=1.0)

    @field_serializer("state")
    def _serialize_state(self, value: str) -> str:
        return redact_url(value)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A Redis URL may carry a password: never in repr, str, dumps or logs.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "state" else value

    @field_validator("state", mode="before")
    @classmethod
    def _check_state(cls, value: Any) -> str:
        hint = "write memory, or a URL such as redis://localhost:6379/0"
        url = _checked_text(value, "state", hint)
        if url != "memory" and not url.startswith(_STATE_SCHEMES):
            # A Redis URL may carry a password: show it only when it plainly has none.
            shown = f", got {_show(url)}" if "@" not in url else ""
            raise _fail(
                f"state must be memory or a redis://, rediss:// or unix:// URL{shown}; {hint}"
            )
        return url


class PllmConfig(_ConfigModel):
    """A whole configuration: the chat pool, the embeddings pool and the balancer settings."""

    llm: PoolConfig | None = None
    """The pool ``BalancedChatModel`` uses (the ``llm:`` section)."""
    embedding: PoolConfig | None = None
    """The pool ``BalancedEmbeddings`` uses (the ``embedding:`` section)."""
    balancer: BalancerConfig = BalancerConfig()
    """Balancer settings shared by both pools."""


# --- converting pydantic errors into ours -----------------------------------------------------

_NESTED_MODELS: dict[tuple[type[BaseModel], str], type[BaseModel]] = {
    (PllmConfig, "llm"): PoolConfig,
    (PllmConfig, "embedding"): PoolConfig,
    (PllmConfig, "balancer"): BalancerConfig,
    (PoolConfig, "providers"): ProviderConfig,
}

_MISSING_HINTS: dict[str, str] = {
    "api_key": "write the key, or ${ENV_VAR} in YAML to read it from the environment",
    "model": "write the vendor's model name, e.g. gpt-4o-mini",
    "vendor": f"one of: {', '.join(VENDORS)}",
    "providers": "add at least one provider",
}


def _join_path(prefix: str, loc: Iterable[int | str]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _user_keys(model: type[BaseModel]) -> list[str]:
    # ``id`` is derived from ``name``; suggesting it would send people the wrong way.
    return [key for key in model.model_fields if key != "id"]


def _model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel]:
    model = root
    for part in loc:
        if isinstance(part, str):
            model = _NESTED_MODELS.get((model, part), model)
    return model


def _describe_error(error: Mapping[str, Any], root: type[BaseModel]) -> str:
    loc: tuple[int | str, ...] = tuple(error["loc"])
    name = str(loc[-1]) if loc else "value"
    kind = error["type"]
    if kind == _OWN_ERROR:
        return str(error["msg"])
    if kind == "missing":
        hint = _MISSING_HINTS.get(name, "add it")
        return f"{name} is required; {hint}"
    if kind == "extra_forbidden":
        known = _user_keys(_model_at(root, loc[:-1]))
        return f"unknown key '{name}'; {_suggest(name, known)}known keys: {', '.join(known)}"
    # Pydantic's own ``msg`` describes the expected type and never repeats the input.
    return f"{name}: {error['msg']}"


def _config_error(exc: ValidationError, prefix: str, root: type[BaseModel]) -> PllmConfigError:
    problems = [
        (_join_path(prefix, error["loc"]), _describe_error(error, root))
        for error in exc.errors(include_url=False, include_input=False)
    ]
    field, message = problems[0]
    if len(problems) > 1:
        others = "; ".join(f"{path or '(top)'}: {text}" for path, text in problems[1:])
        message = f"{message} (also: {others})"
    return PllmConfigError(message, field=field or None)


def _find_duplicate_id(ids: Sequence[str], places: Sequence[str]) -> str | None:
    first_place: dict[str, str] = {}
    for provider_id, place in zip(ids, places, strict=True):
        if provider_id in first_place:
            return (
                f"id {provider_id!r} is used by both {first_place[provider_id]} and {place}; "
                "give each provider a unique name"
            )
        first_place[provider_id] = place
    return None


# --- building pools and balancer settings -----------------------------------------------------


def _provider_from_entry(
    entry: Mapping[str, Any], *, vendor: str, index: int, place: str
) -> ProviderConfig:
    if "id" in entry:
        raise PllmConfigError(
            "id is not set directly; write name: instead "
            f"(the id is the name, or {vendor}-{index})",
            field=f"{place}.id",
        )
    name = entry.get("name")
    provider_id = name.strip() if isinstance(name, str) and name.strip() else f"{vendor}-{index}"
    try:
        return ProviderConfig.model_validate({**entry, "vendor": vendor, "id": provider_id})
    except ValidationError as exc:
        raise _config_error(exc, place, ProviderConfig) from None


def _pool_from_built(built: Sequence[tuple[str, ProviderConfig]], field: str) -> PoolConfig:
    places = [place for place, _ in built]
    providers = [provider for _, provider in built]
    duplicate = _find_duplicate_id([p.id for p in providers], places)
    if duplicate:
        raise PllmConfigError(duplicate, field=field)
    return PoolConfig(providers=tuple(providers))


def pool_from_providers(
    providers: Sequence[Mapping[str, Any] | ProviderConfig],
    *,
    default_api_key: str | SecretStr | None = None,
    field: str = "providers",
) -> PoolConfig:
    """Build a pool from a list of provider mappings, as the models' ``providers=`` argument takes.

    Each mapping needs ``vendor``; ``api_key`` may be left out when ``default_api_key`` is given.
    Ids are the ``name`` if given, else ``<vendor>-<index>`` numbered per vendor in list order.
    ``${VAR}`` references are not expanded here (read ``os.environ`` in Python instead).

    Args:
        providers: Mappings with the keys of ``ProviderConfig`` (except ``id``), or built
            ``ProviderConfig`` objects, which are kept (re-numbered when they have no name).
        default_api_key: Key for entries that do not give one.
        field: Name of the argument, used as the start of error paths (``providers[1].model``).

    Returns:
        The validated pool.

    Raises:
        PllmConfigError: If the list is empty or any entry is invalid.

    Example:
        .. code-block:: python

            pool = pool_from_providers(
                [{"vendor": "openai", "model": "gpt-4o-mini", "rate_limit": 20}],
                default_api_key="sk-...",
            )
    """
    if isinstance(providers, (str, bytes, Mapping)) or not isinstance(providers, Sequence):
        raise PllmConfigError(
            f"{field} must be a list of provider mappings, got {type(providers).__name__}; "
            'write [{"vendor": "openai", "api_key": "...", "model": "gpt-4o-mini"}]',
            field=field,
        )
    if not providers:
        raise PllmConfigError(
            f"{field} is empty; give at least one provider such as "
            '{"vendor": "openai", "api_key": "...", "model": "gpt-4o-mini"}',
            field=field,
        )
    counts: dict[str, int] = {}
    built: list[tuple[str, ProviderConfig]] = []
    for position, entry in enumerate(providers):
        place = f"{field}[{position}]"
        if isinstance(entry, ProviderConfig):
            index = counts.get(entry.vendor, 0)
            counts[entry.vendor] = index + 1
            if "id" not in entry.model_fields_set and entry.name is None:
                entry = entry.model_copy(update={"id": f"{entry.vendor}-{index}"})
            built.append((place, entry))
            continue
        if not isinstance(entry, Mapping):
            raise PllmConfigError(
                f"each provider must be a mapping or ProviderConfig, got {type(entry).__name__}",
                field=place,
            )
        vendor = entry.get("vendor")
        if vendor is None:
            raise PllmConfigError(
                f"vendor is required; one of: {', '.join(VENDORS)}", field=f"{place}.vendor"
            )
        if not isinstance(vendor, str) or vendor not in VENDORS:
            # Let ProviderConfig word the error (with a suggestion) at the right path.
            _provider_from_entry(entry, vendor=vendor, index=0, place=place)
        index = counts.get(vendor, 0)
        counts[vendor] = index + 1
        data = dict(entry)
        if data.get("api_key") is None and default_api_key is not None:
            data["api_key"] = default_api_key
        built.append((place, _provider_from_entry(data, vendor=vendor, index=index, place=place)))
    return _pool_from_built(built, field)


def balancer_from_mapping(
    data: Mapping[str, Any] | None, *, field: str = "balancer"
) -> BalancerConfig:
    """Build balancer settings from a mapping (the ``balancer:`` section, or model kwargs).

    Args:
        data: Keys of ``BalancerConfig``; ``None`` or an empty mapping gives the defaults.
        field: Start of error paths (``balancer.max_retries``); ``""`` for bare keyword names.

    Returns:
        The validated settings.

    Raises:
        PllmConfigError: If a key is unknown or a value is out of range.
    """
    if data is None:
        return BalancerConfig()
    if not isinstance(data, Mapping):
        raise PllmConfigError(
            f"balancer settings must be a mapping, got {type(data).__name__}; "
            "write e.g. {retry_policy: fixed, max_retries: 3}",
            field=field or None,
        )
    try:
        return BalancerConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise _config_error(exc, field, BalancerConfig) from None


# --- reading YAML -----------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys merged in with ``<<`` may be overridden; that is the point of them
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is written twice in one mapping", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _parse_yaml(text: str, origin: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        # Only PyYAML's problem and position: its str() quotes the line, which may hold a key.
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        context = getattr(exc, "context", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        detail = f"{context}, {problem}" if context else str(problem)
        raise PllmConfigError(
            f"YAML syntax error in {origin}{where}: {detail}; fix the YAML there "
            "(check indentation, colons and quoting)"
        ) from None


def _looks_like_path(text: str) -> bool:
    if "\n" in text or _LOOKS_LIKE_YAML_FLOW.match(text):
        return False
    stripped = text.strip()
    if stripped.lower().endswith((".yaml", ".yml")):
        return True
    has_separator = "/" in stripped or (os.sep in stripped) or ("\\" in stripped)
    return has_separator and ": " not in stripped


def _read_file(path: str) -> str:
    if not os.path.exists(path):
        raise PllmConfigError(
            f"config file not found: {path} (looked from {os.getcwd()}); check the path"
        )
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise PllmConfigError(
            f"cannot read config file {path}: {reason}; check that it is a readable UTF-8 file"
        ) from None


def _read_source(source: str | os.PathLike[str] | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    if isinstance(source, os.PathLike):
        path = os.fspath(source)
        data = _parse_yaml(_read_file(path), path)
        origin = path
    elif isinstance(source, str):
        if "\n" not in source and os.path.isfile(source):
            data = _parse_yaml(_read_file(source), source)
            origin = source
        elif _looks_like_path(source):
            _read_file(source)  # raises: no such file
            raise AssertionError("unreachable")  # pragma: no cover
        else:
            data = _parse_yaml(source, "the YAML text")
            origin = "the YAML text"
    else:
        raise PllmConfigError(
            "the config source must be a file path, YAML text or a mapping, "
            f"got {type(source).__name__}"
        )
    if data is None:
        raise PllmConfigError(
            f"{origin} is empty; write an llm: or embedding: section (see DESIGN.md section 3)"
        )
    if not isinstance(data, Mapping):
        raise PllmConfigError(
            f"{origin} must be a mapping with llm:, embedding: and balancer: keys, got "
            f"{type(data).__name__}; if you meant a file path, that file does not exist"
        )
    return data


def _expand_env(text: str, place: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"  # ``$${`` writes a literal ``${``
        variable, default = match.group(1), match.group(2)
        value = os.environ.get(variable)
        if value:
            return value
        if default is not None:
            return default
        if value == "":
            return ""
        what = "key" if place.endswith("api_key") else "value"
        raise PllmConfigError(
            f"environment variable {variable} is not set; set {variable} in the environment "
            f"or write the {what} in place of ${{{variable}}} (or ${{{variable}:-default}})",
            field=place,
        )

    if "$" not in text:
        return text
    if "${" in _ENV_REF.sub("", text):
        # The text may be a key: say what is wrong without quoting it.
        raise PllmConfigError(
            "malformed ${...} reference; write ${NAME} or ${NAME:-default}, "
            "or $${ for a literal ${",
            field=place,
        )
    return _ENV_REF.sub(replace, text)


def _interpolate(value: Any, place: str) -> Any:
    """Expand ``${VAR}`` in every string inside ``value``, returning new containers.

    Runs on parsed YAML, so a variable's value can never add YAML structure.
    """
    if isinstance(value, str):
        return _expand_env(value, place)
    if isinstance(value, Mapping):
        return {
            key: _interpolate(item, _join_path(place, [str(key)])) for key, item in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(item, f"{place}[{index}]") for index, item in enumerate(value)]
    return value


def _unknown_key_error(key: Any, choices: Sequence[str], place: str, what: str) -> PllmConfigError:
    shown = str(key)
    return PllmConfigError(
        f"unknown {what} '{shown}'; {_suggest(shown, choices)}"
        f"expected one of: {', '.join(choices)}",
        field=_join_path(place, [shown]),
    )


def _parse_use(raw: Any, place: str) -> list[str]:
    how = 'write use: "openai, anthropic" or a YAML list of vendor names'
    if isinstance(raw, str):
        names = [part.strip() for part in raw.split(",")]
    elif isinstance(raw, list) and all(isinstance(part, str) for part in raw):
        names = [part.strip() for part in raw]
    else:
        raise PllmConfigError(
            f"use must be a comma-separated string or a list of vendor names, got "
            f"{type(raw).__name__}; {how}",
            field=place,
        )
    chosen: list[str] = []
    for name in names:
        if not name or name in chosen:
            continue
        if name not in VENDORS:
            raise PllmConfigError(
                f"use names unknown vendor {name!r}; {_suggest(name, VENDORS)}"
                f"vendors: {', '.join(VENDORS)}",
                field=place,
            )
        chosen.append(name)
    if not chosen:
        raise PllmConfigError(f"use names no vendor; {how}", field=place)
    return chosen


def _pool_from_section(section: Any, place: str) -> PoolConfig:
    example = f"{place}:\n  openai:\n    - api_key: ${{OPENAI_API_KEY}}\n      model: gpt-4o-mini"
    if not isinstance(section, Mapping):
        shown = "empty" if section is None else f"a {type(section).__name__}"
        raise PllmConfigError(
            f"{place} must be a mapping of vendor sections, but it is {shown}; "
            f"write e.g.\n{example}",
            field=place,
        )
    for key in section:
        if key != "use" and key not in VENDORS:
            raise _unknown_key_error(key, ("use", *VENDORS), place, "vendor section")
    if "use" in section:
        use_place = f"{place}.use"
        vendors = _parse_use(_interpolate(section["use"], use_place), use_place)
        for vendor in vendors:
            if vendor not in section:
                raise PllmConfigError(
                    f"use names {vendor!r} but there is no {place}.{vendor} section; "
                    f"add one or remove {vendor!r} from use",
                    field=use_place,
                )
    else:
        vendors = [key for key in section if key != "use"]
    if not vendors:
        raise PllmConfigError(
            f"{place} has no vendor sections, so the pool is empty; write e.g.\n{example}",
            field=place,
        )

    built: list[tuple[str, ProviderConfig]] = []
    for vendor in vendors:
        vendor_place = f"{place}.{vendor}"
        raw = section[vendor]
        if isinstance(raw, Mapping):
            entries, places = [raw], [vendor_place]
        elif isinstance(raw, list):
            entries = raw
            places = [f"{vendor_place}[{index}]" for index in range(len(raw))]
        else:
            shown = "empty" if raw is None else f"a {type(raw).__name__}"
            raise PllmConfigError(
                f"{vendor_place} must be a list of providers (or one mapping), but it is {shown}; "
                "give each provider api_key and model",
                field=vendor_place,
            )
        if not entries:
            raise PllmConfigError(
                f"{vendor_place} lists no providers; add one or remove {vendor!r} from use",
                field=vendor_place,
            )
        for index, (entry, entry_place) in enumerate(zip(entries, places, strict=True)):
            if not isinstance(entry, Mapping):
                raise PllmConfigError(
                    f"each provider must be a mapping with api_key and model, got "
                    f"{type(entry).__name__}",
                    field=entry_place,
                )
            expanded = _interpolate(entry, entry_place)
            if "vendor" in expanded and expanded["vendor"] != vendor:
                raise PllmConfigError(
                    f"vendor {_show(expanded['vendor'])} contradicts its section {vendor!r}; "
                    "remove vendor: (the section names it) or move the entry",
                    field=f"{entry_place}.vendor",
                )
            built.append(
                (
                    entry_place,
                    _provider_from_entry(expanded, vendor=vendor, index=index, place=entry_place),
                )
            )
    return _pool_from_built(built, place)


def load_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> PllmConfig:
    """Read and validate a configuration.

    ``${VAR}`` and ``${VAR:-default}`` in any string are read from the environment (after the
    YAML is parsed, so a variable's value is always plain text); ``$${`` writes a literal ``${``.
    Only the vendor sections a pool uses are expanded and validated.

    Args:
        source: A path to a YAML file, YAML text, or an already parsed mapping.

    Returns:
        The validated configuration.

    Raises:
        PllmConfigError: For a missing or unreadable file, bad YAML, an unset variable, an
            unknown key or vendor, or a missing or bad value; ``field`` names where.

    Example:
        .. code-block:: python

            config = load_config("pllm.yaml")
            config.llm.providers[0].id  # "openai-0"
    """
    data = _read_source(source)
    for key in data:
        if key not in _TOP_LEVEL_KEYS:
            raise _unknown_key_error(key, _TOP_LEVEL_KEYS, "", "top-level key")
    if "llm" not in data and "embedding" not in data:
        raise PllmConfigError(
            "the config has neither an llm: nor an embedding: section; add at least one"
        )
    llm = _pool_from_section(data["llm"], "llm") if "llm" in data else None
    embedding = _pool_from_section(data["embedding"], "embedding") if "embedding" in data else None
    balancer = balancer_from_mapping(_interpolate(data.get("balancer"), "balancer"))
    return PllmConfig(llm=llm, embedding=embedding, balancer=balancer)
