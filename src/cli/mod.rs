//! Subcommands of the `goldclone` binary, one module each.

pub mod bench;
pub mod copy;
pub mod demo;
pub mod detect;
pub mod golden;
pub mod zfs;
