"""The ``pllm`` command: ``demo`` (offline, on fake vendors), ``check``, ``chat`` and ``bench``.

``python -m langchain_pllm demo`` needs no key and no network: it starts fake vendor servers on
loopback (OpenAI, Anthropic, Gemini, Zhipu wire formats), makes one key fail every request and
one rate-limit with ``Retry-After``, sends a batch through one ``BalancedChatModel`` over all of
them and prints each key's stats.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _table(stats: dict[str, dict[str, Any]]) -> str:
    cols = (
        "vendor",
        "model",
        "state",
        "total_requests",
        "error_count",
        "total_tokens",
        "window_used",
        "rate_limit",
        "active_requests",
    )
    rows = [["provider", *cols]]
    for pid, s in stats.items():
        rows.append([pid, *("-" if s.get(c) is None else str(s.get(c)) for c in cols)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def demo(args: argparse.Namespace) -> int:
    """Run a batch through a mixed pool: healthy keys, a failing key, a rate-limited key."""
    from langchain_pllm import BalancedChatModel
    from langchain_pllm.testing import (
        FakeAnthropicServer,
        FakeGeminiServer,
        FakeOpenAIServer,
        FakeZhipuServer,
        Fault,
    )

    n = args.requests
    with (
        FakeOpenAIServer() as openai_srv,
        FakeAnthropicServer() as anthropic_srv,
        FakeGeminiServer() as gemini_srv,
        FakeZhipuServer() as zhipu_srv,
    ):
        # The Anthropic key is overloaded (529 on every call) and the Gemini key is
        # rate-limited three times (429 + Retry-After); the others are healthy.
        anthropic_srv.fault_for_key("sk-demo-claude", Fault(status=529, message="overloaded"))
        gemini_srv.fault_for_key(
            "sk-demo-gemini", Fault(status=429, retry_after=0.5, message="quota"), times=3
        )

        def key(vendor: str, name: str, model: str, base: str) -> dict[str, Any]:
            return {
                "vendor": vendor,
                "name": name,
                "api_key": f"sk-demo-{name}",
                "model": model,
                "api_base": base,
                "rate_limit": 10,
            }

        model = BalancedChatModel(
            providers=[
                key("openai", "gpt", "gpt-4o-mini", openai_srv.base_url),
                key("deepseek", "deepseek", "deepseek-chat", openai_srv.base_url),
                key("anthropic", "claude", "claude-3-5-haiku", anthropic_srv.base_url),
                key("google", "gemini", "gemini-2.0-flash", gemini_srv.base_url),
                key("zhipu", "glm", "glm-4-flash", zhipu_srv.base_url),
            ],
            # A 2-second window instead of 60 s, so the demo shows waiting in seconds.
            balancer={"breaker_threshold": 3, "health_check_interval": 300, "window": 2.0},
            max_retries=3,
        )
        prompts: list[Any] = [f"question number {i}" for i in range(n)]
        print(
            f"Sending {n} prompts through 5 keys of 5 vendors, 10 requests per 2 s window each "
            "(the Anthropic key answers 529 every time; the Gemini key answers 429 + "
            "Retry-After three times)..."
        )
        started = time.perf_counter()
        results = model.batch(prompts, config={"max_concurrency": 8}, return_exceptions=True)
        elapsed = time.perf_counter() - started
        ok = 0
        for prompt, result in zip(prompts, results, strict=True):
            if isinstance(result, Exception):
                print(f"  {prompt!r:24} -> ERROR {type(result).__name__}: {result}")
                continue
            expected = f"echo: {prompt}"
            if result.content != expected:
                print(f"  {prompt!r:24} -> WRONG ANSWER {result.content!r}")
                continue
            ok += 1
            if args.verbose:
                meta = result.response_metadata
                print(
                    f"  {prompt!r:24} -> {result.content!r} "
                    f"[{meta['provider']} ({meta['model_provider']}), attempts={meta['attempts']}]"
                )
        print(f"{ok}/{n} answered correctly, in order, in {elapsed:.2f}s\n")
        stats = model.get_stats()
        print(_table(stats))
        print()
        for pid, st in stats.items():
            print(
                f"{pid}: served {st['total_requests'] - st['error_count']} of its "
                f"{st['total_requests']} requests, breaker {st['state']}"
            )
        return 0 if ok == n else 1


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
    parser = argparse.ArgumentParser(prog="pllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="offline demo on built-in fake vendor servers")
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=demo)
    p = sub.add_parser("check", help="validate a config file")
    p.add_argument("config")
    p.set_defaults(func=check)
    p = sub.add_parser("chat", help="send one prompt through a config's chat pool")
    p.add_argument("config")
    p.add_argument("prompt")
    p.add_argument("--stream", action="store_true")
    p.set_defaults(func=chat)
    p = sub.add_parser("bench", help="quick CPU cost per call against the raw openai SDK")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.set_defaults(func=bench)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
