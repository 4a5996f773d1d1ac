#!/usr/bin/env bash
# Runs every check and every test of regatta, the way CI does.
#
# 1. makes sure RabbitMQ, Redis and PostgreSQL answer on localhost
#    (starting or installing them: see scripts/services.sh);
# 2. cargo fmt --check, cargo clippy -D warnings;
# 3. every test of the workspace, including the integration tests against
#    the real services and several worker processes;
# 4. the API fuzzer (scripts/api-fuzz.sh: schemathesis against a live
#    coordinator, from its /openapi.json);
# 5. the chaos suites that restart the shared broker and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh rabbitmq redis postgres iproute2 chromium

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
# Integration tests spawn the release-free debug binaries of regatta and
# regatta-worker; build them first so tests do not race to build them.
cargo build --workspace --bins --locked
cargo test --workspace --locked --no-fail-fast -- --test-threads="${REGATTA_TEST_THREADS:-4}"

echo "== API fuzz (schemathesis against /openapi.json)"
scripts/api-fuzz.sh

echo "== chaos that restarts the shared broker and Redis (alone, after everything else)"
cargo test -p regatta-tests --test chaos_broker --locked -- --ignored --test-threads=1
cargo test -p regatta-tests --test chaos_redis --locked -- --ignored --test-threads=1
# Leave the services as we found them: answering.
scripts/services.sh rabbitmq redis
