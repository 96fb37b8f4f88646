"""Gemini's ``generate_content`` wire format: LangChain requests in, ``AIMessage`` and chunks out.

LangChain messages become Gemini ``contents``: system prompts go to ``system_instruction``, AI
messages are ``model`` turns with ``function_call`` parts, tool results are
``function_response`` parts in a user turn (named after the call they answer), and turns of one
role are merged. Tools are declared with their full JSON schema (``parameters_json_schema``) and
JSON output uses ``response_json_schema``, so no schema is cut down to Gemini's OpenAPI subset.
Gemini gives its function calls no ids: ids are derived from the response id and the call's
position, so a stream and its merged message agree. Gemini repeats cumulative ``usageMetadata``
on every stream chunk; only the last is reported, once. Thought signatures travel in
``additional_kwargs`` and go back with the calls they belong to. ``HttpOptions.timeout`` is in
milliseconds. The SDK calls and their errors are ``providers.google``'s.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.genai import types as genai_types
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, SystemMessage
from langchain_core.messages import ToolMessage as LCToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call, tool_call_chunk

from langchain_pllm.providers.base import EmbeddingResult
from langchain_pllm.providers.convert import (
    CONTENT_FILTER,
    LENGTH,
    STOP,
    TOOL_CALLS,
    json_format_of,
    make_usage,
    media_of,
    openai_function_of,
    stable_tool_call_id,
    stop_sequences,
    text_of,
    tool_choice_of,
    tool_names_by_id,
)

__all__ = [
    "GeminiStreamReader",
    "embedding_result_of",
    "finish_reason_of",
    "message_of",
    "request_args",
    "to_gemini_contents",
    "usage_of",
]

# LangChain parameter -> GenerateContentConfig field, where the names differ.
_RENAMED = {"max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens"}
_CONFIG_FIELDS = frozenset(genai_types.GenerateContentConfig.model_fields)
_MAPPED = frozenset(
    {"model", "stop", "tools", "tool_choice", "response_format", "parallel_tool_calls", "n"}
)

_FINISH_REASONS = {
    "STOP": STOP,
    "MAX_TOKENS": LENGTH,
    "SAFETY": CONTENT_FILTER,
    "RECITATION": CONTENT_FILTER,
    "BLOCKLIST": CONTENT_FILTER,
    "PROHIBITED_CONTENT": CONTENT_FILTER,
    "SPII": CONTENT_FILTER,
    "IMAGE_SAFETY": CONTENT_FILTER,
    "IMAGE_PROHIBITED_CONTENT": CONTENT_FILTER,
    "IMAGE_RECITATION": CONTENT_FILTER,
    "MODEL_ARMOR": CONTENT_FILTER,
}

# Gemini 3 checks that a model turn's first function call carries the thought signature it was
# given. Calls made by another vendor have none; this documented value skips the check.
_FOREIGN_SIGNATURE = base64.urlsafe_b64decode("skip_thought_signature_validator")
_SIGNATURES_KEY = "gemini_thought_signatures"


# Messages --------------------------------------------------------------------------------------


def _parts(content: str | Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain content as Gemini parts (text, inline data, file data)."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for block in content:
        if isinstance(block, str):
            if block:
                parts.append({"text": block})
            continue
        if not isinstance(block, Mapping):
            continue
        if block.get("type", "text") == "text":
            if block.get("text"):
                parts.append({"text": str(block["text"])})
            continue
        media = media_of(block)
        if media is None:
            continue
        if media.data is not None:
            parts.append(
                {
                    "inline_data": {
                        "mime_type": media.mime_type or "application/octet-stream",
                        "data": base64.b64decode(media.data),
                    }
                }
            )
        else:
            # Gemini fetches Files-API, gs:// and (for recent models) public http(s) URLs.
            parts.append({"file_data": {"file_uri": media.url, "mime_type": media.mime_type}})
    return parts


def _model_parts(message: AIMessage) -> list[dict[str, Any]]:
    parts = _parts(message.content)
    signatures = message.additional_kwargs.get(_SIGNATURES_KEY) or {}
    for i, tc in enumerate(message.tool_calls):
        part: dict[str, Any] = {"function_call": {"name": tc["name"], "args": tc["args"]}}
        signature = signatures.get(tc["id"]) if tc["id"] else None
        if signature:
            part["thought_signature"] = base64.b64decode(signature)
        elif i == 0:
            part["thought_signature"] = _FOREIGN_SIGNATURE
        parts.append(part)
    return parts


def _tool_result_parts(message: LCToolMessage, names: Mapping[str, str]) -> list[dict[str, Any]]:
    """A tool result as a ``function_response`` part, then its images and files as parts.

    Media go beside the function response, in the same user turn, as ``inline_data`` or
    ``file_data`` parts (as LangChain's ``ChatGoogleGenerativeAI`` sends them): the model sees
    them, where base64 inside the JSON response would only be text to it.
    """
    name = message.name or names.get(message.tool_call_id) or "tool"
    content = message.content
    media: list[Any] = []
    if isinstance(content, str):
        text = content
    else:
        rest: list[Any] = []
        for block in content:
            (media if media_of(block) is not None else rest).append(block)
        text = text_of(rest)
        if not text and rest:
            text = json.dumps(rest, default=str)  # blocks of no known kind: sent as JSON
    result: Any = text
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        result = parsed
    key = "error" if message.status == "error" else "result"
    response = result if isinstance(result, dict) else {key: result}
    return [{"function_response": {"name": name, "response": response}}, *_parts(media)]


def to_gemini_contents(
    messages: Sequence[BaseMessage],
) -> tuple[str | None, list[dict[str, Any]]]:
    """LangChain messages to ``(system_instruction, contents)`` for ``generate_content``."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names = tool_names_by_id(messages)
    for m in messages:
        if isinstance(m, SystemMessage):
            text = text_of(m.content)
            if text:
                system.append(text)
            continue
        if isinstance(m, AIMessage):
            role, parts = "model", _model_parts(m)
        elif isinstance(m, LCToolMessage):
            role, parts = "user", _tool_result_parts(m, names)
        else:
            role, parts = "user", _parts(m.content)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return ("\n\n".join(system) or None), contents


def _tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    declarations: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for tool in tools:
        fn = openai_function_of(tool)
        if fn is None:
            others.append(dict(tool))  # a Gemini tool (google_search, code_execution...)
            continue
        declaration: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            declaration["description"] = fn["description"]
        if fn.get("parameters"):
            declaration["parameters_json_schema"] = fn["parameters"]
        declarations.append(declaration)
    out = [{"function_declarations": declarations}] if declarations else []
    return out + others


def request_args(
    params: Mapping[str, Any],
    messages: Sequence[BaseMessage],
    *,
    model: str,
    timeout: float | None,
    provider_id: str,
    warn_once: Callable[[str, str], None],
) -> dict[str, Any]:
    """The ``generate_content`` arguments: model, contents and config.

    ``timeout`` (seconds) becomes the request's ``http_options``. A parameter Gemini does not
    take is reported through ``warn_once(parameter, message)``.
    """
    system, contents = to_gemini_contents(messages)
    config: dict[str, Any] = {}
    if system:
        config["system_instruction"] = system
    for key, value in params.items():
        if value is None or key in _MAPPED:
            continue
        name = _RENAMED.get(key, key)
        if name in _CONFIG_FIELDS:
            config[name] = value
        else:
            warn_once(key, f"{provider_id}: Gemini takes no {key!r}; it is not sent")
    if params.get("n") not in (None, 1):
        warn_once("n", f"{provider_id}: one candidate is read; 'n' is not sent")
    stop = stop_sequences(params.get("stop"))
    if stop:
        config["stop_sequences"] = stop
    tools = _tools(params.get("tools") or ())
    if tools:
        config["tools"] = tools
        config["automatic_function_calling"] = {"disable": True}
        choice = tool_choice_of(params.get("tool_choice"))
        if choice is not None:
            calling: dict[str, Any] = {
                "mode": {"required": "ANY", "tool": "ANY"}.get(choice.mode, choice.mode.upper())
            }
            if choice.mode == "tool":
                calling["allowed_function_names"] = [choice.name]
            config["tool_config"] = {"function_calling_config": calling}
    json_format = json_format_of(params.get("response_format"))
    if json_format is not None:
        config["response_mime_type"] = "application/json"
        if json_format.schema is not None:
            config["response_json_schema"] = json_format.schema
    if timeout is not None:
        config["http_options"] = {"timeout": max(1, int(timeout * 1000))}
    return {
        "model": params.get("model") or model,
        "contents": contents,
        "config": config or None,
    }


# Replies ---------------------------------------------------------------------------------------


def usage_of(meta: Any) -> UsageMetadata | None:
    """Gemini's ``usage_metadata`` as LangChain's usage; thoughts count as output."""
    if meta is None:
        return None
    prompt = (meta.prompt_token_count or 0) + (meta.tool_use_prompt_token_count or 0)
    thoughts = meta.thoughts_token_count or 0
    output = (meta.candidates_token_count or 0) + thoughts
    return make_usage(
        prompt,
        output,
        meta.total_token_count if meta.total_token_count is not None else prompt + output,
        cache_read=meta.cached_content_token_count,
        reasoning=thoughts,
    )


@dataclass(slots=True)
class _Reading:
    """What one response (or stream chunk) says."""

    text: str
    reasoning: str
    calls: list[tuple[str, dict[str, Any], str | None, bytes | None]]
    finish_raw: str | None


def _read(resp: Any) -> _Reading:
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[tuple[str, dict[str, Any], str | None, bytes | None]] = []
    finish_raw: str | None = None
    candidates = resp.candidates or ()
    if candidates:
        candidate = candidates[0]
        if candidate.finish_reason is not None:
            finish_raw = str(getattr(candidate.finish_reason, "value", candidate.finish_reason))
        content = candidate.content
        for part in (content.parts if content is not None else None) or ():
            if part.function_call is not None:
                fc = part.function_call
                calls.append((fc.name or "", dict(fc.args or {}), fc.id, part.thought_signature))
            elif part.text:
                (reasoning if part.thought else texts).append(part.text)
    else:
        feedback = getattr(resp, "prompt_feedback", None)
        if feedback is not None and feedback.block_reason is not None:
            finish_raw = "SAFETY"  # the prompt itself was blocked
    return _Reading("".join(texts), "".join(reasoning), calls, finish_raw)


def finish_reason_of(finish_raw: str | None, has_calls: bool) -> str | None:
    """Gemini's ``finish_reason`` in the unified vocabulary (a stop with calls is tool_calls)."""
    if finish_raw is None:
        return None
    finish = _FINISH_REASONS.get(finish_raw, STOP)
    return TOOL_CALLS if has_calls and finish == STOP else finish


def _signature_text(signature: bytes | None) -> str | None:
    return base64.b64encode(signature).decode() if signature else None


def _tool_calls(
    reading: _Reading, response_id: str | None, start: int
) -> tuple[list[tuple[str, str, dict[str, Any]]], dict[str, str]]:
    """``(id, name, args)`` of each call, and the thought signatures by call id."""
    calls = []
    signatures: dict[str, str] = {}
    for offset, (name, args, given_id, signature) in enumerate(reading.calls):
        call_id = given_id or stable_tool_call_id(response_id, start + offset, name)
        calls.append((call_id, name, args))
        text = _signature_text(signature)
        if text:
            signatures[call_id] = text
    return calls, signatures


def _extras(reading: _Reading, signatures: dict[str, str]) -> dict[str, Any]:
    """The ``additional_kwargs`` of a reply: its thoughts and its calls' signatures."""
    kwargs: dict[str, Any] = {}
    if reading.reasoning:
        kwargs["reasoning_content"] = reading.reasoning
    if signatures:
        kwargs[_SIGNATURES_KEY] = signatures
    return kwargs


def message_of(resp: Any, *, model: str, model_provider: str) -> AIMessage:
    """A ``generate_content`` response as an ``AIMessage``.

    ``model`` names the model in the metadata when the response gives no ``model_version``.
    """
    reading = _read(resp)
    response_id = getattr(resp, "response_id", None)
    calls, signatures = _tool_calls(reading, response_id, 0)
    metadata: dict[str, Any] = {
        "finish_reason": finish_reason_of(reading.finish_raw, bool(calls)),
        "stop_reason": reading.finish_raw,
        "model_name": getattr(resp, "model_version", None) or model,
        "model_provider": model_provider,
    }
    if response_id:
        metadata["id"] = response_id
    return AIMessage(
        content=reading.text,
        tool_calls=[tool_call(name=n, args=a, id=i) for i, n, a in calls],
        usage_metadata=usage_of(resp.usage_metadata),
        response_metadata=metadata,
        additional_kwargs=_extras(reading, signatures),
        id=response_id,
    )


class GeminiStreamReader:
    """Turns the responses of one ``streamGenerateContent`` call into message chunks.

    One per stream: it holds what only the stream's end may report (the last cumulative usage,
    the finish reason) and how many calls came so far, which numbers the next ones.
    """

    def __init__(self) -> None:
        self.usage: Any = None
        self.finish_raw: str | None = None
        self.response_id: str | None = None
        self.calls = 0

    def chunk(self, resp: Any) -> AIMessageChunk | None:
        """One streamed response as a chunk, or ``None`` if it carries no content."""
        reading = _read(resp)
        response_id = getattr(resp, "response_id", None)
        if response_id:
            self.response_id = response_id
        if resp.usage_metadata is not None:
            self.usage = resp.usage_metadata  # cumulative: keep the last only
        if reading.finish_raw is not None:
            self.finish_raw = reading.finish_raw
        start = self.calls
        calls, signatures = _tool_calls(reading, response_id, start)
        self.calls = start + len(calls)
        if not (reading.text or reading.reasoning or calls):
            return None
        return AIMessageChunk(
            content=reading.text,
            additional_kwargs=_extras(reading, signatures),
            tool_call_chunks=[
                tool_call_chunk(name=n, args=json.dumps(a), id=i, index=start + k)
                for k, (i, n, a) in enumerate(calls)
            ],
            id=response_id,
        )

    def last_chunk(self) -> AIMessageChunk:
        """The closing chunk: it carries the finish reason and the usage, each exactly once."""
        metadata: dict[str, Any] = {}
        if self.finish_raw is not None:
            metadata["finish_reason"] = finish_reason_of(self.finish_raw, self.calls > 0)
            metadata["stop_reason"] = self.finish_raw
        return AIMessageChunk(
            content="",
            usage_metadata=usage_of(self.usage),
            response_metadata=metadata,
            id=self.response_id,
        )


def embedding_result_of(resp: Any) -> EmbeddingResult:
    """A ``batchEmbedContents`` response as vectors (Gemini reports no token count)."""
    vectors = [list(e.values or ()) for e in resp.embeddings or ()]
    return EmbeddingResult(vectors=vectors, tokens=None)
