"""``examples/custom_provider.py`` runs offline: a registered httpx provider behind a YAML pool.

It runs in a fresh interpreter, as a user would run it, so the registration it makes does not
leak into the other tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_provider.py"


def test_the_custom_provider_example_runs_offline() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
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
