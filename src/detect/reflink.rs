//! FICLONE probe: can this filesystem share extents between files? Probed once per mounted
//! filesystem per process, by trying it on two unnamed temporary files.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use std::sync::{LazyLock, Mutex};

use crate::sys::detect::{fstatx, MntId};
use crate::sys::fs::ficlone;
use crate::{Context, Error, Result};

/// Identifies one mounted filesystem for the cache. `st_dev` alone is not enough: anonymous and
/// loop device numbers are reused as soon as one filesystem is unmounted and another mounted, and
/// so is the statfs fsid on xfs (it is the device number there). So the key also holds the
/// mount's unique 64-bit id (Linux 6.8+, never reused during a boot; on older kernels the
/// mountinfo id, which is reused, so a remount on the same device and mount id may hit a stale
/// entry) and the statfs magic. Keying by mount means one probe per bind mount: cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FsKey {
    dev: u64,
    magic: i64,
    fsid: u64,
    mnt_id: Option<u64>,
    mnt_id_unique: bool,
}

static CACHE: LazyLock<Mutex<HashMap<FsKey, bool>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Whether the filesystem holding the directory `dir` supports FICLONE (reflinks).
///
/// * `Ok(Some(true))`: a FICLONE between two files in `dir` succeeded (xfs with `reflink=1`,
///   btrfs, ZFS with block cloning enabled, ...).
/// * `Ok(Some(false))`: the kernel refused it (EOPNOTSUPP, ENOTTY, EINVAL, EXDEV): ext4, tmpfs,
///   xfs without reflink, ZFS with block cloning off.
/// * `Ok(None)`: unknown, because no probe file could be created in `dir` (read-only filesystem,
///   no permission, full, or a filesystem like procfs that has no regular files to make).
///
/// The probe uses `O_TMPFILE` files, which never appear in the directory; only on filesystems
/// without `O_TMPFILE` does it fall back to a named file that is unlinked at once. Definite
/// answers are cached per mounted filesystem for the life of the process; unknown ones are not.
pub fn reflink_supported(dir: &Path) -> Result<Option<bool>> {
    // O_DIRECTORY: never block opening a FIFO or touch a device that was passed by mistake.
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTDIR) => Error::NotADirectory { path: dir.to_path_buf() },
            _ => Error::io("open", dir, e),
        })?;
    let md = d.metadata().at("fstat", dir)?;
    let sfs = nix::sys::statfs::fstatfs(d.as_fd()).at("fstatfs", dir)?;
    let svfs = nix::sys::statvfs::fstatvfs(d.as_fd()).at("fstatvfs", dir)?;
    let sx = fstatx(d.as_fd(), MntId::Unique).at("statx", dir)?;
    // Field types differ by libc flavour, hence the casts.
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let key = FsKey {
        dev: md.dev(),
        magic: sfs.filesystem_type().0 as i64,
        fsid: u64::from(svfs.filesystem_id()),
        mnt_id: sx.mnt_id,
        mnt_id_unique: sx.mnt_id_unique,
    };
    if let Some(&known) = lock().get(&key) {
        return Ok(Some(known));
    }
    let answer = probe(dir)?;
    if let Some(a) = answer {
        lock().insert(key, a);
    }
    Ok(answer)
}

/// Forget every cached probe answer. Only needed on kernels before 6.8 (no unique mount id) by a
/// long-running process that unmounts a filesystem and mounts a different one on the same device.
pub fn clear_reflink_cache() {
    lock().clear();
}

fn lock() -> std::sync::MutexGuard<'static, HashMap<FsKey, bool>> {
    // A panic while holding the lock cannot leave the map half-updated: recover it.
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Errors creating a probe file that mean "cannot tell here", not "something broke".
fn cannot_create_here(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EROFS
                | libc::EACCES
                | libc::EPERM
                | libc::ENOSPC
                | libc::EDQUOT
                | libc::ENOENT
                | libc::EOPNOTSUPP
                | libc::EISDIR
                | libc::EINVAL
                | libc::ENOTDIR
        )
    )
}

/// FICLONE errors that mean "this filesystem does not reflink".
fn means_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EOPNOTSUPP
                | libc::ENOTTY
                | libc::EINVAL
                | libc::EXDEV
                | libc::ENOSYS
                | libc::EBADF
        )
    )
}

/// Create an unnamed read-write file in `dir`: `O_TMPFILE`, or a named file unlinked at once.
fn temp_file(dir: &Path) -> io::Result<File> {
    let tmp = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir);
    match tmp {
        Ok(f) => return Ok(f),
        // Filesystems without O_TMPFILE answer EOPNOTSUPP (or EISDIR/EINVAL on old kernels).
        Err(e)
            if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {
        }
        Err(e) => return Err(e),
    }
    let name = format!(".goldclone-reflink-probe.{}", crate::sys::unique_suffix());
    let path = dir.join(name);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

fn probe(dir: &Path) -> Result<Option<bool>> {
    let make = || temp_file(dir);
    let (mut src, dst) = match make().and_then(|a| make().map(|b| (a, b))) {
        Ok(pair) => pair,
        Err(e) if cannot_create_here(&e) => return Ok(None),
        Err(e) => return Err(Error::io("create probe file in", dir, e)),
    };
    // Real data, so a filesystem that accepts an empty clone but cannot share extents says so.
    match src.write_all(&[0x67; 4096]) {
        Ok(()) => {}
        Err(e) if cannot_create_here(&e) => return Ok(None),
        Err(e) => return Err(Error::io("write probe file in", dir, e)),
    }
    match ficlone(dst.as_fd(), src.as_fd()) {
        Ok(()) => Ok(Some(true)),
        Err(e) if means_unsupported(&e) => Ok(Some(false)),
        // OpenZFS before 2.2.3 refuses to clone blocks still dirty in the open txg (EAGAIN):
        // the filesystem can clone, the data is just too fresh. Retry with an empty source.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => {
            let empty = make().at("create probe file in", dir)?;
            match ficlone(dst.as_fd(), empty.as_fd()) {
                Ok(()) => Ok(Some(true)),
                Err(e) if means_unsupported(&e) => Ok(Some(false)),
                Err(e) => Err(Error::io("FICLONE probe in", dir, e)),
            }
        }
        Err(e) => Err(Error::io("FICLONE probe in", dir, e)),
    }
}
