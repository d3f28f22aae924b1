from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field

__all__ = ["Delivery", "Source"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One task taken from the broker and not yet acknowledged or given back."""

    payload: bytes
    # Broker-specific handle (delivery tag, NATS message, ...); opaque to the worker.
    token: object = field(default=None, compare=False, repr=False)


class Source(abc.ABC):
    """The reliable-take protocol of one broker.

    Every method is called from the thread that runs ``Worker.run``.  Between
    ``take`` and ``ack``/``give_back`` the task is held by the broker on this
    worker's behalf (Redis processing list, unacked AMQP delivery, pending
    JetStream message), so a crash never loses it.
    """

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection(s)."""

    @abc.abstractmethod
    def recover(self) -> int:
        """Return tasks this worker holds from an earlier life to the queue.

        Returns how many were returned.  Called at start-up, after connection
        errors and at exit, always between tasks.
        """

    @abc.abstractmethod
    def take(self, timeout: float) -> Delivery | None:
        """Wait up to ``timeout`` seconds for a task; ``None`` when none came."""

    @abc.abstractmethod
    def ack(self, delivery: Delivery) -> None:
        """The task is done: remove it for good."""

    @abc.abstractmethod
    def give_back(self, delivery: Delivery) -> None:
        """Return the task to the queue so that it is taken next."""

    def wait(self, done: threading.Event, timeout: float) -> bool:
        """Wait up to ``timeout`` for ``done`` while a handler runs.

        Sources whose connection needs servicing (heartbeats, progress
        reports) override this.
        """
        return done.wait(timeout)

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection(s); never raises."""

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """Human-readable description for logs (no credentials)."""
