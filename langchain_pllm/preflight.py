"""The caller's fault, found before a byte is sent: one check the faces run on every call.

What is wrong with the call itself (an empty conversation, text no vendor can receive, a ``str``
where a list of texts belongs) would fail on every key alike. Found here, it raises
``InvalidCallError`` (a ``ValueError`` and LangChain's ``ModelInvalidRequestError``) before the
balancer picks a key, so it is never retried, never counts toward a breaker and never shows in a
key's ``error_count``. A vendor's own 400 for such a call is classified the same way (not
retried, no breaker count) by the balancer; this check only saves the round trip and makes the
message the same whichever vendor would have served.

Each check is linear in the text and cheap on the common case (``str.isascii`` first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage

from langchain_pllm.exceptions import InvalidCallError

__all__ = ["check_conversation", "check_texts"]


def check_conversation(messages: Sequence[BaseMessage]) -> None:
    """Raise ``InvalidCallError`` if no vendor could take this conversation.

    Refused: no messages; only system messages (Anthropic and Gemini need a turn to answer);
    no content at all (``invoke("")``: Anthropic refuses empty text); text holding a lone
    surrogate, which cannot be encoded as UTF-8 and so never leaves the client.

    Args:
        messages: The conversation as the chat model received it.
    """
    if not messages:
        raise InvalidCallError("the conversation is empty: pass at least one message")
    turns = 0
    content = False
    for i, m in enumerate(messages):
        _check_content(m.content, f"message {i} ({m.type})")
        if isinstance(m, SystemMessage):
            continue
        turns += 1
        if not content:
            content = _has_content(m)
    if not turns:
        raise InvalidCallError(
            "the conversation has only system messages: add a user message to answer"
        )
    if not content:
        raise InvalidCallError("the conversation has no content: every message is empty")


def check_texts(texts: Any) -> list[str]:
    """The texts of an embeddings call as a list, or ``TypeError``/``InvalidCallError``.

    A bare ``str`` is refused: iterating it would embed its characters one by one.

    Args:
        texts: What the caller passed to ``embed_documents``.

    Returns:
        The texts as a list.
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            "embed_documents takes a list of texts, got a single string; "
            "use embed_query(text) or embed_documents([text])"
        )
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is a {type(text).__name__}, not a str")
        _check_text(text, f"text {i}")
    return out


def _has_content(m: BaseMessage) -> bool:
    if isinstance(m, AIMessage) and m.tool_calls:
        return True
    if isinstance(m, ToolMessage):
        return True  # a tool result may be empty; the call it answers is content
    content = m.content
    if isinstance(content, str):
        return bool(content)
    # A list of only empty text blocks is no content either: Anthropic answers it with a 400,
    # Gemini's SDK refuses it, OpenAI and Zhipu answer an empty prompt.
    return any(_block_has_content(block) for block in content)


def _block_has_content(block: Any) -> bool:
    if isinstance(block, str):
        return bool(block)
    if isinstance(block, Mapping) and block.get("type") == "text":
        return bool(block.get("text"))
    return True  # an image, audio or other block is content


def _check_content(content: str | list[Any], where: str) -> None:
    if isinstance(content, str):
        _check_text(content, where)
        return
    for j, block in enumerate(content):
        if isinstance(block, str):
            _check_text(block, f"{where}, block {j}")
        elif isinstance(block, Mapping):
            text = block.get("text")
            if isinstance(text, str):
                _check_text(text, f"{where}, block {j}")


def _check_text(text: str, where: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidCallError(
            f"{where} holds text that cannot be sent: {e.object[e.start : e.end]!r} at "
            f"position {e.start} is a lone surrogate (half of a character, often from cutting "
            "an emoji); drop it or repair the text"
        ) from None
