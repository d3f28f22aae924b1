"""NATS JetStream source against the real local NATS (127.0.0.1:4222, JetStream on)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

nats = pytest.importorskip("nats")

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StreamConfig  # noqa: E402

from conftest import NO_LOSS_REPORTS, Names, run_bounded, wait_for, write_annotations  # noqa: E402
from qworker import BrokerError, ConfigError, ExitReason, Worker, nats_subject  # noqa: E402
from test_signals import WorkerProc, finish, kill_all, spawn, stop_all  # noqa: E402

NATS_URL = os.environ.get("QWORKER_TEST_NATS_URL", "nats://127.0.0.1:4222")
T = TypeVar("T")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    "QWORKER_TEST_NATS_URL" not in os.environ and not _reachable("127.0.0.1", 4222),
    reason="no NATS at 127.0.0.1:4222 (set QWORKER_TEST_NATS_URL)",
)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class Stream:
    """A test stream ``QWTEST_…`` (subjects ``{stream}.>``, work-queue retention, as the Rust
    ``ensure_nats_queue``) and its queue: the durable consumer ``q_…`` on ``{stream}.{queue}``."""

    def __init__(
        self,
        name: str | None = None,
        queue: str | None = None,
        server: str = NATS_URL,
        auth: dict[str, str] | None = None,
    ) -> None:
        self.name = name or unique("QWTEST")
        self.queue = queue or unique("q")
        self.server = server
        self.auth = auth or {}  # user/password/token for the admin connection
        self.subject = nats_subject(self.name, self.queue)

    @property
    def url(self) -> str:
        """The broker URL of the convention: ``nats://host:port?stream=STREAM``."""
        return f"{self.server}?stream={self.name}"

    def _do(self, fn: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        async def main() -> T:
            nc = await nats.connect(self.server, max_reconnect_attempts=2, **self.auth)
            try:
                return await fn(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(main())

    def create(self, ack_wait: float | None = 30, *, consumer: bool = True) -> None:
        """The stream and (unless ``consumer=False``, or ``ack_wait`` is None) the consumer."""

        async def f(js: Any) -> None:
            await js.add_stream(
                StreamConfig(name=self.name, subjects=[f"{self.name}.>"], retention=RetentionPolicy.WORK_QUEUE)
            )
            if consumer and ack_wait is not None:
                await js.add_consumer(
                    self.name,
                    ConsumerConfig(
                        durable_name=self.queue,
                        ack_policy=AckPolicy.EXPLICIT,
                        ack_wait=ack_wait,
                        filter_subject=self.subject,
                    ),
                )

        self._do(f)

    def publish(self, *bodies: bytes) -> None:
        async def f(js: Any) -> None:
            for b in bodies:
                await js.publish(self.subject, b)

        self._do(f)

    def pending(self) -> tuple[int, int]:
        """(not yet delivered, delivered but not acknowledged)"""

        async def f(js: Any) -> tuple[int, int]:
            info = await js.consumer_info(self.name, self.queue)
            return int(info.num_pending), int(info.num_ack_pending)

        return self._do(f)

    def depth(self) -> int:
        """The operator's queue depth: num_pending + num_ack_pending of consumer ``queue``."""
        return sum(self.pending())

    def consumer_config(self) -> ConsumerConfig:
        async def f(js: Any) -> ConsumerConfig:
            info = await js.consumer_info(self.name, self.queue)
            config: ConsumerConfig = info.config
            return config

        return self._do(f)

    def delete(self) -> None:
        async def f(js: Any) -> None:
            await js.delete_stream(self.name)

        self._do(f)


@pytest.fixture
def stream() -> Iterator[Stream]:
    s = Stream()
    s.create()
    yield s
    s.delete()


@pytest.fixture
def make_nats_worker(stream: Stream, names: Names) -> Callable[..., Worker]:
    def make(**kw: Any) -> Worker:
        opts: dict[str, Any] = dict(
            broker_url=stream.url,
            queue=stream.queue,
            pod_name=names.pod,
            annotations_file=names.annotations,
            poll_interval=0.2,
            error_backoff=0,
            grace_period=5,
            environ={},
            handle_signals=False,
        )
        opts.update(kw)
        return Worker(**opts)

    return make


def test_take_and_ack(stream: Stream, make_nats_worker: Callable[..., Worker]) -> None:
    stream.publish(b"t1", b"t2", b"t3")
    worker = make_nats_worker()
    seen: list[bytes] = []

    @worker.task
    def handle(payload: bytes) -> None:
        seen.append(payload)
        if len(seen) == 3:
            worker.stop()

    assert run_bounded(worker) is ExitReason.STOPPED
    assert seen == [b"t1", b"t2", b"t3"]
    assert stream.pending() == (0, 0)


def test_handler_error_naks_and_retries(stream: Stream, make_nats_worker: Callable[..., Worker]) -> None:
    stream.publish(b"t1", b"t2")
    worker = make_nats_worker()
    attempts: list[bytes] = []

    @worker.task(json=False)
    async def handle(payload: bytes) -> None:
        attempts.append(payload)
        if payload == b"t1" and attempts.count(b"t1") == 1:
            raise RuntimeError("boom")
        if len(attempts) == 3:
            worker.stop()

    assert run_bounded(worker) is ExitReason.STOPPED
    assert sorted(attempts) == [b"t1", b"t1", b"t2"]
    assert stream.pending() == (0, 0)


def test_grace_expiry_gives_back(stream: Stream, make_nats_worker: Callable[..., Worker]) -> None:
    stream.publish(b"slow")
    worker = make_nats_worker(grace_period=0.3)
    started = threading.Event()
    release = threading.Event()

    @worker.task
    def handle(payload: bytes) -> None:
        started.set()
        release.wait(10)

    def stopper() -> None:
        started.wait(10)
        worker.stop()

    threading.Thread(target=stopper, daemon=True).start()
    assert run_bounded(worker) is ExitReason.GRACE_EXPIRED
    release.set()
    # NAKed: redelivered to the next worker at once.
    again: list[bytes] = []
    w2 = make_nats_worker()

    @w2.task
    def handle2(payload: bytes) -> None:
        again.append(payload)
        w2.stop()

    assert run_bounded(w2) is ExitReason.STOPPED
    assert again == [b"slow"]
    assert stream.pending() == (0, 0)


def test_drain_between_tasks(stream: Stream, names: Names, make_nats_worker: Callable[..., Worker]) -> None:
    stream.publish(b"t1", b"t2", b"t3")
    worker = make_nats_worker()
    seen: list[bytes] = []

    @worker.task
    def handle(payload: bytes) -> None:
        seen.append(payload)
        write_annotations(names.annotations, {"quickube.com/drain": "true"})

    assert run_bounded(worker) is ExitReason.DRAINED
    assert seen == [b"t1"]
    assert stream.pending() == (2, 0)


def test_no_loss_with_kills(names: Names, redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    s = Stream()
    s.create(ack_wait=2)  # a killed worker's message comes back after 2 s
    n = 300
    ids = [f"n-{i:04d}".encode() for i in range(n)]
    procs: dict[str, WorkerProc] = {}
    seq = iter(range(100))
    try:
        s.publish(*ids)

        def start() -> str:
            pod = f"n{next(seq)}"
            procs[pod] = spawn(
                names, redis_url, pod, "--sleep", "0.01", "--record-url", redis_url,
                env={"QWORKER_BROKER_URL": s.url, "QWORKER_QUEUE": s.queue,
                     "QWORKER_ANNOTATIONS_FILE": str(tmp_path / pod)},
            )
            return pod

        def progress(k: int) -> None:
            wait_for(lambda: r.hlen(names.results) >= k, 60, f"{k} processed")

        a, b, c = start(), start(), start()
        progress(50)
        procs[a].send_signal(signal.SIGKILL)
        finish(procs[a])
        start()
        progress(110)
        write_annotations(tmp_path / b, {"quickube.com/drain": "yes"})
        code, out, err = finish(procs[b], 30)
        assert code == 0 and "EXIT drained" in out, err
        start()
        progress(170)
        wait_for(procs[c].ready, 30, "worker c to be ready")
        procs[c].send_signal(signal.SIGTERM)
        code, out, err = finish(procs[c], 30)
        assert code == 0 and "EXIT stopped" in out, err
        start()
        wait_for(lambda: r.hlen(names.results) >= n and s.pending() == (0, 0), 90, "all processed and acked")
        for code, out, err in stop_all(procs.values()):
            assert code == 0 and "EXIT stopped" in out, err
        counts = {k: int(v) for k, v in r.hgetall(names.results).items()}
        assert set(counts) == set(ids), f"missing: {sorted(set(ids) - set(counts))[:10]}"
        extra = sum(v - 1 for v in counts.values())
        NO_LOSS_REPORTS.append(
            f"qworker no-loss (nats jetstream): {n} tasks, {len(counts)} processed, 0 missing, "
            f"{extra} extra runs, 1 SIGKILLed, {len(procs)} worker processes"
        )
        assert extra <= 1
    finally:
        kill_all(procs.values())
        s.delete()


def test_long_task_sends_in_progress_and_is_not_redelivered(names: Names) -> None:
    s = Stream()
    s.create(ack_wait=2)

    def make() -> Worker:
        return Worker(
            broker_url=s.url, queue=s.queue, pod_name=names.pod, annotations_file=names.annotations,
            poll_interval=0.2, error_backoff=0, environ={}, handle_signals=False,
        )

    try:
        s.publish(b"long")
        a, b = make(), make()
        started = threading.Event()
        calls_a: list[bytes] = []
        calls_b: list[bytes] = []

        @a.task
        def handle_a(payload: bytes) -> None:
            calls_a.append(payload)
            started.set()
            threading.Event().wait(5.0)  # longer than ack_wait, while b keeps fetching
            a.stop()

        b.task(calls_b.append)
        box: dict[str, ExitReason] = {}
        ta = threading.Thread(target=lambda: box.setdefault("a", run_bounded(a, timeout=30)))
        ta.start()
        assert started.wait(10)
        tb = threading.Thread(target=lambda: box.setdefault("b", run_bounded(b, timeout=30)))
        tb.start()
        ta.join(40)
        threading.Event().wait(1.0)
        b.stop()
        tb.join(40)
        assert box == {"a": ExitReason.STOPPED, "b": ExitReason.STOPPED}
        assert calls_a == [b"long"]
        assert calls_b == []  # not redelivered while a worked on it
        assert s.pending() == (0, 0)
    finally:
        s.delete()


# ----------------------------------------------------------------- the convention shared with Rust


def test_creates_missing_consumer_like_rust_ensure_nats_queue(names: Names) -> None:
    """No consumer yet: the worker creates the durable consumer ``queue`` as the Rust
    ``ensure_nats_queue`` does, and takes what was already published to ``{stream}.{queue}``."""
    s = Stream()
    s.create(consumer=False)
    try:
        s.publish(b"early-1", b"early-2")
        worker = Worker(
            broker_url=s.url, queue=s.queue, pod_name=names.pod, annotations_file=names.annotations,
            poll_interval=0.2, error_backoff=0, environ={}, handle_signals=False,
        )
        seen: list[bytes] = []

        @worker.task
        def handle(payload: bytes) -> None:
            seen.append(payload)
            if len(seen) == 2:
                worker.stop()

        assert run_bounded(worker) is ExitReason.STOPPED
        assert seen == [b"early-1", b"early-2"]
        config = s.consumer_config()
        assert config.durable_name == s.queue
        assert config.filter_subject == f"{s.name}.{s.queue}"
        assert config.ack_policy == AckPolicy.EXPLICIT
        assert config.ack_wait == 30.0
        assert config.deliver_policy == DeliverPolicy.ALL
        assert config.deliver_subject is None  # a pull consumer
        assert s.depth() == 0
    finally:
        s.delete()


def test_queues_of_one_stream_are_separate_consumers(names: Names) -> None:
    """Two queues in one stream: each worker sees only ``{stream}.{its queue}``, and the
    other queue's depth (num_pending + num_ack_pending) is untouched."""
    a = Stream()
    a.create()
    b = Stream(name=a.name)
    try:
        b._do(lambda js: js.add_consumer(  # the stream exists: add the second queue
            b.name, ConsumerConfig(durable_name=b.queue, ack_policy=AckPolicy.EXPLICIT, filter_subject=b.subject)
        ))
        a.publish(b"a1", b"a2")
        b.publish(b"b1", b"b2", b"b3")
        assert (a.depth(), b.depth()) == (2, 3)
        worker = Worker(
            broker_url=a.url, queue=a.queue, pod_name=names.pod, annotations_file=names.annotations,
            poll_interval=0.2, error_backoff=0, environ={}, handle_signals=False,
        )
        seen: list[bytes] = []

        @worker.task
        def handle(payload: bytes) -> None:
            seen.append(payload)
            if len(seen) == 2:
                worker.stop()

        assert run_bounded(worker) is ExitReason.STOPPED
        assert seen == [b"a1", b"a2"]
        assert (a.depth(), b.depth()) == (0, 3)
    finally:
        a.delete()


def test_stream_from_url_or_override(stream: Stream, names: Names) -> None:
    base = {"QWORKER_QUEUE": stream.queue, "POD_NAME": names.pod}
    # The stream is required: from ?stream= ...
    with pytest.raises(ConfigError, match=r"\?stream="):
        Worker(environ={**base, "QWORKER_BROKER_URL": NATS_URL}).settings()
    s = Worker(environ={**base, "QWORKER_BROKER_URL": stream.url}).settings()
    assert (s.nats_stream, s.queue) == (stream.name, stream.queue)
    # ... or QWORKER_NATS_STREAM, which wins over the URL.
    env = {**base, "QWORKER_BROKER_URL": f"{NATS_URL}?stream=NOT_THIS", "QWORKER_NATS_STREAM": stream.name}
    assert Worker(environ=env).settings().nats_stream == stream.name
    stream.publish(b"t1")
    worker = Worker(
        environ=env, annotations_file=names.annotations, poll_interval=0.2, error_backoff=0, handle_signals=False
    )
    seen: list[bytes] = []

    @worker.task
    def handle(payload: bytes) -> None:
        seen.append(payload)
        worker.stop()

    assert run_bounded(worker) is ExitReason.STOPPED
    assert seen == [b"t1"] and stream.depth() == 0


def test_old_consumer_variable_is_refused_unless_it_is_the_queue(stream: Stream) -> None:
    env = {"QWORKER_BROKER_URL": stream.url, "QWORKER_QUEUE": stream.queue, "POD_NAME": "p"}
    with pytest.raises(ConfigError, match="QWORKER_NATS_CONSUMER"):
        Worker(environ={**env, "QWORKER_NATS_CONSUMER": "other"}).settings()
    assert Worker(environ={**env, "QWORKER_NATS_CONSUMER": stream.queue}).settings().queue == stream.queue
    # Not a NATS URL: the variable means nothing and is ignored.
    Worker(environ={**env, "QWORKER_BROKER_URL": "redis://r", "QWORKER_NATS_CONSUMER": "other"}).settings()


def test_missing_stream_is_a_transient_broker_error(names: Names) -> None:
    worker = Worker(
        broker_url=f"{NATS_URL}?stream={unique('QWTEST_MISSING')}", queue="q", pod_name=names.pod,
        annotations_file=names.annotations, poll_interval=0.1, error_backoff=0.05, max_error_backoff=0.05,
        environ={}, handle_signals=False,
    )
    worker.task(lambda payload: None)
    errors: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record.getMessage())
            if len(errors) >= 2:
                worker.stop()

    handler = Capture(level=logging.WARNING)
    logging.getLogger("qworker").addHandler(handler)
    try:
        assert run_bounded(worker) is ExitReason.STOPPED  # retried, not raised
    finally:
        logging.getLogger("qworker").removeHandler(handler)
    assert any("not found" in e and "?stream=" in e for e in errors), errors


# ----------------------------------------------------------------- QWORKER_BROKER_PASSWORD


@pytest.fixture
def private_nats(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Start private nats-server processes (JetStream, with auth options); yields a starter
    returning ``nats://127.0.0.1:PORT``.  Each is stopped (by its pid) afterwards."""
    exe = shutil.which("nats-server")
    if exe is None:
        pytest.skip("nats-server is not on PATH: cannot start a NATS server with authentication")
    procs: list[subprocess.Popen[bytes]] = []

    def start(*auth: str) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        store = tmp_path / f"js-{port}"
        log_file = open(tmp_path / f"nats-{port}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [exe, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store), *auth],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
        log_file.close()
        procs.append(proc)
        wait_for(lambda: _reachable("127.0.0.1", port) or proc.poll() is not None, 15, "nats-server")
        assert proc.poll() is None, (tmp_path / f"nats-{port}.log").read_text()
        return f"nats://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _one_task(url: str, queue: str, names: Names, environ: dict[str, str]) -> list[bytes]:
    worker = Worker(
        broker_url=url, queue=queue, pod_name=names.pod, annotations_file=names.annotations,
        poll_interval=0.2, error_backoff=0, environ=environ, handle_signals=False,
    )
    seen: list[bytes] = []

    @worker.task
    def handle(payload: bytes) -> None:
        seen.append(payload)
        worker.stop()

    assert run_bounded(worker) is ExitReason.STOPPED
    return seen


def test_broker_password_replaces_the_url_password(private_nats: Callable[..., str], names: Names) -> None:
    server = private_nats("--user", "qw", "--pass", "s3cr:t/pw")
    s = Stream(server=server, auth={"user": "qw", "password": "s3cr:t/pw"})
    s.create()
    s.publish(b"secret-task")
    url = server.replace("nats://", "nats://qw:WRONG@") + f"?stream={s.name}"
    # The URL's password is wrong: refused for good (not retried).
    worker = Worker(
        broker_url=url, queue=s.queue, pod_name=names.pod, annotations_file=names.annotations,
        poll_interval=0.2, environ={}, handle_signals=False,
    )
    worker.task(lambda payload: None)
    with pytest.raises(BrokerError) as info:
        run_bounded(worker)
    assert not info.value.transient
    # QWORKER_BROKER_PASSWORD (e.g. from a Secret) replaces it.
    assert _one_task(url, s.queue, names, {"QWORKER_BROKER_PASSWORD": "s3cr:t/pw"}) == [b"secret-task"]
    assert s.depth() == 0
    # A percent-encoded password in the URL works as well.
    s.publish(b"second")
    encoded = server.replace("nats://", "nats://qw:s3cr%3At%2Fpw@") + f"?stream={s.name}"
    assert _one_task(encoded, s.queue, names, {}) == [b"second"]


def test_broker_password_is_the_token_without_a_user(private_nats: Callable[..., str], names: Names) -> None:
    server = private_nats("--auth", "t0ken")
    s = Stream(server=server, auth={"token": "t0ken"})
    s.create()
    s.publish(b"token-task")
    url = f"{server}?stream={s.name}"  # no credentials in the URL at all
    assert _one_task(url, s.queue, names, {"QWORKER_BROKER_PASSWORD": "t0ken"}) == [b"token-task"]
    assert s.depth() == 0


def test_tls_url_refuses_a_plain_text_server(private_nats: Callable[..., str], names: Names) -> None:
    server = private_nats("--user", "qw", "--pass", "pw")
    url = server.replace("nats://", "tls://qw:pw@") + "?stream=S"
    worker = Worker(
        broker_url=url, queue="q", pod_name=names.pod, annotations_file=names.annotations,
        poll_interval=0.2, environ={}, handle_signals=False,
    )
    worker.task(lambda payload: None)
    with pytest.raises(BrokerError, match="does not require TLS") as info:
        run_bounded(worker)
    assert not info.value.transient
