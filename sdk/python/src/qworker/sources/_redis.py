"""Redis lists: ``BLMOVE`` into a per-pod processing list, ``LREM`` to acknowledge."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import BrokerError
from ._base import Delivery, Source

__all__ = ["GIVE_BACK_SCRIPT", "RedisSource", "processing_list_name"]

log = logging.getLogger("qworker")

# Atomically move one payload from the processing list back to the right end of
# the queue (the end workers take from), so it is taken next.  Only pushes if it
# was still in the processing list (the operator may already have returned it).
GIVE_BACK_SCRIPT = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) > 0 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def processing_list_name(queue: str, pod_name: str) -> str:
    """The per-pod processing list: ``<queue>:processing:<POD_NAME>``."""
    return f"{queue}:processing:{pod_name}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisSource(Source):
    def __init__(self, url: str, queue: str, pod_name: str, poll_interval: float) -> None:
        self._url = url
        self.queue = queue
        self.processing = processing_list_name(queue, pod_name)
        self._pod_name = pod_name
        self._poll_interval = poll_interval
        self._client: redis.Redis | None = None

    @property
    def description(self) -> str:
        return f"redis {_redact(self._url)} queue={self.queue!r} processing={self.processing!r}"

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except redis.AuthenticationError as exc:
            raise BrokerError(f"redis {what}: {exc}", transient=False) from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BrokerError(f"redis {what}: {exc}", transient=True) from exc
        except redis.RedisError as exc:
            raise BrokerError(f"redis {what}: {exc}", transient=False) from exc

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            raise BrokerError("redis source is not connected", transient=False)
        return self._client

    def _cmd(self, *args: Any) -> Any:
        # execute_command is untyped in some redis-py versions; the protocol's
        # exact commands are sent as written.
        execute: Callable[..., Any] = self.client.execute_command
        return execute(*args)

    def connect(self) -> None:
        with self._errors("connect"):
            # No hidden retries: a blocking BLMOVE retried after a lost reply
            # could take a second task.  The worker retries and recovers itself.
            self._client = redis.Redis.from_url(
                self._url,
                socket_connect_timeout=10.0,
                socket_timeout=self._poll_interval + 10.0,
                socket_keepalive=True,
                health_check_interval=30,
                retry=Retry(NoBackoff(), 0),
                client_name=f"qworker:{self._pod_name}"[:128].replace(" ", "_"),
            )
            self._client.ping()

    def recover(self) -> int:
        """Move everything left in this pod's processing list back to the queue.

        ``LMOVE <processing> <queue> LEFT RIGHT`` one element at a time (each
        move is atomic); the newest goes first, so the oldest task ends at the
        right end of the queue and is taken first, as before.
        """
        moved = 0
        if self._client is None:
            return 0  # not connected: connect() is always followed by recover()
        with self._errors("recover"):
            limit = int(self._cmd("LLEN", self.processing)) + 1000
            while moved < limit:
                item = self._cmd("LMOVE", self.processing, self.queue, "LEFT", "RIGHT")
                if item is None:
                    break
                moved += 1
        if moved:
            log.warning("returned %d unfinished task(s) from %s to %s", moved, self.processing, self.queue)
        return moved

    def take(self, timeout: float) -> Delivery | None:
        with self._errors("BLMOVE"):
            item = self._cmd(
                "BLMOVE", self.queue, self.processing, "RIGHT", "LEFT", _fmt_timeout(timeout)
            )
        if item is None:
            return None
        if isinstance(item, str):  # a client configured with decode_responses
            return Delivery(item.encode("utf-8"))
        return Delivery(cast(bytes, item))

    def ack(self, delivery: Delivery) -> None:
        with self._errors("LREM"):
            removed = self._cmd("LREM", self.processing, 1, delivery.payload)
        if not removed:
            log.warning("acknowledged task was no longer in %s (returned to the queue by someone else?)", self.processing)

    def give_back(self, delivery: Delivery) -> None:
        with self._errors("give back"):
            moved = self._cmd(
                "EVAL", GIVE_BACK_SCRIPT, 2, self.processing, self.queue, delivery.payload
            )
        if not moved:
            log.warning("task to give back was no longer in %s", self.processing)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must never fail the exit path
                pass


def _fmt_timeout(timeout: float) -> str:
    # Redis >= 6 takes a decimal timeout; 0 would block for ever, so never send it.
    return f"{max(timeout, 0.01):.3f}"
