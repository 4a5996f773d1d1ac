#!/bin/sh
# Repair of the test gate: adds a missing search_path. It knows no rewrite of
# CONNECT BY, so a unit that uses it escalates to review.
set -eu
printf '%s\n' "$REGATTA_OUTPUTS" | while IFS= read -r path; do
  [ -n "$path" ] && [ -f "$path" ] || continue
  if ! grep -q '^SET search_path' "$path"; then
    { echo 'SET search_path TO app;'; cat "$path"; } >"$path.fixed"
    mv "$path.fixed" "$path"
    echo "fix: set search_path in $path"
  fi
done
