#!/usr/bin/env bash
# Loop-mounted test filesystems for the copy tests (tests/copy_fidelity.rs).
#
#   tests/loopfs.sh up       create and mount everything (idempotent), write $DIR/env
#   tests/loopfs.sh down     unmount and delete everything, also after a half-failed `up`
#   tests/loopfs.sh status   show what is mounted; exit 1 unless everything is up
#   tests/loopfs.sh run [cargo test args...]
#                            up, run `cargo test --test copy_fidelity` with the env, down (always)
#
# Needs root and mkfs.xfs / mkfs.btrfs / mkfs.ext4 (.ci/install-deps.sh installs them).
# Layout, under DIR=${GOLDCLONE_LOOP_DIR:-/var/tmp/goldclone-loop}:
#   img/{xfs,btrfs,btrfsq,ext4,small,smallxfs}.img   sparse image files
#   mnt/xfs    XFS, 4 GiB, reflink=1         (FICLONE)
#   mnt/btrfs  btrfs, 4 GiB                  (FICLONE)
#   mnt/btrfsq btrfs, 1 GiB, quotas enabled  (sizes from qgroups)
#   mnt/ext4   ext4, 4 GiB, -i 8192          (copy_file_range, no FICLONE)
#   mnt/tmpfs  tmpfs, size=2G                (no FICLONE; cross-fs copy)
#   mnt/small  ext4, 64 MiB                  (ENOSPC test)
#   mnt/smallxfs XFS, 320 MiB, reflink=1     (ENOSPC under the image backend's images)
#   env        GOLDCLONE_TEST_{XFS,BTRFS,BTRFSQ,EXT4,TMPFS,SMALL,SMALLXFS}=<mount point>, sourceable
set -euo pipefail

DIR=${GOLDCLONE_LOOP_DIR:-/var/tmp/goldclone-loop}
NAMES=(xfs btrfs btrfsq ext4 tmpfs small smallxfs)

log() { printf '[loopfs] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

size_of() {
  case $1 in
    xfs|btrfs) echo 4G ;;
    btrfsq) echo 1G ;;
    ext4) echo 4G ;;
    small) echo 64M ;;
    smallxfs) echo 320M ;;  # mkfs.xfs makes nothing under 300 MB
    tmpfs) echo 2G ;;
  esac
}

fstype_of() {
  case $1 in
    xfs|smallxfs) echo xfs ;;
    btrfs|btrfsq) echo btrfs ;;
    ext4|small) echo ext4 ;;
    tmpfs) echo tmpfs ;;
  esac
}

is_mounted() { findmnt -rn --mountpoint "$1" >/dev/null 2>&1; }

mkfs_one() {
  local name=$1 img=$2
  case $name in
    xfs|smallxfs) mkfs.xfs -q -f -m reflink=1 "$img" ;;
    btrfs|btrfsq) mkfs.btrfs -q -f "$img" >/dev/null ;;
    # one inode per 8 KiB: a 100K-entry benchmark tree and its copy need 200K inodes
    ext4) mkfs.ext4 -q -F -i 8192 -E lazy_itable_init=0,lazy_journal_init=0 "$img" ;;
    # no journal on the small one: more of its 64 MiB is usable and ENOSPC comes predictably
    small) mkfs.ext4 -q -F -O ^has_journal -E lazy_itable_init=0 "$img" ;;
  esac
}

up_one() {
  local name=$1 mnt="$DIR/mnt/$1" img="$DIR/img/$1.img" want
  want=$(fstype_of "$name")
  mkdir -p "$mnt"
  if is_mounted "$mnt"; then
    local have
    have=$(findmnt -rn -o FSTYPE --mountpoint "$mnt")
    [ "$have" = "$want" ] || die "$mnt is mounted as $have, expected $want; run '$0 down' first"
    return 0
  fi
  if [ "$name" = tmpfs ]; then
    mount -t tmpfs -o "size=$(size_of tmpfs),mode=0755" goldclone-test "$mnt"
  else
    mkdir -p "$DIR/img"
    rm -f "$img"
    truncate -s "$(size_of "$name")" "$img"
    mkfs_one "$name" "$img"
    # user_xattr and acl are the defaults on ext4; spell them out so a changed default shows.
    case $want in
      ext4) mount -o loop,user_xattr,acl "$img" "$mnt" ;;
      *) mount -o loop "$img" "$mnt" ;;
    esac
  fi
  if [ "$name" = btrfsq ]; then
    btrfs quota enable "$mnt"
  fi
  chmod 0755 "$mnt"
  log "$name: $(findmnt -rn -o SOURCE,FSTYPE,SIZE --mountpoint "$mnt" 2>/dev/null || df -h "$mnt" | tail -1)"
}

write_env() {
  local tmp="$DIR/env.tmp"
  {
    echo "# written by tests/loopfs.sh up; source it before cargo test"
    for n in "${NAMES[@]}"; do
      printf 'export GOLDCLONE_TEST_%s=%q\n' "${n^^}" "$DIR/mnt/$n"
    done
  } >"$tmp"
  mv "$tmp" "$DIR/env"
}

cmd_up() {
  [ "$(id -u)" = 0 ] || die "must run as root (mount, mkfs)"
  for t in mkfs.xfs mkfs.btrfs btrfs mkfs.ext4 findmnt losetup; do
    command -v "$t" >/dev/null 2>&1 || die "$t not found (run .ci/install-deps.sh)"
  done
  mkdir -p "$DIR/mnt"
  local n
  for n in "${NAMES[@]}"; do
    if ! up_one "$n"; then
      log "bringing up $n failed; cleaning up"
      cmd_down || true
      exit 1
    fi
  done
  write_env
  log "ready: source $DIR/env"
}

cmd_down() {
  local rc=0 n mnt img dev
  rm -f "$DIR/env" "$DIR/env.tmp"
  for n in "${NAMES[@]}"; do
    mnt="$DIR/mnt/$n"
    img="$DIR/img/$n.img"
    if is_mounted "$mnt"; then
      # Trees left by failed tests may hold read-only directories; unmounting does not care.
      if ! umount "$mnt" 2>/dev/null; then
        sleep 1
        umount "$mnt" 2>/dev/null || umount -l "$mnt" || { log "cannot unmount $mnt"; rc=1; }
      fi
    fi
    # A loop device may survive a lazy unmount or a crash between losetup and mount.
    if [ -e "$img" ]; then
      for dev in $(losetup -j "$img" -O NAME -n 2>/dev/null); do
        losetup -d "$dev" 2>/dev/null || true
      done
      rm -f "$img"
    fi
    if [ -d "$mnt" ]; then
      rmdir "$mnt" 2>/dev/null || { log "$mnt not empty after unmount; left in place"; rc=1; }
    fi
  done
  rmdir "$DIR/img" "$DIR/mnt" "$DIR" 2>/dev/null || true
  [ "$rc" = 0 ] && log "down: $DIR cleaned"
  return $rc
}

cmd_status() {
  local ok=0 n mnt
  for n in "${NAMES[@]}"; do
    mnt="$DIR/mnt/$n"
    if is_mounted "$mnt"; then
      printf '%-6s up    %s\n' "$n" "$(findmnt -rn -o FSTYPE,SOURCE,SIZE,USED --mountpoint "$mnt" 2>/dev/null || true)"
    else
      printf '%-6s down\n' "$n"
      ok=1
    fi
  done
  [ -f "$DIR/env" ] && echo "env: $DIR/env" || { echo "env: missing"; ok=1; }
  return $ok
}

cmd_run() {
  local root rc
  root=$(cd "$(dirname "$0")/.." && pwd)
  trap 'cmd_down || true' EXIT
  cmd_up
  # shellcheck disable=SC1091
  . "$DIR/env"
  unset GOLDCLONE_SKIP_LOOPFS
  set +e
  (cd "$root" && cargo test --test copy_fidelity "$@" -- --test-threads=1 2>&1) | tee "$DIR.run.log"
  rc=${PIPESTATUS[0]}
  set -e
  # The tests fail on their own when the mounts are missing; also insist that they actually ran.
  if [ "$rc" = 0 ] && ! grep -Eq 'test result: ok\. [1-9][0-9]* passed' "$DIR.run.log"; then
    log "no loop-filesystem test ran"
    rc=1
  fi
  rm -f "$DIR.run.log"
  return "$rc"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  run) shift; cmd_run "$@" ;;
  *) echo "usage: $0 up|down|status|run [cargo test args]" >&2; exit 2 ;;
esac
