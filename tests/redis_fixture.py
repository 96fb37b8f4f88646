"""A real ``redis-server`` for tests: started on a free loopback port, stopped afterwards.

``RedisServer`` runs ``redis-server --port P --bind 127.0.0.1 --save '' --appendonly no`` as a
subprocess (nothing is written to disk) and can be stopped, restarted on the same port, or
paused (SIGSTOP) to play a Redis that is slow rather than gone. The fixtures:

- ``redis_server`` (session): the running server, shared by a test run;
- ``redis_url`` (function): its URL, with the server running, answering and emptied first.

Import them in a test module (``from tests.redis_fixture import redis_server, redis_url``).
Without ``redis-server`` on the PATH the tests that need it are skipped (``.ci/run`` installs
Debian's ``redis-server``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` subprocess on a loopback port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._dir = tempfile.mkdtemp(prefix="pllm-redis-")
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the subprocess is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RedisServer:
        """Start the server (on the same port as before, if it ran already); wait until up."""
        if self.running:
            return self
        self._proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start (port {self.port} taken?)")
            if self.ping():
                return self
            time.sleep(0.01)
        self.stop()
        raise RuntimeError("redis-server did not answer within 10 s")

    def stop(self) -> None:
        """Stop the server (its data is gone: nothing is saved)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self._paused:
            proc.send_signal(signal.SIGCONT)
            self._paused = False
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def close(self) -> None:
        """Stop the server for good and remove its working directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        if self._proc is not None and not self._paused:
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        if self._proc is not None and self._paused:
            self._proc.send_signal(signal.SIGCONT)
            self._paused = False

    def ping(self) -> bool:
        """Whether the server answers PING right now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def flush(self) -> None:
        """Empty every database."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            if not sock.recv(64).startswith(b"+OK"):
                raise RuntimeError("FLUSHALL failed")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real ``redis-server`` on a free loopback port for the whole run."""
    if shutil.which("redis-server") is None:
        message = (
            "redis-server is not installed: run scripts/setup.sh (apt-get install redis-server)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a missing server is a broken setup, never a skip
        pytest.skip(message)
    server = None
    for _ in range(3):  # the free port may be taken between choosing it and binding it
        try:
            server = RedisServer().start()
            break
        except RuntimeError:
            continue
    if server is None:
        raise RuntimeError("could not start redis-server")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the shared server, running, answering and empty."""
    redis_server.resume()
    redis_server.start()
    redis_server.flush()
    return redis_server.url
