#!/usr/bin/env bash
# Runs every benchmark with one command and prints the table:
#   manifest-scale: validate and plan 100,000 and 1,000,000-unit manifests;
#   fleet: the broker and Redis ceiling, then throughput, chain (dependency
#   hop), fan-in and a 1,000,000-unit enqueue (watching /healthz and the
#   coordinator lock meanwhile), against the local services.
# Each fleet scenario also writes target/bench/<scenario>.json.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh rabbitmq redis
cargo build --release --bins --locked --quiet
mkdir -p target/bench
{
  echo "== manifest scale"
  target/release/regatta-bench manifest-scale "$@"
  echo
  echo "== fleet (2 workers, coordinator, RabbitMQ and Redis on this machine)"
  target/release/regatta-bench fleet --out-dir target/bench
} 2>&1 | tee target/bench/summary.txt
