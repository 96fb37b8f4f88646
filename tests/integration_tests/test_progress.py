"""``PllmProgress`` on real batches over the fake servers: its counts against the servers' logs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_pllm import BalancedChatModel, BalancedEmbeddings, PllmProgress
from langchain_pllm.balancer import ManualClock
from langchain_pllm.testing import FakeAnthropicServer, FakeOpenAIServer, Fault

# One transport (tests/integration_tests/conftest.py): progress counts items, failures and retries
# the balancer reports.
pytestmark = pytest.mark.one_transport

ESCAPE = re.compile(r"\x1b\[")
FAULTS = [Fault(status=500), Fault(status=503), Fault(status=429, retry_after=0)]
# Faults must never open a breaker or run out of retries here: every item ends answered.
FORGIVING = {"breaker_threshold": 1000, "max_wait": 30}


@pytest.fixture
def servers() -> Iterator[tuple[FakeOpenAIServer, FakeAnthropicServer]]:
    with FakeOpenAIServer() as openai_srv, FakeAnthropicServer() as anthropic_srv:
        yield openai_srv, anthropic_srv


def openai_keys(
    srv: FakeOpenAIServer, *keys: str, model: str = "m", **extra: Any
) -> list[dict[str, Any]]:
    """One OpenAI entry per key on the fake server."""
    return [
        {"vendor": "openai", "api_key": k, "model": model, "api_base": srv.base_url, **extra}
        for k in keys
    ]


def chat_pool(
    openai_srv: FakeOpenAIServer, anthropic_srv: FakeAnthropicServer, **kwargs: Any
) -> BalancedChatModel:
    return BalancedChatModel(
        providers=[
            *openai_keys(openai_srv, "sk-p-1", "sk-p-2"),
            {
                "vendor": "anthropic",
                "api_key": "sk-p-3",
                "model": "c",
                "api_base": anthropic_srv.base_url,
            },
        ],
        **kwargs,
    )


async def test_abatch_of_500_with_20_percent_faults_ends_at_500_with_the_servers_retries(
    servers: tuple[FakeOpenAIServer, FakeAnthropicServer],
) -> None:
    openai_srv, anthropic_srv = servers
    model = chat_pool(openai_srv, anthropic_srv, balancer=FORGIVING, max_retries=50)
    await model.ainvoke("warm up")  # the SDKs' first call imports and connects: not measured
    openai_srv.clear()
    anthropic_srv.clear()
    for seed, srv in enumerate(servers):
        srv.set_fault_rate(0.2, FAULTS, seed=seed)
    out = StringIO()
    progress = PllmProgress(display="plain", file=out, interval=0.5)  # total learned
    prompts = [f"item {i}" for i in range(500)]
    replies = await model.abatch(prompts, config={"callbacks": [progress]})
    logged = openai_srv.requests + anthropic_srv.requests
    faulted = [r for r in logged if r.fault is not None]
    assert len(faulted) > 50  # the faults really happened
    assert [r.content for r in replies] == [f"echo: {p}" for p in prompts]
    assert (progress.done, progress.total, progress.succeeded) == (500, 500, 500)
    assert progress.failed == progress.in_flight == 0
    assert progress.retries == len(logged) - 500 == len(faulted)
    assert progress.retries == sum(r.response_metadata["attempts"] - 1 for r in replies)
    assert progress.finished
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("requests: 500/500 done, ")
    assert f"{len(faulted)} retries, 0 failed, 0 live" in lines[-1]
    assert not ESCAPE.search(out.getvalue())


def test_a_chain_batch_counts_items_failures_and_learns_its_total(
    servers: tuple[FakeOpenAIServer, FakeAnthropicServer],
) -> None:
    openai_srv, _ = servers
    model = BalancedChatModel(
        providers=[*openai_keys(openai_srv, "sk-c-1")],
        balancer=FORGIVING,
        max_retries=0,
    )
    chain = ChatPromptTemplate.from_messages([("human", "q {i}")]) | model | StrOutputParser()
    openai_srv.enqueue(*[Fault(status=500)] * 3)  # the first three requests fail for good
    progress = PllmProgress(display="none")
    results = chain.batch(
        [{"i": i} for i in range(20)],
        config={"callbacks": [progress], "max_concurrency": 4},
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 3
    assert (progress.total, progress.succeeded, progress.failed) == (20, 17, 3)
    assert progress.retries == 0  # no retry was allowed
    assert len(openai_srv.requests) == 20


def test_items_that_finally_fail_still_count_their_retries(
    servers: tuple[FakeOpenAIServer, FakeAnthropicServer],
) -> None:
    openai_srv, _ = servers
    model = BalancedChatModel(
        providers=openai_keys(openai_srv, *(f"sk-r-{i}" for i in range(3))),
        balancer=FORGIVING,
        max_retries=2,
    )
    chain = ChatPromptTemplate.from_messages([("human", "q {i}")]) | model | StrOutputParser()
    # One at a time: the first item meets all six faults, fails after 3 attempts; so does the
    # second; the other three are answered at once.
    openai_srv.enqueue(*[Fault(status=500)] * 6)
    progress = PllmProgress(display="none")
    results = chain.batch(
        [{"i": i} for i in range(5)],
        config={"callbacks": [progress], "max_concurrency": 1},
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, Exception)]
    assert [getattr(f, "attempts", None) for f in failures] == [3, 3]
    assert (progress.succeeded, progress.failed) == (3, 2)
    assert progress.retries == len(openai_srv.requests) - 5 == 4


def test_model_batch_with_a_given_total_and_retries(
    servers: tuple[FakeOpenAIServer, FakeAnthropicServer],
) -> None:
    openai_srv, anthropic_srv = servers
    model = chat_pool(openai_srv, anthropic_srv, balancer=FORGIVING, max_retries=10)
    openai_srv.set_fault_rate(0.3, FAULTS, seed=3)
    progress = PllmProgress(30, display="none")
    model.batch([f"x{i}" for i in range(30)], config={"callbacks": [progress]})
    logged = len(openai_srv.requests) + len(anthropic_srv.requests)
    assert (progress.done, progress.total) == (30, 30)
    assert progress.retries == logged - 30


def test_embed_documents_reports_texts_and_retries_through_callbacks(
    servers: tuple[FakeOpenAIServer, FakeAnthropicServer],
) -> None:
    openai_srv, _ = servers
    progress = PllmProgress(display="none")
    emb = BalancedEmbeddings(
        providers=openai_keys(
            openai_srv, "sk-e-0", "sk-e-1", model="text-embedding-3-small", batch_size=10
        ),
        balancer=FORGIVING,
        max_retries=20,
        callbacks=[progress],
    )
    openai_srv.set_fault_rate(0.2, FAULTS, seed=5)
    texts = [f"text {i}" for i in range(200)]
    vectors = emb.embed_documents(texts)
    assert len(vectors) == 200
    assert (progress.done, progress.total, progress.failed) == (200, 200, 0)
    assert progress.retries == len(openai_srv.requests) - 20  # 200 texts in batches of 10
    emb.embed_query("a query is not a long job")  # not reported
    assert progress.total == 200


async def test_embeddings_show_progress_draws_and_a_failed_call_counts_its_texts(
    servers: tuple[FakeOpenAIServer, FakeAnthropicServer], capsys: pytest.CaptureFixture[str]
) -> None:
    openai_srv, _ = servers
    emb = BalancedEmbeddings(
        providers=openai_keys(openai_srv, "sk-s-1", model="text-embedding-3-small", batch_size=5),
        show_progress=True,
    )
    assert len(await emb.aembed_documents([f"t{i}" for i in range(20)])) == 20
    err = capsys.readouterr().err  # stderr under pytest is no terminal: plain lines
    assert "texts: 20/20 done" in err
    assert not ESCAPE.search(err)

    progress = PllmProgress(display="none")
    broken = BalancedEmbeddings(
        providers=openai_keys(openai_srv, "sk-s-2", model="text-embedding-3-small", batch_size=5),
        max_retries=0,
        callbacks=[progress],
    )
    openai_srv.fault_for_key("sk-s-2", Fault(status=401))
    with pytest.raises(Exception, match="401"):
        broken.embed_documents([f"t{i}" for i in range(20)])
    assert (progress.succeeded, progress.failed, progress.in_flight) == (0, 20, 0)


def test_a_failed_embedding_call_counts_the_retries_it_made(
    servers: tuple[FakeOpenAIServer, FakeAnthropicServer],
) -> None:
    openai_srv, _ = servers
    progress = PllmProgress(display="none")
    emb = BalancedEmbeddings(
        providers=openai_keys(openai_srv, "sk-f-0", "sk-f-1", model="text-embedding-3-small"),
        balancer=FORGIVING,
        max_retries=1,
        callbacks=[progress],
    )
    openai_srv.fault_for_key(None, Fault(status=500))
    with pytest.raises(Exception, match="500") as caught:
        emb.embed_documents(["one text: one batch, one balancer call"])
    assert getattr(caught.value, "attempts", None) == 2
    assert (progress.failed, progress.retries) == (1, len(openai_srv.requests) - 1) == (1, 1)


def test_rate_and_line_come_from_the_clock() -> None:
    clock = ManualClock()
    out = StringIO()
    progress = PllmProgress(10, description="texts", display="plain", file=out, clock=clock)
    progress.on_embed_start(10)
    clock.advance(2.0)
    progress.on_embed_batch_end(4, attempts=3)
    assert progress.rate == 2.0
    assert out.getvalue() == "texts: 4/10 done, 2.0/s, 2 retries, 0 failed, 6 live, 2.0s\n"
    clock.advance(0.5)
    progress.on_embed_batch_end(6, attempts=1)
    assert out.getvalue().splitlines()[-1] == (
        "texts: 10/10 done, 4.0/s, 2 retries, 0 failed, 0 live, 2.5s"
    )
    clock.advance(10)
    assert progress.elapsed == 2.5  # stopped at the last item


def test_rich_and_tqdm_displays_draw_the_final_state() -> None:
    for display in ("rich", "tqdm"):  # tqdm: in the test group, so this never skips it
        out = StringIO()
        progress = PllmProgress(3, description="work", display=display, file=out)
        progress.on_embed_start(3)
        progress.on_embed_batch_end(3, attempts=2)
        text = out.getvalue()
        assert "3/3" in text, (display, text)
        assert "retries" in text, (display, text)


def test_an_unknown_display_is_refused() -> None:
    with pytest.raises(ValueError, match="display must be"):
        PllmProgress(display="fancy")  # type: ignore[arg-type]
