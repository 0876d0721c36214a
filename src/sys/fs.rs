//! File and directory syscalls.
