"""The config models: one provider, a pool of them, the balancer settings, a whole config.

Frozen pydantic models, strict about keys; their validators call ``checks`` and every problem
comes out as one ``PllmConfigError`` naming the field. Reading YAML and the environment lives in
``loading``, building pools from the faces' keyword arguments in ``build``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any, Literal

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

from langchain_pllm.config.checks import (
    checked_int,
    checked_number,
    checked_text,
    config_error,
    fail,
    show,
    suggest,
    unknown_vendor,
)
from langchain_pllm.config.ids import VendorCounter, find_duplicate_id, provider_id
from langchain_pllm.config.price import Price
from langchain_pllm.config.quotas import (
    QuotaLimits,
    QuotaReset,
    QuotaWindow,
    parse_limits,
    parse_quota_reset,
)
from langchain_pllm.config.vendors import default_api_base, vendor_spec
from langchain_pllm.urls import redact_url, url_problem

__all__ = [
    "BalancerConfig",
    "PllmConfig",
    "PoolConfig",
    "Price",
    "ProviderConfig",
    "numbered",
    "redact_url",
    "with_http_backend",
]

_STATE_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
_HTTP_BACKENDS = ("aiohttp", "httpx")


def _checked_backend(value: Any) -> Any:
    """``aiohttp``, ``httpx`` or ``None``, else an error naming the choices."""
    if value is None or (isinstance(value, str) and value in _HTTP_BACKENDS):
        return value
    suggestion = suggest(value, _HTTP_BACKENDS) if isinstance(value, str) else ""
    raise fail(
        f"http_backend must be one of: {', '.join(_HTTP_BACKENDS)}, got {show(value)}; "
        f"{suggestion}".rstrip("; ")
    )


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
            raise config_error(exc, "", type(self)) from None

    # Tell pydantic this __init__ only validates like BaseModel's: otherwise model_validate and
    # nested validation would run it too, and our error would be re-wrapped as a ValueError.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


class ProviderConfig(_ConfigModel):
    """One API key and model at one endpoint: the unit the balancer picks, limits and retries.

    Two objects with the same vendor, endpoint, model and key stand for the same provider (see
    ``key_fingerprint``); the balancer shares limits, breakers and stats between them.
    """

    vendor: str
    """Which SDK talks to this provider: a built-in vendor (``VENDORS``) or a registered one."""
    api_key: SecretStr
    """The vendor API key; never shown by ``repr``/``str`` or in errors."""
    model: str
    """Model name sent to the vendor, e.g. ``gpt-4o-mini``."""
    api_base: str = Field(default="", validate_default=True)
    """Endpoint URL; defaults to the vendor's own (``DEFAULT_API_BASE``); no trailing slash."""
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
    aliases: tuple[str, ...] = ()
    """Further names a call's ``model=`` may use to pick this key (``model="fast"``)."""
    vector_space: str | None = None
    """Embeddings only: entries naming the same space may name different models (one open
    model served by two vendors under two names)."""
    tier: int = 1
    """Spending order: a tier-2 key serves only what no tier-1 key can start now, and so on."""
    price: Price | None = None
    """Per million tokens (``input``, ``output``, ``cached_input``): replies get a ``cost``."""
    limits: QuotaLimits | None = None
    """Limits as the vendor states them, in the ``limits`` package's notation: ``{requests:
    [15/minute, 1500/day], tokens: 1000000/minute, input_tokens, output_tokens, cost,
    concurrency: 4}``; every window must have room for a request to start."""
    quota_reset: QuotaReset | None = None
    """When this key's one-day windows reset, local time and IANA zone
    (``"00:00 America/Los_Angeles"``, DST-aware): calendar days; rolling days if unset."""
    http_backend: Literal["aiohttp", "httpx"] | None = None
    """Async transport of this key's SDK client: ``aiohttp`` (the SDK's ``DefaultAioHttpClient``)
    or ``httpx`` (the SDK's default); ``None`` takes ``balancer.http_backend``."""
    id: str = Field(default="", validate_default=True)
    """Identity within a pool: ``name`` if given, else ``<vendor>-<index in its vendor list>``."""

    @field_validator("http_backend", mode="before")
    @classmethod
    def _check_http_backend(cls, value: Any) -> Any:
        return _checked_backend(value)

    @field_validator("vendor", mode="before")
    @classmethod
    def _check_vendor(cls, value: Any) -> str:
        if not isinstance(value, str) or vendor_spec(value) is None:
            raise fail(unknown_vendor(value))
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _check_api_key(cls, value: Any) -> SecretStr:
        # Messages here never show the value: it is, or is near to, a secret.
        hint = "write the key, or ${ENV_VAR} in YAML to read it from the environment"
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None:
            raise fail(f"api_key is required; {hint}")
        if not isinstance(value, str):
            raise fail(
                f"api_key must be a string, got {type(value).__name__}; {hint} "
                "(quote it in YAML if it looks like a number)"
            )
        key = value.strip()
        if not key:
            raise fail(f"api_key is empty; {hint}")
        return SecretStr(key)

    @field_validator("model", mode="before")
    @classmethod
    def _check_model(cls, value: Any) -> str:
        return checked_text(value, "model", "write the vendor's model name, e.g. gpt-4o-mini")

    @field_validator("api_base", mode="before")
    @classmethod
    def _check_api_base(cls, value: Any, info: ValidationInfo) -> str:
        if value is None or value == "":
            vendor = info.data.get("vendor")
            # An invalid vendor is reported on its own; an empty base here adds no second error.
            return default_api_base(vendor) if isinstance(vendor, str) else ""
        hint = "write a URL such as https://api.openai.com/v1, or leave it out for the default"
        url = checked_text(value, "api_base", hint)
        if not url.startswith(("http://", "https://")):
            raise fail(f"api_base must start with http:// or https://, got {show(url)}; {hint}")
        problem = url_problem(url)
        if problem:
            raise fail(f"api_base is not a valid URL ({problem}), got {show(url)}; {hint}")
        return url.rstrip("/")

    @field_validator("aliases", mode="before")
    @classmethod
    def _check_aliases(cls, value: Any) -> tuple[str, ...]:
        hint = "write a list of names, e.g. [fast, cheap]"
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise fail(f"aliases must be a list of names, got {type(value).__name__}; {hint}")
        return tuple(checked_text(v, "aliases", hint) for v in value)

    @field_validator("vector_space", mode="before")
    @classmethod
    def _check_vector_space(cls, value: Any) -> str | None:
        if value is None:
            return None
        return checked_text(value, "vector_space", "name the space, e.g. bge-m3")

    @field_validator("rate_limit", "tpm", "max_concurrency", "batch_size", mode="before")
    @classmethod
    def _check_counts(cls, value: Any, info: ValidationInfo) -> int | None:
        if value is None:
            return None
        return checked_int(value, info.field_name or "value", minimum=1)

    @field_validator("tier", mode="before")
    @classmethod
    def _check_tier(cls, value: Any) -> int:
        return checked_int(value, "tier", minimum=1)

    @field_validator("limits", mode="before")
    @classmethod
    def _check_limits(cls, value: Any) -> QuotaLimits | None:
        return None if value is None else parse_limits(value)

    @field_validator("quota_reset", mode="before")
    @classmethod
    def _check_quota_reset(cls, value: Any) -> QuotaReset | None:
        return None if value is None else parse_quota_reset(value)

    @field_serializer("limits")
    def _serialize_limits(self, value: QuotaLimits | None) -> dict[str, Any] | None:
        if value is None:
            return None
        out: dict[str, Any] = {}
        for w in value.windows:
            out.setdefault(w.resource, []).append(f"{w.limit:g}/{w.period:g} seconds")
        if value.concurrency is not None:
            out["concurrency"] = value.concurrency
        return out

    @field_serializer("quota_reset")
    def _serialize_quota_reset(self, value: QuotaReset | None) -> str | None:
        return None if value is None else f"{value.at:%H:%M} {value.zone}"

    @model_validator(mode="after")
    def _check_budget(self) -> ProviderConfig:
        # A budget is counted in money: without a price there is nothing to count it in.
        if self.price is None and any(w.resource == "cost" for w in self.quota_windows):
            raise fail(
                "limits: a cost budget needs price on the same provider "
                "(e.g. price: {input: 0.15, output: 0.60})"
            )
        return self

    @property
    def quota_windows(self) -> tuple[QuotaWindow, ...]:
        """The windows of the ``limits:`` block (``rate_limit``/``tpm`` are not among them)."""
        return self.limits.windows if self.limits is not None else ()

    @property
    def concurrency(self) -> int | None:
        """The lower of ``max_concurrency`` and ``limits.concurrency``."""
        caps = [c for c in (self.max_concurrency, self.limits and self.limits.concurrency) if c]
        return min(caps) if caps else None

    @field_validator("weight", mode="before")
    @classmethod
    def _check_weight(cls, value: Any) -> float:
        return checked_number(value, "weight", positive=True)

    @field_validator("timeout", mode="before")
    @classmethod
    def _check_timeout(cls, value: Any) -> float | None:
        if value is None:
            return None
        return checked_number(value, "timeout", positive=True)

    @field_validator("name", mode="before")
    @classmethod
    def _check_name(cls, value: Any) -> str | None:
        if value is None:
            return None
        return checked_text(value, "name", "write a short unique name such as openai-main")

    @field_validator("id", mode="before")
    @classmethod
    def _check_id(cls, value: Any, info: ValidationInfo) -> str:
        name = info.data.get("name")
        if value is None or value == "":
            if name:
                return str(name)
            vendor = info.data.get("vendor")
            return provider_id(vendor, 0) if isinstance(vendor, str) else ""
        given = checked_text(value, "id", "set name instead; the id follows it")
        if name and given != name:
            raise fail(f"id {given!r} differs from name {name!r}; set only name")
        return given

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


def numbered(provider: ProviderConfig, index: int) -> ProviderConfig:
    """``provider`` with the id of its place in the pool, unless it was given a name or an id.

    Args:
        provider: A built provider config.
        index: Its place among the pool's providers of its vendor, from 0.

    Returns:
        ``provider`` itself, or a copy whose id is ``provider_id(vendor, index)``.
    """
    if "id" in provider.model_fields_set or provider.name is not None:
        return provider
    return provider.model_copy(update={"id": provider_id(provider.vendor, index)})


def with_http_backend(provider: ProviderConfig, backend: str | None) -> ProviderConfig:
    """``provider`` with the balancer's ``http_backend`` unless it names its own.

    Args:
        provider: A pool's provider config.
        backend: ``balancer.http_backend``; ``None`` leaves the library default.

    Returns:
        ``provider`` itself, or a copy whose ``http_backend`` is ``backend``.
    """
    if backend is None or provider.http_backend is not None:
        return provider
    return provider.model_copy(update={"http_backend": backend})


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
        counter = VendorCounter()
        renumbered: list[Any] = []
        for entry in entries:
            if isinstance(entry, ProviderConfig):
                renumbered.append(numbered(entry, counter.take(entry.vendor)))
                continue
            if not isinstance(entry, Mapping) or not isinstance(entry.get("vendor"), str):
                renumbered.append(entry)  # validation reports it
                continue
            vendor = entry["vendor"]
            index = counter.take(vendor)
            if entry.get("id") or entry.get("name"):
                renumbered.append(entry)
            else:
                renumbered.append({**entry, "id": provider_id(vendor, index)})
        return {**data, "providers": tuple(renumbered)}

    @model_validator(mode="after")
    def _check_pool(self) -> PoolConfig:
        if not self.providers:
            raise fail("the pool has no providers; add at least one")
        places = [f"providers[{index}]" for index in range(len(self.providers))]
        duplicate = find_duplicate_id([p.id for p in self.providers], places)
        if duplicate:
            raise fail(duplicate)
        return self


def _checked_choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; else an error naming ``field`` and a suggestion."""
    if not isinstance(value, str) or value not in choices:
        suggestion = suggest(value, choices) if isinstance(value, str) else ""
        raise fail(
            f"{field} must be one of: {', '.join(choices)}, got {show(value)}; {suggestion}".rstrip(
                "; "
            )
        )
    return value


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
    """``memory`` (this process) or a ``redis://``, ``rediss://`` or ``unix://`` URL (shared);
    ``redis+cluster://host:port`` (``rediss+cluster://`` with TLS) for a Redis Cluster."""
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
    outage: Literal["exact", "share"] = "exact"
    """While Redis is unreachable: ``exact`` keeps every limit (each window counts as full for
    one window, then a share rounded down; keys with ``limits:`` windows wait for Redis) or
    ``share`` serves at once from a share rounded up (a window spanning the outage may exceed
    its limit by the processes' shares)."""
    affinity: Literal["prefix", "session", "off"] = "prefix"
    """Conversations keep their key (its prompt cache): by prompt prefix or ``session_id``
    (``prefix``), by ``session_id`` only (``session``), or not at all (``off``)."""
    affinity_ttl: float = 3600.0
    """Seconds a conversation's key is remembered after its last turn."""
    affinity_size: int = 100_000
    """Most conversations remembered per pool (least recently used are forgotten first)."""
    spill: bool = True
    """Whether a request may go to a higher tier when its own tier cannot start it now."""
    exhausted_rest: float = 3600.0
    """Seconds a spent key (money or daily quota gone) rests when its reset time is unknown."""

    http_backend: Literal["aiohttp", "httpx"] | None = None
    """Async transport of the openai, anthropic and Zhipu clients: ``aiohttp`` (the SDKs'
    ``DefaultAioHttpClient``, about twice the calls per second under load) or ``httpx`` (the
    SDKs' default); a provider's own ``http_backend`` wins; ``None`` means ``aiohttp``."""

    @field_validator("http_backend", mode="before")
    @classmethod
    def _check_http_backend(cls, value: Any) -> Any:
        return _checked_backend(value)

    @field_validator("retry_policy", mode="before")
    @classmethod
    def _check_retry_policy(cls, value: Any) -> str:
        return _checked_choice(value, "retry_policy", ("fixed", "infinite", "retry_once"))

    @field_validator("outage", mode="before")
    @classmethod
    def _check_outage(cls, value: Any) -> str:
        return _checked_choice(value, "outage", ("exact", "share"))

    @field_validator("affinity", mode="before")
    @classmethod
    def _check_affinity(cls, value: Any) -> str:
        choices = ("prefix", "session", "off")
        if value is False:
            return "off"  # YAML reads a bare `off` as false
        if not isinstance(value, str) or value not in choices:
            raise fail(f"affinity must be one of: {', '.join(choices)}, got {show(value)}")
        return value

    @field_validator("affinity_size", mode="before")
    @classmethod
    def _check_affinity_size(cls, value: Any) -> int:
        return checked_int(value, "affinity_size", minimum=1)

    @field_validator("max_retries", mode="before")
    @classmethod
    def _check_max_retries(cls, value: Any) -> int:
        return checked_int(value, "max_retries", minimum=0)

    @field_validator("breaker_threshold", mode="before")
    @classmethod
    def _check_breaker_threshold(cls, value: Any) -> int:
        return checked_int(value, "breaker_threshold", minimum=1)

    @field_validator(
        "health_check_interval",
        "window",
        "redis_timeout",
        "affinity_ttl",
        "exhausted_rest",
        mode="before",
    )
    @classmethod
    def _check_positive(cls, value: Any, info: ValidationInfo) -> float:
        return checked_number(value, info.field_name or "value", positive=True)

    @field_validator("max_wait", "default_retry_after", mode="before")
    @classmethod
    def _check_non_negative(cls, value: Any, info: ValidationInfo) -> float:
        return checked_number(value, info.field_name or "value", positive=False)

    @field_validator("request_timeout", mode="before")
    @classmethod
    def _check_request_timeout(cls, value: Any) -> float | None:
        if value is None:
            return None
        return checked_number(value, "request_timeout", positive=True)

    @field_validator("local_share", mode="before")
    @classmethod
    def _check_local_share(cls, value: Any) -> float | None:
        if value is None:
            return None
        return checked_number(value, "local_share", positive=True, at_most=1.0)

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
        url = checked_text(value, "state", hint)
        if url != "memory" and not url.startswith(_STATE_SCHEMES):
            # A Redis URL may carry a password: show it only when it plainly has none.
            shown = f", got {show(redact_url(url))}" if "@" not in url else ""
            raise fail(
                "state must be memory or a redis://, rediss://, unix://, redis+cluster:// or "
                f"rediss+cluster:// URL{shown}; {hint}"
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
