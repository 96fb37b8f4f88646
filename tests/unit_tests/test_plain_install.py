"""What ``pip install langchain-pllm`` brings is enough for the features that need no extra.

A test environment holds more than a user's (pytest, the test group's packages), so a module
that only the test group installs would pass every other test. Here a child interpreter may
import only the distributions that the ``dependencies`` of pyproject.toml pull in, directly or
through their own requirements, as a plain install would have them.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]

# Run in the child: refuse any third-party top-level module whose distributions are all
# outside the plain install, as if it were not installed, then use the feature.
_CHILD = r"""
import importlib.abc, importlib.metadata, json, os, sys
from packaging.utils import canonicalize_name

allowed = set(json.loads(os.environ["PLLM_ALLOWED_DISTRIBUTIONS"]))
owners = importlib.metadata.packages_distributions()

class OnlyThePlainInstall(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        dists = {canonicalize_name(d) for d in owners.get(top, ())}
        if dists and not dists & allowed:
            raise ModuleNotFoundError(f"No module named {name!r} (not in a plain install)")
        return None

sys.meta_path.insert(0, OnlyThePlainInstall())
try:
    import pytest  # noqa: F401  (the guard must refuse what only the tests install)
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the guard let pytest in")

from langchain_pllm import JsonValidator

validator = JsonValidator({"type": "object", "required": ["name"]})
assert validator.parse('Sure: {"name": "Ada"}') == {"name": "Ada"}
print(validator.validate('{"nom": "Ada"}').error)
"""


def _plain_install() -> set[str]:
    """The distributions a plain install of the project brings: its dependencies, transitively."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.10 has no tomllib (3.11+)")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = {canonicalize_name(project["name"])}
    pending = [Requirement(spec) for spec in project["dependencies"]]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra's or another platform's requirement
        found.add(name)
        pending.extend(Requirement(spec) for spec in importlib.metadata.requires(name) or ())
    return found


def test_json_schema_dict_works_on_a_plain_install() -> None:
    allowed = _plain_install()
    assert "jsonschema" in allowed, "JsonValidator(dict) needs jsonschema in `dependencies`"
    env = {
        **os.environ,
        "PLLM_ALLOWED_DISTRIBUTIONS": json.dumps(sorted(allowed)),
        "PYTHONPATH": str(ROOT),
    }
    child = subprocess.run(
        [sys.executable, "-c", _CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == (
        "the answer does not match the schema: $.name: required property is missing"
    )
