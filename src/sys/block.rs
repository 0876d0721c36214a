//! Block-device and filesystem-freeze ioctls: BLKZNAME (zvol → dataset name), FIFREEZE, FITHAW.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `ZFS_MAX_DATASET_NAME_LEN` from OpenZFS `sys/fs/zfs.h`: the buffer BLKZNAME fills.
pub const ZFS_MAX_DATASET_NAME_LEN: usize = 256;

// OpenZFS include/sys/zvol.h: #define BLKZNAME _IOR(0x12, 125, char[ZFS_MAX_DATASET_NAME_LEN])
nix::ioctl_read!(ioctl_blkzname, 0x12, 125, [u8; ZFS_MAX_DATASET_NAME_LEN]);
// linux/fs.h: #define FIFREEZE _IOWR('X', 119, int), #define FITHAW _IOWR('X', 120, int)
nix::ioctl_readwrite!(ioctl_fifreeze, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(ioctl_fithaw, b'X', 120, libc::c_int);

/// The ZFS dataset name behind an open zvol block device (`/dev/zdN`), without udev.
pub fn blkzname(dev: BorrowedFd<'_>) -> io::Result<String> {
    let mut buf = [0u8; ZFS_MAX_DATASET_NAME_LEN];
    // SAFETY: `dev` is an open fd for the call's duration; the kernel writes at most
    // ZFS_MAX_DATASET_NAME_LEN bytes into `buf`, which is exactly that large.
    unsafe { ioctl_blkzname(dev.as_raw_fd(), &mut buf) }.map_err(io::Error::from)?;
    let name = CStr::from_bytes_until_nul(&buf)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "BLKZNAME: name not terminated"))?;
    Ok(name.to_string_lossy().into_owned())
}

/// Freeze the filesystem that `fd` (any file or directory on it) belongs to: writes block and
/// dirty data is flushed, so a block-level snapshot of its device is consistent. Needs
/// CAP_SYS_ADMIN. EBUSY means it is already frozen.
pub fn fifreeze(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: `fd` is open for the call; FIFREEZE ignores its argument, which points at a live int.
    unsafe { ioctl_fifreeze(fd.as_raw_fd(), &mut arg) }.map(drop).map_err(io::Error::from)
}

/// Thaw a filesystem frozen by [`fifreeze`]. EINVAL means it was not frozen.
pub fn fithaw(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: as for `fifreeze`.
    unsafe { ioctl_fithaw(fd.as_raw_fd(), &mut arg) }.map(drop).map_err(io::Error::from)
}
