#!/usr/bin/env bash
# The real-dockerd suite: the service's flow with Debian's docker.io on every backend.
#
# For each backend (copy on XFS and on ext4, btrfs, images on XFS, btrfs and ext4 here; ZFS
# and zvol in the ZFS guest):
#   1. a dockerd builds a golden data root: an image imported from a busybox-static root
#      filesystem, and a Dockerfile whose layer holds a whiteout (a deleted file), an opaque
#      directory (removed and made again), a hardlink pair and a symlink (no network);
#   2. the stopped data root is imported as the project's golden;
#   3. sessions: one at the cache's place, one at a caller's path (`--at`); a dockerd runs on
#      each (images listed, the app container runs and sees exactly the layer's result, a new
#      image is built in one session);
#   4. that session is promoted, consuming it and dropping `containers` and `network`;
#   5. a new session sees the new image and runs it; the old session does not have it and
#      still runs the old one;
#   6. cleanup of every session, delete of the project, and gc finds nothing.
#
#   tests/dockerd.sh                      the host's loop filesystems (tests/loopfs.sh env)
#   GOLDCLONE_DOCKERD_ROOTS="zfs:/r1 zvol:/r2" tests/dockerd.sh
#                                         the given backend:root pairs (the ZFS guest)
# Env: GOLDCLONE_BIN (default target/release/goldclone), GOLDCLONE_DOCKERD_SCRATCH (where
# the golden's data root is built and the caller's paths go; default beside each root).
# Ends with `dockerd: N passed, N failed`; a backend that could not run counts as failed.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${GOLDCLONE_BIN:-$repo/target/release/goldclone}
passed=0 failed=0
note() { printf '[dockerd] %s\n' "$*" >&2; }
check() { # description, command...
  local what=$1; shift
  if "$@"; then passed=$((passed + 1)); else note "FAILED: $what"; failed=$((failed + 1)); return 1; fi
}

# docker.io's own client, not another one earlier on PATH (this kind has a newer client in
# /usr/local/bin): the suite tests one release, client and daemon together.
[ -x /usr/bin/docker ] && PATH=/usr/bin:$PATH
for c in dockerd docker containerd runc busybox; do
  command -v "$c" >/dev/null || { note "$c not found (.ci/install-deps.sh installs docker.io and busybox-static)"; echo "dockerd: 0 passed, 1 failed"; exit 1; }
done
[ -x "$bin" ] || { note "no goldclone binary at $bin"; echo "dockerd: 0 passed, 1 failed"; exit 1; }

# A dockerd of our own on data root $1, named $2 (socket, exec root, pid file under /run or
# /tmp); no networking, no iptables. Waits until it answers.
run_dir=$(mktemp -d /tmp/gc-dockerd.XXXXXX)
daemons=()
start_dockerd() {
  local data=$1 name=$2 sock="$run_dir/$2.sock"
  dockerd --data-root "$data" --exec-root "$run_dir/$name.exec" --pidfile "$run_dir/$name.pid" \
    -H "unix://$sock" --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
    --storage-driver=overlay2 --containerd-namespace "gc-$name" --containerd-plugins-namespace "gc-$name-p" \
    >"$run_dir/$name.log" 2>&1 &
  daemons+=("$!")
  for _ in $(seq 1 300); do
    DOCKER_HOST="unix://$sock" docker version >/dev/null 2>&1 && return 0
    kill -0 "$!" 2>/dev/null || break
    sleep 0.2
  done
  note "dockerd on $data did not start:"; tail -20 "$run_dir/$name.log" >&2
  return 1
}
stop_dockerd() {
  local name=$1 pid
  pid=$(cat "$run_dir/$name.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then note "dockerd $name did not stop; killing it"; kill -9 "$pid"; fi
  rm -f "$run_dir/$name.pid"
}
dk() { local name=$1; shift; DOCKER_HOST="unix://$run_dir/$name.sock" docker "$@"; }
cleanup_all() {
  for p in "${daemons[@]}"; do kill "$p" 2>/dev/null; done
  sleep 1
  for p in "${daemons[@]}"; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$run_dir"
}
trap cleanup_all EXIT

# The base root filesystem: busybox-static and the applets the checks use.
make_rootfs() {
  local r=$1
  mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/proc" "$r/sys" "$r/dev" "$r/data/dir"
  cp "$(command -v busybox)" "$r/bin/busybox"
  for a in sh ls cat rm mkdir ln echo touch stat test readlink; do ln -sf busybox "$r/bin/$a"; done
  echo one >"$r/data/gone"
  echo old >"$r/data/dir/old"
}

# What a container of the app image must see: the layer's whiteout, opaque directory,
# hardlinks and symlink.
app_check='set -e
test ! -e /data/gone
test "$(ls /data/dir)" = new
test "$(cat /data/dir/new)" = new
test "$(stat -c %h /data/h1)" = 2 && test "$(stat -c %i /data/h1)" = "$(stat -c %i /data/h2)"
test "$(readlink /data/sym)" = h1 && test "$(cat /data/sym)" = h
echo app-ok'

one_backend() { # backend root
  local backend=$1 root=$2 tag scratch golden shown s1 s2 s3 p
  tag="$backend-$$"
  scratch=${GOLDCLONE_DOCKERD_SCRATCH:-$(dirname "$root")}/dockerd-$tag
  rm -rf --one-file-system "$scratch"; mkdir -p "$scratch/ctx" "$scratch/shown" "$scratch/rootfs"
  golden=$scratch/golden-data
  note "== $backend at $root"
  gc() { "$bin" "$@" --root "$root" --backend "$backend"; }

  # 1. the golden data root, built by a real dockerd
  make_rootfs "$scratch/rootfs"
  printf '%s\n' 'FROM gc-base:1' \
    'RUN rm /data/gone && rm -rf /data/dir && mkdir /data/dir && echo new > /data/dir/new && echo h > /data/h1 && ln /data/h1 /data/h2 && ln -s h1 /data/sym' \
    'CMD ["/bin/sh", "-c", "cat /data/dir/new"]' >"$scratch/ctx/Dockerfile"
  mkdir -p "$golden"
  check "$backend: dockerd on the golden's data root" start_dockerd "$golden" "golden-$tag" || return
  check "$backend: import the base image" sh -c "tar -C '$scratch/rootfs' -c . | DOCKER_HOST=unix://$run_dir/golden-$tag.sock docker import - gc-base:1 >/dev/null"
  check "$backend: build the app image (whiteout, opaque dir, hardlinks, symlink)" \
    env DOCKER_BUILDKIT=0 DOCKER_HOST="unix://$run_dir/golden-$tag.sock" docker build -q -t gc-app:1 "$scratch/ctx" >/dev/null
  check "$backend: the app runs on the golden" sh -c "DOCKER_HOST=unix://$run_dir/golden-$tag.sock docker run --rm --network none gc-app:1 sh -c '$app_check' | grep -qx app-ok"
  stop_dockerd "golden-$tag"

  # 2. import
  check "$backend: golden import" sh -c "'$bin' golden import proj '$golden' --root '$root' --backend $backend >/dev/null" || return

  # 3. sessions: s1 at its place, s2 at a caller's path
  s1=$(gc session setup proj s1) || s1=/nonexistent
  check "$backend: setup s1" test -d "$s1/image/overlay2" || return
  shown=$scratch/shown/docker-data-s2/docker
  mkdir -p "$(dirname "$shown")"
  s2=$(gc session setup --at "$shown" proj s2) || s2=/nonexistent
  check "$backend: setup s2 at a caller's path" test "$s2" = "$shown" -a -d "$shown/image/overlay2" || return
  for s in s1 s2; do
    p=$([ $s = s1 ] && echo "$s1" || echo "$s2")
    check "$backend: dockerd on session $s" start_dockerd "$p" "$s-$tag" || return
    check "$backend: $s lists the golden's images" sh -c "DOCKER_HOST=unix://$run_dir/$s-$tag.sock docker images --format '{{.Repository}}:{{.Tag}}' | sort | tr '\n' ' ' | grep -qx 'gc-app:1 gc-base:1 '"
    check "$backend: the app runs in $s and sees its layer exactly" sh -c "DOCKER_HOST=unix://$run_dir/$s-$tag.sock docker run --rm --network none gc-app:1 sh -c '$app_check' | grep -qx app-ok"
  done
  printf '%s\n' 'FROM gc-app:1' 'RUN echo two > /data/two && rm /data/h2' 'CMD ["/bin/cat", "/data/two"]' >"$scratch/ctx/Dockerfile"
  check "$backend: build a new image in s1" \
    env DOCKER_BUILDKIT=0 DOCKER_HOST="unix://$run_dir/s1-$tag.sock" docker build -q -t gc-app:2 "$scratch/ctx" >/dev/null
  check "$backend: a session in use is not promoted" sh -c "! '$bin' session promote proj s1 --root '$root' --backend $backend >/dev/null 2>&1"
  stop_dockerd "s1-$tag"

  # 4. promote s1, consuming it, without its containers and networks
  check "$backend: promote s1 (consume, drop containers and network)" \
    sh -c "'$bin' session promote --consume --drop containers --drop network proj s1 --root '$root' --backend $backend | grep -q 'generation 2'"
  check "$backend: the consumed session is gone" test ! -e "$s1/image"

  # 5. a new session sees the new image; the old one does not
  s3=$(gc session setup proj s3) || s3=/nonexistent
  check "$backend: setup s3 from generation 2" test -d "$s3/image" || return
  check "$backend: dockerd on s3" start_dockerd "$s3" "s3-$tag" || return
  check "$backend: s3 runs the image built in s1" sh -c "DOCKER_HOST=unix://$run_dir/s3-$tag.sock docker run --rm --network none gc-app:2 | grep -qx two"
  check "$backend: s3 has no containers from s1" sh -c "test -z \"\$(DOCKER_HOST=unix://$run_dir/s3-$tag.sock docker ps -aq)\""
  stop_dockerd "s3-$tag"
  check "$backend: the old session s2 has no gc-app:2" sh -c "! DOCKER_HOST=unix://$run_dir/s2-$tag.sock docker image inspect gc-app:2 >/dev/null 2>&1"
  check "$backend: the old session s2 still runs gc-app:1" sh -c "DOCKER_HOST=unix://$run_dir/s2-$tag.sock docker run --rm --network none gc-app:1 | grep -qx new"
  check "$backend: a session in use is not removed" sh -c "! '$bin' session cleanup proj s2 --root '$root' --backend $backend >/dev/null 2>&1"
  stop_dockerd "s2-$tag"

  # 6. cleanup, delete, gc
  check "$backend: cleanup s2 and s3" sh -c "'$bin' session cleanup proj s2 --root '$root' --backend $backend >/dev/null && '$bin' session cleanup proj s3 --root '$root' --backend $backend >/dev/null"
  check "$backend: s2's caller path is gone" test ! -e "$shown"
  check "$backend: delete the project" sh -c "'$bin' golden delete proj --root '$root' --backend $backend >/dev/null"
  check "$backend: gc finds nothing" sh -c "'$bin' gc --root '$root' --backend $backend | grep -qx 'nothing to collect'"
  teardown "$scratch"
}

# Remove a case's scratch directory, never through a mount left in it (a session shown at a
# caller's path, when a step failed before its cleanup).
teardown() {
  local d=$1
  grep -F " $d/" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf --one-file-system "$d"
}

roots=()
if [ -n "${GOLDCLONE_DOCKERD_ROOTS:-}" ]; then
  read -r -a roots <<<"$GOLDCLONE_DOCKERD_ROOTS"
else
  for pair in "copy:${GOLDCLONE_TEST_XFS:-}" "copy:${GOLDCLONE_TEST_EXT4:-}" "btrfs:${GOLDCLONE_TEST_BTRFS:-}" \
    "image:${GOLDCLONE_TEST_XFS:-}" "image:${GOLDCLONE_TEST_BTRFS:-}" "image:${GOLDCLONE_TEST_EXT4:-}"; do
    mnt=${pair#*:}
    if [ -z "$mnt" ]; then note "a loop filesystem is missing (source tests/loopfs.sh's env)"; failed=$((failed + 1)); continue; fi
    r="$mnt/dockerd-root-${pair%%:*}-$$"; rm -rf "$r"; mkdir -p "$r"
    roots+=("${pair%%:*}:$r")
  done
fi
for pair in "${roots[@]}"; do
  one_backend "${pair%%:*}" "${pair#*:}"
  for d in "${GOLDCLONE_DOCKERD_SCRATCH:-$(dirname "${pair#*:}")}/dockerd-${pair%%:*}-$$"; do
    [ -e "$d" ] && teardown "$d"
  done
  [ -n "${GOLDCLONE_DOCKERD_ROOTS:-}" ] || teardown "${pair#*:}"
done
echo "dockerd: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
