"""What one chat call asks of the pool: the vendor request, its token reservation, its route.

A call's keywords are sorted here: ``model=`` picks keys and ``timeout=`` bounds the attempt
(both ours to apply, never body fields for the vendor), ``pllm_avoid``, ``spill`` and the
conversation's session are the balancer's, and the rest go to the vendor with the model's own
settings. Everything decided before a byte is sent is checked here (``preflight``): a wrong
call raises ``InvalidCallError`` before any key is picked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import BaseMessage

from langchain_pllm.balancer import Balancer
from langchain_pllm.balancer.recent import TokenUsage
from langchain_pllm.conversation import conversation_digest, session_of
from langchain_pllm.pool_face import AVOID_KWARG, SPILL_KWARG
from langchain_pllm.preflight import check_conversation
from langchain_pllm.providers.base import REPLY_ESTIMATE, ChatRequest, estimate_tokens
from langchain_pllm.providers.convert import media_kinds_in

__all__ = ["chat_request"]


def _ours(kwargs: dict[str, Any], params: dict[str, Any], name: str) -> Any:
    # A model= in model_kwargs (where an unknown constructor keyword lands) applies the same
    # way as a call's; the call's own wins. Dropping it would ignore BalancedChatModel(...,
    # model="gpt-4o") after a warning saying it is sent. Either way it never reaches the body.
    value = kwargs.pop(name, None)
    fallback = params.pop(name, None)
    return fallback if value is None else value


def chat_request(
    messages: list[BaseMessage],
    stop: list[str] | None,
    kwargs: dict[str, Any],
    metadata: Mapping[str, Any] | None,
    *,
    params: dict[str, Any],
    timeout: float | None,
    balancer: Balancer,
    affinity: str,
    reserve: bool,
) -> tuple[ChatRequest, int, dict[str, Any], Balancer]:
    """The request, its token reservation, the balancer's routing keywords, the balancer.

    Args:
        messages: The conversation.
        stop: The call's stop sequences.
        kwargs: The call's keywords (consumed).
        metadata: The run's metadata (a ``session_id`` there names the conversation).
        params: The model's own vendor parameters (extended with the call's).
        timeout: The model's seconds per attempt.
        balancer: The pool's balancer.
        affinity: The balancer's ``affinity`` mode.
        reserve: Whether a key of the pool has a token limit (reserve an estimate).

    Returns:
        What ``Balancer.call`` and its twins take: the provider request, the tokens to
        reserve and the routing keywords; and the balancer itself.
    """
    check_conversation(messages)
    avoid_ids = kwargs.pop(AVOID_KWARG, None)
    model = _ours(kwargs, params, "model")
    call_timeout = _ours(kwargs, params, "timeout")
    session = session_of(kwargs, metadata)
    spill = kwargs.pop(SPILL_KWARG, None)
    if kwargs:
        params.update(kwargs)
    if stop:
        params["stop"] = stop
    route: dict[str, Any] = {"only": balancer.routes.select(model, media_kinds_in(messages))}
    if avoid_ids:
        route["avoid"] = {balancer.by_id[i].index for i in avoid_ids if i in balancer.by_id}
    request = ChatRequest(messages, params, timeout if call_timeout is None else call_timeout)
    tokens = 0
    if reserve:
        # Split into prompt and reply, so a cost budget prices each at its own rate.
        reply = params.get("max_tokens") or REPLY_ESTIMATE
        tokens = TokenUsage(estimate_tokens(messages, reply) - reply, reply)
    route["spill"] = spill
    route["affinity"], route["resume"] = conversation_digest(
        affinity, messages, params.get("tools"), session
    )
    return request, tokens, route, balancer
