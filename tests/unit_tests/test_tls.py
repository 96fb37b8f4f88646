"""The TLS contexts shared by the SDK clients we build (``providers/tls.py``)."""

from __future__ import annotations

import platform
import ssl

import certifi
import pytest
import truststore

from langchain_pllm.providers import tls


@pytest.fixture(autouse=True)
def no_cert_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def test_one_verifying_context_per_certificate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    if platform.system() in ("Windows", "Darwin"):
        pytest.skip("there httpx2 builds a truststore context (next test)")
    first = tls.system_context()
    assert type(first) is ssl.SSLContext
    assert first.verify_mode == ssl.CERT_REQUIRED
    assert first.check_hostname
    assert tls.system_context() is first
    assert tls.bundled_context() is tls.bundled_context()
    # Pointing SSL_CERT_FILE elsewhere after the first client still reaches new clients.
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    assert tls.system_context() is not first
    assert tls.system_context() is tls.system_context()
    assert tls.bundled_context() is tls.bundled_context()


def test_a_truststore_context_is_never_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    # On macOS and Windows httpx2 builds a truststore context, which holds one lock across each
    # handshake: shared, a slow handshake in one thread would stall every other client's.
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    tls._system.cache_clear()
    try:
        first, second = tls.system_context(), tls.system_context()
    finally:
        tls._system.cache_clear()
    assert type(first) is truststore.SSLContext
    assert type(second) is truststore.SSLContext
    assert first is not second
