"""How a fake server's bytes leave: SSE frames, and replies cut short on purpose.

A stream is a list of ``Frame``s written in one go, or one by one when a ``Fault`` slows it
(``chunk_delay``) or resets it after some content frames (``cut_after``). A non-streamed reply can
be reset after its headers and half its body (``cut_body``), or dropped before any byte.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from langchain_pllm.testing.faults import Fault

#: One stream frame: its bytes, and whether it carries content (what `Fault.cut_after` counts).
Frame = tuple[bytes, bool]

JSON_TYPE = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


async def write_stream(
    request: web.Request, frames: list[Frame], fault: Fault | None, headers: dict[str, str]
) -> web.StreamResponse:
    """Send SSE frames; a fault may slow the content frames or reset the connection midway."""
    response = web.StreamResponse(headers={**_SSE_HEADERS, **headers})
    await response.prepare(request)
    cut_after = fault.cut_after if fault is not None else None
    delay = fault.chunk_delay if fault is not None else 0.0
    if cut_after is None and not delay:
        # One write: the SDKs parse frames, not packets, and fewer syscalls keep it fast.
        await response.write(b"".join(frame for frame, _ in frames))
        await response.write_eof()
        return response
    sent = 0
    for frame, is_content in frames:
        if is_content:
            if cut_after is not None and sent >= cut_after:
                break
            if delay:
                await asyncio.sleep(delay)
            sent += 1
        await response.write(frame)
    else:
        await response.write_eof()
        return response
    await asyncio.sleep(0)  # let the written chunks leave before the reset
    if request.transport is not None:
        request.transport.abort()
    return response


async def write_cut_body(
    request: web.Request, payload: bytes, headers: dict[str, str]
) -> web.StreamResponse:
    """Send the headers (announcing the whole body) and half the body, then reset."""
    response = web.StreamResponse(headers={"Content-Type": JSON_TYPE, **headers})
    response.content_length = len(payload)
    await response.prepare(request)
    await response.write(payload[: len(payload) // 2])
    await asyncio.sleep(0)  # let the half body leave before the reset
    if request.transport is not None:
        request.transport.abort()
    return response


def drop(request: web.Request) -> web.Response:
    """Close the connection with no response at all."""
    if request.transport is not None:
        request.transport.abort()
    # aiohttp notices the closed transport and writes nothing.
    return web.Response(status=599)


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    """Encode one server-sent event frame."""
    text = data if isinstance(data, str) else json.dumps(data)
    if event is None:
        return f"data: {text}\n\n".encode()
    return f"event: {event}\ndata: {text}\n\n".encode()
