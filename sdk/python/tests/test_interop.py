"""Cross-SDK: the Python worker and the Rust worker (``qworker-echo``) share queues.

The first two tests check, against the real brokers, the wire conventions the Rust SDK
(crates/queue) and the operator rely on:

* Redis: producers ``LPUSH``; a worker takes from the right end into
  ``{queue}:processing:{POD_NAME}`` and removes the task from there when done;
* NATS: the broker URL's ``?stream=`` names the stream, ``QWORKER_QUEUE`` the durable pull
  consumer, tasks go to subject ``{stream}.{queue}``, and the operator's depth is the
  consumer's ``num_pending + num_ack_pending``.

The others run the Rust test binary ``qworker-echo`` next to Python workers on the same
queues, and kill one SDK's worker while it holds a task so that the other SDK's worker,
started with the same pod name, must return it.  They use ``QWORKER_ECHO_BIN``, or
``target/debug/qworker-echo`` of this repository (built with ``cargo build -q -p
workerpool-worker --bin qworker-echo`` when missing and ``cargo`` is on PATH), and skip,
saying why, without either.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from conftest import HERE, Names, run_bounded, wait_for
from qworker import ExitReason, Worker, processing_list_name
from test_signals import WorkerProc, finish, kill_all, spawn

REPO = HERE.parents[2]
_built: dict[str, str] = {}


def _echo_binary() -> str:
    """Path of qworker-echo, building it if needed; ``pytest.skip`` when impossible."""
    explicit = os.environ.get("QWORKER_ECHO_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            pytest.fail(f"QWORKER_ECHO_BIN={explicit} is not an executable")
        return explicit
    binary = REPO / "target" / "debug" / "qworker-echo"
    if os.access(binary, os.X_OK):
        return str(binary)
    if "error" in _built:
        pytest.skip(_built["error"])
    cargo = shutil.which("cargo")
    if cargo is None or not (REPO / "Cargo.toml").is_file():
        pytest.skip(f"no Rust worker: {binary} is missing and cargo is not on PATH (or no Cargo.toml in {REPO})")
    try:
        proc = subprocess.run(
            [cargo, "build", "-q", "-p", "workerpool-worker", "--bin", "qworker-echo"],
            cwd=REPO, capture_output=True, text=True, timeout=900,
        )
    except subprocess.TimeoutExpired:
        _built["error"] = "building qworker-echo took over 15 minutes"
        pytest.skip(_built["error"])
    if proc.returncode != 0 or not os.access(binary, os.X_OK):
        _built["error"] = f"cargo could not build qworker-echo: {proc.stderr[-2000:]}"
        pytest.skip(_built["error"])
    return str(binary)


@pytest.fixture
def rust_echo(names: Names, tmp_path: Path) -> Iterator[Callable[..., WorkerProc]]:
    """Starts ``qworker-echo`` processes (env as the operator sets it); kills leftovers."""
    binary = _echo_binary()
    procs: list[WorkerProc] = []

    def start(pod: str, broker_url: str, queue: str, record_hash: str, **env: str) -> WorkerProc:
        e = {k: v for k, v in os.environ.items() if not k.startswith("QWORKER_")}
        e.update(
            QWORKER_BROKER_URL=broker_url,
            QWORKER_QUEUE=queue,
            POD_NAME=pod,
            POD_NAMESPACE="test",
            QWORKER_NAME="interop",
            POD_SPEC_HASH="h1",
            QWORKER_ANNOTATIONS_FILE=str(tmp_path / f"annotations-{pod}"),
            QWORKER_POLL_SECONDS="0.2",
            QWORKER_GRACE_PERIOD_SECONDS="10",
            QWORKER_ECHO_RECORD_HASH=record_hash,
            RUST_LOG="info",
        )
        e.update(env)
        proc = WorkerProc([binary], env=e)
        procs.append(proc)
        return proc

    yield start
    kill_all(procs)


def rust_ready(proc: WorkerProc) -> bool:
    assert proc.poll() is None, f"qworker-echo exited {proc.returncode}:\n{proc.err[-3000:]}"
    return "worker started" in proc.err


def counts(r: redis.Redis, key: str) -> dict[bytes, int]:
    return {k: int(v) for k, v in r.hgetall(key).items()}


# ----------------------------------------------------------------- wire conventions


def test_redis_wire_convention(r: redis.Redis, names: Names, make_worker: Callable[..., Worker]) -> None:
    """LPUSH by producers, taken from the right into ``{queue}:processing:{pod}``, removed on ack."""
    processing = f"{names.queue}:processing:{names.pod}"
    assert processing_list_name(names.queue, names.pod) == processing
    r.lpush(names.queue, b"first")
    r.lpush(names.queue, b"second")
    worker = make_worker()
    held: list[tuple[bytes, list[bytes], list[bytes]]] = []

    @worker.task
    def handle(payload: bytes) -> None:
        held.append((payload, r.lrange(processing, 0, -1), r.lrange(names.queue, 0, -1)))
        if len(held) == 2:
            worker.stop()

    assert run_bounded(worker) is ExitReason.STOPPED
    assert held == [(b"first", [b"first"], [b"second"]), (b"second", [b"second"], [])]
    assert r.llen(processing) == 0 and r.llen(names.queue) == 0


def test_nats_wire_convention(names: Names) -> None:
    """Consumer ``queue`` of the URL's stream, subject ``{stream}.{queue}``, operator depth."""
    pytest.importorskip("nats")
    from test_nats import NATS_URL, Stream, _reachable

    if "QWORKER_TEST_NATS_URL" not in os.environ and not _reachable("127.0.0.1", 4222):
        pytest.skip("no NATS at 127.0.0.1:4222 (set QWORKER_TEST_NATS_URL)")
    s = Stream()
    s.create()
    try:
        assert s.url == f"{NATS_URL}?stream={s.name}" and s.subject == f"{s.name}.{s.queue}"
        s.publish(b"t1", b"t2")
        worker = Worker(
            broker_url=s.url, queue=s.queue, pod_name=names.pod, annotations_file=names.annotations,
            poll_interval=0.2, error_backoff=0, environ={}, handle_signals=False,
        )
        depths: list[tuple[int, int]] = []

        @worker.task
        def handle(payload: bytes) -> None:
            depths.append(s.pending())
            if len(depths) == 2:
                worker.stop()

        assert run_bounded(worker) is ExitReason.STOPPED
        # While a task runs it is ack-pending; the operator counts it.
        assert depths == [(1, 1), (0, 1)]
        assert s.depth() == 0
    finally:
        s.delete()


# ----------------------------------------------------------------- with the Rust worker


def test_redis_python_and_rust_recover_each_other(
    r: redis.Redis, names: Names, redis_url: str, rust_echo: Callable[..., WorkerProc]
) -> None:
    started, rs_results = names.key("started"), names.key("rs")
    procs: list[WorkerProc] = []
    try:
        # 1. A Python worker is SIGKILLed holding a task; a Rust worker with the same pod
        #    name returns it from {queue}:processing:{pod} and processes everything.
        r.lpush(names.queue, b"a", b"b")  # "a" is taken first
        py = spawn(names, redis_url, "pod-x", "--started", started, "--sleep", "60")
        procs.append(py)
        wait_for(lambda: r.llen(started) == 1, 15, "the Python worker to take a task")
        py.send_signal(signal.SIGKILL)
        finish(py)
        assert r.lrange(processing_list_name(names.queue, "pod-x"), 0, -1) == [b"a"]
        rs = rust_echo("pod-x", redis_url, names.queue, rs_results)
        wait_for(lambda: len(counts(r, rs_results)) == 2, 20, "the Rust worker to process a and b")
        assert counts(r, rs_results) == {b"a": 1, b"b": 1}
        assert r.llen(names.queue) == 0 and r.llen(processing_list_name(names.queue, "pod-x")) == 0
        rs.send_signal(signal.SIGTERM)
        code, _, err = finish(rs, 20)
        assert code == 0, err
        r.delete(started, names.results, rs_results)

        # 2. A Rust worker is SIGKILLed holding a task; a Python worker with the same pod
        #    name returns it and processes everything.
        r.lpush(names.queue, b"c", b"d")
        rs = rust_echo("pod-y", redis_url, names.queue, rs_results, QWORKER_ECHO_SLEEP_MS="60000")
        held = processing_list_name(names.queue, "pod-y")
        wait_for(lambda: r.llen(held) == 1, 20, "the Rust worker to take a task")
        rs.send_signal(signal.SIGKILL)
        finish(rs)
        assert r.lrange(held, 0, -1) == [b"c"] and r.lrange(names.queue, 0, -1) == [b"d"]
        py = spawn(names, redis_url, "pod-y")
        procs.append(py)
        wait_for(lambda: r.hlen(names.results) == 2, 20, "the Python worker to process c and d")
        assert counts(r, names.results) == {b"c": 1, b"d": 1}
        wait_for(py.ready, 10, "the Python worker to be ready")
        py.send_signal(signal.SIGTERM)
        code, out, err = finish(py, 20)
        assert code == 0 and "EXIT stopped" in out, err
        assert r.llen(names.queue) == 0 and r.llen(held) == 0

        # 3. Both at once on one queue: every task once.
        ids = [f"t-{i:03d}".encode() for i in range(200)]
        r.delete(names.results, rs_results)
        py = spawn(names, redis_url, "pod-p", "--sleep", "0.005")
        procs.append(py)
        rs = rust_echo("pod-r", redis_url, names.queue, rs_results, QWORKER_ECHO_SLEEP_MS="5")
        wait_for(lambda: py.ready() and rust_ready(rs), 20, "both workers to start")
        r.lpush(names.queue, *ids)
        done = lambda: {**counts(r, names.results), **counts(r, rs_results)}  # noqa: E731
        wait_for(lambda: len(done()) == len(ids), 30, "all tasks processed")
        py_done, rs_done = counts(r, names.results), counts(r, rs_results)
        assert set(py_done) | set(rs_done) == set(ids)
        assert not set(py_done) & set(rs_done)
        assert all(v == 1 for v in [*py_done.values(), *rs_done.values()])
        assert py_done and rs_done, "both workers should have taken tasks"
        for p in (py, rs):
            p.send_signal(signal.SIGTERM)
            code, _, err = finish(p, 20)
            assert code == 0, err
        assert r.llen(names.queue) == 0
        assert r.llen(processing_list_name(names.queue, "pod-p")) == 0
        assert r.llen(processing_list_name(names.queue, "pod-r")) == 0
    finally:
        kill_all(procs)


def test_nats_python_creates_the_consumer_rust_shares_it(
    r: redis.Redis, names: Names, redis_url: str, rust_echo: Callable[..., WorkerProc]
) -> None:
    """The Python worker creates the missing durable consumer ``queue``; the Rust worker,
    which needs it to exist, consumes the same queue; tasks published to
    ``{stream}.{queue}`` are all processed once and the operator's depth drops to 0."""
    pytest.importorskip("nats")
    from test_nats import Stream, _reachable

    if "QWORKER_TEST_NATS_URL" not in os.environ and not _reachable("127.0.0.1", 4222):
        pytest.skip("no NATS at 127.0.0.1:4222 (set QWORKER_TEST_NATS_URL)")
    s = Stream()
    s.create(consumer=False)
    rs_results = names.key("rs")
    procs: list[WorkerProc] = []
    try:
        py = spawn(
            names, redis_url, "pod-p", "--sleep", "0.01", "--record-url", redis_url,
            env={"QWORKER_BROKER_URL": s.url, "QWORKER_QUEUE": s.queue},
        )
        procs.append(py)
        wait_for(lambda: "created durable consumer" in py.err, 20, "the Python worker to create the consumer")
        rs = rust_echo(
            "pod-r", s.url, s.queue, rs_results, QWORKER_ECHO_SLEEP_MS="10", QWORKER_ECHO_RECORD_URL=redis_url
        )
        wait_for(lambda: rust_ready(rs), 20, "the Rust worker to start")
        ids = [f"n-{i:03d}".encode() for i in range(150)]
        s.publish(*ids)
        done = lambda: {**counts(r, names.results), **counts(r, rs_results)}  # noqa: E731
        wait_for(lambda: len(done()) == len(ids) and s.depth() == 0, 40, "all tasks processed and acked")
        py_done, rs_done = counts(r, names.results), counts(r, rs_results)
        assert set(py_done) | set(rs_done) == set(ids)
        assert not set(py_done) & set(rs_done)
        assert all(v == 1 for v in [*py_done.values(), *rs_done.values()])
        assert py_done and rs_done, "both workers should have taken tasks"
        rs.send_signal(signal.SIGTERM)
        code, _, err = finish(rs, 20)
        assert code == 0, err
        wait_for(py.ready, 10, "the Python worker to be ready")
        py.send_signal(signal.SIGTERM)
        code, out, err = finish(py, 20)
        assert code == 0 and "EXIT stopped" in out, err
    finally:
        kill_all(procs)
        s.delete()


def test_nats_rust_grace_expiry_naks_to_python(
    r: redis.Redis, names: Names, redis_url: str, rust_echo: Callable[..., WorkerProc], make_worker: Callable[..., Worker]
) -> None:
    """A Rust worker stopped during a task longer than its grace period NAKs it; the Python
    worker on the same consumer gets it at once."""
    pytest.importorskip("nats")
    from test_nats import Stream, _reachable

    if "QWORKER_TEST_NATS_URL" not in os.environ and not _reachable("127.0.0.1", 4222):
        pytest.skip("no NATS at 127.0.0.1:4222 (set QWORKER_TEST_NATS_URL)")
    s = Stream()
    s.create()
    try:
        s.publish(b"long")
        rs = rust_echo(
            "pod-r", s.url, s.queue, names.key("rs"), QWORKER_ECHO_SLEEP_MS="60000",
            QWORKER_ECHO_RECORD_URL=redis_url, QWORKER_GRACE_PERIOD_SECONDS="0.2",
        )
        wait_for(lambda: s.pending() == (0, 1), 20, "the Rust worker to take the task")
        rs.send_signal(signal.SIGTERM)
        code, _, err = finish(rs, 20)
        assert code == 0 and "requeueing" in err, err
        assert s.depth() == 1  # still counted by the operator
        worker = make_worker(broker_url=s.url, queue=s.queue)
        seen: list[bytes] = []

        @worker.task
        def handle(payload: bytes) -> None:
            seen.append(payload)
            worker.stop()

        # Well within the consumer's 30 s ack wait: only a NAK explains the redelivery.
        assert run_bounded(worker, timeout=10) is ExitReason.STOPPED
        assert seen == [b"long"] and s.depth() == 0
    finally:
        s.delete()
