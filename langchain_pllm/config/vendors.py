"""The vendor registry: every vendor a config may name, written once.

Config sits below ``providers`` in the import order, so it cannot ask the provider classes which
vendors exist; this table is the one list instead. Each row names a vendor, the endpoint its
provider talks to when a config gives no ``api_base``, and where its provider class lives.
Built-in rows name the class as ``"module:Class"`` text, so config never imports a provider and a
pool of OpenAI keys never imports ``google-genai``; ``langchain_pllm.providers`` turns the text
into the class on first use. ``langchain_pllm.register_vendor`` adds a user's own class (checked
there, where ``Provider`` is known); from then on config validation, ``use:`` and vendor sections
accept its name like a built-in one.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from langchain_pllm.exceptions import PllmConfigError

__all__ = [
    "DEFAULT_API_BASE",
    "VENDORS",
    "VendorSpec",
    "add_vendor",
    "default_api_base",
    "remove_vendor",
    "vendor_names",
    "vendor_spec",
]


@dataclass(frozen=True, slots=True)
class VendorSpec:
    """One vendor a config may name.

    Attributes:
        name: The config name (``vendor:`` value, section key, ``use:`` entry).
        default_api_base: Endpoint used when a provider gives no ``api_base``; ``""`` for none.
        provider: The provider class, or ``"module:Class"`` text naming it (imported on use).
        builtin: Whether the vendor ships with langchain-pllm.
    """

    name: str
    default_api_base: str
    provider: str | type
    builtin: bool = False


_BUILTIN: tuple[VendorSpec, ...] = (
    VendorSpec(
        "openai",
        "https://api.openai.com/v1",
        "langchain_pllm.providers.openai:OpenAIProvider",
        builtin=True,
    ),
    VendorSpec(
        "siliconflow",
        "https://api.siliconflow.cn/v1",
        "langchain_pllm.providers.openai:SiliconFlowProvider",
        builtin=True,
    ),
    VendorSpec(
        "deepseek",
        "https://api.deepseek.com/v1",
        "langchain_pllm.providers.openai:DeepSeekProvider",
        builtin=True,
    ),
    VendorSpec(
        "anthropic",
        "https://api.anthropic.com",
        "langchain_pllm.providers.anthropic:AnthropicProvider",
        builtin=True,
    ),
    VendorSpec(
        "google",
        "https://generativelanguage.googleapis.com",
        "langchain_pllm.providers.google:GoogleProvider",
        builtin=True,
    ),
    VendorSpec(
        "zhipu",
        "https://open.bigmodel.cn/api/paas/v4",
        "langchain_pllm.providers.zhipu:ZhipuProvider",
        builtin=True,
    ),
)

VENDORS: tuple[str, ...] = tuple(spec.name for spec in _BUILTIN)
"""The built-in vendors, in the order error messages list them; ``vendor_names()`` adds the
registered ones."""

DEFAULT_API_BASE: Mapping[str, str] = MappingProxyType(
    {spec.name: spec.default_api_base for spec in _BUILTIN}
)
"""The endpoint each built-in vendor's SDK is pointed at when a provider gives no ``api_base``."""

# ``use`` is the key that picks a pool's vendors, so no vendor section may be called that.
_RESERVED = frozenset({"use"})
_NAME = re.compile(r"[a-z][a-z0-9_-]*")

_registry: dict[str, VendorSpec] = {spec.name: spec for spec in _BUILTIN}
_lock = threading.Lock()


def vendor_names() -> tuple[str, ...]:
    """Every vendor a config may name now: the built-in ones, then the registered ones."""
    with _lock:  # a registration in another thread must not change the dict mid-copy
        return tuple(_registry)


def vendor_spec(name: str) -> VendorSpec | None:
    """The registry row for a vendor, or ``None`` if no vendor has that name."""
    return _registry.get(name)


def default_api_base(vendor: str) -> str:
    """The endpoint a provider of ``vendor`` uses when it gives none (``""`` if unknown)."""
    spec = _registry.get(vendor)
    return spec.default_api_base if spec is not None else ""


def add_vendor(
    name: str, provider: str | type, *, api_base: str | None = None, replace: bool = False
) -> VendorSpec:
    """Add a vendor to the registry (``langchain_pllm.register_vendor`` is the public door).

    Registering the same class under the same name again is a no-op, so a re-run notebook cell
    or a re-imported plugin does no harm; any other change to a known name needs ``replace``.

    Args:
        name: Lowercase letters, digits, ``_`` or ``-``, starting with a letter.
        provider: The provider class, or ``"module:Class"`` text naming it.
        api_base: Default endpoint for providers that give none; ``""`` for none; ``None``
            keeps the endpoint of the vendor replaced (a built-in one's own), else none.
        replace: Allow replacing a vendor already known, built-in ones included.

    Returns:
        The registry row now in force.

    Raises:
        PllmConfigError: If the name is malformed or reserved, the endpoint is not an http(s)
            URL, or the name is taken and ``replace`` is false.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _RESERVED:
        raise PllmConfigError(
            f"cannot register vendor {name!r}: a vendor name is lowercase letters, digits, _ or -, "
            f"starts with a letter and is not {', '.join(sorted(_RESERVED))}",
            field="vendor",
        )
    if api_base and not api_base.startswith(("http://", "https://")):
        raise PllmConfigError(
            f"cannot register vendor {name!r}: api_base must start with http:// or https://",
            field="api_base",
        )
    with _lock:
        known = _registry.get(name)
        if api_base is None:
            # Replacing openai's class must not leave its providers with no endpoint at all.
            api_base = known.default_api_base if known is not None and replace else ""
        spec = VendorSpec(name, api_base.rstrip("/"), provider)
        if known is not None and not replace:
            if known == spec:
                return known
            what = "a built-in vendor" if known.builtin else f"registered to {known.provider!r}"
            raise PllmConfigError(
                f"cannot register vendor {name!r}: it is {what}; choose another name, or pass "
                "replace=True to replace it",
                field="vendor",
            )
        _registry[name] = spec
    return spec


def remove_vendor(name: str) -> None:
    """Forget a registered vendor; a replaced built-in one gets its own provider back.

    Raises:
        PllmConfigError: If no registered vendor has that name (built-in ones stay).
    """
    builtin = {spec.name: spec for spec in _BUILTIN}
    with _lock:
        known = _registry.get(name)
        if known is None or known.builtin:
            raise PllmConfigError(
                f"cannot remove vendor {name!r}: only a registered vendor can be removed",
                field="vendor",
            )
        if name in builtin:
            _registry[name] = builtin[name]
        else:
            del _registry[name]
