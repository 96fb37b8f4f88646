"""Async tests here run on both async transports when the transport can change their outcome.

Sync clients always speak httpx; async clients take ``http_backend`` (aiohttp by default). The
``http_backend`` fixture sets the library default for one test, so pools that name no backend,
which is every pool in these tests, run on it.

Which async tests run on both (the rule, with examples, is in ``CONTRIBUTING.md``): by default
every one. A test (or a module, through ``pytestmark``) marked ``one_transport`` exercises what
the balancer decides from an exchange that arrived intact, or never reaches an async
Stainless-SDK client at all, and runs on the default transport only; ``both_transports`` on a
test puts it back on both inside such a module.
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


def backends_for(metafunc: pytest.Metafunc) -> tuple[str, ...]:
    """The transports an async test runs on: the closest of its markers decides."""
    for marker in metafunc.definition.iter_markers():
        if marker.name == "both_transports":
            return BACKENDS
        if marker.name == "one_transport":
            return (transport.DEFAULT_HTTP_BACKEND,)
    # A module whose tests count what accumulates across them (module-scoped servers, a shared
    # balancer's stats) may also name the one backend it runs on in ``HTTP_BACKENDS``.
    return tuple(getattr(metafunc.module, "HTTP_BACKENDS", BACKENDS))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Only async tests: a sync call never touches the async transport.
    if "http_backend" in metafunc.fixturenames and inspect.iscoroutinefunction(metafunc.function):
        metafunc.parametrize("http_backend", backends_for(metafunc), indirect=True)
