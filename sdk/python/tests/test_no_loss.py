"""Multi-process no-loss test: workers are killed, drained, rolled and stopped while
they work through a queue; every task must still be processed at least once."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import redis

from conftest import NO_LOSS_REPORTS, Names, wait_for, write_annotations
from qworker import processing_list_name
from test_signals import WorkerProc, finish, kill_all, spawn, stop_all

N_TASKS = 2000
TASK_SLEEP = "0.01"
DEADLINE = 180.0  # seconds for the whole test


def operator_return(r: redis.Redis, queue: str, pod: str) -> int:
    """What the operator does for a dead pod: move its processing list back to the queue."""
    processing = processing_list_name(queue, pod)
    moved = 0
    for _ in range(10_000):
        if r.lmove(processing, queue, "LEFT", "RIGHT") is None:
            break
        moved += 1
    return moved


def test_no_task_is_lost(r: redis.Redis, names: Names, redis_url: str, tmp_path: Path) -> None:
    t_start = time.monotonic()
    deadline = t_start + DEADLINE
    ids = [f"task-{i:05d}" for i in range(N_TASKS)]
    pipe = r.pipeline(transaction=False)
    for i in range(0, N_TASKS, 500):
        pipe.lpush(names.queue, *ids[i : i + 500])
    pipe.execute()
    assert r.llen(names.queue) == N_TASKS

    procs: dict[str, WorkerProc] = {}
    ann: dict[str, Path] = {}
    seq = iter(range(1000))
    events: list[str] = []
    stats = Counter[str]()

    def start(pod: str | None = None, async_mode: bool = False) -> str:
        pod = pod or f"w{next(seq)}"
        ann[pod] = tmp_path / pod / "annotations"
        ann[pod].parent.mkdir(exist_ok=True)
        extra = ["--async"] if async_mode else []
        procs[pod] = spawn(
            names,
            redis_url,
            pod,
            "--sleep",
            TASK_SLEEP,
            "--grace",
            "10",
            *extra,
            env={"QWORKER_ANNOTATIONS_FILE": str(ann[pod])},
        )
        return pod

    def processed() -> int:
        return int(r.hlen(names.results))

    def at_progress(frac: float) -> None:
        wait_for(lambda: processed() >= frac * N_TASKS, max(1.0, deadline - time.monotonic()), f"{frac:.0%} progress")

    def busy(pod: str) -> bool:
        """Wait (briefly) until the pod is inside a task, so that a kill lands mid-task."""
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            if r.llen(processing_list_name(names.queue, pod)) > 0:
                return True
            time.sleep(0.001)
        return False

    def sigkill(pod: str) -> int:
        mid = busy(pod)
        procs[pod].send_signal(signal.SIGKILL)
        code, _, _ = finish(procs[pod])
        assert code == -signal.SIGKILL
        held = int(r.llen(processing_list_name(names.queue, pod)))
        stats["killed"] += 1
        stats["killed mid-task"] += int(held > 0)
        events.append(f"SIGKILL {pod} (busy={mid}, held {held})")
        return held

    def clean_exit(pod: str, expected: str) -> None:
        code, out, err = finish(procs[pod], timeout=30)
        assert code == 0, err[-3000:]
        assert f"EXIT {expected}" in out, err[-3000:]
        assert r.llen(processing_list_name(names.queue, pod)) == 0
        events.append(f"{pod} exited 0 ({expected})")

    try:
        pods = [start(), start(async_mode=True), start(), start()]
        w0, w1, w2, w3 = pods

        at_progress(0.08)
        sigkill(w0)
        stats["returned by operator"] += operator_return(r, names.queue, w0)
        start()

        at_progress(0.16)
        write_annotations(ann[w1], {"quickube.com/drain": "true"})
        clean_exit(w1, "drained")
        w5 = start(async_mode=True)

        at_progress(0.24)
        held = sigkill(w2)
        # The container restarts under the same pod name and returns its own list first.
        start(w2)
        wait_for(
            lambda: r.llen(processing_list_name(names.queue, w2)) <= 1,
            30,
            "the restarted container to recover its processing list",
        )
        stats["recovered by restart"] += held
        events.append(f"restarted {w2} with the same pod name")

        at_progress(0.32)
        wait_for(procs[w3].ready, 30, "w3 to be ready")
        busy(w3)
        procs[w3].send_signal(signal.SIGTERM)
        clean_exit(w3, "stopped")
        w6 = start()

        at_progress(0.40)
        write_annotations(ann[w6], {"quickube.com/current-pod-spec-hash": "h2"})
        clean_exit(w6, "stale-spec-hash")
        start()

        at_progress(0.50)
        sigkill(w5)
        stats["returned by operator"] += operator_return(r, names.queue, w5)
        w8 = start()

        at_progress(0.60)
        victims = [p for p in list(procs) if procs[p].poll() is None and p != w8][:2]
        for v in victims:
            sigkill(v)
            stats["returned by operator"] += operator_return(r, names.queue, v)
            start()

        # Replacements keep going until the queue and every processing list are empty.
        def all_done() -> bool:
            lists = list(r.scan_iter(match=f"{names.queue}:processing:*", count=1000))
            busy_lists = [k for k in lists if r.llen(k) > 0]
            return r.llen(names.queue) == 0 and not busy_lists and processed() >= N_TASKS

        wait_for(all_done, max(1.0, deadline - time.monotonic()), "queue and processing lists to empty", 0.1)

        running = [pod for pod, proc in procs.items() if proc.poll() is None]
        for code, out, err in stop_all(procs[pod] for pod in running):
            assert code == 0 and "EXIT stopped" in out, err[-3000:]
        for pod in running:
            assert r.llen(processing_list_name(names.queue, pod)) == 0
            events.append(f"{pod} exited 0 (stopped)")
    finally:
        kill_all(procs.values())

    counts = {k.decode(): int(v) for k, v in r.hgetall(names.results).items()}
    missing = sorted(set(ids) - set(counts))
    unknown = sorted(set(counts) - set(ids))
    redelivered = {k: v for k, v in counts.items() if v > 1}
    assert not missing, f"{len(missing)} tasks lost: {missing[:20]}"
    assert not unknown
    assert r.llen(names.queue) == 0
    assert not [k for k in r.scan_iter(match=f"{names.queue}:processing:*") if r.llen(k)]
    assert all(v >= 1 for v in counts.values())

    extra = sum(v - 1 for v in redelivered.values())
    report = (
        f"qworker no-loss: {N_TASKS} tasks, {len(counts)} processed, {len(missing)} missing; "
        f"{len(redelivered)} processed more than once ({extra} extra runs); "
        f"{len(procs)} worker processes, {stats['killed']} SIGKILLed "
        f"({stats['killed mid-task']} held a task), "
        f"{stats['returned by operator']} task(s) returned by the operator step, "
        f"{stats['recovered by restart']} by a restarted container; "
        f"{time.monotonic() - t_start:.1f}s"
    )
    NO_LOSS_REPORTS.append(report)
    NO_LOSS_REPORTS.append("qworker no-loss events: " + "; ".join(events))
    print(report)
    # Only tasks that a killed worker held can run twice.
    assert extra <= stats["killed"]
