#!/usr/bin/env bash
# Runs the demo batch on this machine: makes sure RabbitMQ and Redis answer,
# starts a coordinator and three workers, enqueues examples/demo/manifest.yaml
# and follows it with a progress bar until it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh rabbitmq redis
cargo build --bins --quiet

bin=target/debug
run_dir=$(mktemp -d)
export REGATTA_NAMESPACE="demo-$$"
# A fresh secret per run: the binaries refuse anything under 32 bytes.
REGATTA_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export REGATTA_SECRET
export REGATTA_LOG=warn
port=${REGATTA_DEMO_PORT:-7701}
export REGATTA_API="http://127.0.0.1:$port"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

"$bin/regatta" serve --listen "127.0.0.1:$port" >"$run_dir/coordinator.log" 2>&1 &
pids+=($!)
for i in 1 2 3; do
  "$bin/regatta-worker" --slots 2 --name "worker-$i" --work-dir "$run_dir/worker-$i" \
    >"$run_dir/worker-$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 50); do
  curl -fs "$REGATTA_API/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done

rm -rf examples/demo/out
"$bin/regatta" validate examples/demo/manifest.yaml
batch=$("$bin/regatta" enqueue examples/demo/manifest.yaml)
echo "enqueued batch $batch"
status=0
"$bin/regatta" watch "$batch" || status=$?
"$bin/regatta" sessions "$batch"
echo
echo "outputs are in examples/demo/out/; logs of this run in $run_dir"
exit $status
