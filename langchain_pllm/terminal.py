"""Where our views are drawn: a terminal (colours, redraws), a pipe or log (bare text), Jupyter.

Every view of the package (the stats table, progress, ``pllm demo`` and ``pllm top``) asks
here how to write, so the rule is one: a terminal gets ``rich`` with colours, anything else
(a pipe, CI, a file) gets plain lines without a single escape code, whatever ``FORCE_COLOR``
says, because such output ends up in logs that are read as text.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console

__all__ = ["PLAIN_WIDTH", "console_for", "in_jupyter", "is_terminal"]

PLAIN_WIDTH = 200
"""Columns a plain console lays tables out in: wide enough that no row of ours wraps."""


def is_terminal(file: TextIO) -> bool:
    """Whether ``file`` is an interactive terminal."""
    isatty = getattr(file, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # closed, or a stream that cannot say
        return False


def in_jupyter() -> bool:
    """Whether this code runs in a Jupyter kernel (where output is HTML and widgets)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def console_for(file: TextIO | None = None, *, plain: bool | None = None) -> Console:
    """A ``rich`` console writing to ``file`` (stdout by default).

    Args:
        file: Where to write.
        plain: Force bare text (``True``) or terminal output (``False``); ``None`` decides by
            whether ``file`` is a terminal.

    Returns:
        The console; a plain one has no colour system, so it writes no escape codes.
    """
    out = file if file is not None else sys.stdout
    if plain is None:
        plain = not is_terminal(out)
    if plain:
        return Console(
            file=out,
            force_terminal=False,
            force_jupyter=False,
            color_system=None,
            no_color=True,
            highlight=False,
            emoji=False,
            width=PLAIN_WIDTH,
            soft_wrap=False,
        )
    return Console(file=out, force_terminal=True, force_jupyter=False, highlight=False, emoji=False)
