"""The queue worker: take a task, run the handler, acknowledge or give back."""

from __future__ import annotations

import enum
import json as _json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TypeVar, overload

from ._executor import HandlerThread, Job
from ._url import parse_nats_url, url_scheme
from .annotations import DEFAULT_ANNOTATIONS_FILE, drain_reason, read_annotations
from .errors import BrokerError, ConfigError, HandlerAlreadyRegisteredError, NoHandlerError
from .sources import Delivery, Source, open_source

__all__ = ["ENV", "ExitReason", "Settings", "Worker"]

log = logging.getLogger("qworker")

H = TypeVar("H", bound=Callable[..., Any])


class ENV:
    """Names of the environment variables the worker reads (shared with the Rust SDK
    except where noted)."""

    WORKER_NAME = "QWORKER_NAME"
    POD_SPEC_HASH = "POD_SPEC_HASH"
    POD_NAME = "POD_NAME"
    #: Fallback for ``POD_NAME`` (then the host name).
    HOSTNAME = "HOSTNAME"
    POD_NAMESPACE = "POD_NAMESPACE"
    BROKER_URL = "QWORKER_BROKER_URL"
    #: Replaces the URL's secret (Redis/AMQP password; NATS password with a user, else token).
    BROKER_PASSWORD = "QWORKER_BROKER_PASSWORD"
    #: Redis list / AMQP queue / NATS durable consumer.
    QUEUE = "QWORKER_QUEUE"
    ANNOTATIONS_FILE = "QWORKER_ANNOTATIONS_FILE"
    GRACE_PERIOD_SECONDS = "QWORKER_GRACE_PERIOD_SECONDS"
    #: Python SDK's older name for ``QWORKER_GRACE_PERIOD_SECONDS`` (which wins).
    GRACE_PERIOD = "QWORKER_GRACE_PERIOD"
    POLL_SECONDS = "QWORKER_POLL_SECONDS"
    #: Python only: overrides the NATS URL's ``?stream=``.
    NATS_STREAM = "QWORKER_NATS_STREAM"
    #: Removed: it must be unset or equal ``QWORKER_QUEUE`` (which names the consumer).
    NATS_CONSUMER = "QWORKER_NATS_CONSUMER"


DEFAULT_GRACE_PERIOD = 25.0
DEFAULT_POLL_INTERVAL = 1.0


class ExitReason(enum.Enum):
    """Why ``Worker.run()`` returned.  Every reason is a clean exit (code 0)."""

    #: The ``quickube.com/drain`` annotation asked this pod to leave.
    DRAINED = "drained"
    #: ``quickube.com/current-pod-spec-hash`` differs from ``POD_SPEC_HASH``.
    STALE_SPEC_HASH = "stale-spec-hash"
    #: SIGTERM/SIGINT or ``Worker.stop()``; the task in hand, if any, was finished and acknowledged or given back.
    STOPPED = "stopped"
    #: Stopped, and the handler outlived the grace period: its task was given back to the queue.
    GRACE_EXPIRED = "grace-expired"

    @property
    def exit_code(self) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class Settings:
    """The worker's resolved identity and broker settings (``repr`` shows no secret)."""

    broker_url: str = field(repr=False)
    queue: str
    pod_name: str
    pod_namespace: str | None
    worker_name: str | None
    pod_spec_hash: str | None
    annotations_file: str
    grace_period: float
    poll_interval: float = DEFAULT_POLL_INTERVAL
    #: ``QWORKER_BROKER_PASSWORD``: replaces the secret of ``broker_url``.
    broker_password: str | None = field(default=None, repr=False)
    #: NATS only: the JetStream stream (``?stream=`` of the URL, or ``QWORKER_NATS_STREAM``).
    nats_stream: str | None = None


@dataclass(frozen=True, slots=True)
class _Handler:
    func: Callable[[Any], Any]
    json: bool


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _seconds(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {text!r}") from None


class Worker:
    """A queue worker that speaks the workerpool-operator protocol.

    Every argument defaults to its environment variable (see :class:`ENV`);
    settings are checked when :meth:`run` starts, so a module-level
    ``Worker()`` can be created and decorated without any environment.
    """

    def __init__(
        self,
        *,
        broker_url: str | None = None,
        queue: str | None = None,
        broker_password: str | None = None,
        nats_stream: str | None = None,
        pod_name: str | None = None,
        pod_namespace: str | None = None,
        worker_name: str | None = None,
        pod_spec_hash: str | None = None,
        annotations_file: str | os.PathLike[str] | None = None,
        grace_period: float | None = None,
        poll_interval: float | None = None,
        error_backoff: float = 1.0,
        max_error_backoff: float = 30.0,
        handle_signals: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.broker_url = broker_url or _env(env, ENV.BROKER_URL)
        self.queue = queue or _env(env, ENV.QUEUE)
        self.broker_password = broker_password or _env(env, ENV.BROKER_PASSWORD)
        self.nats_stream = nats_stream or _env(env, ENV.NATS_STREAM)
        self._nats_consumer_env = _env(env, ENV.NATS_CONSUMER)
        self.pod_name = pod_name or _env(env, ENV.POD_NAME) or _env(env, ENV.HOSTNAME)
        self.pod_namespace = pod_namespace or _env(env, ENV.POD_NAMESPACE)
        self.worker_name = worker_name or _env(env, ENV.WORKER_NAME)
        self.pod_spec_hash = pod_spec_hash or _env(env, ENV.POD_SPEC_HASH)
        self.annotations_file = os.fspath(
            annotations_file or _env(env, ENV.ANNOTATIONS_FILE) or DEFAULT_ANNOTATIONS_FILE
        )
        self._grace_env = next(
            ((name, v) for name in (ENV.GRACE_PERIOD_SECONDS, ENV.GRACE_PERIOD) if (v := _env(env, name))),
            None,
        )
        self._grace_arg = grace_period
        self._poll_env = _env(env, ENV.POLL_SECONDS)
        if poll_interval is not None and not poll_interval > 0:
            raise ConfigError("poll_interval must be > 0")
        if error_backoff < 0 or max_error_backoff < 0:
            raise ConfigError("error_backoff and max_error_backoff must be >= 0")
        self.poll_interval = poll_interval
        self.error_backoff = error_backoff
        self.max_error_backoff = max_error_backoff
        self.handle_signals = handle_signals

        self._handler: _Handler | None = None
        self._lock = threading.Lock()
        self._running = False
        self._stop = threading.Event()
        self._stop_at = 0.0
        self._force = False
        self._stop_cause = ""

    # ------------------------------------------------------------------ registration

    @overload
    def task(self, func: H, /) -> H: ...

    @overload
    def task(self, *, json: bool = False) -> Callable[[H], H]: ...

    def task(self, func: Callable[..., Any] | None = None, *, json: bool = False) -> Any:
        """Register the task handler (a plain function or an ``async def``).

        Use as ``@worker.task`` (the handler gets the payload as ``bytes``) or
        ``@worker.task(json=True)`` (it gets ``json.loads(payload)``).  The
        function is returned unchanged.  A worker has exactly one handler.
        """

        def register(f: H) -> H:
            if not callable(f):
                raise TypeError(f"task handler must be callable, got {type(f).__name__}")
            with self._lock:
                if self._handler is not None:
                    raise HandlerAlreadyRegisteredError(
                        f"a task handler is already registered ({_name(self._handler.func)}); "
                        f"cannot also register {_name(f)}: a Worker has exactly one handler"
                    )
                self._handler = _Handler(func=f, json=json)
            return f

        if func is not None:
            return register(func)
        return register

    @property
    def handler(self) -> Callable[..., Any] | None:
        """The registered handler, or ``None``."""
        return None if self._handler is None else self._handler.func

    # ------------------------------------------------------------------ settings

    def settings(self) -> Settings:
        """Resolve and validate the settings; raises :class:`ConfigError`."""
        missing = []
        if not self.broker_url:
            missing.append(f"broker_url ({ENV.BROKER_URL})")
        if not self.queue:
            missing.append(f"queue ({ENV.QUEUE})")
        if missing:
            raise ConfigError("missing worker settings: " + ", ".join(missing))
        assert self.broker_url is not None and self.queue is not None
        pod_name = self.pod_name
        if not pod_name:
            pod_name = socket.gethostname()
            log.warning("%s is not set; using the host name %r as pod name", ENV.POD_NAME, pod_name)
        if self._grace_arg is not None:
            grace = float(self._grace_arg)
        elif self._grace_env is not None:
            grace = _seconds(*self._grace_env)
        else:
            grace = DEFAULT_GRACE_PERIOD
        if not grace >= 0:
            raise ConfigError(f"grace period must be >= 0 seconds, got {grace}")
        if self.poll_interval is not None:
            poll = float(self.poll_interval)
        elif self._poll_env is not None:
            poll = _seconds(ENV.POLL_SECONDS, self._poll_env)
            if not poll > 0:
                raise ConfigError(f"{ENV.POLL_SECONDS} must be > 0, got {self._poll_env!r}")
        else:
            poll = DEFAULT_POLL_INTERVAL
        nats_stream = None
        if url_scheme(self.broker_url) in ("nats", "tls"):
            nats_stream = parse_nats_url(self.broker_url, self.nats_stream).stream
            consumer = self._nats_consumer_env
            if consumer is not None and consumer != self.queue:
                raise ConfigError(
                    f"{ENV.NATS_CONSUMER}={consumer!r} is no longer supported: {ENV.QUEUE} "
                    f"({self.queue!r}) names the durable consumer, as in the Rust SDK and the "
                    f"operator, and the stream comes from the broker URL (?stream={nats_stream}); "
                    f"set {ENV.QUEUE}={consumer!r} or unset {ENV.NATS_CONSUMER}"
                )
            if consumer is not None:
                log.warning("%s is deprecated (%s names the consumer); unset it", ENV.NATS_CONSUMER, ENV.QUEUE)
        return Settings(
            broker_url=self.broker_url,
            queue=self.queue,
            pod_name=pod_name,
            pod_namespace=self.pod_namespace,
            worker_name=self.worker_name,
            pod_spec_hash=self.pod_spec_hash,
            annotations_file=self.annotations_file,
            grace_period=grace,
            poll_interval=poll,
            broker_password=self.broker_password,
            nats_stream=nats_stream,
        )

    # ------------------------------------------------------------------ stopping

    def stop(self, *, force: bool = False) -> None:
        """Ask :meth:`run` to stop, as SIGTERM does (thread-safe).

        The task in hand is finished within the grace period and acknowledged;
        ``force=True`` gives it back at once instead.
        """
        self._request_stop("stop()", force)

    def _request_stop(self, cause: str, force: bool) -> None:
        if self._stop.is_set():
            # A second request (e.g. a second Ctrl-C) gives the task in hand back at once.
            self._force = True
            return
        self._stop_at = time.monotonic()
        self._stop_cause = cause
        self._force = force
        self._stop.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._request_stop(f"signal {signal.Signals(signum).name}", force=False)

    # ------------------------------------------------------------------ running

    def run(self) -> ExitReason:
        """Take and handle tasks until drained, stale or stopped.

        Blocks.  Returns the :class:`ExitReason` (whose ``exit_code`` is 0);
        raises :class:`NoHandlerError`, :class:`ConfigError`, or
        :class:`BrokerError` for a permanent broker failure.
        """
        if self._handler is None:
            raise NoHandlerError(
                "no task handler registered: decorate a function with @worker.task before worker.run()"
            )
        handler = self._handler
        settings = self.settings()
        source = open_source(
            settings.broker_url,
            settings.queue,
            settings.pod_name,
            settings.poll_interval,
            password=settings.broker_password,
            nats_stream=settings.nats_stream,
        )
        with self._lock:
            if self._running:
                raise RuntimeError("Worker.run() is already running")
            self._running = True

        previous: dict[signal.Signals, Any] = {}
        executor: HandlerThread | None = None
        reason: ExitReason | None = None
        try:
            if self.handle_signals:
                if threading.current_thread() is threading.main_thread():
                    for signum in (signal.SIGTERM, signal.SIGINT):
                        previous[signum] = signal.signal(signum, self._on_signal)
                else:
                    log.warning("Worker.run() is not on the main thread: no signal handlers; use Worker.stop()")
            executor = HandlerThread(_bind(handler))
            log.info(
                "qworker starting: pod=%s namespace=%s qworker=%s spec-hash=%s %s",
                settings.pod_name,
                settings.pod_namespace,
                settings.worker_name,
                settings.pod_spec_hash,
                source.description,
            )
            reason = self._serve(settings, source, executor)
            return reason
        finally:
            if reason is not None:
                # Between tasks this pod holds nothing; return any stray task
                # (e.g. one moved by a BLMOVE whose reply was lost).
                try:
                    source.recover()
                except BrokerError as exc:
                    log.warning("could not check the processing list at exit: %s", exc)
            source.close()
            if executor is not None:
                executor.shutdown(wait=0.0 if reason is ExitReason.GRACE_EXPIRED else 1.0)
            for sig, old in previous.items():
                signal.signal(sig, old)
            with self._lock:
                self._running = False
                self._stop.clear()
                self._force = False
                self._stop_cause = ""
            if reason is not None:
                log.info("qworker exiting: %s", reason.value)

    def _backoff(self, failures: int) -> float:
        if self.error_backoff <= 0:
            return 0.0
        return float(min(self.max_error_backoff, self.error_backoff * (2 ** min(failures - 1, 16))))

    def _between_tasks(self, settings: Settings) -> ExitReason | None:
        if self._stop.is_set():
            return ExitReason.STOPPED
        why = drain_reason(read_annotations(settings.annotations_file), settings.pod_spec_hash)
        if why == "drain":
            log.info("drain requested by annotation; leaving between tasks")
            return ExitReason.DRAINED
        if why == "stale-spec-hash":
            log.info("pod spec hash %s is stale; leaving between tasks", settings.pod_spec_hash)
            return ExitReason.STALE_SPEC_HASH
        return None

    def _serve(self, settings: Settings, source: Source, executor: HandlerThread) -> ExitReason:
        broker_failures = 0
        handler_failures = 0
        connected = False
        while True:
            reason = self._between_tasks(settings)
            if reason is not None:
                return reason
            try:
                if not connected:
                    source.connect()
                    source.recover()
                    connected = True
                delivery = source.take(settings.poll_interval)
                broker_failures = 0
            except BrokerError as exc:
                if not exc.transient:
                    raise
                broker_failures += 1
                delay = max(self._backoff(broker_failures), 0.1)
                log.warning("broker error (attempt %d), retrying in %.1fs: %s", broker_failures, delay, exc)
                source.close()
                connected = False
                self._stop.wait(delay)
                continue
            if delivery is None:
                continue
            if self._stop.is_set():
                log.info("stopping: giving back a task taken as the stop request arrived")
                self._settle(source, delivery, ack=False)
                return ExitReason.STOPPED

            outcome = self._handle(settings, source, executor, delivery)
            if outcome is ExitReason.GRACE_EXPIRED:
                return outcome
            if outcome == "failed":
                handler_failures += 1
                delay = self._backoff(handler_failures)
                if delay > 0:
                    self._stop.wait(delay)
            else:
                handler_failures = 0

    def _handle(
        self, settings: Settings, source: Source, executor: HandlerThread, delivery: Delivery
    ) -> ExitReason | str:
        job: Job = executor.submit(delivery.payload)
        announced = False
        link_ok = True
        while True:
            if link_ok:
                try:
                    finished = source.wait(job.done, 0.1)
                except BrokerError as exc:
                    # The task stays held by the broker for this pod; let the handler finish.
                    log.warning("broker connection lost while a task runs: %s", exc)
                    link_ok = False
                    finished = job.done.wait(0.1)
            else:
                finished = job.done.wait(0.1)
            if finished:
                break
            if self._stop.is_set():
                if not announced:
                    announced = True
                    log.info(
                        "stop requested (%s): letting the current task finish (grace %.1fs)",
                        self._stop_cause,
                        settings.grace_period,
                    )
                if self._force or time.monotonic() >= self._stop_at + settings.grace_period:
                    log.warning("grace period over: giving the unfinished task back to the queue")
                    self._settle(source, delivery, ack=False)
                    return ExitReason.GRACE_EXPIRED
        if job.error is not None:
            log.error(
                "task handler failed, giving the task back: %r",
                job.error,
                exc_info=(type(job.error), job.error, job.error.__traceback__),
            )
            self._settle(source, delivery, ack=False)
            return "failed"
        self._settle(source, delivery, ack=True)
        return "done"

    def _settle(self, source: Source, delivery: Delivery, *, ack: bool) -> None:
        """Ack or give back, retrying transient errors for a while.

        If it still fails the task stays held by the broker for this pod and is
        returned by the next recovery (restart or operator): delivered again,
        never lost.
        """
        what = "acknowledge" if ack else "give back"
        deadline = time.monotonic() + 30.0
        attempt = 0
        while True:
            attempt += 1
            try:
                if ack:
                    source.ack(delivery)
                else:
                    source.give_back(delivery)
                return
            except BrokerError as exc:
                if not exc.transient or time.monotonic() >= deadline or (self._force and attempt > 1):
                    log.error("could not %s a task (it stays held for this pod and will be redelivered): %s", what, exc)
                    if not exc.transient:
                        raise
                    return
                delay = min(0.2 * 2**attempt, 5.0)
                log.warning("could not %s a task (attempt %d), retrying in %.1fs: %s", what, attempt, delay, exc)
                time.sleep(delay)


def _bind(handler: _Handler) -> Callable[[bytes], Any]:
    func = handler.func
    if handler.json:
        return lambda payload: func(_json.loads(payload))
    return func


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or repr(func)
