"""LangChain's standard unit suites for the chat model and the embeddings (no network calls)."""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests

from langchain_pllm import BalancedChatModel, BalancedEmbeddings

# Port 9 (discard) on loopback: nothing answers, and the unit suites never call it.
_BASE = "http://127.0.0.1:9/v1"


class TestBalancedChatModelStandard(ChatModelUnitTests):
    # Two tests of this suite skip, by design: no `init_from_env_params` (a pool's keys come
    # from its providers or its YAML's `${VAR}`s, not from one environment variable) and not
    # serializable (`is_lc_serializable` is False: a pool holds keys and live state).
    @property
    def chat_model_class(self) -> type[BalancedChatModel]:
        return BalancedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "providers": [
                {"vendor": "openai", "api_key": "test", "model": "gpt-4o-mini", "api_base": _BASE}
            ]
        }


class TestBalancedEmbeddingsStandard(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[BalancedEmbeddings]:
        return BalancedEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {
            "providers": [
                {"vendor": "openai", "model": "text-embedding-3-small", "api_base": _BASE}
            ],
            "api_key": "test",
        }
