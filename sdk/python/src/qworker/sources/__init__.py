"""Broker sources: the reliable take / ack / give-back primitives per broker."""

from __future__ import annotations

from .._url import url_scheme, with_password
from ..errors import ConfigError
from ._base import Delivery, Source

__all__ = ["Delivery", "Source", "open_source"]


def open_source(
    broker_url: str,
    queue: str,
    pod_name: str,
    poll_interval: float,
    *,
    password: str | None = None,
    nats_stream: str | None = None,
) -> Source:
    """Create the source for ``broker_url``'s scheme (not yet connected).

    ``password`` replaces the URL's secret (``QWORKER_BROKER_PASSWORD``);
    ``nats_stream`` overrides the NATS URL's ``?stream=`` (``QWORKER_NATS_STREAM``).
    """
    scheme = url_scheme(broker_url)
    if password:
        broker_url = with_password(broker_url, password)
    if scheme in ("redis", "rediss", "unix"):
        from ._redis import RedisSource

        return RedisSource(broker_url, queue, pod_name, poll_interval)
    if scheme in ("amqp", "amqps"):
        try:
            from ._amqp import AmqpSource
        except ImportError as exc:  # pragma: no cover - depends on extras
            raise ConfigError(
                "RabbitMQ support needs the 'rabbitmq' extra: pip install 'qworker[rabbitmq]'"
            ) from exc
        return AmqpSource(broker_url, queue, pod_name, poll_interval)
    try:
        from ._nats import NatsSource
    except ImportError as exc:  # pragma: no cover - depends on extras
        raise ConfigError("NATS support needs the 'nats' extra: pip install 'qworker[nats]'") from exc
    return NatsSource(broker_url, queue, pod_name, poll_interval, stream=nats_stream)
