"""``PllmProgress``: progress of long work (``batch``, ``abatch``, ``embed_documents``) as it runs.

A LangChain callback handler. LangChain tells a handler nothing about a batch as a whole: a
batch of N items is N runs, each with no parent (``parent_run_id is None``), started as the
batch's concurrency allows. So an item is a root run: started when its root run starts, done
when that run ends, failed when it errors; runs below a root (the model inside a chain, a
parser) only add their retries. The total is the one given (``PllmProgress(total=N)``) or else
what has started so far: ``abatch`` and chains start every item at once, a thread-pool
``batch`` as workers free up. Retries are the balancer's further attempts, read from each
reply's ``response_metadata["attempts"]`` (or, for an item that finally fails, from the
``attempts`` the balancer sets on the error it raises), plus any ``with_retry`` retries. A
chain's own ``batch`` runs each step for every item before the next step, so its items all
finish at the end (retries and items in flight move meanwhile); ``batch_as_completed``
finishes them one by one.

``BalancedEmbeddings`` has no LangChain run to report; it tells its handlers of texts through
``on_embed_start`` / ``on_embed_batch_end`` / ``on_embed_error`` (see ``EmbedReport``), where
one text is one item.

Where it is drawn: a ``rich`` live line on a terminal, ``tqdm`` in Jupyter when ``tqdm`` is
installed (``tqdm`` is optional), plain lines every few seconds anywhere else (pipes, CI,
Jupyter without ``tqdm``). It is itself a ``rich`` renderable, so it can sit inside a larger
live view (``display="none"``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, Protocol, TextIO
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from langchain_pllm.balancer import Clock, MonotonicClock
from langchain_pllm.terminal import console_for, in_jupyter, is_terminal

if TYPE_CHECKING:
    from langchain_core.outputs import LLMResult

__all__ = ["BatchReport", "Display", "EmbedReport", "PllmProgress", "embedding_progress"]

Display = Literal["auto", "rich", "tqdm", "plain", "none"]


class PllmProgress(BaseCallbackHandler):
    """Progress of a batch, an ``abatch`` or ``embed_documents``: done/total, rate, retries.

    Pass it where LangChain takes callbacks; read its counters at any time.

    Example:
        .. code-block:: python

            from langchain_pllm import PllmProgress

            answers = chain.batch(inputs, config={"callbacks": [PllmProgress(len(inputs))]})
            vectors = BalancedEmbeddings(..., show_progress=True).embed_documents(texts)

    Args:
        total: How many items the work has; without it, the items started so far.
        description: The label drawn before the bar.
        display: ``"auto"`` (a ``rich`` line on a terminal, ``tqdm`` in Jupyter when
            installed, plain lines otherwise), ``"rich"``, ``"tqdm"``, ``"plain"`` or
            ``"none"`` (count only; draw it yourself, it is a ``rich`` renderable).
        file: Where to draw (stderr by default, stdout for plain lines in Jupyter).
        interval: Seconds between plain lines.
        clock: Time source for the rate (a ``ManualClock`` in tests).

    Attributes:
        started: Items started.
        succeeded: Items finished with an answer.
        failed: Items finished with an error.
        retries: Further attempts the balancer made (and ``with_retry`` retries).
    """

    run_inline = True  # cheap and lock-guarded: no executor hop per event under abatch

    def __init__(
        self,
        total: int | None = None,
        *,
        description: str = "requests",
        display: Display = "auto",
        file: TextIO | None = None,
        interval: float = 2.0,
        clock: Clock | None = None,
    ) -> None:
        self.fixed_total = total
        self.description = description
        self.interval = interval
        self.clock = clock or MonotonicClock()
        self.started = 0
        self.succeeded = 0
        self.failed = 0
        self.retries = 0
        self._roots: set[UUID] = set()
        self._began: float | None = None
        self._ended: float | None = None
        self._lock = threading.Lock()
        self._draw_lock = threading.Lock()
        self._mode, self._file = _resolve(display, file)
        self._drawing: _Drawing | None = None
        self._last_line = 0.0

    # Counters --------------------------------------------------------------------------------

    @property
    def done(self) -> int:
        """Items finished, answered or failed."""
        return self.succeeded + self.failed

    @property
    def total(self) -> int:
        """Items to do: the given total, or those started so far."""
        return self.fixed_total if self.fixed_total is not None else self.started

    @property
    def in_flight(self) -> int:
        """Items started and not finished."""
        return max(0, self.started - self.done)

    @property
    def elapsed(self) -> float:
        """Seconds since the first item started (until the last finished)."""
        if self._began is None:
            return 0.0
        end = self._ended if self._ended is not None else self.clock.now()
        return max(0.0, end - self._began)

    @property
    def rate(self) -> float:
        """Items finished per second."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def finished(self) -> bool:
        """Nothing in flight and, when a total was given, every item done."""
        if self.in_flight:
            return False
        return self.fixed_total is None or self.done >= self.fixed_total

    def __str__(self) -> str:
        return (
            f"{self.description}: {self.done}/{self.total} done, {self.rate:.1f}/s, "
            f"{self.retries} retries, {self.failed} failed, {self.in_flight} live, "
            f"{self.elapsed:.1f}s"
        )

    def __rich__(self) -> Table:
        # Called from the live display's thread: reads the counters without the lock (each
        # is one int; a frame a hair out of date is redrawn a moment later).
        total = self.total
        grid = Table.grid(padding=(0, 1))
        bar_total = float(total) if total else None  # None: a pulsing bar, nothing to measure
        cells: list[Any] = [
            Text(self.description, style="bold"),
            ProgressBar(total=bar_total, completed=self.done, width=30),
            Text(f"{self.done}/{total}"),
            Text(f"{self.rate:.1f}/s"),
            Text(f"{self.retries} retries", style="yellow" if self.retries else "dim"),
            Text(f"{self.failed} failed", style="red" if self.failed else "dim"),
            Text(f"{self.in_flight} live"),
            Text(f"{self.elapsed:.1f}s", style="dim"),
        ]
        for _ in cells:
            grid.add_column(no_wrap=True)
        grid.add_row(*cells)
        return grid

    # Counting (every event funnels into _count) ----------------------------------------------

    def _count(
        self,
        *,
        started: int = 0,
        succeeded: int = 0,
        failed: int = 0,
        retries: int = 0,
    ) -> None:
        with self._lock:
            now = self.clock.now()
            if started and (self._began is None or self._ended is not None):
                if self._began is None:
                    self._began = self._last_line = now  # the first line after a while
                self._ended = None
            self.started += started
            self.succeeded += succeeded
            self.failed += failed
            self.retries += retries
            finished = self.finished
            if finished and self._began is not None:
                self._ended = now
            line_due = now - self._last_line >= self.interval
            if line_due or finished:
                self._last_line = now
        # Drawing happens outside the lock: a live display's thread reads the counters while
        # it draws, and stopping that display waits for it.
        self._draw(finished, line_due)

    def _draw(self, finished: bool, line_due: bool) -> None:
        if self._mode == "none":
            return
        with self._draw_lock:  # one display at a time, started and stopped once
            # Read again: another thread may have started an item since this one counted.
            finished = self.finished
            drawing = self._drawing
            if drawing is None and not finished:
                drawing = self._drawing = _Drawing.start(self)
            if drawing is None:
                return
            drawing.update(line_due or finished)
            if finished:
                self._drawing = None
                drawing.stop()

    # LangChain events ------------------------------------------------------------------------

    def _start_root(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        if parent_run_id is not None:
            return
        with self._lock:
            self._roots.add(run_id)
        self._count(started=1)

    def _end_root(self, run_id: UUID, error: bool) -> None:
        with self._lock:
            if run_id not in self._roots:
                return
            self._roots.discard(run_id)
        if error:
            self._count(failed=1)
        else:
            self._count(succeeded=1)

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """A chain item starts (when it is a root run)."""
        self._start_root(run_id, parent_run_id)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """A model item starts (when it is a root run)."""
        self._start_root(run_id, parent_run_id)

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        """A completion-model item starts (when it is a root run)."""
        self._start_root(run_id, parent_run_id)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """A model run answered: count the balancer's further attempts."""
        retries = 0
        for generations in response.generations:
            for generation in generations:
                message = getattr(generation, "message", None)
                meta = getattr(message, "response_metadata", None) or {}
                attempts = meta.get("attempts")
                if isinstance(attempts, int) and attempts > 1:
                    retries += attempts - 1
        if retries:
            self._count(retries=retries)
        self._end_root(run_id, error=False)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """A model run failed after every attempt the policy allowed: count its retries too."""
        retries = _retries_of(error)
        if retries:
            self._count(retries=retries)
        self._end_root(run_id, error=True)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """A chain run ended."""
        self._end_root(run_id, error=False)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """A chain run failed."""
        self._end_root(run_id, error=True)

    def on_retry(self, retry_state: Any, *, run_id: UUID, **kwargs: Any) -> None:
        """A ``with_retry`` runnable tries again."""
        self._count(retries=1)

    # Embeddings events (from BalancedEmbeddings, one text is one item) -----------------------

    def on_embed_start(self, texts: int) -> None:
        """An ``embed_documents`` call starts with ``texts`` texts."""
        self._count(started=texts)

    def on_embed_batch_end(self, texts: int, attempts: int) -> None:
        """One batch of ``texts`` texts came back after ``attempts`` attempts."""
        self._count(succeeded=texts, retries=max(0, attempts - 1))

    def on_embed_error(self, texts: int, error: BaseException) -> None:
        """The call failed: ``texts`` texts got no vector (after the error's ``attempts``)."""
        self._count(failed=texts, retries=_retries_of(error))

    # Explicit end ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop drawing now (a display also stops by itself once everything is done)."""
        with self._draw_lock:
            drawing, self._drawing = self._drawing, None
            if drawing is not None:
                drawing.update(True)
                drawing.stop()

    def __enter__(self) -> PllmProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _retries_of(error: BaseException) -> int:
    """The further attempts the balancer made before raising ``error`` (its ``attempts``)."""
    attempts = getattr(error, "attempts", None)  # a list on ValidationFailedError: not ours
    return attempts - 1 if isinstance(attempts, int) and attempts > 1 else 0


def _resolve(display: Display, file: TextIO | None) -> tuple[Display, TextIO]:
    """Which display ``auto`` means here, and where it writes."""
    if display not in ("auto", "rich", "tqdm", "plain", "none"):
        raise ValueError(f"display must be auto, rich, tqdm, plain or none; got {display!r}")
    jupyter = in_jupyter()
    mode = display
    if mode == "auto":
        if jupyter:
            mode = "tqdm" if _tqdm_class() is not None else "plain"
        else:
            mode = "rich" if is_terminal(file or sys.stderr) else "plain"
    if mode == "tqdm" and _tqdm_class() is None:
        mode = "plain"
    if file is None:
        file = sys.stdout if jupyter and mode == "plain" else sys.stderr
    return mode, file


def _tqdm_class() -> Any:
    """``tqdm``'s bar class, or ``None`` when ``tqdm`` is not installed (it is optional)."""
    try:
        import ipywidgets  # noqa: F401  (tqdm.auto draws a widget only with it)
    except ImportError:
        try:
            from tqdm.std import tqdm
        except ImportError:
            return None
        return tqdm
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


class _Drawing:
    """One display of a ``PllmProgress``, from its first item to its last."""

    def __init__(self, progress: PllmProgress) -> None:
        self.progress = progress

    @staticmethod
    def start(progress: PllmProgress) -> _Drawing:
        mode = progress._mode
        if mode == "rich":
            return _RichDrawing(progress)
        if mode == "tqdm":
            return _TqdmDrawing(progress)
        return _PlainDrawing(progress)

    def update(self, line_due: bool) -> None:
        """Counters moved; ``line_due`` says a plain line may be written now."""

    def stop(self) -> None:
        """Draw the last state and let go of the output."""


class _PlainDrawing(_Drawing):
    def update(self, line_due: bool) -> None:
        if line_due:
            print(str(self.progress), file=self.progress._file, flush=True)


class _RichDrawing(_Drawing):
    def __init__(self, progress: PllmProgress) -> None:
        super().__init__(progress)
        self.live = Live(
            progress, console=console_for(progress._file), refresh_per_second=8, transient=False
        )
        self.live.start()

    def stop(self) -> None:
        self.live.stop()


class _TqdmDrawing(_Drawing):
    def __init__(self, progress: PllmProgress) -> None:
        super().__init__(progress)
        self.bar = _tqdm_class()(
            total=progress.total or None, desc=progress.description, file=progress._file
        )

    def update(self, line_due: bool) -> None:
        p = self.progress
        self.bar.total = p.total or None
        self.bar.n = p.done
        # tqdm redraws at most every mininterval by itself; the postfix rides along.
        self.bar.set_postfix(retries=p.retries, failed=p.failed, live=p.in_flight, refresh=False)
        self.bar.update(0)

    def stop(self) -> None:
        self.bar.refresh()
        self.bar.close()


class BatchReport(Protocol):
    """Where an embeddings call reports each finished batch."""

    def batch(self, texts: int, attempts: int) -> None:
        """A batch of ``texts`` came back after ``attempts`` attempts."""


class EmbedReport:
    """What one ``embed_documents`` call tells its progress handlers; thread-safe."""

    def __init__(self, handlers: Sequence[Any], texts: int) -> None:
        self.handlers = list(handlers)
        self.texts = texts
        self.reported = 0
        self._lock = threading.Lock()
        for h in self.handlers:
            h.on_embed_start(texts)

    def batch(self, texts: int, attempts: int) -> None:
        """A batch of ``texts`` came back after ``attempts`` attempts."""
        with self._lock:
            self.reported += texts
        for h in self.handlers:
            h.on_embed_batch_end(texts, attempts)

    def fail(self, error: BaseException) -> None:
        """The call failed: every text not yet reported got no vector."""
        with self._lock:
            left, self.reported = self.texts - self.reported, self.texts
        if left > 0:
            for h in self.handlers:
                h.on_embed_error(left, error)


class _NoReport:
    """The report of a call nobody watches."""

    def batch(self, texts: int, attempts: int) -> None:
        """Nothing to tell."""


@contextmanager
def embedding_progress(
    callbacks: Sequence[Any] | None, show_progress: bool, texts: int
) -> Iterator[BatchReport]:
    """The report for one ``embed_documents`` call of ``texts`` texts.

    Args:
        callbacks: Handlers of the embeddings model; those with ``on_embed_start`` hear.
        show_progress: Add a ``PllmProgress`` of this call.
        texts: How many texts the call embeds.

    Yields:
        An object whose ``batch(texts, attempts)`` reports a finished batch.
    """
    handlers = [h for h in callbacks or () if hasattr(h, "on_embed_start")]
    if show_progress:
        handlers.append(PllmProgress(texts, description="texts"))
    if not handlers:
        yield _NoReport()
        return
    report = EmbedReport(handlers, texts)
    try:
        yield report
    except BaseException as e:
        report.fail(e)
        raise
