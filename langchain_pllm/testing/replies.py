"""Vendor-neutral reply generation for the fake servers.

Each vendor server turns its request body into a ``Conversation`` (texts of the messages, the
offered tools, the structured-output schema), and this module decides the answer: a scripted
``Reply``, or the deterministic default (echo the last user message, call a tool with arguments
synthesized from its JSON schema, or produce JSON matching a response schema). Token counts and
embedding vectors are deterministic too, so tests can predict every number a server reports.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

#: Tokens charged per message on top of its words, like the vendors' own framing overhead.
TOKENS_PER_MESSAGE = 3

_PIECE_RE = re.compile(r"\s*\S+\s*")


@dataclass
class Reply:
    """A scripted answer.

    Attributes:
        text: Assistant text, or ``None`` for none.
        tool_calls: ``(tool_name, arguments)`` pairs the assistant calls.
        finish_reason: Neutral ``"stop"``, ``"length"``, ``"tool_calls"``, or a vendor's own value
            (passed through). ``None`` picks ``"tool_calls"`` when there are tool calls, else
            ``"stop"``.
        call_ids: Ids for the tool calls, in order, for a test that must know them; by
            default each is derived from the reply's unique id.
    """

    text: str | None = None
    tool_calls: list[tuple[str, dict[str, Any]]] | None = None
    finish_reason: str | None = None
    call_ids: list[str] | None = None

    def call_id(self, index: int, default: str) -> str:
        """The id of tool call ``index``: the scripted one, else ``default``."""
        if self.call_ids is not None and index < len(self.call_ids):
            return self.call_ids[index]
        return default

    def resolved_finish_reason(self) -> str:
        """The finish reason to report, filled in when the script left it out."""
        if self.finish_reason:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"


#: What `set_responder` accepts: body -> a `Reply`, plain text, or `None` for the default.
Responder = Callable[[dict[str, Any]], "Reply | str | None"]


@dataclass
class Conversation:
    """The vendor-neutral view of a chat request that the default reply needs.

    Attributes:
        message_texts: The text found in each message (system prompt included), in order.
        last_user_text: Text of the last user message.
        tools: ``(name, json_schema)`` of each offered tool.
        forced_tool: Name of the tool the request forces, if it forces one.
        tool_required: The request demands some tool call (e.g. OpenAI "required").
        tool_result: Content of the last message when it is a tool result, else ``None``.
        response_schema: JSON schema the reply text must satisfy, if any.
        json_mode: The reply text must be a JSON object; when a message carries a JSON
            schema (as clients without a schema mode send it), the object fits that schema.
        cache_breakpoint: How many leading messages (system prompt included) a prompt cache
            may hold, for vendors that cache only up to a marker (Anthropic's
            ``cache_control``); ``None`` when the vendor caches any prefix.
    """

    message_texts: list[str] = field(default_factory=list)
    last_user_text: str = ""
    tools: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    forced_tool: str | None = None
    tool_required: bool = False
    tool_result: str | None = None
    response_schema: dict[str, Any] | None = None
    json_mode: bool = False
    cache_breakpoint: int | None = None

    def message_tokens(self) -> list[int]:
        """Token count of each message, as ``prompt_tokens`` adds them up."""
        return [count_words(t) + TOKENS_PER_MESSAGE for t in self.message_texts]


def count_words(text: str) -> int:
    """Number of whitespace-separated words: the fake servers' token count."""
    return len(text.split())


def prompt_tokens(conversation: Conversation) -> int:
    """Prompt token count reported for a conversation."""
    return sum(conversation.message_tokens())


def completion_tokens(reply: Reply) -> int:
    """Completion token count reported for a reply (text words plus tool-call words)."""
    total = count_words(reply.text) if reply.text else 0
    for _name, args in reply.tool_calls or ():
        total += 1 + count_words(json.dumps(args))
    return total


def default_reply(conversation: Conversation) -> Reply:
    """The deterministic answer when no script is set."""
    if conversation.tools and conversation.tool_result is None:
        tools = dict(conversation.tools)
        name = conversation.forced_tool if conversation.forced_tool in tools else None
        name = name or conversation.tools[0][0]
        return Reply(tool_calls=[(name, synthesize(tools[name]))])
    if conversation.tool_result is not None:
        return Reply(text=f"result: {conversation.tool_result}")
    if conversation.response_schema is not None:
        return Reply(text=json.dumps(synthesize(conversation.response_schema)))
    if conversation.json_mode:
        schema = schema_in_texts(conversation.message_texts)
        if schema is not None:
            return Reply(text=json.dumps(synthesize(schema)))
        return Reply(text=json.dumps({"echo": conversation.last_user_text}))
    return Reply(text=f"echo: {conversation.last_user_text}")


def resolve_reply(
    body: dict[str, Any],
    conversation: Conversation,
    responder: Responder | None,
    reply_text: str | None,
) -> Reply:
    """Pick the reply: the responder's, else the fixed text, else the default."""
    if responder is not None:
        scripted = responder(body)
        if isinstance(scripted, Reply):
            return scripted
        if isinstance(scripted, str):
            return Reply(text=scripted)
    if reply_text is not None:
        return Reply(text=reply_text)
    return default_reply(conversation)


def synthesize(schema: dict[str, Any], defs: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """Build a value that satisfies a JSON schema (the subset tools and SDKs produce).

    Args:
        schema: A JSON schema; Gemini's upper-case type names are accepted too.
        defs: ``$defs`` of the root schema, for ``$ref`` resolution.
        depth: Recursion depth, bounded so self-referencing schemas still terminate.

    Returns:
        Strings become "x", integers 1, numbers 1.5, booleans true, arrays empty, objects
        their required properties (all properties when none is marked required), enums their
        first value.
    """
    if defs is None:
        defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    if "$ref" in schema:
        target = defs.get(schema["$ref"].rsplit("/", 1)[-1])
        return synthesize(target, defs, depth + 1) if target and depth < 8 else {}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema and schema["default"] is not None:
        return schema["default"]
    for combiner in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(combiner, ()) if _type_of(o) != "null"]
        if options:
            return synthesize(options[0], defs, depth + 1)
    kind = _type_of(schema)
    if kind == "string":
        return _STRING_FORMATS.get(schema.get("format", ""), "x")
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return max(1.5, float(schema.get("minimum", 1.5)))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        items = schema.get("items")
        count = int(schema.get("minItems", 0))
        if isinstance(items, dict) and depth < 8:
            return [synthesize(items, defs, depth + 1) for _ in range(count)]
        return []
    properties = schema.get("properties") or {}
    if not properties or depth >= 8:
        return {}
    names = schema.get("required") or list(properties)
    return {n: synthesize(properties[n], defs, depth + 1) for n in names if n in properties}


def schema_in_texts(texts: list[str]) -> dict[str, Any] | None:
    """The first JSON schema written inside any of ``texts`` (a JSON object with ``properties``).

    Clients of vendors without a schema mode (Zhipu) send JSON mode plus the schema in the
    prompt; the fake answers with an object that fits it, as the real model is asked to.
    """
    decoder = json.JSONDecoder()
    for text in texts:
        start = text.find("{")
        while start != -1:
            try:
                value, _end = decoder.raw_decode(text, start)
            except ValueError:
                value = None
            if isinstance(value, dict) and isinstance(value.get("properties"), dict):
                return value
            start = text.find("{", start + 1)
    return None


_STRING_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "x@example.com",
    "uri": "http://example.com",
    "uuid": "00000000-0000-0000-0000-000000000000",
}


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    if kind is None:
        # An untyped schema accepts anything; an object also fits where properties are expected.
        textual = {"format", "pattern", "minLength", "maxLength"}
        return "string" if textual & schema.keys() else "object"
    return str(kind).lower()


def text_pieces(text: str) -> list[str]:
    """Split text into stream chunks, one per word, that join back to exactly ``text``."""
    pieces = _PIECE_RE.findall(text)
    return pieces if "".join(pieces) == text else [text]


def json_pieces(arguments: str) -> list[str]:
    """Split a JSON string into a few fragments, as vendors stream tool-call arguments."""
    if len(arguments) <= 4:
        return [arguments]
    step = max(1, len(arguments) // 3)
    return [arguments[i : i + step] for i in range(0, len(arguments), step)]


@lru_cache(maxsize=4096)
def embedding_vector(text: str, dimensions: int) -> tuple[float, ...]:
    """A deterministic unit vector derived from a hash of the text."""
    raw = b""
    counter = 0
    while len(raw) < dimensions * 4:
        raw += hashlib.blake2b(f"{counter}:{text}".encode(), digest_size=64).digest()
        counter += 1
    ints = struct.unpack(f"<{dimensions}I", raw[: dimensions * 4])
    values = [i / 2147483647.5 - 1.0 for i in ints]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return tuple(v / norm for v in values)


def embedding_base64(vector: tuple[float, ...]) -> str:
    """Little-endian float32 bytes of a vector, base64-encoded (OpenAI's wire form)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
