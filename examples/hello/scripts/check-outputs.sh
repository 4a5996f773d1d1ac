#!/bin/sh
# Gate: fails unless every declared output exists and is not empty.
set -eu
printf '%s\n' "$REGATTA_OUTPUTS" | while IFS= read -r path; do
  [ -n "$path" ] || continue
  if [ ! -s "$path" ]; then
    echo "missing or empty output: $path" >&2
    exit 1
  fi
done
