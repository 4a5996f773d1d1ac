#!/bin/sh
# Gate: every output exists, is not empty, and ends its statements with ';'.
set -eu
printf '%s\n' "$REGATTA_OUTPUTS" | while IFS= read -r path; do
  [ -n "$path" ] || continue
  if [ ! -s "$path" ] || ! grep -q ';' "$path"; then
    echo "build: $path is missing, empty or not SQL" >&2
    exit 1
  fi
done
