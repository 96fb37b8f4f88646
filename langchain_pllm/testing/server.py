"""The shared core of the fake vendor servers: lifecycle, request log, faults and dispatch.

`FakeVendorServer` runs an aiohttp application on 127.0.0.1 (a free port) in a background
thread with its own event loop, so synchronous and asynchronous tests can both point a real
vendor SDK at it. It reads each request, records it, applies any scheduled `Fault`, asks the
reply machinery for the answer, and leaves every byte of vendor formatting (paths, bodies,
stream frames, error shapes, where the API key travels) to the vendor subclasses.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from aiohttp import web

from langchain_pllm.testing.faults import Fault, FaultSchedule
from langchain_pllm.testing.replies import (
    Conversation,
    Reply,
    Responder,
    completion_tokens,
    count_words,
    embedding_vector,
    prompt_tokens,
    resolve_reply,
)

_Server = TypeVar("_Server", bound="FakeVendorServer")

#: One stream frame: its bytes, and whether it carries content (what `Fault.cut_after` counts).
Frame = tuple[bytes, bool]

_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_MALFORMED_BODY = b'{"id": "broken", "choices": [{"index": 0, "message": {"content": "'


@dataclass
class RecordedRequest:
    """One request as the fake server saw it.

    Attributes:
        time: `time.monotonic()` at arrival.
        path: URL path.
        body: Parsed JSON body (`{}` when absent or unparsable).
        headers: Request headers, names lower-cased.
        api_key: The key the request authenticated with (Zhipu JWTs: the key id).
        status: HTTP status answered; 0 while in flight or when the connection was dropped.
        usage: The usage object reported, in the vendor's own shape.
        stream: Whether a streamed reply was asked for.
        prompt_tokens: Input tokens reported (0 for errors).
        completion_tokens: Output tokens reported (0 for errors and embeddings).
        fault: The fault applied to this request, if any.
    """

    time: float
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    api_key: str | None
    status: int = 0
    usage: dict[str, Any] | None = None
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    fault: Fault | None = None


class RequestRejected(Exception):
    """Raised inside a handler to answer with a vendor-format error."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class FakeVendorServer:
    """Base class of the fake vendor servers; see the vendor subclasses for the wire formats.

    Usage::

        with FakeOpenAIServer() as srv:
            client = OpenAI(base_url=srv.base_url, api_key="sk-x", max_retries=0)
            srv.enqueue(Fault(status=429, retry_after=2))
            ...
            assert srv.requests[0].status == 429

    Args:
        dimensions: Length of embedding vectors when the request does not ask for one.
        max_batch: Most inputs one embeddings request may carry (beyond: a 400 error).
            `None` takes the vendor's real limit.
        reply_text: Fixed assistant text for every chat reply (overrides the default echo,
            tool calls and structured output); `None` keeps the default.
        latency: Seconds every request waits before its answer (faults add their own).
        require_api_key: Answer 401 when a request carries no API key.
        max_recorded: How many requests the log keeps (the oldest go first), so long
            benchmarks do not grow memory without bound.
    """

    vendor: ClassVar[str] = ""
    api_prefix: ClassVar[str] = ""
    default_max_batch: ClassVar[int] = 2048

    def __init__(
        self,
        *,
        dimensions: int = 8,
        max_batch: int | None = None,
        reply_text: str | None = None,
        latency: float = 0.0,
        require_api_key: bool = True,
        max_recorded: int = 100_000,
    ) -> None:
        self.dimensions = dimensions
        self.max_batch = max_batch if max_batch is not None else self.default_max_batch
        self.reply_text = reply_text
        self.latency = latency
        self.require_api_key = require_api_key
        self._responder: Responder | None = None
        self._faults = FaultSchedule()
        self._log: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self._log_lock = threading.Lock()
        self._counter = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._start_error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Root URL, ``http://127.0.0.1:PORT``."""
        if not self._port:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        """The base URL the vendor's SDK takes."""
        return self.url + self.api_prefix

    @property
    def port(self) -> int:
        """The TCP port bound (0 before `start`)."""
        return self._port

    def start(self: _Server) -> _Server:
        """Start serving in a background thread; returns self. Idempotent."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        self._start_error = None
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"fake-{self.vendor}-server", daemon=True
        )
        self._thread.start()
        ready.wait(10)
        if self._start_error is not None or not self._port:
            self._thread.join(1)
            self._thread = None
            raise RuntimeError(f"{type(self).__name__} failed to start") from self._start_error
        return self

    def stop(self) -> None:
        """Stop serving and close every connection. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None
        self._port = 0

    def __enter__(self: _Server) -> _Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self: _Server) -> _Server:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve_forever_setup())
        except BaseException as exc:  # reported to the starting thread
            self._start_error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
                self._runner = None
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve_forever_setup(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for method, path, handler in self._routes():
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.05, handler_cancellation=True
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]

    # -- request log -------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, in arrival order."""
        with self._log_lock:
            return list(self._log)

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._log_lock:
            self._log.clear()

    # -- faults and replies ------------------------------------------------------------------

    def enqueue(self, *faults: Fault) -> None:
        """Queue one-shot faults, consumed one per request in arrival order."""
        self._faults.enqueue(*faults)

    def fault_for_key(self, api_key: str, fault: Fault, times: int | None = None) -> None:
        """Give every request with `api_key` this fault, at most `times` times if set.

        A key-bound fault takes precedence over the queue and the random rate.
        """
        self._faults.for_key(api_key, fault, times)

    def set_fault_rate(self, rate: float, faults: list[Fault], seed: int = 0) -> None:
        """Inject a random one of `faults` into a `rate` share of requests (seeded RNG)."""
        self._faults.set_rate(rate, faults, seed)

    def clear_faults(self) -> None:
        """Remove every scheduled fault (queued, per key and random)."""
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """How many queued one-shot faults are still waiting for a request."""
        return self._faults.pending()

    def set_responder(self, responder: Responder | None) -> None:
        """Script chat replies: `responder(body)` returns a `Reply`, text, or `None` (default)."""
        self._responder = responder

    # -- vendor hooks ------------------------------------------------------------------------

    def _routes(self) -> list[tuple[str, str, Any]]:
        raise NotImplementedError

    def _api_key_of(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() != "bearer ":
            return None
        return auth[7:].strip() or None

    def _fault_keys(self, api_key: str | None) -> tuple[str, ...]:
        return (api_key,) if api_key else ()

    def _check_request(self, request: web.Request, body: dict[str, Any]) -> None:
        """Raise `RequestRejected` for requests the real vendor would refuse."""

    def _error_body(self, status: int, message: str, code: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def _error_headers(self, retry_after: float | None) -> dict[str, str]:
        if retry_after is None:
            return {}
        return {"Retry-After": _seconds(retry_after)}

    def _conversation(self, body: dict[str, Any]) -> Conversation:
        raise NotImplementedError

    def _usage(self, prompt: int, completion: int) -> dict[str, Any]:
        raise NotImplementedError

    def _chat_body(
        self, body: dict[str, Any], model: str, reply: Reply, usage: dict[str, Any]
    ) -> dict[str, Any]:
        raise NotImplementedError

    def _chat_frames(
        self, body: dict[str, Any], model: str, reply: Reply, usage: dict[str, Any]
    ) -> list[Frame]:
        raise NotImplementedError

    def _embedding_texts(self, body: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def _embedding_body(
        self, body: dict[str, Any], model: str, vectors: list[tuple[float, ...]], tokens: int
    ) -> dict[str, Any]:
        raise NotImplementedError

    def _embedding_dimensions(self, body: dict[str, Any]) -> int | None:
        value = body.get("dimensions")
        return int(value) if value else None

    def _embedding_usage(self, tokens: int) -> dict[str, Any] | None:
        return {"prompt_tokens": tokens, "total_tokens": tokens}

    def _malformed_frame(self) -> bytes:
        return b'data: {"id": "broken", "choices": [{\n\n'

    # -- request handling --------------------------------------------------------------------

    def _next_id(self) -> int:
        self._counter += 1
        return self._counter

    async def _admit(
        self, request: web.Request, stream: bool | None = None
    ) -> tuple[dict[str, Any], RecordedRequest, Fault | None] | web.StreamResponse:
        """Read, record and fault-check a request; a response means it ends here."""
        arrival = time.monotonic()
        raw = await request.read()
        body: dict[str, Any] | None
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = None
        api_key = self._api_key_of(request)
        record = RecordedRequest(
            time=arrival,
            path=request.path,
            body=body or {},
            headers={k.lower(): v for k, v in request.headers.items()},
            api_key=api_key,
            stream=bool(body.get("stream")) if stream is None and body else bool(stream),
        )
        with self._log_lock:
            self._log.append(record)
        fault = self._faults.next_fault(self._fault_keys(api_key))
        record.fault = fault
        delay = self.latency + (fault.latency if fault else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is not None:
            if fault.drop:
                return _drop(request)
            if fault.status is not None and fault.status >= 300:
                return self._error_response(
                    record, fault.status, fault.message, fault.code, fault.retry_after
                )
        try:
            if body is None:
                raise RequestRejected(400, "The request body is not valid JSON.")
            if api_key is None and self.require_api_key:
                raise RequestRejected(401, "No API key provided.")
            self._check_request(request, body)
        except RequestRejected as rejected:
            return self._error_response(record, rejected.status, rejected.message, rejected.code)
        return body, record, fault

    def _error_response(
        self,
        record: RecordedRequest,
        status: int,
        message: str,
        code: str | None,
        retry_after: float | None = None,
    ) -> web.Response:
        record.status = status
        payload = self._error_body(status, message or _default_message(status), code)
        return web.Response(
            status=status,
            body=json.dumps(payload).encode(),
            content_type=_JSON,
            headers=self._error_headers(retry_after),
        )

    async def _serve_chat(
        self, request: web.Request, model: str, stream: bool | None = None
    ) -> web.StreamResponse:
        admitted = await self._admit(request, stream)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        body, record, fault = admitted
        try:
            conversation = self._conversation(body)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return self._error_response(record, 400, f"Malformed request: {exc!r}", None)
        reply = resolve_reply(body, conversation, self._responder, self.reply_text)
        record.prompt_tokens = prompt_tokens(conversation)
        record.completion_tokens = completion_tokens(reply)
        usage = self._usage(record.prompt_tokens, record.completion_tokens)
        record.usage = usage
        record.status = 200
        if not record.stream:
            if fault is not None and fault.malformed:
                return web.Response(body=_MALFORMED_BODY, content_type=_JSON)
            if fault is not None and fault.cut_after is not None:
                return _drop(request)
            payload = self._chat_body(body, model, reply, usage)
            return web.Response(body=json.dumps(payload).encode(), content_type=_JSON)
        frames = self._chat_frames(body, model, reply, usage)
        if fault is not None and fault.malformed:
            frames = [(self._malformed_frame(), True)]
        cut_after = fault.cut_after if fault is not None else None
        return await self._write_stream(request, frames, cut_after)

    async def _write_stream(
        self, request: web.Request, frames: list[Frame], cut_after: int | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        if cut_after is None:
            # One write: the SDKs parse frames, not packets, and fewer syscalls keep it fast.
            await response.write(b"".join(frame for frame, _ in frames))
            await response.write_eof()
            return response
        sent = 0
        for frame, is_content in frames:
            if is_content:
                if sent >= cut_after:
                    break
                sent += 1
            await response.write(frame)
        else:
            await response.write_eof()
            return response
        await asyncio.sleep(0)  # let the written chunks leave before the reset
        if request.transport is not None:
            request.transport.abort()
        return response

    async def _serve_embeddings(self, request: web.Request, model: str) -> web.StreamResponse:
        admitted = await self._admit(request, False)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        body, record, fault = admitted
        try:
            texts = self._embedding_texts(body)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return self._error_response(record, 400, f"Malformed request: {exc!r}", None)
        if not texts:
            return self._error_response(record, 400, "The input must not be empty.", None)
        if len(texts) > self.max_batch:
            message = f"Too many inputs: {len(texts)} > the limit of {self.max_batch} per request."
            return self._error_response(record, 400, message, None)
        dimensions = self._embedding_dimensions(body) or self.dimensions
        vectors = [embedding_vector(text, dimensions) for text in texts]
        tokens = sum(count_words(text) for text in texts)
        record.prompt_tokens = tokens
        record.usage = self._embedding_usage(tokens)
        record.status = 200
        if fault is not None and fault.malformed:
            return web.Response(body=_MALFORMED_BODY, content_type=_JSON)
        payload = self._embedding_body(body, model, vectors, tokens)
        return web.Response(body=json.dumps(payload).encode(), content_type=_JSON)


def _drop(request: web.Request) -> web.Response:
    """Close the connection with no response at all."""
    if request.transport is not None:
        request.transport.abort()
    # aiohttp notices the closed transport and writes nothing.
    return web.Response(status=599)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _default_message(status: int) -> str:
    return {
        400: "Invalid request.",
        401: "Invalid API key.",
        403: "Permission denied.",
        404: "Not found.",
        429: "Rate limit exceeded.",
        500: "Internal server error.",
        503: "Service unavailable.",
        529: "Overloaded.",
    }.get(status, f"HTTP {status}")


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    """Encode one server-sent event frame."""
    text = data if isinstance(data, str) else json.dumps(data)
    if event is None:
        return f"data: {text}\n\n".encode()
    return f"event: {event}\ndata: {text}\n\n".encode()
