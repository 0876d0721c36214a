#!/usr/bin/env bash
# Fails if include/goldclone.h is not what cbindgen generates from the current source (the
# checked-in header drifted from src/ffi/). Prints the diff. Run from anywhere.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
command -v cbindgen >/dev/null || { echo "header-check: cbindgen not found (run .ci/install-deps.sh)" >&2; exit 1; }
tmp=$(mktemp /tmp/goldclone-header.XXXXXX.h)
trap 'rm -f "$tmp"' EXIT
# cbindgen warns about every non-exported item of the crate; only errors matter here.
if ! cbindgen --quiet --config cbindgen.toml --crate goldclone --output "$tmp"; then
  echo "header-check: cbindgen failed" >&2; exit 1
fi
if ! cmp -s "$tmp" include/goldclone.h; then
  echo "header-check: include/goldclone.h is out of date; regenerate with" >&2
  echo "  cbindgen --config cbindgen.toml --crate goldclone --output include/goldclone.h" >&2
  diff -u include/goldclone.h "$tmp" >&2 || true
  exit 1
fi
echo "header-check: include/goldclone.h is up to date"
