//! Block-device and filesystem ioctls: BLKZNAME (zvol → dataset name), FIFREEZE, FITHAW, and
//! XFS's geometry and growfs.

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

/// `struct xfs_fsop_geom_v1` (xfsprogs libxfs/xfs_fs.h): the fields every XFS reports.
#[repr(C)]
#[derive(Default)]
struct XfsGeometryV1 {
    blocksize: u32,
    rtextsize: u32,
    agblocks: u32,
    agcount: u32,
    logblocks: u32,
    sectsize: u32,
    inodesize: u32,
    imaxpct: u32,
    datablocks: u64,
    rtblocks: u64,
    rtextents: u64,
    logstart: u64,
    uuid: [u8; 16],
    sunit: u32,
    swidth: u32,
    version: i32,
    flags: u32,
    logsectsize: u32,
    rtsectsize: u32,
    dirblocksize: u32,
}

/// `struct xfs_growfs_data`.
#[repr(C)]
struct XfsGrowfsData {
    newblocks: u64,
    imaxpct: u32,
}

// The ioctl numbers below encode these sizes.
const _: () = assert!(std::mem::size_of::<XfsGeometryV1>() == 112);
const _: () = assert!(std::mem::size_of::<XfsGrowfsData>() == 16);

// xfs_fs.h: #define XFS_IOC_FSGEOMETRY_V1 _IOR('X', 100, struct xfs_fsop_geom_v1)
nix::ioctl_read!(ioctl_xfs_geometry_v1, b'X', 100, XfsGeometryV1);
// xfs_fs.h: #define XFS_IOC_FSGROWFSDATA _IOW('X', 110, struct xfs_growfs_data)
nix::ioctl_write_ptr!(ioctl_xfs_growfs_data, b'X', 110, XfsGrowfsData);

/// Grow the XFS that `fd` (its root, or anything on it) belongs to until its data section is
/// `bytes` long (rounded down to its blocks), keeping its inode space limit; its device must
/// be that large already. Returns the size before and after in bytes; unchanged if it is not
/// smaller. Needs CAP_SYS_ADMIN.
pub fn xfs_grow_data(fd: BorrowedFd<'_>, bytes: u64) -> io::Result<(u64, u64)> {
    let mut geo = XfsGeometryV1::default();
    // SAFETY: `fd` is open for the call; the kernel fills exactly one xfs_fsop_geom_v1, which
    // `geo` is (repr(C), the header's layout).
    unsafe { ioctl_xfs_geometry_v1(fd.as_raw_fd(), &mut geo) }.map_err(io::Error::from)?;
    let block = u64::from(geo.blocksize.max(1));
    let before = geo.datablocks * block;
    let newblocks = bytes / block;
    if newblocks <= geo.datablocks {
        return Ok((before, before));
    }
    let arg = XfsGrowfsData { newblocks, imaxpct: geo.imaxpct };
    // SAFETY: `fd` is open for the call; the kernel reads one xfs_growfs_data from `arg`.
    unsafe { ioctl_xfs_growfs_data(fd.as_raw_fd(), &arg) }.map_err(io::Error::from)?;
    Ok((before, newblocks * block))
}

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
