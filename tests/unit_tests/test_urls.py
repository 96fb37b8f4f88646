"""URL redaction (one format for the config and the Redis state) and our query options."""

from __future__ import annotations

import logging
import socket
import uuid

import pytest

from langchain_pllm.config import BalancerConfig
from langchain_pllm.exceptions import PllmConfigError
from langchain_pllm.state.base import BreakerPolicy, Limits
from langchain_pllm.state.redis import RedisState
from langchain_pllm.urls import redact_url, take_query_options


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("memory", "memory"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user:pw@127.0.0.1:6379/0", "redis://user:***@127.0.0.1:6379/0"),
        ("redis://:pw@host/1", "redis://:***@host/1"),
        ("rediss://user:p%40ss@host:6380/0", "rediss://user:***@host:6380/0"),
        ("redis://lonely@host", "redis://***@host"),  # may be a password without its user
        ("redis://u:a@b@host:1/0", "redis://u:***@host:1/0"),  # an unquoted @ in the password
        (
            "unix:///run/redis.sock?db=2&password=pw&lease_ttl=9",
            "unix:///run/redis.sock?db=2&password=***&lease_ttl=9",
        ),
        ("redis://host/0?PassWord=pw", "redis://host/0?PassWord=***"),
        ("redis://host/0?db=1", "redis://host/0?db=1"),
        # redis-py hands unknown parameters to the connection: ssl_password is a secret too.
        ("rediss://h:1/0?ssl_password=pw&db=1", "rediss://h:1/0?ssl_password=***&db=1"),
        # Unencoded "/" or "?" in a password: the URL is malformed, the password still secret.
        ("redis://user:pa/ss@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://user:1234/5@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:p?w@host/0", "redis://:***@host/0"),
        ("redis://user:1?2@host/0", "redis://user:***@host/0"),
        # An "@" that is no user part stays.
        ("unix:///run/a@b.sock?db=0", "unix:///run/a@b.sock?db=0"),
        ("redis://host:1/0?client_name=me@x", "redis://host:1/0?client_name=me@x"),
        ("redis://[::1]:6379,h2:7001/0", "redis://[::1]:6379,h2:7001/0"),
    ],
)
def test_redact_url_hides_every_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_config_shows_the_state_url_in_the_one_format() -> None:
    url = "redis://user:pw-hidden@127.0.0.1:6399/0?password=pw-hidden"
    config = BalancerConfig(state=url)
    assert redact_url(url) in repr(config)
    assert config.model_dump()["state"] == redact_url(url)
    assert "pw-hidden" not in repr(config)
    assert config.state == url  # the real value is kept for connecting


def test_a_refused_state_url_shows_no_secret_in_the_error() -> None:
    with pytest.raises(PllmConfigError) as caught:
        BalancerConfig(state="http://h/0?ssl_password=pw-hidden")
    assert "ssl_password=***" in str(caught.value)
    assert "pw-hidden" not in str(caught.value)


def test_the_redis_state_logs_its_url_in_the_one_format(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    password = f"pw-{uuid.uuid4().hex}"
    url = f"redis://user:{password}@127.0.0.1:{port}/0"
    state = RedisState(url, timeout=0.2, server_time=False)
    with caplog.at_level(logging.WARNING, logger="langchain_pllm"):
        state.acquire("k", Limits(1, None, None, 60.0), 0, 0.0, BreakerPolicy(3, 300.0))
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "langchain_pllm")
    assert redact_url(url) in logged
    assert password not in logged


def test_take_query_options_takes_ours_and_keeps_the_clients() -> None:
    url, ours = take_query_options(
        "redis://h:1/0?db=2&lease_ttl=7.5&ssl_cert_reqs=none&key_prefix=app",
        ("lease_ttl", "key_prefix"),
    )
    assert url == "redis://h:1/0?db=2&ssl_cert_reqs=none"
    assert ours == {"lease_ttl": "7.5", "key_prefix": "app"}
    assert take_query_options("redis://h:1/0", ("lease_ttl",)) == ("redis://h:1/0", {})
