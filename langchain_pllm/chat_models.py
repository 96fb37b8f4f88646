"""``BalancedChatModel``: a pool of chat keys across vendors as one LangChain chat model."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import (
    agenerate_from_stream,
    generate_from_stream,
)
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_pllm.balancer import Balancer
from langchain_pllm.balancer.picker import Member
from langchain_pllm.chat_reply import (
    StreamId,
    chat_result,
    combine_llm_outputs,
    last_chunk,
    reply_cost,
    total_tokens,
)
from langchain_pllm.chat_request import chat_request
from langchain_pllm.config import PoolConfig
from langchain_pllm.pool_face import Capability, PoolFace
from langchain_pllm.providers.base import ChatRequest
from langchain_pllm.spend import StreamSpend, reply_spend
from langchain_pllm.validation import ValidatingRunnable

__all__ = ["BalancedChatModel"]


class BalancedChatModel(PoolFace, BaseChatModel):
    """A pool of LLM API keys, across vendors, behind one LangChain chat model.

    Every call goes to the provider (one key and model) with the fewest requests in flight
    that has room in its sliding-window rate limit and a closed circuit breaker. Failures are
    retried on another key; a 429 rests that key for exactly its ``Retry-After``; a key that
    keeps failing is taken out and health-checked back in. Drop it in wherever ``ChatOpenAI``
    goes.

    Setup:
        ``pip install langchain-pllm``. Keys come from the config (``${ENV}`` references are
        read from the environment); nothing is read from the environment implicitly.

    Key init args — the pool:
        providers: list[dict]
            Entries ``{"vendor", "api_key", "model", "api_base", "rate_limit", "tpm",
            "max_concurrency", "weight", "timeout", "name"}``. ``vendor`` is one of
            ``openai``, ``siliconflow``, ``deepseek``, ``anthropic``, ``google``, ``zhipu``.
        balancer: dict
            ``retry_policy`` (fixed | retry_once | infinite), ``max_retries``,
            ``breaker_threshold``, ``health_check_interval``, ``state`` (``memory`` or a
            ``redis://`` URL shared by every process), ``window``, ``max_wait``,
            ``request_timeout``.
        retry_policy, max_retries: str, int
            Shortcuts overriding the same ``balancer`` settings.

    Key init args — completion params (sent to whichever vendor serves):
        temperature: float | None
        max_tokens: int | None
        top_p: float | None
        stop: list[str] | None
        timeout: float | None
            Seconds per attempt.
        model_kwargs: dict
            Further parameters passed to the vendor.

    Instantiate:
        .. code-block:: python

            from langchain_pllm import BalancedChatModel

            model = BalancedChatModel.from_config("pllm.yaml")
            # or
            model = BalancedChatModel(
                providers=[
                    {"vendor": "openai", "api_key": "sk-...", "model": "gpt-4o-mini",
                     "rate_limit": 20},
                    {"vendor": "deepseek", "api_key": "sk-...", "model": "deepseek-chat"},
                ],
                max_retries=3,
            )

    Invoke:
        .. code-block:: python

            msg = model.invoke("Translate 'hello' into French.")
            msg.content                              # "Bonjour"
            msg.response_metadata["provider"]        # "openai-0": the key that served
            model.invoke("hi", model="gpt-4o")       # only keys whose model or aliases match
            model.invoke("hi", timeout=5)            # seconds per attempt, on every vendor

        A wrong call (an empty conversation, a lone surrogate, a ``model=`` no key serves)
        raises ``InvalidCallError`` before any key is tried; no key is blamed for it.

    Stream:
        .. code-block:: python

            for chunk in model.stream("Tell me a story"):
                print(chunk.content, end="")

        A failure before the first chunk is retried on another key unseen; after it, the error
        reaches the caller (text is never duplicated).

    Async:
        .. code-block:: python

            await model.ainvoke("hi")
            await model.abatch(["a", "b", "c"])
            async for chunk in model.astream("hi"): ...

    Tool calling:
        .. code-block:: python

            def add(a: int, b: int) -> int:
                '''Add two integers.'''
                return a + b

            msg = model.bind_tools([add]).invoke("What is 2 + 3?")
            msg.tool_calls   # [{"name": "add", "args": {"a": 2, "b": 3}, "id": "..."}]

    Structured output:
        .. code-block:: python

            class Joke(BaseModel):
                setup: str
                punchline: str

            model.with_structured_output(Joke).invoke("Tell me a joke")

    Validated output (re-asks with a retry prompt, preferring another key):
        .. code-block:: python

            from langchain_pllm import JsonValidator
            model.with_validation(JsonValidator(), max_retries=2).invoke("Reply in JSON")

    Token usage:
        .. code-block:: python

            model.invoke("hi").usage_metadata
            # {"input_tokens": 8, "output_tokens": 2, "total_tokens": 10}

    Response metadata:
        ``model_provider`` (the vendor that served, as LangChain's partner packages name it),
        ``provider`` (the provider id), ``vendor``, ``model_name``, ``attempts``,
        ``finish_reason``.

    Stats:
        ``model.get_stats()`` maps each provider id to its requests, tokens, errors, active
        requests, breaker state and window use. API keys never appear there, nor in ``repr``,
        logs or errors.
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    capability: ClassVar[Capability] = "chat"

    # The pool fields (providers, balancer, api_key, clock), from_config, balancer_instance and
    # get_stats come from PoolFace.
    temperature: float | None = None
    """Sampling temperature."""
    max_tokens: int | None = None
    """Most tokens to generate."""
    top_p: float | None = None
    """Nucleus sampling."""
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Stop sequences."""
    timeout: float | None = None
    """Seconds per attempt (each provider's own ``timeout`` wins)."""
    streaming: bool = False
    """Whether ``invoke`` streams under the hood."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further parameters passed to the vendor."""

    _model_name: str = PrivateAttr(default="")
    _pool_id: str = PrivateAttr(default="")

    def __init__(self, **data: Any) -> None:
        """Validate the pool and the balancer settings; raise ``PllmConfigError`` if wrong."""
        super().__init__(**data)
        pool = self._pool
        self._model_name = "|".join(dict.fromkeys(p.model for p in pool.providers))
        self._pool_id = _pool_id(pool)

    # LangChain identity ------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "pllm-balanced-chat"

    @property
    def lc_secrets(self) -> dict[str, str]:
        """Secrets are never serialized."""
        return {"api_key": "PLLM_API_KEY"}

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """The pool holds secrets and live state: not serializable."""
        return False

    @property
    def model_name(self) -> str:
        """The model name if the pool serves one, else the names joined by ``|``."""
        return self._model_name

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # Computed per call by LangChain (tracing, caching): keep it O(1) in the pool size.
        return {
            "pool": self._pool_id,
            "models": self._model_name,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="pllm",
            ls_model_name=kwargs.get("model") or self._model_name,
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stop = stop or kwargs.get("stop") or self.stop
        if stop:
            params["ls_stop"] = stop
        return params

    # Generation --------------------------------------------------------------------------------

    def _request(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None = None,
    ) -> tuple[ChatRequest, int, dict[str, Any], Balancer]:
        """The request, its token reservation, the balancer's routing keywords, the balancer."""
        settings = (
            ("temperature", self.temperature),
            ("max_tokens", self.max_tokens),
            ("top_p", self.top_p),
            ("stop", self.stop or None),
        )
        params = {k: v for k, v in settings if v is not None}
        if self.model_kwargs:
            params.update(self.model_kwargs)
        metadata = run_manager.metadata if run_manager else None
        return chat_request(
            messages,
            stop,
            kwargs,
            metadata,
            params=params,
            timeout=self.timeout,
            balancer=self.balancer_instance,
            affinity=self.balancer.affinity,
            reserve=self._has_tpm,
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        request, tokens, route, balancer = self._request(messages, stop, kwargs, run_manager)
        message, member, attempts = balancer.call(
            lambda p: p.chat(request), tokens=tokens, tokens_of=total_tokens, **route
        )
        balancer.count_spend(member, *reply_cost(message, member))
        return chat_result(message, member, attempts)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        request, tokens, route, balancer = self._request(messages, stop, kwargs, run_manager)
        message, member, attempts = await balancer.acall(
            lambda p: p.achat(request), tokens=tokens, tokens_of=total_tokens, **route
        )
        await balancer.acount_spend(member, *reply_cost(message, member))
        return chat_result(message, member, attempts)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request, tokens, route, balancer = self._request(messages, stop, kwargs, run_manager)
        served: tuple[Member, int] | None = None
        blocks = False
        ids = StreamId()
        spend = StreamSpend()
        for chunk, member, attempts in balancer.stream(
            lambda p: p.stream(request), tokens=tokens, tokens_of=total_tokens, **route
        ):
            served = (member, attempts)
            spend.add(chunk.usage_metadata)
            blocks = isinstance(chunk.content, list)
            gen = ChatGenerationChunk(message=ids.stamp(chunk))
            if run_manager is not None:
                run_manager.on_llm_new_token(gen.text, chunk=gen)
            yield gen
        if served is not None:
            cost, cached = reply_spend(served[0].config.price, spend.usage)
            balancer.count_spend(served[0], cost, cached)
            yield ChatGenerationChunk(message=ids.stamp(last_chunk(*served, blocks, cost)))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request, tokens, route, balancer = self._request(messages, stop, kwargs, run_manager)
        served: tuple[Member, int] | None = None
        blocks = False
        ids = StreamId()
        spend = StreamSpend()
        async for chunk, member, attempts in balancer.astream(
            lambda p: p.astream(request), tokens=tokens, tokens_of=total_tokens, **route
        ):
            served = (member, attempts)
            spend.add(chunk.usage_metadata)
            blocks = isinstance(chunk.content, list)
            gen = ChatGenerationChunk(message=ids.stamp(chunk))
            if run_manager is not None:
                await run_manager.on_llm_new_token(gen.text, chunk=gen)
            yield gen
        if served is not None:
            cost, cached = reply_spend(served[0].config.price, spend.usage)
            await balancer.acount_spend(served[0], cost, cached)
            yield ChatGenerationChunk(message=ids.stamp(last_chunk(*served, blocks, cost)))

    def _combine_llm_outputs(self, llm_outputs: list[dict[str, Any] | None]) -> dict[str, Any]:
        return combine_llm_outputs(llm_outputs)

    def get_num_tokens(self, text: str) -> int:
        """An estimate of ``text``'s tokens without a tokenizer (see ``estimate_text_tokens``).

        Args:
            text: Any text.

        Returns:
            The estimated number of tokens.
        """
        return estimate_text_tokens(text)

    # Tools and structured output ---------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (any form ``convert_to_openai_tool`` takes) for every vendor of the pool.

        Args:
            tools: Tools, functions, pydantic models or OpenAI tool dicts.
            tool_choice: ``"auto"``, ``"none"``, ``"any"``/``"required"`` (must call some
                tool), a tool name, ``True`` (the only tool), or an OpenAI tool-choice dict.
            strict: Ask for schema-exact arguments where the vendor supports it.
            parallel_tool_calls: Allow several tool calls in one reply.
            **kwargs: Further call parameters.

        Returns:
            A runnable that calls the model with the tools.
        """
        formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        if tool_choice is not None and tool_choice is not False:
            kwargs["tool_choice"] = _tool_choice(tool_choice, formatted)
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["function_calling", "json_mode", "json_schema"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Return a runnable whose output matches ``schema``.

        Args:
            schema: A pydantic model, TypedDict, JSON schema dict or OpenAI tool dict.
            method: ``function_calling`` (portable across every vendor of a mixed pool),
                ``json_schema`` (the vendor's native structured output, where it has one) or
                ``json_mode`` (a JSON object; describe the schema in the prompt).
            include_raw: Return ``{"raw", "parsed", "parsing_error"}`` instead of raising.
            strict: Ask for schema-exact output where the vendor supports it.
            **kwargs: Not supported; an unknown keyword is an error.

        Returns:
            A runnable producing the parsed output.
        """
        if kwargs:
            raise ValueError(f"with_structured_output got unexpected arguments: {sorted(kwargs)}")
        if schema is None and method != "json_mode":
            raise ValueError(f"schema is required for method={method!r}; pass a pydantic model")
        is_model = isinstance(schema, type) and is_basemodel_subclass(schema)
        # Tells callbacks and LangSmith which schema the call is for (BaseChatModel pops it).
        traced: dict[str, Any] = {
            "ls_structured_output_format": {
                "kwargs": {"method": method, "strict": strict},
                "schema": schema,
            }
        }
        parser: Runnable[Any, Any]
        if method == "function_calling":
            tool = convert_to_openai_tool(schema, strict=strict)  # type: ignore[arg-type]
            name = tool["function"]["name"]
            llm = self.bind_tools([tool], tool_choice=name, strict=strict, **traced)
            if is_model:
                parser = PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
            else:
                parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
        elif method == "json_schema":
            tool = convert_to_openai_tool(schema, strict=strict)  # type: ignore[arg-type]
            fn = tool["function"]
            json_schema: dict[str, Any] = {"name": fn["name"], "schema": fn["parameters"]}
            if strict is not None:
                json_schema["strict"] = strict
            llm = self.bind(
                response_format={"type": "json_schema", "json_schema": json_schema}, **traced
            )
            parser = (
                PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                if is_model
                else JsonOutputParser()
            )
        elif method == "json_mode":
            if schema is None:
                traced = {}
            llm = self.bind(response_format={"type": "json_object"}, **traced)
            parser = (
                PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                if is_model
                else JsonOutputParser()
            )
        else:
            raise ValueError(
                f"method must be 'function_calling', 'json_schema' or 'json_mode', got {method!r}"
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks(
            [fallback], exception_key="parsing_error"
        )

    def with_validation(self, validator: Any, max_retries: int = 2) -> Runnable[Any, Any]:
        """Ask, check the reply with ``validator``, re-ask with its retry prompt on failure.

        A retry prefers a provider that has not failed this check. Returns the validated value,
        or raises ``ValidationFailedError`` holding every attempt when retries run out.

        Args:
            validator: A ``JsonValidator``, ``RegexValidator`` or ``TextValidator``.
            max_retries: Further attempts after the first failed check.

        Returns:
            A runnable over the same inputs as the model.
        """
        return ValidatingRunnable(model=self, validator=validator, max_retries=max_retries)


# Helpers ---------------------------------------------------------------------------------------


def _pool_id(pool: PoolConfig) -> str:
    """A short name for a pool in traces: its size and a digest of its key fingerprints."""
    digest = hashlib.sha256("".join(p.key_fingerprint for p in pool.providers).encode())
    return f"{len(pool.providers)} providers #{digest.hexdigest()[:8]}"


def estimate_text_tokens(text: str) -> int:
    """A vendor-neutral token estimate: four ASCII characters a token, one per other character.

    No tokenizer is downloaded (LangChain's default needs ``transformers``); the keys of a mixed
    pool count differently anyway. English text comes within about 20% of OpenAI's and
    Anthropic's counts; CJK text is counted about one token a character, as they do.
    """
    ascii_chars = sum(1 for c in text if c < "\x80") if not text.isascii() else len(text)
    return -(-ascii_chars // 4) + (len(text) - ascii_chars)


def _tool_choice(choice: dict[str, Any] | str | bool, tools: list[dict[str, Any]]) -> Any:
    if isinstance(choice, dict):
        return choice
    if choice is True:
        if len(tools) != 1:
            raise ValueError("tool_choice=True needs exactly one tool; name the tool instead")
        choice = tools[0]["function"]["name"]
    if choice in ("auto", "none", "required"):
        return choice
    if choice == "any":
        return "required"
    names = [t["function"]["name"] for t in tools]
    if choice not in names:
        raise ValueError(f"tool_choice {choice!r} names no bound tool; bound tools: {names}")
    return {"type": "function", "function": {"name": choice}}
