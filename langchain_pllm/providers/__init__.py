"""One module per vendor SDK; ``build_provider`` picks the class for a config entry.

Vendors whose SDK fails to import are reported when a config names them, not at import time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from langchain_pllm.exceptions import PllmConfigError
from langchain_pllm.providers.base import ChatRequest, EmbeddingResult, Provider

if TYPE_CHECKING:
    from langchain_pllm.config import ProviderConfig

__all__ = ["PROVIDER_CLASSES", "ChatRequest", "EmbeddingResult", "Provider", "build_provider"]

# vendor -> "module:Class"; imported lazily so a pool of OpenAI keys never imports google-genai.
PROVIDER_CLASSES: dict[str, str] = {
    "openai": "langchain_pllm.providers.openai:OpenAIProvider",
    "siliconflow": "langchain_pllm.providers.openai:SiliconFlowProvider",
    "deepseek": "langchain_pllm.providers.openai:DeepSeekProvider",
    "anthropic": "langchain_pllm.providers.anthropic:AnthropicProvider",
    "google": "langchain_pllm.providers.google:GoogleProvider",
    "zhipu": "langchain_pllm.providers.zhipu:ZhipuProvider",
}


def provider_class(vendor: str) -> type[Provider]:
    """The provider class for a vendor name."""
    target = PROVIDER_CLASSES.get(vendor)
    if target is None:
        raise PllmConfigError(
            f"unknown vendor {vendor!r}; use one of {', '.join(PROVIDER_CLASSES)}", field="vendor"
        )
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
