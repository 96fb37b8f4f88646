"""Which conversation a chat request belongs to, as a digest: the key of prompt-cache affinity.

Vendors cache a prompt's prefix per key, and an agent resends the same prefix every turn: the
system prompt, the tools, the first user turn, then the turns so far. Those three parts name the
conversation (later turns grow; the start does not), so their digest sends every turn of it back
to the key whose cache holds it. A caller who knows its sessions may name one instead
(``session_id`` as a call keyword, or ``config={"metadata": {"session_id": ...}}``), which wins
over the prefix. Only the digest is kept (BLAKE2b over the parts, each framed by its role and
length; blocks and tools as canonical JSON), never the text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

__all__ = ["SESSION_KWARG", "conversation_digest", "session_of"]

SESSION_KWARG = "session_id"


def conversation_digest(
    mode: str,
    messages: Sequence[BaseMessage],
    tools: Any,
    session_id: Any,
) -> tuple[bytes | None, bool]:
    """The digest naming the conversation of a request, and whether the request continues it.

    A prompt that ends with its first user turn starts a conversation: its key is noted, but it
    is picked as usual (the same one-shot prompt sent many times still spreads over the pool).
    A prompt with turns after the first user turn, or a request naming a session, continues
    one: it goes back to the key that served the conversation last.

    Args:
        mode: ``balancer.affinity``: ``prefix`` (a session id, else the prompt prefix),
            ``session`` (only a session id) or ``off``.
        messages: The request's messages.
        tools: The tools sent with the request (any JSON-encodable form), or ``None``.
        session_id: The caller's session id, or ``None``.

    Returns:
        16 bytes (or ``None`` when affinity names no conversation), and whether it continues.
    """
    if mode == "off":
        return None, False
    if session_id is not None:
        digest = hashlib.blake2b(b"session\0", digest_size=16)
        digest.update(str(session_id).encode("utf-8"))
        return digest.digest(), True
    if mode != "prefix":
        return None, False
    digest = hashlib.blake2b(b"prefix\0", digest_size=16)
    for i, message in enumerate(messages):
        if isinstance(message, SystemMessage):
            _add(digest, b"system", message.content)
        elif isinstance(message, HumanMessage):
            _add(digest, b"user", message.content)
            continues = i + 1 < len(messages)
            break
        else:
            return None, False  # a prompt that does not start with system or user turns
    else:
        return None, False
    if tools:
        _add(digest, b"tools", tools)
    return digest.digest(), continues


def session_of(kwargs: dict[str, Any], metadata: Mapping[str, Any] | None) -> Any:
    """Pop the ``session_id`` call keyword (it must not reach the vendor), else read metadata."""
    session = kwargs.pop(SESSION_KWARG, None)
    if session is None and metadata:
        session = metadata.get(SESSION_KWARG)
    return session


def _add(digest: Any, role: bytes, content: Any) -> None:
    # Each part is framed by its role and byte length, so no two prompts share a digest by
    # moving text between parts. Text is hashed as is; blocks and tools as canonical JSON.
    if isinstance(content, str):
        data = content.encode("utf-8")
    else:
        data = json.dumps(content, sort_keys=True, ensure_ascii=False, default=str).encode()
    digest.update(b"%s:%d:" % (role, len(data)))
    digest.update(data)
