"""docs/configuration.md is what scripts/config_reference.py makes of the config models, now."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from langchain_pllm.config.models import BalancerConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "config_reference.py"


@pytest.fixture(scope="module")
def reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_reference", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_config_field_has_a_description(reference: ModuleType) -> None:
    missing = reference.undocumented()
    assert not missing, (
        f"config fields without a description: {', '.join(missing)}; write an attribute "
        f"docstring under each in langchain_pllm/config/models.py, then run: {reference.COMMAND}"
    )


def test_the_reference_is_current(reference: ModuleType) -> None:
    written = reference.OUTPUT.read_text(encoding="utf-8") if reference.OUTPUT.exists() else ""
    assert written == reference.render(), (
        f"docs/configuration.md is stale (a config field changed); run: {reference.COMMAND}"
    )


def test_every_field_of_every_section_is_listed(reference: ModuleType) -> None:
    text = reference.render()
    for model, _, _ in reference.SECTIONS:
        for name in model.model_fields:
            assert f"| `{name}` |" in text
    assert '| `retry_policy` | "fixed" \\| "infinite" \\| "retry_once" | "fixed" |' in text
    assert "| `api_key` | str (secret) | required |" in text
    assert "| `request_timeout` | float \\| None | None |" in text


def test_an_undocumented_field_fails_the_check(
    reference: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Undocumented(BalancerConfig):
        shiny: int = 1

    monkeypatch.setattr(
        reference, "SECTIONS", (*reference.SECTIONS, (Undocumented, "Extra", "A test model."))
    )
    assert reference.undocumented() == ["Undocumented.shiny"]
    assert reference.main([]) == 1


def test_check_mode_names_the_command_to_run(
    tmp_path: Path, reference: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert ok.returncode == 0, ok.stderr
    # A stale copy: the same check, pointed at another file, fails and says what to run.
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n", encoding="utf-8")
    reference.OUTPUT = stale
    try:
        assert reference.main(["--check"]) == 1
        assert "stale; run: python scripts/config_reference.py" in capsys.readouterr().err
    finally:
        reference.OUTPUT = ROOT / "docs" / "configuration.md"
