//! goldclone: an instant, private copy of a large "golden" directory tree for every session.
//!
//! Layers, each one module, each using only the ones above it:
//!
//! * [`detect`] — what backs a path: ZFS dataset, zvol, btrfs, reflink-capable fs, or plain.
//! * backends — [`zfs`] (libzfs_core loaded at run time), [`copy`] (exact parallel tree copy).
//! * [`error`] — one error type with errno and path, and a stable [`ErrorKind`].
//!
//! `sys` holds the syscall shims; it is the only place outside the ZFS bindings and the C ABI
//! where `unsafe` appears. See ARCHITECTURE.md for the code map and the invariants.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod backend;
pub mod copy;
pub mod detect;
pub mod error;
pub mod ffi;
pub mod fixture;
pub mod golden;
pub mod treediff;
pub mod zfs;

pub(crate) mod sys;

pub use error::{Error, ErrorKind, Result};
