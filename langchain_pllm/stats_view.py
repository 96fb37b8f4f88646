"""The pool's stats as a table people read: in a terminal (``rich``), in Jupyter (HTML), in logs.

``StatsTable`` draws what ``get_stats()`` returns and nothing else, so it shows exactly what the
balancer reports: the stats carry no key, and neither does the table. Fields are read by name
and a missing one is drawn as ``-``; a column that only some pools have (a tier, a cost,
validation failures) appears when some provider reports it, so fields a later version adds show
up without a change here, and older stats still draw. Windows come from a ``windows`` list when
the stats give one (``{"name", "used", "limit"}`` each), else from the request window
(``window_used`` of ``rate_limit``) and the token window (``tokens_in_window`` of ``tpm``).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from io import StringIO
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions
from rich.table import Table
from rich.text import Text

from langchain_pllm.terminal import console_for

__all__ = ["StatsTable", "Window", "windows_of"]

Row = Mapping[str, Any]

STATE_STYLES = {
    "closed": "green",
    "half_open": "yellow",
    "open": "bold red",
    "exhausted": "magenta",
    "budget": "magenta",
}
_HTML_COLOURS = {
    "green": "#2e7d32",
    "yellow": "#b28704",
    "bold red": "#c62828",
    "magenta": "#8e24aa",
}
BAR_WIDTH = 10
# Columns left out first when a terminal is too narrow for the whole table.
_DROP_ORDER = (
    "model",
    "vendor",
    "invalid",
    "cost",
    "latency p50/p95",
    "req/s",
    "tokens",
    "resting",
    "requests",
)


@dataclass(frozen=True)
class Window:
    """One limit of a key as the table draws it: what is used of what is allowed."""

    name: str
    used: float | None
    limit: float | None

    @property
    def fraction(self) -> float | None:
        """Share of the limit in use (``None`` when either number is unknown)."""
        if self.used is None or not self.limit:
            return None
        return max(0.0, min(1.0, self.used / self.limit))


def windows_of(row: Row) -> list[Window]:
    """The windows of one provider's stats, in the order they are drawn."""
    listed = row.get("windows")
    if isinstance(listed, list):
        return [
            Window(str(w.get("name") or w.get("kind") or "?"), w.get("used"), w.get("limit"))
            for w in listed
            if isinstance(w, Mapping)
        ]
    out = [Window("req/window", row.get("window_used"), row.get("rate_limit"))]
    if row.get("tpm"):
        out.append(Window("tok/window", row.get("tokens_in_window"), row.get("tpm")))
    return out


def _fmt(value: Any) -> str:
    """A stats value as text: unknown is ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:.4g}"
    return str(value)


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float) or value <= 0:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _tokens(row: Row) -> str:
    total = _fmt(row.get("total_tokens"))
    inp, out = row.get("input_tokens"), row.get("output_tokens")
    if inp is None and out is None:
        return total
    return f"{total} (in {_fmt(inp)} / out {_fmt(out)})"


def _rate(row: Row) -> str:
    rate = row.get("requests_per_second")
    return "-" if not isinstance(rate, int | float) else f"{rate:.2f}"


def _latency(row: Row) -> str:
    p50, p95 = row.get("latency_p50"), row.get("latency_p95")
    if not isinstance(p50, int | float) or not isinstance(p95, int | float):
        return "-"
    return f"{_millis(p50)} / {_millis(p95)}"


def _millis(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.1f}s"


def _level(fraction: float) -> str:
    """How full a window is, as a style name shared by the terminal and HTML."""
    return "green" if fraction < 0.7 else "yellow" if fraction < 1.0 else "bold red"


@dataclass(frozen=True)
class _Column:
    header: str
    text: Callable[[Row], str]
    left: bool = False
    shown: Callable[[list[Row]], bool] | None = None  # None: always


def _any(
    field: str, test: Callable[[Any], bool] = lambda v: v is not None
) -> Callable[[list[Row]], bool]:
    """Whether some row has ``field`` (by default: not ``None``)."""
    return lambda rows: any(test(r.get(field)) for r in rows)


_COLUMNS = (
    _Column("provider", lambda r: _fmt(r.get("provider")), left=True),
    _Column("vendor", lambda r: _fmt(r.get("vendor")), left=True),
    _Column("model", lambda r: _fmt(r.get("model")), left=True),
    # Every key has a tier (1 by default): the column says something only when one differs.
    _Column(
        "tier", lambda r: _fmt(r.get("tier")), shown=_any("tier", lambda v: v not in (None, 1))
    ),
    _Column("state", lambda r: _fmt(r.get("state")), left=True),
    _Column("in flight", lambda r: _fmt(r.get("active_requests"))),
    _Column("requests", lambda r: _fmt(r.get("total_requests"))),
    _Column("req/s", _rate, shown=_any("requests_per_second")),
    _Column("latency p50/p95", _latency, shown=_any("latency_p50")),
    # Here come the windows, one column per window name (see StatsTable.windows).
    _Column("tokens", _tokens),
    _Column("errors", lambda r: _fmt(r.get("error_count"))),
    _Column(
        "invalid",
        lambda r: _fmt(r.get("validation_failures")),
        shown=_any("validation_failures", lambda v: bool(v)),
    ),
    _Column("cost", lambda r: _fmt(r.get("cost")), shown=_any("cost")),
    _Column("resting", lambda r: _seconds(r.get("resting_for")), shown=_any("resting_for")),
)


class StatsTable:
    """One pool's ``get_stats()`` as a table.

    ``rich`` prints it (``Console().print(table)``, or inside a ``Live``); Jupyter shows its
    HTML (``_repr_html_``); ``str(table)`` is the same table as plain text for logs. It is a
    snapshot: build a new one to see newer stats.

    Args:
        stats: What ``get_stats()`` returned.
        title: A caption above the table (e.g. which pool).

    Example:
        .. code-block:: python

            from rich import print
            print(model.stats_table())
    """

    def __init__(self, stats: Mapping[str, Row], title: str | None = None) -> None:
        self.rows: list[Row] = [{"provider": pid, **row} for pid, row in stats.items()]
        self.title = title
        self.windows = [{w.name: w for w in windows_of(row)} for row in self.rows]
        """Each row's windows by name."""
        names = dict.fromkeys(name for row in self.windows for name in row)
        shown = [c for c in _COLUMNS if c.shown is None or c.shown(self.rows)]
        cut = next(i for i, c in enumerate(shown) if c.header == "requests") + 1
        self.headers: list[str] = [c.header for c in shown[:cut]]
        self.headers += list(names)
        self.headers += [c.header for c in shown[cut:]]
        """Column titles, windows included, in the order drawn."""
        self._columns = {c.header: c for c in shown}

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"<StatsTable of {len(self.rows)} providers>"

    def _cells(self, i: int) -> Iterator[tuple[str, _Column | Window | None]]:
        """Each cell of row ``i``: its header and what draws it (a window, a column, nothing)."""
        for header in self.headers:
            column = self._columns.get(header)
            yield header, column if column is not None else self.windows[i].get(header)

    # Terminal and plain text -----------------------------------------------------------------

    def table(self, plain: bool = False, drop: tuple[str, ...] = ()) -> Table:
        """The ``rich`` table.

        Args:
            plain: Draw in ASCII without colours (logs, pipes).
            drop: Headers of columns to leave out.

        Returns:
            The table.
        """
        table = Table(
            box=box.ASCII if plain else box.SIMPLE_HEAD,
            header_style="" if plain else "bold",
        )
        headers = [h for h in self.headers if h not in drop]
        for header in headers:
            column = self._columns.get(header)
            left = column is None or column.left
            table.add_column(header, justify="left" if left else "right", no_wrap=True)
        for i, row in enumerate(self.rows):
            cells: list[Text | str] = []
            for header, what in self._cells(i):
                if header in drop:
                    continue
                if isinstance(what, Window):
                    cells.append(_bar_text(what, plain))
                elif what is None:
                    cells.append("-")
                elif header == "state" and not plain:
                    state = str(row.get("state") or "-")
                    cells.append(Text(state, style=STATE_STYLES.get(state, "")))
                else:  # Text, not str: a name like "key[/]" is not rich markup
                    cells.append(Text(what.text(row)))
            table.add_row(*cells)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Text | Table]:
        # A console without colours writes to a pipe or a log: ASCII there, so logs stay text.
        plain = console.color_system is None or options.ascii_only
        if self.title:
            yield Text(self.title, style="" if plain else "bold")
        # A narrow terminal squeezes every column into ellipses: rather leave out the columns
        # a reader needs least, one by one, until the rest fits.
        table = self.table(plain)
        dropped: tuple[str, ...] = ()
        for header in _DROP_ORDER:
            if table.__rich_measure__(console, options).maximum <= options.max_width:
                break
            if header in self.headers:
                dropped += (header,)
                table = self.table(plain, dropped)
        yield table

    def __str__(self) -> str:
        buffer = StringIO()
        console_for(buffer, plain=True).print(self)
        return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"

    # Jupyter ---------------------------------------------------------------------------------

    def _repr_html_(self) -> str:
        def align(header: str) -> str:
            column = self._columns.get(header)
            return "left" if column is None or column.left else "right"

        head = "".join(
            f'<th style="text-align:{align(h)}">{html.escape(h)}</th>' for h in self.headers
        )
        body = []
        for i, row in enumerate(self.rows):
            cells = []
            for header, what in self._cells(i):
                if isinstance(what, Window):
                    content = _bar_html(what)
                elif what is None:
                    content = "-"
                elif header == "state":
                    state = str(row.get("state") or "-")
                    colour = _HTML_COLOURS.get(STATE_STYLES.get(state, ""), "inherit")
                    content = f'<span style="color:{colour}">{html.escape(state)}</span>'
                else:
                    content = html.escape(what.text(row))
                cells.append(f'<td style="text-align:{align(header)}">{content}</td>')
            body.append(f"<tr>{''.join(cells)}</tr>")
        caption = (
            f'<caption style="text-align:left">{html.escape(self.title)}</caption>'
            if self.title
            else ""
        )
        return (
            f'<table class="pllm-stats">{caption}<thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>"
        )


def _used_of(w: Window) -> str:
    return f"{_fmt(w.used)}/{_fmt(w.limit)}"


def _bar_text(w: Window, plain: bool) -> Text:
    full, empty, unknown = ("#", ".", ".") if plain else ("█", "░", "·")
    text = Text()
    fraction = w.fraction
    if fraction is None:
        text.append(unknown * BAR_WIDTH, style="" if plain else "dim")
    else:
        filled = round(fraction * BAR_WIDTH)
        text.append(full * filled, style="" if plain else _level(fraction))
        text.append(empty * (BAR_WIDTH - filled), style="" if plain else "dim")
    text.append(" " + _used_of(w))
    return text


def _bar_html(w: Window) -> str:
    fraction = w.fraction
    bar = ""
    if fraction is not None:
        colour = _HTML_COLOURS[_level(fraction)]
        bar = f'<div style="width:{fraction * 100:.0f}%;height:100%;background:{colour}"></div>'
    return (
        '<span style="white-space:nowrap">'
        '<div style="display:inline-block;width:80px;height:0.7em;background:#e0e0e0;'
        f'vertical-align:middle">{bar}</div> {html.escape(_used_of(w))}</span>'
    )
