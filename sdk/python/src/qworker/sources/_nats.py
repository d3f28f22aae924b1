"""NATS JetStream: a durable pull consumer with explicit acknowledgement (nats-py).

``QWORKER_QUEUE`` names the stream.  The durable consumer is
``QWORKER_NATS_CONSUMER`` (default: the stream name); it is created (explicit
ack) when missing.  ``give_back`` is a NAK (redelivered at once); a worker that
dies leaves its message pending until the consumer's ack wait runs out, and a
long task sends "in progress" acks so it is not redelivered meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from ..errors import BrokerError
from ._base import Delivery, Source

__all__ = ["CONSUMER_ENV", "NatsSource"]

log = logging.getLogger("qworker")

CONSUMER_ENV = "QWORKER_NATS_CONSUMER"
T = TypeVar("T")


class NatsSource(Source):
    def __init__(self, url: str, queue: str, pod_name: str, poll_interval: float) -> None:
        self._url = url
        self.stream = queue
        self.consumer = os.environ.get(CONSUMER_ENV, "").strip() or queue
        self._pod_name = pod_name
        self._poll_interval = poll_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: Client | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._progress_every = 10.0
        self._last_progress = 0.0
        self._current: Msg | None = None

    @property
    def description(self) -> str:
        parts = urlsplit(self._url)
        port = f":{parts.port}" if parts.port else ""
        return f"nats {parts.scheme}://{parts.hostname or ''}{port} stream={self.stream!r} consumer={self.consumer!r}"

    # -- a private event loop on its own thread; the worker's thread calls into it

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="qworker-nats", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (nats.errors.AuthorizationError, nats.errors.InvalidUserCredentialsError) as exc:
            raise BrokerError(f"nats {what}: {exc!r}", transient=False) from exc
        except nats.js.errors.NotFoundError as exc:
            raise BrokerError(f"nats {what}: stream {self.stream!r} not found ({exc})", transient=True) from exc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise BrokerError(f"nats {what}: {exc!r}", transient=True) from exc

    async def _connect(self) -> None:
        async def on_error(exc: Exception) -> None:
            log.debug("nats: %r", exc)

        nc = await nats.connect(
            servers=[self._url],
            name=f"qworker:{self._pod_name}",
            connect_timeout=10,
            max_reconnect_attempts=-1,
            error_cb=on_error,
        )
        try:
            js = nc.jetstream()
            try:
                info = await js.consumer_info(self.stream, self.consumer)
            except nats.js.errors.NotFoundError:
                await js.stream_info(self.stream)  # a clear "stream not found" first
                info = await js.add_consumer(
                    self.stream,
                    ConsumerConfig(durable_name=self.consumer, ack_policy=AckPolicy.EXPLICIT),
                )
            ack_wait = info.config.ack_wait or 30.0
            self._progress_every = max(1.0, ack_wait / 3)
            self._sub = await js.pull_subscribe_bind(durable=self.consumer, stream=self.stream)
        except BaseException:
            await nc.close()
            raise
        self._nc = nc

    def connect(self) -> None:
        with self._errors("connect"):
            self._run(self._connect(), 30)

    def recover(self) -> int:
        return 0  # unacknowledged messages are redelivered after the consumer's ack wait

    async def _fetch(self, timeout: float) -> Msg | None:
        if self._sub is None:
            raise nats.errors.ConnectionClosedError()
        try:
            msgs = await self._sub.fetch(1, timeout=timeout)
        except nats.errors.TimeoutError:
            return None
        return msgs[0] if msgs else None

    def take(self, timeout: float) -> Delivery | None:
        with self._errors("fetch"):
            msg = self._run(self._fetch(timeout), timeout + 10)
        if msg is None:
            return None
        self._current = msg
        self._last_progress = time.monotonic()
        return Delivery(bytes(msg.data), token=msg)

    def _msg(self, delivery: Delivery) -> Msg:
        msg = delivery.token
        assert isinstance(msg, Msg)
        return msg

    def ack(self, delivery: Delivery) -> None:
        self._current = None
        with self._errors("ack"):
            self._run(self._msg(delivery).ack_sync(timeout=5), 10)

    def give_back(self, delivery: Delivery) -> None:
        self._current = None
        with self._errors("nak"):
            self._run(self._msg(delivery).nak(), 10)

    def wait(self, done: threading.Event, timeout: float) -> bool:
        if done.wait(timeout):
            return True
        msg = self._current
        if msg is not None and time.monotonic() - self._last_progress >= self._progress_every:
            self._last_progress = time.monotonic()
            with self._errors("in progress"):
                self._run(msg.in_progress(), 10)
        return False

    def close(self) -> None:
        nc, self._nc, self._sub = self._nc, None, None
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            if nc is not None:
                asyncio.run_coroutine_threadsafe(nc.close(), loop).result(10)
        except Exception:  # noqa: BLE001 - closing must never fail the exit path
            pass
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if not loop.is_running():
            loop.close()
