#!/usr/bin/env bash
# Build a venv (sdk/python/.venv, if missing), install qworker with its dev extra,
# type-check with mypy --strict and run the pytest suite.  Works from any cwd.
# Needs the local Redis at 127.0.0.1:6379 (QWORKER_TEST_REDIS_URL overrides);
# the RabbitMQ and NATS tests use 127.0.0.1:5672 and :4222 and skip, saying why, when absent;
# the NATS auth tests start private nats-server processes (skipped without nats-server), and
# tests/test_interop.py runs the Rust target/debug/qworker-echo (or QWORKER_ECHO_BIN; built
# with cargo when missing, skipped without cargo).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

python="${PYTHON:-python3}"
venv="$here/.venv"

if ! "$venv/bin/python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    "$python" -c 'import sys; assert sys.version_info >= (3, 11), "qworker needs Python >= 3.11"'
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi

"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev]'

echo "== mypy --strict (sdk/python/src/qworker)"
"$venv/bin/python" -m mypy --strict src/qworker

echo "== pytest (sdk/python/tests)"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
