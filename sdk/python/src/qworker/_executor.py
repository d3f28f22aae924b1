"""Runs task handlers, sync or async, on one dedicated thread.

The thread that called ``Worker.run`` stays free to watch for signals and to
enforce the shutdown grace period while a handler runs.  Async handlers share
one event loop (created on first use) for the worker's lifetime, so clients
they keep across tasks stay bound to the same loop.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["HandlerThread", "Job"]


class Job:
    __slots__ = ("done", "error", "payload")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.done = threading.Event()
        self.error: BaseException | None = None


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class HandlerThread:
    def __init__(self, func: Callable[[bytes], Any], name: str = "qworker-handler") -> None:
        self._func = func
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def submit(self, payload: bytes) -> Job:
        """Run ``func(payload)`` on the handler thread; ``job.done`` is set when it ends.

        ``func`` decodes the payload itself (JSON mode), so a payload that
        cannot be decoded counts as a failure of that task.
        """
        job = Job(payload)
        self._jobs.put(job)
        return job

    def shutdown(self, wait: float = 0.0) -> None:
        """Ask the thread to stop after the current job; wait up to ``wait`` s."""
        self._jobs.put(None)
        if wait > 0:
            self._thread.join(wait)

    def _main(self) -> None:
        runner: asyncio.Runner | None = None
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                try:
                    result = self._func(job.payload)
                    if inspect.isawaitable(result):
                        if runner is None:
                            runner = asyncio.Runner()
                        runner.run(_await(result))
                except BaseException as exc:  # noqa: BLE001 - every failure gives the task back
                    job.error = exc
                finally:
                    job.done.set()
        finally:
            if runner is not None:
                runner.close()
