"""NATS JetStream: a durable pull consumer with explicit acknowledgement (nats-py).

The convention shared with the Rust SDK and the operator:

* the broker URL names the stream: ``nats://[USER:PASSWORD@|TOKEN@]HOST[:PORT]?stream=STREAM``
  (``tls://`` for TLS; ``QWORKER_NATS_STREAM`` overrides the ``stream`` parameter);
* ``QWORKER_QUEUE`` is the durable pull consumer (the operator reads its
  ``num_pending + num_ack_pending`` as the queue depth);
* tasks are published to subject ``{stream}.{queue}`` (:func:`nats_subject`).

A missing consumer is created as the Rust ``ensure_nats_queue`` does: durable
``queue``, explicit ack, ack wait 30 s, filter subject ``{stream}.{queue}``,
deliver all.  The stream itself is never created here (its subjects and
retention are the deployment's choice; ``{stream}.>`` with work-queue retention
is the Rust default).  ``give_back`` is a NAK (redelivered at once); a worker
that dies leaves its message pending until the consumer's ack wait runs out,
and a long task sends "in progress" acks so it is not redelivered meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
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
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from .._url import NatsUrl, nats_subject, parse_nats_url
from ..errors import BrokerError
from ._base import Delivery, Source

__all__ = ["DEFAULT_ACK_WAIT", "NatsSource", "consumer_config", "nats_subject"]

log = logging.getLogger("qworker")

#: Ack wait of a consumer created by the worker (as the Rust SDK's tests and default).
DEFAULT_ACK_WAIT = 30.0
T = TypeVar("T")


def consumer_config(stream: str, queue: str, ack_wait: float = DEFAULT_ACK_WAIT) -> ConsumerConfig:
    """The durable consumer the worker creates when ``queue`` is missing (Rust ``ensure_nats_queue``)."""
    return ConsumerConfig(
        name=queue,
        durable_name=queue,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=nats_subject(stream, queue),
    )


def _is_auth_error(exc: BaseException) -> bool:
    if isinstance(exc, (nats.errors.AuthorizationError, nats.errors.InvalidUserCredentialsError)):
        return True
    return "authorization violation" in str(exc).lower()


async def _close_quietly(nc: Client) -> None:
    try:
        await nc.close()
    except Exception:  # noqa: BLE001 - the connection failed already
        pass


class NatsSource(Source):
    def __init__(
        self, url: str, queue: str, pod_name: str, poll_interval: float, *, stream: str | None = None
    ) -> None:
        self._conf: NatsUrl = parse_nats_url(url, stream)
        self.stream = self._conf.stream
        self.consumer = queue
        self.subject = nats_subject(self.stream, queue)
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
        return f"nats {self._conf.server} stream={self.stream!r} consumer={self.consumer!r}"

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
            raise BrokerError(
                f"nats {what}: stream {self.stream!r} or consumer {self.consumer!r} not found ({exc})",
                transient=True,
            ) from exc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise BrokerError(f"nats {what}: {exc!r}", transient=True) from exc

    async def _consumer(self, js: JetStreamContext) -> ConsumerInfo:
        """The durable consumer ``queue``; created (see :func:`consumer_config`) when missing."""
        info: ConsumerInfo
        try:
            info = await js.consumer_info(self.stream, self.consumer)
            return info
        except nats.js.errors.NotFoundError:
            pass
        try:
            await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError as exc:
            raise BrokerError(
                f"nats: stream {self.stream!r} not found (create it with subjects '{self.stream}.>', "
                f"or fix ?stream= in the broker URL)",
                transient=True,
            ) from exc
        try:
            info = await js.add_consumer(self.stream, consumer_config(self.stream, self.consumer))
        except nats.js.errors.BadRequestError as exc:
            # Created meanwhile (with another configuration)?  Then use it.
            try:
                info = await js.consumer_info(self.stream, self.consumer)
                return info
            except nats.js.errors.NotFoundError:
                raise BrokerError(
                    f"nats: cannot create consumer {self.consumer!r} on stream {self.stream!r}: {exc}",
                    transient=False,
                ) from exc
        log.info(
            "created durable consumer %r on stream %r (filter %r, explicit ack, ack wait %.0fs)",
            self.consumer,
            self.stream,
            self.subject,
            DEFAULT_ACK_WAIT,
        )
        return info

    async def _require_tls(self) -> None:
        """Check that the server requires TLS before sending credentials.

        nats-py switches to TLS only when the server's INFO says ``tls_required``;
        a ``tls://`` URL must never fall back to plain text.
        """
        parts = urlsplit(self._conf.server)
        host, port = parts.hostname or "", parts.port or 4222
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        except (OSError, TimeoutError) as exc:
            raise BrokerError(f"nats connect to {self._conf.server}: {exc!r}", transient=True) from exc
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
        except (OSError, TimeoutError) as exc:
            raise BrokerError(f"nats connect to {self._conf.server}: no INFO: {exc!r}", transient=True) from exc
        finally:
            writer.close()
        try:
            info = json.loads(line[5:]) if line.startswith(b"INFO ") else None
        except ValueError:
            info = None
        if not isinstance(info, dict):
            raise BrokerError(f"nats connect to {self._conf.server}: unexpected greeting {line[:80]!r}", transient=True)
        if not info.get("tls_required"):
            raise BrokerError(
                f"nats: the URL asks for TLS (tls://) but the server at {host}:{port} does not require "
                "TLS, and the connection would be plain text; use nats:// or enable TLS on the server",
                transient=False,
            )

    async def _connect(self) -> None:
        nc = Client()
        connecting = True

        async def on_error(exc: Exception) -> None:
            if _is_auth_error(exc):
                if connecting:
                    # nats-py would retry a refused login for ever: stop, for good.
                    raise BrokerError(f"nats connect to {self._conf.server}: {exc}", transient=False)
                log.warning("nats: %s", exc)
            else:
                log.debug("nats: %r", exc)

        conf = self._conf
        if conf.tls:
            await self._require_tls()
        try:
            await nc.connect(
                servers=[conf.server],
                name=f"qworker:{self._pod_name}",
                connect_timeout=10,
                max_reconnect_attempts=-1,
                error_cb=on_error,
                user=conf.user,
                password=conf.password,
                token=conf.token,
                tls=ssl.create_default_context() if conf.tls else None,
            )
        except BaseException:
            await _close_quietly(nc)
            raise
        connecting = False
        try:
            js = nc.jetstream(timeout=10)
            info = await self._consumer(js)
            config = info.config
            if config.ack_policy not in (None, AckPolicy.EXPLICIT):
                log.warning(
                    "consumer %r has ack policy %s, not explicit: tasks may be lost",
                    self.consumer,
                    config.ack_policy,
                )
            ack_wait = config.ack_wait or DEFAULT_ACK_WAIT
            self._progress_every = max(1.0, ack_wait / 3)
            self._sub = await js.pull_subscribe_bind(durable=self.consumer, stream=self.stream)
        except BaseException:
            await _close_quietly(nc)
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
