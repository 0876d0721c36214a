//! File calls, on rustix: FICLONE, flock and the O_NOATIME open, with the errno meanings the
//! callers rely on.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::{FlockOperation, Mode, OFlags};

/// Make `dst` share all of `src`'s data extents (reflink). Both must be on the same filesystem
/// and the filesystem must support it; EOPNOTSUPP/ENOTTY/EXDEV mean it cannot, EINVAL is about
/// this pair of files (e.g. unaligned size on some filesystems).
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::fs::ioctl_ficlone(dst, src)?)
}

/// Try to take an exclusive `flock` on `fd` without waiting. `Ok(false)` means another open
/// file description holds it (a live process owns the file).
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Take an exclusive or shared `flock` on `fd`, waiting for it.
pub fn lock(fd: BorrowedFd<'_>, exclusive: bool) -> io::Result<()> {
    let op = if exclusive { FlockOperation::LockExclusive } else { FlockOperation::LockShared };
    loop {
        match rustix::fs::flock(fd, op) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return Ok(other?),
        }
    }
}

/// `openat(dir, name, flags | O_NOATIME)`: open for reading without moving the file's atime
/// (a golden tree's atimes are part of what is copied, and sizing or comparing it must not
/// change it). The kernel allows O_NOATIME only to the file's owner or with CAP_FOWNER; where
/// it refuses (EPERM), the open is made without it.
pub fn openat_noatime<P: rustix::path::Arg + Copy>(
    dir: BorrowedFd<'_>,
    name: P,
    flags: OFlags,
) -> io::Result<OwnedFd> {
    match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?),
        other => Ok(other?),
    }
}

/// Flags for a directory that is only read or used as the base of `*at` calls: never through
/// a symlink.
pub const READ_DIR: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);
