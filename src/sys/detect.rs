//! Syscall shims for detection: `statx` with the mount id.

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

/// `statx(AT_FDCWD, path, 0, ...)`: following a symlink at the end of `path`, including the
/// "magic" links of /proc (`/proc/PID/fd/N` leads to the open file, in whatever mount
/// namespace it lives).
pub fn statx_follow(path: &CStr, id: MntId) -> io::Result<StatxInfo> {
    statx_raw(libc::AT_FDCWD, path, 0, id)
}

/// `statx(fd, "", AT_EMPTY_PATH, ...)`: the same for an open file.
pub fn fstatx(fd: BorrowedFd<'_>, id: MntId) -> io::Result<StatxInfo> {
    statx_raw(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH, id)
}
