"""Verifying TLS contexts built once per process and shared by every SDK client we build.

Building a verifying ``ssl.SSLContext`` loads a CA bundle: 50 to 100 ms of CPU each time. The
SDKs build one per HTTP client (``google-genai`` up to three per client), and we build clients
per endpoint, per key shard and, for async, per event loop, so a pool of many keys, or a
program that calls ``asyncio.run`` per request, paid that again and again. A context is safe
to share between clients and threads, so each kind is built once, exactly as the SDK would
build it, and handed to every client. The certificate environment (``SSL_CERT_FILE``,
``SSL_CERT_DIR``) is read at every call, so changing it still takes effect for new clients.
Still built per client: ``google-genai``'s context for its own httpx clients (which one it
would build depends on its private choice of backend) and ``zhipuai``'s sync client's.

Not shared: the ``truststore`` context ``httpx2`` builds on macOS and Windows. It loads no
bundle (the OS verifies), so there is nothing to save, and it holds one lock across each
handshake, blocking ones included: shared, every client's handshakes would queue behind one
another's, an event loop's behind a sync thread's connecting to a slow endpoint.
"""

from __future__ import annotations

import functools
import os
import ssl

__all__ = ["bundled_context", "system_context"]


def system_context() -> ssl.SSLContext:
    """What ``httpx2`` builds for ``verify=True``: the default of ``openai`` and ``anthropic``."""
    shared = _system(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    if shared is not None:
        return shared
    import httpx2

    return httpx2.create_ssl_context()  # a truststore context: one per client (module doc)


def bundled_context() -> ssl.SSLContext:
    """What ``google-genai`` builds for its aiohttp session: certifi's bundle by default."""
    return _bundled(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


# Keyed by the certificate environment, which is all that shapes these contexts.
@functools.lru_cache(maxsize=4)
def _system(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext | None:
    """The shared context, or ``None`` where ``httpx2`` builds a ``truststore`` one."""
    import httpx2

    ctx = httpx2.create_ssl_context()
    # ``type``, not ``isinstance``: a truststore context passes itself off as an ``SSLContext``.
    return ctx if type(ctx) is ssl.SSLContext else None


@functools.lru_cache(maxsize=4)
def _bundled(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    import certifi

    return ssl.create_default_context(cafile=cert_file or certifi.where(), capath=cert_dir)
