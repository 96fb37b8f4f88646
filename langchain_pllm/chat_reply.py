"""What the chat model makes of a reply: its metadata, usage, cost, and a stream's ids.

Every reply gets the pool's metadata (the key that served it, its vendor and model, the
attempts it took, its cost at the key's price) and ``llm_output`` in the shape ``ChatOpenAI``
gives callbacks; a stream's chunks share one id and end with a chunk carrying that metadata.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatResult

from langchain_pllm.balancer.picker import Member
from langchain_pllm.balancer.recent import TokenUsage
from langchain_pllm.spend import reply_spend

__all__ = [
    "StreamId",
    "chat_result",
    "combine_llm_outputs",
    "last_chunk",
    "reply_cost",
    "total_tokens",
]


def total_tokens(message: AIMessage | AIMessageChunk) -> int | None:
    """The reply's token usage as the balancer settles it (``None``: the vendor said none)."""
    usage = message.usage_metadata
    if not usage:
        return None
    details: Any = usage.get("input_token_details") or {}
    cached = int(details.get("cache_read") or 0)  # a cost budget prices cached input apart
    return TokenUsage(usage["input_tokens"], usage["output_tokens"], usage["total_tokens"], cached)


def reply_cost(message: AIMessage, member: Member) -> tuple[float | None, int]:
    """The reply's cost at ``member``'s price (noted in its metadata) and cached input tokens."""
    cost, cached = reply_spend(member.config.price, message.usage_metadata)
    if cost is not None:
        message.response_metadata["cost"] = cost
    return cost, cached


def chat_result(message: AIMessage, member: Member, attempts: int) -> ChatResult:
    """The reply with the pool's metadata (who served, after how many attempts), as a result."""
    meta = message.response_metadata
    meta["provider"] = member.config.id
    meta["vendor"] = member.config.vendor
    meta["attempts"] = attempts
    meta.setdefault("model_provider", member.provider.model_provider)
    meta.setdefault("model_name", member.config.model)
    meta.setdefault("finish_reason", None)
    # What ChatOpenAI gives callbacks' on_llm_end: token usage in OpenAI's names, the model.
    llm_output: dict[str, Any] = {"model_name": meta["model_name"], "provider": meta["provider"]}
    usage = message.usage_metadata
    if usage:
        llm_output["token_usage"] = {
            "prompt_tokens": usage["input_tokens"],
            "completion_tokens": usage["output_tokens"],
            "total_tokens": usage["total_tokens"],
        }
    return ChatResult(generations=[ChatGeneration(message=message)], llm_output=llm_output)


class StreamId:
    """One id for every chunk of a stream: the first the vendor gave, on every later chunk.

    Vendors put their message id on some chunks only (OpenAI's usage chunk has none, our
    closing chunk neither), and LangChain gives an id-less chunk the run's id: a consumer
    that groups chunks by id (LangGraph's ``add_messages``) would see two messages.
    """

    __slots__ = ("id",)

    def __init__(self) -> None:
        self.id: str | None = None

    def stamp(self, chunk: AIMessageChunk) -> AIMessageChunk:
        """Give ``chunk`` the stream's id (the first one seen)."""
        if self.id is None:
            self.id = chunk.id
        elif chunk.id != self.id:
            chunk.id = self.id
        return chunk


def last_chunk(
    member: Member, attempts: int, blocks: bool, cost: float | None = None
) -> AIMessageChunk:
    """The chunk closing a stream: who served it, after how many attempts, at what cost."""
    # Empty content of the stream's own kind: "" after a list of blocks would become a stray
    # empty text block under output_version="v1" (langchain_core's own rule in stream()).
    meta: dict[str, Any] = {
        "model_provider": member.provider.model_provider,
        "provider": member.config.id,
        "vendor": member.config.vendor,
        "model_name": member.config.model,  # a call's model= picks keys, each sends its own
        "attempts": attempts,
    }
    if cost is not None:
        meta["cost"] = cost  # the whole reply's: the usage of every chunk is in
    return AIMessageChunk(
        content=[] if blocks else "", response_metadata=meta, chunk_position="last"
    )


def combine_llm_outputs(llm_outputs: list[dict[str, Any] | None]) -> dict[str, Any]:
    """A batch's ``llm_output``: token usage summed as ``ChatOpenAI`` does, the first model."""
    usage: dict[str, int] = {}
    out: dict[str, Any] = {}
    for output in llm_outputs:
        if not output:
            continue
        out.setdefault("model_name", output.get("model_name"))
        for k, v in (output.get("token_usage") or {}).items():
            usage[k] = usage.get(k, 0) + v
    if usage:
        out["token_usage"] = usage
    return out
