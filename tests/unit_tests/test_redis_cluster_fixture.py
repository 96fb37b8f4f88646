"""The cluster fixture leaves no server behind, even when the test process is killed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import sys, tempfile, time
from tests.redis_cluster_fixture import ClusterNode, free_cluster_ports

node = ClusterNode(free_cluster_ports(1)[0], tempfile.mkdtemp(prefix="pllm-node-"))
node.start()
print(node.proc.pid, node.dir, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie is gone, only not reaped
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_node_stops_when_the_test_process_is_killed(how: signal.Signals) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed: run scripts/setup.sh")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        pid_text, directory = child.stdout.readline().split()
        pid = int(pid_text)
        assert _alive(pid)
        child.send_signal(how)  # neither finally nor atexit runs
        child.wait(10)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"redis-server {pid} outlived the killed test process"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        if "pid" in locals() and _alive(pid):
            os.kill(pid, signal.SIGKILL)
        if "directory" in locals():
            shutil.rmtree(directory, ignore_errors=True)
