"""A loopback aiohttp server in a background thread: start, stop, URL, nothing vendor-specific.

``LoopbackServer`` binds 127.0.0.1 on a free port and serves its routes from a thread with its
own event loop, so synchronous tests, asynchronous tests and the SDKs' own event loops can all
talk to it. Subclasses give the routes (``_routes``); everything about requests and replies lives
in ``langchain_pllm.testing.server``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from aiohttp import web

_Server = TypeVar("_Server", bound="LoopbackServer")


class LoopbackServer:
    """An aiohttp application served on 127.0.0.1 from a daemon thread."""

    vendor: ClassVar[str] = ""
    api_prefix: ClassVar[str] = ""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._start_error: BaseException | None = None

    @property
    def url(self) -> str:
        """Root URL, ``http://127.0.0.1:PORT``."""
        if not self._port:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        """The base URL the vendor's SDK takes."""
        return self.url + self.api_prefix

    @property
    def port(self) -> int:
        """The TCP port bound (0 before ``start``)."""
        return self._port

    def start(self: _Server) -> _Server:
        """Start serving in a background thread; returns self. Idempotent."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        self._start_error = None
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"fake-{self.vendor}-server", daemon=True
        )
        self._thread.start()
        ready.wait(10)
        if self._start_error is not None or not self._port:
            self._thread.join(1)
            self._thread = None
            raise RuntimeError(f"{type(self).__name__} failed to start") from self._start_error
        return self

    def stop(self) -> None:
        """Stop serving and close every connection. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None
        self._port = 0

    def __enter__(self: _Server) -> _Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self: _Server) -> _Server:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _routes(self) -> list[tuple[str, str, Any]]:
        raise NotImplementedError

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._setup())
        except BaseException as exc:  # reported to the starting thread
            self._start_error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
                self._runner = None
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _setup(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for method, path, handler in self._routes():
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.05, handler_cancellation=True
        )
        await runner.setup()
        # A deep accept queue: hundreds of clients connecting at once (a c256 benchmark on a
        # loaded machine) overflow aiohttp's default of 128, and a dropped SYN costs a client
        # a one-second retransmit, or its connect timeout.
        site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True, backlog=1024)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]


def closed_port_url(path: str = "") -> str:
    """A loopback URL on which nothing listens: connecting to it is refused at once.

    The port is bound, read and released again, so it was free a moment ago; another process
    could take it in between, which on a test machine is rare enough to ignore.

    Args:
        path: Appended to ``http://127.0.0.1:PORT`` (e.g. ``"/v1"`` for the ``openai`` SDK).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
