"""Every async test here runs on both async transports, as the state tests run on both states.

Sync clients always speak httpx; async clients take ``http_backend`` (aiohttp by default). The
``http_backend`` fixture sets the library default for one test, so pools that name no backend,
which is every pool in these tests, run on it.
"""

from __future__ import annotations

import inspect

import pytest

from langchain_pllm.providers import transport

BACKENDS = ("aiohttp", "httpx")


@pytest.fixture(autouse=True)
def http_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The async transport of this test's pools (``aiohttp`` for a sync test)."""
    backend: str = getattr(request, "param", transport.DEFAULT_HTTP_BACKEND)
    monkeypatch.setattr(transport, "DEFAULT_HTTP_BACKEND", backend)
    return backend


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Only async tests: a sync call never touches the async transport. A module whose tests
    # count what accumulates across them (module-scoped servers, a shared balancer's stats)
    # names the one backend it runs on in ``HTTP_BACKENDS``.
    if "http_backend" in metafunc.fixturenames and inspect.iscoroutinefunction(metafunc.function):
        backends = getattr(metafunc.module, "HTTP_BACKENDS", BACKENDS)
        metafunc.parametrize("http_backend", backends, indirect=True)
