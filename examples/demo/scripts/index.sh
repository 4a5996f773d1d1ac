#!/bin/sh
# Writes a checksum index of every merged output.
set -eu
out=$(printf '%s\n' "$REGATTA_OUTPUTS" | head -n 1)
printf '%s\n' "$REGATTA_INPUTS" | while read -r f; do sha256sum "$f"; done > "$out"
cat "$out"
