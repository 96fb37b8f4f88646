"""One module per vendor SDK; ``build_provider`` picks the class for a config entry.

Which vendors exist is written once, in ``langchain_pllm.config.vendors``: config sits below
providers and validates vendor names without importing them. Here a vendor name becomes its
class, imported on first use so a pool of OpenAI keys never imports ``google-genai``; a vendor
whose SDK fails to import is reported when a config names it, not at import time.
``register_vendor`` adds a user's own ``Provider`` subclass (see ``Provider`` for what it must
implement); the error helpers a provider needs are exported here too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from langchain_pllm.config.checks import unknown_vendor
from langchain_pllm.config.vendors import add_vendor, vendor_spec
from langchain_pllm.exceptions import PllmConfigError, model_error
from langchain_pllm.providers.base import ChatRequest, EmbeddingResult, Provider
from langchain_pllm.providers.errors import class_for_status, retry_after_of

if TYPE_CHECKING:
    from langchain_pllm.config import ProviderConfig

__all__ = [
    "ChatRequest",
    "EmbeddingResult",
    "Provider",
    "build_provider",
    "class_for_status",
    "model_error",
    "provider_class",
    "register_vendor",
    "retry_after_of",
]


def register_vendor(
    name: str,
    provider: type[Provider],
    *,
    api_base: str | None = None,
    replace: bool = False,
) -> None:
    """Add a vendor of your own: configs may then name it like a built-in vendor.

    After ``register_vendor("myvendor", MyProvider)`` a YAML or dict config may hold a
    ``myvendor:`` section (and ``use: myvendor``), and the faces take
    ``{"vendor": "myvendor", ...}`` entries; each such entry is served by a ``MyProvider``.
    Registering the same class under the same name again does nothing (a re-run notebook cell
    is harmless); taking a name already in use, a built-in one included, needs ``replace=True``.
    Register before building models: a pool already built keeps the providers it was built with.

    Args:
        name: The vendor's config name: lowercase letters, digits, ``_`` or ``-``, starting
            with a letter.
        provider: A subclass of ``Provider`` that sets ``model_provider``.
        api_base: The endpoint its providers get when their config gives none; ``""`` leaves
            ``api_base`` empty for a provider that needs no URL. Left out, a replaced vendor
            keeps its endpoint (``openai`` stays ``https://api.openai.com/v1``).
        replace: Allow replacing a vendor already registered or built in.

    Raises:
        TypeError: If ``provider`` is not a ``Provider`` subclass with ``model_provider`` set.
        PllmConfigError: If ``name`` is malformed or taken (without ``replace``), or
            ``api_base`` is not an http(s) URL.

    Example:
        .. code-block:: python

            from langchain_pllm import BalancedChatModel, register_vendor

            register_vendor("echo", EchoProvider)
            model = BalancedChatModel(providers=[{"vendor": "echo", "api_key": "k", "model": "m"}])
    """
    if not (isinstance(provider, type) and issubclass(provider, Provider)):
        raise TypeError(
            f"register_vendor({name!r}, ...) needs a subclass of "
            f"langchain_pllm.providers.Provider, got {provider!r}"
        )
    if not isinstance(getattr(provider, "model_provider", None), str):
        raise TypeError(
            f"{provider.__name__} must set model_provider, the vendor name LangChain reads "
            f"from response_metadata (e.g. model_provider = {name!r})"
        )
    add_vendor(name, provider, api_base=api_base, replace=replace)


def provider_class(vendor: str) -> type[Provider]:
    """The provider class for a vendor name, imported on first use.

    Raises:
        PllmConfigError: If no vendor has that name, or its SDK fails to import.
    """
    spec = vendor_spec(vendor)
    if spec is None:
        raise PllmConfigError(unknown_vendor(vendor), field="vendor")
    target = spec.provider
    if not isinstance(target, str):
        return target
    module, _, name = target.partition(":")
    try:
        cls: type[Provider] = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise PllmConfigError(
            f"vendor {vendor!r} needs a package that failed to import ({e}); "
            "reinstall langchain-pllm",
            field="vendor",
        ) from e
    return cls


def build_provider(config: ProviderConfig) -> Provider:
    """Build the provider for one config entry (its SDK clients are built on first use)."""
    return provider_class(config.vendor)(config)
