#!/bin/sh
# Optional gate: flags trailing spaces in the outputs; with --fix, removes them.
set -eu
mode=${1:-check}
printf '%s\n' "$REGATTA_OUTPUTS" | {
  status=0
  while IFS= read -r path; do
    if [ -z "$path" ] || [ ! -f "$path" ]; then continue; fi
    if [ "$mode" = "--fix" ]; then
      sed -i 's/[[:space:]]*$//' "$path"
    elif grep -q '[[:space:]]$' "$path"; then
      echo "lint: trailing spaces in $path" >&2
      status=1
    fi
  done
  exit "$status"
}
