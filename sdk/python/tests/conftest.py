"""Shared fixtures: a real Redis at 127.0.0.1:6379 (never a mock), unique key names per test."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from qworker import ExitReason, Worker, processing_list_name

REDIS_URL = os.environ.get("QWORKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HERE = Path(__file__).resolve().parent

# Figures that the multi-process no-loss test reports in the summary.
NO_LOSS_REPORTS: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in NO_LOSS_REPORTS:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"these tests need a real Redis at {redis_url}: {exc}")
    yield client
    client.close()


@dataclass
class Names:
    prefix: str
    queue: str
    pod: str
    results: str
    annotations: Path
    extra: list[str] = field(default_factory=list)

    @property
    def processing(self) -> str:
        return processing_list_name(self.queue, self.pod)

    def key(self, suffix: str) -> str:
        return f"{self.prefix}:{suffix}"


@pytest.fixture
def names(r: redis.Redis, tmp_path: Path) -> Iterator[Names]:
    prefix = f"qwtest:{uuid.uuid4().hex[:12]}"
    n = Names(
        prefix=prefix,
        queue=f"{prefix}:queue",
        pod=f"pod-{uuid.uuid4().hex[:6]}",
        results=f"{prefix}:results",
        annotations=tmp_path / "annotations",
    )
    yield n
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)


def write_annotations(path: Path, values: dict[str, str]) -> None:
    """Write like the kubelet: key="value" (Go %q), then an atomic rename."""
    lines = []
    for k, v in sorted(values.items()):
        quoted = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines.append(f'{k}="{quoted}"\n')
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(path)


def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def make_worker(names: Names, redis_url: str) -> Callable[..., Worker]:
    def make(**kw: Any) -> Worker:
        opts: dict[str, Any] = dict(
            broker_url=redis_url,
            queue=names.queue,
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


def run_bounded(worker: Worker, timeout: float = 20.0) -> ExitReason:
    """Run the worker on a thread and fail (after stopping it) if it outlives ``timeout``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["reason"] = worker.run()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        worker.stop(force=True)
        t.join(10)
        raise AssertionError(f"worker did not return within {timeout}s")
    if "error" in box:
        raise box["error"]
    reason = box["reason"]
    assert isinstance(reason, ExitReason)
    return reason
