"""The notebooks in ``notebooks/`` run top to bottom in a real Jupyter kernel.

A kernel runs an event loop, so this is also where sync ``invoke`` proves it never calls
``asyncio.run``, and top-level ``await model.ainvoke`` works on the kernel's own loop.

Each notebook has its own kernel, and the kernels run side by side: most of a notebook's time
is its kernel starting and importing, which two at once do in about the time of one.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("*.ipynb"))
SIDE_BY_SIDE = 3  # kernels at once: past the cores, one more fills their waits


def execute(path: Path) -> nbformat.NotebookNode | BaseException:
    """Run ``path`` in a fresh kernel; the executed notebook, or what it raised."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    try:
        asyncio.run(client.async_execute())  # this thread's own loop
    except BaseException as e:  # reported by the test of this notebook
        return e
    return nb


@pytest.fixture(scope="module")
def executed() -> dict[Path, nbformat.NotebookNode | BaseException]:
    with ThreadPoolExecutor(SIDE_BY_SIDE) as pool:
        return dict(zip(NOTEBOOKS, pool.map(execute, NOTEBOOKS), strict=True))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(
    path: Path, executed: dict[Path, nbformat.NotebookNode | BaseException]
) -> None:
    nb = executed[path]
    if isinstance(nb, BaseException):
        raise nb
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
