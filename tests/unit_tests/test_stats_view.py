"""``StatsTable``: the stats dict drawn for a terminal, for Jupyter and for logs."""

from __future__ import annotations

import re
from io import StringIO
from typing import Any

from rich.console import Console

from langchain_pllm import BalancedChatModel, BalancedEmbeddings
from langchain_pllm.stats_view import StatsTable, windows_of
from langchain_pllm.terminal import console_for

ESCAPE = re.compile(r"\x1b\[")


def row(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "vendor": "openai",
        "model": "gpt-4o-mini",
        "total_requests": 12,
        "total_tokens": 3400,
        "error_count": 1,
        "active_requests": 2,
        "state": "closed",
        "window_used": 7,
        "rate_limit": 10,
        "tpm": None,
        "tokens_in_window": 0,
        "validation_failures": 0,
        "resting_for": 0.0,
    }
    base.update(fields)
    return base


def cells(text: str, provider: str) -> list[str]:
    """The cells of one provider's row in a plain (ASCII) table."""
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if parts and parts[0] == provider:
            return parts
    raise AssertionError(f"no row for {provider!r} in:\n{text}")


def header(text: str) -> list[str]:
    return cells(text, "provider")


def test_plain_text_is_ascii_without_escape_codes_and_shows_every_field() -> None:
    table = StatsTable(
        {"gpt": row(), "claude": row(vendor="anthropic", state="open", resting_for=4.25)},
        title="chat",
    )
    text = str(table)
    assert not ESCAPE.search(text)
    assert text.isascii()
    assert text.splitlines()[0] == "chat"
    assert header(text) == [
        "provider",
        "vendor",
        "model",
        "state",
        "in flight",
        "requests",
        "req/window",
        "tokens",
        "errors",
        "resting",
    ]
    gpt = dict(zip(header(text), cells(text, "gpt"), strict=True))
    assert gpt["in flight"] == "2"
    assert gpt["requests"] == "12"
    assert gpt["req/window"] == "#######... 7/10"
    assert gpt["tokens"] == "3,400"
    assert gpt["resting"] == "-"
    claude = dict(zip(header(text), cells(text, "claude"), strict=True))
    assert claude["state"] == "open"
    assert claude["resting"] == "4.2s"


def test_missing_fields_are_dashes_and_new_fields_appear_when_present() -> None:
    old = {"k": {"vendor": "openai", "state": "closed"}}  # a stats dict of fewer fields
    text = str(StatsTable(old))
    k = dict(zip(header(text), cells(text, "k"), strict=True))
    assert k["model"] == k["in flight"] == k["tokens"] == k["errors"] == "-"
    assert k["req/window"] == ".......... -/-"
    assert "tier" not in header(text)
    assert "cost" not in header(text)
    assert "resting" not in header(text)

    future = {
        "a": row(
            tier=1,
            cost=0.0123,
            input_tokens=3000,
            output_tokens=400,
            validation_failures=2,
            windows=[
                {"name": "requests/minute", "used": 15, "limit": 15},
                {"name": "requests/day", "used": 300, "limit": 1500},
            ],
            state="exhausted",
        ),
        "b": row(tier=2, windows=[{"name": "requests/minute", "used": 3, "limit": None}]),
    }
    text = str(StatsTable(future))
    heads = header(text)
    assert heads.index("tier") < heads.index("state")
    assert "requests/minute" in heads
    assert "requests/day" in heads
    assert "req/window" not in heads  # a listed window replaces the derived one
    a = dict(zip(heads, cells(text, "a"), strict=True))
    assert a["tier"] == "1"
    assert a["state"] == "exhausted"
    assert a["requests/minute"] == "########## 15/15"
    assert a["requests/day"] == "##........ 300/1,500"
    assert a["tokens"] == "3,400 (in 3,000 / out 400)"
    assert a["invalid"] == "2"
    assert a["cost"] == "0.0123"
    b = dict(zip(heads, cells(text, "b"), strict=True))
    assert b["requests/day"] == "-"  # a window only another key has
    assert b["requests/minute"] == ".......... 3/-"
    assert b["cost"] == "-"


def test_token_window_is_drawn_when_tpm_is_set() -> None:
    windows = windows_of(row(tpm=1000, tokens_in_window=800))
    assert [(w.name, w.used, w.limit) for w in windows] == [
        ("req/window", 7, 10),
        ("tok/window", 800, 1000),
    ]
    assert windows[1].fraction == 0.8


def test_terminal_output_has_colours_and_a_narrow_terminal_drops_columns() -> None:
    stats = {"gpt": row(), "claude": row(state="open", model="claude-3-5-haiku-latest")}
    wide = StringIO()
    Console(file=wide, force_terminal=True, width=200, color_system="standard").print(
        StatsTable(stats)
    )
    assert ESCAPE.search(wide.getvalue())
    assert "█" in wide.getvalue()
    assert "model" in wide.getvalue()
    narrow = StringIO()
    Console(file=narrow, force_terminal=True, width=80, color_system="standard").print(
        StatsTable(stats)
    )
    plain = re.sub(r"\x1b\[[0-9;]*m", "", narrow.getvalue())
    assert "model" not in plain  # left out rather than squeezed into ellipses
    assert "state" in plain
    assert all(len(line) <= 80 for line in plain.splitlines())


def test_html_escapes_values_and_draws_bars_and_states() -> None:
    stats = {"<b>x</b>": row(model="m&m", state="open", window_used=10)}
    page = StatsTable(stats, title="pool <1>")._repr_html_()
    assert page.startswith('<table class="pllm-stats">')
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "m&amp;m" in page
    assert "pool &lt;1&gt;" in page
    assert "<b>x</b>" not in page
    assert 'width:100%;height:100%;background:#c62828"' in page  # a full window, in red
    assert '<span style="color:#c62828">open</span>' in page
    assert page.count("<tr>") == 2  # the header and one provider


def test_names_and_models_are_shown_as_written_not_read_as_rich_markup() -> None:
    # Provider names are free text: "[/]" used to raise MarkupError, "[red]" to vanish.
    stats = {"key[/]": row(model="m[red]x")}
    for terminal in (False, True):
        out = StringIO()
        Console(file=out, force_terminal=terminal, width=200).print(StatsTable(stats))
        text = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
        assert "key[/]" in text
        assert "m[red]x" in text
    assert cells(str(StatsTable(stats)), "key[/]")[2] == "m[red]x"


def test_a_plain_console_prints_the_same_plain_table() -> None:
    out = StringIO()
    table = StatsTable({"gpt": row()})
    console_for(out).print(table)  # StringIO is not a terminal
    assert out.getvalue().rstrip() == str(table).rstrip()


def test_faces_give_a_table_of_their_stats_without_keys() -> None:
    key = "sk-secret-never-shown-123"
    chat = BalancedChatModel(
        providers=[{"vendor": "openai", "name": "main", "api_key": key, "model": "m"}]
    )
    emb = BalancedEmbeddings(providers=[{"vendor": "openai", "api_key": key, "model": "e"}])
    for face, provider in ((chat, "main"), (emb, "openai-0")):
        table = face.stats_table()
        assert isinstance(table, StatsTable)
        assert len(table) == 1
        assert cells(str(table), provider)[3] == "closed"
        for shown in (str(table), table._repr_html_(), repr(table)):
            assert key not in shown
            assert "sk-" not in shown
