"""langchain-pllm: a pool of LLM keys across vendors as one LangChain chat and embeddings model.

Exact sliding-window limits, circuit breakers, health checks and failover behind
``BalancedChatModel`` and ``BalancedEmbeddings``; output validators as LangChain output parsers.
"""

from langchain_pllm._version import __version__
from langchain_pllm.chat_models import BalancedChatModel
from langchain_pllm.config import load_config
from langchain_pllm.embeddings import BalancedEmbeddings
from langchain_pllm.exceptions import (
    InvalidCallError,
    NoProviderAvailableError,
    PllmConfigError,
    ValidationFailedError,
)
from langchain_pllm.output_parsers import (
    JsonValidator,
    RegexValidator,
    TextValidator,
    ValidationResult,
)
from langchain_pllm.progress import PllmProgress
from langchain_pllm.providers import register_vendor

__all__ = [
    "BalancedChatModel",
    "BalancedEmbeddings",
    "InvalidCallError",
    "JsonValidator",
    "NoProviderAvailableError",
    "PllmConfigError",
    "PllmProgress",
    "RegexValidator",
    "TextValidator",
    "ValidationFailedError",
    "ValidationResult",
    "__version__",
    "load_config",
    "register_vendor",
]
