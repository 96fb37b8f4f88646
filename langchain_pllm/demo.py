"""``pllm demo``: five keys of five vendors watched live while a few hundred requests run, offline.

Fake vendor servers on loopback (OpenAI, Anthropic, Gemini and Zhipu wire formats) stand in
for the vendors; one key fails every request (529) and one is rate-limited three times (429
with ``Retry-After``). Prompts go through an LCEL chain (``prompt | model | parser``) with
``chain.batch_as_completed`` (each item runs the whole chain, so items finish one by one;
``chain.batch`` would run each step for every item before the next step), then through
``model.batch``. On a terminal a ``rich`` live view redraws every
key's window, load and breaker while they run, with a progress bar per phase; anywhere else
(a pipe, CI) the same run prints plain lines. At the end every answer is checked, and every
number the balancer reports (each key's requests and errors, the retries) is checked against
what the fake servers logged, so the demo also proves its own table.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, TextIO

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from langchain_pllm import BalancedChatModel, PllmProgress
from langchain_pllm.progress import Display
from langchain_pllm.stats_view import StatsTable
from langchain_pllm.terminal import console_for, is_terminal
from langchain_pllm.testing import (
    FakeAnthropicServer,
    FakeGeminiServer,
    FakeOpenAIServer,
    FakeVendorServer,
    FakeZhipuServer,
    Fault,
)

__all__ = ["run_demo"]

RATE_LIMIT = 10
WINDOW = 2.0  # seconds instead of 60, so the demo shows windows filling and emptying


@dataclass(frozen=True)
class _Key:
    vendor: str
    name: str
    model: str
    server: str  # which fake server speaks its wire format

    @property
    def api_key(self) -> str:
        return f"sk-demo-{self.name}"


KEYS = (
    _Key("openai", "gpt", "gpt-4o-mini", "openai"),
    _Key("deepseek", "deepseek", "deepseek-chat", "openai"),
    _Key("anthropic", "claude", "claude-3-5-haiku", "anthropic"),
    _Key("google", "gemini", "gemini-2.0-flash", "gemini"),
    _Key("zhipu", "glm", "glm-4-flash", "zhipu"),
)


def run_demo(requests: int = 240, verbose: bool = False, file: TextIO | None = None) -> int:
    """Run the demo; return 0 when every answer and every number checked out, else 1.

    Args:
        requests: Prompts to send in all (two thirds through the chain, the rest by batch).
        verbose: Print every answer with the key that served it.
        file: Where to write (stdout by default).

    Returns:
        The exit code.
    """
    out = file if file is not None else sys.stdout
    live = is_terminal(out)
    console = console_for(out)
    servers: dict[str, FakeVendorServer] = {
        "openai": FakeOpenAIServer(),
        "anthropic": FakeAnthropicServer(),
        "gemini": FakeGeminiServer(),
        "zhipu": FakeZhipuServer(),
    }
    with contextlib.ExitStack() as stack:
        for srv in servers.values():
            stack.enter_context(srv)
        servers["anthropic"].fault_for_key(
            "sk-demo-claude", Fault(status=529, message="overloaded")
        )
        servers["gemini"].fault_for_key(
            "sk-demo-gemini", Fault(status=429, retry_after=0.5, message="quota"), times=3
        )
        model = BalancedChatModel(
            providers=[
                {
                    "vendor": k.vendor,
                    "name": k.name,
                    "api_key": k.api_key,
                    "model": k.model,
                    "api_base": servers[k.server].base_url,
                    "rate_limit": RATE_LIMIT,
                }
                for k in KEYS
            ],
            balancer={"breaker_threshold": 3, "health_check_interval": 300, "window": WINDOW},
            max_retries=3,
        )
        chain = (
            ChatPromptTemplate.from_messages([("human", "question number {i}")])
            | model
            | StrOutputParser()
        )
        in_chain = requests * 2 // 3
        mode: Display = "none" if live else "plain"
        phases = (
            PllmProgress(in_chain, description="chain", display=mode, file=out),
            PllmProgress(requests - in_chain, description="batch", display=mode, file=out),
        )
        console.print(
            f"Sending {requests} prompts through 5 keys of 5 vendors, {RATE_LIMIT} requests per "
            f"{WINDOW:g} s window each: {in_chain} through an LCEL chain (prompt | model | "
            f"parser) with chain.batch_as_completed, then {requests - in_chain} with "
            "model.batch. The Anthropic key answers 529 every time; the Gemini key answers 429 "
            "+ Retry-After three times."
        )

        def frame() -> Group:
            table = StatsTable(model.get_stats(), title="every key, live")
            return Group(table, Text(""), *phases)

        started = time.perf_counter()
        view = (
            Live(get_renderable=frame, console=console, refresh_per_second=4)
            if live
            else contextlib.nullcontext()
        )
        with view:
            answers: list[Any] = [None] * in_chain
            for i, answer in chain.batch_as_completed(
                [{"i": i} for i in range(in_chain)],
                config={"callbacks": [phases[0]], "max_concurrency": 8},
                return_exceptions=True,
            ):
                answers[i] = answer
            replies = model.batch(
                [f"question number {i}" for i in range(in_chain, requests)],
                config={"callbacks": [phases[1]], "max_concurrency": 8},
                return_exceptions=True,
            )
        elapsed = time.perf_counter() - started
        texts = answers + [r if isinstance(r, Exception) else r.content for r in replies]
        ok = _check_answers(console, texts, replies, in_chain, verbose)
        console.print(f"{ok}/{requests} answered correctly, in order, in {elapsed:.2f}s\n")
        stats = model.get_stats()
        console.print(StatsTable(stats, title="the pool after the run"))
        retries = sum(p.retries for p in phases)
        matched = _audit(console, stats, servers, requests, retries)
        return 0 if ok == requests and matched else 1


def _check_answers(
    console: Console, texts: list[Any], replies: list[Any], in_chain: int, verbose: bool
) -> int:
    ok = 0
    for i, text in enumerate(texts):
        prompt = f"question number {i}"
        if isinstance(text, Exception):
            console.print(f"  {prompt!r:24} -> ERROR {type(text).__name__}: {text}", markup=False)
            continue
        if text != f"echo: {prompt}":
            console.print(f"  {prompt!r:24} -> WRONG ANSWER {text!r}", markup=False)
            continue
        ok += 1
        if verbose and i >= in_chain:
            meta = replies[i - in_chain].response_metadata
            console.print(
                f"  {prompt!r:24} -> {text!r} [{meta['provider']} ({meta['model_provider']}), "
                f"attempts={meta['attempts']}]",
                markup=False,
            )
    return ok


def _audit(
    console: Console,
    stats: dict[str, dict[str, Any]],
    servers: dict[str, FakeVendorServer],
    requests: int,
    retries: int,
) -> bool:
    """Print the balancer's numbers beside the servers' logs; return whether all match."""
    logged = [r for srv in servers.values() for r in srv.requests]
    by_key: dict[str, list[int]] = {}
    for r in logged:
        by_key.setdefault(r.api_key or "", []).append(r.status)
    answered = sum(1 for r in logged if r.status == 200)
    refused = Counter(r.status for r in logged if r.status != 200)
    refusals = ", ".join(f"{n} x {status}" for status, n in sorted(refused.items())) or "none"
    console.print(
        f"\nThe fake servers logged {len(logged)} requests: {answered} answered, "
        f"{sum(refused.values())} refused ({refusals})."
    )
    matched = answered == requests and retries == len(logged) - requests
    for k in KEYS:
        st = stats[k.name]
        statuses = by_key.get(k.api_key, [])
        errors = sum(1 for s in statuses if s != 200)
        same = st["total_requests"] == len(statuses) and st["error_count"] == errors
        matched = matched and same
        console.print(
            f"{k.name}: served {st['total_requests'] - st['error_count']} of its "
            f"{st['total_requests']} requests, breaker {st['state']}; the servers logged "
            f"{len(statuses)} with {errors} refused: {'match' if same else 'MISMATCH'}"
        )
    console.print(
        f"Retries: {retries} counted by the progress handlers; {len(logged)} logged - "
        f"{requests} prompts = {len(logged) - requests}: "
        f"{'match' if retries == len(logged) - requests else 'MISMATCH'}"
    )
    console.print(
        "Every number above matches the fake servers' logs."
        if matched
        else "Some numbers do NOT match the fake servers' logs (see MISMATCH above)."
    )
    return matched
