"""Broker sources: the reliable take / ack / give-back primitives per broker."""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import ConfigError
from ._base import Delivery, Source

__all__ = ["Delivery", "Source", "open_source"]


def open_source(broker_url: str, queue: str, pod_name: str, poll_interval: float) -> Source:
    """Create the source for ``broker_url``'s scheme (not yet connected)."""
    scheme = urlsplit(broker_url).scheme.lower()
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
    if scheme in ("nats", "tls"):
        try:
            from ._nats import NatsSource
        except ImportError as exc:  # pragma: no cover - depends on extras
            raise ConfigError(
                "NATS support needs the 'nats' extra: pip install 'qworker[nats]'"
            ) from exc
        return NatsSource(broker_url, queue, pod_name, poll_interval)
    raise ConfigError(
        f"unsupported broker URL scheme {scheme!r}: expected redis://, rediss://, amqp://, "
        "amqps:// or nats://"
    )
