"""Configuration: YAML text, a YAML file or a mapping in, validated frozen config objects out.

``load_config`` reads the format of DESIGN.md section 3 and builds ``PllmConfig``;
``pool_from_providers`` and ``balancer_from_mapping`` build the same objects from the keyword
arguments of the chat and embeddings models. Every problem is raised as one ``PllmConfigError``
whose ``field`` is the dotted path of the bad value (``llm.openai[1].rate_limit``) and whose
message says how to fix it, never quoting an API key.

The package, one idea a module:

- ``vendors``: the registry of vendor names, default endpoints and provider classes;
- ``ids``: how providers are numbered (``openai-0``) and ids kept unique;
- ``checks``: value checks and the wording of every error;
- ``price``: ``Price``, per million tokens, and the cost of one reply;
- ``models``: ``ProviderConfig``, ``PoolConfig``, ``BalancerConfig``, ``PllmConfig``;
- ``build``: pools and balancer settings from plain entries (the faces' keyword arguments);
- ``loading``: YAML, ``${VAR}`` expansion, ``use:`` and vendor sections, ``load_config``.
"""

from langchain_pllm.config.build import balancer_from_mapping, pool_from_providers
from langchain_pllm.config.ids import provider_id
from langchain_pllm.config.loading import load_config
from langchain_pllm.config.models import (
    BalancerConfig,
    PllmConfig,
    PoolConfig,
    ProviderConfig,
    redact_url,
)
from langchain_pllm.config.price import Price
from langchain_pllm.config.vendors import DEFAULT_API_BASE, VENDORS, vendor_names

__all__ = [
    "DEFAULT_API_BASE",
    "VENDORS",
    "BalancerConfig",
    "PllmConfig",
    "PoolConfig",
    "Price",
    "ProviderConfig",
    "balancer_from_mapping",
    "load_config",
    "pool_from_providers",
    "provider_id",
    "redact_url",
    "vendor_names",
]
