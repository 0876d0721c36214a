#!/usr/bin/env bash
# Real-ZFS test suite, one command: installs what is missing (.ci/install-deps.sh), checks the
# checked-in bindings against bindgen, builds every test binary on the host, boots one QEMU guest
# (virtme-ng, Debian kernel + OpenZFS by DKMS, see ../shared/docs/real-zfs.md) and there
#   1. with ZFS absent (module not loaded: no /dev/zfs) runs the copy engine's suite,
#      tests/zfs_host.rs, `goldclone demo` (copies and verifies a tree) and `goldclone --help`:
#      the "same binary without ZFS still copies trees" condition;
#   2. loads the module, creates two file-backed pools, runs the ZFS suite (tests/zfs.rs);
#   3. runs tests/zfs_host.rs again with /dev/zfs present, and once more with libzfs_core made
#      unloadable (the "missing library" condition);
#   3b. runs the lifecycle suites (tests/lifecycle.rs, lifecycle_crash.rs, lifecycle_safety.rs) on the ZFS and
#      zvol backends, each test on a dataset of its own, the C and Go API suites on a ZFS
#      cache root, and the real-dockerd suite (tests/dockerd.sh) on both backends;
#   4. with BENCH=1, runs the ZFS benchmark on a third pool, and the lifecycle and promote
#      benchmarks on the ZFS and zvol backends; copies their output to benches/ and draws
#      benches/zfs-latency.png on the host;
# and prints a closing "N passed, N failed" line.
#
#   tests/zfs-vm.sh            # everything above except the benchmark (about 20 minutes, emulated)
#   BENCH=1 tests/zfs-vm.sh    # also the benchmarks (about 15 minutes more)
#
# Exits non-zero when any test fails, when fewer than MIN_ZFS_TESTS ZFS tests ran, or when the
# guest did not run at all, so CI cannot mistake "skipped" for "passed".
# Env: SKIP_INSTALL=1 (deps already there), VM_TIMEOUT (seconds, default 2400), BENCH_ITERS.
set -euo pipefail

MIN_ZFS_TESTS=30
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
log() { printf '[zfs-vm] %s\n' "$*" >&2; }

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  log "checking dependencies (.ci/install-deps.sh)"
  bash .ci/install-deps.sh
fi
kver=$(cat /var/tmp/goldclone-guest-kernel 2>/dev/null || true)
[ -n "$kver" ] && [ -f "/boot/vmlinuz-$kver" ] || { log "no guest kernel recorded; run .ci/install-deps.sh"; exit 1; }
command -v vng >/dev/null || { log "vng (virtme-ng) not found"; exit 1; }

# --- on the host: the checked-in bindings must equal bindgen's output from wrapper.h ---
log "checking src/zfs/bindings.rs against bindgen (feature buildtime-bindgen)"
host_results=$(mktemp -d /tmp/goldclone-zfs-host.XXXXXX)
cargo test --features buildtime-bindgen --test zfs_bindings_fresh >"$host_results/bindings.log" 2>&1 || true

# --- build on the host: the guest sees the host's files read-only and never compiles ---
log "building all test binaries and the release binary"
# The same profile and features as tests/run-all.sh's host run, so nothing is built twice and
# the binary the crash tests kill has its fault points.
cargo build --release --features fault-injection --bin goldclone >&2
# Every test executable of the crate, labelled <kind>-<target> (lib and bin unit tests share a name).
mapfile -t bins < <(cargo test --release --features fault-injection --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["kind"][0] + "-" + m["target"]["name"] + " " + m["executable"])
')
zfs_bin="" host_bin=""
results=$(mktemp -d /tmp/goldclone-zfs-vm.XXXXXX)
chmod 755 "$results"
lifecycle_bin="" crash_bin="" safety_bin="" logging_bin="" send_bin=""
for b in "${bins[@]}"; do
  case "$b" in
    "test-lifecycle "*) lifecycle_bin=${b#test-lifecycle } ;;
    "test-lifecycle_crash "*) crash_bin=${b#test-lifecycle_crash } ;;
    "test-lifecycle_safety "*) safety_bin=${b#test-lifecycle_safety } ;;
    "test-logging "*) logging_bin=${b#test-logging } ;;
    "test-send_receive "*) send_bin=${b#test-send_receive } ;;
  esac
  case "$b" in
    "test-zfs "*) zfs_bin=${b#test-zfs } ;;
    *) [[ "$b" == "test-zfs_host "* ]] && host_bin=${b#test-zfs_host }
       echo "$b" >>"$results/absent-bins.txt" ;;
  esac
done
[ -x "$zfs_bin" ] && [ -x "$host_bin" ] && [ -x "$lifecycle_bin" ] && [ -x "$crash_bin" ] && [ -x "$safety_bin" ] &&
  [ -x "$logging_bin" ] && [ -x "$send_bin" ] ||
  { log "test binaries not found: ${bins[*]:-none}"; exit 1; }
# The C and Go API suites: the static library and the Go test binary are built here; the guest
# compiles only the small C harnesses.
cargo build --release --no-default-features --features fault-injection --lib >&2
# Without sanitizers and the race detector: under emulation they multiply the suites' time, and
# the host runs both suites with them.
GOLDCLONE_C_SANITIZE=0 GOLDCLONE_C_MODE=build GOLDCLONE_C_DIR="$results/c" GOLDCLONE_NO_BUILD=1 GOLDCLONE_PROFILE=release \
  GOLDCLONE_SKIP_HEADER_CHECK=1 tests/c/run.sh >"$host_results/c-build.log" 2>&1 ||
  { tail -20 "$host_results/c-build.log" >&2; log "building the C harnesses failed"; exit 1; }
# Go >= 1.21 (log/slog), as go-bindings/run.sh picks it.
for d in /usr/lib/go-1.22/bin /usr/lib/go-1.23/bin; do [ -x "$d/go" ] && PATH=$d:$PATH; done
(cd go-bindings && export GOFLAGS=-mod=mod GOCACHE=${GOCACHE:-/var/tmp/goldclone-go/cache} GOPATH=${GOPATH:-/var/tmp/goldclone-go/path} &&
  go test -c -o "$host_results/go-bindings.test" . &&
  go build -o "$host_results/devcache" ./example/devcache) >&2
goldclone_bin="$repo/target/release/goldclone"
cat >"$results/guest.sh" <<EOF
#!/bin/bash
# Runs inside the guest as root. Every step logs to $results; the host parses the logs.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export RUST_BACKTRACE=1
cd /tmp
echo "guest kernel \$(uname -r)" >"$results/guest-info.txt"
# Seconds each step took, printed on the host: the guest is the longest part of CI.
t0=\$(date +%s)
stamp() { local t=\$(date +%s); echo "\$1 \$((t - t0)) s" >>"$results/guest-times.txt"; t0=\$t; }

# 1. ZFS absent: module not loaded, so no /dev/zfs (the libraries are installed and must not be
#    needed). Every other test binary of the crate runs here, plus the release binary.
# What must work without ZFS: the copy engine's suite and the demo (builds a tree, copies it,
# verifies every entry). The other suites need loop mounts, mknod or xattrs that the guest's
# overlaid /tmp and /var lack; they ran on the host in the same run.
while read -r label exe; do
  case "\$label" in test-copy_engine|test-zfs_host) ;; *) continue ;; esac
  timeout 900 "\$exe" --test-threads=2 >"$results/absent-\$label.log" 2>&1
done <"$results/absent-bins.txt"
# The sample tree has overlay whiteouts (0/0 character devices), which the guest's overlaid
# /tmp refuses to create: a tmpfs holds the demo's and the benchmarks' sample trees.
mkdir -p /tmp/gc-scratch && mount -t tmpfs -o size=1g gcscratch /tmp/gc-scratch
export TMPDIR=/tmp/gc-scratch
"$goldclone_bin" demo >"$results/absent-demo.log" 2>&1
echo "rc=\$?" >>"$results/absent-demo.log"
"$goldclone_bin" --help >"$results/goldclone-help.log" 2>&1
echo "rc=\$?" >>"$results/goldclone-help.log"
stamp no-zfs

# 2. Load the module and make two small file-backed pools (nothing mounts automatically).
if ! modprobe zfs >"$results/modprobe.log" 2>&1; then echo "modprobe zfs failed" >>"$results/modprobe.log"; exit 1; fi
cat /sys/module/zfs/version >>"$results/guest-info.txt"
truncate -s 1G /tmp/gc-pool-a.img /tmp/gc-pool-b.img
zpool create -f -m none -O canmount=off gcta /tmp/gc-pool-a.img >>"$results/modprobe.log" 2>&1 || exit 1
zpool create -f -m none -O canmount=off gctb /tmp/gc-pool-b.img >>"$results/modprobe.log" 2>&1 || exit 1

# 3. The real-ZFS suite.
GOLDCLONE_TEST_POOL_A=gcta GOLDCLONE_TEST_POOL_B=gctb \
  "$zfs_bin" --include-ignored --test-threads=2 >"$results/zfs.log" 2>&1
stamp zfs-suite
# Each test destroys its own tree; anything left is a cleanup bug.
zfs list -H -o name -r -t all gcta gctb | grep -vx -e gcta -e gctb >"$results/leftovers.txt"

# 3b. The lifecycle on the ZFS and zvol backends (each test on its own dataset), crash recovery
#     included, the C and Go API suites on a ZFS cache root, and the real-dockerd suite, in two
#     lanes at once (each is mostly one thread; the guest has two CPUs):
#       A. lifecycle, logging, the dockerd suite and Go, on gcta;
#       B. the crash and safety suites, then C, on gctb, in a mount namespace of its own
#          (private). (Split by their measured times, about 1000 s each.) A mount namespace that a test makes copies the mounts it sees, and a copy
#          of the other lane's session would hold that session: each lane sees only its own
#          mounts (lane B unshares before lane A starts anything), and within a lane one suite
#          runs at a time, as everywhere.
lane_b() {
  stamp() { local t=\$(date +%s); echo "\$1 \$((t - t0)) s (lane B)" >>"$results/guest-times.txt"; t0=\$t; }
  t0=\$(date +%s)
  : >"$results/lane-b-ready"
  zfs create -o mountpoint=none gctb/lc >>"$results/modprobe.log" 2>&1
  mkdir -p /tmp/gc-roots-b
  GOLDCLONE_TEST_ZFS_PARENT=gctb/lc GOLDCLONE_TEST_ZFS_MNT=/tmp/gc-roots-b \
    timeout 1500 "$crash_bin" --test-threads=1 >"$results/zfs-lifecycle-crash.log" 2>&1
  stamp lifecycle-crash
  GOLDCLONE_TEST_ZFS_PARENT=gctb/lc GOLDCLONE_TEST_ZFS_MNT=/tmp/gc-roots-b \
    timeout 900 "$safety_bin" --test-threads=1 >"$results/zfs-lifecycle-safety.log" 2>&1
  stamp lifecycle-safety
  zfs create -o mountpoint=legacy gctb/capi >>"$results/modprobe.log" 2>&1
  mkdir -p /tmp/gc-capi && mount -t zfs gctb/capi /tmp/gc-capi
  GOLDCLONE_C_MODE=run GOLDCLONE_C_DIR="$results/c" GOLDCLONE_TEST_ROOT=/tmp/gc-capi \
    timeout 900 "$repo/tests/c/run.sh" >"$results/zfs-c.log" 2>&1
  stamp c-api
}
export -f lane_b
unshare -m --propagation private bash -c lane_b &
lane_b_pid=\$!
for _ in \$(seq 600); do [ -e "$results/lane-b-ready" ] && break; sleep 0.1; done
[ -e "$results/lane-b-ready" ] || echo "lane B did not start within 60 s" >>"$results/lane-problems.txt"

zfs create -o mountpoint=none gcta/lc >>"$results/modprobe.log" 2>&1
mkdir -p /tmp/gc-roots
GOLDCLONE_TEST_ZFS_PARENT=gcta/lc GOLDCLONE_TEST_ZFS_MNT=/tmp/gc-roots \
  timeout 900 "$lifecycle_bin" --test-threads=1 >"$results/zfs-lifecycle.log" 2>&1
stamp lifecycle
GOLDCLONE_TEST_ZFS_PARENT=gcta/lc GOLDCLONE_TEST_ZFS_MNT=/tmp/gc-roots \
  timeout 300 "$logging_bin" --test-threads=1 >"$results/zfs-logging.log" 2>&1
stamp logging
GOLDCLONE_TEST_ZFS_PARENT=gcta/lc GOLDCLONE_TEST_ZFS_MNT=/tmp/gc-roots \
  timeout 600 "$send_bin" --test-threads=1 >"$results/zfs-send-receive.log" 2>&1
stamp send-receive
# The real-dockerd suite on the ZFS and zvol backends: each on a dataset of its own, the
# golden's data root built on a third (the guest's overlaid /tmp cannot hold overlay2).
for b in zfs zvol; do
  zfs create -o mountpoint=legacy gcta/dk-\$b >>"$results/modprobe.log" 2>&1
  mkdir -p /tmp/gc-dk-\$b && mount -t zfs gcta/dk-\$b /tmp/gc-dk-\$b
done
zfs create -o mountpoint=legacy gcta/dk-scratch >>"$results/modprobe.log" 2>&1
mkdir -p /tmp/gc-dk-scratch && mount -t zfs gcta/dk-scratch /tmp/gc-dk-scratch
GOLDCLONE_BIN="$goldclone_bin" GOLDCLONE_DOCKERD_SCRATCH=/tmp/gc-dk-scratch \
  GOLDCLONE_DOCKERD_ROOTS="zfs:/tmp/gc-dk-zfs zvol:/tmp/gc-dk-zvol" \
  timeout 900 bash "$repo/tests/dockerd.sh" >"$results/zfs-dockerd.log" 2>&1
stamp dockerd
zfs create -o mountpoint=legacy gcta/goapi >>"$results/modprobe.log" 2>&1
mkdir -p /tmp/gc-goapi && mount -t zfs gcta/goapi /tmp/gc-goapi
GODEBUG=cgocheck=1 GOLDCLONE_TEST_ROOT=/tmp/gc-goapi GOLDCLONE_EXAMPLE_BIN="$host_results/devcache" \
  timeout 900 "$host_results/go-bindings.test" -test.v >"$results/zfs-go.log" 2>&1
stamp go
wait \$lane_b_pid || echo "lane B exited \$?" >>"$results/lane-problems.txt"
stamp "lane B done, lane A waited"
zfs list -H -o name -r -t all gcta/lc gctb/lc | grep -vx -e gcta/lc -e gctb/lc >"$results/lc-leftovers.txt"

# 4. The host tests again, now with /dev/zfs present (the other branch of the availability test).
"$host_bin" --include-ignored --test-threads=1 >"$results/host-after-modprobe.log" 2>&1

# 4b. /dev/zfs present but libzfs_core unloadable: an empty file bind-mounted over the real one,
#     in a private mount namespace so nothing else in the guest sees it.
lib=\$(readlink -f /lib/x86_64-linux-gnu/libzfs_core.so.3)
: >/tmp/empty-libzfs_core.so
GOLDCLONE_EXPECT_ZFS=unavailable GOLDCLONE_EXPECT_REASON=libzfs_core.so.3 \
  unshare -m sh -c "mount --bind /tmp/empty-libzfs_core.so \$lib && exec '$host_bin' --test-threads=1" \
  >"$results/broken-lib.log" 2>&1

# 5. Benchmark in the same guest, on a fresh pool, if asked.
if [ "${BENCH:-0}" = 1 ]; then
  truncate -s 4G /tmp/gc-bench.img
  zpool create -f -m none -O canmount=off gcbench /tmp/gc-bench.img >>"$results/modprobe.log" 2>&1
  "$goldclone_bin" bench zfs --pool gcbench --iterations "${BENCH_ITERS:-30}" --concurrency 16 --out-dir "$results" \
    >"$results/bench.log" 2>&1
  echo "rc=\$?" >>"$results/bench.log"
  # Coalescing at the lifecycle level: 16 setups at once vs one, ZFS and zvol backends.
  for b in zfs zvol; do
    zfs create -o mountpoint=legacy gcbench/lc-\$b >>"$results/modprobe.log" 2>&1
    mkdir -p /tmp/gc-bench-lc-\$b && mount -t zfs gcbench/lc-\$b /tmp/gc-bench-lc-\$b
    "$goldclone_bin" bench lifecycle --root /tmp/gc-bench-lc-\$b --backend \$b --sessions 16 --rounds 5 \
      >"$results/bench-lifecycle-\$b.log" 2>&1
    echo "rc=\$?" >>"$results/bench-lifecycle-\$b.log"
  done
  # Promote, copying and consuming, against the tree: the cache root a dataset of its own
  # inside another, which holds the bench's sample tree and the cp -a baseline's copy (the
  # guest's overlaid /tmp takes no whiteouts).
  for b in zfs zvol; do
    zfs create -o mountpoint=legacy gcbench/pr-\$b >>"$results/modprobe.log" 2>&1
    mkdir -p /tmp/gc-bench-pr-\$b && mount -t zfs gcbench/pr-\$b /tmp/gc-bench-pr-\$b
    zfs create -o mountpoint=legacy gcbench/pr-\$b/root >>"$results/modprobe.log" 2>&1
    mkdir -p /tmp/gc-bench-pr-\$b/root && mount -t zfs gcbench/pr-\$b/root /tmp/gc-bench-pr-\$b/root
    "$goldclone_bin" bench promote --root /tmp/gc-bench-pr-\$b/root --backend \$b --entries 2000,20000 \
      --rounds 3 >"$results/bench-promote-\$b.log" 2>&1
    echo "rc=\$?" >>"$results/bench-promote-\$b.log"
  done
fi
zpool list >>"$results/guest-info.txt" 2>&1
echo done >"$results/guest-done"
EOF

log "booting guest kernel $kver (TCG; takes a few minutes), results in $results"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
vm_rc=0
# apparmor=0: Debian's kernel enables AppArmor, and dockerd (the dockerd suite) then wants to load
# its docker-default profile with apparmor_parser, which the host does not have.
timeout "${VM_TIMEOUT:-2400}" vng -r "/boot/vmlinuz-$kver" --disable-kvm --memory 4G --cpus 2 \
  --append apparmor=0 --rwdir "$results" --exec "bash $results/guest.sh" >"$results/vng.log" 2>&1 ||
  vm_rc=$?

# --- parse libtest summaries ---
total_pass=0 total_fail=0 zfs_ran=0 problems=()
summarize() {  # name logfile
  local name=$1 file=$2 line p f
  if [ ! -s "$file" ]; then problems+=("$name: no output"); return; fi
  line=$(grep -E '^test result: ' "$file" | tail -1 || true)
  if [ -z "$line" ]; then problems+=("$name: no test summary (crashed?)"); tail -20 "$file" >&2; return; fi
  p=$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$line")
  f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")
  total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
  printf '%-34s %3d passed, %3d failed\n' "$name" "$p" "$f"
  if [ "$f" -gt 0 ]; then grep -E -A3 '^test .* FAILED$|panicked at' "$file" | head -60 >&2 || true; fi
  [ "$name" = test-zfs ] && zfs_ran=$((p + f))
  return 0
}
summarize bindings-fresh "$host_results/bindings.log"
for label in test-copy_engine test-zfs_host; do
  summarize "no-zfs:$label" "$results/absent-$label.log"
done
if grep -q '^rc=0' "$results/absent-demo.log" 2>/dev/null && grep -q '^verification: 0 difference' "$results/absent-demo.log"; then
  total_pass=$((total_pass + 1)); printf '%-34s %3d passed, %3d failed\n' "no-zfs:demo" 1 0
else
  total_fail=$((total_fail + 1)); printf '%-34s %3d passed, %3d failed\n' "no-zfs:demo" 0 1
  tail -20 "$results/absent-demo.log" >&2 || true
fi
grep -q '^rc=0' "$results/goldclone-help.log" 2>/dev/null ||
  problems+=("goldclone --help failed without ZFS (see $results/goldclone-help.log)")
summarize test-zfs "$results/zfs.log"
summarize with-zfs:test-zfs_host "$results/host-after-modprobe.log"
summarize zfs:lifecycle "$results/zfs-lifecycle.log"
summarize zfs:lifecycle_crash "$results/zfs-lifecycle-crash.log"
summarize zfs:lifecycle_safety "$results/zfs-lifecycle-safety.log"
summarize zfs:logging "$results/zfs-logging.log"
summarize zfs:send_receive "$results/zfs-send-receive.log"
# The ZFS-only safety test must have run in the guest, not returned early.
grep -q '^test two_zvol_roots_on_one_parent_share_nothing ... ok' "$results/zfs-lifecycle-safety.log" ||
  problems+=("two_zvol_roots_on_one_parent_share_nothing did not pass in the guest")
if [ -s "$results/lc-leftovers.txt" ]; then
  problems+=("datasets left behind by the lifecycle tests: $(tr '\n' ' ' <"$results/lc-leftovers.txt")")
fi
line=$(grep -E '^c: [0-9]+ passed, [0-9]+ failed' "$results/zfs-c.log" 2>/dev/null | tail -1 || true)
if [ -n "$line" ]; then
  p=$(sed -E 's/^c: ([0-9]+) passed.*/\1/' <<<"$line"); f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")
  total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
  printf '%-34s %3d passed, %3d failed\n' "zfs:c-api" "$p" "$f"
  [ "$f" -eq 0 ] || tail -30 "$results/zfs-c.log" >&2
else
  problems+=("C suite on ZFS printed no result (see $results/zfs-c.log)"); tail -20 "$results/zfs-c.log" >&2 || true
fi
gp=$(grep -c -- '^--- PASS' "$results/zfs-go.log" 2>/dev/null || true)
gf=$(grep -c -- '^--- FAIL' "$results/zfs-go.log" 2>/dev/null || true)
if grep -qx 'PASS' "$results/zfs-go.log" 2>/dev/null || [ "${gf:-0}" -gt 0 ]; then
  total_pass=$((total_pass + ${gp:-0})); total_fail=$((total_fail + ${gf:-0}))
  printf '%-34s %3d passed, %3d failed\n' "zfs:go" "${gp:-0}" "${gf:-0}"
  [ "${gf:-0}" -eq 0 ] || grep -B2 -A20 -- '--- FAIL' "$results/zfs-go.log" | head -60 >&2
else
  problems+=("Go suite on ZFS did not finish (see $results/zfs-go.log)"); tail -20 "$results/zfs-go.log" >&2 || true
fi
line=$(grep -E '^dockerd: [0-9]+ passed, [0-9]+ failed' "$results/zfs-dockerd.log" 2>/dev/null | tail -1 || true)
if [ -n "$line" ]; then
  p=$(sed -E 's/^dockerd: ([0-9]+) passed.*/\1/' <<<"$line"); f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")
  total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
  printf '%-34s %3d passed, %3d failed\n' "zfs:dockerd" "$p" "$f"
  [ "$f" -eq 0 ] || grep -E 'FAILED' "$results/zfs-dockerd.log" | head -30 >&2
  [ "$p" -gt 0 ] || problems+=("the dockerd suite passed nothing on ZFS")
else
  problems+=("dockerd suite on ZFS printed no result (see $results/zfs-dockerd.log)"); tail -20 "$results/zfs-dockerd.log" >&2 || true
fi
summarize no-libzfs_core:test-zfs_host "$results/broken-lib.log"
if [ -s "$results/leftovers.txt" ]; then
  problems+=("datasets left behind by the ZFS tests: $(tr '\n' ' ' <"$results/leftovers.txt")")
fi
if [ -s "$results/lane-problems.txt" ]; then
  problems+=("$(tr '\n' ' ' <"$results/lane-problems.txt")")
fi
[ -f "$results/guest-done" ] || problems+=("guest did not finish (vng exit $vm_rc; see $results/vng.log)")
[ "$zfs_ran" -ge "$MIN_ZFS_TESTS" ] || problems+=("only $zfs_ran ZFS tests ran (need >= $MIN_ZFS_TESTS)")
if [ "${BENCH:-0}" = 1 ]; then
  if grep -q '^rc=0' "$results/bench.log" 2>/dev/null; then
    cp "$results"/zfs-bench.* benches/
    cat "$results/bench.log"
    for b in zfs zvol; do
      echo "== bench lifecycle ($b) =="; cat "$results/bench-lifecycle-$b.log"
      cp "$results/bench-lifecycle-$b.log" "benches/lifecycle-$b.log"
      echo "== bench promote ($b) =="; cat "$results/bench-promote-$b.log"
      cp "$results/bench-promote-$b.log" "benches/promote-$b.log"
    done
    /usr/bin/python3 benches/plot_zfs.py benches/zfs-bench.csv benches/zfs-latency.png ||
      problems+=("plot failed")
  else
    problems+=("benchmark failed (see $results/bench.log)")
  fi
fi
[ -f "$results/guest-info.txt" ] && sed 's/^/[guest] /' "$results/guest-info.txt" >&2
[ -f "$results/guest-times.txt" ] && sed 's/^/[guest time] /' "$results/guest-times.txt" >&2
# Guest timings are only as quiet as the host: TCG runs on the host's cores.
log "host load average before/after the guest run: $load_before / $(cut -d' ' -f1-3 /proc/loadavg)"
for p in "${problems[@]}"; do log "PROBLEM: $p"; done
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ] && [ "${#problems[@]}" -eq 0 ]
