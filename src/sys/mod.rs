//! Syscall shims. Together with the ZFS bindings and the C ABI, the only place with `unsafe`.
//!
//! Conventions (after nix's CONVENTIONS.md): one thin function per call, file descriptors as
//! `BorrowedFd`/`OwnedFd`, names as `&CStr`, results as `std::io::Result` carrying the errno;
//! callers add the path when they turn it into a crate [`Error`](crate::Error).

pub mod block;
pub mod btrfs;
pub mod detect;
pub mod fs;
pub mod mount;
pub mod xattr;
