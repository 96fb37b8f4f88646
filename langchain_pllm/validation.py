"""``with_validation``: ask, check the reply with a validator, re-ask with its retry prompt.

On a failed check the conversation grows by the rejected reply and the validator's retry
prompt (what was wrong, what is expected), and the next attempt prefers a provider that has not
failed this check, so one key's bad habit does not eat every retry. Each failure is counted in
that provider's stats (``validation_failures``). Batches validate and retry each item on its
own; order is kept by ``Runnable.batch``.
"""

from __future__ import annotations

from typing import Any, cast

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import ensure_config
from pydantic import ConfigDict

from langchain_pllm.balancer import Balancer
from langchain_pllm.balancer.picker import Member
from langchain_pllm.exceptions import ValidationFailedError
from langchain_pllm.output_parsers import OutputValidator, ValidationResult
from langchain_pllm.pool_face import AVOID_KWARG, PoolFace

__all__ = ["ValidatingRunnable"]


class ValidatingRunnable(RunnableSerializable[LanguageModelInput, Any]):
    """A chat model call whose reply must pass a validator; returns the validated value."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: BaseChatModel
    """The chat face it wraps: a ``PoolFace`` (its balancer is charged with failed checks) that
    reads the ``pllm_avoid`` call keyword. Typed by its bases, not its class, so this module
    does not import ``chat_models`` (which imports this one)."""
    validator: Any  # an OutputValidator; checked in __init__ (pydantic would copy it)
    max_retries: int = 2

    def __init__(self, **data: Any) -> None:
        """Check the arguments."""
        if not isinstance(data.get("model"), PoolFace):
            raise TypeError(
                f"model must be a BalancedChatModel, got {type(data.get('model')).__name__}"
            )
        retries = data.get("max_retries", 2)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"max_retries must be a whole number >= 0, got {retries!r}")
        if not isinstance(data.get("validator"), OutputValidator):
            raise TypeError(
                "validator must be a JsonValidator, RegexValidator or TextValidator, got "
                f"{type(data.get('validator')).__name__}"
            )
        super().__init__(**data)

    @property
    def _balancer(self) -> Balancer:
        return cast(PoolFace, self.model).balancer_instance

    def _start(self, input: LanguageModelInput) -> list[BaseMessage]:
        return list(self.model._convert_input(input).to_messages())

    def _judge(
        self,
        message: AIMessage,
        messages: list[BaseMessage],
        attempts: list[dict[str, Any]],
        avoid: list[str],
    ) -> tuple[ValidationResult, Member | None]:
        """Check one reply; on failure, record it and extend the conversation.

        Returns:
            The result, and the member to charge with a validation failure (if any).
        """
        result = self.validator.validate(message.text)
        if result.is_valid:
            return result, None
        provider = message.response_metadata.get("provider")
        attempts.append(
            {
                "provider": provider,
                "output": message.text,
                "error": result.error,
                "retry_prompt": result.retry_prompt,
            }
        )
        member = None
        if provider:
            member = self._balancer.by_id.get(provider)
            if provider not in avoid:
                avoid.append(provider)
        messages.append(message)
        messages.append(HumanMessage(content=result.retry_prompt or result.error or "Try again."))
        return result, member

    def _give_up(self, attempts: list[dict[str, Any]]) -> ValidationFailedError:
        last = attempts[-1]["error"] if attempts else "no attempt"
        return ValidationFailedError(
            f"the output failed validation {len(attempts)} time(s); last error: {last}",
            attempts=attempts,
        )

    def invoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Any:
        """Ask until the reply validates or retries run out."""
        config = ensure_config(config)
        messages = self._start(input)
        attempts: list[dict[str, Any]] = []
        avoid: list[str] = []
        for _ in range(self.max_retries + 1):
            call_kwargs = {**kwargs, AVOID_KWARG: list(avoid)} if avoid else kwargs
            message = self.model.invoke(messages, config, **call_kwargs)
            result, failed = self._judge(message, messages, attempts, avoid)
            if result.is_valid:
                return result.value
            if failed is not None:
                self._balancer.count_validation_failure(failed)
        raise self._give_up(attempts)

    async def ainvoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Any:
        """Async twin of ``invoke``."""
        config = ensure_config(config)
        messages = self._start(input)
        attempts: list[dict[str, Any]] = []
        avoid: list[str] = []
        for _ in range(self.max_retries + 1):
            call_kwargs = {**kwargs, AVOID_KWARG: list(avoid)} if avoid else kwargs
            message = await self.model.ainvoke(messages, config, **call_kwargs)
            result, failed = self._judge(message, messages, attempts, avoid)
            if result.is_valid:
                return result.value
            if failed is not None:
                await self._balancer.acount_validation_failure(failed)
        raise self._give_up(attempts)
