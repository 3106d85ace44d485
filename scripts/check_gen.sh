#!/usr/bin/env bash
# Fails when gen/ is not what `make proto` would produce from proto/ today.
set -euo pipefail
cd "$(dirname "$0")/.."
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
scripts/gen_proto.sh "$TMP/gen"
if ! diff -r -x __pycache__ gen "$TMP/gen" >/dev/null; then
    echo "gen/ is stale: run 'make proto' and commit the result" >&2
    diff -r -q -x __pycache__ gen "$TMP/gen" >&2 || true
    exit 1
fi
echo "gen/ is up to date"
