"""The shared core of the fake vendor servers: the request log and the path of every request.

``FakeVendorServer`` reads each request, records it, and walks it through what a vendor's front
door does, in order: the key's concurrency cap, any scheduled ``Fault``, latency, the checks
the real API makes (a 400 in the vendor's format), the rate-limit budget (429 with
``Retry-After``, or the reply's rate-limit headers), the prompt cache (cached input tokens in the
usage), and finally the reply. Every byte of vendor formatting (paths, bodies, stream frames,
error shapes, header names, where the API key travels) is left to the vendor subclasses;
serving on loopback is ``LoopbackServer``'s job.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from aiohttp import web

from langchain_pllm.testing.budgets import RateBudget, Reading, Verdict
from langchain_pllm.testing.faults import Fault, FaultSchedule
from langchain_pllm.testing.lifecycle import LoopbackServer
from langchain_pllm.testing.prompt_cache import NO_CACHE, CacheUse, PromptCache, prompt_segments
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
from langchain_pllm.testing.wire import (
    JSON_TYPE,
    Frame,
    drop,
    write_cut_body,
    write_stream,
)
from langchain_pllm.testing.wire import sse as sse  # kept importable from here, as before

_MALFORMED_BODY = b'{"id": "broken", "choices": [{"index": 0, "message": {"content": "'

# Ids are unique across every server and vendor in a process (one counter) and, through a
# random tag, across processes, so a client that keys messages by id never merges two replies.
_PROCESS_TAG = secrets.token_hex(4)
_COUNTER = itertools.count(1)


def new_id() -> str:
    """A reply id unique across servers, vendors and (with high probability) processes."""
    return f"{_PROCESS_TAG}{next(_COUNTER):06d}"


@dataclass
class RecordedRequest:
    """One request as the fake server saw it.

    Attributes:
        time: ``time.monotonic()`` at arrival.
        path: URL path.
        body: Parsed JSON body (``{}`` when absent or unparsable).
        headers: Request headers, names lower-cased.
        api_key: The key the request authenticated with (Zhipu JWTs: the key id).
        status: HTTP status answered; 0 while in flight or when the connection was dropped.
        usage: The usage object reported, in the vendor's own shape.
        stream: Whether a streamed reply was asked for.
        prompt_tokens: Input tokens reported (0 for errors).
        completion_tokens: Output tokens reported (0 for errors and embeddings).
        fault: The fault applied to this request, if any.
        model: The model asked for (from the body, or the path for Gemini).
        key_index: The order in which this server first saw the key (0, 1, ...), ``None``
            without a key: tells keys apart without printing them.
        in_flight: Requests of this key in flight at arrival, this one included.
        cached_tokens: Input tokens the prompt cache served (0 when the cache is off).
        response_headers: Headers the reply carried beyond the content type (rate-limit
            headers, ``Retry-After``), names lower-cased.
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
    model: str | None = None
    key_index: int | None = None
    in_flight: int = 0
    cached_tokens: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)


class RequestRejected(Exception):
    """Raised inside a handler to answer with a vendor-format error."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.fault = Fault(status=status, message=message, code=code, error_type=error_type)

    @property
    def status(self) -> int:
        """The HTTP status answered."""
        return self.fault.status or 400


@dataclass
class _Call:
    """A request admitted past the front door, on its way to a reply."""

    body: dict[str, Any]
    record: RecordedRequest
    fault: Fault | None
    identity: str
    model: str


class FakeVendorServer(LoopbackServer):
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
            ``None`` takes the vendor's real limit.
        reply_text: Fixed assistant text for every chat reply (overrides the default echo,
            tool calls and structured output); ``None`` keeps the default.
        latency: Seconds every request waits before its answer (faults add their own).
        require_api_key: Answer 401 when a request carries no API key.
        max_recorded: How many requests the log keeps (the oldest go first), so long
            benchmarks do not grow memory without bound.
        prompt_cache: Report cached input tokens, per key, for prompt prefixes the key sent
            before (see ``langchain_pllm.testing.prompt_cache``). Off by default so usage stays
            exactly predictable.
        cache_min_tokens: Shortest prefix (tokens) the prompt cache keeps.
    """

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
        prompt_cache: bool = False,
        cache_min_tokens: int = 0,
    ) -> None:
        super().__init__()
        self.dimensions = dimensions
        self.max_batch = max_batch if max_batch is not None else self.default_max_batch
        self.reply_text = reply_text
        self.latency = latency
        self.require_api_key = require_api_key
        self.prompt_cache_enabled = prompt_cache
        self.prompt_cache = PromptCache(min_tokens=cache_min_tokens)
        self._responder: Responder | None = None
        self._faults = FaultSchedule()
        self._log: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self._log_lock = threading.Lock()
        self._budgets: dict[str | None, RateBudget] = {}
        self._concurrency: dict[str | None, int] = {}
        self._in_flight: defaultdict[str, int] = defaultdict(int)
        self._key_indexes: dict[str, int] = {}

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

    def in_flight(self, api_key: str) -> int:
        """Requests made with ``api_key`` that are being answered right now."""
        return self._in_flight.get(self._key_identity(api_key), 0)

    # -- faults, budgets and replies ---------------------------------------------------------

    def enqueue(self, *faults: Fault) -> None:
        """Queue one-shot faults, consumed one per request in arrival order."""
        self._faults.enqueue(*faults)

    def fault_for_key(self, api_key: str | None, fault: Fault, times: int | None = None) -> None:
        """Give every request with ``api_key`` this fault, at most ``times`` times if set.

        ``api_key=None`` gives it to every key. A key-bound fault takes precedence over the
        queue and the random rate.
        """
        self._faults.for_key(self._identity_or_all(api_key), fault, times)

    def set_fault_rate(self, rate: float, faults: list[Fault], seed: int = 0) -> None:
        """Inject a random one of ``faults`` into a ``rate`` share of requests (seeded RNG)."""
        self._faults.set_rate(rate, faults, seed)

    def clear_faults(self) -> None:
        """Remove every scheduled fault (queued, per key, every key and random)."""
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """How many queued one-shot faults are still waiting for a request."""
        return self._faults.pending()

    def spent_fault(self) -> Fault:
        """The error this vendor answers when a key's money or quota is gone."""
        raise NotImplementedError

    def spend_key(self, api_key: str | None = None, fault: Fault | None = None) -> None:
        """Make ``api_key`` (every key when ``None``) answer the vendor's spent-key error.

        Args:
            api_key: The key whose money ran out; ``None`` for the whole account.
            fault: A variant of the error (e.g. ``srv.spent_fault(code="1304")`` on Zhipu);
                ``spent_fault()`` by default.
        """
        self.fault_for_key(api_key, fault or self.spent_fault())

    def refill_key(self, api_key: str | None = None) -> None:
        """Undo ``spend_key`` (and any other fault bound to that key)."""
        self._faults.for_key(self._identity_or_all(api_key), None)

    def set_budget(self, budget: RateBudget | None, api_key: str | None = None) -> None:
        """Count requests and tokens against ``budget`` (each key its own counters).

        With ``api_key``, only that key uses this budget; without, every key without a budget
        of its own does. ``None`` removes the budget. Replies then carry the vendor's
        rate-limit headers, and a request that does not fit is answered 429 with
        ``Retry-After`` in the vendor's format.
        """
        key = self._identity_or_all(api_key)
        if budget is None:
            self._budgets.pop(key, None)
        else:
            self._budgets[key] = budget

    def set_concurrency_limit(self, limit: int | None, api_key: str | None = None) -> None:
        """Answer the vendor's concurrency error to a key's request beyond ``limit`` in flight.

        With ``api_key``, for that key; without, for every key without a limit of its own.
        ``None`` removes the limit.
        """
        key = self._identity_or_all(api_key)
        if limit is None:
            self._concurrency.pop(key, None)
        else:
            self._concurrency[key] = limit

    def clear_prompt_cache(self, api_key: str | None = None) -> None:
        """Forget the cached prompt prefixes of ``api_key`` (of every key when ``None``)."""
        self.prompt_cache.clear(self._identity_or_all(api_key))

    def set_responder(self, responder: Responder | None) -> None:
        """Script replies: ``responder(body)`` returns a ``Reply``, text, or ``None`` (default)."""
        self._responder = responder

    def _identity_or_all(self, api_key: str | None) -> str | None:
        return None if api_key is None else self._key_identity(api_key)

    # -- vendor hooks ------------------------------------------------------------------------

    def _api_key_of(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() != "bearer ":
            return None
        return auth[7:].strip() or None

    def _key_identity(self, api_key: str) -> str:
        """What faults, budgets, caps and caches are keyed by (Zhipu: the key id)."""
        return api_key

    def _check_request(self, request: web.Request, body: dict[str, Any]) -> None:
        """Raise ``RequestRejected`` for requests the real vendor would refuse."""

    def _error_body(self, fault: Fault) -> dict[str, Any]:
        raise NotImplementedError

    def _error_headers(self, fault: Fault) -> dict[str, str]:
        if fault.retry_after is None:
            return {}
        return {"Retry-After": _seconds(fault.retry_after)}

    def _rate_headers(self, readings: tuple[Reading, ...], wall: float) -> dict[str, str]:
        """The vendor's rate-limit headers for a reply; none by default."""
        return {}

    def _budget_error(self, exceeded: Reading, model: str) -> Fault:
        """The vendor's 429 for a request that does not fit its budget."""
        return Fault(
            status=429,
            retry_after=exceeded.reset,
            message=f"Rate limit reached for {model}: {exceeded.resource} limit "
            f"{exceeded.limit} per {_seconds(exceeded.per or 0)}s.",
        )

    def _concurrency_error(self, limit: int) -> Fault:
        """The vendor's error for a request beyond the key's concurrency cap."""
        return Fault(status=429, message=f"Too many concurrent requests (limit {limit}).")

    def _conversation(self, body: dict[str, Any]) -> Conversation:
        raise NotImplementedError

    def _usage(self, prompt: int, completion: int, cache: CacheUse) -> dict[str, Any]:
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

    # -- the path of a request ---------------------------------------------------------------

    def _next_id(self) -> str:
        return new_id()

    async def _serve_chat(
        self, request: web.Request, model: str, stream: bool | None = None
    ) -> web.StreamResponse:
        return await self._serve(request, model, stream, self._answer_chat)

    async def _serve_embeddings(self, request: web.Request, model: str) -> web.StreamResponse:
        return await self._serve(request, model, False, self._answer_embeddings)

    async def _serve(
        self,
        request: web.Request,
        model: str,
        stream: bool | None,
        answer: Callable[[web.Request, _Call], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Record the request, hold its in-flight slot, and take it through the front door."""
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
        identity = self._key_identity(api_key) if api_key else ""
        model_name = str((body or {}).get("model") or model)
        record = RecordedRequest(
            time=arrival,
            path=request.path,
            body=body or {},
            headers={k.lower(): v for k, v in request.headers.items()},
            api_key=api_key,
            stream=bool(body.get("stream")) if stream is None and body else bool(stream),
            model=model_name,
            key_index=self._key_indexes.setdefault(identity, len(self._key_indexes))
            if api_key
            else None,
        )
        self._in_flight[identity] += 1
        record.in_flight = self._in_flight[identity]
        with self._log_lock:
            self._log.append(record)
        try:
            cap = self._concurrency.get(identity, self._concurrency.get(None))
            if cap is not None and record.in_flight > cap:
                return self._error_response(record, self._concurrency_error(cap))
            fault = self._faults.next_fault((identity,) if api_key else ())
            record.fault = fault
            delay = self.latency + (fault.latency if fault else 0.0)
            if delay > 0:
                await asyncio.sleep(delay)
            if fault is not None:
                if fault.drop:
                    return drop(request)
                if fault.is_error:
                    return self._error_response(record, fault)
            try:
                if body is None:
                    raise RequestRejected(400, "The request body is not valid JSON.")
                if api_key is None and self.require_api_key:
                    raise RequestRejected(401, "No API key provided.")
                self._check_request(request, body)
            except RequestRejected as rejected:
                return self._error_response(record, rejected.fault)
            return await answer(request, _Call(body, record, fault, identity, model_name))
        finally:
            self._in_flight[identity] -= 1

    def _error_response(
        self, record: RecordedRequest, fault: Fault, headers: dict[str, str] | None = None
    ) -> web.Response:
        status = fault.status or 500
        record.status = status
        if not fault.message:
            fault = replace(fault, message=_default_message(status))
        sent = {**(headers or {}), **self._error_headers(fault)}
        record.response_headers = {k.lower(): v for k, v in sent.items()}
        return web.Response(
            status=status,
            body=json.dumps(self._error_body(fault)).encode(),
            content_type=JSON_TYPE,
            headers=sent,
        )

    def _admit_to_budget(
        self, call: _Call, needs: dict[str, int]
    ) -> tuple[dict[str, str], web.Response | None]:
        """Take the request's share of its key's budget: its headers, or a 429 to send."""
        budget = self._budgets.get(call.identity, self._budgets.get(None))
        if budget is None:
            return {}, None
        verdict: Verdict = budget.take(call.identity, needs)
        headers = self._rate_headers(verdict.readings, budget.wall())
        if verdict.exceeded is None:
            return headers, None
        error = self._budget_error(verdict.exceeded, call.model)
        return headers, self._error_response(call.record, error, headers)

    def _use_prompt_cache(self, call: _Call, conversation: Conversation) -> CacheUse:
        if not self.prompt_cache_enabled:
            return NO_CACHE
        root = [call.model, conversation.tools]
        chain = prompt_segments(root, conversation.message_texts, conversation.message_tokens())
        return self.prompt_cache.use(call.identity, chain, conversation.cache_breakpoint)

    async def _answer_chat(self, request: web.Request, call: _Call) -> web.StreamResponse:
        body, record, fault = call.body, call.record, call.fault
        try:
            conversation = self._conversation(body)
        except RequestRejected as rejected:
            return self._error_response(record, rejected.fault)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return self._error_response(record, _bad_request(f"Malformed request: {exc!r}"))
        reply = resolve_reply(body, conversation, self._responder, self.reply_text)
        prompt, completion = prompt_tokens(conversation), completion_tokens(reply)
        needs = {
            "requests": 1,
            "tokens": prompt + completion,
            "input_tokens": prompt,
            "output_tokens": completion,
        }
        headers, refused = self._admit_to_budget(call, needs)
        if refused is not None:
            return refused
        cache = self._use_prompt_cache(call, conversation)
        usage = self._usage(prompt, completion, cache)
        record.prompt_tokens, record.completion_tokens = prompt, completion
        record.cached_tokens = cache.read
        record.usage = usage
        record.status = 200
        record.response_headers = headers
        if not record.stream:
            if fault is not None and fault.malformed:
                return web.Response(body=_MALFORMED_BODY, content_type=JSON_TYPE, headers=headers)
            if fault is not None and fault.cut_after is not None:
                return drop(request)
            payload = json.dumps(self._chat_body(body, call.model, reply, usage)).encode()
            if fault is not None and fault.cut_body:
                return await write_cut_body(request, payload, headers)
            return web.Response(body=payload, content_type=JSON_TYPE, headers=headers)
        frames = self._chat_frames(body, call.model, reply, usage)
        if fault is not None and fault.malformed:
            frames = [(self._malformed_frame(), True)]
        return await write_stream(request, frames, fault, headers)

    async def _answer_embeddings(self, request: web.Request, call: _Call) -> web.StreamResponse:
        body, record, fault = call.body, call.record, call.fault
        try:
            texts = self._embedding_texts(body)
        except RequestRejected as rejected:
            return self._error_response(record, rejected.fault)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return self._error_response(record, _bad_request(f"Malformed request: {exc!r}"))
        if not texts:
            return self._error_response(record, _bad_request("The input must not be empty."))
        if len(texts) > self.max_batch:
            message = f"Too many inputs: {len(texts)} > the limit of {self.max_batch} per request."
            return self._error_response(record, _bad_request(message))
        tokens = sum(count_words(text) for text in texts)
        headers, refused = self._admit_to_budget(
            call, {"requests": 1, "tokens": tokens, "input_tokens": tokens}
        )
        if refused is not None:
            return refused
        dimensions = self._embedding_dimensions(body) or self.dimensions
        vectors = [embedding_vector(text, dimensions) for text in texts]
        record.prompt_tokens = tokens
        record.usage = self._embedding_usage(tokens)
        record.status = 200
        record.response_headers = headers
        if fault is not None and fault.malformed:
            return web.Response(body=_MALFORMED_BODY, content_type=JSON_TYPE, headers=headers)
        payload = json.dumps(self._embedding_body(body, call.model, vectors, tokens)).encode()
        if fault is not None and fault.cut_body:
            return await write_cut_body(request, payload, headers)
        return web.Response(body=payload, content_type=JSON_TYPE, headers=headers)


def _bad_request(message: str) -> Fault:
    return Fault(status=400, message=message)


def _seconds(value: float) -> str:
    value = round(float(value), 3)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _default_message(status: int) -> str:
    return {
        400: "Invalid request.",
        401: "Invalid API key.",
        402: "Payment required.",
        403: "Permission denied.",
        404: "Not found.",
        429: "Rate limit exceeded.",
        500: "Internal server error.",
        503: "Service unavailable.",
        529: "Overloaded.",
    }.get(status, f"HTTP {status}")
