"""In-process worker tests against the real local Redis."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from conftest import REDIS_URL, Names, run_bounded, wait_for, write_annotations
from qworker import (
    BrokerError,
    ConfigError,
    ENV,
    ExitReason,
    HandlerAlreadyRegisteredError,
    NoHandlerError,
    Worker,
)

MakeWorker = Callable[..., Worker]


def push(r: redis.Redis, queue: str, *payloads: bytes) -> None:
    # Producers LPUSH; workers take from the right, so the first pushed is taken first.
    for p in payloads:
        r.lpush(queue, p)


def assert_empty(r: redis.Redis, names: Names) -> None:
    assert r.llen(names.queue) == 0, r.lrange(names.queue, 0, -1)
    assert r.llen(names.processing) == 0, r.lrange(names.processing, 0, -1)


# ----------------------------------------------------------------- registration


def test_decorator_registers_sync_handler_and_returns_it(make_worker: MakeWorker) -> None:
    worker = make_worker()

    def handle(payload: bytes) -> None:
        pass

    assert worker.handler is None
    assert worker.task(handle) is handle
    assert worker.handler is handle


def test_decorator_registers_async_handler(make_worker: MakeWorker) -> None:
    worker = make_worker()

    @worker.task
    async def handle(payload: bytes) -> None:
        pass

    assert worker.handler is handle
    assert asyncio.iscoroutinefunction(handle)


def test_decorator_with_json_option_returns_function(make_worker: MakeWorker) -> None:
    worker = make_worker()

    def handle(obj: Any) -> None:
        pass

    assert worker.task(json=True)(handle) is handle
    assert worker.handler is handle


def test_second_handler_is_a_clear_error(make_worker: MakeWorker) -> None:
    worker = make_worker()

    @worker.task
    def first(payload: bytes) -> None:
        pass

    with pytest.raises(HandlerAlreadyRegisteredError, match="already registered.*first"):

        @worker.task
        def second(payload: bytes) -> None:
            pass

    assert worker.handler is first


def test_run_without_handler_is_a_clear_error(make_worker: MakeWorker) -> None:
    with pytest.raises(NoHandlerError, match="no task handler registered"):
        make_worker().run()


def test_missing_settings_are_a_clear_error() -> None:
    worker = Worker(environ={}, handle_signals=False)
    worker.task(lambda payload: None)
    with pytest.raises(ConfigError, match="QWORKER_BROKER_URL.*QWORKER_QUEUE"):
        worker.run()


def test_unsupported_scheme(make_worker: MakeWorker, redis_url: str) -> None:
    worker = make_worker(broker_url="kafka://localhost:9092")
    worker.task(lambda payload: None)
    with pytest.raises(ConfigError, match="unsupported broker URL scheme"):
        worker.run()
    # The failed start left nothing behind: the same worker runs once fixed.
    worker.broker_url = redis_url
    threading.Timer(0.3, worker.stop).start()
    assert run_bounded(worker) is ExitReason.STOPPED


def test_signal_handlers_installed_on_main_thread_and_restored(
    r: redis.Redis, names: Names, make_worker: MakeWorker
) -> None:
    import signal

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    push(r, names.queue, b"t1")
    worker = make_worker(handle_signals=True)
    during: list[object] = []

    @worker.task
    def handle(payload: bytes) -> None:
        during.append(signal.getsignal(signal.SIGTERM))
        worker.stop()

    assert threading.current_thread() is threading.main_thread()
    assert worker.run() is ExitReason.STOPPED  # bounded: the handler stops it
    assert during and during[0] not in before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert_empty(r, names)


def test_settings_from_environment() -> None:
    env = {
        ENV.BROKER_URL: "redis://:pw@redis:6379/2",
        ENV.QUEUE: "jobs",
        ENV.POD_NAME: "example-qworker-abcde",
        ENV.POD_NAMESPACE: "team-a",
        ENV.WORKER_NAME: "example-qworker",
        ENV.POD_SPEC_HASH: "7c9f1",
        ENV.ANNOTATIONS_FILE: "/tmp/ann",
        ENV.GRACE_PERIOD: "12.5",
    }
    s = Worker(environ=env).settings()
    assert (s.broker_url, s.queue, s.pod_name, s.pod_namespace) == (
        "redis://:pw@redis:6379/2",
        "jobs",
        "example-qworker-abcde",
        "team-a",
    )
    assert (s.worker_name, s.pod_spec_hash, s.annotations_file, s.grace_period) == (
        "example-qworker",
        "7c9f1",
        "/tmp/ann",
        12.5,
    )
    # Explicit arguments win over the environment; defaults apply without either.
    s2 = Worker(environ=env, queue="other", grace_period=3).settings()
    assert (s2.queue, s2.grace_period) == ("other", 3.0)
    s3 = Worker(environ={ENV.BROKER_URL: "redis://x", ENV.QUEUE: "q", ENV.POD_NAME: "p"}).settings()
    assert (s3.annotations_file, s3.grace_period) == ("/etc/qworker/annotations", 25.0)
    with pytest.raises(ConfigError):
        Worker(environ={**env, ENV.GRACE_PERIOD: "soon"}).settings()


# ----------------------------------------------------------------- take / ack


def test_take_and_ack_sync_handler(r: redis.Redis, names: Names, make_worker: MakeWorker) -> None:
    push(r, names.queue, b"t1", b"t2", b"t3")
    worker = make_worker()
    seen: list[bytes] = []
    in_processing: list[list[bytes]] = []

    @worker.task
    def handle(payload: bytes) -> None:
        # While the handler runs, the task sits in this pod's processing list.
        in_processing.append(r.lrange(names.processing, 0, -1))
        seen.append(payload)
        if len(seen) == 3:
            worker.stop()  # like SIGTERM mid-task: this task still completes and is acked

    assert run_bounded(worker) is ExitReason.STOPPED
    assert seen == [b"t1", b"t2", b"t3"]
    assert in_processing == [[b"t1"], [b"t2"], [b"t3"]]
    assert_empty(r, names)


def test_async_handler_shares_one_event_loop(r: redis.Redis, names: Names, make_worker: MakeWorker) -> None:
    push(r, names.queue, b"a", b"b", b"c")
    worker = make_worker()
    seen: list[bytes] = []
    loops: set[int] = set()

    @worker.task
    async def handle(payload: bytes) -> None:
        await asyncio.sleep(0.01)
        loops.add(id(asyncio.get_running_loop()))
        seen.append(payload)
        if len(seen) == 3:
            worker.stop()

    assert run_bounded(worker) is ExitReason.STOPPED
    assert seen == [b"a", b"b", b"c"]
    assert len(loops) == 1
    assert_empty(r, names)


def test_json_mode(r: redis.Redis, names: Names, make_worker: MakeWorker) -> None:
    push(r, names.queue, json.dumps({"n": 1, "s": "é"}).encode(), b"[1, 2]")
    worker = make_worker()
    seen: list[Any] = []

    @worker.task(json=True)
    def handle(obj: Any) -> None:
        seen.append(obj)
        if len(seen) == 2:
            worker.stop()

    assert run_bounded(worker) is ExitReason.STOPPED
    assert seen == [{"n": 1, "s": "é"}, [1, 2]]
    assert_empty(r, names)


def test_undecodable_json_is_given_back_not_dropped(r: redis.Redis, names: Names, make_worker: MakeWorker) -> None:
    push(r, names.queue, b"{not json")
    worker = make_worker()
    calls: list[Any] = []
    worker.task(json=True)(calls.append)

    t = threading.Timer(0.5, worker.stop)
    t.start()
    assert run_bounded(worker) is ExitReason.STOPPED
    t.join()
    assert calls == []
    assert r.lrange(names.queue, 0, -1) == [b"{not json"]
    assert r.llen(names.processing) == 0


def test_handler_error_gives_task_back_and_continues(
    r: redis.Redis, names: Names, make_worker: MakeWorker, caplog: pytest.LogCaptureFixture
) -> None:
    push(r, names.queue, b"t1", b"t2", b"t3")
    worker = make_worker()
    attempts: list[bytes] = []
    queue_after_failure: list[list[bytes]] = []

    @worker.task
    def handle(payload: bytes) -> None:
        attempts.append(payload)
        if payload == b"t2" and attempts.count(b"t2") == 1:
            raise RuntimeError("boom")
        if payload == b"t2":
            queue_after_failure.append(r.lrange(names.queue, 0, -1))
        if payload == b"t3":
            worker.stop()

    with caplog.at_level("ERROR", logger="qworker"):
        assert run_bounded(worker) is ExitReason.STOPPED
    # Given back to the right end of the queue, so it is taken next.
    assert attempts == [b"t1", b"t2", b"t2", b"t3"]
    assert queue_after_failure == [[b"t3"]]
    assert "task handler failed" in caplog.text and "boom" in caplog.text
    assert_empty(r, names)


def test_start_up_returns_own_processing_list_first(r: redis.Redis, names: Names, make_worker: MakeWorker) -> None:
    # A previous life of this container took x1 and x2 and died.
    push(r, names.queue, b"x1", b"x2", b"x3")
    r.lmove(names.queue, names.processing, "RIGHT", "LEFT")
    r.lmove(names.queue, names.processing, "RIGHT", "LEFT")
    assert r.lrange(names.processing, 0, -1) == [b"x2", b"x1"]
    worker = make_worker()
    seen: list[bytes] = []

    @worker.task
    def handle(payload: bytes) -> None:
        seen.append(payload)
        if len(seen) == 3:
            worker.stop()

    assert run_bounded(worker) is ExitReason.STOPPED
    assert seen == [b"x1", b"x2", b"x3"]  # original order kept
    assert_empty(r, names)


def test_other_pods_processing_lists_are_left_alone(r: redis.Redis, names: Names, make_worker: MakeWorker) -> None:
    other = f"{names.queue}:processing:someone-else"
    r.lpush(other, b"theirs")
    worker = make_worker()
    worker.task(lambda payload: None)
    threading.Timer(0.3, worker.stop).start()
    assert run_bounded(worker) is ExitReason.STOPPED
    assert r.lrange(other, 0, -1) == [b"theirs"]
    assert r.llen(names.queue) == 0


# ----------------------------------------------------------------- drain / rollout


def test_drain_annotation_exits_between_tasks(r: redis.Redis, names: Names, make_worker: MakeWorker) -> None:
    push(r, names.queue, b"t1", b"t2", b"t3")
    worker = make_worker()
    seen: list[bytes] = []

    @worker.task
    def handle(payload: bytes) -> None:
        seen.append(payload)
        # The operator asks this pod to drain while it works: the task is finished first.
        write_annotations(names.annotations, {"quickube.com/drain": "true", "other": 'x"y'})
        time.sleep(0.3)

    assert run_bounded(worker) is ExitReason.DRAINED
    assert ExitReason.DRAINED.exit_code == 0
    assert seen == [b"t1"]
    assert r.lrange(names.queue, 0, -1) == [b"t3", b"t2"]  # untouched, in order
    assert r.llen(names.processing) == 0  # t1 acked


def test_drain_before_start_takes_nothing(r: redis.Redis, names: Names, make_worker: MakeWorker) -> None:
    push(r, names.queue, b"t1")
    write_annotations(names.annotations, {"quickube.com/drain": "1"})
    worker = make_worker()
    worker.task(lambda payload: None)
    assert run_bounded(worker) is ExitReason.DRAINED
    assert r.lrange(names.queue, 0, -1) == [b"t1"]


def test_empty_drain_and_matching_hash_keep_working(r: redis.Redis, names: Names, make_worker: MakeWorker) -> None:
    write_annotations(
        names.annotations,
        {"quickube.com/drain": "", "quickube.com/current-pod-spec-hash": "abc123"},
    )
    push(r, names.queue, b"t1", b"t2")
    worker = make_worker(pod_spec_hash="abc123")
    seen: list[bytes] = []

    @worker.task
    def handle(payload: bytes) -> None:
        seen.append(payload)
        if len(seen) == 2:
            worker.stop()

    assert run_bounded(worker) is ExitReason.STOPPED
    assert seen == [b"t1", b"t2"]
    assert_empty(r, names)


def test_stale_spec_hash_exits_between_tasks(r: redis.Redis, names: Names, make_worker: MakeWorker) -> None:
    push(r, names.queue, b"t1", b"t2")
    write_annotations(names.annotations, {"quickube.com/current-pod-spec-hash": "old"})
    worker = make_worker(pod_spec_hash="old")
    seen: list[bytes] = []

    @worker.task
    def handle(payload: bytes) -> None:
        seen.append(payload)
        # A rollout happens while the task runs.
        write_annotations(names.annotations, {"quickube.com/current-pod-spec-hash": "new"})

    assert run_bounded(worker) is ExitReason.STALE_SPEC_HASH
    assert seen == [b"t1"]
    assert r.lrange(names.queue, 0, -1) == [b"t2"]
    assert r.llen(names.processing) == 0


# ----------------------------------------------------------------- stop / grace


def test_stop_grace_expiry_gives_task_back(r: redis.Redis, names: Names, make_worker: MakeWorker) -> None:
    push(r, names.queue, b"slow", b"next")
    worker = make_worker(grace_period=0.3)
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
    t0 = time.monotonic()
    assert run_bounded(worker) is ExitReason.GRACE_EXPIRED
    assert time.monotonic() - t0 < 5
    release.set()
    # Back at the right end: taken next, before "next".
    assert r.lrange(names.queue, 0, -1) == [b"next", b"slow"]
    assert r.llen(names.processing) == 0


def test_stop_when_handler_raises_during_shutdown_gives_back(
    r: redis.Redis, names: Names, make_worker: MakeWorker
) -> None:
    push(r, names.queue, b"t1")
    worker = make_worker()

    @worker.task
    def handle(payload: bytes) -> None:
        worker.stop()
        time.sleep(0.2)
        raise ValueError("fails while stopping")

    assert run_bounded(worker) is ExitReason.STOPPED
    assert r.lrange(names.queue, 0, -1) == [b"t1"]
    assert r.llen(names.processing) == 0


def test_worker_can_run_again_after_stop(r: redis.Redis, names: Names, make_worker: MakeWorker) -> None:
    worker = make_worker()
    seen: list[bytes] = []

    @worker.task
    def handle(payload: bytes) -> None:
        seen.append(payload)
        worker.stop()

    for i in range(2):
        push(r, names.queue, f"t{i}".encode())
        assert run_bounded(worker) is ExitReason.STOPPED
    assert seen == [b"t0", b"t1"]
    assert_empty(r, names)


def test_broker_down_is_retried_until_stopped(names: Names, make_worker: MakeWorker) -> None:
    # Nothing listens on this port: connection errors are transient and retried.
    worker = make_worker(broker_url="redis://127.0.0.1:1/0", error_backoff=0.05, max_error_backoff=0.1)
    worker.task(lambda payload: None)
    threading.Timer(0.8, worker.stop).start()
    assert run_bounded(worker) is ExitReason.STOPPED


def test_permanent_broker_error_ends_run(r: redis.Redis, names: Names, make_worker: MakeWorker) -> None:
    from qworker import BrokerError

    r.set(names.queue, b"not a list")  # BLMOVE answers WRONGTYPE: not worth retrying
    worker = make_worker()
    worker.task(lambda payload: None)
    with pytest.raises(BrokerError, match="WRONGTYPE") as info:
        run_bounded(worker, timeout=10)
    assert not info.value.transient


def test_broker_password_replaces_the_url_password(r: redis.Redis, names: Names, make_worker: MakeWorker) -> None:
    """QWORKER_BROKER_PASSWORD replaces the URL's password.  A throw-away ACL user (limited to
    this test's keys) stands in for a password-protected Redis: the shared test server's
    ``default`` user has no password, and then accepts any."""
    user = f"qwtest-{names.pod}"
    try:
        r.acl_setuser(
            user, enabled=True, passwords=["+s3cr:t/pw"], keys=[f"{names.prefix}:*"],
            commands=["+@all"], reset=True,
        )
    except redis.ResponseError as exc:  # pragma: no cover - old Redis
        pytest.skip(f"cannot create an ACL user: {exc}")
    try:
        host = urlsplit(REDIS_URL).netloc.rpartition("@")[2]
        wrong = f"redis://{user}:WRONG@{host}{urlsplit(REDIS_URL).path}"
        r.lpush(names.queue, b"t1")
        refused = make_worker(broker_url=wrong)
        refused.task(lambda payload: None)
        with pytest.raises(BrokerError) as info:
            run_bounded(refused)
        assert not info.value.transient
        assert r.llen(names.queue) == 1
        worker = make_worker(broker_url=wrong, environ={ENV.BROKER_PASSWORD: "s3cr:t/pw"})
        seen: list[bytes] = []

        @worker.task
        def handle(payload: bytes) -> None:
            seen.append(payload)
            worker.stop()

        assert run_bounded(worker) is ExitReason.STOPPED
        assert seen == [b"t1"]
        assert_empty(r, names)
    finally:
        r.acl_deluser(user)
