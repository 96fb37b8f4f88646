"""``http_backend`` in the config: checked, balancer-wide, overridden per key, and obeyed."""

from __future__ import annotations

import pytest

from langchain_pllm import BalancedChatModel
from langchain_pllm.config import BalancerConfig, ProviderConfig
from langchain_pllm.config.models import with_http_backend
from langchain_pllm.exceptions import PllmConfigError
from langchain_pllm.testing import FakeOpenAIServer


def test_a_misspelt_backend_is_refused_with_the_choices() -> None:
    with pytest.raises(PllmConfigError) as caught:
        BalancerConfig(http_backend="aiohtp")  # type: ignore[arg-type]
    assert "aiohttp, httpx" in str(caught.value)
    assert caught.value.field == "http_backend"


def test_a_key_of_its_own_keeps_its_backend() -> None:
    own = ProviderConfig(vendor="openai", api_key="k", model="m", http_backend="aiohttp")
    plain = ProviderConfig(vendor="openai", api_key="k2", model="m")
    assert with_http_backend(own, "httpx").http_backend == "aiohttp"
    assert with_http_backend(plain, "httpx").http_backend == "httpx"
    assert with_http_backend(plain, None) is plain


async def test_each_key_runs_on_the_backend_it_resolves_to() -> None:
    with FakeOpenAIServer() as srv:
        model = BalancedChatModel(
            providers=[
                {"vendor": "openai", "api_key": "k-a", "model": "m", "api_base": srv.base_url},
                {
                    "vendor": "openai",
                    "api_key": "k-b",
                    "model": "m",
                    "api_base": srv.base_url,
                    "http_backend": "aiohttp",
                },
            ],
            balancer={"http_backend": "httpx"},
        )
        for _ in range(4):
            assert (await model.ainvoke("hi")).content == "echo: hi"
        kinds = {
            m.config.id: type(m.provider.async_client._client).__name__
            for m in model.balancer_instance.members
        }
    assert "AioHttp" not in kinds["openai-0"]
    assert "AioHttp" in kinds["openai-1"]
    assert {r.api_key for r in srv.requests} == {"k-a", "k-b"}
