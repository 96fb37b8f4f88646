"""One docstring style across the package: reST literals (double backticks), never Markdown's.

Sphinx renders a single-backticked name as italic "interpreted text", so a Markdown literal
reads wrong beside the reST ones. Every string statement counts: module, class and function
docstrings and the attribute docstrings under fields.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import langchain_pllm

PACKAGE_DIR = Path(langchain_pllm.__file__).parent
_MARKDOWN_LITERAL = re.compile(r"(?<!`)`[^`\n]+`(?!`)")


def markdown_literals(source: str) -> list[tuple[int, str]]:
    """Each single-backticked span in the string statements of ``source``, with its line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            for offset, line in enumerate(node.value.value.splitlines()):
                found += [
                    (node.lineno + offset, m.group()) for m in _MARKDOWN_LITERAL.finditer(line)
                ]
    return found


def test_docstrings_use_rest_literals_only() -> None:
    found = {
        f"{path.relative_to(PACKAGE_DIR)}:{line}": span
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        for line, span in markdown_literals(path.read_text())
    }
    assert found == {}


def test_the_checker_catches_a_markdown_literal() -> None:
    source = 'class A:\n    """Uses ``ok`` and `wrong`."""\n\n    x: int = 1\n    """`also`."""\n'
    assert [span for _, span in markdown_literals(source)] == ["`wrong`", "`also`"]
    assert markdown_literals('"""Only ``reST``; a code fence ``` stays."""') == []
