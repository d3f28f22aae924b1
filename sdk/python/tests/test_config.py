"""Settings and broker URLs, as the Rust SDK reads them (``WorkerBuilder::from_vars``,
``BrokerConfig::from_url`` and ``with_password``)."""

from __future__ import annotations

import pytest

from qworker import (
    ENV,
    ConfigError,
    NatsUrl,
    Worker,
    nats_subject,
    parse_nats_url,
    processing_list_name,
    with_password,
)

BASE = {ENV.QUEUE: "jobs", ENV.POD_NAME: "pod-a"}


def test_wire_names() -> None:
    assert processing_list_name("jobs", "pod-a") == "jobs:processing:pod-a"
    assert nats_subject("TASKS", "jobs") == "TASKS.jobs"


def test_parse_nats_url_like_rust_from_url() -> None:
    assert parse_nats_url("nats://u:p@n?stream=TASKS") == NatsUrl(
        server="nats://n:4222", stream="TASKS", user="u", password="p"
    )
    assert parse_nats_url("nats://t%40k@n:4223?stream=S") == NatsUrl(
        server="nats://n:4223", stream="S", token="t@k"
    )
    assert parse_nats_url("tls://n?stream=S") == NatsUrl(server="tls://n:4222", stream="S", tls=True)
    # A password without a user is not used (as in Rust).
    assert parse_nats_url("nats://:pw@n?stream=S") == NatsUrl(server="nats://n:4222", stream="S")
    # QWORKER_NATS_STREAM wins over ?stream=.
    assert parse_nats_url("nats://n?stream=S", "OTHER").stream == "OTHER"
    assert parse_nats_url("nats://n", "OTHER").stream == "OTHER"
    for bad in ("nats://n:4222", "nats://n?stream=", "nats://?stream=S", "redis://n?stream=S"):
        with pytest.raises(ConfigError):
            parse_nats_url(bad)
    assert "p" not in repr(parse_nats_url("nats://u:secret@n?stream=S")).replace("stream", "")


def test_with_password_like_rust() -> None:
    # Redis: the password, the user name kept.
    assert with_password("redis://cache:6380/1", "s3:cr/et") == "redis://:s3%3Acr%2Fet@cache:6380/1"
    assert with_password("rediss://:old@cache/0", "new") == "rediss://:new@cache/0"
    assert with_password("redis://bob:old@cache", "new") == "redis://bob:new@cache"
    assert with_password("unix:///run/redis.sock?db=2&password=old", "new") == (
        "unix:///run/redis.sock?db=2&password=new"
    )
    # AMQP: the password; user guest when the URL has none.
    assert with_password("amqp://app:old@rabbit:5672/%2F", "new") == "amqp://app:new@rabbit:5672/%2F"
    assert with_password("amqps://rabbit/vh", "p@ss") == "amqps://guest:p%40ss@rabbit/vh"
    # NATS: the password with a user, else the token.
    assert with_password("nats://u:old@n:4222?stream=S", "new") == "nats://u:new@n:4222?stream=S"
    assert with_password("nats://oldtoken@n?stream=S", "tok") == "nats://tok@n?stream=S"
    assert with_password("nats://n?stream=S", "tok") == "nats://tok@n?stream=S"
    assert parse_nats_url(with_password("nats://u:old@n?stream=S", "p/w")).password == "p/w"
    assert parse_nats_url(with_password("tls://n?stream=S", "t:k")).token == "t:k"


def test_settings_read_the_rust_sdk_variables() -> None:
    env = {
        **BASE,
        ENV.BROKER_URL: "nats://u:old@nats:4222?stream=TASKS",
        ENV.BROKER_PASSWORD: "from-secret",
        ENV.GRACE_PERIOD_SECONDS: "40",
        ENV.POLL_SECONDS: "0.5",
    }
    s = Worker(environ=env).settings()
    assert (s.queue, s.nats_stream, s.broker_password) == ("jobs", "TASKS", "from-secret")
    assert (s.grace_period, s.poll_interval) == (40.0, 0.5)
    assert "from-secret" not in repr(s)
    # Explicit arguments win; QWORKER_GRACE_PERIOD is the older Python name.
    s = Worker(environ=env, broker_password="arg", grace_period=2, poll_interval=0.25).settings()
    assert (s.broker_password, s.grace_period, s.poll_interval) == ("arg", 2.0, 0.25)
    old = {**BASE, ENV.BROKER_URL: "redis://r", ENV.GRACE_PERIOD: "7"}
    assert Worker(environ=old).settings().grace_period == 7.0
    assert Worker(environ={**old, ENV.GRACE_PERIOD_SECONDS: "9"}).settings().grace_period == 9.0
    s = Worker(environ={ENV.BROKER_URL: "redis://r", ENV.QUEUE: "q"}).settings()
    assert (s.nats_stream, s.broker_password, s.poll_interval) == (None, None, 1.0)
    # POD_NAME, else HOSTNAME (as in Rust).
    assert Worker(environ={ENV.BROKER_URL: "redis://r", ENV.QUEUE: "q", "HOSTNAME": "h1"}).settings().pod_name == "h1"


@pytest.mark.parametrize(
    "extra",
    [
        {ENV.GRACE_PERIOD_SECONDS: "soon"},
        {ENV.POLL_SECONDS: "0"},
        {ENV.POLL_SECONDS: "often"},
        {ENV.BROKER_URL: "kafka://k:9092"},
        {ENV.BROKER_URL: "nats://n:4222"},  # no ?stream=
        {ENV.BROKER_URL: "nats://n?stream=S", ENV.NATS_CONSUMER: "other"},
    ],
)
def test_bad_settings(extra: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Worker(environ={**BASE, ENV.BROKER_URL: "redis://r", **extra}).settings()
