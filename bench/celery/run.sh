#!/usr/bin/env bash
# The Celery peer of the fleet benchmarks: the same no-op work on the same
# RabbitMQ and Redis, so that regatta's figures have a yardstick measured in
# the same run (issue 15).
#
# Makes a Python venv with Celery 5.4 and msgpack from PyPI (once, under
# target/celery-venv), then runs bench/celery/peer.py: it starts a Celery
# worker (2 prefork processes, acks_late, publisher confirms, msgpack,
# results in Redis db 9) on a queue of its own and measures in-process and
# subprocess no-op tasks/s and a chain's per-hop latency. Prints one line per
# figure and writes target/bench/celery.json.
#
# Usage: bench/celery/run.sh [--tasks 10000] [--chain 300] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=target/celery-venv
if [ ! -x "$venv/bin/celery" ]; then
  echo "celery peer: creating $venv (Celery 5.4, msgpack, redis)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    'celery[redis,msgpack]>=5.4,<5.5'
fi
mkdir -p target/bench
exec "$venv/bin/python" bench/celery/peer.py --out target/bench/celery.json "$@"
