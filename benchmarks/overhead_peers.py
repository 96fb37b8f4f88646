"""The peers `overhead.py` measures: the fake OpenAI server in its own process, and the contestants.

`ServerProcess` runs `FakeOpenAIServer` in a spawned process (so the client's CPU time is its
own) and can report how long it held each embeddings request. Each contestant factory builds one
client under test (the raw `openai` SDK on httpx and on aiohttp, its untyped `post`, the floor
of a LangChain model, `ChatOpenAI`, LiteLLM's `Router`, `BalancedChatModel`) as a `Contestant`:
a sync call, an async call, a check of the reply and how to close it. `overhead.py` times them.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from overhead_async import aiohttp_clients

# Before anything imports LiteLLM: never fetch the cost map, tokenizers or release checks.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
os.environ.setdefault("LITELLM_DISABLE_LATEST_RELEASE_CHECK", "true")

MODEL = "gpt-4o-mini"
# The httpx contestants' connect timeout: 256 connects at once queue their address lookups on
# anyio's worker threads, and on a loaded machine the SDK's 5 s runs out. No contestant's
# figures depend on it; it only keeps a busy run alive.
CONNECT_TIMEOUT = 60.0
PROMPT = "hi"
MESSAGES = [{"role": "user", "content": PROMPT}]
EXPECTED = "echo: hi"


# The fake server, in its own process -----------------------------------------------------------


def _serve(conn: Any, latency: float) -> None:
    """Child process: serve until the parent sends "stop" (or goes away).

    "holds" asks for the seconds the server held each embeddings request since the last ask
    (from the handler's start to its reply, the fixed latency included): the latency a key
    really had, which a loaded machine stretches past the one configured.
    """
    from langchain_pllm.testing import FakeOpenAIServer

    holds: list[float] = []

    class TimedServer(FakeOpenAIServer):
        async def _serve_embeddings(self, request: Any, model: str) -> Any:
            began = time.monotonic()
            try:
                return await super()._serve_embeddings(request, model)
            finally:
                holds.append(time.monotonic() - began)

    # A short request log: a long run must not grow the server's memory.
    with TimedServer(max_recorded=1000, latency=latency) as server:
        conn.send(server.base_url)
        with contextlib.suppress(EOFError):
            while conn.recv() == "holds":
                conn.send(holds[:])
                holds.clear()


class ServerProcess:
    """The fake OpenAI server in a spawned process; `base_url` once started."""

    def __init__(self, latency: float = 0.0) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, latency), daemon=True)
        self.base_url = ""

    def __enter__(self) -> ServerProcess:
        self._process.start()
        if not self._conn.poll(60):
            self._process.kill()
            raise RuntimeError("the fake server process did not start")
        self.base_url = self._conn.recv()
        return self

    def holds(self) -> list[float]:
        """Seconds the server held each embeddings request since the last call."""
        self._conn.send("holds")
        held: list[float] = self._conn.recv()
        return held

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


# Contestants -----------------------------------------------------------------------------------


@dataclass
class Contestant:
    """One client under test: a sync call, an async call, and how to warm it up."""

    name: str
    call: Callable[[], Any]
    acall: Callable[[], Awaitable[Any]]
    warmup_calls: int
    check: Callable[[Any], str]
    close: Callable[[], Any] = lambda: None
    aclose: Callable[[], Awaitable[Any]] | None = None
    latency: list[float] = field(default_factory=list)
    sync_cpu: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)
    throughput_high: list[float] = field(default_factory=list)
    async_cpu: list[float] = field(default_factory=list)
    warmup_seconds: float = 0.0


def _timeout() -> Any:
    import httpx2

    return httpx2.Timeout(600.0, connect=CONNECT_TIMEOUT)


def chat_model(name: str, model: Any, warmup: int, **closers: Any) -> Contestant:
    """A LangChain chat model as a contestant: ``invoke``/``ainvoke`` of the one prompt."""
    return Contestant(
        name=name,
        call=lambda: model.invoke(PROMPT),
        acall=lambda: model.ainvoke(PROMPT),
        warmup_calls=warmup,
        check=lambda r: r.content,
        **closers,
    )


def raw_sdk(base_url: str, warmup: int) -> Contestant:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="sk-raw", max_retries=0, timeout=_timeout())
    aclient = openai.AsyncOpenAI(
        base_url=base_url, api_key="sk-raw", max_retries=0, timeout=_timeout()
    )
    return Contestant(
        name="openai SDK (raw)",
        call=lambda: client.chat.completions.create(model=MODEL, messages=MESSAGES),  # type: ignore[arg-type]
        acall=lambda: aclient.chat.completions.create(model=MODEL, messages=MESSAGES),  # type: ignore[arg-type]
        warmup_calls=warmup,
        check=lambda r: r.choices[0].message.content,
        close=client.close,
        aclose=aclient.close,
    )


def raw_sdk_aiohttp(base_url: str, warmup: int, keys: int) -> Contestant:
    """The new floor: `keys` raw `AsyncOpenAI` clients on the SDK's aiohttp transport, in turn.

    Each client has its own `DefaultAioHttpClient`, as a user holding several keys would write
    it; sync calls go through one plain `OpenAI` client (there is no sync aiohttp transport).
    """

    import openai

    client = openai.OpenAI(base_url=base_url, api_key="sk-aio", max_retries=0)
    aclients = aiohttp_clients(base_url, f"sk-aio{keys}", keys)
    turn = itertools.cycle(aclients)

    async def aclose() -> None:
        for c in aclients:
            await c.close()

    return Contestant(
        name=f"openai SDK (raw, aiohttp), {keys} client{'s' if keys > 1 else ''}",
        call=lambda: client.chat.completions.create(model=MODEL, messages=MESSAGES),  # type: ignore[arg-type]
        acall=lambda: next(turn).chat.completions.create(model=MODEL, messages=MESSAGES),  # type: ignore[arg-type]
        warmup_calls=max(warmup, keys),
        check=lambda r: r.choices[0].message.content,
        close=client.close,
        aclose=aclose,
    )


def chat_openai(base_url: str, warmup: int) -> Contestant:
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(
        base_url=base_url,
        api_key="sk-lc",  # type: ignore[arg-type]
        model=MODEL,
        max_retries=0,
        timeout=_timeout(),
    )
    return chat_model("langchain-openai ChatOpenAI", model, warmup)


def raw_post(base_url: str, warmup: int) -> Contestant:
    """The SDK's transport without its typed layer: `post(cast_to=dict)`, as our provider does."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="sk-post", max_retries=0, timeout=_timeout())
    aclient = openai.AsyncOpenAI(
        base_url=base_url, api_key="sk-post", max_retries=0, timeout=_timeout()
    )
    body = {"model": MODEL, "messages": MESSAGES}
    return Contestant(
        name="openai SDK, raw post(cast_to=dict)",
        call=lambda: client.post("/chat/completions", body=body, cast_to=dict),
        acall=lambda: aclient.post("/chat/completions", body=body, cast_to=dict),
        warmup_calls=warmup,
        check=lambda r: r["choices"][0]["message"]["content"],
        close=client.close,
        aclose=aclient.close,
    )


def langchain_floor(base_url: str, warmup: int) -> Contestant:
    """The least a LangChain chat model can cost: `BaseChatModel.invoke` around one SDK call."""
    import openai
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    client = openai.OpenAI(base_url=base_url, api_key="sk-floor", max_retries=0, timeout=_timeout())
    aclient = openai.AsyncOpenAI(
        base_url=base_url, api_key="sk-floor", max_retries=0, timeout=_timeout()
    )

    def reply(response: Any) -> ChatResult:
        text = response.choices[0].message.content
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    class SdkFloor(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "sdk-floor"

        def _generate(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
        ) -> ChatResult:
            wire: Any = [{"role": "user", "content": m.content} for m in messages]
            return reply(client.chat.completions.create(model=MODEL, messages=wire))

        async def _agenerate(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
        ) -> ChatResult:
            wire: Any = [{"role": "user", "content": m.content} for m in messages]
            return reply(await aclient.chat.completions.create(model=MODEL, messages=wire))

    model = SdkFloor()
    return chat_model(
        "floor: bare BaseChatModel over the SDK",
        model,
        warmup,
        close=client.close,
        aclose=aclient.close,
    )


def litellm_router(base_url: str, warmup: int) -> Contestant:
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    router = litellm.Router(
        model_list=[
            {
                "model_name": "bench",
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_key": "sk-litellm",
                    "api_base": base_url,
                },
            }
        ],
        num_retries=0,
    )
    return Contestant(
        name="LiteLLM Router",
        call=lambda: router.completion(model="bench", messages=MESSAGES),
        acall=lambda: router.acompletion(model="bench", messages=MESSAGES),
        warmup_calls=warmup,
        check=lambda r: r.choices[0].message.content,
    )


def balanced(base_url: str, warmup: int, keys: int) -> Contestant:
    from langchain_pllm import BalancedChatModel

    model = BalancedChatModel(
        providers=[
            {
                "vendor": "openai",
                "api_key": f"sk-pool{keys}-{i}",
                "model": MODEL,
                "api_base": base_url,
            }
            for i in range(keys)
        ]
    )
    # Every key builds its SDK clients and opens its connection on first use: use them all.
    return chat_model(
        f"BalancedChatModel, {keys:,} key{'s' if keys > 1 else ''}", model, max(warmup, keys)
    )
