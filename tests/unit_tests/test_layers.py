"""Imports run one way (DESIGN.md section 1), checked the way ``import-linter`` layer contracts are.

Every module of ``langchain_pllm`` is read with ``ast`` (nothing is imported) and each of its
imports of ``langchain_pllm.*`` is checked against ``LAYERS``: a module may import modules of
its own layer and of any layer of lower rank; layers that share a rank are peers and import
nothing from each other (providers and state know nothing of each other; the fake vendor
servers of ``testing/`` stand beside them and may use only the layers below).

Which imports count: all of them. Imports at the top, inside functions (a lazy import is still
a dependency, only a later one) and under ``if TYPE_CHECKING:``. A ``TYPE_CHECKING`` import
against the order means the module's signatures name a type of a higher layer: the dependency
is real and only hidden from the interpreter, which is how the cycles this test exists to
prevent stay unnoticed. None needs an exception today.

An import names a module: ``from langchain_pllm.balancer.picker import Member`` depends on
``balancer.picker``, ``from langchain_pllm.balancer import picker`` too (a submodule), and
``from langchain_pllm.balancer import Balancer`` on the package ``balancer``. A package's
``__init__`` that Python runs on the way is not counted again: it is checked as its own module.

Within one layer imports may go either way, but never round: the same imports may form no
cycle (``chat_models`` and ``validation`` once imported each other, one of them lazily).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import langchain_pllm

# Module or package -> (rank, layer). The longest dotted prefix that names an entry classifies
# a module (the bare ``langchain_pllm`` entry is the package's ``__init__`` only). A module that
# no entry classifies fails the test: place every new module here.
LAYERS: dict[str, tuple[int, str]] = {
    # Faces: the LangChain classes, what only they share, the command line.
    "langchain_pllm": (4, "faces"),
    "langchain_pllm.__main__": (4, "faces"),
    "langchain_pllm.chat_models": (4, "faces"),
    "langchain_pllm.chat_request": (4, "faces"),
    "langchain_pllm.chat_reply": (4, "faces"),
    "langchain_pllm.embeddings": (4, "faces"),
    "langchain_pllm.validation": (4, "faces"),
    "langchain_pllm.pool_face": (4, "faces"),
    "langchain_pllm.preflight": (4, "faces"),
    "langchain_pllm.conversation": (4, "faces"),
    "langchain_pllm.spend": (4, "faces"),
    "langchain_pllm.cli": (4, "faces"),
    "langchain_pllm.demo": (4, "faces"),
    "langchain_pllm.ping": (4, "faces"),
    "langchain_pllm.progress": (4, "faces"),
    # Pick, wait, retry, breakers: vendor- and face-blind.
    "langchain_pllm.balancer": (3, "balancer"),
    # Peers: one knows the vendors' SDKs, one where windows and breakers are kept, one the
    # vendors' wire formats (fake servers, which know nothing of the pool).
    "langchain_pllm.providers": (2, "providers"),
    "langchain_pllm.state": (2, "state"),
    "langchain_pllm.testing": (2, "testing"),
    # Peers: the config schema and its reading; the output validators and their helpers.
    "langchain_pllm.config": (1, "config"),
    "langchain_pllm.output_parsers": (1, "output_parsers"),
    "langchain_pllm.json_search": (1, "output_parsers"),
    "langchain_pllm.schema_check": (1, "output_parsers"),
    # The ground every layer stands on.
    "langchain_pllm.clock": (0, "base"),
    "langchain_pllm.exceptions": (0, "base"),
    "langchain_pllm.urls": (0, "base"),
    # Drawing a stats dict: knows no pool, only the terminal it draws on.
    "langchain_pllm.stats_view": (0, "base"),
    "langchain_pllm.terminal": (0, "base"),
    "langchain_pllm._version": (0, "base"),
}

ROOT = "langchain_pllm"
PACKAGE_DIR = Path(langchain_pllm.__file__).parent


def layer_of(module: str) -> tuple[int, str] | None:
    """The ``LAYERS`` entry classifying ``module``, or ``None``."""
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        entry = LAYERS.get(".".join(parts[:end]))
        if entry is not None:
            return entry
    return LAYERS.get(module) if module == ROOT else None


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    out: dict[str, Path] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = [ROOT, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = package_modules()


def _imports(module: str, tree: ast.AST, is_package: bool) -> Iterator[tuple[str, int]]:
    """The ``langchain_pllm`` modules ``tree`` imports, anywhere in it, with their lines."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield (submodule if submodule in MODULES else base), node.lineno


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every import of ``source`` (the text of ``module``) that runs against ``LAYERS``."""
    own = layer_of(module)
    if own is None:
        return [f"{module} is in no layer: add it to LAYERS"]
    out = []
    for target, line in _imports(module, ast.parse(source), is_package):
        if target != ROOT and not target.startswith(ROOT + "."):
            continue
        theirs = layer_of(target)
        if theirs is None:
            out.append(f"{module}:{line} imports {target}, which is in no layer")
        elif theirs[1] != own[1] and theirs[0] >= own[0]:
            out.append(
                f"{module}:{line} ({own[1]}, rank {own[0]}) imports {target} "
                f"({theirs[1]}, rank {theirs[0]})"
            )
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (every import, as ``violations`` counts)."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        found = _imports(module, tree, path.name == "__init__.py")
        graph[module] = {t for t, _ in found if t in MODULES and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph``: its modules in order, the first repeated at the end; or ``None``."""
    on_path: dict[str, bool] = {}  # visited modules: True while on the current path
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        on_path[node] = True
        path.append(node)
        for step in sorted(graph.get(node, ())):
            if on_path.get(step):
                return [*path[path.index(step) :], step]
            if step not in on_path and (cycle := visit(step)):
                return cycle
        path.pop()
        on_path[node] = False
        return None

    for start in sorted(graph):
        if start not in on_path and (cycle := visit(start)):
            return cycle
    return None


def test_every_module_is_in_a_layer() -> None:
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_imports_run_one_way() -> None:
    found = []
    for module, path in MODULES.items():
        found += violations(module, path.read_text(), path.name == "__init__.py")
    assert found == []


def test_no_import_cycles() -> None:
    assert find_cycle(import_graph()) is None


# The checker itself: each rule must be able to fail.


@pytest.mark.parametrize(
    ("module", "source"),
    [
        # Upward: state, providers and the balancer know no face; state knows no balancer.
        ("langchain_pllm.state.memory", "from langchain_pllm.balancer import Balancer"),
        ("langchain_pllm.providers.openai", "import langchain_pllm.chat_models"),
        ("langchain_pllm.balancer.picker", "from langchain_pllm import BalancedChatModel"),
        ("langchain_pllm.config", "from langchain_pllm.state import state_for"),
        # Peers.
        ("langchain_pllm.providers.base", "from langchain_pllm.state.base import Outcome"),
        ("langchain_pllm.state.redis", "from langchain_pllm.providers import build_provider"),
        ("langchain_pllm.testing.server", "from langchain_pllm.providers.errors import x"),
        ("langchain_pllm.output_parsers", "from langchain_pllm.config import load_config"),
        # The fake servers use nothing of the pool.
        ("langchain_pllm.testing.openai_server", "from langchain_pllm.balancer import picker"),
        # Hidden places still count.
        (
            "langchain_pllm.state.base",
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from langchain_pllm.balancer.picker import Member\n",
        ),
        ("langchain_pllm.clock", "def f():\n    from langchain_pllm.config import x\n"),
        # Relative imports are resolved (ruff bans them, the checker does not rely on it).
        ("langchain_pllm.state.memory", "from ..balancer import Balancer"),
        ("langchain_pllm.exceptions", "from . import config"),
    ],
)
def test_the_checker_catches(module: str, source: str) -> None:
    assert len(violations(module, source)) == 1


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("langchain_pllm.chat_models", "from langchain_pllm.balancer import Balancer"),
        ("langchain_pllm.chat_models", "from langchain_pllm.validation import x"),
        ("langchain_pllm.balancer.balancer", "from langchain_pllm.state.base import Outcome"),
        ("langchain_pllm.balancer", "from langchain_pllm.balancer.picker import Picker"),
        ("langchain_pllm.state.redis", "from langchain_pllm.clock import Clock"),
        ("langchain_pllm.testing.server", "from langchain_pllm.exceptions import x"),
        ("langchain_pllm.config", "from . import exceptions"),
        ("langchain_pllm.state.memory", "import json\nfrom langchain_core import messages"),
    ],
)
def test_the_checker_allows(module: str, source: str) -> None:
    assert violations(module, source) == []


def test_an_unplaced_module_is_reported() -> None:
    assert violations("langchain_pllm.somewhere_new", "") != []
    assert violations("langchain_pllm.cli", "from langchain_pllm.somewhere_new import x") != []


def test_a_cycle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": set(), "d": {"b"}}
    assert find_cycle(graph) == ["b", "d", "b"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
