"""Building pools and balancer settings from plain entries.

Both roads into a pool end here: the faces' keyword arguments (``providers=[...]``,
``retry_policy=...``) through ``pool_from_providers`` and ``balancer_from_mapping``, and the YAML
loader's vendor sections through ``provider_from_entry`` and ``pool_from_built``. Entries are
numbered with ``ids`` and checked by the models; errors carry the path the caller wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import SecretStr, ValidationError

from langchain_pllm.config.checks import config_error, vendor_choices
from langchain_pllm.config.ids import VendorCounter, find_duplicate_id, provider_id
from langchain_pllm.config.models import BalancerConfig, PoolConfig, ProviderConfig, numbered
from langchain_pllm.config.vendors import vendor_spec
from langchain_pllm.exceptions import PllmConfigError

__all__ = [
    "balancer_from_mapping",
    "pool_from_built",
    "pool_from_providers",
    "provider_from_entry",
]


def provider_from_entry(
    entry: Mapping[str, Any], *, vendor: str, index: int, place: str
) -> ProviderConfig:
    """Validate one provider entry of ``vendor``, giving it its id.

    Args:
        entry: The entry's keys (``api_key``, ``model``, ...); ``id`` is refused (use ``name``).
        vendor: The vendor it belongs to (its section, or its own ``vendor`` key).
        index: Its place among the pool's providers of that vendor.
        place: Its path in errors (``llm.openai[1]``, ``providers[2]``).

    Returns:
        The validated provider.

    Raises:
        PllmConfigError: If any key is unknown or any value is missing or bad.
    """
    if "id" in entry:
        raise PllmConfigError(
            "id is not set directly; write name: instead "
            f"(the id is the name, or {provider_id(vendor, index)})",
            field=f"{place}.id",
        )
    name = entry.get("name")
    own_id = name.strip() if isinstance(name, str) and name.strip() else ""
    own_id = own_id or provider_id(vendor, index)
    try:
        return ProviderConfig.model_validate({**entry, "vendor": vendor, "id": own_id})
    except ValidationError as exc:
        raise config_error(exc, place, ProviderConfig) from None


def pool_from_built(built: Sequence[tuple[str, ProviderConfig]], field: str) -> PoolConfig:
    """A pool of validated providers, refusing an id used twice (named by both paths).

    Args:
        built: Each provider with its path in errors, in pool order.
        field: Path of the whole pool, for an error about the pool itself.

    Returns:
        The pool.

    Raises:
        PllmConfigError: If two providers share an id.
    """
    places = [place for place, _ in built]
    providers = [provider for _, provider in built]
    duplicate = find_duplicate_id([p.id for p in providers], places)
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
    counter = VendorCounter()
    built: list[tuple[str, ProviderConfig]] = []
    for position, entry in enumerate(providers):
        place = f"{field}[{position}]"
        if isinstance(entry, ProviderConfig):
            built.append((place, numbered(entry, counter.take(entry.vendor))))
            continue
        if not isinstance(entry, Mapping):
            raise PllmConfigError(
                f"each provider must be a mapping or ProviderConfig, got {type(entry).__name__}",
                field=place,
            )
        vendor = entry.get("vendor")
        if vendor is None:
            raise PllmConfigError(
                f"vendor is required; one of: {vendor_choices()}", field=f"{place}.vendor"
            )
        if not isinstance(vendor, str) or vendor_spec(vendor) is None:
            # Let ProviderConfig word the error (with a suggestion) at the right path.
            provider_from_entry(entry, vendor=vendor, index=0, place=place)
        index = counter.take(vendor)
        data = dict(entry)
        if data.get("api_key") is None and default_api_key is not None:
            data["api_key"] = default_api_key
        built.append((place, provider_from_entry(data, vendor=vendor, index=index, place=place)))
    return pool_from_built(built, field)


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
        raise config_error(exc, field, BalancerConfig) from None
