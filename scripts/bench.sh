#!/usr/bin/env bash
# Runs every benchmark with one command and prints the table:
#   manifest-scale: validate and plan 100,000 and 1,000,000-unit manifests;
#   fleet: the broker and Redis ceiling, then throughput (with the CPU per
#   unit of each part of the fleet), chain (dependency hop, µs clock),
#   fan-in, enqueues of 100,000 and 1,000,000 units (coordinator memory,
#   /healthz and the lock meanwhile) and scale (1,000 sleeping sessions over
#   10 workers), against the local services;
#   the Celery peer (bench/celery/run.sh) on the same RabbitMQ and Redis;
#   then issue 15's ratios and targets (bench/ratios.py).
# Each fleet scenario writes target/bench/<scenario>.json, the peer
# target/bench/celery.json, the ratios target/bench/ratios.json.
#
# Arguments go to `regatta-bench fleet`, e.g. `scripts/bench.sh --sleep 20s`
# for a quicker scale scenario.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh rabbitmq redis
cargo build --release --locked --quiet --bins \
  -p regatta-bench -p regatta-coordinator -p regatta-worker
mkdir -p target/bench
{
  echo "== $(nproc) cores; load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "== manifest scale"
  target/release/regatta-bench manifest-scale
  echo
  echo "== fleet (coordinator, workers, RabbitMQ and Redis on this machine)"
  target/release/regatta-bench fleet --out-dir target/bench "$@"
  echo
  echo "== Celery peer (same RabbitMQ and Redis)"
  bench/celery/run.sh || echo "the Celery peer failed: its ratios print as nan"
  echo
  echo "== against Celery and issue 15's targets"
  python3 bench/ratios.py target/bench
} 2>&1 | tee target/bench/summary.txt
