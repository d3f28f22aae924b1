"""The example worker of examples/python-worker (the one its Containerfile runs), as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import redis

from conftest import HERE, Names, wait_for

EXAMPLE = HERE.parents[2] / "examples" / "python-worker" / "worker.py"


def test_example_worker_processes_tasks_and_leaves_on_sigterm(
    r: redis.Redis, names: Names, redis_url: str
) -> None:
    env = dict(os.environ)
    env.update(
        QWORKER_BROKER_URL=redis_url,
        QWORKER_QUEUE=names.queue,
        POD_NAME=names.pod,
        QWORKER_ANNOTATIONS_FILE=str(names.annotations),
        QWORKER_POLL_SECONDS="0.2",
        QWORKER_ECHO_SLEEP_MS="10",
    )
    with tempfile.TemporaryFile(mode="a+b") as log:
        proc = subprocess.Popen([sys.executable, str(EXAMPLE)], env=env, stderr=log)
        try:
            for i in range(3):
                r.lpush(names.queue, f"task-{i}")
            wait_for(
                lambda: r.llen(names.queue) == 0 and r.llen(names.processing) == 0,
                20,
                "the example worker to take and acknowledge 3 tasks",
                interval=0.05,
            )
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        text = log.read().decode("utf-8", "replace")
    for i in range(3):
        assert f"processed task-{i}" in text, text
    assert "exit: STOPPED" in text, text
