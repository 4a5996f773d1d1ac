#!/bin/sh
# A verification gate: every output must be non-empty and carry the
# migration header.
set -eu
printf '%s\n' "$REGATTA_OUTPUTS" | while read -r f; do
  [ -z "$f" ] && continue
  test -s "$f" || { echo "empty output $f" >&2; exit 1; }
done
