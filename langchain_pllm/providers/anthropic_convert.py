"""Anthropic's Messages API wire format: LangChain requests in, ``AIMessage`` and chunks out.

LangChain messages become Messages-API turns: system prompts go to ``system=``, tool results
become ``tool_result`` blocks in a user turn, tool calls ``tool_use`` blocks, and consecutive
turns of one role are merged (the API wants user and assistant to alternate). Parameters the
installed SDK's ``messages.create`` does not take (anthropic 2.14 has no ``temperature``,
``top_p`` or ``top_k``) are dropped with one warning per provider. Anthropic has no portable
JSON mode (its ``output_config.format`` exists only for recent models), so a JSON
``response_format`` becomes a forced call of a tool whose input schema is the wanted schema, and
that call's arguments come back as the reply's JSON text. Replies are shaped as LangChain's
``ChatAnthropic`` shapes them, because ``model_provider="anthropic"`` makes langchain_core read
them with its Anthropic block translator: a plain string when the reply is only text, otherwise
a list of Anthropic's own blocks (``text``, ``thinking``, ``tool_use``) beside ``tool_calls``.
A stream that may carry more than text (tools offered, or thinking on) is list content from its
first chunk, each block tagged with its ``index`` so chunks merge block by block. Streams report
usage once, at the end: ``message_start`` and ``message_delta`` both carry counts and adding
them double-counts. The SDK calls and their errors are ``providers.anthropic``'s.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import anthropic
from langchain_core.exceptions import ModelRefusalError
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call, tool_call_chunk

from langchain_pllm.exceptions import InvalidCallError, model_error
from langchain_pllm.providers.convert import (
    CONTENT_FILTER,
    LENGTH,
    STOP,
    TOOL_CALLS,
    TRANSLATED_PARAMS,
    JsonFormat,
    json_format_of,
    make_usage,
    media_of,
    openai_function_of,
    stop_sequences,
    tool_choice_of,
    tool_result_text,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "AnthropicStreamReader",
    "finish_reason_of",
    "message_of",
    "request_payload",
    "to_anthropic_messages",
    "usage_of",
]

DEFAULT_MAX_TOKENS = 1024
"""Anthropic requires ``max_tokens``; this is sent when the caller gives none."""

# What the installed SDK's messages.create takes; anything else is dropped with a warning.
_CREATE_PARAMS = frozenset(inspect.signature(anthropic.resources.Messages.create).parameters) - {
    "self",
    "messages",
    "stream",
}

_FINISH_REASONS = {
    "end_turn": STOP,
    "stop_sequence": STOP,
    "pause_turn": STOP,
    "max_tokens": LENGTH,
    "model_context_window_exceeded": LENGTH,
    "tool_use": TOOL_CALLS,
    "refusal": CONTENT_FILTER,
}

_JSON_TOOL_DESCRIPTION = "Give the answer as this tool's input; it must match the input schema."


# Messages --------------------------------------------------------------------------------------


def _blocks_in(content: str | Sequence[Any]) -> Iterator[Mapping[str, Any]]:
    """The blocks of LangChain content; a string, whole or in the list, is a text block."""
    for block in [content] if isinstance(content, str) else content:
        if isinstance(block, str):
            if block:
                yield {"type": "text", "text": block}
        elif isinstance(block, Mapping):
            yield block


def _content_blocks(content: str | Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain content as Anthropic content blocks (text, image, document)."""
    blocks: list[dict[str, Any]] = []
    for block in _blocks_in(content):
        kind = block.get("type")
        if kind == "text":
            if block.get("text"):
                out: dict[str, Any] = {"type": "text", "text": block["text"]}
                if block.get("cache_control"):
                    out["cache_control"] = block["cache_control"]
                blocks.append(out)
            continue
        if kind in ("image", "document") and isinstance(block.get("source"), Mapping):
            blocks.append(dict(block))  # already in Anthropic's own form
            continue
        media = media_of(block)
        if media is not None and media.kind not in ("image", "file"):
            # The face routes such a call to vendors that take it; reaching here means a caller
            # used the provider directly: say so rather than drop the block.
            raise InvalidCallError(f"Anthropic takes no {media.kind} blocks; remove the block")
        if media is not None:
            target = "image" if media.kind == "image" else "document"
            if media.data is not None:
                source: dict[str, Any] = {
                    "type": "base64",
                    "media_type": media.mime_type or ("image/png" if target == "image" else ""),
                    "data": media.data,
                }
            else:
                source = {"type": "url", "url": media.url}
            blocks.append({"type": target, "source": source})
    return blocks


def _assistant_blocks(message: AIMessage) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    own_reply = message.response_metadata.get("model_provider") == "anthropic"
    for block in _blocks_in(message.content):
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            blocks.append({"type": "text", "text": block["text"]})
        elif kind == "thinking" and block.get("signature"):
            # Sent back unchanged (the signature vouches for it) before the tool use.
            blocks.append(
                {
                    "type": "thinking",
                    "thinking": block.get("thinking", ""),
                    "signature": block["signature"],
                }
            )
        elif kind == "redacted_thinking" and block.get("data"):
            blocks.append({"type": "redacted_thinking", "data": block["data"]})
        elif kind == "reasoning" and own_reply:
            # The v1 spelling of a thinking block keeps the signature in its extras.
            signature = (block.get("extras") or {}).get("signature")
            if signature:
                blocks.append(
                    {
                        "type": "thinking",
                        "thinking": block.get("reasoning", ""),
                        "signature": signature,
                    }
                )
        # tool_use (and v1 tool_call) blocks are skipped: tool_calls is the one source of
        # the calls, so a call is never sent twice.
    for tc in message.tool_calls:
        blocks.append(
            {"type": "tool_use", "id": tc["id"] or "", "name": tc["name"], "input": tc["args"]}
        )
    return blocks


def _tool_result_block(message: ToolMessage) -> dict[str, Any]:
    content = message.content
    result: Any
    if isinstance(content, str):
        result = content
    else:
        result = _content_blocks(content) or tool_result_text(message)
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": message.tool_call_id,
        "content": result,
    }
    if message.status == "error":
        block["is_error"] = True
    return block


def to_anthropic_messages(
    messages: Sequence[BaseMessage],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """LangChain messages to ``(system blocks, messages)`` for the Messages API.

    Every system message, wherever it stands, joins the top-level system prompt; turns of the
    same role are merged into one, tool results first.
    """
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            system.extend(_content_blocks(m.content))
            continue
        if isinstance(m, AIMessage):
            role, blocks = "assistant", _assistant_blocks(m)
        elif isinstance(m, ToolMessage):
            role, blocks = "user", [_tool_result_block(m)]
        else:
            role, blocks = "user", _content_blocks(m.content)
        if not blocks:
            continue  # the API refuses empty turns
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        # Tool results must open a user turn.
        if turn["role"] == "user" and len(turn["content"]) > 1:
            turn["content"].sort(key=lambda b: b.get("type") != "tool_result")
    return system, turns


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    fn = openai_function_of(tool)
    if fn is None:
        return dict(tool)  # already Anthropic's form, or a server tool
    out: dict[str, Any] = {
        "name": fn["name"],
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }
    if fn.get("description"):
        out["description"] = fn["description"]
    if fn.get("strict") is not None:
        out["strict"] = fn["strict"]
    return out


def request_payload(
    params: Mapping[str, Any],
    messages: Sequence[BaseMessage],
    *,
    model: str,
    provider_id: str,
    warn_once: Callable[[str, str], None],
) -> tuple[dict[str, Any], JsonFormat | None]:
    """The ``messages.create`` arguments (the provider adds the timeout) and the JSON format.

    A parameter the SDK does not take is reported through ``warn_once(parameter, message)``.
    The JSON format returned is what a forced tool call stands for, ``None`` if none is asked.
    """
    system, turns = to_anthropic_messages(messages)
    payload: dict[str, Any] = {
        "model": params.get("model") or model,
        "messages": turns,
        "max_tokens": params.get("max_tokens")
        or params.get("max_completion_tokens")
        or DEFAULT_MAX_TOKENS,
    }
    if system:
        payload["system"] = system
    for key, value in params.items():
        if value is None or key in TRANSLATED_PARAMS:
            continue
        if key in _CREATE_PARAMS:
            payload[key] = value
        else:
            warn_once(
                key,
                f"{provider_id}: the Anthropic SDK's messages.create takes no {key!r}; "
                "it is not sent",
            )
    stop = stop_sequences(params.get("stop"))
    if stop:
        payload["stop_sequences"] = stop
    tools = [_tool(t) for t in params.get("tools") or ()]
    choice = tool_choice_of(params.get("tool_choice"))
    json_format = json_format_of(params.get("response_format"))
    if json_format is not None:
        schema = json_format.schema or {"type": "object", "additionalProperties": True}
        tools.append(
            {
                "name": json_format.name,
                "description": _JSON_TOOL_DESCRIPTION,
                "input_schema": schema,
            }
        )
        payload["tool_choice"] = {"type": "tool", "name": json_format.name}
    elif tools and choice is not None:
        if choice.mode == "tool":
            payload["tool_choice"] = {"type": "tool", "name": choice.name}
        elif choice.mode == "required":
            payload["tool_choice"] = {"type": "any"}
        else:
            payload["tool_choice"] = {"type": choice.mode}
    if tools:
        payload["tools"] = tools
        if params.get("parallel_tool_calls") is False:
            payload.setdefault("tool_choice", {"type": "auto"})
            if payload["tool_choice"]["type"] != "none":
                payload["tool_choice"] = {
                    **payload["tool_choice"],
                    "disable_parallel_tool_use": True,
                }
    return payload, json_format


# Replies ---------------------------------------------------------------------------------------


def usage_of(start: Any, end: Any = None) -> UsageMetadata | None:
    """Usage from a message's counts, or from a stream's first and last counts.

    Args:
        start: The ``usage`` of a message, or of a stream's ``message_start``.
        end: The ``usage`` of a stream's last ``message_delta``, if any.

    Returns:
        LangChain's usage, cached input counted as input; ``None`` without counts.
    """
    if start is None and end is None:
        return None
    last = end if end is not None else start

    def pick(name: str) -> int:
        value = _field(last, name)
        if value is None and start is not None:
            value = _field(start, name)
        return int(value or 0)

    cache_read = pick("cache_read_input_tokens")
    cache_creation = pick("cache_creation_input_tokens")
    # Anthropic's input_tokens leaves out cached tokens; LangChain counts them as input.
    input_tokens = pick("input_tokens") + cache_read + cache_creation
    output_tokens = int(_field(last, "output_tokens") or 0)
    details = _field(last, "output_tokens_details")
    return make_usage(
        input_tokens,
        output_tokens,
        cache_read=cache_read,
        cache_creation=cache_creation,
        reasoning=_field(details, "thinking_tokens") if details else None,
    )


def _field(obj: Any, name: str) -> Any:
    # Counts come as the reply's JSON (a raw call) or as the SDK's stream event models.
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def finish_reason_of(
    stop_reason: str | None, json_format: JsonFormat | None, has_tool_calls: bool
) -> str | None:
    """Anthropic's ``stop_reason`` in the unified finish-reason vocabulary."""
    if stop_reason is None:
        return None
    finish = _FINISH_REASONS.get(stop_reason, stop_reason)
    if finish == TOOL_CALLS and not has_tool_calls and json_format is not None:
        return STOP  # the forced JSON tool became text
    return finish


def _refusal(provider_id: str, message: AIMessage) -> ModelRefusalError:
    err = model_error(
        ModelRefusalError,
        f"{provider_id}: the model refused to produce the structured output",
        provider=provider_id,
    )
    err.raw_message = message
    return err


def message_of(
    resp: Mapping[str, Any],
    json_format: JsonFormat | None,
    *,
    model_provider: str,
    provider_id: str,
) -> AIMessage:
    """A Messages API reply (its JSON) as an ``AIMessage``: a string when only text, else blocks.

    The forced JSON tool's call becomes the text; a refusal to give that JSON raises
    ``ModelRefusalError``.
    """
    blocks: list[dict[str, Any]] = []
    tool_calls = []
    only_text = True
    for block in resp["content"]:
        kind = block["type"]
        if kind == "text":
            out: dict[str, Any] = {"type": "text", "text": block["text"]}
            if block.get("citations"):
                out["citations"] = list(block["citations"])
                only_text = False
            blocks.append(out)
        elif kind == "tool_use":
            name, args = block["name"], block["input"]
            if json_format is not None and name == json_format.name:
                blocks.append({"type": "text", "text": json.dumps(args)})
                continue
            only_text = False
            blocks.append({"type": "tool_use", "id": block["id"], "name": name, "input": args})
            tool_calls.append(tool_call(name=name, args=args, id=block["id"]))
        elif kind == "thinking":
            only_text = False
            blocks.append(
                {"type": "thinking", "thinking": block["thinking"], "signature": block["signature"]}
            )
        elif kind == "redacted_thinking":
            only_text = False
            blocks.append({"type": "redacted_thinking", "data": block["data"]})
    stop_reason = resp.get("stop_reason")
    metadata: dict[str, Any] = {
        "finish_reason": finish_reason_of(stop_reason, json_format, bool(tool_calls)),
        "stop_reason": stop_reason,
        "model_name": resp["model"],
        "model_provider": model_provider,
        "id": resp["id"],
    }
    if resp.get("stop_sequence"):
        metadata["stop_sequence"] = resp["stop_sequence"]
    texts = [b["text"] for b in blocks if b["type"] == "text"]
    message = AIMessage(
        content="".join(texts) if only_text else list(blocks),
        tool_calls=tool_calls,
        usage_metadata=usage_of(resp.get("usage")),
        response_metadata=metadata,
        id=resp["id"],
    )
    if json_format is not None and stop_reason == "refusal" and not texts:
        raise _refusal(provider_id, message)
    return message


# Streams ---------------------------------------------------------------------------------------


def _may_answer_in_blocks(payload: Mapping[str, Any], json_format: JsonFormat | None) -> bool:
    """Whether a reply to ``payload`` may hold more than text (a tool call or thinking).

    A stream must choose its content's shape at its first chunk: a string and a list of blocks
    do not merge cleanly, so it is blocks from the start whenever anything but text may come.
    """
    json_tool = json_format.name if json_format is not None else None
    if any(tool.get("name") != json_tool for tool in payload.get("tools") or ()):
        return True
    thinking = payload.get("thinking")
    return isinstance(thinking, Mapping) and thinking.get("type") not in (None, "disabled")


class AnthropicStreamReader:
    """Turns the events of one Messages API stream into message chunks.

    One per stream: it holds what only the stream's end may report (usage, stop reason) and the
    content's shape, chosen before the first chunk from the payload sent.
    """

    def __init__(
        self,
        payload: Mapping[str, Any],
        json_format: JsonFormat | None,
        *,
        model_provider: str,
        provider_id: str,
    ) -> None:
        self.blocks = _may_answer_in_blocks(payload, json_format)
        self.json_format = json_format
        self.model_provider = model_provider
        self.provider_id = provider_id
        self.message_id: str | None = None
        self.usage_in: Any = None
        self.usage_out: Any = None
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.json_blocks: set[int] = set()  # indexes of the forced JSON tool's blocks
        self.has_tool_calls = False

    def chunk(self, event: Any) -> AIMessageChunk | None:
        """One stream event as a chunk, or ``None`` for an event that carries no content."""
        if event.type == "message_start":
            self.message_id = event.message.id
        chunk = self._chunk(event)
        if chunk is not None:
            chunk.id = self.message_id
        return chunk

    def last_chunk(self) -> AIMessageChunk:
        """The closing chunk: it carries the finish reason and the usage, each exactly once.

        Raises:
            ModelRefusalError: The model refused to give the JSON asked for.
        """
        metadata: dict[str, Any] = {"model_provider": self.model_provider}
        finish = finish_reason_of(self.stop_reason, self.json_format, self.has_tool_calls)
        if finish is not None:
            metadata["finish_reason"] = finish
            metadata["stop_reason"] = self.stop_reason
        if self.stop_sequence:
            metadata["stop_sequence"] = self.stop_sequence
        chunk = AIMessageChunk(
            content=[] if self.blocks else "",
            usage_metadata=usage_of(self.usage_in, self.usage_out),
            response_metadata=metadata,
            id=self.message_id,
        )
        refused = self.stop_reason == "refusal" and not self.json_blocks
        if self.json_format is not None and refused:
            raise _refusal(self.provider_id, AIMessage(content="", response_metadata=metadata))
        return chunk

    def _content_chunk(self, block: dict[str, Any], index: int, **kwargs: Any) -> AIMessageChunk:
        """A chunk carrying one piece of a content block (text as a string, if it may)."""
        if self.blocks:
            block["index"] = index
            content: str | list[str | dict[str, Any]] = [block]
        else:
            content = block.get("text", "") if block["type"] == "text" else ""
        return AIMessageChunk(
            content=content, response_metadata={"model_provider": self.model_provider}, **kwargs
        )

    def _chunk(self, event: Any) -> AIMessageChunk | None:
        kind = event.type
        if kind == "content_block_delta":
            delta = event.delta
            index = event.index
            if delta.type == "text_delta":
                return self._content_chunk({"type": "text", "text": delta.text}, index)
            if delta.type == "input_json_delta":
                if index in self.json_blocks:
                    piece = {"type": "text", "text": delta.partial_json}
                    return self._content_chunk(piece, index)
                return self._content_chunk(
                    {"type": "input_json_delta", "partial_json": delta.partial_json},
                    index,
                    tool_call_chunks=[
                        tool_call_chunk(args=delta.partial_json, index=index, id=None, name=None)
                    ],
                )
            if delta.type == "thinking_delta":
                piece = {"type": "thinking", "thinking": delta.thinking}
                return self._content_chunk(piece, index)
            if delta.type == "signature_delta":
                piece = {"type": "thinking", "signature": delta.signature}
                return self._content_chunk(piece, index)
            return None
        if kind == "content_block_start":
            block = event.content_block
            index = event.index
            if block.type == "text":
                if not block.text:
                    return None
                return self._content_chunk({"type": "text", "text": block.text}, index)
            if block.type == "tool_use":
                if self.json_format is not None and block.name == self.json_format.name:
                    self.json_blocks.add(index)
                    return None
                self.has_tool_calls = True
                return self._content_chunk(
                    {"type": "tool_use", "id": block.id, "name": block.name, "input": {}},
                    index,
                    tool_call_chunks=[
                        tool_call_chunk(name=block.name, args="", id=block.id, index=index)
                    ],
                )
            if block.type == "thinking":
                # The start holds the block's opening text, empty in practice; deltas follow.
                piece = {"type": "thinking", "thinking": block.thinking or ""}
                return self._content_chunk(piece, index)
            if block.type == "redacted_thinking":
                piece = {"type": "redacted_thinking", "data": block.data}
                return self._content_chunk(piece, index)
            return None
        if kind == "message_start":
            self.usage_in = event.message.usage
            return None
        if kind == "message_delta":
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            self.stop_sequence = event.delta.stop_sequence or self.stop_sequence
            if event.usage is not None:
                self.usage_out = event.usage
            return None
        return None
