"""qworker: the Python worker SDK of workerpool-operator.

Takes tasks reliably from a queue (Redis lists with per-pod processing lists,
RabbitMQ with manual ack, NATS JetStream with explicit ack), runs one handler
per task, and leaves only between tasks: when the operator drains the pod, when
the pod's spec hash is stale, or on SIGTERM/SIGINT.  A task is never dropped.

    from qworker import Worker

    worker = Worker()

    @worker.task
    def handle(payload: bytes) -> None:
        ...

    worker.run()
"""

from __future__ import annotations

from ._url import NatsUrl, nats_subject, parse_nats_url, with_password
from .annotations import (
    ANNOTATION_CURRENT_POD_SPEC_HASH,
    ANNOTATION_DRAIN,
    DEFAULT_ANNOTATIONS_FILE,
    parse_annotations,
    read_annotations,
)
from .errors import (
    BrokerError,
    ConfigError,
    HandlerAlreadyRegisteredError,
    NoHandlerError,
    QWorkerError,
)
from .sources._redis import processing_list_name
from .worker import DEFAULT_GRACE_PERIOD, DEFAULT_POLL_INTERVAL, ENV, ExitReason, Settings, Worker

__all__ = [
    "ANNOTATION_CURRENT_POD_SPEC_HASH",
    "ANNOTATION_DRAIN",
    "DEFAULT_ANNOTATIONS_FILE",
    "DEFAULT_GRACE_PERIOD",
    "DEFAULT_POLL_INTERVAL",
    "ENV",
    "BrokerError",
    "ConfigError",
    "ExitReason",
    "HandlerAlreadyRegisteredError",
    "NatsUrl",
    "NoHandlerError",
    "QWorkerError",
    "Settings",
    "Worker",
    "nats_subject",
    "parse_annotations",
    "parse_nats_url",
    "processing_list_name",
    "read_annotations",
    "with_password",
]

__version__ = "0.1.0"
