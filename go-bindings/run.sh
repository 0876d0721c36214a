#!/usr/bin/env bash
# Go bindings suite: go vet, then `go test -race` with GODEBUG=cgocheck=1, against the static
# library (debug build by default).
#
#   go-bindings/run.sh [go test args...]
#
# Environment:
#   GOLDCLONE_TEST_{XFS,BTRFS,EXT4,TMPFS}  loop mounts (tests/loopfs.sh up; source its env)
#   GOLDCLONE_TEST_ROOT             instead of the loop mounts: a cache root on ZFS (ZFS guest)
#   GOLDCLONE_PROFILE=release       link target/release/libgoldclone.a (the cgo default) instead
#   GOLDCLONE_NO_BUILD=1            do not run cargo (the library is already built)
# Ends with `go: N passed, N failed` (tests and subtests); non-zero exit on failure or if
# nothing ran. Needs no network: standard library only, GOPROXY=off.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
profile=${GOLDCLONE_PROFILE:-debug}

summary() { echo "go: $1 passed, $2 failed"; }

if [ "${GOLDCLONE_NO_BUILD:-0}" != 1 ]; then
  flag=(); [ "$profile" = release ] && flag=(--release)
  (cd "$root" && cargo build --quiet --lib --no-default-features "${flag[@]}") || { echo "cargo build failed" >&2; summary 0 1; exit 1; }
fi
lib="$root/target/$profile/libgoldclone.a"
[ -f "$lib" ] || { echo "$lib missing" >&2; summary 0 1; exit 1; }

# Go >= 1.21 (log/slog): Debian 12's is 1.19, so .ci/install-deps.sh installs golang-1.22-go
# from bookworm-backports; prefer it where it is.
for d in /usr/lib/go-1.22/bin /usr/lib/go-1.23/bin; do [ -x "$d/go" ] && PATH=$d:$PATH; done
export PATH
export GOPROXY=off GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=1
export GOCACHE=${GOCACHE:-/var/tmp/goldclone-go/cache} GOPATH=${GOPATH:-/var/tmp/goldclone-go/path}
# Put the chosen build's directory before the cgo default (target/release).
export CGO_LDFLAGS="-L$root/target/$profile${CGO_LDFLAGS:+ $CGO_LDFLAGS}"
export GODEBUG=cgocheck=1
cd "$here"

log=$(mktemp /tmp/goldclone-go.XXXXXX)
trap 'rm -f "$log"' EXIT
if ! go vet ./... 2>&1 | tee "$log"; then
  echo "go vet failed" >&2; summary 0 1; exit 1
fi
unformatted=$(gofmt -l .)
[ -z "$unformatted" ] || { echo "gofmt: $unformatted" >&2; summary 0 1; exit 1; }

go test -race -count=1 -v "$@" ./... 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
passed=$(grep -cE '^\s*--- PASS' "$log")
failed=$(grep -cE '^\s*--- FAIL' "$log")
if grep -q 'WARNING: DATA RACE' "$log"; then echo "data race reported" >&2; failed=$((failed + 1)); fi
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi  # build failure, panic, timeout
summary "$passed" "$failed"
[ "$rc" = 0 ] && [ "$failed" = 0 ] && [ "$passed" -gt 0 ]
