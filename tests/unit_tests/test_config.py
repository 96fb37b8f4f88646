"""Tests for langchain_pllm.config: sources, ${ENV}, defaults, ids, fingerprints and every error."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from langchain_pllm.config import (
    DEFAULT_API_BASE,
    VENDORS,
    BalancerConfig,
    PllmConfig,
    PoolConfig,
    ProviderConfig,
    balancer_from_mapping,
    load_config,
    pool_from_providers,
)
from langchain_pllm.exceptions import PllmConfigError

SECRET = "sk-very-secret-0123456789"

FULL_YAML = textwrap.dedent(
    """
    llm:
      use: "openai, anthropic"
      openai:
        - api_key: ${TEST_PLLM_OPENAI_KEY}
          api_base: https://api.openai.com/v1/
          model: gpt-4o-mini
          rate_limit: 20
        - api_key: sk-second
          model: gpt-4o
          name: big
          tpm: 100000
          max_concurrency: 4
          weight: 2.5
          timeout: 30
      anthropic:
        api_key: ak-one
        model: claude-sonnet
      google:
        - api_key: ${TEST_PLLM_UNSET_GOOGLE_KEY}
          model: gemini
          rate_limit: not-checked-because-unused
    embedding:
      use: [zhipu]
      zhipu:
        - api_key: zk
          model: embedding-3
          batch_size: 64
    balancer:
      retry_policy: retry_once
      max_retries: 5
      state: redis://localhost:6379/0
    """
)


def entry(**extra: Any) -> dict[str, Any]:
    return {"api_key": SECRET, "model": "gpt-4o-mini", **extra}


def llm(**sections: Any) -> dict[str, Any]:
    return {"llm": sections}


def chat(source: Any) -> tuple[ProviderConfig, ...]:
    """The chat pool's providers of a loaded config."""
    pool = load_config(source).llm
    assert pool is not None
    return pool.providers


def config_error(source: Any) -> PllmConfigError:
    with pytest.raises(PllmConfigError) as info:
        load_config(source)
    return info.value


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PLLM_OPENAI_KEY", SECRET)
    monkeypatch.delenv("TEST_PLLM_UNSET_GOOGLE_KEY", raising=False)
    monkeypatch.delenv("TEST_PLLM_MISSING", raising=False)


# --- sources ----------------------------------------------------------------------------------


def test_yaml_text_full_config() -> None:
    config = load_config(FULL_YAML)

    assert config.llm is not None
    first, second, third = config.llm.providers
    assert [p.id for p in config.llm.providers] == ["openai-0", "big", "anthropic-0"]
    assert first.api_key.get_secret_value() == SECRET
    assert first.api_base == "https://api.openai.com/v1"  # trailing slash stripped
    assert first.rate_limit == 20
    assert (second.tpm, second.max_concurrency, second.weight, second.timeout) == (
        100000,
        4,
        2.5,
        30.0,
    )
    assert third.vendor == "anthropic"
    assert third.api_base == DEFAULT_API_BASE["anthropic"]

    assert config.embedding is not None
    (zhipu,) = config.embedding.providers
    assert (zhipu.id, zhipu.batch_size, zhipu.api_base) == (
        "zhipu-0",
        64,
        "https://open.bigmodel.cn/api/paas/v4",
    )

    assert config.balancer.retry_policy == "retry_once"
    assert config.balancer.max_retries == 5
    assert config.balancer.state == "redis://localhost:6379/0"
    assert config.balancer.window == 60.0  # untouched default


def test_file_path_as_str_and_pathlike(tmp_path: Path) -> None:
    path = tmp_path / "pllm.yaml"
    path.write_text(FULL_YAML, encoding="utf-8")

    from_str = load_config(str(path))
    from_path = load_config(path)

    assert from_str == from_path == load_config(FULL_YAML)


def test_dict_source_is_used_as_is_and_not_mutated() -> None:
    source = {"llm": {"openai": [entry(api_key="${TEST_PLLM_OPENAI_KEY}")]}}
    snapshot = repr(source)

    config = load_config(source)

    assert config.llm is not None
    assert config.llm.providers[0].api_key.get_secret_value() == SECRET
    assert config.embedding is None
    assert config.balancer == BalancerConfig()
    assert repr(source) == snapshot


@pytest.mark.parametrize("source", ["missing/pllm.yaml", "pllm.yml", "./conf/dir/config"])
def test_missing_file_that_looks_like_a_path(source: str) -> None:
    err = config_error(source)

    assert err.field is None
    assert "config file not found" in str(err)
    assert source in str(err)


def test_missing_pathlike_is_file_not_found(tmp_path: Path) -> None:
    err = config_error(tmp_path / "nope")
    assert "config file not found" in str(err)


def test_bare_word_that_is_no_file_is_yaml_and_says_so() -> None:
    err = config_error("pllm")
    assert "must be a mapping" in str(err)
    assert "does not exist" in str(err)


def test_unreadable_file(tmp_path: Path) -> None:
    err = config_error(str(tmp_path))  # a directory
    assert "cannot read config file" in str(err)

    binary = tmp_path / "bad.yaml"
    binary.write_bytes(b"llm: \xff\xfe\x00")
    err = config_error(binary)
    assert "cannot read config file" in str(err)
    assert "UTF-8" in str(err)


def test_yaml_syntax_error_reports_line_without_quoting_the_text() -> None:
    text = f"llm:\n  openai:\n    - api_key: {SECRET}\n      model: [unclosed\n"
    err = config_error(text)

    assert err.field is None
    assert "YAML syntax error" in str(err)
    assert "line 5" in str(err)
    assert SECRET not in str(err)


def test_yaml_syntax_error_in_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("llm:\n  openai: {api_key: a, model: b\n", encoding="utf-8")
    err = config_error(path)
    assert str(path) in str(err)
    assert "line 3" in str(err)


def test_duplicate_yaml_key_is_an_error() -> None:
    err = config_error("llm:\n  openai: {api_key: a, model: b}\n  openai: {api_key: c, model: d}\n")
    assert "written twice" in str(err)
    assert "line 3" in str(err)


def test_yaml_merge_keys_still_work() -> None:
    text = textwrap.dedent(
        """
        llm:
          openai:
            - &base {api_key: a, model: m, rate_limit: 5}
            - {<<: *base, api_key: b, rate_limit: 7}
        """
    )
    providers = chat(text)
    assert [(p.api_key.get_secret_value(), p.rate_limit) for p in providers] == [("a", 5), ("b", 7)]


@pytest.mark.parametrize(
    ("source", "fragment"),
    [("", "is empty"), ("- a\n- b\n", "must be a mapping"), (42, "file path, YAML text")],
)
def test_bad_sources(source: Any, fragment: str) -> None:
    assert fragment in str(config_error(source))


def test_unknown_top_level_key_suggests_closest() -> None:
    err = config_error({"llm": {"openai": entry()}, "balancr": {}})
    assert err.field == "balancr"
    assert "did you mean 'balancer'" in str(err)


def test_config_without_any_pool() -> None:
    err = config_error({"balancer": {"max_retries": 1}})
    assert "neither an llm: nor an embedding:" in str(err)


# --- environment interpolation ----------------------------------------------------------------


def test_env_default_and_inline_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PLLM_HOST", "127.0.0.1:9000")
    monkeypatch.setenv("TEST_PLLM_EMPTY", "")
    providers = chat(
        llm(
            openai=entry(
                api_base="http://${TEST_PLLM_HOST}/v1",
                model="${TEST_PLLM_MISSING:-gpt-4o-mini}",
                name="${TEST_PLLM_EMPTY:-fallback}",
                rate_limit="${TEST_PLLM_MISSING:-20}",
            )
        )
    )
    (provider,) = providers
    assert provider.api_base == "http://127.0.0.1:9000/v1"
    assert provider.model == "gpt-4o-mini"
    assert provider.name == provider.id == "fallback"
    assert provider.rate_limit == 20  # digit strings (what ${VAR} yields) are numbers


def test_env_missing_variable_names_field_and_variable() -> None:
    err = config_error(llm(openai=[entry(), entry(api_key="${TEST_PLLM_MISSING}")]))

    assert err.field == "llm.openai[1].api_key"
    assert "TEST_PLLM_MISSING" in str(err)
    assert "set TEST_PLLM_MISSING in the environment or write the key" in str(err)


def test_env_missing_in_balancer_section() -> None:
    err = config_error({"llm": {"openai": entry()}, "balancer": {"state": "${TEST_PLLM_MISSING}"}})
    assert err.field == "balancer.state"
    assert "write the value" in str(err)


def test_env_value_cannot_inject_yaml_structure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PLLM_MODEL", "m\n      rate_limit: 1\n      name: injected")
    text = "llm:\n  openai:\n    - api_key: k\n      model: ${TEST_PLLM_MODEL}\n"
    (provider,) = chat(text)
    assert provider.model.startswith("m\n")
    assert provider.rate_limit is None
    assert provider.name is None


def test_literal_dollar_brace_and_malformed_reference() -> None:
    providers = chat(llm(openai=entry(name="cost-$${NOT_A_VAR}")))
    assert providers[0].name == "cost-${NOT_A_VAR}"

    err = config_error(llm(openai=entry(api_key="pre-${BROKEN")))
    assert err.field == "llm.openai.api_key"
    assert "malformed" in str(err)
    assert "pre-" not in str(err)


def test_unused_section_is_not_interpolated_or_validated() -> None:
    providers = chat(
        llm(
            use="openai",
            openai=entry(),
            anthropic=[{"api_key": "${TEST_PLLM_MISSING}", "rate_limit": "zero"}],
            google="not even a list",
        )
    )
    assert [p.vendor for p in providers] == ["openai"]


# --- use: -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "use", ["anthropic, openai", ["anthropic", "openai"], " anthropic,openai,"]
)
def test_use_as_comma_list_or_yaml_list_sets_order(use: Any) -> None:
    providers = chat(llm(use=use, openai=entry(), anthropic=entry(), google=entry()))
    assert [p.id for p in providers] == ["anthropic-0", "openai-0"]


def test_use_as_yaml_list_in_text() -> None:
    text = "llm:\n  use:\n    - google\n  google: {api_key: g, model: gemini}\n"
    assert chat(text)[0].id == "google-0"


def test_without_use_every_present_section_is_used() -> None:
    providers = chat(llm(deepseek=entry(), siliconflow=[entry(), entry()]))
    assert [p.id for p in providers] == [
        "deepseek-0",
        "siliconflow-0",
        "siliconflow-1",
    ]


def test_use_naming_absent_section() -> None:
    err = config_error(llm(use="openai, anthropic", openai=entry()))
    assert err.field == "llm.use"
    assert "no llm.anthropic section" in str(err)
    assert "add one or remove 'anthropic' from use" in str(err)


def test_use_naming_unknown_vendor_suggests_closest() -> None:
    err = config_error({"embedding": {"use": ["openai", "antropic"], "openai": entry()}})
    assert err.field == "embedding.use"
    assert "'antropic'" in str(err)
    assert "did you mean 'anthropic'" in str(err)


@pytest.mark.parametrize(("use", "fragment"), [("", "names no vendor"), (3, "comma-separated")])
def test_bad_use_values(use: Any, fragment: str) -> None:
    err = config_error(llm(use=use, openai=entry()))
    assert err.field == "llm.use"
    assert fragment in str(err)


def test_unknown_vendor_section_suggests_closest() -> None:
    err = config_error(llm(opnai=entry()))
    assert err.field == "llm.opnai"
    assert "did you mean 'openai'" in str(err)


# --- pool and entry errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "field", "fragment"),
    [
        ({}, "llm", "pool is empty"),
        (None, "llm", "it is empty"),
        ({"openai": []}, "llm.openai", "lists no providers"),
        ({"openai": None}, "llm.openai", "it is empty"),
        ({"openai": ["just a string"]}, "llm.openai[0]", "must be a mapping"),
    ],
)
def test_empty_or_malformed_pool(section: Any, field: str, fragment: str) -> None:
    err = config_error({"llm": section})
    assert err.field == field
    assert fragment in str(err)


def test_missing_api_key_and_model() -> None:
    err = config_error(llm(openai=[entry(), {"model": "m"}]))
    assert err.field == "llm.openai[1].api_key"
    assert "api_key is required" in str(err)
    assert "${ENV_VAR}" in str(err)

    err = config_error(llm(anthropic={"api_key": SECRET}))
    assert err.field == "llm.anthropic.model"
    assert "model is required" in str(err)
    assert SECRET not in str(err)


def test_unknown_entry_key_suggests_closest_and_hides_key() -> None:
    err = config_error(llm(openai=[entry(), entry(rate_limt=5)]))
    assert err.field == "llm.openai[1].rate_limt"
    assert "did you mean 'rate_limit'" in str(err)
    assert SECRET not in str(err)


def test_entry_may_not_set_id_or_contradict_its_vendor() -> None:
    err = config_error(llm(openai=entry(id="x")))
    assert err.field == "llm.openai.id"
    assert "write name:" in str(err)

    err = config_error(llm(openai=entry(vendor="anthropic")))
    assert err.field == "llm.openai.vendor"
    assert "contradicts" in str(err)

    # Repeating the section's own vendor is harmless.
    assert load_config(llm(openai=entry(vendor="openai"))).llm is not None


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("rate_limit", "abc", "rate_limit must be a positive integer, got 'abc'"),
        ("rate_limit", True, "rate_limit must be a positive integer, got True"),
        ("rate_limit", 0, "rate_limit must be a positive integer, got 0"),
        ("rate_limit", 2.5, "rate_limit must be a positive integer, got 2.5"),
        ("tpm", -100, "tpm must be a positive integer, got -100"),
        ("max_concurrency", False, "max_concurrency must be a positive integer, got False"),
        ("batch_size", [64], "batch_size must be a positive integer, got [64]"),
        ("weight", 0, "weight must be a positive number, got 0"),
        ("weight", "heavy", "weight must be a positive number, got 'heavy'"),
        ("timeout", -1, "timeout must be a positive number, got -1"),
        ("timeout", float("nan"), "timeout must be a positive number, got nan"),
        ("model", "  ", "model is empty"),
        ("model", 4, "model must be a string, got int"),
        ("name", "", "name is empty"),
        ("api_base", "api.openai.com/v1", "api_base must start with http:// or https://"),
    ],
)
def test_bad_entry_values(key: str, value: Any, expected: str) -> None:
    err = config_error(llm(openai=[entry(), entry(**{key: value})]))
    assert err.field == f"llm.openai[1].{key}"
    assert expected in str(err)
    assert SECRET not in str(err)


@pytest.mark.parametrize("value", ["", "   ", 12345, ["k"], None])
def test_bad_api_key_never_echoed(value: Any) -> None:
    err = config_error(llm(anthropic=[{"api_key": value, "model": "m"}]))
    assert err.field == "llm.anthropic[0].api_key"
    assert "api_key is" in str(err) or "api_key must be a string" in str(err)
    assert "12345" not in str(err)
    assert "'k'" not in str(err)


def test_several_problems_are_reported_together() -> None:
    err = config_error(llm(openai=entry(rate_limit=0, weight=-1)))
    assert err.field == "llm.openai.rate_limit"
    assert "also: llm.openai.weight" in str(err)


def test_api_key_whitespace_is_stripped() -> None:
    providers = chat(llm(openai={"api_key": f"  {SECRET}\n", "model": "m"}))
    assert providers[0].api_key.get_secret_value() == SECRET


# --- defaults, ids ----------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
def test_default_api_base_per_vendor(vendor: str) -> None:
    provider = ProviderConfig(vendor=vendor, api_key=SECRET, model="m")
    assert provider.api_base == DEFAULT_API_BASE[vendor]
    assert not provider.api_base.endswith("/")
    assert (provider.rate_limit, provider.tpm, provider.max_concurrency) == (None, None, None)
    assert (provider.weight, provider.timeout, provider.batch_size) == (1.0, None, None)
    assert provider.id == f"{vendor}-0"


def test_ids_count_per_vendor_and_names_win() -> None:
    providers = chat(
        llm(
            openai=[entry(), entry(name="fast"), entry()],
            anthropic=[entry(), entry()],
        )
    )
    assert [p.id for p in providers] == [
        "openai-0",
        "fast",
        "openai-2",
        "anthropic-0",
        "anthropic-1",
    ]


def test_duplicate_names_name_both_places() -> None:
    err = config_error(llm(openai=[entry(name="main")], anthropic=[entry(), entry(name="main")]))
    assert err.field == "llm"
    assert "llm.openai[0]" in str(err)
    assert "llm.anthropic[1]" in str(err)
    assert "unique name" in str(err)


def test_name_colliding_with_generated_id() -> None:
    err = config_error(llm(openai=[entry(name="anthropic-0")], anthropic=[entry()]))
    assert "'anthropic-0'" in str(err)
    assert "llm.openai[0] and llm.anthropic[0]" in str(err)


def test_balancer_defaults() -> None:
    balancer = PllmConfig().balancer
    assert balancer == BalancerConfig()
    assert (balancer.retry_policy, balancer.max_retries, balancer.breaker_threshold) == (
        "fixed",
        3,
        3,
    )
    assert (balancer.health_check_interval, balancer.state, balancer.window) == (
        300.0,
        "memory",
        60.0,
    )
    assert (balancer.max_wait, balancer.request_timeout, balancer.default_retry_after) == (
        120.0,
        None,
        1.0,
    )
    assert (balancer.redis_timeout, balancer.local_share) == (0.25, None)


# --- balancer ---------------------------------------------------------------------------------


def test_balancer_accepts_valid_values() -> None:
    balancer = balancer_from_mapping(
        {
            "retry_policy": "infinite",
            "max_retries": 0,
            "breaker_threshold": 1,
            "health_check_interval": 0.5,
            "state": "unix:///tmp/redis.sock",
            "window": 1,
            "max_wait": 0,
            "request_timeout": 10,
            "default_retry_after": 0,
            "redis_timeout": 0.1,
            "local_share": 1,
        }
    )
    assert balancer.retry_policy == "infinite"
    assert balancer.max_wait == 0.0
    assert balancer.local_share == 1.0
    assert balancer_from_mapping(None) == BalancerConfig()
    assert balancer_from_mapping({"state": "rediss://h:6380/1"}).state == "rediss://h:6380/1"


def test_balancer_accepts_a_cluster_url_and_hides_its_password() -> None:
    for url in ("redis+cluster://:pw@h:7000", "rediss+cluster://user:pw@h:7000"):
        balancer = balancer_from_mapping({"state": url})
        assert balancer.state == url  # kept whole for connecting
        assert "pw" not in repr(balancer)
        assert "pw" not in str(balancer.model_dump())


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("max_retries", -1, "max_retries must be an integer >= 0, got -1"),
        ("max_retries", True, "max_retries must be an integer >= 0, got True"),
        ("breaker_threshold", 0, "breaker_threshold must be a positive integer, got 0"),
        ("health_check_interval", 0, "health_check_interval must be a positive number"),
        ("window", "soon", "window must be a positive number, got 'soon'"),
        ("max_wait", -0.5, "max_wait must be a number >= 0, got -0.5"),
        ("request_timeout", 0, "request_timeout must be a positive number"),
        ("default_retry_after", -1, "default_retry_after must be a number >= 0"),
        ("redis_timeout", 0, "redis_timeout must be a positive number"),
        ("local_share", 1.5, "local_share must be a positive number no larger than 1"),
        ("local_share", 0, "local_share must be a positive number no larger than 1"),
        ("state", "postgres://db", "state must be memory or a redis://"),
        ("retry_policy", "fixd", "did you mean 'fixed'"),
        ("retry_policy", 3, "retry_policy must be one of: fixed, infinite, retry_once"),
        ("outage", "exactly", "outage must be one of: exact, share, got 'exactly'"),
        ("outage", "shar", "did you mean 'share'"),
    ],
)
def test_bad_balancer_values(key: str, value: Any, expected: str) -> None:
    err = config_error({"llm": {"openai": entry()}, "balancer": {key: value}})
    assert err.field == f"balancer.{key}"
    assert expected in str(err)


def test_balancer_unknown_key_and_bad_type() -> None:
    err = config_error({"llm": {"openai": entry()}, "balancer": {"max_retry": 2}})
    assert err.field == "balancer.max_retry"
    assert "did you mean 'max_retries'" in str(err)

    with pytest.raises(PllmConfigError) as info:
        balancer_from_mapping(["fixed"])  # type: ignore[arg-type]
    assert info.value.field == "balancer"
    assert "must be a mapping" in str(info.value)


def test_balancer_state_url_with_password_is_not_echoed() -> None:
    err = config_error({"llm": {"openai": entry()}, "balancer": {"state": "redis:/:hunter2@h"}})
    assert err.field == "balancer.state"
    assert "hunter2" not in str(err)


def test_balancer_from_mapping_field_prefix() -> None:
    with pytest.raises(PllmConfigError) as info:
        balancer_from_mapping({"max_retries": "x"}, field="")
    assert info.value.field == "max_retries"


# --- fingerprint, secrecy, frozen ---------------------------------------------------------------


def test_key_fingerprint_is_stable_distinct_and_secret() -> None:
    one = ProviderConfig(vendor="openai", api_key=SECRET, model="gpt-4o-mini")
    same = chat(llm(openai=entry(name="other-name")))[0]
    other_key = ProviderConfig(vendor="openai", api_key=SECRET + "x", model="gpt-4o-mini")
    other_model = ProviderConfig(vendor="openai", api_key=SECRET, model="gpt-4o")
    other_base = ProviderConfig(
        vendor="openai", api_key=SECRET, model="gpt-4o-mini", api_base="http://127.0.0.1:9/v1"
    )

    assert one.key_fingerprint == same.key_fingerprint
    fingerprints = {p.key_fingerprint for p in (one, other_key, other_model, other_base)}
    assert len(fingerprints) == 4
    material = "\0".join(("openai", "https://api.openai.com/v1", "gpt-4o-mini", SECRET))
    assert one.key_fingerprint == hashlib.sha256(material.encode()).hexdigest()[:16]
    assert len(one.key_fingerprint) == 16
    assert SECRET not in one.key_fingerprint


def test_repr_and_str_never_show_the_key() -> None:
    config = load_config(FULL_YAML)
    assert config.llm is not None
    provider = config.llm.providers[0]
    for shown in (repr(config), str(config), repr(config.llm), repr(provider), str(provider)):
        assert SECRET not in shown
    assert SECRET not in provider.model_dump_json()
    assert "**********" in repr(provider)


def test_configs_are_frozen_hashable_and_compare_by_value() -> None:
    one = ProviderConfig(vendor="openai", api_key=SECRET, model="m", rate_limit=3)
    two = ProviderConfig(vendor="openai", api_key=SECRET, model="m", rate_limit=3)
    assert one == two
    assert hash(one) == hash(two)
    assert len({one, two}) == 1
    assert one != ProviderConfig(vendor="openai", api_key="other", model="m", rate_limit=3)
    with pytest.raises(ValueError, match="frozen"):
        one.rate_limit = 5
    pool = PoolConfig(providers=(one,))
    with pytest.raises(ValueError, match="frozen"):
        pool.providers = ()
    assert hash(load_config(FULL_YAML)) == hash(load_config(FULL_YAML))


def test_direct_construction_raises_our_error() -> None:
    with pytest.raises(PllmConfigError) as info:
        ProviderConfig(vendor="opnai", api_key=SECRET, model="m")
    assert info.value.field == "vendor"
    assert "did you mean 'openai'" in str(info.value)
    assert SECRET not in str(info.value)

    with pytest.raises(PllmConfigError) as info:
        PllmConfig(
            llm={"providers": [{"vendor": "openai", "api_key": SECRET, "model": "m", "tpm": 0}]}
        )
    assert info.value.field == "llm.providers[0].tpm"

    with pytest.raises(PllmConfigError, match="no providers"):
        PoolConfig(providers=())

    with pytest.raises(PllmConfigError, match="differs from name"):
        ProviderConfig(vendor="openai", api_key=SECRET, model="m", name="a", id="b")


def test_pool_config_numbers_plain_dicts() -> None:
    pool = PoolConfig(
        providers=[
            {"vendor": "openai", "api_key": "a", "model": "m"},
            {"vendor": "google", "api_key": "b", "model": "m"},
            {"vendor": "openai", "api_key": "c", "model": "m"},
        ]
    )
    assert [p.id for p in pool.providers] == ["openai-0", "google-0", "openai-1"]


# --- pool_from_providers ----------------------------------------------------------------------


def test_pool_from_providers_with_default_api_key() -> None:
    pool = pool_from_providers(
        [
            {"vendor": "openai", "model": "gpt-4o-mini", "api_base": "http://127.0.0.1:9000/v1"},
            {"vendor": "openai", "model": "gpt-4o", "api_key": "own-key", "rate_limit": 20},
            {"vendor": "anthropic", "model": "claude", "api_key": None},
        ],
        default_api_key=SecretStr(SECRET),
    )
    first, second, third = pool.providers
    assert [p.id for p in pool.providers] == ["openai-0", "openai-1", "anthropic-0"]
    assert first.api_key.get_secret_value() == SECRET
    assert first.api_base == "http://127.0.0.1:9000/v1"
    assert second.api_key.get_secret_value() == "own-key"
    assert second.rate_limit == 20
    assert third.api_key.get_secret_value() == SECRET

    (zhipu,) = pool_from_providers(
        [{"vendor": "zhipu", "model": "glm"}], default_api_key="plain"
    ).providers
    assert zhipu.api_key.get_secret_value() == "plain"


def test_pool_from_providers_renumbers_unnamed_configs() -> None:
    built = ProviderConfig(vendor="openai", api_key="k", model="m")
    named = ProviderConfig(vendor="openai", api_key="k2", model="m", name="named")
    pool = pool_from_providers([{"vendor": "openai", "api_key": "a", "model": "m"}, built, named])
    assert [p.id for p in pool.providers] == ["openai-0", "openai-1", "named"]
    assert pool.providers[1].key_fingerprint == built.key_fingerprint


@pytest.mark.parametrize(
    ("providers", "field", "fragment"),
    [
        ([], "providers", "is empty"),
        ({"vendor": "openai"}, "providers", "must be a list"),
        ("openai", "providers", "must be a list"),
        ([{"api_key": "a", "model": "m"}], "providers[0].vendor", "vendor is required"),
        ([{"vendor": "opnai", "api_key": "a", "model": "m"}], "providers[0].vendor", "'openai'"),
        ([{"vendor": "openai", "model": "m"}], "providers[0].api_key", "api_key is required"),
        ([{"vendor": "openai", "api_key": "a", "model": "m"}, 3], "providers[1]", "mapping"),
        (
            [{"vendor": "openai", "api_key": "a", "model": "m", "id": "x"}],
            "providers[0].id",
            "name",
        ),
        (
            [{"vendor": "openai", "api_key": "a", "model": "m", "rate_limit": -2}],
            "providers[0].rate_limit",
            "positive integer, got -2",
        ),
    ],
)
def test_pool_from_providers_errors(providers: Any, field: str, fragment: str) -> None:
    with pytest.raises(PllmConfigError) as info:
        pool_from_providers(providers)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_pool_from_providers_duplicate_names_and_custom_field() -> None:
    with pytest.raises(PllmConfigError) as info:
        pool_from_providers(
            [
                {"vendor": "openai", "api_key": "a", "model": "m", "name": "x"},
                {"vendor": "google", "api_key": "b", "model": "m", "name": "x"},
            ],
            field="chat_providers",
        )
    assert info.value.field == "chat_providers"
    assert "chat_providers[0] and chat_providers[1]" in str(info.value)
