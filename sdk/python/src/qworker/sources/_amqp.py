"""RabbitMQ: a consumer with manual acknowledgement and prefetch 1 (pika)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pika
import pika.exceptions as pe
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.spec import Basic, BasicProperties

from ..errors import BrokerError
from ._base import Delivery, Source

__all__ = ["AmqpSource", "in_flight_queue"]

log = logging.getLogger("qworker")

@dataclass(frozen=True, slots=True)
class _Tag:
    generation: int
    delivery_tag: int


def in_flight_queue(queue: str) -> str:
    """The queue whose consumers are the busy workers of ``queue`` (same as the Rust SDK).

    AMQP does not tell unacknowledged messages, so a worker consumes from this (always empty)
    queue while it holds a task; the operator counts its consumers as work in flight, and idle
    workers count nothing. The mark goes with the connection when a worker dies."""
    return f"{queue}:in-flight"


_Consumer = Generator[tuple[Basic.Deliver, BasicProperties, bytes] | tuple[None, None, None]]


class AmqpSource(Source):
    """Unacknowledged deliveries go back to the queue when the connection closes,
    so a crash needs no recovery step; ``give_back`` is ``basic.nack(requeue=True)``,
    which RabbitMQ puts back at the head of the queue where possible."""

    def __init__(self, url: str, queue: str, pod_name: str, poll_interval: float) -> None:
        self._url = url
        self.queue = queue
        self._pod_name = pod_name
        self._poll_interval = poll_interval
        self._conn: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._consumer: _Consumer | None = None
        self._generation = 0
        self._marker: BlockingChannel | None = None
        self._busy = False

    @property
    def description(self) -> str:
        parts = urlsplit(self._url)
        port = f":{parts.port}" if parts.port else ""
        return f"rabbitmq {parts.scheme}://{parts.hostname or ''}{port}{parts.path} queue={self.queue!r}"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (pe.ProbableAuthenticationError, pe.AuthenticationError, pe.ProbableAccessDeniedError) as exc:
            raise BrokerError(f"rabbitmq {what}: {exc!r}", transient=False) from exc
        except pe.ChannelClosedByBroker as exc:
            # 404: the queue does not exist (yet); 403: no permission.
            transient = exc.reply_code != 403
            self._drop()
            raise BrokerError(f"rabbitmq {what}: {exc.reply_code} {exc.reply_text}", transient=transient) from exc
        except (pe.AMQPError, OSError) as exc:
            self._drop()
            raise BrokerError(f"rabbitmq {what}: {exc!r}", transient=True) from exc

    def _drop(self) -> None:
        conn = self._conn
        self._conn = self._channel = self._consumer = self._marker = None
        self._busy = False
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    def connect(self) -> None:
        with self._errors("connect"):
            params = pika.URLParameters(self._url)
            params.client_properties = {"connection_name": f"qworker:{self._pod_name}"}
            conn = BlockingConnection(params)
            self._conn = conn
            channel = conn.channel()
            channel.basic_qos(prefetch_count=1)
            self._channel = channel
            self._consumer = channel.consume(
                self.queue, auto_ack=False, inactivity_timeout=self._poll_interval
            )
            self._generation += 1
        self._busy = False
        self._marker = self._open_marker(conn)

    def _open_marker(self, conn: BlockingConnection) -> BlockingChannel | None:
        marker = in_flight_queue(self.queue)
        try:
            channel = conn.channel()
            channel.queue_declare(marker, durable=True)
            return channel
        except (pe.AMQPError, OSError) as exc:
            log.warning("cannot declare the in-flight marker queue %r (%r); the operator counts this worker as busy", marker, exc)
            return None

    def _mark(self, busy: bool) -> None:
        """Consume from the marker queue while a task is held; best effort."""
        marker = self._marker
        if marker is None or busy == self._busy:
            return
        try:
            if busy:
                marker.basic_consume(
                    in_flight_queue(self.queue),
                    on_message_callback=lambda *_: None,
                    auto_ack=False,
                    consumer_tag=self._pod_name,
                )
            else:
                marker.basic_cancel(self._pod_name)
            self._busy = busy
        except (pe.AMQPError, OSError) as exc:
            log.warning("cannot mark the worker %s: %r", "busy" if busy else "idle", exc)
            self._marker = None

    def recover(self) -> int:
        return 0  # the broker requeues what a closed connection had not acknowledged

    def take(self, timeout: float) -> Delivery | None:
        if self._consumer is None:
            raise BrokerError("rabbitmq source is not connected", transient=True)
        channel = self._channel
        if self._busy and channel is not None and channel.get_waiting_message_count() == 0:
            # Nothing prefetched while the last task ran: idle while waiting.
            self._mark(False)
        with self._errors("consume"):
            method, _props, body = next(self._consumer)
        if method is None or body is None or method.delivery_tag is None:
            self._mark(False)
            return None
        self._mark(True)
        return Delivery(bytes(body), token=_Tag(self._generation, method.delivery_tag))

    def _tag(self, delivery: Delivery, what: str) -> int | None:
        token = delivery.token
        assert isinstance(token, _Tag)
        if token.generation != self._generation or self._channel is None or not self._channel.is_open:
            log.warning("cannot %s: its connection is gone; RabbitMQ delivers the task again", what)
            return None
        return token.delivery_tag

    def ack(self, delivery: Delivery) -> None:
        tag = self._tag(delivery, "acknowledge a task")
        if tag is not None and self._channel is not None:
            with self._errors("ack"):
                self._channel.basic_ack(tag)

    def give_back(self, delivery: Delivery) -> None:
        tag = self._tag(delivery, "give a task back")
        if tag is not None and self._channel is not None:
            with self._errors("nack"):
                self._channel.basic_nack(tag, requeue=True)

    def wait(self, done: threading.Event, timeout: float) -> bool:
        # Keep servicing the connection (heartbeats) while the handler runs.
        end = time.monotonic() + timeout
        while not done.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            if self._conn is None:
                return done.wait(left)
            with self._errors("heartbeat"):
                self._conn.process_data_events(time_limit=min(left, 0.05))
        return done.is_set()

    def close(self) -> None:
        channel, conn = self._channel, self._conn
        self._conn = self._channel = self._consumer = self._marker = None
        self._busy = False
        try:
            if channel is not None and channel.is_open:
                channel.cancel()  # returns prefetched, unacknowledged deliveries
            if conn is not None and conn.is_open:
                conn.close()
        except Exception:  # noqa: BLE001 - closing must never fail the exit path
            pass
