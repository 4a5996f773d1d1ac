#!/bin/sh
# Fails on its first attempt, as a real session sometimes does (a lock
# timeout, a flaky network), and succeeds when regatta retries it.
set -eu
if [ "$REGATTA_ATTEMPT" = "1" ]; then
  echo "simulated transient failure on attempt 1" >&2
  exit 1
fi
mkdir -p out
echo "warmed up on attempt $REGATTA_ATTEMPT" > out/warmup.txt
