"""RabbitMQ source against the real local RabbitMQ (127.0.0.1:5672, guest/guest)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

pika = pytest.importorskip("pika")

from conftest import NO_LOSS_REPORTS, Names, run_bounded, wait_for, write_annotations  # noqa: E402
from qworker import ENV, BrokerError, ExitReason, Worker  # noqa: E402
from test_signals import WorkerProc, finish, kill_all, spawn, stop_all  # noqa: E402

AMQP_URL = os.environ.get("QWORKER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    "QWORKER_TEST_AMQP_URL" not in os.environ and not _reachable("127.0.0.1", 5672),
    reason="no RabbitMQ at 127.0.0.1:5672 (set QWORKER_TEST_AMQP_URL)",
)


class Rabbit:
    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.ch = self.conn.channel()
        self.ch.queue_declare(queue, durable=False)

    def publish(self, *bodies: bytes) -> None:
        for b in bodies:
            self.ch.basic_publish(exchange="", routing_key=self.queue, body=b)

    def ready(self) -> int:
        return int(self.ch.queue_declare(self.queue, passive=True).method.message_count)

    def drain_all(self) -> list[bytes]:
        out = []
        while True:
            method, _, body = self.ch.basic_get(self.queue, auto_ack=True)
            if method is None:
                return out
            out.append(body)


@pytest.fixture
def rabbit() -> Iterator[Rabbit]:
    rb = Rabbit(f"qwtest-{uuid.uuid4().hex[:12]}")
    yield rb
    try:
        rb.ch.queue_delete(rb.queue)
        rb.ch.queue_delete(f"{rb.queue}:in-flight")  # the workers' busy-marker queue
    finally:
        rb.conn.close()


@pytest.fixture
def make_amqp_worker(rabbit: Rabbit, names: Names) -> Callable[..., Worker]:
    def make(**kw: Any) -> Worker:
        opts: dict[str, Any] = dict(
            broker_url=AMQP_URL,
            queue=rabbit.queue,
            pod_name=names.pod,
            annotations_file=names.annotations,
            poll_interval=0.1,
            error_backoff=0,
            grace_period=5,
            environ={},
            handle_signals=False,
        )
        opts.update(kw)
        return Worker(**opts)

    return make


def test_take_and_ack(rabbit: Rabbit, make_amqp_worker: Callable[..., Worker]) -> None:
    rabbit.publish(b"t1", b"t2", b"t3")
    worker = make_amqp_worker()
    seen: list[bytes] = []

    @worker.task
    async def handle(payload: bytes) -> None:
        seen.append(payload)
        if len(seen) == 3:
            worker.stop()

    assert run_bounded(worker) is ExitReason.STOPPED
    assert seen == [b"t1", b"t2", b"t3"]
    time.sleep(0.2)
    assert rabbit.ready() == 0  # all acknowledged (unacked ones would be back after close)


def test_handler_error_requeues(rabbit: Rabbit, make_amqp_worker: Callable[..., Worker]) -> None:
    rabbit.publish(b"t1", b"t2", b"t3")
    worker = make_amqp_worker()
    attempts: list[bytes] = []

    @worker.task
    def handle(payload: bytes) -> None:
        attempts.append(payload)
        if payload == b"t2" and attempts.count(b"t2") == 1:
            raise RuntimeError("boom")
        if len(attempts) == 4:
            worker.stop()

    assert run_bounded(worker) is ExitReason.STOPPED
    assert sorted(attempts) == [b"t1", b"t2", b"t2", b"t3"]
    assert attempts[:3] == [b"t1", b"t2", b"t2"]  # nack(requeue) puts it back at the head
    time.sleep(0.2)
    assert rabbit.ready() == 0


def test_grace_expiry_gives_back(rabbit: Rabbit, make_amqp_worker: Callable[..., Worker]) -> None:
    rabbit.publish(b"slow")
    worker = make_amqp_worker(grace_period=0.3)
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
    wait_for(lambda: rabbit.ready() == 1, 5, "the task back in the queue")
    assert rabbit.drain_all() == [b"slow"]


def test_drain_between_tasks(rabbit: Rabbit, names: Names, make_amqp_worker: Callable[..., Worker]) -> None:
    rabbit.publish(b"t1", b"t2", b"t3")
    worker = make_amqp_worker()
    seen: list[bytes] = []

    @worker.task
    def handle(payload: bytes) -> None:
        seen.append(payload)
        write_annotations(names.annotations, {"quickube.com/drain": "true"})

    assert run_bounded(worker) is ExitReason.DRAINED
    assert seen == [b"t1"]
    wait_for(lambda: rabbit.ready() == 2, 5, "two tasks left")
    assert rabbit.drain_all() == [b"t2", b"t3"]


def test_no_loss_with_kills(rabbit: Rabbit, names: Names, redis_url: str, r: redis.Redis, tmp_path: Path) -> None:
    n = 400
    ids = [f"m-{i:04d}".encode() for i in range(n)]
    rabbit.publish(*ids)
    procs: dict[str, WorkerProc] = {}
    seq = iter(range(100))
    killed = 0

    def start() -> str:
        pod = f"a{next(seq)}"
        ann = tmp_path / pod
        procs[pod] = spawn(
            names, redis_url, pod, "--sleep", "0.01", "--record-url", redis_url,
            env={"QWORKER_BROKER_URL": AMQP_URL, "QWORKER_QUEUE": rabbit.queue,
                 "QWORKER_ANNOTATIONS_FILE": str(ann)},
        )
        return pod

    def progress(k: int) -> None:
        wait_for(lambda: r.hlen(names.results) >= k, 60, f"{k} processed")

    try:
        a, b, c = start(), start(), start()
        progress(60)
        procs[a].send_signal(signal.SIGKILL)  # its unacked delivery returns to the queue
        finish(procs[a])
        killed += 1
        start()
        progress(140)
        write_annotations(tmp_path / b, {"quickube.com/drain": "yes"})
        code, out, err = finish(procs[b], 30)
        assert code == 0 and "EXIT drained" in out, err
        start()
        progress(220)
        wait_for(procs[c].ready, 30, "worker c to be ready")
        procs[c].send_signal(signal.SIGTERM)
        code, out, err = finish(procs[c], 30)
        assert code == 0 and "EXIT stopped" in out, err
        start()
        wait_for(lambda: r.hlen(names.results) >= n and rabbit.ready() == 0, 90, "all processed")
        for code, out, err in stop_all(procs.values()):
            assert code == 0 and "EXIT stopped" in out, err
    finally:
        kill_all(procs.values())
    time.sleep(0.3)
    assert rabbit.ready() == 0
    counts = {k: int(v) for k, v in r.hgetall(names.results).items()}
    assert set(counts) == set(ids), f"missing: {sorted(set(ids) - set(counts))[:10]}"
    extra = sum(v - 1 for v in counts.values())
    NO_LOSS_REPORTS.append(
        f"qworker no-loss (rabbitmq): {n} tasks, {len(counts)} processed, 0 missing, "
        f"{extra} extra runs, {killed} SIGKILLed, {len(procs)} worker processes"
    )
    assert extra <= killed


def test_broker_password_replaces_the_url_password(rabbit: Rabbit, make_amqp_worker: Callable[..., Worker]) -> None:
    wrong = AMQP_URL.replace("guest:guest@", "guest:WRONG@")
    assert wrong != AMQP_URL, "the test expects guest:guest in QWORKER_TEST_AMQP_URL"
    rabbit.publish(b"t1")
    refused = make_amqp_worker(broker_url=wrong)
    refused.task(lambda payload: None)
    with pytest.raises(BrokerError) as info:
        run_bounded(refused)
    assert not info.value.transient
    # QWORKER_BROKER_PASSWORD (e.g. from a Secret) replaces the URL's password.
    worker = make_amqp_worker(broker_url=wrong, environ={ENV.BROKER_PASSWORD: "guest"})
    seen: list[bytes] = []

    @worker.task
    def handle(payload: bytes) -> None:
        seen.append(payload)
        worker.stop()

    assert run_bounded(worker) is ExitReason.STOPPED
    assert seen == [b"t1"]
    assert rabbit.ready() == 0


def test_busy_workers_mark_themselves_idle_ones_do_not(rabbit: Rabbit) -> None:
    """The operator counts in-flight work as the consumers of ``{queue}:in-flight``."""
    from qworker.sources._amqp import AmqpSource, in_flight_queue

    marker = in_flight_queue(rabbit.queue)
    sources = [AmqpSource(AMQP_URL, rabbit.queue, f"w-{i}", 0.1) for i in range(2)]
    try:
        for s in sources:
            s.connect()
            assert s.take(0.1) is None

        def busy() -> int:
            return int(rabbit.ch.queue_declare(marker, passive=True).method.consumer_count)

        assert busy() == 0
        rabbit.publish(b"t1")
        held = None
        deadline = time.monotonic() + 5
        while held is None and time.monotonic() < deadline:
            for s in sources:
                d = s.take(0.1)
                if d is not None:
                    held = (s, d)
                    break
        assert held is not None
        assert busy() == 1
        s, d = held
        s.ack(d)
        assert s.take(0.1) is None
        assert busy() == 0
    finally:
        for s in sources:
            s.close()
