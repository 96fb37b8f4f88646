"""``pllm check --ping``: does each key of a config actually work? One tiny request per key.

Each key is tried once, on its own: a pool of that one key with no retry and a private memory
state (so a ping neither waits on nor counts in a fleet's shared windows), the chat pool with a
one-token prompt, the embeddings pool with one short text. The answer is a latency, or the kind
of error the key's provider raised, read from the ``langchain_core.exceptions`` type it
classified the SDK's error into. Keys never leave this module: results name providers by id,
and error messages are scrubbed of the key before anyone sees them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.exceptions import (
    ModelAuthenticationError,
    ModelConnectionError,
    ModelNotFoundError,
    ModelPermissionDeniedError,
    ModelRateLimitError,
    ModelTimeoutError,
)
from rich import box
from rich.table import Table
from rich.text import Text

from langchain_pllm import BalancedChatModel, BalancedEmbeddings
from langchain_pllm.config import BalancerConfig

if TYPE_CHECKING:
    from langchain_pllm.config import PllmConfig, ProviderConfig

__all__ = ["ERROR_KINDS", "USABLE", "PingResult", "kind_of", "ping_config", "ping_table"]

# The one place an error becomes a verdict on a key, first match wins. A spent key (money or a
# daily quota gone) is checked before these: providers keep the status's class for it (a 429
# stays a ModelRateLimitError) and mark it ``quota_exhausted``, and such a key does not work.
ERROR_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (ModelAuthenticationError, "auth"),
    (ModelPermissionDeniedError, "auth"),
    (ModelRateLimitError, "rate-limited"),
    (ModelConnectionError, "unreachable"),
    (ModelTimeoutError, "unreachable"),
    (ModelNotFoundError, "not-found"),  # the model (or endpoint path) is wrong for this key
)
USABLE = frozenset({"ok", "rate-limited"})
"""Kinds of a key that works: it answered, or it is only busy right now."""

_STYLES = {"ok": "green", "rate-limited": "yellow"}
# Things in error texts that look like keys, whoever's they are (vendors echo a masked key).
_KEY_LIKE = re.compile(r"\b(?:sk-|key-|AIza)[-_A-Za-z0-9*.]{6,}")
_DETAIL_LENGTH = 100


def kind_of(error: BaseException) -> str:
    """The kind of error a ping raised: spent, auth, rate-limited, unreachable, not-found, other."""
    if getattr(error, "quota_exhausted", False) is True:
        return "spent"
    for error_type, kind in ERROR_KINDS:
        if isinstance(error, error_type):
            return kind
    return "other"


@dataclass(frozen=True)
class PingResult:
    """What pinging one key found."""

    pool: str
    """``llm`` or ``embedding``."""
    provider: str
    """The provider's id in its pool."""
    vendor: str
    model: str
    kind: str
    """``ok``, ``spent``, or the kind of error (see ``ERROR_KINDS``), or ``other``."""
    latency: float | None
    """Seconds the answer took (also for an error the vendor answered with)."""
    detail: str = ""
    """The error's type and message, the key scrubbed out."""

    @property
    def usable(self) -> bool:
        """Whether the key works (answered, or is only rate-limited now)."""
        return self.kind in USABLE


def _scrub(text: str, secret: str) -> str:
    text = text.replace(secret, "***") if secret else text
    text = _KEY_LIKE.sub("***", " ".join(text.split()))
    return text if len(text) <= _DETAIL_LENGTH else text[: _DETAIL_LENGTH - 3] + "..."


def _ping_one(pool: str, provider: ProviderConfig, timeout: float) -> PingResult:
    # One key, one attempt, a private state: the verdict is this key's alone.
    balancer = BalancerConfig(
        state="memory",
        retry_policy="fixed",
        max_retries=0,
        request_timeout=timeout,
        max_wait=timeout,
    )
    started = time.perf_counter()
    try:
        face: BalancedChatModel | BalancedEmbeddings
        if pool == "embedding":
            face = BalancedEmbeddings(providers=[provider], balancer=balancer)
        else:
            face = BalancedChatModel(providers=[provider], balancer=balancer, max_tokens=1)
        # The latency is the request's: the SDK client (milliseconds to build) is built first.
        for member in face.balancer_instance.members:
            member.provider.prepare(False)
        started = time.perf_counter()
        if isinstance(face, BalancedEmbeddings):
            face.embed_query("ping")
        else:
            face.invoke("ping")
    except Exception as e:
        secret = provider.api_key.get_secret_value()
        return PingResult(
            pool,
            provider.id,
            provider.vendor,
            provider.model,
            kind_of(e),
            time.perf_counter() - started,
            _scrub(f"{type(e).__name__}: {e}", secret),
        )
    return PingResult(
        pool, provider.id, provider.vendor, provider.model, "ok", time.perf_counter() - started
    )


def ping_config(config: PllmConfig, timeout: float = 20.0) -> list[PingResult]:
    """Send one tiny request with every key of both pools, concurrently; results in config order.

    Args:
        config: What ``load_config`` returned.
        timeout: Seconds each ping may take.

    Returns:
        One result per provider, chat pool first.
    """
    jobs: list[tuple[str, Any]] = [
        (name, provider)
        for name, section in (("llm", config.llm), ("embedding", config.embedding))
        if section is not None
        for provider in section.providers
    ]
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(jobs)), thread_name_prefix="pllm-ping") as ex:
        return list(ex.map(lambda job: _ping_one(job[0], job[1], timeout), jobs))


def ping_table(results: Sequence[PingResult], plain: bool = False) -> Table:
    """The results as a ``rich`` table; ``plain`` draws it in ASCII (logs, pipes)."""
    table = Table(box=box.ASCII if plain else box.SIMPLE_HEAD, header_style="" if plain else "bold")
    for header in ("pool", "provider", "vendor", "model", "result", "latency", "detail"):
        table.add_column(header, justify="right" if header == "latency" else "left")
    for r in results:
        latency = "-" if r.latency is None else f"{r.latency * 1000:.0f} ms"
        table.add_row(  # Text, not str: names and models are not rich markup
            r.pool,
            Text(r.provider),
            Text(r.vendor),
            Text(r.model),
            Text(r.kind, style=_STYLES.get(r.kind, "bold red")),
            latency,
            Text(r.detail),
        )
    return table
