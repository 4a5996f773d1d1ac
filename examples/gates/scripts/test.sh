#!/bin/sh
# Gate: every output sets its schema and has no Oracle-only syntax left.
# Writes what it found to a report in the session's artifact folder.
set -eu
report="$REGATTA_ARTIFACT_DIR/test-report.txt"
printf '%s\n' "$REGATTA_OUTPUTS" | {
  status=0
  while IFS= read -r path; do
    [ -n "$path" ] || continue
    if ! grep -q '^SET search_path' "$path"; then
      echo "FAIL $path: search_path is not set" | tee -a "$report" >&2
      status=1
    fi
    if grep -qi 'CONNECT BY' "$path"; then
      echo "FAIL $path: CONNECT BY has no PostgreSQL equivalent; rewrite it with WITH RECURSIVE" | tee -a "$report" >&2
      status=1
    fi
    [ "$status" -ne 0 ] || echo "PASS $path" >>"$report"
  done
  exit "$status"
}
