"""A real Redis Cluster for tests: three masters and three replicas on loopback, password set.

``LocalCluster`` starts six ``redis-server --cluster-enabled yes`` processes on loopback ports
whose cluster bus ports (port + 10000) are free too, joins them with
``redis-cli --cluster create --cluster-replicas 1`` and waits until every node says
``cluster_state:ok``. Every node requires a password (``requirepass`` and ``masterauth``), so
every cluster test also tests a password. A short ``cluster-node-timeout`` (1 s) makes a killed
master's replica take over within about two seconds. Nothing is written to disk.

Fixtures (import them in a test module with ``pytest_plugins``):

- ``redis_cluster`` (module): the running cluster, stopped and its files removed after the
  module, whatever happened (``.ci/run`` must never wait on a leftover server);
- ``cluster_url`` (function): its ``redis+cluster://`` URL, every node running again (a node
  killed by the previous test restarts and rejoins as a replica), the cluster healthy and empty.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

PASSWORD = "cluster-secret"
_NODE_TIMEOUT_MS = 1000
_PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux SIGTERM the server when the test process dies.

    A run cut short by SIGTERM or SIGKILL (a CI timeout, ``timeout``) runs neither the fixture's
    ``finally`` nor ``atexit``: without this its six servers outlive it. ``prctl`` is looked up
    here, in the parent: the child between fork and exec must not load libraries. The signal
    follows the thread that started the node, and nodes are started from the test's thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


_DIE_WITH_PARENT = _parent_death_signal()


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(count: int) -> list[int]:
    """``count`` loopback ports that are free, and whose bus ports (+10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 29999)  # bus ports land in 30000-39999, below ephemerals
        if port not in ports and _port_is_free(port) and _port_is_free(port + 10000):
            ports.append(port)
    return ports


def make_certificates(directory: str) -> dict[str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 (``openssl``); their paths."""
    paths = {
        name: os.path.join(directory, f"{name}.pem") for name in ("ca", "ca-key", "cert", "key")
    }
    ext = os.path.join(directory, "san.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pllm-test-ca",
         "-keyout", paths["ca-key"], "-out", paths["ca"]],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", paths["key"], "-out", os.path.join(directory, "req.pem")],
        ["x509", "-req", "-in", os.path.join(directory, "req.pem"), "-CA", paths["ca"],
         "-CAkey", paths["ca-key"], "-CAcreateserial", "-days", "2", "-extfile", ext,
         "-out", paths["cert"]],
    ]  # fmt: skip
    for step in steps:
        subprocess.run(["openssl", *step], capture_output=True, check=True, timeout=60)
    return paths


class ClusterNode:
    """One ``redis-server`` of the cluster (TLS only, when given certificates)."""

    def __init__(self, port: int, root: str, tls: dict[str, str] | None = None) -> None:
        self.port = port
        self.tls = tls
        self.dir = os.path.join(root, str(port))
        os.makedirs(self.dir, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def _listen_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0", "--tls-port", str(self.port),
            "--tls-cluster", "yes", "--tls-replication", "yes", "--tls-auth-clients", "no",
            "--tls-cert-file", self.tls["cert"], "--tls-key-file", self.tls["key"],
            "--tls-ca-cert-file", self.tls["ca"],
        ]  # fmt: skip

    def _cli_args(self) -> list[str]:
        return [] if self.tls is None else ["--tls", "--cacert", self.tls["ca"]]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        self.proc = subprocess.Popen(
            [
                "redis-server",
                *self._listen_args(),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(_NODE_TIMEOUT_MS),
                "--save", "",
                "--appendonly", "no",
                "--requirepass", PASSWORD,
                "--masterauth", PASSWORD,
                # Replicas sync at once (the default waits 5 s for more replicas to join).
                "--repl-diskless-sync-delay", "0",
                "--dir", self.dir,
                "--logfile", os.path.join(self.dir, "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_DIE_WITH_PARENT,
        )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL: the node vanishes mid-run, as a crashed machine's would."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def cli(self, *args: str, timeout: float = 10) -> str:
        """``redis-cli`` against this node; its output."""
        done = subprocess.run(
            [
                "redis-cli",
                *self._cli_args(),
                "-p",
                str(self.port),
                "-a",
                PASSWORD,
                "--no-auth-warning",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return done.stdout

    def info(self, section: str) -> dict[str, str]:
        out: dict[str, str] = {}
        text = self.cli("cluster", "info") if section == "cluster" else self.cli("info", section)
        for line in text.splitlines():
            name, colon, value = line.strip().partition(":")
            if colon:
                out[name] = value
        return out

    def role(self) -> str:
        """``master`` or ``slave`` (as the node itself says), ``''`` when it does not answer."""
        return self.info("replication").get("role", "") if self.running else ""


class LocalCluster:
    """Three masters and three replicas of ``redis-server`` on loopback, joined into a cluster.

    Args:
        tls: Serve TLS only (a throwaway CA made with ``openssl``), cluster bus and
            replication included; the URL is then ``rediss+cluster://`` naming the CA.
    """

    def __init__(self, tls: bool = False) -> None:
        self._root = tempfile.mkdtemp(prefix="pllm-cluster-")
        self.tls = make_certificates(self._root) if tls else None
        self.nodes = [ClusterNode(port, self._root, self.tls) for port in free_cluster_ports(6)]

    @property
    def url(self) -> str:
        """``redis+cluster://:PASSWORD@127.0.0.1:PORT`` of the first node that runs."""
        node = next(n for n in self.nodes if n.running)
        if self.tls is not None:
            ca = self.tls["ca"]
            return f"rediss+cluster://:{PASSWORD}@127.0.0.1:{node.port}?ssl_ca_certs={ca}"
        return f"redis+cluster://:{PASSWORD}@127.0.0.1:{node.port}"

    def start(self) -> LocalCluster:
        for node in self.nodes:
            node.start()
        self._wait(lambda: all(n.cli("ping").strip() == "PONG" for n in self.nodes), "start")
        done = subprocess.run(
            [
                "redis-cli", *self.nodes[0]._cli_args(), "-a", PASSWORD, "--no-auth-warning",
                "--cluster", "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas", "1", "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        self.wait_healthy()
        return self

    def _wait(self, ready: object, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.05)
        raise RuntimeError(f"the cluster did not {what} within {timeout} s")

    def masters(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.role() == "master"]

    def wait_healthy(self, timeout: float = 30) -> None:
        """Every node running says ``cluster_state:ok``, three masters hold the slots, and
        every running replica is in sync with its master (only a synced one can take over)."""

        def healthy() -> bool:
            states = [n.info("cluster") for n in self.nodes if n.running]
            return (
                all(s.get("cluster_state") == "ok" for s in states)
                and all(s.get("cluster_slots_ok") == "16384" for s in states)
                and len(self.masters()) == 3
                and all(
                    n.info("replication").get("master_link_status") == "up"
                    for n in self.nodes
                    if n.role() == "slave"
                )
            )

        self._wait(healthy, "become healthy", timeout)

    def master_of(self, key: str) -> ClusterNode:
        """The node serving ``key``'s slot now."""
        node = self.nodes[0] if self.nodes[0].running else next(n for n in self.nodes if n.running)
        slot = int(node.cli("cluster", "keyslot", key).strip())
        for line in node.cli("cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no master serves slot {slot}")

    def move_slot_of(self, key: str) -> ClusterNode:
        """Move ``key``'s slot, keys and all, to another master (a resharding); the new master.

        The steps ``redis-cli --cluster reshard`` takes for one slot: importing and migrating
        marks, ``MIGRATE`` of its keys, then every master learns the slot's new owner.
        """
        source = self.master_of(key)
        target = next(n for n in self.masters() if n is not source)
        slot = source.cli("cluster", "keyslot", key).strip()
        source_id = source.cli("cluster", "myid").strip()
        target_id = target.cli("cluster", "myid").strip()
        target.cli("cluster", "setslot", slot, "importing", source_id)
        source.cli("cluster", "setslot", slot, "migrating", target_id)
        names = source.cli("cluster", "getkeysinslot", slot, "1000").split()
        if names:
            out = source.cli(
                "migrate", "127.0.0.1", str(target.port), "", "0", "5000",
                "auth", PASSWORD, "keys", *names,
            )  # fmt: skip
            if "OK" not in out:
                raise RuntimeError(f"MIGRATE failed: {out}")
        for node in self.masters():
            node.cli("cluster", "setslot", slot, "node", target_id)
        self._wait(lambda: self.master_of(key) is target, "move the slot")
        return target

    def kill_and_wait_for_promotion(self, node: ClusterNode, timeout: float = 30) -> None:
        """SIGKILL a master and wait until its replica is master and the cluster is healthy."""
        node.kill()
        self.wait_healthy(timeout)

    def recover(self) -> None:
        """Restart any stopped node (it rejoins as a replica) and wait until all is healthy."""
        stopped = [n for n in self.nodes if not n.running]
        for node in stopped:
            node.start()
        if stopped:
            self._wait(lambda: all(n.cli("ping").strip() == "PONG" for n in self.nodes), "restart")
        # A restarted master comes back as a replica of the one promoted in its place.
        self.wait_healthy()

    def flush(self) -> None:
        for node in self.masters():
            node.cli("flushall")

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self._root, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[LocalCluster]:
    """A real Redis Cluster (3 masters, 3 replicas, password) for one test module."""
    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    if missing:
        message = f"{' and '.join(missing)} not installed: run scripts/setup.sh"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a missing server is a broken setup, never a skip
        pytest.skip(message)
    cluster = LocalCluster()
    atexit.register(cluster.close)  # even if the run is cut short past the fixture's finally
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
        atexit.unregister(cluster.close)


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> str:
    """The cluster's URL, every node running, the cluster healthy and empty."""
    redis_cluster.recover()
    redis_cluster.flush()
    return redis_cluster.url
