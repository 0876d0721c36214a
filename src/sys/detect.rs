//! `statx` with the mount id, for detection and the holder scan (on rustix).

use std::ffi::CStr;
use std::io;
use std::os::fd::BorrowedFd;

use rustix::fs::{AtFlags, StatxFlags, CWD};

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

fn statx_at(
    dirfd: BorrowedFd<'_>,
    path: &CStr,
    flags: AtFlags,
    id: MntId,
) -> io::Result<StatxInfo> {
    let mut mask = StatxFlags::TYPE | StatxFlags::MODE | StatxFlags::INO | StatxFlags::MNT_ID;
    if id == MntId::Unique {
        // rustix has no name for it (Linux 6.8); the kernel ignores bits it does not know.
        mask |= StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE);
    }
    let st = rustix::fs::statx(dirfd, path, flags | AtFlags::STATX_SYNC_AS_STAT, mask)?;
    let unique = st.stx_mask & STATX_MNT_ID_UNIQUE != 0;
    let listed = st.stx_mask & StatxFlags::MNT_ID.bits() != 0;
    Ok(StatxInfo {
        mnt_id: (unique || listed).then_some(st.stx_mnt_id),
        mnt_id_unique: unique,
        ino: st.stx_ino,
        mode: u32::from(st.stx_mode),
        dev_major: st.stx_dev_major,
        dev_minor: st.stx_dev_minor,
    })
}

/// `STATX_MNT_ID_UNIQUE` from linux/stat.h.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// `statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, ...)` with the mount id kind `id`.
pub fn statx(path: &CStr, id: MntId) -> io::Result<StatxInfo> {
    statx_at(CWD, path, AtFlags::SYMLINK_NOFOLLOW, id)
}

/// `statx(AT_FDCWD, path, 0, ...)`: following a symlink at the end of `path`, including the
/// "magic" links of /proc (`/proc/PID/fd/N` leads to the open file, in whatever mount
/// namespace it lives).
pub fn statx_follow(path: &CStr, id: MntId) -> io::Result<StatxInfo> {
    statx_at(CWD, path, AtFlags::empty(), id)
}

/// `statx(fd, "", AT_EMPTY_PATH, ...)`: the same for an open file.
pub fn fstatx(fd: BorrowedFd<'_>, id: MntId) -> io::Result<StatxInfo> {
    statx_at(fd, c"", AtFlags::EMPTY_PATH, id)
}
