"""URL parsing: the RabbitMQ URI spec, as operators write ESS_AMQP_URL."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amqp import ConnectionParameters, parse_url


def test_defaults() -> None:
    p = parse_url("amqp://")
    assert p == ConnectionParameters()
    assert (p.host, p.port, p.username, p.password, p.vhost) == (
        "localhost",
        5672,
        "guest",
        "guest",
        "/",
    )
    assert p.heartbeat is None
    assert not p.ssl


def test_full_url() -> None:
    p = parse_url("amqp://user:secret@broker.example:5999/prod?heartbeat=7&connection_timeout=2.5")
    assert (p.host, p.port, p.username, p.password, p.vhost) == (
        "broker.example",
        5999,
        "user",
        "secret",
        "prod",
    )
    assert p.heartbeat == 7
    assert p.connection_timeout == 2.5


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://h", "/"),
        ("amqp://h/", "/"),
        ("amqp://h/%2F", "/"),
        ("amqp://h/%2f", "/"),
        ("amqp://h/vhost", "vhost"),
        ("amqp://h/a%2Fb", "a/b"),
        ("amqp://h/caf%C3%A9", "café"),
    ],
)
def test_vhost_from_path(url: str, vhost: str) -> None:
    assert parse_url(url).vhost == vhost


def test_user_and_password_are_percent_decoded() -> None:
    p = parse_url("amqp://us%40er:p%3Ass%2Fw%25rd@h/")
    assert p.username == "us@er"
    assert p.password == "p:ss/w%rd"


def test_amqps_defaults_to_5671_and_tls() -> None:
    p = parse_url("amqps://h")
    assert p.port == 5671
    assert p.ssl


def test_ipv6_host() -> None:
    p = parse_url("amqp://[::1]:5673/")
    assert (p.host, p.port) == ("::1", 5673)


def test_tuning_options() -> None:
    p = parse_url("amqp://h/?frame_max=4096&channel_max=16&heartbeat=0&name=ess%231")
    assert (p.frame_max, p.channel_max, p.heartbeat, p.connection_name) == (4096, 16, 0, "ess#1")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h/", "scheme"),
        ("amqp://h/a/b", "one segment"),
        ("amqp://h/?heartbeat=x", "heartbeat"),
        ("amqp://h/?heartbeat=-1", "heartbeat"),
        ("amqp://h/?connection_timeout=nan", "connection_timeout"),
        ("amqp://h/?frame_max=100", "frame_max"),
        ("amqp://h/?bogus=1", "bogus"),
        ("amqp://h:notaport/", "port"),
        ("redis://h/", "scheme must be amqp or amqps, not 'redis'"),
        ("amqp:/h/vhost", "must start with amqp://"),
        ("amqp://h:0/", "port must be a number from 1 to 65535"),
        ("amqp://h:65536/", "port must be a number from 1 to 65535"),
        ("amqp://h:-1/", "port must be a number from 1 to 65535"),
        ("amqp://h:56x/", "port must be a number from 1 to 65535"),
        ("amqp://h/one/two", "path must be one segment"),
        ("amqp://h//", "path must be one segment"),
        ("amqp://h/?heartbeat=1&prefetch=10", "unknown AMQP URL option 'prefetch'"),
        ("amqp://[::1/", "malformed"),
    ],
)
def test_invalid_urls_name_the_problem(url: str, message: str) -> None:
    """Each refusal says what is wrong."""
    with pytest.raises(ValueError, match=message):
        parse_url(url)


def test_repr_hides_the_password() -> None:
    assert "secret" not in repr(parse_url("amqp://u:secret@h/"))


SECRET = "s3cr3t-PW"


@pytest.mark.parametrize(
    "url",
    [
        f"http://u:{SECRET}@h/",
        f"amqp://u:{SECRET}@h:99999/",
        f"amqp://u:{SECRET}@h:notaport/",
        f"amqp://u:{SECRET}@h/a/b",
        f"amqp://u:{SECRET}@h/?bogus=1",
        f"amqp://u:{SECRET}@h/?heartbeat={SECRET}",
        f"amqp://u:{SECRET}@h/?{SECRET}=1",
        f"amqp://u:{SECRET.replace('-', '%2D')}@h/?frame_max={SECRET}",
        # Unencoded '/', '?', '#' or '@' in a password split the URL elsewhere.
        "amqp://u:s3cr/3t@h/",
        "amqp://u:s3cr?3t@h/",
        "amqp://u:s3cr#3t@h/",
        "amqp://u:s3c@r3t@h:x/",
        "amqp://u:s3cr/3t@h/v/x",
    ],
)
def test_no_refusal_quotes_the_password(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_url(url)
    text = str(info.value)
    for fragment in (SECRET, "s3cr", "3t@h", "r3t"):
        assert fragment not in text
    # No chained exception carries the URL either (a traceback would print it).
    error = info.value
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqp://u:12/cd@h", "'@' after the host"),  # would be host u, port 12, vhost cd@h
        ("amqp://u:ab?cd@h/", "'@' after the host"),
        ("amqp://u:pa\tss@h/", "tab or line break"),
    ],
)
def test_a_password_that_would_be_split_is_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_url(url)


@settings(max_examples=300, deadline=None)
@given(
    password=st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="%"),
        min_size=6,
    )
)
def test_a_raw_password_is_read_whole_or_refused_unquoted(password: str) -> None:
    """Whatever an operator pastes unencoded: that password, or an error without it."""
    url = f"amqp://user:{password}@broker:5672/vhost"
    try:
        parameters = parse_url(url)
    except ValueError as exc:
        assert password not in str(exc)
    else:
        assert parameters.password == password
        assert (parameters.host, parameters.port, parameters.vhost) == ("broker", 5672, "vhost")
