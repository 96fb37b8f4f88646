"""The public surface of ``langchain_pllm`` (DESIGN.md section 2), pinned like the partners' one.

A name added to or dropped from ``__all__`` is a change of the public API: it must show here.
"""

from __future__ import annotations

import langchain_pllm
from langchain_pllm import __all__

EXPECTED_ALL = [
    "BalancedChatModel",
    "BalancedEmbeddings",
    "InvalidCallError",
    "JsonValidator",
    "NoProviderAvailableError",
    "PllmProgress",
    "PllmConfigError",
    "RegexValidator",
    "TextValidator",
    "ValidationFailedError",
    "ValidationResult",
    "__version__",
    "load_config",
    "register_vendor",
]


def test_all_imports() -> None:
    assert sorted(__all__) == sorted(EXPECTED_ALL)


def test_every_public_name_resolves() -> None:
    missing = [name for name in __all__ if not hasattr(langchain_pllm, name)]
    assert missing == []


def test_the_clock_is_importable_from_the_balancer() -> None:
    # DESIGN.md section 2 names this path; it must survive the clock's move below the balancer.
    from langchain_pllm.balancer import ManualClock

    clock = ManualClock()
    start = clock.now()
    clock.advance(5)
    assert clock.now() == start + 5
