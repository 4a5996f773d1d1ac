#!/bin/sh
# Reads the greetings (the unit's inputs) and writes a goodbye that quotes them.
set -eu
mkdir -p out
{
  printf 'goodbye, after:\n'
  printf '%s\n' "$REGATTA_INPUTS" | while IFS= read -r path; do
    if [ -n "$path" ]; then cat "$path"; fi
  done
} >out/goodbye.txt
printf '%s\n' "$REGATTA_UNIT_ID" >>out/greetings.log
