"""Example QWorker worker on the Python SDK (``qworker``): logs each task.

The Python twin of the Rust SDK's ``qworker-echo``. Configured by the SDK's environment
variables (``QWORKER_BROKER_URL``, ``QWORKER_QUEUE``, ...; the operator sets the pod's own),
plus ``QWORKER_ECHO_SLEEP_MS`` (the time each task takes, default 0) and ``LOG_LEVEL``
(default ``INFO``). Exits 0 when drained, stale or signalled, between tasks.
"""

from __future__ import annotations

import logging
import os
import time

from qworker import Worker


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger("python-worker")
    sleep = int(os.environ.get("QWORKER_ECHO_SLEEP_MS") or "0") / 1000
    worker = Worker()

    @worker.task
    def handle(payload: bytes) -> None:
        if sleep:
            time.sleep(sleep)
        log.info("processed %s", payload[:200].decode("utf-8", "replace"))

    reason = worker.run()
    log.info("exit: %s", reason.name)
    return reason.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
