"""A worker process for the multi-process tests (run as a script, configured by env and args).

Each task: RPUSH the payload to --started, HINCRBY --results <payload> 1, sleep
--sleep seconds, then HINCRBY --done <payload> 1.  Exits with the worker's exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

import redis

from qworker import Worker


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--results", required=True)
    p.add_argument("--done", default="")
    p.add_argument("--started", default="")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--grace", type=float, default=None)
    p.add_argument("--async", dest="use_async", action="store_true")
    p.add_argument("--record-url", default="", help="Redis for the records (default: the broker URL)")
    args = p.parse_args()

    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {os.environ.get('POD_NAME', '?')} %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    worker = Worker(poll_interval=0.1, error_backoff=0.05, grace_period=args.grace)
    r = redis.Redis.from_url(args.record_url or os.environ["QWORKER_BROKER_URL"], socket_timeout=10)

    def before(payload: bytes) -> None:
        if args.started:
            r.rpush(args.started, payload)
        r.hincrby(args.results, payload.decode(), 1)

    def after(payload: bytes) -> None:
        if args.done:
            r.hincrby(args.done, payload.decode(), 1)

    if args.use_async:

        @worker.task
        async def handle_async(payload: bytes) -> None:
            before(payload)
            await asyncio.sleep(args.sleep)
            after(payload)

    else:

        @worker.task
        def handle(payload: bytes) -> None:
            before(payload)
            time.sleep(args.sleep)
            after(payload)

    reason = worker.run()
    print(f"EXIT {reason.value}", flush=True)
    return reason.exit_code


if __name__ == "__main__":
    sys.exit(main())
