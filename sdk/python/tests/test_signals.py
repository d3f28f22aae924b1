"""Worker processes and real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from conftest import HERE, Names, wait_for, write_annotations


def spawn(names: Names, redis_url: str, pod: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
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
    return subprocess.Popen(
        [sys.executable, str(HERE / "worker_proc.py"), "--results", names.results, *args],
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 15) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"worker did not exit within {timeout}s\n{err}")
    return proc.returncode, out, err


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


def test_idle_worker_exits_on_sigterm(names: Names, redis_url: str) -> None:
    proc = spawn(names, redis_url, names.pod)
    try:
        time.sleep(1.0)  # start-up, then idle in BLMOVE
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
