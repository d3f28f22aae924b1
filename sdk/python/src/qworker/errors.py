"""Exceptions raised by qworker."""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConfigError",
    "HandlerAlreadyRegisteredError",
    "NoHandlerError",
    "QWorkerError",
]


class QWorkerError(Exception):
    """Base class of every qworker error."""


class ConfigError(QWorkerError):
    """The worker is missing a setting or has an invalid one."""


class HandlerAlreadyRegisteredError(QWorkerError):
    """A second task handler was registered on the same worker."""


class NoHandlerError(QWorkerError):
    """``Worker.run()`` was called before any handler was registered."""


class BrokerError(QWorkerError):
    """The broker could not be reached or refused an operation.

    ``transient`` errors (lost connection, timeout) are retried by the worker
    with back-off; the others (bad credentials, wrong key type, missing queue)
    end ``Worker.run()``.
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient
