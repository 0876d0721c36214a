//! Syscall shims: the calls the crate makes directly rather than through rustix.
//!
//! Most are thin rustix wrappers that fix the errno meanings callers rely on (`fs`, `xattr`,
//! `detect`); `block` and `btrfs` hold the ioctls no crate wraps (BLKZNAME, FIFREEZE/FITHAW,
//! the btrfs subvolume calls), the only `unsafe` here, each with its `// SAFETY:` line.
//!
//! Conventions (after nix's CONVENTIONS.md): one thin function per call, file descriptors as
//! `BorrowedFd`/`OwnedFd`, names as `&CStr`, results as `std::io::Result` carrying the errno;
//! callers add the path when they turn it into a crate [`Error`](crate::Error).

pub mod block;
pub mod btrfs;
pub mod detect;
pub mod fs;
pub mod loopdev;
pub mod signal;
pub mod xattr;

/// A name part nobody else has made in this boot: the process id, the clock in nanoseconds and
/// a process-wide counter, in hex and without dots (`3f2a-1800c2f5e1a3b000-7`). Temporary and
/// staging names end with it.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{:x}-{nanos:x}-{n:x}", std::process::id())
}
