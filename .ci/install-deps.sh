#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine (root, package registries only).
# Idempotent: a second run on the same machine only checks. Recipe: ../shared/docs/real-zfs.md.
#   --host-only   loop filesystems, C/Go toolchains, cbindgen; no ZFS guest.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
host_only=0
[ "${1:-}" = "--host-only" ] && host_only=1

log() { printf '[install-deps] %s\n' "$*" >&2; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed'; }

# contrib + backports sources: OpenZFS for the guest, and Go >= 1.21 (the Go package uses
# log/slog; Debian 12's golang-go is 1.19).
if [ ! -f /etc/apt/sources.list.d/zfs.sources ]; then
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  printf '%s\n' 'Types: deb' "URIs: $uri" 'Suites: bookworm bookworm-updates' \
    'Components: contrib' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' '' \
    'Types: deb' "URIs: $uri" 'Suites: bookworm-backports' 'Components: main contrib' \
    'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
    >/etc/apt/sources.list.d/zfs.sources
  apt-get update -qq
fi

# strace: the crash suite kills operations at sampled system calls (strace -e inject);
# util-linux: unshare for the other-mount-namespace holders of the safety suite.
# docker.io and busybox-static: the real-dockerd suite (tests/dockerd.sh) builds its images from
# a busybox root filesystem, without a registry.
host_pkgs=(xfsprogs btrfs-progs e2fsprogs acl attr clang libclang-dev pkg-config golang-go
           python3-matplotlib strace util-linux docker.io busybox-static)
missing=()
for p in "${host_pkgs[@]}"; do have_pkg "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! have_pkg golang-1.22-go; then
  log "apt-get install golang-1.22-go (bookworm-backports)"
  apt-get install -y -qq --no-install-recommends -t bookworm-backports golang-1.22-go >/dev/null
fi

if ! command -v cbindgen >/dev/null 2>&1 || ! cbindgen --version | grep -q '0\.29'; then
  log "cargo install cbindgen"
  cargo install --quiet --locked cbindgen --version '^0.29' >&2
fi

[ "$host_only" = 1 ] && exit 0

kver=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2); print $2; exit}')
[ -n "$kver" ] || { log "cannot tell the guest kernel version"; exit 1; }
guest_pkgs=("linux-image-$kver" "linux-headers-$kver")
missing=()
for p in "${guest_pkgs[@]}"; do have_pkg "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

zfs_pkgs=(zfs-dkms zfsutils-linux libzfslinux-dev)
missing=()
for p in "${zfs_pkgs[@]}"; do have_pkg "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]} (DKMS builds the module for $kver: several minutes)"
  # DKMS also tries the host's running kernel, which has no headers here: that part fails harmlessly,
  # so judge success by the module for the guest kernel below, not by apt's exit code.
  apt-get install -y -qq --no-install-recommends -t bookworm-backports "${missing[@]}" >/dev/null || true
  dpkg --configure -a >/dev/null 2>&1 || true
fi
if ! ls "/lib/modules/$kver/updates/dkms/zfs.ko"* >/dev/null 2>&1; then
  log "no zfs module for $kver; dkms status:"; dkms status >&2 || true; exit 1
fi

qemu_pkgs=(qemu-system-x86 busybox-static)
missing=()
for p in "${qemu_pkgs[@]}"; do have_pkg "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get install -y -qq --no-install-recommends -t bookworm-backports "${missing[@]}" >/dev/null
fi
if ! command -v vng >/dev/null 2>&1; then
  log "pip install virtme-ng"
  pip install -q virtme-ng >&2
fi
echo "$kver" > /var/tmp/goldclone-guest-kernel
log "ready: guest kernel $kver"
