"""Worker processes and real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import pytest
import redis

from conftest import HERE, Names, wait_for, write_annotations


class WorkerProc(subprocess.Popen[bytes]):
    """A worker subprocess whose output goes to append-only temporary files,
    so that it can be read at any time (readiness) without pipes filling up."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.out_file = tempfile.TemporaryFile(mode="a+b")
        self.err_file = tempfile.TemporaryFile(mode="a+b")
        super().__init__(argv, env=env, stdout=self.out_file, stderr=self.err_file)

    @staticmethod
    def _read(f: IO[bytes]) -> str:
        fd = f.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")

    @property
    def out(self) -> str:
        return self._read(self.out_file)

    @property
    def err(self) -> str:
        return self._read(self.err_file)

    def ready(self) -> bool:
        """run() has installed its signal handlers (it logs this line afterwards)."""
        return "qworker starting" in self.err

    def close_files(self) -> None:
        self.out_file.close()
        self.err_file.close()


def spawn(names: Names, redis_url: str, pod: str, *args: str, env: dict[str, str] | None = None) -> WorkerProc:
    e = dict(os.environ)
    e.update(
        QWORKER_BROKER_URL=redis_url,
        QWORKER_QUEUE=names.queue,
        POD_NAME=pod,
        POD_NAMESPACE="test",
        QWORKER_NAME="test-qworker",
        POD_SPEC_HASH="h1",
        QWORKER_ANNOTATIONS_FILE=str(names.annotations),
        PYTHONUNBUFFERED="1",
    )
    e.update(env or {})
    return WorkerProc(
        [sys.executable, str(HERE / "worker_proc.py"), "--results", names.results, *args], env=e
    )


def finish(proc: WorkerProc, timeout: float = 15) -> tuple[int, str, str]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError(f"worker did not exit within {timeout}s\n{proc.err[-5000:]}")
    out, err = proc.out, proc.err
    proc.close_files()
    return proc.returncode, out, err


def stop_all(procs: Iterable[WorkerProc], timeout: float = 30) -> list[tuple[int, str, str]]:
    """SIGTERM every running worker once it is ready (so the signal meets run()'s handler)."""
    running = [p for p in procs if p.poll() is None]
    wait_for(lambda: all(p.ready() or p.poll() is not None for p in running), timeout, "workers to be ready")
    for p in running:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    return [finish(p, timeout) for p in running]


def kill_all(procs: Iterable[WorkerProc]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_task_finishes_and_acks(
    r: redis.Redis, names: Names, redis_url: str, sig: signal.Signals, mode: str
) -> None:
    r.lpush(names.queue, b"long", b"untouched")
    started, done = names.key("started"), names.key("done")
    extra = ["--async"] if mode == "async" else []
    proc = spawn(names, redis_url, names.pod, "--started", started, "--done", done, "--sleep", "1.5", *extra)
    try:
        wait_for(lambda: r.llen(started) >= 1, 15, "the task to start")
        t0 = time.monotonic()
        proc.send_signal(sig)
        code, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    assert "EXIT stopped" in out, err
    assert time.monotonic() - t0 < 10
    assert r.hget(done, "long") == b"1"  # the handler ran to the end
    assert r.lrange(names.queue, 0, -1) == [b"untouched"]  # no new task taken
    assert r.llen(names.processing) == 0  # acked
    assert "stop requested" in err


def test_sigterm_grace_expiry_gives_task_back(r: redis.Redis, names: Names, redis_url: str) -> None:
    r.lpush(names.queue, b"endless", b"second")
    started, done = names.key("started"), names.key("done")
    proc = spawn(names, redis_url, names.pod, "--started", started, "--done", done, "--sleep", "60", "--grace", "0.5")
    try:
        wait_for(lambda: r.llen(started) >= 1, 15, "the task to start")
        proc.send_signal(signal.SIGTERM)
        code, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    assert "EXIT grace-expired" in out, err
    assert r.hget(done, "endless") is None
    assert r.lrange(names.queue, 0, -1) == [b"second", b"endless"]  # given back, taken next
    assert r.llen(names.processing) == 0


def test_second_signal_gives_task_back_at_once(r: redis.Redis, names: Names, redis_url: str) -> None:
    r.lpush(names.queue, b"endless")
    started = names.key("started")
    proc = spawn(names, redis_url, names.pod, "--started", started, "--sleep", "60", "--grace", "30")
    try:
        wait_for(lambda: r.llen(started) >= 1, 15, "the task to start")
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    assert time.monotonic() - t0 < 5
    assert r.lrange(names.queue, 0, -1) == [b"endless"]
    assert r.llen(names.processing) == 0


def connected(r: redis.Redis, pod: str) -> bool:
    """The worker has connected (its signal handlers are installed by then)."""
    return any(c.get("name") == f"qworker:{pod}" for c in r.client_list())


def test_idle_worker_exits_on_sigterm(r: redis.Redis, names: Names, redis_url: str) -> None:
    proc = spawn(names, redis_url, names.pod)
    try:
        wait_for(lambda: connected(r, names.pod) and proc.ready(), 20, "the worker to connect")
        time.sleep(0.3)  # idle in BLMOVE
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    assert "EXIT stopped" in out
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({"quickube.com/drain": "true"}, "drained"),
        ({"quickube.com/current-pod-spec-hash": "h2"}, "stale-spec-hash"),
    ],
)
def test_drain_and_stale_hash_exit_code_zero(
    r: redis.Redis, names: Names, redis_url: str, tmp_path: Path, annotations: dict[str, str], expected: str
) -> None:
    for i in range(50):
        r.lpush(names.queue, f"t{i}".encode())
    started = names.key("started")
    proc = spawn(names, redis_url, names.pod, "--started", started, "--sleep", "0.05")
    try:
        wait_for(lambda: r.llen(started) >= 3, 15, "some tasks to run")
        write_annotations(names.annotations, annotations)
        code, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err
    assert f"EXIT {expected}" in out, err
    assert r.llen(names.processing) == 0
    processed = r.hlen(names.results)
    assert processed + r.llen(names.queue) == 50  # nothing lost, nothing half-done
    assert 3 <= processed < 50
