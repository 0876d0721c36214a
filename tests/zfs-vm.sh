#!/usr/bin/env bash
# Real-ZFS test suite, one command: installs what is missing (.ci/install-deps.sh), checks the
# checked-in bindings against bindgen, builds every test binary on the host, boots one QEMU guest
# (virtme-ng, Debian kernel + OpenZFS by DKMS, see ../shared/docs/real-zfs.md) and there
#   1. runs every non-ZFS test binary of the crate and `goldclone --help` with ZFS absent
#      (module not loaded: no /dev/zfs), the "same binary without ZFS" condition;
#   2. loads the module, creates two file-backed pools, runs the ZFS suite (tests/zfs.rs);
#   3. runs tests/zfs_host.rs again with /dev/zfs present, and once more with libzfs_core made
#      unloadable (the "missing library" condition);
#   4. with BENCH=1, runs the ZFS benchmark on a third pool, copies its CSV/JSON to benches/ and
#      draws benches/zfs-latency.png on the host;
# and prints a closing "N passed, N failed" line.
#
#   tests/zfs-vm.sh            # everything above except the benchmark (about 3 minutes)
#   BENCH=1 tests/zfs-vm.sh    # also the benchmark (about 5 minutes)
#
# Exits non-zero when any test fails, when fewer than MIN_ZFS_TESTS ZFS tests ran, or when the
# guest did not run at all, so CI cannot mistake "skipped" for "passed".
# Env: SKIP_INSTALL=1 (deps already there), VM_TIMEOUT (seconds, default 1500), BENCH_ITERS.
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
cargo build --release --bin goldclone >&2
if [ "${BENCH:-0}" = 1 ]; then cargo build --release --example zfs_bench >&2; fi
# Every test executable of the crate, labelled <kind>-<target> (lib and bin unit tests share a name).
mapfile -t bins < <(cargo test --no-run --message-format=json 2>/dev/null |
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
for b in "${bins[@]}"; do
  case "$b" in
    "test-zfs "*) zfs_bin=${b#test-zfs } ;;
    *) [[ "$b" == "test-zfs_host "* ]] && host_bin=${b#test-zfs_host }
       echo "$b" >>"$results/absent-bins.txt" ;;
  esac
done
[ -x "$zfs_bin" ] && [ -x "$host_bin" ] || { log "test binaries not found: ${bins[*]:-none}"; exit 1; }
goldclone_bin="$repo/target/release/goldclone"
bench_bin="$repo/target/release/examples/zfs_bench"
cat >"$results/guest.sh" <<EOF
#!/bin/bash
# Runs inside the guest as root. Every step logs to $results; the host parses the logs.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export RUST_BACKTRACE=1
cd /tmp
echo "guest kernel \$(uname -r)" >"$results/guest-info.txt"

# 1. ZFS absent: module not loaded, so no /dev/zfs (the libraries are installed and must not be
#    needed). Every other test binary of the crate runs here, plus the release binary.
while read -r label exe; do
  timeout 900 "\$exe" --test-threads=2 >"$results/absent-\$label.log" 2>&1
done <"$results/absent-bins.txt"
"$goldclone_bin" --help >"$results/goldclone-help.log" 2>&1
echo "rc=\$?" >>"$results/goldclone-help.log"

# 2. Load the module and make two small file-backed pools (nothing mounts automatically).
if ! modprobe zfs >"$results/modprobe.log" 2>&1; then echo "modprobe zfs failed" >>"$results/modprobe.log"; exit 1; fi
cat /sys/module/zfs/version >>"$results/guest-info.txt"
truncate -s 1G /tmp/gc-pool-a.img /tmp/gc-pool-b.img
zpool create -f -m none -O canmount=off gcta /tmp/gc-pool-a.img >>"$results/modprobe.log" 2>&1 || exit 1
zpool create -f -m none -O canmount=off gctb /tmp/gc-pool-b.img >>"$results/modprobe.log" 2>&1 || exit 1

# 3. The real-ZFS suite.
GOLDCLONE_TEST_POOL_A=gcta GOLDCLONE_TEST_POOL_B=gctb \
  "$zfs_bin" --include-ignored --test-threads=2 >"$results/zfs.log" 2>&1
# Each test destroys its own tree; anything left is a cleanup bug.
zfs list -H -o name -r -t all gcta gctb | grep -vx -e gcta -e gctb >"$results/leftovers.txt"

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
  truncate -s 2G /tmp/gc-bench.img
  zpool create -f -m none -O canmount=off gcbench /tmp/gc-bench.img >>"$results/modprobe.log" 2>&1
  if "$goldclone_bin" bench zfs --help 2>/dev/null | grep -q -- --pool; then bench=("$goldclone_bin" bench zfs); else bench=("$bench_bin"); fi
  "\${bench[@]}" --pool gcbench --iterations "${BENCH_ITERS:-30}" --concurrency 16 --out-dir "$results" \
    >"$results/bench.log" 2>&1
  echo "rc=\$?" >>"$results/bench.log"
fi
zpool list >>"$results/guest-info.txt" 2>&1
echo done >"$results/guest-done"
EOF

log "booting guest kernel $kver (TCG; takes a few minutes), results in $results"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
vm_rc=0
timeout "${VM_TIMEOUT:-1500}" vng -r "/boot/vmlinuz-$kver" --disable-kvm --memory 2G --cpus 2 \
  --rwdir "$results" --exec "bash $results/guest.sh" >"$results/vng.log" 2>&1 || vm_rc=$?

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
  if [ "$f" -gt 0 ]; then grep -E '^test .* FAILED$|panicked at' "$file" | head -40 >&2 || true; fi
  [ "$name" = test-zfs ] && zfs_ran=$((p + f))
  return 0
}
summarize bindings-fresh "$host_results/bindings.log"
while read -r label _; do
  summarize "no-zfs:$label" "$results/absent-$label.log"
done <"$results/absent-bins.txt"
grep -q '^rc=0' "$results/goldclone-help.log" 2>/dev/null ||
  problems+=("goldclone --help failed without ZFS (see $results/goldclone-help.log)")
summarize test-zfs "$results/zfs.log"
summarize with-zfs:test-zfs_host "$results/host-after-modprobe.log"
summarize no-libzfs_core:test-zfs_host "$results/broken-lib.log"
if [ -s "$results/leftovers.txt" ]; then
  problems+=("datasets left behind by the ZFS tests: $(tr '\n' ' ' <"$results/leftovers.txt")")
fi
[ -f "$results/guest-done" ] || problems+=("guest did not finish (vng exit $vm_rc; see $results/vng.log)")
[ "$zfs_ran" -ge "$MIN_ZFS_TESTS" ] || problems+=("only $zfs_ran ZFS tests ran (need >= $MIN_ZFS_TESTS)")
if [ "${BENCH:-0}" = 1 ]; then
  if grep -q '^rc=0' "$results/bench.log" 2>/dev/null; then
    cp "$results"/zfs-bench.* benches/
    cat "$results/bench.log"
    /usr/bin/python3 benches/plot_zfs.py benches/zfs-bench.csv benches/zfs-latency.png ||
      problems+=("plot failed")
  else
    problems+=("benchmark failed (see $results/bench.log)")
  fi
fi
[ -f "$results/guest-info.txt" ] && sed 's/^/[guest] /' "$results/guest-info.txt" >&2
# Guest timings are only as quiet as the host: TCG runs on the host's cores.
log "host load average before/after the guest run: $load_before / $(cut -d' ' -f1-3 /proc/loadavg)"
for p in "${problems[@]}"; do log "PROBLEM: $p"; done
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ] && [ "${#problems[@]}" -eq 0 ]
