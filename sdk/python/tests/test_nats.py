"""NATS JetStream source against the real local NATS (127.0.0.1:4222, JetStream on)."""

from __future__ import annotations

import asyncio
import os
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

from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig  # noqa: E402

from conftest import NO_LOSS_REPORTS, Names, run_bounded, wait_for, write_annotations  # noqa: E402
from qworker import ExitReason, Worker  # noqa: E402
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


class Stream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.subject = f"{name}.tasks"

    def _do(self, fn: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        async def main() -> T:
            nc = await nats.connect(NATS_URL)
            try:
                return await fn(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(main())

    def create(self, ack_wait: float = 30) -> None:
        async def f(js: Any) -> None:
            await js.add_stream(StreamConfig(name=self.name, subjects=[self.subject]))
            await js.add_consumer(
                self.name,
                ConsumerConfig(durable_name=self.name, ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait),
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
            info = await js.consumer_info(self.name, self.name)
            return int(info.num_pending), int(info.num_ack_pending)

        return self._do(f)

    def delete(self) -> None:
        async def f(js: Any) -> None:
            await js.delete_stream(self.name)

        self._do(f)


@pytest.fixture
def stream() -> Iterator[Stream]:
    s = Stream(f"QWTEST_{uuid.uuid4().hex[:12]}")
    s.create()
    yield s
    s.delete()


@pytest.fixture
def make_nats_worker(stream: Stream, names: Names) -> Callable[..., Worker]:
    def make(**kw: Any) -> Worker:
        opts: dict[str, Any] = dict(
            broker_url=NATS_URL,
            queue=stream.name,
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
    s = Stream(f"QWTEST_{uuid.uuid4().hex[:12]}")
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
                env={"QWORKER_BROKER_URL": NATS_URL, "QWORKER_QUEUE": s.name,
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
    s = Stream(f"QWTEST_{uuid.uuid4().hex[:12]}")
    s.create(ack_wait=2)

    def make() -> Worker:
        return Worker(
            broker_url=NATS_URL, queue=s.name, pod_name=names.pod, annotations_file=names.annotations,
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
