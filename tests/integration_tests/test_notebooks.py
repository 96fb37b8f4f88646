"""The notebooks in ``notebooks/`` run top to bottom in a real Jupyter kernel.

A kernel runs an event loop, so this is also where sync ``invoke`` proves it never calls
``asyncio.run``, and top-level ``await model.ainvoke`` works on the kernel's own loop.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    assert "Traceback" not in text
    if any("stats_table()" in cell.source for cell in nb.cells if cell.cell_type == "code"):
        # Jupyter draws the pool's table as HTML.
        pages = [str(o.get("data", {}).get("text/html", "")) for o in outputs]
        assert any('class="pllm-stats"' in page for page in pages)


def test_there_is_a_notebook() -> None:
    assert NOTEBOOKS
