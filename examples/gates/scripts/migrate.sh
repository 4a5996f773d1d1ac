#!/bin/sh
# A naive PL/SQL to PL/pgSQL converter: renames types and functions, sets the
# schema (unless FORGET_SEARCH_PATH=1, to show the test gate's repair), and
# leaves the diff it applied in the session's artifact folder.
set -eu
input=$(printf '%s\n' "$REGATTA_INPUTS" | head -n 1)
output=$(printf '%s\n' "$REGATTA_OUTPUTS" | head -n 1)
mkdir -p "$(dirname "$output")"
{
  if [ "${FORGET_SEARCH_PATH:-0}" != 1 ]; then
    echo 'SET search_path TO app;'
  fi
  sed -e 's/VARCHAR2/VARCHAR/g' -e 's/NUMBER/NUMERIC/g' -e 's/SYSDATE/now()/g' "$input"
} >"$output"
diff -u "$input" "$output" >"$REGATTA_ARTIFACT_DIR/translation.diff" || true
echo "converted $input -> $output"
