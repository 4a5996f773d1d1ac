#!/bin/sh
# Writes a greeting into each of the unit's outputs and logs the unit's id.
set -eu
printf '%s\n' "$REGATTA_OUTPUTS" | while IFS= read -r path; do
  [ -n "$path" ] || continue
  mkdir -p "$(dirname "$path")"
  printf '%s from %s: %s\n' "${GREETING:-hello}" "$REGATTA_UNIT_ID" "$REGATTA_TASK" >"$path"
done
mkdir -p out
printf '%s\n' "$REGATTA_UNIT_ID" >>out/greetings.log
