#!/usr/bin/env bash
# C API suite: header drift check, pkg-config file, C harnesses built with
# -Wall -Wextra -Werror under AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   tests/c/run.sh                 build the library (debug), check, build and run every test_*.c
#   tests/c/run.sh test_copy       only the named harness(es)
#
# Environment:
#   GOLDCLONE_TEST_{XFS,BTRFS,EXT4,TMPFS}  loop mounts (tests/loopfs.sh up; source its env)
#   GOLDCLONE_TEST_ROOT             instead of the loop mounts: a cache root on ZFS (ZFS guest)
#   GOLDCLONE_PROFILE=release       link target/release/libgoldclone.a instead of debug
#   GOLDCLONE_NO_BUILD=1            do not run cargo (the library is already built)
#   GOLDCLONE_SKIP_HEADER_CHECK=1   skip the drift check (in the ZFS guest; the host run has it)
#   GOLDCLONE_RUST_ASAN=1           also instrument the Rust library with AddressSanitizer
#                                   (cargo +nightly, -Zsanitizer=address, separate target dir
#                                   /var/tmp/goldclone-asan-target); the default instruments the
#                                   C harnesses only (ASan still intercepts every malloc/free)
#   GOLDCLONE_C_MODE=build|run      build the harnesses into GOLDCLONE_C_DIR and stop, or only run
#                                   the ones built there (the ZFS guest runs what the host built:
#                                   compiling under TCG takes minutes per file)
#   GOLDCLONE_C_SANITIZE=0          build the harnesses without ASan/UBSan (the ZFS guest)
#   CC                              compiler (default gcc)
# Ends with `c: N passed, N failed`; exits non-zero on any failure or if nothing ran.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
profile=${GOLDCLONE_PROFILE:-debug}
CC=${CC:-gcc}
mode=${GOLDCLONE_C_MODE:-both}
if [ "$mode" != both ]; then
  out=${GOLDCLONE_C_DIR:?GOLDCLONE_C_MODE needs GOLDCLONE_C_DIR}
  mkdir -p "$out"
else
  out=$(mktemp -d /tmp/goldclone-c.XXXXXX)
  trap 'rm -rf "$out"' EXIT
fi
passed=0; failed=0

note() { printf '[c] %s\n' "$*" >&2; }
fail_step() { note "FAILED: $*"; failed=$((failed + 1)); }

if [ "$mode" != run ]; then
# 1. header drift
if [ "${GOLDCLONE_SKIP_HEADER_CHECK:-0}" = 1 ]; then
  note "header drift check skipped (GOLDCLONE_SKIP_HEADER_CHECK=1)"
elif "$here/header-check.sh"; then passed=$((passed + 1)); else fail_step "header drift check"; fi

# 2. the static library
flag=(); [ "$profile" = release ] && flag=(--release)
if [ "${GOLDCLONE_RUST_ASAN:-0}" = 1 ]; then
  asan_target=${GOLDCLONE_ASAN_TARGET_DIR:-/var/tmp/goldclone-asan-target}
  note "building the library with -Zsanitizer=address (nightly) in $asan_target"
  CARGO_TARGET_DIR=$asan_target \
  RUSTFLAGS="-Zsanitizer=address -Cunsafe-allow-abi-mismatch=sanitizer -Cforce-frame-pointers=yes" \
    cargo +nightly build --quiet --lib --target x86_64-unknown-linux-gnu "${flag[@]}" \
    || { fail_step "cargo +nightly build (ASan)"; echo "c: $passed passed, $failed failed"; exit 1; }
  lib="$asan_target/x86_64-unknown-linux-gnu/$profile/libgoldclone.a"
else
  if [ "${GOLDCLONE_NO_BUILD:-0}" != 1 ]; then
    # Without the CLI feature: what the service links.
    cargo build --quiet --lib --no-default-features "${flag[@]}" || { fail_step "cargo build"; echo "c: $passed passed, $failed failed"; exit 1; }
  fi
  lib="$root/target/$profile/libgoldclone.a"
fi
[ -f "$lib" ] || { fail_step "$lib missing"; echo "c: $passed passed, $failed failed"; exit 1; }
# The library carries no terminal code: nothing of the CLI's crates.
if nm -C "$lib" 2>/dev/null | grep -qE ' (T|t) (clap|indicatif|console)::'; then
  fail_step "the library links CLI code (clap/indicatif)"
fi

# 3. a pkg-config file for this build tree, made from goldclone.pc.in; libdir holds only the
# static library so -lgoldclone cannot pick the shared one.
mkdir -p "$out/lib" "$out/pkgconfig"
ln -s "$lib" "$out/lib/libgoldclone.a"
version=$(sed -nE 's/^version = "([^"]+)"/\1/p' Cargo.toml | head -1)
sed -e "s|@PREFIX@|$root|" -e "s|@LIBDIR@|$out/lib|" -e "s|@INCLUDEDIR@|$root/include|" \
    -e "s|@VERSION@|$version|" goldclone.pc.in >"$out/pkgconfig/goldclone.pc"
export PKG_CONFIG_PATH="$out/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
if ! pkg-config --exists --print-errors goldclone; then
  fail_step "pkg-config goldclone"; echo "c: $passed passed, $failed failed"; exit 1
fi
read -r -a cflags <<<"$(pkg-config --cflags goldclone)"
read -r -a libs <<<"$(pkg-config --libs --static goldclone)"

# 4. the header compiles on its own as C11, C23-ish gnu2x and C++
for std in c11 gnu2x; do
  if ! echo '#include "goldclone.h"' | $CC -std=$std -Wall -Wextra -Werror -Wpedantic "${cflags[@]}" -x c -c -o /dev/null -; then
    fail_step "header as -std=$std"
  fi
done
# 4b. with <libzfs_core.h> in the same file: the header defines none of libzfs_core's types
if [ -f /usr/include/libzfs/libzfs_core.h ]; then
  printf '#include <libzfs_core.h>\n#include "goldclone.h"\nint f(void) { return GOLDCLONE_RESULT_OK + (int)B_TRUE; }\n' |
    $CC -std=gnu11 -Wall -Wextra -Werror -I/usr/include/libzfs -I/usr/include/libspl "${cflags[@]}" \
      -x c -c -o /dev/null - || fail_step "header beside <libzfs_core.h>"
else
  echo "[c] header beside <libzfs_core.h> NOT checked: libzfslinux-dev is not installed" >&2
  [ "${CI:-}" != true ] || fail_step "header beside <libzfs_core.h> (libzfslinux-dev missing)"
fi
if command -v g++ >/dev/null; then
  echo '#include "goldclone.h"
int main() { return goldclone_abi_version() == GOLDCLONE_ABI_VERSION ? 0 : 1; }' >"$out/cxx.cc"
  g++ -std=c++17 -Wall -Wextra -Werror -fsanitize=address,undefined "${cflags[@]}" "$out/cxx.cc" "${libs[@]}" \
    -o "$out/cxx" && "$out/cxx" || fail_step "header as C++17"
fi
fi

# 5. the harnesses
sanitize=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
# The ZFS guest runs them without sanitizers: under emulation ASan's shadow memory makes every
# process start slow, and the host run has them.
[ "${GOLDCLONE_C_SANITIZE:-1}" = 1 ] || sanitize=()
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  for f in "$here"/test_*.c; do tests+=("$(basename "$f" .c)"); done
fi
for t in "${tests[@]}"; do
  bin="$out/$t"
  if [ "$mode" = run ]; then
    [ -x "$bin" ] || { fail_step "$bin was not built"; continue; }
  else
    note "build $t"
    if ! $CC -std=gnu11 -g -O1 -Wall -Wextra -Werror "${sanitize[@]}" "${cflags[@]}" -I"$here" \
        "$here/$t.c" "$here/harness.c" "${libs[@]}" -lpthread -o "$bin"; then
      fail_step "compile $t"; continue
    fi
    [ "$mode" = build ] && { passed=$((passed + 1)); continue; }
  fi
  note "run $t"
  log="$out/$t.log"
  "$bin" >"$log"
  rc=$?
  cat "$log"
  line=$(grep -E "^$t: [0-9]+ passed, [0-9]+ failed$" "$log" | tail -1)
  if [ -z "$line" ]; then
    fail_step "$t crashed or printed no summary (exit $rc)"; continue
  fi
  p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/'); f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed/\1/')
  passed=$((passed + p)); failed=$((failed + f))
  if [ "$rc" != 0 ] && [ "$f" = 0 ]; then fail_step "$t exited $rc"; fi
done

if [ "$mode" = build ]; then
  echo "c-build: $passed built, $failed failed"
else
  echo "c: $passed passed, $failed failed"
fi
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
