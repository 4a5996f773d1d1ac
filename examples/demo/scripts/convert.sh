#!/bin/sh
# Converts each input (a PL/SQL package spec) into a PL/pgSQL-flavoured
# output: the demo's stand-in for a real migration session.
set -eu
in=$(printf '%s\n' "$REGATTA_INPUTS" | head -n 1)
out=$(printf '%s\n' "$REGATTA_OUTPUTS" | head -n 1)
mkdir -p "$(dirname "$out")"
sleep 0.3
{
  echo "-- migrated by regatta session $REGATTA_SESSION_ID (attempt $REGATTA_ATTEMPT)"
  sed -e 's/CREATE OR REPLACE PACKAGE/CREATE SCHEMA/' \
      -e 's/PROCEDURE \([a-z_]*\);/CREATE FUNCTION \1() RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;/' \
      -e 's/FUNCTION \([a-z_]*\) RETURN NUMBER;/CREATE FUNCTION \1() RETURNS bigint LANGUAGE sql AS $$ SELECT 0 $$;/' \
      -e 's/^END .*;$/-- end of schema/' "$in"
} > "$out"
echo "converted $in -> $out"
