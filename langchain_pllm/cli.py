"""The ``pllm`` command: ``demo``, ``check``, ``top``, ``chat`` and ``bench``.

Each command imports what it needs when it runs, so ``pllm --help`` answers at once. The help
texts are plain text (argparse prints them as written): no markup.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main"]

DESCRIPTION = """pllm: a pool of LLM API keys across vendors behind one LangChain chat model
and one embeddings model.

Start with "pllm demo": it needs no key and no network."""

EPILOG = """examples:
  pllm demo                      five fake keys of five vendors, watched live
  pllm check pllm.yaml --ping    validate a config, then try every key once
  pllm top pllm.yaml             every key's load, windows and breaker, live
  pllm top pllm.yaml --once      one frame (plain text when piped)
  pllm chat pllm.yaml "Hello"    one prompt through the chat pool"""


def demo(args: argparse.Namespace) -> int:
    """Watch a pool of fake keys of five vendors balance a few hundred requests."""
    from langchain_pllm.demo import run_demo

    return run_demo(args.requests, args.verbose)


def check(args: argparse.Namespace) -> int:
    """Validate a config file and print its pools (never the keys)."""
    from langchain_pllm import PllmConfigError, load_config

    try:
        config = load_config(args.config)
    except PllmConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    for name, pool in (("llm", config.llm), ("embedding", config.embedding)):
        if pool is None:
            continue
        print(f"{name}:")
        for p in pool.providers:
            limits = f"rate_limit={p.rate_limit} tpm={p.tpm}"
            print(f"  {p.id:20} {p.vendor:12} {p.model:30} {p.api_base}  {limits}")
    print("balancer:", json.dumps(config.balancer.model_dump()))
    if not args.ping:
        return 0
    from langchain_pllm.ping import ping_config, ping_table
    from langchain_pllm.terminal import console_for

    console = console_for()
    results = ping_config(config, timeout=args.timeout)
    console.print(ping_table(results, plain=console.color_system is None))
    unusable = [r.provider for r in results if not r.usable]
    console.print(
        f"{len(results) - len(unusable)} of {len(results)} keys usable"
        + (f"; unusable: {', '.join(unusable)}" if unusable else ""),
        markup=False,
    )
    return 1 if unusable else 0


def top(args: argparse.Namespace) -> int:
    """Show every key of a config's pools, refreshed, like ``top`` shows processes."""
    from rich.console import Group
    from rich.text import Text

    from langchain_pllm import BalancedChatModel, BalancedEmbeddings, PllmConfigError, load_config
    from langchain_pllm.stats_view import StatsTable

    try:
        config = load_config(args.config)
        faces: list[tuple[str, Any]] = []
        if config.llm is not None:
            faces.append(("chat (llm:)", BalancedChatModel.from_config(args.config)))
        if config.embedding is not None:
            faces.append(("embeddings (embedding:)", BalancedEmbeddings.from_config(args.config)))
    except PllmConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    state = config.balancer.model_dump()["state"]  # the password of a Redis URL redacted
    scope = _Scope(state, [face.balancer_instance.state for _, face in faces])

    def frame() -> Group:
        # The tables first: reading the stats is what finds Redis away (or back).
        tables = [StatsTable(face.get_stats(), title) for title, face in faces]
        now = time.strftime("%X")
        header = Text(f"pllm top  {args.config}  state {state} ({scope(now)})  {now}")
        return Group(header, *tables)

    return _watch(frame, args.interval, args.once)


class _Scope:
    """Whose numbers ``pllm top`` shows: the fleet's, or this process's alone.

    With a Redis state they are the fleet's while Redis answers. While it is away the state
    serves this process's local view, and the header says so until Redis answers again, with
    the time this view first found it away (the state keeps no such time; an outage begun
    before ``pllm top`` started shows the time of its first frame).

    Args:
        state: The configured state, as shown (a Redis URL has its password redacted).
        backends: The state backends of the pools shown.
    """

    def __init__(self, state: str, backends: list[Any]) -> None:
        self._memory = state == "memory"
        self._backends = backends
        self._away_since: str | None = None

    def __call__(self, now: str) -> str:
        """The scope of the frame drawn at ``now`` (``HH:MM:SS``), read after its stats."""
        if self._memory:
            return "this process only: use a redis:// state to watch a fleet"
        if all(getattr(b, "is_redis_available", True) for b in self._backends):
            self._away_since = None
            return "fleet-wide: every process sharing it"
        if self._away_since is None:
            self._away_since = now
        return f"this process only: Redis away since {self._away_since}"


def _watch(frame: Callable[[], Any], interval: float, once: bool) -> int:
    """Draw ``frame()`` every ``interval`` seconds until Ctrl-C (or once).

    On a terminal the frame is redrawn in place; anywhere else each frame is printed in plain
    text below the last, like ``top -b``.
    """
    from rich.live import Live

    from langchain_pllm.terminal import console_for

    console = console_for()
    pause = threading.Event()  # never set: a wait that Ctrl-C interrupts
    try:
        if once:
            console.print(frame())
        elif console.is_terminal:
            with Live(frame(), console=console, auto_refresh=False) as live:
                while not pause.wait(interval):
                    live.update(frame(), refresh=True)
        else:
            while True:
                console.print(frame())
                console.print()
                console.file.flush()
                pause.wait(interval)
    except KeyboardInterrupt:
        pass
    return 0


def chat(args: argparse.Namespace) -> int:
    """Send one prompt through the chat pool of a config file."""
    from langchain_pllm import BalancedChatModel, PllmConfigError

    try:
        model = BalancedChatModel.from_config(args.config)
    except PllmConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.stream:
        for chunk in model.stream(args.prompt):
            print(chunk.content, end="", flush=True)
        print()
    else:
        msg = model.invoke(args.prompt)
        print(msg.content)
        print(json.dumps(msg.response_metadata, default=str), file=sys.stderr)
    return 0


def bench(args: argparse.Namespace) -> int:
    """Quick CPU cost per call: the raw ``openai`` SDK against ``BalancedChatModel``.

    A smaller cousin of ``benchmarks/overhead.py`` (which also measures ``ChatOpenAI`` and
    LiteLLM, latency and throughput) that needs nothing beyond the package.
    """
    import openai

    from langchain_pllm import BalancedChatModel
    from langchain_pllm.testing import FakeOpenAIServer

    calls, rounds = args.calls, args.rounds
    with FakeOpenAIServer() as srv:
        raw = openai.OpenAI(base_url=srv.base_url, api_key="sk-bench", max_retries=0)
        message: Any = [{"role": "user", "content": "hi"}]

        def pool(n: int) -> BalancedChatModel:
            return BalancedChatModel(
                providers=[
                    {
                        "vendor": "openai",
                        "api_key": f"sk-bench-{i}",
                        "model": "m",
                        "api_base": srv.base_url,
                    }
                    for i in range(n)
                ]
            )

        one, four = pool(1), pool(4)
        contestants: dict[str, Any] = {
            "openai SDK (raw)": lambda: raw.chat.completions.create(model="m", messages=message),
            "BalancedChatModel, 1 key": lambda: one.invoke("hi"),
            "BalancedChatModel, 4 keys": lambda: four.invoke("hi"),
        }
        for fn in contestants.values():  # warm up: clients built, connections open
            for _ in range(20):
                fn()
        cpu: dict[str, list[float]] = {name: [] for name in contestants}
        for _ in range(rounds):
            for name, fn in contestants.items():
                started = time.process_time()
                for _ in range(calls):
                    fn()
                cpu[name].append((time.process_time() - started) / calls * 1e6)
    base = sorted(cpu["openai SDK (raw)"])[rounds // 2]
    print(f"CPU per call, median of {rounds} rounds x {calls} calls (client and fake server in")
    print("one process, so the figures include the server's share; see benchmarks/overhead.py)")
    for name, values in cpu.items():
        median = sorted(values)[rounds // 2]
        print(f"  {name:28} {median:8.0f} us   {median / base:5.2f}x")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pllm`` and ``python -m langchain_pllm``."""
    parser = argparse.ArgumentParser(
        prog="pllm",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "demo",
        help="watch five fake keys of five vendors balance a few hundred requests (offline)",
        description="Run a few hundred requests through a chain and a batch over five fake keys "
        "of five vendors (one failing, one rate-limited) on built-in fake servers, with a live "
        "table of every key; then check every number against the servers' logs. No key, no "
        "network. Plain lines when the output is not a terminal.",
    )
    p.add_argument("--requests", type=int, default=240, help="prompts to send (default 240)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every answer")
    p.set_defaults(func=demo)
    p = sub.add_parser(
        "check",
        help="validate a config file; --ping tries every key once",
        description="Validate a config file and list its pools (never the keys). With --ping, "
        "send one tiny request with every key and report its latency or its error (spent, "
        "auth, rate-limited, unreachable, not-found, other); exit code 1 if any key is unusable.",
    )
    p.add_argument("config", help="path to the YAML config")
    p.add_argument("--ping", action="store_true", help="send one tiny request per key")
    p.add_argument(
        "--timeout", type=float, default=20.0, help="seconds each ping may take (default 20)"
    )
    p.set_defaults(func=check)
    p = sub.add_parser(
        "top",
        help="live table of every key of a config's pools",
        description="Show every key of a config's pools (state, requests in flight, each "
        "window's use of its limit, tokens, errors), refreshed. With a redis:// state the "
        "numbers are the whole fleet's (this process's own while Redis is away, as the header "
        "says). Keys are never shown.",
    )
    p.add_argument("config", nargs="?", default="pllm.yaml", help="default: pllm.yaml")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between frames (default 1)")
    p.set_defaults(func=top)
    p = sub.add_parser(
        "chat",
        help="send one prompt through a config's chat pool",
        description="Send one prompt through the chat pool of a config file; the answer goes "
        "to stdout, its metadata (which key served, attempts) to stderr.",
    )
    p.add_argument("config", help="path to the YAML config")
    p.add_argument("prompt")
    p.add_argument("--stream", action="store_true", help="print the answer as it streams")
    p.set_defaults(func=chat)
    p = sub.add_parser(
        "bench",
        help="CPU per call against the raw openai SDK",
        description="Measure CPU per call of the raw openai SDK and of BalancedChatModel "
        "against a fake server in this process.",
    )
    p.add_argument("--calls", type=int, default=200, help="calls per round (default 200)")
    p.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    p.set_defaults(func=bench)
    args = parser.parse_args(argv)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run a command; a vendor's or the pool's error is one line on stderr, not a traceback.

    Exit codes: 0 done, 1 a vendor or pool error (the key was refused, no key had capacity,
    the call was wrong), 2 a config error (reported by the command itself), 130 interrupted.
    """
    from langchain_core.exceptions import ModelError

    from langchain_pllm.exceptions import PllmConfigError, PllmError

    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"pllm {args.command}: interrupted", file=sys.stderr)
        return 130
    except PllmConfigError as e:
        print(f"pllm {args.command}: config error: {e}", file=sys.stderr)
        return 2
    except (ModelError, PllmError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"pllm {args.command}: {type(e).__name__}: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
