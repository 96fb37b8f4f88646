"""``PoolFace``: what the chat and embeddings faces share, a pool of keys and its balancer.

Both faces take the same pool keywords (``providers``, ``balancer``, ``api_key``, ``clock``,
and the ``retry_policy``/``max_retries`` shortcuts), validate them the same way, build from the
same config file (each from its own section) and reach the same process-wide balancer of their
pool. That lives here once, as a pydantic mixin listed first among each face's bases (before
``BaseChatModel`` or ``Embeddings``), so its ``__init__`` turns the pool keywords into config
objects before the LangChain base validates the fields. Face-specific state stays in the face
(the chat model's name and trace id, the embeddings' vector space).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr

from langchain_pllm.balancer import Balancer, Clock, shared_balancer
from langchain_pllm.config import (
    BalancerConfig,
    PoolConfig,
    ProviderConfig,
    balancer_from_mapping,
    load_config,
    pool_from_providers,
)
from langchain_pllm.config.checks import suggest
from langchain_pllm.exceptions import PllmConfigError
from langchain_pllm.providers import provider_class
from langchain_pllm.stats_view import StatsTable

__all__ = ["AVOID_KWARG", "SPILL_KWARG", "PoolFace"]

# Private call keyword of the chat face: provider ids to avoid for this call if any other can
# serve. ``with_validation`` sends it after a failed check; the chat model reads it.
AVOID_KWARG = "pllm_avoid"

# Call keyword of the chat face: ``spill=False`` makes a request wait for its tier (the first)
# rather than go to a higher one; ``None`` or absent: ``balancer.spill``.
SPILL_KWARG = "spill"

Capability = Literal["chat", "embeddings"]

# typing.Self is 3.11+; the package still installs on 3.10.
_Face = TypeVar("_Face", bound="PoolFace")

# capability -> (section of the config file, how an error names the pool)
_SECTIONS: dict[str, tuple[str, str]] = {
    "chat": ("llm", "chat pool"),
    "embeddings": ("embedding", "embeddings pool"),
}


class PoolFace(BaseModel):
    """The pool fields, their validation, ``from_config``, the shared balancer and its stats."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    capability: ClassVar[Capability]
    """What the face asks of every provider of its pool (``chat`` or ``embeddings``)."""

    providers: list[ProviderConfig] = Field(default_factory=list)
    """The pool: one entry per key and model."""
    balancer: BalancerConfig = Field(default_factory=BalancerConfig)
    """Retry, breaker, wait and state settings."""
    api_key: SecretStr | None = None
    """Key used by provider entries that give none."""
    clock: Clock | None = Field(default=None, exclude=True, repr=False)
    """Time source; tests pass a ``ManualClock``."""

    _pool: PoolConfig = PrivateAttr()
    _has_tpm: bool = PrivateAttr(default=False)
    _balancer: Balancer | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        """Validate the pool and the balancer settings; raise ``PllmConfigError`` if wrong."""
        pool, balancer = _pool_and_balancer(data, self.capability)
        _place_unknown(type(self), data)
        data["providers"] = list(pool.providers)
        data["balancer"] = balancer
        super().__init__(**data)
        self._pool = pool
        # Token estimates are worth computing only when some key counts tokens.
        self._has_tpm = any(
            p.tpm or any(w.resource != "requests" for w in p.quota_windows) for p in pool.providers
        )

    def model_post_init(self, context: Any, /) -> None:
        """Run the bases' post-init hooks too (``BaseLanguageModel`` records ``lc_versions``)."""
        # Without this method pydantic gives the mixin, for its private attributes, a hook that
        # does not call super(); listed first, the mixin would hide the LangChain base's hook.
        super().model_post_init(context)

    @classmethod
    def from_config(cls: type[_Face], source: Any, **kwargs: Any) -> _Face:
        """Build from a YAML path, YAML text or dict: the face's pool section and ``balancer:``.

        The chat model reads the ``llm:`` section, the embeddings the ``embedding:`` section.
        """
        section, what = _SECTIONS[cls.capability]
        config = load_config(source)
        pool: PoolConfig | None = getattr(config, section)
        if pool is None:
            raise PllmConfigError(
                f"the config has no {what}; add an `{section}:` section with at least one provider",
                field=section,
            )
        return cls(providers=list(pool.providers), balancer=config.balancer, **kwargs)

    @property
    def balancer_instance(self) -> Balancer:
        """The shared balancer of this pool (one per pool, settings and clock in the process)."""
        balancer = self._balancer
        if balancer is None:
            # Held here so the process-wide registry (weak values) keeps it while we live.
            balancer = self._balancer = shared_balancer(self._pool, self.balancer, self.clock)
        return balancer

    def get_stats(self) -> dict[str, dict[str, Any]]:
        """Per-provider stats: requests, tokens, errors, active, breaker state, window use."""
        return self.balancer_instance.get_stats()

    def stats_table(self) -> StatsTable:
        """The stats as a table: ``rich`` prints it, Jupyter shows it as HTML."""
        return StatsTable(self.get_stats())


def _known_names(cls: type[BaseModel]) -> set[str]:
    names = set(cls.model_fields)
    names.update(f.alias for f in cls.model_fields.values() if f.alias)
    return names


_PER_CALL = frozenset({"model", "timeout"})


def _place_unknown(cls: type[BaseModel], data: dict[str, Any]) -> None:
    """Never drop a constructor keyword silently.

    A face with ``model_kwargs`` (the chat model) moves an unknown keyword there with a warning,
    as ``ChatOpenAI`` does, so ``seed=7`` reaches the vendor; a face without (embeddings)
    refuses it. Either way a near miss (``temprature``) is named.
    """
    known = _known_names(cls)
    unknown = [k for k in data if k not in known]
    if not unknown:
        return
    if "model_kwargs" not in cls.model_fields:
        name = unknown[0]
        hint = suggest(name, sorted(known)).strip()
        raise PllmConfigError(
            f"{cls.__name__} has no argument {name!r}{'; ' + hint if hint else ''}",
            field=name,
        )
    extra = dict(data.get("model_kwargs") or {})
    for name in unknown:
        hint = suggest(name, sorted(known)).strip()
        # model= and timeout= are never body fields: the face applies them to every call.
        fate = (
            f"applies to every call as {name}= does"
            if name in _PER_CALL
            else "is sent to the vendor as is"
        )
        warnings.warn(
            f"{name} is not a parameter of {cls.__name__}: it was moved to model_kwargs and "
            f"{fate}{'; ' + hint if hint else ''}",
            stacklevel=4,
        )
        extra[name] = data.pop(name)
    data["model_kwargs"] = extra


def _pool_and_balancer(data: dict[str, Any], capability: str) -> tuple[PoolConfig, BalancerConfig]:
    """Validate a face's pool and balancer keyword arguments into config objects.

    Pops the ``retry_policy``/``max_retries`` shortcuts from ``data``: they are not fields.
    """
    api_key = data.get("api_key")
    if isinstance(api_key, SecretStr):
        api_key = api_key.get_secret_value()
    pool = pool_from_providers(data.get("providers") or [], default_api_key=api_key)
    raw = data.get("balancer")
    if isinstance(raw, BalancerConfig):
        # Field by field, not model_dump(): the dump redacts the state URL's password.
        settings: dict[str, Any] = {
            name: getattr(raw, name) for name in BalancerConfig.model_fields
        }
    elif isinstance(raw, Mapping):
        settings = dict(raw)
    elif raw is None:
        settings = {}
    else:
        raise PllmConfigError(
            f"must be a mapping of balancer settings, got {type(raw).__name__}", field="balancer"
        )
    # Every balancer setting is also a keyword of the face (max_wait=, request_timeout=...),
    # overriding the same setting of ``balancer``.
    for name in BalancerConfig.model_fields:
        if data.get(name) is not None:
            settings[name] = data.pop(name)
        else:
            data.pop(name, None)
    balancer = balancer_from_mapping(settings)
    for i, p in enumerate(pool.providers):
        cls = provider_class(p.vendor)
        if capability == "embeddings" and not cls.supports_embeddings:
            raise PllmConfigError(
                f"vendor {p.vendor!r} has no embeddings API; remove it from the embeddings pool",
                field=f"providers[{i}].vendor",
            )
    return pool, balancer
