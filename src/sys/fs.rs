//! File syscalls nix does not wrap: FICLONE.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

// linux/fs.h: #define FICLONE _IOW(0x94, 9, int) — the argument is the source fd, passed by value.
nix::ioctl_write_int!(ioctl_ficlone, 0x94, 9);

/// Make `dst` share all of `src`'s data extents (reflink). Both must be on the same filesystem
/// and the filesystem must support it; EOPNOTSUPP/ENOTTY/EXDEV mean it cannot, EINVAL is about
/// this pair of files (e.g. unaligned size on some filesystems).
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both fds are open for the call's duration; FICLONE reads only its integer argument.
    unsafe { ioctl_ficlone(dst.as_raw_fd(), src.as_raw_fd() as libc::c_ulong) }
        .map(drop)
        .map_err(io::Error::from)
}

/// Try to take an exclusive `flock` on `fd` without waiting. `Ok(false)` means another open
/// file description holds it (a live process owns the file).
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: `fd` is open for the call; flock takes no pointers.
    let rc = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(err)
}

/// Take an exclusive or shared `flock` on `fd`, waiting for it.
pub fn lock(fd: BorrowedFd<'_>, exclusive: bool) -> io::Result<()> {
    let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
    loop {
        // SAFETY: `fd` is open for the call; flock takes no pointers.
        let rc = unsafe { libc::flock(fd.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}
