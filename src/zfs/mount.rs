//! Mounting clones without the `zfs` or `mount` binaries.
//!
//! * A ZFS filesystem is mounted with mount(2), fstype `zfs`, source = dataset name. The kernel
//!   module mounts whatever dataset it is given, whatever its `mountpoint` property says (the
//!   "use zfs mount" refusal for non-legacy mountpoints lives in the `mount.zfs` helper, not in
//!   the kernel). The only option we pass is `mntpoint=<dir>`, the hint `mount.zfs` passes too,
//!   which the module uses for `.zfs/snapshot` automounts. For a session clone, create it with
//!   `canmount=noauto` (and a `mountpoint` of the directory, or `legacy`) so that `zfs mount -a`
//!   at boot leaves it alone.
//! * A zvol clone's block device `/dev/zdN` appears asynchronously after `lzc_clone` (the
//!   module creates minors from a taskq). [`zvol_device`] finds it by asking each `zd` device
//!   its dataset name with the BLKZNAME ioctl, so it works without udev's `/dev/zvol/...` links
//!   (used first when present), waiting up to a timeout.
//! * XFS on a cloned zvol has the same UUID as its origin, so it is mounted with `nouuid`.
//! * [`freeze`] / [`Frozen`] wrap FIFREEZE/FITHAW, to snapshot a zvol whose XFS is mounted.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::DatasetName;
use crate::sys::block::{fifreeze, fithaw};
use crate::{Context, Error};
use rustix::mount::{mount, unmount as umount, MountFlags, UnmountFlags};

/// Mount options for [`mount_filesystem`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Mount read-only.
    pub readonly: bool,
    /// Do not update access times.
    pub noatime: bool,
}

/// Mount ZFS filesystem `dataset` on the existing directory `dir`.
pub fn mount_filesystem(
    dataset: &DatasetName,
    dir: &Path,
    opts: MountOptions,
) -> Result<(), Error> {
    let mut flags = MountFlags::empty();
    flags.set(MountFlags::RDONLY, opts.readonly);
    flags.set(MountFlags::NOATIME, opts.noatime);
    // A comma would split the option string; the hint is optional, so drop it rather than fail.
    let data = if dir.as_os_str().as_bytes().contains(&b',') {
        CString::default()
    } else {
        let mut d = b"mntpoint=".to_vec();
        d.extend_from_slice(dir.as_os_str().as_bytes());
        CString::new(d).map_err(|_| Error::from_errno("mount", dir, libc::EINVAL))?
    };
    mount(dataset.as_cstr(), dir, c"zfs", flags, data.as_c_str()).at("mount zfs", dir)
}

/// Unmount whatever is mounted on `dir` (a ZFS clone or a zvol's filesystem). Fails with
/// [`crate::ErrorKind::Busy`] while files on it are open; it is not detached lazily, so that a
/// destroy right after succeeds.
pub fn unmount(dir: &Path) -> Result<(), Error> {
    unmount_waiting_out_forks(dir, UnmountFlags::empty()).at("umount", dir)
}

/// umount(2), with EBUSY retried for up to five seconds. Callers unmount only what they have
/// found unused; a moment's EBUSY then is a process forked just now (any thread's `Command`
/// spawn in the caller's process) that holds a copy of a descriptor beneath the mount until
/// it execs. Still busy after that, it is busy: the error is returned. (Two seconds were too
/// few once in the emulated ZFS guest under load, where forks and execs are slow: a zvol crash
/// case's staging unmount failed EBUSY.)
pub fn unmount_waiting_out_forks(dir: &Path, flags: UnmountFlags) -> rustix::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match umount(dir, flags) {
            Err(rustix::io::Errno::BUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Detach whatever is mounted on `dir` lazily (`MNT_DETACH`): it is gone from every path at
/// once, and the filesystem stays alive for those still using it until the last one lets go.
/// A dataset detached so cannot be destroyed before then (EBUSY).
pub fn detach_lazily(dir: &Path) -> Result<(), Error> {
    umount(dir, UnmountFlags::DETACH).at("umount -l", dir)
}

/// Mount the XFS filesystem on block device `dev` at `dir`, with `discard` (freed blocks are
/// trimmed, so a sparse zvol gives them back to its pool). `nouuid` is needed for a clone whose
/// origin (or sibling clone) is mounted too: XFS refuses a second mount of one UUID.
pub fn mount_xfs(dev: &Path, dir: &Path, nouuid: bool) -> Result<(), Error> {
    let data: &std::ffi::CStr = if nouuid { c"nouuid,discard" } else { c"discard" };
    mount(dev, dir, c"xfs", MountFlags::empty(), data).at("mount xfs", dir)
}

/// The dataset behind block device `dev`, if it is a zvol (detection's BLKZNAME lookup).
fn zvol_name(dev: &Path) -> Option<String> {
    crate::detect::zvol::dataset_of(dev).ok()
}

/// Find the `/dev/zdN` device of volume `dataset`, waiting up to `timeout` for the kernel to
/// create it; an [`Error::Io`] with errno ETIMEDOUT if it does not appear in time.
pub fn zvol_device(dataset: &DatasetName, timeout: Duration) -> Result<PathBuf, Error> {
    let deadline = Instant::now() + timeout;
    let udev_link = Path::new("/dev/zvol").join(dataset.as_str());
    loop {
        if let Ok(dev) = std::fs::canonicalize(&udev_link) {
            if zvol_name(&dev).as_deref() == Some(dataset.as_str()) {
                return Ok(dev);
            }
        }
        if let Some(dev) = scan_zd_devices(dataset)? {
            return Ok(dev);
        }
        if Instant::now() >= deadline {
            return Err(Error::from_errno("wait for zvol device", udev_link, libc::ETIMEDOUT));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn scan_zd_devices(dataset: &DatasetName) -> Result<Option<PathBuf>, Error> {
    let entries = match std::fs::read_dir("/sys/block") {
        Ok(e) => e,
        Err(e) => return Err(Error::io("read_dir", "/sys/block", e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.as_bytes();
        // Whole zvols are zd<16*k>; partitions of them are zd<n>p<m> (listed under the disk).
        if !(name.starts_with(b"zd") && name.len() > 2 && name[2..].iter().all(u8::is_ascii_digit))
        {
            continue;
        }
        let dev = Path::new("/dev").join(entry.file_name());
        if zvol_name(&dev).as_deref() == Some(dataset.as_str()) {
            return Ok(Some(dev));
        }
    }
    Ok(None)
}

/// A filesystem frozen with FIFREEZE; thawed by [`Frozen::thaw`] or on drop.
#[derive(Debug)]
pub struct Frozen {
    dir: PathBuf,
    file: Option<File>,
}

/// Freeze the filesystem mounted at `dir` (writes block, dirty data is flushed), so that a
/// snapshot of its zvol is consistent. Thaw it soon: writers on it hang meanwhile.
pub fn freeze(dir: &Path) -> Result<Frozen, Error> {
    let file = File::open(dir).at("open", dir)?;
    fifreeze(file.as_fd()).at("FIFREEZE", dir)?;
    Ok(Frozen { dir: dir.to_owned(), file: Some(file) })
}

impl Frozen {
    /// Thaw now and report a failure (drop thaws too but can only ignore one).
    pub fn thaw(mut self) -> Result<(), Error> {
        let file = self.file.take().expect("thawed once");
        fithaw(file.as_fd()).at("FITHAW", &self.dir)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Nothing to report to from drop; an explicit thaw() reports errors.
            let _ = fithaw(file.as_fd());
        }
    }
}
