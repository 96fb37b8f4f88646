"""The ``pllm`` command, run as a user runs it: a subprocess, its output and exit code."""

from __future__ import annotations

import codecs
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from langchain_pllm.cli import main
from langchain_pllm.testing import FakeAnthropicServer, FakeOpenAIServer, Fault

ESCAPE = re.compile(r"\x1b[\[\]]")


def python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def pllm(*args: str) -> subprocess.CompletedProcess[str]:
    return python("-m", "langchain_pllm", *args)


def test_demo_answers_every_prompt_and_shows_each_key() -> None:
    done = pllm("demo", "--requests", "30")
    assert done.returncode == 0, done.stderr
    assert "30/30 answered correctly, in order" in done.stdout
    for name in ("gpt", "deepseek", "claude", "gemini", "glm"):
        assert f"\n{name}: served" in done.stdout
    # The overloaded key never served; once it failed breaker_threshold (3) times, its breaker
    # is open (how many calls reach it first depends on thread timing).
    line = re.search(r"claude: served 0 of its (\d+) requests, breaker (\w+)", done.stdout)
    assert line is not None, done.stdout
    if int(line.group(1)) >= 3:
        assert line.group(2) == "open"
    assert "sk-demo" not in done.stdout  # keys never printed
    # Piped: plain lines, not one escape code; every number checked against the servers' logs.
    assert not ESCAPE.search(done.stdout)
    assert "chain: 20/20 done" in done.stdout
    assert "batch: 10/10 done" in done.stdout
    for name in ("gpt", "deepseek", "claude", "gemini", "glm"):
        assert re.search(rf"\n{name}: served .*: match\n", done.stdout), done.stdout
    logged = re.search(r"The fake servers logged (\d+) requests: 30 answered", done.stdout)
    assert logged is not None, done.stdout
    retries = int(logged.group(1)) - 30
    assert f"Retries: {retries} counted by the progress handlers" in done.stdout
    assert retries >= 3  # the 429s at least were retried
    assert "Every number above matches the fake servers' logs." in done.stdout
    assert "| claude " in done.stdout  # the final table, in ASCII


def _as_a_terminals_job() -> None:
    """In the child: Ctrl-C (and Ctrl-\\) as a terminal's foreground job gets them.

    A test run started in the background (``pytest ... &`` from a script, some CI runners)
    ignores SIGINT and SIGQUIT, children inherit that, and Python then installs no
    KeyboardInterrupt handler: the child would never see the test's Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class Terminal:
    """``python -m langchain_pllm ARGS`` on a pseudo-terminal of 160x50, read as it writes."""

    def __init__(self, *args: str, cwd: Path | None = None) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "50"}
        env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "langchain_pllm", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
            cwd=cwd,
            preexec_fn=_as_a_terminals_job,
        )
        os.close(slave)
        self.master: int | None = master
        self.out = ""
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode

    def read(self, until: str | None = None, timeout: float = 120) -> str:
        """Read until ``until`` appears in what came after this call began (or the end)."""
        start = len(self.out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if until is not None and until in self.out[start:]:
                break
            assert self.master is not None
            ready, _, _ = select.select([self.master], [], [], 1.0)
            if not ready:
                if self.proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            self.out += self._decode(data)  # a character split between reads stays whole
        return self.out[start:]

    def close(self, timeout: float = 30) -> int:
        """Wait for the exit, reading on (a full terminal blocks its writer); the exit code.

        Killed if the exit does not come in time.
        """
        try:
            if self.master is not None:
                self.read(timeout=timeout)  # to the end of its output
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            if self.master is not None:
                os.close(self.master)
                self.master = None


def run_in_terminal(*args: str, timeout: float = 120) -> tuple[int, str]:
    """Run ``python -m langchain_pllm ARGS`` on a pseudo-terminal to its end; exit, output."""
    term = Terminal(*args)
    code = term.close(timeout)
    return code, term.out


def test_demo_on_a_terminal_is_a_live_view_whose_frames_change() -> None:
    code, out = run_in_terminal("demo", "--requests", "60")
    assert code == 0, out
    assert ESCAPE.search(out)  # colours and redraws
    assert "\x1b[?25l" in out  # the live view hides the cursor while it redraws...
    assert out.rstrip().endswith("Every number above matches the fake servers' logs.")
    assert "\x1b[?25h" in out  # ...and gives it back
    # Each redraw shows the progress so far: the chain's count moves through several values.
    counts = {int(n) for n in re.findall(r"(\d+)/40 ", out)}
    assert len(counts) >= 3, sorted(counts)
    assert 40 in counts
    assert "every key, live" in out
    assert "█" in out  # window bars
    assert "60/60 answered correctly, in order" in out
    assert "sk-demo" not in out


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    for args in ((), ("demo",), ("check",), ("top",), ("chat",), ("bench",)):
        with pytest.raises(SystemExit) as exited:
            main([*args, "--help"])
        assert exited.value.code == 0
        text = capsys.readouterr().out
        assert "usage: pllm" in text
        assert "``" not in text
        assert ".. code-block" not in text
        assert ":class:" not in text
        assert not ESCAPE.search(text)
        if not args:
            assert 'Start with "pllm demo"' in text


def test_check_prints_pools_without_keys(tmp_path: Path) -> None:
    path = tmp_path / "pllm.yaml"
    path.write_text(
        "llm:\n  openai:\n    - {api_key: sk-secret-123, model: gpt-4o-mini, rate_limit: 20}\n"
    )
    done = pllm("check", str(path))
    assert done.returncode == 0, done.stderr
    assert "openai-0" in done.stdout
    assert "rate_limit=20" in done.stdout
    assert "sk-secret-123" not in done.stdout


def test_check_reports_a_bad_config_with_the_field(tmp_path: Path) -> None:
    path = tmp_path / "pllm.yaml"
    path.write_text("llm:\n  openai:\n    - {api_key: k, model: m, rate_limit: -3}\n")
    done = pllm("check", str(path))
    assert done.returncode == 2
    assert "llm.openai[0].rate_limit" in done.stderr
    assert "Traceback" not in done.stderr


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_example_config_is_valid() -> None:
    keys = {
        name: f"sk-example-{name.lower()}"
        for name in (
            "OPENAI_API_KEY",
            "OPENAI_API_KEY_2",
            "DEEPSEEK_API_KEY",
            "ANTHROPIC_API_KEY",
            "GOOGLE_API_KEY",
            "ZHIPU_API_KEY",
        )
    }
    done = python(
        "-m", "langchain_pllm", "check", str(EXAMPLES / "pllm.yaml"), env={**os.environ, **keys}
    )
    assert done.returncode == 0, done.stderr
    for provider in ("openai-main", "openai-backup", "deepseek-0", "anthropic-0", "zhipu-0"):
        assert provider in done.stdout
    assert not any(key in done.stdout for key in keys.values())


def test_the_example_agent_runs_offline() -> None:
    done = python(str(EXAMPLES / "agent.py"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "'name': 'add'" in lines[0]  # the first turn calls the tool
    assert lines[-1].split(":", 1)[1].strip().startswith("result:")  # the last answers with it


def test_the_custom_provider_example_runs_offline() -> None:
    # A fresh interpreter, as a user runs it: its register_vendor does not leak into other tests.
    done = python(str(EXAMPLES / "custom_provider.py"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("invoke: ")
    assert lines[0].endswith("Say hello.")  # the fake server's echo, through the gateway
    # The 429 on team A's key was retried on team B's, unseen by the caller.
    assert "invoke: team-b after 2 attempt(s)" in lines
    assert "stream: echo: Count to three." in lines
    assert "embed: 3 vectors of 8 floats" in lines
    stats = [line for line in lines if line.startswith("stats: ")]
    assert len(stats) == 2
    assert all("vendor=gateway" in line for line in stats)
    assert any(line.startswith("stats: gateway-0") and "resting=30s" in line for line in stats)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_check_ping_reports_each_key_and_fails_when_one_is_unusable(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there
    with FakeOpenAIServer() as openai_srv, FakeAnthropicServer() as anthropic_srv:
        openai_srv.fault_for_key(
            "sk-ping-revoked", Fault(status=401, message="Incorrect API key: sk-ping-revoked")
        )
        openai_srv.fault_for_key("sk-ping-busy", Fault(status=429, retry_after=30))
        anthropic_srv.fault_for_key("sk-ping-nomodel", Fault(status=404))
        o, a = openai_srv.base_url, anthropic_srv.base_url
        path = tmp_path / "pllm.yaml"
        path.write_text(
            "llm:\n"
            "  use: openai, anthropic\n"
            "  openai:\n"
            f"    - {{name: good, api_key: sk-ping-good, model: gpt-4o-mini, api_base: '{o}'}}\n"
            f"    - {{name: revoked, api_key: sk-ping-revoked, model: m, api_base: '{o}'}}\n"
            f"    - {{name: busy, api_key: sk-ping-busy, model: m, api_base: '{o}'}}\n"
            f"    - {{name: away, api_key: sk-ping-away, model: m, api_base: "
            f"'http://127.0.0.1:{dead}/v1'}}\n"
            "  anthropic:\n"
            f"    - {{name: nomodel, api_key: sk-ping-nomodel, model: c, api_base: '{a}'}}\n"
            "embedding:\n"
            "  openai:\n"
            f"    - {{name: vectors, api_key: sk-ping-emb, model: e, api_base: '{o}'}}\n"
        )
        done = pllm("check", str(path), "--ping")
        logged = openai_srv.requests + anthropic_srv.requests
    assert done.returncode == 1, done.stdout + done.stderr
    assert "sk-ping" not in done.stdout + done.stderr  # not even the one the vendor echoed
    assert not ESCAPE.search(done.stdout)
    rows = {}
    for line in done.stdout.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if len(parts) == 7 and parts[0] in ("llm", "embedding"):
            rows[parts[1]] = parts
    assert {name: r[4] for name, r in rows.items()} == {
        "good": "ok",
        "revoked": "auth",
        "busy": "rate-limited",
        "away": "unreachable",
        "nomodel": "not-found",
        "vectors": "ok",
    }
    assert re.fullmatch(r"\d+ ms", rows["good"][5])
    assert rows["revoked"][6].startswith("ModelAuthenticationError")
    assert "3 of 6 keys usable; unusable: revoked, away, nomodel" in done.stdout
    # One request per reachable key, each tried once; the embeddings key on its own path.
    assert sorted(r.api_key or "" for r in logged) == [
        "sk-ping-busy",
        "sk-ping-emb",
        "sk-ping-good",
        "sk-ping-nomodel",
        "sk-ping-revoked",
    ]
    assert [r.path for r in logged if r.api_key == "sk-ping-emb"] == ["/v1/embeddings"]


def test_check_ping_exits_0_when_every_key_works(tmp_path: Path) -> None:
    with FakeOpenAIServer() as srv:
        path = tmp_path / "pllm.yaml"
        path.write_text(
            "llm:\n  openai:\n"
            f"    - {{api_key: sk-fine-1, model: m, api_base: '{srv.base_url}'}}\n"
            f"    - {{api_key: sk-fine-2, model: m, api_base: '{srv.base_url}'}}\n"
        )
        done = pllm("check", str(path), "--ping")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 of 2 keys usable" in done.stdout


def test_top_once_prints_one_plain_frame_of_both_pools_without_keys(tmp_path: Path) -> None:
    path = tmp_path / "pllm.yaml"
    path.write_text(
        "llm:\n  openai:\n"
        "    - {name: chat-key, api_key: sk-top-secret-1, model: gpt-4o-mini, rate_limit: 20}\n"
        "embedding:\n  openai:\n"
        "    - {api_key: sk-top-secret-2, model: text-embedding-3-small, tpm: 1000}\n"
    )
    done = pllm("top", str(path), "--once")
    assert done.returncode == 0, done.stderr
    assert "sk-top-secret" not in done.stdout
    assert not ESCAPE.search(done.stdout)
    assert "state memory (this process only" in done.stdout
    assert "chat (llm:)" in done.stdout
    assert "embeddings (embedding:)" in done.stdout
    assert re.search(r"\| chat-key +\| openai +\| gpt-4o-mini +\| closed +\| +0 \|", done.stdout)
    assert ".......... 0/20" in done.stdout
    assert ".......... 0/1,000" in done.stdout  # the token window of the tpm key


def test_top_reports_a_bad_config() -> None:
    done = pllm("top", "/nonexistent/pllm.yaml", "--once")
    assert done.returncode == 2
    assert "config error" in done.stderr


def test_check_ping_reports_a_spent_key_as_spent_and_fails(tmp_path: Path) -> None:
    with FakeOpenAIServer() as srv:
        srv.spend_key("sk-ping-spent")  # OpenAI: 429 insufficient_quota, no Retry-After
        path = tmp_path / "pllm.yaml"
        path.write_text(
            "llm:\n  openai:\n"
            f"    - {{name: good, api_key: sk-ping-good, model: m, api_base: '{srv.base_url}'}}\n"
            f"    - {{name: spent, api_key: sk-ping-spent, model: m, api_base: '{srv.base_url}'}}\n"
        )
        done = pllm("check", str(path), "--ping")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "sk-ping" not in done.stdout + done.stderr
    kinds = {}
    for line in done.stdout.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if len(parts) == 7 and parts[0] == "llm":
            kinds[parts[1]] = parts[4]
    assert kinds == {"good": "ok", "spent": "spent"}
    assert "1 of 2 keys usable; unusable: spent" in done.stdout


def test_top_on_a_terminal_says_its_numbers_are_local_while_redis_is_away(tmp_path: Path) -> None:
    from tests.redis_fixture import RedisServer

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: run scripts/setup.sh")
    redis_server = RedisServer().start()
    (tmp_path / "pllm.yaml").write_text(
        "llm:\n  openai:\n    - {name: watched, api_key: sk-top-away, model: m, rate_limit: 5}\n"
        f"balancer:\n  state: '{redis_server.url}'\n"
    )
    fleet = "(fleet-wide: every process sharing it)"
    away = re.compile(r"\(this process only: Redis away since (\d\d:\d\d:\d\d)\)")
    term = Terminal("top", "--interval", "0.2", cwd=tmp_path)  # ./pllm.yaml: one header line
    try:
        assert fleet in term.read(until=fleet, timeout=60), term.out
        redis_server.stop()
        while_away = term.read(until="Redis away", timeout=30)
        while_away += term.read(until="Redis away", timeout=30)  # and the next frame
        since = away.findall(while_away)
        assert len(since) >= 2, while_away
        assert len(set(since)) == 1  # the time it went away, not each frame's
        assert fleet not in while_away[while_away.index("Redis away") :]
        redis_server.start()
        assert fleet in term.read(until=fleet, timeout=30), term.out  # back: fleet-wide again
        term.proc.send_signal(signal.SIGINT)  # Ctrl-C ends the live view
        assert term.close() == 0, term.out
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
        term.close(timeout=5)
        redis_server.close()
    assert "watched" in term.out
    assert "sk-top-away" not in term.out
