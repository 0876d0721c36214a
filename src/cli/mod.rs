//! Command-line subcommands, as library functions the `goldclone` binary dispatches to.

pub mod zfs;
