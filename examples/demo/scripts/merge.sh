#!/bin/sh
# Concatenates the unit's inputs into its first output.
set -eu
out=$(printf '%s\n' "$REGATTA_OUTPUTS" | head -n 1)
mkdir -p "$(dirname "$out")"
printf '%s\n' "$REGATTA_INPUTS" | while read -r f; do cat "$f"; done > "$out"
echo "merged $(printf '%s\n' "$REGATTA_INPUTS" | wc -l) files into $out"
