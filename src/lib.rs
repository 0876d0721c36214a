//! goldclone: an instant, private copy of a large "golden" directory tree for every session.
//!
//! Layers, lowest first; each uses only the ones before it (ARCHITECTURE.md has the map, and
//! `tests/layers.rs` checks it):
//!
//! * [`error`], `sys`, [`fault`] — the error type, the syscall shims, the crash tests' points.
//! * [`detect`] — what backs a path: ZFS dataset, zvol, btrfs, reflink-capable fs, or plain.
//! * [`zfs`] (libzfs_core loaded at run time) and [`copy`] (the exact parallel tree copy).
//! * [`stream`] — the portable send/receive stream: a tree as checksummed records.
//! * [`backend`] — one module per backend: zfs, zvol, btrfs, copy.
//! * [`golden`] — the lifecycle: projects, generations, sessions, gc, crash recovery.
//! * [`ffi`] — the C ABI.
//!
//! `unsafe` is allowed in three places only, and the compiler holds the rest of the crate to it
//! (`deny(unsafe_code)`): `sys` (ioctls no crate wraps), the ZFS bindings and loader, and the C
//! ABI. See ARCHITECTURE.md for the code map and the invariants.

#![deny(unsafe_op_in_unsafe_fn, unsafe_code)]

pub mod backend;
pub mod copy;
pub mod detect;
pub mod error;
pub mod fault;
// The C ABI: raw pointers from C, `#[no_mangle]` exports.
#[allow(unsafe_code)]
pub mod ffi;
pub mod fixture;
pub mod golden;
pub mod stream;
pub mod treediff;
pub mod zfs;

// ioctls no crate wraps (BLKZNAME, FIFREEZE/FITHAW, btrfs subvolumes).
#[allow(unsafe_code)]
pub(crate) mod sys;

pub use error::{Context, Error, ErrorKind, Result};
