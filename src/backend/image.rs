//! The image backend: a generation is a sparse file holding an XFS, a session a reflink
//! (FICLONE) of that file attached to a loop device and mounted `nouuid,discard` at the
//! session's place. A session costs one clone of one file, in time proportional to the image's
//! extents, not to the files inside it. Where the cache root's filesystem cannot reflink, the
//! image is copied sparsely instead (only its data ranges).
//!
//! Under the cache root:
//!
//! ```text
//! <project>/gen/<N>                     generation N's image (published from its staging name)
//! <project>/sessions/<S>/               session S: the mount point of its image's XFS
//! .goldclone/images/<project>/<S>       session S's image, a clone of its generation's
//! ```
//!
//! A tree is identified by its image file (inode and birth time). A session is "here" only when
//! its place is the mount of a loop device whose backing file is the recorded image (asked with
//! `LOOP_GET_STATUS64`), so nothing but our own mount is ever unmounted. Loop devices are set
//! up with autoclear: unmounting a session frees its device, and a process killed between
//! attaching and mounting leaves no device behind. Promote freezes the session's XFS and clones
//! its image as the next generation; older sessions keep images of their own.

use super::Source;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::rootdir::{self, RootDir};
use super::{
    describe, Backend, BackendKind, Generation, Identity, Presence, Retired, Session, Watch,
};
use crate::copy::CopyOptions;
use crate::sys::loopdev;
use crate::zfs::mount;
use crate::{sys, Context, Error, Result};

/// Fault points only this backend reaches.
pub(crate) const FAULT_POINTS: &[&str] =
    &["setup:image-cloned", "import:image-filled", "setup:remounted"];

/// The inner XFS's sector size and the loop devices' block size: with direct I/O the loop
/// device takes its backing filesystem's sector size, and an XFS made for 512-byte sectors does
/// not mount on 4096-byte ones.
const SECTOR: u32 = 4096;

/// Above this many extents (FIEMAP's mappings) a new generation's image is rewritten
/// sequentially before it is committed: every session's FICLONE takes time in proportion to its
/// source's extents (about 8 µs each on this project's test machine, `benches/ficlone-extents.py`:
/// 2,000 in 10 ms, 6,000 in 51 ms, 200,000 in 1.6 s), and promoting session after session
/// fragments an image further each time. 4,096 keeps a setup's clone near 35 ms at worst.
pub(crate) const MAX_EXTENTS: u64 = 4096;

/// A tree of this backend: an image file, by its inode on the cache root's filesystem and its
/// birth time where the filesystem records one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum ImageIdentity {
    Image {
        ino: u64,
        birth: Option<u64>,
        /// Where a session's image is (relative to the root), for a removal owed after a lazy
        /// cleanup; a generation's image moves when it is published, and has none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
    },
}

#[derive(Debug)]
pub(crate) struct ImageBackend {
    pub threads: usize,
    /// Size of a new generation's image; 0 picks one from the tree and the filesystem.
    pub image_size: u64,
}

/// Where sessions' images are, one directory per project (made at open, see
/// `prepare_root`).
const IMAGES: &str = ".goldclone/images";

/// Where the images of `project`'s sessions are: made with its first generation, removed
/// with the project.
fn images_dir(project: &str) -> PathBuf {
    Path::new(IMAGES).join(project)
}

/// Where session `s`'s image is.
fn session_image(s: &Session) -> PathBuf {
    images_dir(&s.project).join(&s.name)
}

/// A device number in the kernel's `new_encode_dev` form, as `loop_info64.lo_device` carries
/// it (the C library's `dev_t` lays major and minor out differently above 12 bits).
fn encode_dev(dev: u64) -> u64 {
    let (major, minor) = (u64::from(rustix::fs::major(dev)), u64::from(rustix::fs::minor(dev)));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// The image file at `rel` as a loop device names its backing file: (encoded device, inode).
fn image_key(root: &RootDir, rel: &Path) -> Result<Option<(u64, u64)>> {
    Ok(match root.entry(rel)? {
        Some(e) if e.mode & libc::S_IFMT == libc::S_IFREG => Some((encode_dev(e.dev), e.ino)),
        _ => None,
    })
}

/// Whether the directory `rel` (beneath the root, never through a symlink) is the root of a
/// mount: something is mounted there.
fn is_mount_root(root: &RootDir, rel: &Path) -> Result<bool> {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
    let (parent, name) = match root.parent(rel) {
        Ok(p) => p,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    let st = match rustix::fs::statx(
        &parent,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    ) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => return Err(Error::io("statx", root.join(rel), e)),
    };
    Ok(st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
        && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

/// Unmount what is mounted at `dir` (the topmost mount; never through a symlink), or with
/// `lazily` detach it (`MNT_DETACH`: gone from every path, alive for its users).
fn unmount(dir: &Path, lazily: bool) -> Result<()> {
    use rustix::mount::UnmountFlags;
    let mut flags = UnmountFlags::NOFOLLOW;
    if lazily {
        flags |= UnmountFlags::DETACH;
    }
    crate::zfs::mount::unmount_waiting_out_forks(dir, flags)
        .at(if lazily { "umount -l" } else { "umount" }, dir)
}

/// The open image file at `rel` (not through a symlink), read-only or read-write.
fn open_image(root: &RootDir, rel: &Path, write: bool) -> Result<OwnedFd> {
    let (parent, name) = root.parent(rel)?;
    let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
    let fd = rustix::fs::openat(
        &parent,
        name,
        access | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .at_with("open", || root.join(rel))?;
    let st = rustix::fs::fstat(&fd).at_with("stat", || root.join(rel))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::Damaged { path: root.join(rel), what: "is not an image file".into() });
    }
    Ok(fd)
}

/// Create the new, empty image file `rel` (mode 0600); AlreadyExists if something is there.
fn create_image(root: &RootDir, rel: &Path) -> Result<OwnedFd> {
    let (parent, name) = root.parent(rel)?;
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(&parent, name, flags, Mode::from_raw_mode(0o600)).map_err(|e| {
        if e == rustix::io::Errno::EXIST {
            Error::AlreadyExists { path: root.join(rel) }
        } else {
            Error::io("create", root.join(rel), e)
        }
    })
}

fn file_identity(root: &RootDir, fd: BorrowedFd<'_>, rel: &Path) -> Result<Identity> {
    let e =
        rootdir::statx_entry(fd, std::ffi::OsStr::new("")).at_with("stat", || root.join(rel))?;
    Ok(Identity::new(&ImageIdentity::Image { ino: e.ino, birth: e.birth, path: None }))
}

/// `id` with the place of the session image it names.
fn with_path(id: Identity, rel: &Path) -> Identity {
    match id.get() {
        Some(ImageIdentity::Image { ino, birth, .. }) => {
            Identity::new(&ImageIdentity::Image { ino, birth, path: Some(rel.to_path_buf()) })
        }
        None => id,
    }
}

/// Copy the image `src` into the empty file `dst`: a reflink where the filesystem shares
/// extents, else its data ranges only (SEEK_DATA / SEEK_HOLE and copy_file_range), so that the
/// copy stays as sparse as the image.
fn clone_image(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, path: &Path) -> Result<()> {
    match sys::fs::ficlone(dst, src) {
        Ok(()) => return Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY)
            ) =>
        {
            tracing::debug!(
                target: "goldclone::backend",
                "{}: no reflink here ({e}); copying the image's data ranges",
                path.display()
            );
        }
        Err(e) => return Err(Error::io("FICLONE", path, e)),
    }
    let len = rustix::fs::fstat(src).at("stat", path)?.st_size as u64;
    rustix::fs::ftruncate(dst, len).at("ftruncate", path)?;
    for (start, end) in data_ranges(src, path)? {
        let mut from = start;
        while from < end {
            let (mut off_in, mut off_out) = (from, from);
            let n = rustix::fs::copy_file_range(
                src,
                Some(&mut off_in),
                dst,
                Some(&mut off_out),
                (end - from).min(1 << 30) as usize,
            )
            .at("copy_file_range", path)?;
            if n == 0 {
                return Err(Error::io(
                    "copy_file_range",
                    path,
                    std::io::Error::other("short copy"),
                ));
            }
            from += n as u64;
        }
    }
    Ok(())
}

/// Wait until no loop device serves the open image `image` any more: the detached mount a fill
/// used goes when its last descriptor does, and a process forked meanwhile elsewhere in this
/// program holds a copy of that descriptor until it execs. The inner XFS's last writes are
/// made before its device lets go.
fn wait_detached(image: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let st = rustix::fs::fstat(image).at("stat", path)?;
    let key = (encode_dev(st.st_dev), st.st_ino);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !loopdev::attached_to(key, path).at("list loop devices", "/sys/block")?.is_empty() {
        if std::time::Instant::now() >= deadline {
            return Err(Error::from_errno("wait for the loop device to let go", path, libc::EBUSY));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

/// Give back the blocks of the image's ranges that read as zeros without holding data: what
/// SEEK_HOLE reports as a hole that is still allocated (mkfs's zeroed log and the inner XFS's
/// zeroed ranges are unwritten extents). Punching them changes no byte of the image; it keeps
/// its allocation, the generation's size, and what every session clones down to its data.
fn punch_holes(image: BorrowedFd<'_>, path: &Path) -> Result<()> {
    use rustix::fs::FallocateFlags;
    let len = rustix::fs::fstat(image).at("stat", path)?.st_size as u64;
    // The holes are the gaps around the data ranges.
    let mut at = 0u64;
    for (start, end) in data_ranges(image, path)?.into_iter().chain(std::iter::once((len, len))) {
        if start > at {
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            rustix::fs::fallocate(image, flags, at, start - at).at("fallocate punch", path)?;
        }
        at = end;
    }
    Ok(())
}

/// A filled image at `staging` made a generation's: its loop device gone, the blocks its XFS
/// freed given back, synced, rewritten if too fragmented ([`defragment`]); its identity.
fn finish_image(root: &RootDir, image: OwnedFd, staging: &Path) -> Result<Identity> {
    wait_detached(image.as_fd(), &root.join(staging))?;
    punch_holes(image.as_fd(), &root.join(staging))?;
    rustix::fs::fsync(&image).at_with("fsync", || root.join(staging))?;
    let (image, _) = defragment(root, image, staging)?;
    file_identity(root, image.as_fd(), staging)
}

/// The name beside `staging` that [`defragment`] writes its sequential copy to.
fn rewrite_name(staging: &Path) -> PathBuf {
    let mut name = staging.file_name().unwrap_or_default().to_os_string();
    name.push(".rewrite");
    staging.with_file_name(name)
}

/// Bound the extents of the new image at `staging`: above [`MAX_EXTENTS`], its data is
/// written again sequentially (read and written, never reflinked: a reflink would keep the
/// fragments) to a file beside it, which then replaces it. Its holes stay holes. Returns the
/// image (the same or the rewritten one) and whether it was rewritten.
fn defragment(root: &RootDir, image: OwnedFd, staging: &Path) -> Result<(OwnedFd, bool)> {
    let shown = root.join(staging);
    let extents = match loopdev::extent_count(image.as_fd()) {
        Ok(n) => n,
        // No extent map to read (tmpfs): nothing a reflink would walk either.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOTTY)) => {
            return Ok((image, false))
        }
        Err(e) => return Err(Error::io("FIEMAP", &shown, e)),
    };
    if extents <= MAX_EXTENTS {
        return Ok((image, false));
    }
    let started = std::time::Instant::now();
    let tmp = rewrite_name(staging);
    let _ = root.remove_file(&tmp); // left by a killed rewrite: ours, and never committed
    let copy = create_image(root, &tmp)?;
    let written = (|| {
        let len = rustix::fs::fstat(&image).at("stat", &shown)?.st_size as u64;
        rustix::fs::ftruncate(&copy, len).at_with("ftruncate", || root.join(&tmp))?;
        let mut buf = vec![0u8; 4 << 20];
        for (start, end) in data_ranges(image.as_fd(), &shown)? {
            let mut at = start;
            while at < end {
                let want = ((end - at) as usize).min(buf.len());
                let n = rustix::io::pread(&image, &mut buf[..want], at).at("pread", &shown)?;
                if n == 0 {
                    return Err(Error::io("pread", &shown, std::io::Error::other("short read")));
                }
                let mut done = 0;
                while done < n {
                    done += rustix::io::pwrite(&copy, &buf[done..n], at + done as u64)
                        .at_with("pwrite", || root.join(&tmp))?;
                }
                at += n as u64;
            }
        }
        rustix::fs::fsync(&copy).at_with("fsync", || root.join(&tmp))?;
        let (to_fd, to) = root.parent(staging)?;
        let (from_fd, from) = root.parent(&tmp)?;
        rustix::fs::renameat(&from_fd, from, &to_fd, to).at("rename", &shown)?;
        rustix::fs::fsync(&to_fd).at("fsync", &shown)
    })();
    if let Err(e) = written {
        let _ = root.remove_file(&tmp);
        return Err(e);
    }
    let after = loopdev::extent_count(copy.as_fd()).unwrap_or(0);
    tracing::info!(
        target: "goldclone::backend",
        "{}: image had {extents} extents (more than {MAX_EXTENTS}): rewritten sequentially to \
         {after} in {:?}, so that sessions clone it quickly",
        shown.display(),
        started.elapsed()
    );
    Ok((copy, true))
}

/// The data ranges of the open file `fd` (SEEK_DATA / SEEK_HOLE), as (start, end).
fn data_ranges(fd: BorrowedFd<'_>, path: &Path) -> Result<Vec<(u64, u64)>> {
    use rustix::fs::SeekFrom;
    let len = rustix::fs::fstat(fd).at("stat", path)?.st_size as u64;
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < len {
        let data = match rustix::fs::seek(fd, SeekFrom::Data(at)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(Error::io("lseek SEEK_DATA", path, e)),
        };
        let hole = rustix::fs::seek(fd, SeekFrom::Hole(data)).at("lseek SEEK_HOLE", path)?;
        out.push((data, hole.min(len)));
        at = hole;
    }
    Ok(out)
}

/// Make an XFS in the open image `image` (at `path`): reflink on (docker's overlay2 and later
/// sessions' copies share extents inside it), 4096-byte sectors (see [`SECTOR`]). There is no
/// library for making an XFS: mkfs.xfs is the one program the library runs. `-K`: the image is
/// new and sparse, discarding it first only costs time.
fn make_xfs(image: BorrowedFd<'_>, path: &Path) -> Result<()> {
    // Our descriptor, by its /proc name: the file we made, whatever its path now holds.
    let by_fd =
        format!("/proc/{}/fd/{}", std::process::id(), std::os::fd::AsRawFd::as_raw_fd(&image));
    let out = Command::new("mkfs.xfs")
        // Its messages in English: a full filesystem is recognized by one.
        .env("LC_ALL", "C")
        .args(["-q", "-f", "-K", "-m", "reflink=1", "-s", "size=4096"])
        .arg(&by_fd)
        .output()
        .at("spawn mkfs.xfs", path)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // mkfs zeroes the log through the image: that write is where a full filesystem shows.
        if stderr.contains("No space left on device") {
            return Err(Error::from_errno("mkfs.xfs", path, libc::ENOSPC));
        }
        return Err(Error::io(
            "mkfs.xfs",
            path,
            std::io::Error::other(format!("exited with {}: {}", out.status, stderr.trim())),
        ));
    }
    Ok(())
}

/// Free bytes (for unprivileged users) of the filesystem of `fd`.
fn free_bytes(fd: BorrowedFd<'_>) -> Option<u64> {
    rustix::fs::fstatvfs(fd).ok().map(|s| s.f_bavail.saturating_mul(s.f_frsize))
}

/// Whether a filesystem with `free` bytes available has run out: what is left after an
/// ENOSPC is the filesystem's own reserve and rounding.
fn is_full(free: u64) -> bool {
    free < 16 << 20
}

/// The error `e` of a step that writes an image (`image`, the path shown for it), told apart
/// where it comes from a lack of space, so that the caller knows which filesystem to grow.
/// Two filesystems can be full:
/// - the cache root's, which holds every image (the image is sparse, so its size promised
///   nothing): the writes to it surface at the image's writeback, its mount, mkfs's log
///   zeroing or a clone, as ENOSPC, or as EIO once the image's XFS has shut down because its
///   log could not be written;
/// - the image's own, when the tree does not fit in the image's size: only a step that writes
///   into the image's XFS (`into_image`, the import's copy) meets that one, and it meets it
///   while the cache's filesystem still has room.
///
/// Asked after the failure and before the step's image is removed, while what it wrote still
/// holds the space.
fn explain_no_space(
    root: &RootDir,
    image: &Path,
    into_image: bool,
    image_size: u64,
    e: Error,
) -> Error {
    if matches!(e, Error::NoSpace { .. }) {
        return e;
    }
    let no_space = e.kind() == crate::ErrorKind::NoSpace;
    let host_free = free_bytes(root.fd());
    let host_full = host_free.is_some_and(is_full);
    if !(no_space || (host_full && e.errno() == Some(libc::EIO))) {
        return e;
    }
    if into_image && !host_full {
        return Error::NoSpace {
            path: image.to_path_buf(),
            what: format!(
                "the image's own filesystem ({} MiB) is full: the tree does not fit; import \
                 with a larger image size",
                image_size >> 20
            ),
            source: Box::new(e),
        };
    }
    Error::NoSpace {
        path: root.path().to_path_buf(),
        what: format!(
            "the filesystem holding the cache's images is full ({} MiB free)",
            host_free.unwrap_or(0) >> 20
        ),
        source: Box::new(e),
    }
}

/// Mount the XFS on block device `dev` detached (fsopen / fsmount): a mount that no path shows
/// and that no mount namespace made meanwhile copies (a container started elsewhere would keep
/// an attached one busy), reached only through the returned descriptor of its root directory.
/// It goes away when that descriptor is closed, also when the process is killed.
fn mount_detached(dev: &Path) -> std::io::Result<OwnedFd> {
    use rustix::mount::{
        fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, FsMountFlags,
        FsOpenFlags, MountAttrFlags,
    };
    let fs = fsopen("xfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_set_string(&fs, "source", dev)?;
    // A fresh image has a UUID of its own, but its XFS is the origin of every session's.
    fsconfig_set_flag(&fs, "nouuid")?;
    fsconfig_set_flag(&fs, "discard")?;
    fsconfig_create(&fs)?;
    Ok(fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())?)
}

/// Mount the XFS on `dev` (a read-only loop device) read-only and detached: `norecovery`,
/// because a generation's image was unmounted cleanly and nothing may write its log.
fn mount_detached_read_only(dev: &Path) -> std::io::Result<OwnedFd> {
    use rustix::mount::{
        fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, FsMountFlags,
        FsOpenFlags, MountAttrFlags,
    };
    let fs = fsopen("xfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_set_string(&fs, "source", dev)?;
    fsconfig_set_flag(&fs, "nouuid")?;
    fsconfig_set_flag(&fs, "ro")?;
    fsconfig_set_flag(&fs, "norecovery")?;
    fsconfig_create(&fs)?;
    Ok(fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::MOUNT_ATTR_RDONLY)?)
}

/// Attach the open image `image` to a loop device and mount its XFS at the existing directory
/// `dir`. The device detaches itself once unmounted (autoclear), or right away if the mount
/// fails (our descriptor is its last user).
fn attach_and_mount(image: BorrowedFd<'_>, dir: &Path) -> Result<()> {
    let dev = loopdev::attach(image, SECTOR, true).at("attach loop device", dir)?;
    tracing::debug!(
        target: "goldclone::backend",
        "{}: {} attached{}",
        dir.display(),
        dev.path.display(),
        if dev.direct_io { ", direct I/O" } else { ", buffered (no direct I/O on this filesystem)" }
    );
    // Every clone of an image carries its origin's UUID.
    mount::mount_xfs(&dev.path, dir, true)
}

impl ImageBackend {
    /// Size of a new image for the tree `src`: the configured size, else four times what the
    /// tree occupies, at least 16 GiB, at most the cache root's filesystem (a session cannot
    /// write more than that anyway), and never less than twice the tree plus 512 MiB. Sparse:
    /// only written blocks use space.
    fn size_for(&self, root: &RootDir, src: &Source<'_, '_>) -> u64 {
        if self.image_size > 0 {
            return self.image_size.div_ceil(1 << 20) << 20;
        }
        let used = src.used();
        let fs_size = rustix::fs::fstatvfs(root.fd()).map_or(u64::MAX, |s| s.f_blocks * s.f_frsize);
        let want = used.saturating_mul(4).max(16 << 30).min(fs_size);
        want.max(used.saturating_mul(2) + (512 << 20)).div_ceil(1 << 20) << 20
    }

    /// The directory `rel`, opened beneath the root (never through a symlink; a mount there is
    /// entered, so it is the topmost one), if it is the root of a mount of a loop device's
    /// filesystem; with the (device, inode) of the file behind that device.
    fn open_mounted(&self, root: &RootDir, rel: &Path) -> Result<Option<(OwnedFd, (u64, u64))>> {
        use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
        let (parent, name) = match root.parent(rel) {
            Ok(p) => p,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let fd = match rustix::fs::openat(&parent, name, sys::fs::READ_DIR, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
                return Ok(None)
            }
            Err(e) => return Err(Error::io("open", root.join(rel), e)),
        };
        let st = rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)
            .at_with("statx", || root.join(rel))?;
        let root_of_mount = StatxAttributes::MOUNT_ROOT;
        if !st.stx_attributes_mask.contains(root_of_mount)
            || !st.stx_attributes.contains(root_of_mount)
        {
            return Ok(None);
        }
        let backing = loopdev::backing_of(st.stx_dev_major, st.stx_dev_minor)
            .at_with("LOOP_GET_STATUS64", || root.join(rel))?;
        Ok(backing.map(|b| (fd, b)))
    }

    /// The session's place, opened, if what is mounted there is the XFS in the image file
    /// `image`: the one way to reach a session's filesystem to freeze or thaw it.
    fn mounted_session(
        &self,
        root: &RootDir,
        place: &Path,
        image: &Path,
    ) -> Result<Option<OwnedFd>> {
        let Some((fd, backing)) = self.open_mounted(root, place)? else { return Ok(None) };
        Ok((image_key(root, image)? == Some(backing)).then_some(fd))
    }

    /// Whether the XFS mounted at `place` is the one in the image file `image`.
    fn is_mount_of(&self, root: &RootDir, place: &Path, image: &Path) -> Result<bool> {
        Ok(self.mounted_session(root, place, image)?.is_some())
    }

    /// Unmount the image `image`'s XFS from `dir` (relative) if that is what is mounted there,
    /// then remove the directory if it is empty.
    fn unmount_and_rmdir(&self, root: &RootDir, dir: &Path, image: &Path) -> Result<()> {
        if self.is_mount_of(root, dir, image)? {
            unmount(&root.join(dir), false)?;
        }
        root.rmdir(dir).map(drop)
    }

    /// Presence of the image file at `rel` against identity `id`.
    fn image_presence(&self, root: &RootDir, rel: &Path, id: &Identity) -> Result<Presence> {
        let Some(ImageIdentity::Image { ino, birth, .. }) = id.get() else {
            return Ok(id.foreign());
        };
        let root_dev = rustix::fs::fstat(root.fd()).map_or(0, |st| st.st_dev);
        let same_birth = |b: Option<u64>| birth.is_none() || b.is_none() || b == birth;
        Ok(match root.entry(rel)? {
            None => Presence::Absent,
            Some(e)
                if e.mode & libc::S_IFMT == libc::S_IFREG
                    && e.ino == ino
                    && e.dev == root_dev
                    && same_birth(e.birth) =>
            {
                Presence::Here
            }
            Some(e) => Presence::Other(describe(&e, &format!("image inode {ino}"))),
        })
    }

    /// Fill the new image `image` (at `staging`) with the tree `src`: its XFS mounted detached
    /// (see [`mount_detached`]), copied into (or, `onto_base`, a clone of an increment's base
    /// image changed by it), synced, and let go.
    fn fill(
        &self,
        root: &RootDir,
        image: BorrowedFd<'_>,
        staging: &Path,
        src: &Source<'_, '_>,
        onto_base: bool,
        watch: &Watch,
    ) -> Result<()> {
        let shown = root.join(staging);
        // Buffered: the host's page cache gathers the inner XFS's scattered writes, and delayed
        // allocation lays them out in file order at writeback, so that a new image has few
        // extents (with direct I/O each write is allocated where it lands: tens of thousands).
        let dev = loopdev::attach(image, SECTOR, false).at("attach loop device", &shown)?;
        let mnt = mount_detached(&dev.path).at_with("mount the image's XFS", || shown.clone())?;
        drop(dev); // the mount holds the device now; it detaches itself once that goes
                   // fsmount's descriptor is an O_PATH one: its root opened for real, for the copy's
                   // fchown and friends.
        let mnt = rustix::fs::openat(&mnt, ".", sys::fs::READ_DIR, Mode::empty())
            .at("open the image's root", &shown)?;
        let size = rustix::fs::fstat(image).map_or(0, |st| st.st_size as u64);
        let opts =
            watch.copy_options(CopyOptions { threads: self.threads, ..CopyOptions::default() });
        if onto_base {
            // A clone of the base's image, which may have grown for this generation: its XFS
            // grows with it.
            let (before, after) = sys::block::xfs_grow_data(mnt.as_fd(), size)
                .at_with("XFS_IOC_FSGROWFSDATA", || shown.clone())?;
            if after > before {
                tracing::info!(
                    target: "goldclone::backend",
                    "{}: the base generation's image grown from {} to {} MiB for this one",
                    shown.display(),
                    before >> 20,
                    after >> 20
                );
            }
            src.fill_onto_base(mnt.as_fd(), &shown, &opts)
        } else {
            src.fill(mnt.as_fd(), &shown, &opts)
        }
        .map_err(|e| explain_no_space(root, &shown, true, size, e))?;
        // The image's own XFS durable before it is let go and the image synced.
        rustix::fs::syncfs(&mnt)
            .at("syncfs", &shown)
            .map_err(|e| explain_no_space(root, &shown, false, size, e))?;
        crate::fault::point("import:image-filled");
        Ok(())
    }

    /// Clone the image at `from` as the new file `to`, synced; its identity.
    fn clone_to(&self, root: &RootDir, from: &Path, to: &Path) -> Result<(OwnedFd, Identity)> {
        let src = open_image(root, from, false)?;
        let dst = create_image(root, to)?;
        let made = clone_image(src.as_fd(), dst.as_fd(), &root.join(to))
            .and_then(|()| rustix::fs::fsync(&dst).at_with("fsync", || root.join(to)))
            .and_then(|()| file_identity(root, dst.as_fd(), to));
        match made {
            Ok(id) => Ok((dst, id)),
            Err(e) => {
                let size = rustix::fs::fstat(&src).map_or(0, |st| st.st_size as u64);
                let e = explain_no_space(root, &root.join(to), false, size, e);
                let _ = root.remove_file(to);
                Err(e)
            }
        }
    }

    /// Freeze the session's XFS (its dirty data and log reach the image), clone its image to
    /// `staging`, thaw.
    fn clone_session(&self, root: &RootDir, s: &Session, staging: &Path) -> Result<Identity> {
        let image = session_image(s);
        // Frozen through a descriptor checked to be the session's own filesystem: never the
        // cache root's, or one mounted over the session since it was checked.
        let Some(session_fs) = self.mounted_session(root, &s.place, &image)? else {
            return Err(Error::Damaged {
                path: root.join(&s.place),
                what: format!("is not the mount of the session's image {}", image.display()),
            });
        };
        sys::block::fifreeze(session_fs.as_fd()).at_with("FIFREEZE", || root.join(&s.place))?;
        let cloned = self.clone_to(root, &image, staging);
        let thawed =
            sys::block::fithaw(session_fs.as_fd()).at_with("FITHAW", || root.join(&s.place));
        let (fd, _) = cloned?;
        thawed?;
        // After the thaw: the session runs on while its copy is rewritten.
        let (fd, _) = defragment(root, fd, staging)
            .map_err(|e| explain_no_space(root, &root.join(staging), false, 0, e))?;
        file_identity(root, fd.as_fd(), staging)
    }

    /// Take away session `s` (recorded as `id`): its mount (if it is the session's), its mount
    /// point and its image. `lazily`: the mount is detached rather than unmounted, and the
    /// image is removed once its loop device has let go of it ([`Backend::remove_owed`]).
    fn take_session(
        &self,
        root: &RootDir,
        s: &Session,
        id: &Identity,
        lazily: bool,
    ) -> Result<Retired> {
        let image = session_image(s);
        match self.session_presence(root, s, id)? {
            Presence::Here => {
                let dir = root.join(&s.place);
                if lazily {
                    unmount(&dir, true)?;
                    root.rmdir(&s.place)?;
                    // Mounted still, for its users: removed by gc once they are gone.
                    return Ok(Retired::Owed(with_path(id.clone(), &image)));
                }
                unmount(&dir, false)?;
            }
            Presence::Elsewhere(_) => {
                // Not at its place (detached there by someone, or a reboot), but a loop device
                // may still serve it to a mount elsewhere (another mount namespace): then it
                // is in use.
                if let Some(key) = image_key(root, &image)? {
                    let devices = loopdev::attached_to(key, &root.join(&image))
                        .at("list loop devices", "/sys/block")?;
                    if !devices.is_empty() {
                        if lazily {
                            root.rmdir(&s.place)?;
                            return Ok(Retired::Owed(with_path(id.clone(), &image)));
                        }
                        return Err(Error::from_errno(
                            "remove session: its image is still on a loop device",
                            root.join(&image),
                            libc::EBUSY,
                        ));
                    }
                }
            }
            Presence::Absent => {
                root.rmdir(&s.place)?;
                return Ok(Retired::Absent);
            }
            Presence::Other(what) => {
                return Err(Error::Damaged { path: root.join(&s.place), what })
            }
        }
        root.rmdir(&s.place)?;
        root.remove_file(&image)?;
        Ok(Retired::Removed)
    }
}

impl Backend for ImageBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Image
    }

    fn prepare_root(&self, root: &RootDir) -> Result<()> {
        root.mkdir(Path::new(IMAGES)).map(drop)
    }

    fn sessions_are_mounts(&self) -> bool {
        true
    }

    fn session_free(&self, root: &RootDir, s: &Session) -> Result<()> {
        // Undoing the setup removes the image at this name: it must be the setup's own.
        let image = session_image(s);
        if root.entry(&image)?.is_some() {
            return Err(Error::AlreadyExists { path: root.join(&image) });
        }
        Ok(())
    }

    fn import(
        &self,
        root: &RootDir,
        src: &Source<'_, '_>,
        g: &Generation,
        staging: &Path,
        watch: &Watch,
    ) -> Result<Identity> {
        src.check()?;
        let size = self.size_for(root, src);
        let images = images_dir(&g.project);
        // Made here, not at the first setup: setups run side by side, an import alone. A
        // failed import takes away what it made.
        let made_images = root.mkdir(&images)?;
        let undo_dir = || {
            if made_images {
                let _ = root.rmdir(&images);
            }
        };
        let image = create_image(root, staging);
        if image.is_err() {
            undo_dir();
        }
        let image = image?;
        let made = (|| {
            rustix::fs::ftruncate(&image, size).at_with("ftruncate", || root.join(staging))?;
            watch.check()?;
            make_xfs(image.as_fd(), &root.join(staging))?;
            self.fill(root, image.as_fd(), staging, src, false, watch)?;
            finish_image(root, image, staging)
        })()
        .map_err(|e| explain_no_space(root, &root.join(staging), false, size, e));
        if made.is_err() {
            let _ = root.remove_file(staging);
            undo_dir();
        }
        made
    }

    /// An increment onto `previous` ([`super::StreamBase::InPlace`]) is applied to a clone of its
    /// image: O(change), where a fresh image would be filled with a copy of the whole tree
    /// first. Anything else is an import like the first.
    fn import_next(
        &self,
        root: &RootDir,
        src: &Source<'_, '_>,
        g: &Generation,
        previous: &Generation,
        staging: &Path,
        watch: &Watch,
    ) -> Result<Identity> {
        if !src.in_place() {
            return self.import(root, src, g, staging, watch);
        }
        watch.check()?;
        let made = (|| {
            let (image, _) = self.clone_to(root, &previous.place, staging)?;
            // The base's image was sized for the base: the new generation may need more (its
            // tree grew, or a larger image size is set now). The file grows before its loop
            // device takes its size, its XFS once mounted.
            let size = rustix::fs::fstat(&image).at_with("stat", || root.join(staging))?.st_size;
            let want = self.size_for(root, src);
            if want > size as u64 {
                rustix::fs::ftruncate(&image, want).at_with("ftruncate", || root.join(staging))?;
            }
            self.fill(root, image.as_fd(), staging, src, true, watch)?;
            finish_image(root, image, staging)
        })()
        .map_err(|e| explain_no_space(root, &root.join(staging), false, 0, e));
        if made.is_err() {
            let _ = root.remove_file(staging);
        }
        made
    }

    fn applies_increments_in_place(&self) -> bool {
        true
    }

    /// The generation's image attached read-only (its file opened read-only, so the device
    /// is too) and its XFS mounted detached, read-only: nothing can change the image, and the
    /// mount (and with it the device) goes with the last descriptor of the tree.
    fn open_generation(&self, root: &RootDir, g: &Generation, _id: &Identity) -> Result<OwnedFd> {
        let shown = root.join(&g.place);
        let image = open_image(root, &g.place, false)?;
        let dev = loopdev::attach(image.as_fd(), SECTOR, false).at("attach loop device", &shown)?;
        let mnt = mount_detached_read_only(&dev.path)
            .at_with("mount the image's XFS read-only", || shown.clone())?;
        drop(dev);
        rustix::fs::openat(&mnt, ".", sys::fs::READ_DIR, Mode::empty())
            .at("open the image's root", &shown)
    }

    fn create_session(
        &self,
        root: &RootDir,
        g: &Generation,
        _recorded: &Identity,
        s: &Session,
        staging: &Path,
        watch: &Watch,
    ) -> Result<Identity> {
        watch.check()?;
        let image = session_image(s);
        let made = (|| {
            let (fd, id) = self.clone_to(root, &g.place, &image)?;
            crate::fault::point("setup:image-cloned");
            if !root.mkdir(&s.place)? {
                return Err(Error::AlreadyExists { path: root.join(&s.place) });
            }
            attach_and_mount(fd.as_fd(), &root.join(&s.place))?;
            Ok(with_path(id, &image))
        })()
        // Mounting writes the clone's log: a full filesystem shows there too.
        .map_err(|e| explain_no_space(root, &root.join(&image), false, 0, e));
        match &made {
            // Something was there already (never ours to remove; session_free checked the
            // image, the lifecycle the place): this setup made nothing.
            Err(Error::AlreadyExists { .. }) => {}
            Err(_) => {
                let _ = self.discard_session(root, s, staging, true);
            }
            Ok(_) => {}
        }
        made
    }

    fn promote(
        &self,
        root: &RootDir,
        s: &Session,
        _recorded: &Identity,
        _g: &Generation,
        _previous: &Generation,
        staging: &Path,
        watch: &Watch,
    ) -> Result<Identity> {
        watch.check()?;
        self.clone_session(root, s, staging)
    }

    fn promotes_session_itself(&self) -> bool {
        // The new generation is an image: edits are made in the session, before it is cloned.
        true
    }

    fn seal(&self, root: &RootDir, staging: &Path) -> Result<()> {
        let fd = open_image(root, staging, false)?;
        rustix::fs::fsync(&fd).at_with("fsync", || root.join(staging))
    }

    fn recover_promote(
        &self,
        root: &RootDir,
        s: &Session,
        _g: &Generation,
        _previous: &Generation,
        staging: &Path,
        forward: bool,
    ) -> Result<Option<Identity>> {
        // FIFREEZE outlives its process: a promote killed while the session was frozen leaves it
        // frozen. Thawed only where the session's own image is mounted.
        if let Some(session_fs) = self.mounted_session(root, &s.place, &session_image(s))? {
            let _ = sys::block::fithaw(session_fs.as_fd());
        }
        // No clone begun: nothing was done (an edit that failed is given back by the caller).
        if root.entry(staging)?.is_none() {
            return Ok(None);
        }
        // A clone cut short is no generation.
        root.remove_file(staging)?;
        root.remove_file(&rewrite_name(staging))?;
        if forward && self.is_mount_of(root, &s.place, &session_image(s))? {
            // The session was edited for the generation, completely (the clone comes after the
            // edits), and undoing cannot give the edits back: clone it again.
            return Ok(Some(self.clone_session(root, s, staging)?));
        }
        Ok(None)
    }

    fn publish_session(&self, _root: &RootDir, _staging: &Path, _place: &Path) -> Result<()> {
        Ok(()) // mounted at its place; generations move from their staging name
    }

    fn session_built_at<'p>(&self, _staging: &'p Path, place: &'p Path) -> &'p Path {
        place
    }

    fn presence(&self, root: &RootDir, place: &Path, id: &Identity) -> Result<Presence> {
        self.image_presence(root, place, id)
    }

    fn remount_session(&self, root: &RootDir, s: &Session, id: &Identity) -> Result<bool> {
        let image = session_image(s);
        if !matches!(self.session_presence(root, s, id)?, Presence::Elsewhere(_)) {
            return Ok(false);
        }
        // A loop device still on the image serves a mount somewhere (another namespace, a
        // detached mount still in use): a second device would be a second writer of its XFS.
        if let Some(key) = image_key(root, &image)? {
            // An unmount just made frees its autoclear device a moment later: a short grace.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            let on = |key| loopdev::attached_to(key, &root.join(&image));
            let mut devices = on(key).at("list loop devices", "/sys/block")?;
            while !devices.is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
                devices = on(key).at("list loop devices", "/sys/block")?;
            }
            if !devices.is_empty() {
                return Err(Error::from_errno(
                    "mount session again: its image is still on a loop device",
                    format!("{} ({})", root.join(&image).display(), devices.join(", ")),
                    libc::EBUSY,
                ));
            }
        }
        super::empty_place_for_remount(root, &s.place)?;
        let fd = open_image(root, &image, true)?;
        // The file opened is the recorded one (checked by descriptor, not by name).
        let Some(ImageIdentity::Image { ino, birth, .. }) = id.get() else {
            return Ok(false);
        };
        let opened = rootdir::statx_entry(fd.as_fd(), std::ffi::OsStr::new(""))
            .at_with("stat", || root.join(&image))?;
        if opened.ino != ino || (birth.is_some() && opened.birth != birth) {
            return Err(Error::Damaged {
                path: root.join(&image),
                what: "changed while the session was being mounted again".into(),
            });
        }
        attach_and_mount(fd.as_fd(), &root.join(&s.place))
            .map_err(|e| explain_no_space(root, &root.join(&image), false, 0, e))?;
        Ok(true)
    }

    fn session_presence(&self, root: &RootDir, s: &Session, id: &Identity) -> Result<Presence> {
        let image = session_image(s);
        match self.image_presence(root, &image, id)? {
            Presence::Here if self.is_mount_of(root, &s.place, &image)? => Ok(Presence::Here),
            Presence::Here if is_mount_root(root, &s.place)? => Ok(Presence::Other(
                "another filesystem is mounted there, not the session's image".into(),
            )),
            Presence::Here => Ok(Presence::Elsewhere(format!(
                "its image {} is not mounted at its place",
                image.display()
            ))),
            Presence::Absent if self.open_mounted(root, &s.place)?.is_some() => {
                Ok(Presence::Other(
                    "a loop device's XFS is mounted there, but the session's image is gone".into(),
                ))
            }
            other => Ok(other),
        }
    }

    fn discard_session(
        &self,
        root: &RootDir,
        s: &Session,
        _staging: &Path,
        ours: bool,
    ) -> Result<()> {
        if !ours {
            return Ok(()); // built in place: the place and the image are another setup's
        }
        let image = session_image(s);
        self.unmount_and_rmdir(root, &s.place, &image)?;
        root.remove_file(&image)
    }

    fn discard_generation(
        &self,
        root: &RootDir,
        g: &Generation,
        staging: &Path,
        recorded: Option<&Identity>,
    ) -> Result<()> {
        root.remove_file(&rewrite_name(staging))?;
        match root.entry(staging)? {
            Some(e) if e.mode & libc::S_IFMT == libc::S_IFREG => root.remove_file(staging)?,
            Some(e) => {
                // This backend makes only files there: not ours.
                return Err(Error::Damaged {
                    path: root.join(staging),
                    what: describe(&e, "image file"),
                });
            }
            None => {}
        }
        if let Some(id) = recorded {
            if self.image_presence(root, &g.place, id)? == Presence::Here {
                root.remove_file(&g.place)?;
            }
        }
        Ok(())
    }

    fn retire_session(
        &self,
        root: &RootDir,
        s: &Session,
        id: &Identity,
        _t: &Path,
    ) -> Result<Retired> {
        self.take_session(root, s, id, false)
    }

    fn detach_session(
        &self,
        root: &RootDir,
        s: &Session,
        id: &Identity,
        _t: &Path,
    ) -> Result<Retired> {
        self.take_session(root, s, id, true)
    }

    fn remove_trash(&self, root: &RootDir, trash: &Path) -> Result<()> {
        match root.entry(trash)? {
            Some(e) if e.mode & libc::S_IFMT == libc::S_IFREG => root.remove_file(trash),
            _ => super::remove_beneath(root, trash),
        }
    }

    fn remove_owed(&self, root: &RootDir, id: &Identity) -> Result<()> {
        let Some(ImageIdentity::Image { ino, path: Some(rel), .. }) = id.get() else {
            return Err(Error::Damaged {
                path: PathBuf::from(id.to_string()),
                what: "not a session's image".into(),
            });
        };
        match self.image_presence(root, &rel, id)? {
            Presence::Here => {}
            Presence::Absent => return Ok(()),
            Presence::Elsewhere(what) | Presence::Other(what) => {
                return Err(Error::Damaged { path: root.join(&rel), what })
            }
        }
        let Some(key) = image_key(root, &rel)? else { return Ok(()) };
        debug_assert_eq!(key.1, ino);
        let devices =
            loopdev::attached_to(key, &root.join(&rel)).at("list loop devices", "/sys/block")?;
        if !devices.is_empty() {
            // Its users still have the session: the loop device lives as long as its mount.
            return Err(Error::from_errno(
                "remove image (its loop device is in use)",
                root.join(&rel),
                libc::EBUSY,
            ));
        }
        root.remove_file(&rel)
    }

    fn remove_project(&self, root: &RootDir, project: &str) -> Result<()> {
        let dir = images_dir(project);
        if !root.list(&dir)?.is_empty() {
            return Err(Error::Damaged {
                path: root.join(&dir),
                what: "holds images no session of the project names: left alone".into(),
            });
        }
        root.rmdir(&dir).map(drop)
    }

    fn forget_project(&self, root: &RootDir, project: &str) -> Result<bool> {
        let dir = images_dir(project);
        Ok(root.rmdir(&dir)? || root.entry(&dir)?.is_none())
    }

    fn counted_size(&self, root: &RootDir, g: &Generation) -> Option<u64> {
        let fd = open_image(root, &g.place, false).ok()?;
        rustix::fs::fstat(&fd).ok().map(|st| st.st_blocks as u64 * 512)
    }

    fn unrecorded(
        &self,
        root: &RootDir,
        project: &str,
        sessions: &[String],
        _generations: &[u64],
        owed: &[Identity],
    ) -> Result<Vec<String>> {
        let dir = images_dir(project);
        // Images of sessions cleaned up lazily wait for their users: owed, not unrecorded.
        let owed: Vec<PathBuf> = owed
            .iter()
            .filter_map(|id| match id.get() {
                Some(ImageIdentity::Image { path: Some(p), .. }) => Some(p),
                _ => None,
            })
            .collect();
        Ok(root
            .list(&dir)?
            .into_iter()
            .filter(|name| !sessions.iter().any(|s| std::ffi::OsStr::new(s) == name))
            .filter(|name| !owed.contains(&dir.join(name)))
            .map(|name| format!("image {}", root.join(&dir.join(name)).display()))
            .collect())
    }
}

/// Whether a cache root can be served by the image backend: this machine can make loop
/// devices and XFS images ([`crate::detect::loop_devices_usable`]). Asked for, it serves any
/// filesystem (tmpfs too: its images are memory, the caller's choice).
pub(crate) fn check(root: &Path, found: &crate::detect::Detection) -> Result<()> {
    crate::detect::loop_devices_usable().map_err(|why| {
        super::cannot_serve(BackendKind::Image, root, found, &format!("cannot run here: {why}"))
    })
}
