"""Fake vendor servers on loopback that speak each vendor's real wire format, with faults.

Point the official SDKs (``openai``, ``anthropic``, ``google-genai``, ``zhipuai``) at a
server's ``base_url``, script replies with ``reply_text`` or ``set_responder``, inject ``Fault``s
and read back every request from ``requests``. Fixtures for pytest live in
``langchain_pllm.testing.pytest_plugin``.

The knobs, on every server unless a vendor is named:

- Faults (``enqueue``, ``fault_for_key(key or None for every key)``, ``set_fault_rate``): an error
  status in the vendor's format (``message``, ``code``, ``error_type``, Gemini ``details``, with
  ``Retry-After``), ``latency`` (a slow reply, for timeouts), ``drop`` (reset before any byte),
  ``cut_body`` (headers and half the body, then a reset), ``cut_after`` (a stream reset after N
  chunks), ``chunk_delay`` (a slow stream), ``malformed`` (a body that is not JSON).
  ``closed_port_url()`` gives a URL whose connection is refused.
- Spent keys: ``spend_key(key or None)`` / ``refill_key`` bind the vendor's own error for a key
  whose money or quota is gone, ``spent_fault()`` builds it: OpenAI 429 ``insufficient_quota``
  with no ``Retry-After``; ``FakeOpenAIServer(flavor="deepseek")`` 402 "Insufficient Balance";
  ``flavor="siliconflow"`` 403 ``{"code": 30001, ...}`` (that flavor's errors all take
  SiliconFlow's ``{"code", "message", "data"}`` shape); Anthropic 400 ``invalid_request_error``
  "Your credit balance is too low ..."; Gemini 429 ``RESOURCE_EXHAUSTED`` with a ``QuotaFailure``
  whose ``quotaId`` says ``PerDay`` (``quota_fault(per="minute")`` for the rate-limit variant) and a
  ``RetryInfo``; Zhipu 429 with code ``1113`` (``spent_fault(code="1304")``: the day's calls used).
- Rate-limit budgets: `set_budget(RateBudget(requests=..., tokens=..., input_tokens=...,
  output_tokens=..., window=..., clock=manual_clock.now), api_key=None)` counts each key in
  fixed windows; every reply (streams included) carries OpenAI's ``x-ratelimit-*`` or
  Anthropic's ``anthropic-ratelimit-*`` headers, and a request that does not fit gets 429 with
  ``Retry-After`` in the vendor's format (Zhipu ``1303``, ``1304`` for a day; Gemini a
  ``QuotaFailure``). ``RateBudget().pin("requests", remaining=0, reset=20)`` fixes what the
  headers say without enforcing it.
- Concurrency: ``set_concurrency_limit(n, api_key=None)`` answers a key's request beyond ``n`` in
  flight with the vendor's error (Zhipu ``1302``); ``in_flight(key)`` reads the count.
- Prompt cache: ``prompt_cache=True`` (and ``cache_min_tokens``) reports cached input tokens when
  a key resends a prompt prefix it sent before, per key, in each vendor's fields (OpenAI and
  Zhipu ``prompt_tokens_details.cached_tokens``, DeepSeek also ``prompt_cache_hit_tokens`` /
  ``prompt_cache_miss_tokens``, Anthropic ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens`` up to its last ``cache_control`` marker, Gemini
  ``cachedContentTokenCount``); ``clear_prompt_cache(key)`` forgets.
- Requests the real APIs refuse (no model, empty ``messages``/``contents``, unknown roles,
  Anthropic's empty content) get the vendor's 400. Reply ids are unique across servers,
  vendors and processes, and every chunk of a stream carries its reply's id
  (``Reply(call_ids=[...])`` scripts tool-call ids a test must know). JSON mode answers an
  object that fits a JSON schema found in the prompt (as Zhipu clients send it).
- The log (``requests``) records arrival time, path, model, key and ``key_index``, ``in_flight``,
  status, usage, ``cached_tokens``, the fault applied and the rate-limit headers sent.
"""

from langchain_pllm.testing.anthropic_server import FakeAnthropicServer
from langchain_pllm.testing.budgets import Limit, RateBudget
from langchain_pllm.testing.faults import Fault
from langchain_pllm.testing.gemini_server import FakeGeminiServer
from langchain_pllm.testing.lifecycle import closed_port_url
from langchain_pllm.testing.openai_server import FakeOpenAIServer
from langchain_pllm.testing.replies import Reply, synthesize
from langchain_pllm.testing.server import FakeVendorServer, RecordedRequest
from langchain_pllm.testing.zhipu_server import FakeZhipuServer

__all__ = [
    "FakeAnthropicServer",
    "FakeGeminiServer",
    "FakeOpenAIServer",
    "FakeVendorServer",
    "FakeZhipuServer",
    "Fault",
    "Limit",
    "RateBudget",
    "RecordedRequest",
    "Reply",
    "closed_port_url",
    "synthesize",
]
