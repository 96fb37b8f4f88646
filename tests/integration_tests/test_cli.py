"""The ``pllm`` command, run as a user runs it: a subprocess, its output and exit code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


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
