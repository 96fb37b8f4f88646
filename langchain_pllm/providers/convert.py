"""Vendor-neutral pieces of message and parameter conversion shared by the providers.

LangChain hands every provider the same things: messages whose content is a string or a list of
content blocks (in several historical spellings: OpenAI ``image_url`` parts, v0 ``source_type``
blocks, v1 ``base64``/``url`` blocks), tools in OpenAI's function format, ``tool_choice`` as the
face normalises it and ``response_format`` dicts. This module reads those shapes once into small
plain values (``Media``, ``ToolChoice``, ``JsonFormat``) that each vendor module then writes in
its own wire format, and builds ``UsageMetadata`` and tool-call ids the same way for all. The
Chat Completions message format is here too (``to_openai_messages``): OpenAI and the vendors
speaking it (SiliconFlow, DeepSeek) and Zhipu, whose API copies it, all write it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import InputTokenDetails, OutputTokenDetails, UsageMetadata
from langchain_core.messages.utils import convert_to_openai_messages

__all__ = [
    "CONTENT_FILTER",
    "LENGTH",
    "MEDIA_KINDS",
    "STOP",
    "TOOL_CALLS",
    "TRANSLATED_PARAMS",
    "JsonFormat",
    "Media",
    "ToolChoice",
    "block_text",
    "error_object",
    "json_format_of",
    "make_usage",
    "media_kinds_in",
    "media_of",
    "openai_function_of",
    "stable_tool_call_id",
    "stop_sequences",
    "text_of",
    "to_openai_messages",
    "tool_choice_of",
    "tool_names_by_id",
    "tool_result_text",
]

# Unified finish-reason vocabulary (OpenAI's), the value every provider reports.
STOP = "stop"
LENGTH = "length"
TOOL_CALLS = "tool_calls"
CONTENT_FILTER = "content_filter"

TRANSLATED_PARAMS = frozenset(
    {
        "model",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
    }
)
"""Call parameters a provider writes in its vendor's own terms instead of passing them on."""

_TOOL_CALL_NAMESPACE = uuid.UUID("5f0c7a4e-8d2b-4a57-9a51-3c1f6a0e2b7d")


def text_of(content: str | Sequence[Any]) -> str:
    """The text of message content: the string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    return "".join(block_text(b) for b in content)


def block_text(block: Any) -> str:
    """Text carried by one content block ('' for non-text blocks)."""
    if isinstance(block, str):
        return block
    if isinstance(block, Mapping) and block.get("type", "text") == "text":
        return str(block.get("text", ""))
    return ""


def to_openai_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages to Chat Completions dicts, with a fast path for plain text.

    An assistant message is sent as its text and its tool calls only: a history may hold
    another vendor's reply (Anthropic ``thinking`` and ``tool_use`` blocks, Gemini parts), and
    the Chat Completions API refuses assistant content parts other than text.
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, AIMessage):
            if isinstance(m.content, str) and not m.tool_calls and m.name is None:
                out.append({"role": "assistant", "content": m.content})
            else:
                text_only = m.model_copy(update={"content": text_of(m.content)})
                out.extend(convert_to_openai_messages([text_only]))
        elif m.name is None and isinstance(m.content, str) and type(m) in _SIMPLE_ROLES:
            out.append({"role": _SIMPLE_ROLES[type(m)], "content": m.content})
        else:
            for converted in convert_to_openai_messages([m]):
                out.append(_url_objects(converted))
    return out


def _url_objects(message: dict[str, Any]) -> dict[str, Any]:
    """``image_url`` parts with their URL as an object, as the Chat Completions API wants.

    LangChain passes ``{"type": "image_url", "image_url": "https://..."}`` (a bare string)
    through unchanged; OpenAI refuses it with a 400 and ``zhipuai``'s sync client crashes on it.
    """
    content = message.get("content")
    if isinstance(content, list):
        for part in content:
            if (
                isinstance(part, dict)
                and part.get("type") == "image_url"
                and isinstance(part.get("image_url"), str)
            ):
                part["image_url"] = {"url": part["image_url"]}
    return message


# Messages that are only a role and a string, written without LangChain's general converter.
_SIMPLE_ROLES: dict[type, str] = {HumanMessage: "user", SystemMessage: "system"}


def tool_result_text(message: ToolMessage) -> str:
    """A tool result as text: the string content, or the text of its blocks, else JSON."""
    content = message.content
    if isinstance(content, str):
        return content
    text = text_of(content)
    if text or not content:
        return text
    return json.dumps(content, default=str)


@dataclass(frozen=True, slots=True)
class Media:
    """An image or file from a content block, as data or as a URL.

    Attributes:
        kind: ``"image"`` or ``"file"`` (PDFs and other documents).
        mime_type: Declared or inferred MIME type, ``None`` if unknown.
        data: Base64 text of the bytes, for inline media.
        url: An http(s) (or vendor file) URL, for referenced media.
    """

    kind: str
    mime_type: str | None
    data: str | None = None
    url: str | None = None


def _from_url(kind: str, url: str, mime_type: str | None) -> Media:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        declared = header[5:].split(";", 1)[0] or None
        return Media(kind, declared or mime_type, data=data)
    return Media(kind, mime_type or _guess_mime(url), url=url)


def _guess_mime(url: str) -> str | None:
    import mimetypes

    guessed, _ = mimetypes.guess_type(url.split("?", 1)[0])
    return guessed


MEDIA_KINDS = ("image", "file", "audio", "video")
"""The kinds of media block ``media_of`` reads (a provider's ``media_kinds`` names a subset)."""


def media_of(block: Any) -> Media | None:
    """Read a media block in any LangChain spelling; ``None`` if it is none.

    Accepted: OpenAI ``{"type": "image_url", "image_url": {"url": ...}}`` (data or http URLs,
    the URL also as a bare string), Anthropic's own ``{"type": "image"|"document", "source":
    {"type": "base64", "media_type", "data"} | {"type": "url", "url"}}``, v1
    ``{"type": "image"|"file"|"audio"|"video", "base64"|"url": ..., "mime_type": ...}`` and v0
    ``{"type": ..., "source_type": "base64"|"url", "data"|"url": ...}``.
    """
    if not isinstance(block, Mapping):
        return None
    kind = block.get("type")
    if kind == "image_url":
        ref = block.get("image_url")
        url = ref.get("url") if isinstance(ref, Mapping) else ref
        return _from_url("image", str(url), None) if url else None
    source = block.get("source")
    if kind in ("image", "document") and isinstance(source, Mapping):
        target = "image" if kind == "image" else "file"
        if source.get("type") == "base64" and source.get("data"):
            return Media(target, source.get("media_type"), data=str(source["data"]))
        if source.get("type") == "url" and source.get("url"):
            return _from_url(target, str(source["url"]), source.get("media_type"))
        return None
    if kind not in MEDIA_KINDS:
        return None
    mime = block.get("mime_type")
    if block.get("base64"):
        return Media(kind, mime, data=str(block["base64"]))
    source_type = block.get("source_type")
    if source_type == "base64" and block.get("data"):
        return Media(kind, mime, data=str(block["data"]))
    if block.get("url") and source_type in (None, "url"):
        return _from_url(kind, str(block["url"]), mime)
    return None


def openai_function_of(tool: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``function`` part of an OpenAI-format tool dict; ``None`` for other tool shapes."""
    if tool.get("type") == "function" and isinstance(tool.get("function"), Mapping):
        return dict(tool["function"])
    return None


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """A tool choice read from LangChain's forms.

    Attributes:
        mode: ``"auto"``, ``"none"``, ``"required"`` (some tool) or ``"tool"`` (a named one).
        name: The tool's name when ``mode`` is ``"tool"``.
    """

    mode: str
    name: str | None = None


def tool_choice_of(choice: Any) -> ToolChoice | None:
    """Read ``tool_choice`` as the face sets it (or as a user passes it); ``None`` if unknown."""
    if choice is None or choice is False:
        return None
    if isinstance(choice, str):
        if choice in ("auto", "none"):
            return ToolChoice(choice)
        if choice in ("required", "any"):
            return ToolChoice("required")
        return ToolChoice("tool", choice)
    if isinstance(choice, Mapping):
        fn = choice.get("function")
        if isinstance(fn, Mapping) and fn.get("name"):
            return ToolChoice("tool", str(fn["name"]))
        kind = choice.get("type")
        if kind == "tool" and choice.get("name"):  # Anthropic spelling
            return ToolChoice("tool", str(choice["name"]))
        if kind == "any":
            return ToolChoice("required")
        if kind in ("auto", "none"):
            return ToolChoice(str(kind))
    return None


@dataclass(frozen=True, slots=True)
class JsonFormat:
    """A JSON ``response_format``: the schema (``None`` for plain JSON mode) and its name."""

    schema: dict[str, Any] | None
    name: str


def json_format_of(response_format: Any) -> JsonFormat | None:
    """Read OpenAI's ``response_format``; ``None`` for text or an unknown shape."""
    if not isinstance(response_format, Mapping):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return JsonFormat(None, "json_output")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") or {"type": "object"}
        return JsonFormat(dict(schema), str(spec.get("name") or "json_output"))
    return None


def stop_sequences(stop: Any) -> list[str]:
    """``stop`` as a list of strings (LangChain allows a bare string)."""
    if not stop:
        return []
    if isinstance(stop, str):
        return [stop]
    return [str(s) for s in stop]


def error_object(body: Any) -> Mapping[str, Any]:
    """The ``error`` object of a vendor's error body (or the body itself, or ``{}``)."""
    if not isinstance(body, Mapping):
        return {}
    error = body.get("error")
    return error if isinstance(error, Mapping) else body


def tool_names_by_id(messages: Iterable[BaseMessage]) -> dict[str, str]:
    """Tool-call id to tool name over the AI messages of a history."""
    names: dict[str, str] = {}
    for m in messages:
        if isinstance(m, AIMessage):
            for tc in m.tool_calls:
                if tc.get("id"):
                    names[str(tc["id"])] = tc["name"]
    return names


def stable_tool_call_id(response_id: str | None, index: int, name: str) -> str:
    """An id for a vendor that gives its tool calls none (Gemini).

    Derived from the response id and the call's position, so a streamed reply and its
    chunks agree; random when the vendor gives no response id either.
    """
    if not response_id:
        return f"call_{uuid.uuid4().hex[:24]}"
    return f"call_{uuid.uuid5(_TOOL_CALL_NAMESPACE, f'{response_id}:{index}:{name}').hex[:24]}"


def make_usage(
    input_tokens: int,
    output_tokens: int,
    total_tokens: int | None = None,
    *,
    cache_read: int | None = None,
    cache_creation: int | None = None,
    reasoning: int | None = None,
) -> UsageMetadata:
    """``UsageMetadata`` with the optional details only where the vendor reported them."""
    usage = UsageMetadata(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total_tokens if total_tokens is not None else input_tokens + output_tokens,
    )
    if cache_read or cache_creation:  # tested first: most replies report neither
        inputs = InputTokenDetails()
        if cache_read:
            inputs["cache_read"] = cache_read
        if cache_creation:
            inputs["cache_creation"] = cache_creation
        usage["input_token_details"] = inputs
    if reasoning:
        usage["output_token_details"] = OutputTokenDetails(reasoning=reasoning)
    return usage


def media_kinds_in(messages: Sequence[BaseMessage]) -> frozenset[str]:
    """The kinds of media the caller's messages hold (assistant history is not counted).

    A plain-text conversation costs one ``isinstance`` a message.
    """
    kinds: set[str] = set()
    for m in messages:
        content = m.content
        if isinstance(content, str) or isinstance(m, AIMessage):
            continue
        for block in content:
            media = media_of(block)
            if media is not None:
                kinds.add(media.kind)
    return frozenset(kinds)
