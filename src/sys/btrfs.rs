//! btrfs subvolume ioctls: create, snapshot, delete, read-only flag, subvolume id. No `btrfs`
//! binary.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

// linux/btrfs.h
const BTRFS_PATH_NAME_MAX: usize = 4087;
const BTRFS_SUBVOL_NAME_MAX: usize = 4039;
/// `BTRFS_SUBVOL_RDONLY`: the snapshot (or subvolume flag) is read-only.
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2` (the size/qgroup union is 4 u64s; the name union is the name).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; BTRFS_SUBVOL_NAME_MAX + 1],
}

const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);

nix::ioctl_write_ptr!(ioctl_subvol_create, 0x94, 14, VolArgs);
nix::ioctl_write_ptr!(ioctl_snap_destroy, 0x94, 15, VolArgs);
nix::ioctl_write_ptr!(ioctl_snap_create_v2, 0x94, 23, VolArgsV2);
nix::ioctl_read!(ioctl_subvol_getflags, 0x94, 25, u64);
nix::ioctl_write_ptr!(ioctl_subvol_setflags, 0x94, 26, u64);

fn copy_name(dst: &mut [u8], name: &CStr) -> io::Result<()> {
    let bytes = name.to_bytes();
    if bytes.len() >= dst.len() || bytes.is_empty() || bytes.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    dst[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// Create an empty subvolume `name` in the directory `parent`.
pub fn subvol_create(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let mut args = VolArgs { fd: 0, name: [0; BTRFS_PATH_NAME_MAX + 1] };
    copy_name(&mut args.name, name)?;
    // SAFETY: `parent` is open; `args` is a live, fully initialised btrfs_ioctl_vol_args.
    unsafe { ioctl_subvol_create(parent.as_raw_fd(), &args) }.map(drop).map_err(io::Error::from)
}

/// Snapshot the subvolume `source` as `name` in the directory `parent`, read-only if asked.
pub fn snapshot(
    source: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    name: &CStr,
    read_only: bool,
) -> io::Result<()> {
    let mut args = VolArgsV2 {
        fd: source.as_raw_fd() as i64,
        transid: 0,
        flags: if read_only { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; BTRFS_SUBVOL_NAME_MAX + 1],
    };
    copy_name(&mut args.name, name)?;
    // SAFETY: both fds are open; `args` is a live, fully initialised btrfs_ioctl_vol_args_v2.
    unsafe { ioctl_snap_create_v2(parent.as_raw_fd(), &args) }.map(drop).map_err(io::Error::from)
}

/// Delete the subvolume `name` in the directory `parent`, with everything in it.
pub fn subvol_delete(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let mut args = VolArgs { fd: 0, name: [0; BTRFS_PATH_NAME_MAX + 1] };
    copy_name(&mut args.name, name)?;
    // SAFETY: `parent` is open; `args` is a live, fully initialised btrfs_ioctl_vol_args.
    unsafe { ioctl_snap_destroy(parent.as_raw_fd(), &args) }.map(drop).map_err(io::Error::from)
}

/// Make the open subvolume `subvol` read-only (or writable again).
pub fn set_read_only(subvol: BorrowedFd<'_>, read_only: bool) -> io::Result<()> {
    let mut flags: u64 = 0;
    // SAFETY: `subvol` is open; the kernel writes one u64 into `flags`.
    unsafe { ioctl_subvol_getflags(subvol.as_raw_fd(), &mut flags) }.map_err(io::Error::from)?;
    flags = if read_only { flags | BTRFS_SUBVOL_RDONLY } else { flags & !BTRFS_SUBVOL_RDONLY };
    // SAFETY: `subvol` is open; the kernel reads one u64 from `flags`.
    unsafe { ioctl_subvol_setflags(subvol.as_raw_fd(), &flags) }.map(drop).map_err(io::Error::from)
}

/// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every btrfs subvolume's root directory.
pub const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

/// `struct btrfs_ioctl_ino_lookup_args` from linux/btrfs.h (4096 bytes).
#[repr(C)]
pub struct BtrfsInoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

// linux/btrfs.h: #define BTRFS_IOC_INO_LOOKUP _IOWR(BTRFS_IOCTL_MAGIC, 18, struct btrfs_ioctl_ino_lookup_args)
nix::ioctl_readwrite!(ioctl_btrfs_ino_lookup, 0x94, 18, BtrfsInoLookupArgs);

/// The id of the btrfs subvolume holding the open file `fd` (5 for the top-level subvolume).
///
/// Uses `BTRFS_IOC_INO_LOOKUP` with `treeid = 0, objectid = BTRFS_FIRST_FREE_OBJECTID`, the one
/// form of that ioctl the kernel answers without CAP_SYS_ADMIN. ENOTTY on other filesystems.
pub fn btrfs_subvolume_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut args =
        BtrfsInoLookupArgs { treeid: 0, objectid: BTRFS_FIRST_FREE_OBJECTID, name: [0; 4080] };
    // SAFETY: `fd` is open for the call; `args` is a live, correctly laid out
    // btrfs_ioctl_ino_lookup_args that the kernel reads and writes within its 4096 bytes.
    unsafe { ioctl_btrfs_ino_lookup(fd.as_raw_fd(), &mut args) }.map_err(io::Error::from)?;
    Ok(args.treeid)
}

const _: () = assert!(std::mem::size_of::<BtrfsInoLookupArgs>() == 4096);
