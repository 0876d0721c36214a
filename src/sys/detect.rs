//! Syscall shims for detection: `statx` with the mount id, the FICLONE ioctl, and btrfs
//! `BTRFS_IOC_INO_LOOKUP` (the id of the subvolume holding a file).

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

/// What detection needs from `statx(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatxInfo {
    /// The id of the mount holding the file, when the kernel reports it. With
    /// [`MntId::Listed`] it is the first field of `/proc/self/mountinfo` (`STATX_MNT_ID`, Linux
    /// 5.8+; reused after unmount); with [`MntId::Unique`], the 64-bit id never reused during a
    /// boot (`STATX_MNT_ID_UNIQUE`, Linux 6.8+).
    pub mnt_id: Option<u64>,
    /// Whether `mnt_id` is the unique 64-bit id rather than the mountinfo one.
    pub mnt_id_unique: bool,
    /// Inode number.
    pub ino: u64,
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    /// Major number of the device holding the file (`st_dev`).
    pub dev_major: u32,
    /// Minor number of the device holding the file (`st_dev`).
    pub dev_minor: u32,
}

/// Which mount id to ask `statx` for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MntId {
    /// The id `/proc/self/mountinfo` lists.
    Listed,
    /// The unique 64-bit id where the kernel has one (6.8+), else the listed one.
    Unique,
}

fn statx_raw(
    dirfd: libc::c_int,
    path: &CStr,
    flags: libc::c_int,
    id: MntId,
) -> io::Result<StatxInfo> {
    let mut buf = MaybeUninit::<libc::statx>::zeroed();
    let mut mask = libc::STATX_TYPE | libc::STATX_MODE | libc::STATX_INO | libc::STATX_MNT_ID;
    if id == MntId::Unique {
        mask |= libc::STATX_MNT_ID_UNIQUE;
    }
    // SAFETY: `path` is a NUL-terminated string that outlives the call; `dirfd` is AT_FDCWD or
    // an fd the caller keeps open; `buf` is a writable `struct statx` as large as the kernel's.
    let rc = unsafe {
        libc::statx(
            dirfd,
            path.as_ptr(),
            flags | libc::AT_STATX_SYNC_AS_STAT,
            mask,
            buf.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx returned 0 and filled the buffer, which was zeroed before anyway; every field
    // of `struct statx` is a plain integer, for which all-zero is valid.
    let st = unsafe { buf.assume_init() };
    let unique = st.stx_mask & libc::STATX_MNT_ID_UNIQUE != 0;
    let listed = st.stx_mask & libc::STATX_MNT_ID != 0;
    Ok(StatxInfo {
        mnt_id: (unique || listed).then_some(st.stx_mnt_id),
        mnt_id_unique: unique,
        ino: st.stx_ino,
        mode: u32::from(st.stx_mode),
        dev_major: st.stx_dev_major,
        dev_minor: st.stx_dev_minor,
    })
}

/// `statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, ...)` with the mount id kind `id`.
pub fn statx(path: &CStr, id: MntId) -> io::Result<StatxInfo> {
    statx_raw(libc::AT_FDCWD, path, libc::AT_SYMLINK_NOFOLLOW, id)
}

/// `statx(fd, "", AT_EMPTY_PATH, ...)`: the same for an open file.
pub fn fstatx(fd: BorrowedFd<'_>, id: MntId) -> io::Result<StatxInfo> {
    statx_raw(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH, id)
}

/// `ioctl(dst, FICLONE, src)`: make `dst` share all of `src`'s extents. Errors are the kernel's:
/// EOPNOTSUPP/ENOTTY/EINVAL when the filesystem cannot, EXDEV across filesystems.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both fds are open for the call's duration; FICLONE takes the source fd by value and
    // reads or writes no user memory.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
    let mut args = BtrfsInoLookupArgs {
        treeid: 0,
        objectid: BTRFS_FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    // SAFETY: `fd` is open for the call; `args` is a live, correctly laid out
    // btrfs_ioctl_ino_lookup_args that the kernel reads and writes within its 4096 bytes.
    unsafe { ioctl_btrfs_ino_lookup(fd.as_raw_fd(), &mut args) }.map_err(io::Error::from)?;
    Ok(args.treeid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ino_lookup_args_is_4096_bytes() {
        assert_eq!(std::mem::size_of::<BtrfsInoLookupArgs>(), 4096);
    }
}
