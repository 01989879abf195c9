"""ess.config: every variable, its default, and one-line errors that name it."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from actors.settings import ActorSettings
from ess.config import Config, ConfigError, load_config, redact_passwords, redact_url

TOKEN = "s3cr3t-t0ken-value"


def test_defaults_match_spec() -> None:
    config = load_config({})
    assert config == Config()
    assert config.amqp_url == "amqp://guest:guest@localhost:5672/"
    assert config.ingress_location == "localhost:8080"
    assert config.ingress_secure is False
    assert config.database == Path("./data/event-streams.db")
    assert config.exchange == "event-streams"
    assert config.stream_max_age == "7D"
    assert config.stream_max_length_bytes == 1_000_000_000
    assert config.message_stats_interval == 800
    assert config.internal_token is None
    assert (config.public_port, config.internal_port, config.host) == (8080, 8081, "0.0.0.0")
    assert (config.log_level, config.log_format) == ("INFO", "text")
    assert config.max_connections_per_stream == 1
    assert config.prefetch == 200
    assert config.send_timeout == 30.0
    assert (config.ping_interval, config.ping_timeout, config.close_timeout) == (20.0, 20.0, 2.0)
    assert config.shutdown_grace == 10.0
    assert config.amqp_pool_size == 2
    assert (config.request_timeout, config.keepalive_timeout) == (30.0, 5.0)
    assert config.replica_name == f"{socket.gethostname()}-{os.getpid()}"


FULL_ENV = {
    "ESS_AMQP_URL": "amqps://user:pw@broker.example:5671/vhost",
    "ESS_INGRESS_LOCATION": "ess.example.com",
    "ESS_INGRESS_SECURE": "yes",
    "ESS_DATABASE": "/var/lib/ess/registry.db",
    "ESS_EXCHANGE": "my-exchange",
    "ESS_STREAM_MAX_AGE": "12h",
    "ESS_STREAM_MAX_LENGTH_BYTES": "5000",
    "ESS_MESSAGE_STATS_INTERVAL": "10",
    "ESS_INTERNAL_TOKEN": TOKEN,
    "ESS_PUBLIC_PORT": "9080",
    "ESS_INTERNAL_PORT": "9081",
    "ESS_HOST": "127.0.0.1",
    "ESS_LOG_LEVEL": "debug",
    "ESS_LOG_FORMAT": "JSON",
    "ESS_MAX_CONNECTIONS_PER_STREAM": "0",
    "ESS_PREFETCH": "1000",
    "ESS_SEND_TIMEOUT": "5",
    "ESS_PING_INTERVAL": "1.5",
    "ESS_PING_TIMEOUT": "2.5",
    "ESS_CLOSE_TIMEOUT": "0.5",
    "ESS_SHUTDOWN_GRACE": "3",
    "ESS_AMQP_POOL_SIZE": "4",
    "ESS_REQUEST_TIMEOUT": "7",
    "ESS_KEEPALIVE_TIMEOUT": "3",
    "ESS_REPLICA_NAME": "ess-a",
}

#: What the actor variables of ``FULL_ENV`` read as, in a Config and in ActorSettings alike.
FULL_ACTOR_VALUES: dict[str, Any] = {
    "max_connections_per_stream": 0,
    "prefetch": 1000,
    "send_timeout": 5.0,
    "ping_interval": 1.5,
    "ping_timeout": 2.5,
    "close_timeout": 0.5,
}


def test_every_variable_is_read() -> None:
    config = load_config(FULL_ENV)
    assert config == Config(
        amqp_urls=("amqps://user:pw@broker.example:5671/vhost",),
        ingress_location="ess.example.com",
        ingress_secure=True,
        database=Path("/var/lib/ess/registry.db"),
        exchange="my-exchange",
        stream_max_age="12h",
        stream_max_length_bytes=5000,
        message_stats_interval=10,
        internal_token=TOKEN,
        public_port=9080,
        internal_port=9081,
        host="127.0.0.1",
        log_level="DEBUG",
        log_format="json",
        **FULL_ACTOR_VALUES,
        shutdown_grace=3.0,
        amqp_pool_size=4,
        request_timeout=7.0,
        keepalive_timeout=3.0,
        replica_name="ess-a",
    )


def test_actor_settings() -> None:
    settings = load_config(FULL_ENV).actor_settings()
    assert settings == ActorSettings(**FULL_ACTOR_VALUES, stats_interval=10)


def test_several_amqp_urls_are_kept_in_order() -> None:
    text = "amqp://u:p@node-1:5672/v , amqps://u:p@node-2/v"
    config = load_config({"ESS_AMQP_URL": text})
    assert config.amqp_urls == ("amqp://u:p@node-1:5672/v", "amqps://u:p@node-2/v")
    assert config.amqp_url == "amqp://u:p@node-1:5672/v"


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        (f"amqp://user:{TOKEN}@host/?bogus=1", "unknown option"),
        (f"amqp://user:{TOKEN}@host/vhost/extra", "more than one segment"),
        (f"amqp://user:{TOKEN}@host:99999/", "invalid port"),
        (f"amqp://user:{TOKEN}@host:abc/", "invalid port"),
        (f"amqp://user:{TOKEN}@host:0/", "invalid port"),
        (f"http://user:{TOKEN}@host/", "scheme"),
        (f"amqp://user:{TOKEN}@host/?heartbeat=x", "not an integer"),
        (f"amqp://u:p@ok/,amqp://user:{TOKEN}@host/a/b", "more than one segment"),
        ("amqp://u:p@ok/,", "empty entry"),
    ],
)
@pytest.mark.parametrize("variable", ["ESS_AMQP_URL", "ESS_AMPQ_URL"])
def test_bad_amqp_url_is_one_line_without_the_password(variable: str, url: str, hint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({variable: url})
    message = str(caught.value)
    assert message.startswith(f"{variable}=")
    assert hint in message
    assert "\n" not in message
    assert TOKEN not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://ess:pw@db.example:5432/ess",
        "postgres://db.example/ess",
        "postgresql://ess@[::1]:6432/ess?sslmode=require",
    ],
)
def test_database_may_be_a_postgresql_url(url: str) -> None:
    assert load_config({"ESS_DATABASE": url}).database == url


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        (f"mysql://u:{TOKEN}@db/ess", "scheme"),
        (f"postgresql://u:{TOKEN}@db:70000/ess", "invalid port"),
        (f"postgresql://u:{TOKEN}@/ess", "no host"),
    ],
)
def test_bad_database_url_never_shows_the_password(url: str, hint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"ESS_DATABASE": url})
    message = str(caught.value)
    assert message.startswith("ESS_DATABASE=")
    assert hint in message
    assert TOKEN not in message


def test_database_password_is_not_in_repr() -> None:
    config = load_config({"ESS_DATABASE": f"postgresql://u:{TOKEN}@db/ess"})
    assert TOKEN not in repr(config)


@pytest.mark.parametrize(
    ("text", "expected"),
    [(t, True) for t in ("yes", "YES", "true", "True", "1", "on", "On")]
    + [(t, False) for t in ("no", "No", "false", "FALSE", "0", "off", "OFF")],
)
def test_ingress_secure_booleans(text: str, expected: bool) -> None:
    assert load_config({"ESS_INGRESS_SECURE": text}).ingress_secure is expected


def test_empty_and_blank_values_mean_unset() -> None:
    env = {"ESS_PUBLIC_PORT": "", "ESS_EXCHANGE": "   ", "ESS_INTERNAL_TOKEN": ""}
    config = load_config(env)
    assert config.public_port == 8080
    assert config.exchange == "event-streams"
    assert config.internal_token is None


def test_surrounding_whitespace_is_ignored() -> None:
    config = load_config({"ESS_PUBLIC_PORT": " 9000\n", "ESS_INTERNAL_TOKEN": f"{TOKEN}\n"})
    assert config.public_port == 9000
    assert config.internal_token == TOKEN


def test_ampq_typo_is_a_fallback() -> None:
    typo = "amqp://a:b@typo-host/"
    assert load_config({"ESS_AMPQ_URL": typo}).amqp_url == typo
    right = "amqp://a:b@right-host/"
    both = {"ESS_AMQP_URL": right, "ESS_AMPQ_URL": typo}
    assert load_config(both).amqp_url == right
    assert load_config({"ESS_AMQP_URL": "", "ESS_AMPQ_URL": typo}).amqp_url == typo


def test_ampq_typo_errors_name_the_typo_variable() -> None:
    with pytest.raises(ConfigError, match=r"^ESS_AMPQ_URL="):
        load_config({"ESS_AMPQ_URL": "http://host/"})


@pytest.mark.parametrize(
    "url",
    ["amqp://localhost", "amqps://h:5671/%2f", "AMQP://u:p@h/", "amqp://[::1]:5672/v"],
)
def test_good_amqp_urls(url: str) -> None:
    assert load_config({"ESS_AMQP_URL": url}).amqp_url == url


BAD_VALUES = [
    ("ESS_AMQP_URL", "http://user:pw@host/", "amqp or amqps"),
    ("ESS_AMQP_URL", "amqp:///vhost", "no host"),
    ("ESS_AMQP_URL", "amqp://host:99999/", "invalid port"),
    ("ESS_AMQP_URL", "localhost:5672", "amqp or amqps"),
    ("ESS_INGRESS_LOCATION", "wss://ess.example.com", "scheme"),
    ("ESS_INGRESS_LOCATION", "a b", "host[:port]"),
    ("ESS_INGRESS_SECURE", "maybe", "yes/no"),
    ("ESS_DATABASE", "a\x00b", "SQLite file"),
    ("ESS_EXCHANGE", "amq.direct", "reserved"),
    ("ESS_EXCHANGE", "x" * 256, "too long"),
    ("ESS_EXCHANGE", "a\tb", "control"),
    ("ESS_STREAM_MAX_AGE", "7 days", "Y M D h m s"),
    ("ESS_STREAM_MAX_AGE", "7d", "Y M D h m s"),
    ("ESS_STREAM_MAX_AGE", "0D", "positive"),
    ("ESS_STREAM_MAX_AGE", "D", "Y M D h m s"),
    ("ESS_STREAM_MAX_LENGTH_BYTES", "0", "greater than 0"),
    ("ESS_STREAM_MAX_LENGTH_BYTES", "1GB", "greater than 0"),
    ("ESS_MESSAGE_STATS_INTERVAL", "-5", "greater than 0"),
    ("ESS_PUBLIC_PORT", "abc", "1-65535"),
    ("ESS_PUBLIC_PORT", "0", "1-65535"),
    ("ESS_INTERNAL_PORT", "65536", "1-65535"),
    ("ESS_INTERNAL_PORT", "80.5", "1-65535"),
    ("ESS_HOST", "bad host", "IP address"),
    ("ESS_LOG_LEVEL", "verbose", "DEBUG, INFO"),
    ("ESS_LOG_FORMAT", "xml", "text or json"),
    ("ESS_MAX_CONNECTIONS_PER_STREAM", "-1", ">= 0"),
    ("ESS_PREFETCH", "0", "1-65535"),
    ("ESS_PREFETCH", "70000", "1-65535"),
    ("ESS_SEND_TIMEOUT", "0", "greater than 0"),
    ("ESS_PING_INTERVAL", "soon", "seconds"),
    ("ESS_PING_TIMEOUT", "nan", "seconds"),
    ("ESS_CLOSE_TIMEOUT", "inf", "seconds"),
    ("ESS_SHUTDOWN_GRACE", "-1", "seconds"),
    ("ESS_AMQP_POOL_SIZE", "0", "1-1000"),
    ("ESS_AMQP_POOL_SIZE", "1_000", "1-1000"),
    ("ESS_REQUEST_TIMEOUT", "0", "greater than 0"),
    ("ESS_KEEPALIVE_TIMEOUT", "-5", "greater than 0"),
    ("ESS_REPLICA_NAME", "a\nb", "control characters"),
]


@pytest.mark.parametrize(("variable", "value", "hint"), BAD_VALUES)
def test_bad_value_is_one_line_naming_the_variable(variable: str, value: str, hint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({variable: value})
    message = str(caught.value)
    assert message.startswith(f"{variable}=")
    assert "\n" not in message
    assert "expected" in message
    assert hint in message


def test_message_format_example_from_brief() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"ESS_PUBLIC_PORT": "abc"})
    assert str(caught.value) == (
        "ESS_PUBLIC_PORT='abc' is not a valid port (expected an integer 1-65535)"
    )


def test_every_variable_has_a_bad_value_test() -> None:
    tested = {variable for variable, _, _ in BAD_VALUES}
    checked = {name for name in FULL_ENV if name != "ESS_INTERNAL_TOKEN"}
    assert checked <= tested


@pytest.mark.parametrize("token", [f"{TOKEN} tail", f"{TOKEN}\x00", f"a\t{TOKEN}"])
def test_bad_token_is_never_echoed(token: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"ESS_INTERNAL_TOKEN": token})
    message = str(caught.value)
    assert message.startswith("ESS_INTERNAL_TOKEN=<redacted>")
    assert TOKEN not in message
    assert TOKEN not in repr(caught.value)


def test_url_password_is_never_echoed() -> None:
    for url in (f"http://user:{TOKEN}@host/", f"amqp://user:{TOKEN}@:5672/"):
        with pytest.raises(ConfigError) as caught:
            load_config({"ESS_AMQP_URL": url})
        assert TOKEN not in str(caught.value)
        assert "user:***@" in str(caught.value)


def test_secrets_are_not_in_repr() -> None:
    config = load_config(
        {"ESS_INTERNAL_TOKEN": TOKEN, "ESS_AMQP_URL": f"amqp://user:{TOKEN}@host/"}
    )
    assert TOKEN not in repr(config)
    assert "internal_token='***'" in repr(config)
    assert "amqp://user:***@host/" in repr(config)


def test_overrides_win_over_environment() -> None:
    config = load_config(
        {"ESS_PUBLIC_PORT": "9000", "ESS_HOST": "127.0.0.1"},
        {
            "public_port": "9100",
            "database": Path("/tmp/x.db"),
            "amqp_urls": "amqp://flag-host/",
            "host": None,
            "log_level": "warning",
        },
    )
    assert config.public_port == 9100
    assert config.database == Path("/tmp/x.db")
    assert config.amqp_urls == ("amqp://flag-host/",)
    assert config.host == "127.0.0.1"  # None means "flag not given"
    assert config.log_level == "WARNING"


def test_overrides_accept_typed_values() -> None:
    config = load_config({}, {"public_port": 9100, "ingress_secure": True, "send_timeout": 1.5})
    assert (config.public_port, config.ingress_secure, config.send_timeout) == (9100, True, 1.5)


def test_bad_override_names_the_flag() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"ESS_PUBLIC_PORT": "9000"}, {"public_port": "http"})
    assert str(caught.value).startswith("--public-port='http' is not a valid port")
    with pytest.raises(ConfigError, match=r"^--amqp-url='http://x/' is not an AMQP URL"):
        load_config({}, {"amqp_urls": "http://x/"})
    with pytest.raises(ConfigError, match=r"^--database must not be empty$"):
        load_config({}, {"database": ""})


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="no_such_field"):
        load_config({}, {"no_such_field": 1})


def test_every_field_is_loadable_and_overridable() -> None:
    for f in fields(Config):
        load_config({}, {f.name: None})  # no TypeError: every field has a spec


@pytest.mark.parametrize(
    ("redact", "text", "redacted"),
    [
        # redact_url: one URL, its password masked.
        (redact_url, "amqp://u:p@h/", "amqp://u:***@h/"),
        (redact_url, "amqp://u@h/", "amqp://u@h/"),
        (redact_url, "amqp://h/", "amqp://h/"),
        (redact_url, "amqp://u:p@ss@h/", "amqp://u:***@h/"),
        (redact_url, "not a url", "not a url"),
        # redact_passwords: every URL of a text (an error message), only URLs.
        (
            redact_passwords,
            "at postgresql://u:pw@db:5432/x failed",
            "at postgresql://u:***@db:5432/x failed",
        ),
        (redact_passwords, "amqp://a:1@h/, amqps://b:2@k/", "amqp://a:***@h/, amqps://b:***@k/"),
        (redact_passwords, "no url here: a:b@c", "no url here: a:b@c"),
        (redact_passwords, "postgresql://user@db/x", "postgresql://user@db/x"),
    ],
)
def test_redaction(redact: Callable[[str], str], text: str, redacted: str) -> None:
    assert redact(text) == redacted
