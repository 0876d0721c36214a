//! The zvol flavour of the ZFS backend ([`super::zfs`]): a generation is a ZFS volume carrying
//! an XFS, a session a clone of it mounted `nouuid` (every clone has its origin's UUID). What
//! differs from ZFS filesystems lives here: where a root on a zvol puts its datasets, making a
//! volume and its XFS, mounting one, and freezing a session for a consistent snapshot.

use super::Source;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::detect::Mount;
use crate::zfs::mount;
use crate::zfs::{DatasetName, Props, Zfs};
use crate::{Context, Error, Result};

/// How long to wait for a new volume's block device (the kernel creates it asynchronously; no
/// udev needed).
const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a cache root that is an XFS on the zvol `zvol` keeps its datasets:
/// `<parent>/<zvol>.goldclone`, made for this cache, so that two roots on one parent never share
/// a dataset name.
pub(crate) fn datasets_beside(zvol: &DatasetName) -> Result<DatasetName> {
    let leaf = zvol.as_str().rsplit('/').next().unwrap_or_default().to_string();
    let parent = zvol.parent().ok_or_else(|| Error::Unsupported {
        what: format!("zvol {zvol} has no parent dataset to put volumes in"),
    })?;
    parent.child(&format!("{leaf}.goldclone"))
}

/// Size of a project's first volume: `configured`, or four times what `src` occupies (at least
/// 16 GiB: a session writes far more than the tree it starts from, and every session of the
/// project gets this size), in whole MiB. Volumes are sparse: only written blocks use space.
fn size_for(src: &Source<'_, '_>, configured: u64) -> u64 {
    let want = if configured > 0 {
        configured
    } else {
        let used = src.used();
        used.saturating_mul(4).max(16 << 30)
    };
    want.div_ceil(1 << 20) << 20
}

/// `volblocksize` of new volumes unless configured: 8 KiB. With 16 KiB, XFS's 4 KiB metadata
/// writes cost a 4x read-modify-write.
const DEFAULT_BLOCK_SIZE: u64 = 8 << 10;

/// Make the volume `head` for the tree `src` and format it with XFS.
pub(crate) fn create(
    zfs: &Zfs,
    head: &DatasetName,
    src: &Source<'_, '_>,
    configured_size: u64,
    configured_block_size: u64,
) -> Result<()> {
    let block_size =
        if configured_block_size == 0 { DEFAULT_BLOCK_SIZE } else { configured_block_size };
    let props = Props::new()
        .volsize(size_for(src, configured_size))
        .volblocksize(block_size)
        .number("refreservation", 0);
    zfs.create_volume(head, &props)?;
    let dev = mount::zvol_device(head, DEVICE_TIMEOUT)?;
    // There is no library for making an XFS; this is the one program the library runs. Its
    // chatter (e.g. about the volume's 16K sectors) is shown only on failure. `-K`: the volume
    // is new and sparse, so discarding all of it first (mkfs's default) only costs time.
    let out = Command::new("mkfs.xfs")
        .args(["-q", "-f", "-K"])
        .arg(&dev)
        .output()
        .at("spawn mkfs.xfs", &dev)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::io(
            "mkfs.xfs",
            &dev,
            std::io::Error::other(format!("exited with {}: {}", out.status, stderr.trim())),
        ));
    }
    Ok(())
}

/// Mount the XFS on volume `dataset` at `dir`.
pub(crate) fn mount(dataset: &DatasetName, dir: &Path) -> Result<()> {
    let dev = mount::zvol_device(dataset, DEVICE_TIMEOUT)?;
    // Sessions and the golden are clones of one XFS: same UUID, so `nouuid`. `discard`: blocks
    // a session frees go back to the pool instead of staying allocated in its volume.
    mount::mount_xfs(&dev, dir, true)
}

/// Whether the mount `m` is the XFS on volume `dataset`.
pub(crate) fn is_mount_of(m: &Mount, dataset: &DatasetName) -> bool {
    m.fs_type == "xfs"
        && crate::detect::zvol::dataset_of(&PathBuf::from(&m.source)).ok().as_deref()
            == Some(dataset.as_str())
}

/// Run `snapshot` with the XFS mounted at `dir` frozen: XFS keeps dirty data and its log in
/// memory, and a block-level snapshot must see them.
pub(crate) fn frozen<T>(dir: &Path, snapshot: impl FnOnce() -> Result<T>) -> Result<T> {
    let frozen = mount::freeze(dir)?;
    let taken = snapshot();
    frozen.thaw()?;
    taken
}

/// Thaw an XFS a crash may have left frozen (FIFREEZE outlives its process).
pub(crate) fn thaw_if_frozen(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = crate::sys::block::fithaw(std::os::fd::AsFd::as_fd(&f));
    }
}
