//! Where a copy is written before it exists: a staging directory beside DST, locked by its
//! writer, renamed into place only when complete. Also removal of trees and of leftovers.
//!
//! Staging directories are named `.goldclone-staging.<dst-name>.<unique>` and their writer
//! holds an exclusive `flock` on them for as long as it runs. A killed writer's lock goes with its
//! process, so [`cleanup_staging`] can tell a leftover (lock free) from a copy in progress (lock
//! held) without trusting pids.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nix::dir::{Dir, Type};
use nix::fcntl::{openat, renameat2, OFlag, RenameFlags, AT_FDCWD};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode};
use nix::unistd::{fchown, getegid, unlinkat, UnlinkatFlags};

use crate::sys;
use crate::{Context, Error, Result};

/// Name prefix of every staging directory.
pub const STAGING_PREFIX: &str = ".goldclone-staging.";

/// Flags for opening a directory we only read or use as a base for `*at` calls.
pub(super) const DIR_FLAGS: OFlag =
    OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

/// Open a source directory without moving its atime: reading the golden tree must not change
/// it (atimes are part of what is copied). O_NOATIME is only for the owner or CAP_FOWNER; others
/// get a plain open.
pub(super) fn open_dir_noatime<P: rustix::path::Arg + Copy>(
    parent: BorrowedFd<'_>,
    name: P,
) -> std::io::Result<OwnedFd> {
    crate::sys::fs::openat_noatime(parent, name, crate::sys::fs::READ_DIR)
}

/// A validated copy destination with its locked staging directory.
pub(super) struct Staging {
    /// The canonical source directory.
    pub src: PathBuf,
    /// DST as given.
    pub dst: PathBuf,
    /// DST's parent directory, open.
    parent: OwnedFd,
    dst_name: OsString,
    staging_name: OsString,
    /// Full path of the staging directory (for messages and path-based calls).
    pub path: PathBuf,
    /// The staging directory, open and exclusively locked.
    pub fd: OwnedFd,
}

impl Staging {
    /// Check SRC and DST and create the locked staging directory. Touches nothing on error.
    pub fn prepare(src: &Path, dst: &Path) -> Result<Staging> {
        let src_canon = source_dir(src)?;

        let dst_name = match dst.components().next_back() {
            Some(Component::Normal(name)) => name.to_os_string(),
            _ => {
                return Err(Error::InvalidArgument {
                    what: format!("destination {} has no final name component", dst.display()),
                })
            }
        };
        if std::fs::symlink_metadata(dst).is_ok() {
            return Err(Error::AlreadyExists { path: dst.to_path_buf() });
        }
        let parent_path = match dst.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let parent_canon = parent_path.canonicalize().at("canonicalize", &parent_path)?;
        if parent_canon.join(&dst_name).starts_with(&src_canon) {
            return Err(Error::DestinationInsideSource {
                src: src.to_path_buf(),
                dst: dst.to_path_buf(),
            });
        }
        let parent =
            openat(AT_FDCWD, &parent_canon, DIR_FLAGS, Mode::empty()).at("open", &parent_canon)?;

        let staging_name = staging_name_for(&dst_name);
        let path = parent_canon.join(&staging_name);
        // Made and locked under a name cleanup_staging does not look at, then renamed: a
        // directory that carries the staging prefix is locked from its first moment, so a
        // concurrent cleanup can never take it for a dead writer's.
        let unlocked_name = unlocked_name_for(&staging_name);
        mkdirat(&parent, unlocked_name.as_os_str(), Mode::from_bits_truncate(0o700))
            .at("mkdir", &path)?;
        let staged = (|| {
            let fd = openat(&parent, unlocked_name.as_os_str(), DIR_FLAGS, Mode::empty())
                .at("open", &path)?;
            sys::fs::lock(fd.as_fd(), true).at("flock", &path)?;
            // A setgid parent hands its group and its setgid bit to the new directory, and it
            // would pass them on to everything created in it: entries must start out as ours.
            fchown(&fd, None, Some(getegid())).at("chown", &path)?;
            fchmod(&fd, Mode::from_bits_truncate(0o700)).at("chmod", &path)?;
            // A default ACL on DST's parent is inherited by the new directory and would then be
            // inherited by every entry created directly in it: strip what we did not ask for.
            strip_xattrs(fd.as_fd()).at("removexattr", &path)?;
            renameat2(
                &parent,
                unlocked_name.as_os_str(),
                &parent,
                staging_name.as_os_str(),
                RenameFlags::RENAME_NOREPLACE,
            )
            .at("rename", &path)?;
            Ok(fd)
        })();
        let fd = match staged {
            Ok(fd) => fd,
            Err(e) => {
                let _ = unlinkat(&parent, unlocked_name.as_os_str(), UnlinkatFlags::RemoveDir);
                return Err(e);
            }
        };
        Ok(Staging {
            src: src_canon,
            dst: dst.to_path_buf(),
            parent,
            dst_name,
            staging_name,
            path,
            fd,
        })
    }

    /// Flush the staging filesystem (data and metadata) so a power loss after the rename cannot
    /// expose a partial copy.
    pub fn sync(&self) -> Result<()> {
        nix::unistd::syncfs(&self.fd).at("syncfs", &self.path)
    }

    /// Rename the finished staging directory to DST; never replaces an existing DST.
    pub fn commit(self) -> Result<()> {
        let res = renameat2(
            &self.parent,
            self.staging_name.as_os_str(),
            &self.parent,
            self.dst_name.as_os_str(),
            RenameFlags::RENAME_NOREPLACE,
        );
        match res {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = if e == nix::Error::EEXIST {
                    Error::AlreadyExists { path: self.dst.clone() }
                } else {
                    Error::io("rename", &self.dst, e)
                };
                self.abandon();
                Err(err)
            }
        }
    }

    /// Remove the staging directory and everything in it. Best effort: what cannot be removed
    /// stays recognisable (and locked until we exit) for [`cleanup_staging`].
    pub fn abandon(self) {
        let _ = remove_entry(self.parent.as_fd(), &self.staging_name, &self.path);
    }
}

/// The canonical path of the copy source `src`, which must be a directory (a symlink to one is
/// followed: SRC is what the caller names, only the entries below it are never followed).
pub(super) fn source_dir(src: &Path) -> Result<PathBuf> {
    let meta = std::fs::metadata(src).at("stat", src)?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory { path: src.to_path_buf() });
    }
    src.canonicalize().at("canonicalize", src)
}

/// `.goldclone-staging.<dst-name>.<unique>`, kept within NAME_MAX.
fn staging_name_for(dst_name: &OsStr) -> OsString {
    let suffix = format!(".{}", crate::sys::unique_suffix());
    let room = 255 - STAGING_PREFIX.len() - suffix.len();
    let name = dst_name.as_bytes();
    let mut out = Vec::with_capacity(255);
    out.extend_from_slice(STAGING_PREFIX.as_bytes());
    out.extend_from_slice(&name[..name.len().min(room)]);
    out.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(out)
}

/// The name a staging directory has before it is locked: outside the staging prefix.
fn unlocked_name_for(staging_name: &OsStr) -> OsString {
    let rest = &staging_name.as_bytes()[STAGING_PREFIX.len()..];
    let mut out = b".goldclone-new.".to_vec();
    out.extend_from_slice(rest);
    OsString::from_vec(out)
}

fn strip_xattrs(fd: BorrowedFd<'_>) -> io::Result<()> {
    for name in sys::xattr::flist(fd)? {
        sys::xattr::fremove(fd, &name)?;
    }
    Ok(())
}

/// Remove staging directories left in `dir` by copies that were killed. A staging directory
/// whose writer is still running is left alone. Returns the paths removed.
pub fn cleanup_staging(dir: &Path) -> Result<Vec<PathBuf>> {
    let dirfd = openat(AT_FDCWD, dir, DIR_FLAGS, Mode::empty()).at("open", dir)?;
    let mut removed = Vec::new();
    for name in list_names(dirfd.as_fd(), dir)? {
        if !name.as_bytes().starts_with(STAGING_PREFIX.as_bytes()) {
            continue;
        }
        let path = dir.join(OsStr::from_bytes(name.as_bytes()));
        let Ok(fd) = openat(&dirfd, name.as_c_str(), DIR_FLAGS, Mode::empty()) else {
            continue; // not a directory any more, or gone: not ours to judge
        };
        if !sys::fs::try_lock_exclusive(fd.as_fd()).at("flock", &path)? {
            continue; // its writer is alive
        }
        remove_entry(dirfd.as_fd(), OsStr::from_bytes(name.as_bytes()), &path)?;
        removed.push(path);
    }
    Ok(removed)
}

/// Remove `path` and, if it is a directory, everything below it; symlinks are removed, never
/// followed, and a mount point is never crossed: removal stops there with
/// [`Error::MountPoint`] and nothing on the other side is touched. Read-only directories are
/// made writable first. A missing path is not an error.
pub fn remove_tree(path: &Path) -> Result<()> {
    let name = match path.components().next_back() {
        Some(Component::Normal(name)) => name.to_os_string(),
        _ => {
            return Err(Error::InvalidArgument {
                what: format!("refusing to remove {}", path.display()),
            })
        }
    };
    let parent_path = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = match openat(AT_FDCWD, parent_path, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::Error::ENOENT) => return Ok(()),
        Err(e) => return Err(Error::io("open", parent_path, e)),
    };
    remove_entry(parent.as_fd(), &name, path)
}

/// [`remove_tree`] of the entry `name` of the open directory `parent`; `path` is its full path,
/// for messages only: nothing is resolved through it.
pub fn remove_at(parent: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<()> {
    remove_entry(parent, name, path)
}

/// Open the directory `name` of `parent` to empty it: never through a symlink, never across a
/// mount point (EXDEV). Kernels before 5.6 lack openat2; there a plain open is compared with its
/// parent's mount id instead.
fn open_for_removal(parent: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    use rustix::fs::{OFlags, ResolveFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::NO_XDEV | ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH;
    match rustix::fs::openat2(parent, name, flags, rustix::fs::Mode::empty(), resolve) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::NOSYS) => {
            let fd = openat(parent, name, DIR_FLAGS, Mode::empty())?;
            // The mount ids where the kernel has them (5.8), else at least the device: a mount
            // of another filesystem is caught, a bind mount of the same one is not.
            let mnt = |fd: BorrowedFd<'_>| {
                sys::detect::fstatx(fd, sys::detect::MntId::Listed).ok().and_then(|s| s.mnt_id)
            };
            let dev = |fd: BorrowedFd<'_>| fstat(fd).map(|s| s.st_dev).ok();
            match (mnt(parent), mnt(fd.as_fd())) {
                (Some(a), Some(b)) if a != b => Err(nix::Error::EXDEV),
                (Some(_), Some(_)) => Ok(fd),
                _ if dev(parent) != dev(fd.as_fd()) => Err(nix::Error::EXDEV),
                _ => Ok(fd),
            }
        }
        Err(e) => Err(nix::Error::from_raw(e.raw_os_error())),
    }
}

/// Remove entry `name` of the open directory `parent`; `path` is its full path for messages.
/// A directory with all below it; absent is not an error.
pub(crate) fn remove_entry(parent: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<()> {
    match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
        Err(nix::Error::EISDIR) => remove_dir(parent, name, path),
        Err(e) => Err(Error::io("unlink", path, e)),
    }
}

/// Remove everything inside the open directory `dir` (at `path`), leaving the directory.
pub(crate) fn remove_contents(dir: BorrowedFd<'_>, path: &Path) -> Result<()> {
    make_emptyable(dir, path)?;
    for (name, _) in list_entries(dir, path)? {
        let name = OsStr::from_bytes(name.as_bytes());
        remove_entry(dir, name, &path.join(name))?;
    }
    Ok(())
}

/// Without write and search permission on a directory its entries cannot be unlinked (for a
/// caller without CAP_DAC_OVERRIDE): make it ours to empty; it is going away anyway.
fn make_emptyable(dir: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let st = fstat(dir).at("stat", path)?;
    if st.st_mode & 0o700 != 0o700 {
        fchmod(dir, Mode::from_bits_truncate((st.st_mode | 0o700) & 0o7777)).at("chmod", path)?;
    }
    Ok(())
}

/// A directory being emptied by [`remove_dir`].
struct Emptying {
    /// `None` for the tree's top directory, whose parent is the caller's fd.
    parent: Option<Arc<Emptying>>,
    name: CString,
    fd: OwnedFd,
    path: PathBuf,
    /// Subdirectories not yet removed, plus one for the listing.
    pending: AtomicUsize,
}

/// Remove the directory `name` of `parent` and everything below it, in parallel: each directory
/// is listed by one task, its files unlinked there, its subdirectories become tasks, and a
/// directory is removed when its last subdirectory is.
fn remove_dir(parent: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<()> {
    let name = CString::new(name.as_bytes()).expect("a file name has no NUL");
    let top = match open_for_removal(parent, &name) {
        Ok(fd) => fd,
        Err(nix::Error::ENOENT) => return Ok(()),
        Err(nix::Error::EXDEV) => return Err(Error::MountPoint { path: path.to_path_buf() }),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let stop = AtomicBool::new(false);
    let error: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
        stop.store(true, Ordering::Relaxed);
    };
    // Remove `node` if it was its last pending unit, then the same for its parents.
    let finish = |mut node: Arc<Emptying>| loop {
        if node.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return Ok(());
        }
        let parent_fd = node.parent.as_ref().map_or(parent, |p| p.fd.as_fd());
        match unlinkat(parent_fd, node.name.as_c_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(Error::io("rmdir", &node.path, e)),
        }
        match node.parent.clone() {
            Some(p) => node = p,
            None => return Ok(()),
        }
    };
    let empty = |node: Arc<Emptying>, push: &dyn Fn(Arc<Emptying>)| -> Result<()> {
        make_emptyable(node.fd.as_fd(), &node.path)?;
        for (child, kind) in list_entries(node.fd.as_fd(), &node.path)? {
            let child_path = node.path.join(OsStr::from_bytes(child.as_bytes()));
            if kind != Some(Type::Directory) {
                match unlinkat(&node.fd, child.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(nix::Error::ENOENT) => continue,
                    Err(nix::Error::EISDIR) => {} // d_type was unknown: a directory after all
                    Err(e) => return Err(Error::io("unlink", &child_path, e)),
                }
            }
            let fd = match open_for_removal(node.fd.as_fd(), child.as_c_str()) {
                Ok(fd) => fd,
                Err(nix::Error::ENOENT) => continue,
                Err(nix::Error::EXDEV) => return Err(Error::MountPoint { path: child_path }),
                Err(e) => return Err(Error::io("open", &child_path, e)),
            };
            node.pending.fetch_add(1, Ordering::AcqRel);
            push(Arc::new(Emptying {
                parent: Some(node.clone()),
                name: child,
                fd,
                path: child_path,
                pending: AtomicUsize::new(1),
            }));
        }
        finish(node)
    };
    let root = Arc::new(Emptying {
        parent: None,
        name,
        fd: top,
        path: path.to_path_buf(),
        pending: AtomicUsize::new(1),
    });
    super::pool::run(
        super::pool::Workers::adaptive(),
        "remove",
        &stop,
        |push| push(root),
        |node, push| {
            if let Err(e) = empty(node, push) {
                fail(e);
            }
        },
    );
    match error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Names and types of the entries of an open directory, without `.` and `..`. Read whole before
/// anything is changed in the directory (unlinking while reading may skip entries).
pub(crate) fn list_entries(
    dir: BorrowedFd<'_>,
    path: &Path,
) -> Result<Vec<(CString, Option<Type>)>> {
    let dup = dir.try_clone_to_owned().at("dup", path)?;
    let mut reader = Dir::from_fd(dup).at("opendir", path)?;
    let mut out = Vec::new();
    for entry in reader.iter() {
        let entry = entry.at("readdir", path)?;
        let name = entry.file_name();
        if is_dot_or_dotdot(name) {
            continue;
        }
        out.push((name.to_owned(), entry.file_type()));
    }
    Ok(out)
}

fn list_names(dir: BorrowedFd<'_>, path: &Path) -> Result<Vec<CString>> {
    Ok(list_entries(dir, path)?.into_iter().map(|(n, _)| n).collect())
}

pub(super) fn is_dot_or_dotdot(name: &CStr) -> bool {
    matches!(name.to_bytes(), b"." | b"..")
}
