//! mount(2) and umount2(2).

use std::ffi::CStr;
use std::io;

pub use nix::mount::{MntFlags, MsFlags};

/// mount(2) with a filesystem type and a comma-separated option string.
pub fn mount(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: MsFlags,
    data: &CStr,
) -> io::Result<()> {
    nix::mount::mount(Some(source), target, Some(fstype), flags, Some(data))
        .map_err(io::Error::from)
}

/// umount2(2).
pub fn umount2(target: &CStr, flags: MntFlags) -> io::Result<()> {
    nix::mount::umount2(target, flags).map_err(io::Error::from)
}
