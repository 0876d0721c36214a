//! The parallel walk: directory and file-batch tasks on the work-stealing [`pool`].
//!
//! Memory stays bounded by keeping no per-entry state: a directory is a [`DirNode`] (two open
//! fds and its source stat) only while tasks for its entries are queued or running, and the
//! LIFO local queues make the walk depth-first, so few nodes are alive at once. The one map that
//! grows with the tree is the hardlink map, and it holds only files with more than one link.
//!
//! A directory's own metadata is applied when the last of its direct entries has been created
//! (`pending` reaches zero): after that nothing changes its mtime, and its default ACL and setgid
//! bit can no longer leak into entries we create.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use nix::dir::Type;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, mknodat, FileStat, Mode, SFlag};
use nix::unistd::{linkat, symlinkat};

use super::data::{self, CapsCache, Method};
use super::meta::{self, MetaError};
use super::pool;
use super::staging::{list_entries, open_dir_noatime, DIR_FLAGS};
use super::{CancelToken, CopyOptions, CopyStats, Progress};
use crate::{Context, Error, Result};

/// Entries of one directory handed to a worker at once: large enough to amortise the task,
/// small enough that a directory of 100K files spreads over all workers.
const BATCH: usize = 64;

/// A directory being copied.
struct DirNode {
    /// Path relative to the tree root ("" for the root).
    rel: PathBuf,
    src: OwnedFd,
    dst: OwnedFd,
    st: FileStat,
    /// Direct entries still being created, plus one for the listing itself.
    pending: AtomicUsize,
}

enum Task {
    /// A directory already created in the destination (by its parent's listing), to list.
    Dir { parent: Arc<DirNode>, name: CString },
    /// Non-directory entries of a listed directory.
    Entries { dir: Arc<DirNode>, entries: Vec<(CString, Option<Type>)> },
}

/// Outcome of a hardlink group's first copy, shared with the other links.
type LinkSlot = Arc<OnceLock<std::result::Result<PathBuf, ()>>>;

#[derive(Default)]
struct Counters {
    entries: AtomicU64,
    files: AtomicU64,
    dirs: AtomicU64,
    symlinks: AtomicU64,
    specials: AtomicU64,
    hardlinks: AtomicU64,
    bytes: AtomicU64,
    cloned: AtomicU64,
    copy_file_range: AtomicU64,
    sparse: AtomicU64,
    read_write: AtomicU64,
}

/// Everything the workers share.
pub(super) struct Walk<'a> {
    src_root: &'a Path,
    /// The source root, already open (else it is opened by `src_root`).
    src_fd: Option<BorrowedFd<'a>>,
    staging_root: &'a Path,
    staging_fd: BorrowedFd<'a>,
    dst_dev: u64,
    privileged: bool,
    /// Who owns what we create, so chown is skipped where it would change nothing.
    creator: (u32, u32),
    /// The process umask, so chmod is skipped where create already set the final mode.
    umask: Option<u32>,
    clone_min_size: u64,
    caps: CapsCache,
    links: Mutex<HashMap<(u64, u64), LinkSlot>>,
    counters: Counters,
    progress: Option<&'a Progress>,
    cancel: Option<&'a CancelToken>,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
}

fn join_name(base: &Path, name: &CStr) -> PathBuf {
    base.join(OsStr::from_bytes(name.to_bytes()))
}

/// The path for a path-based call (xattrs of a symlink or device node, which cannot be opened
/// for them) on entry `name` of the open directory `dir`: the name under the directory's
/// `/proc/self/fd` link. Never a path from the tree's root, which a rename or a symlink could
/// redirect meanwhile and which does not exist for a mount that no path shows (the image
/// backend fills its images through detached ones). `full`, that path from the root, only
/// where /proc is not mounted.
pub(crate) fn entry_path(dir: BorrowedFd<'_>, name: &CStr, full: &Path) -> Result<CString> {
    static PROC_FD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*PROC_FD.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
        return cpath(full);
    }
    let mut p = format!("/proc/self/fd/{}/", std::os::fd::AsRawFd::as_raw_fd(&dir)).into_bytes();
    p.extend_from_slice(name.to_bytes());
    CString::new(p).map_err(|_| Error::InvalidArgument {
        what: format!("path {} contains a NUL byte", full.display()),
    })
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::InvalidArgument {
        what: format!("path {} contains a NUL byte", p.display()),
    })
}

impl<'a> Walk<'a> {
    pub fn new(
        src_root: &'a Path,
        src_fd: Option<BorrowedFd<'a>>,
        staging_root: &'a Path,
        staging_fd: BorrowedFd<'a>,
        opts: &'a CopyOptions,
        progress: Option<&'a Progress>,
    ) -> Result<Self> {
        let dst_dev = fstat(staging_fd).at("stat", staging_root)?.st_dev;
        Ok(Walk {
            src_root,
            src_fd,
            staging_root,
            staging_fd,
            dst_dev,
            privileged: nix::unistd::geteuid().is_root(),
            creator: (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()),
            umask: current_umask(),
            clone_min_size: opts.clone_min_size,
            caps: CapsCache::default(),
            links: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            progress,
            cancel: opts.cancel.as_ref(),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        })
    }

    /// Copy the whole tree with `workers`. The root's own metadata is applied last.
    pub fn run(self, workers: pool::Workers) -> Result<CopyStats> {
        pool::run(
            workers,
            "copy",
            &self.failed,
            |push| match self.open_root() {
                Ok(root) => self.list_dir(root, push),
                Err(e) => self.fail(e),
            },
            |task, push| self.run_task(task, push),
        );
        if let Some(err) = self.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(err);
        }
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Ok(CopyStats {
            entries: get(&c.entries),
            files: get(&c.files),
            dirs: get(&c.dirs),
            symlinks: get(&c.symlinks),
            specials: get(&c.specials),
            hardlinks: get(&c.hardlinks),
            bytes: get(&c.bytes),
            cloned: get(&c.cloned),
            copy_file_range: get(&c.copy_file_range),
            sparse: get(&c.sparse),
            read_write: get(&c.read_write),
            threads: u32::try_from(workers.max()).unwrap_or(u32::MAX),
            elapsed_ns: 0,
        })
    }

    fn run_task(&self, task: Task, push: &dyn Fn(Task)) {
        if self.cancel.is_some_and(CancelToken::is_cancelled) {
            self.fail(Error::Cancelled);
            return;
        }
        match task {
            Task::Dir { parent, name } => match self.open_dir(&parent, &name) {
                Ok(node) => self.list_dir(node, push),
                Err(e) => self.fail(e),
            },
            Task::Entries { dir, entries } => {
                for (name, kind) in entries {
                    if self.failed.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Err(e) = self.copy_entry(&dir, &name, kind) {
                        self.fail(e);
                        return;
                    }
                }
                self.entry_done(&dir);
            }
        }
    }

    /// Record the first error and stop every worker.
    fn fail(&self, err: Error) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(err);
        }
        self.failed.store(true, Ordering::Release);
    }

    fn count(&self, counter: &AtomicU64, bytes: u64) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.counters.entries.fetch_add(1, Ordering::Relaxed);
        if bytes > 0 {
            self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if let Some(p) = self.progress {
            p.entries.fetch_add(1, Ordering::Relaxed);
            if bytes > 0 {
                p.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
        }
    }

    fn open_src_dir<P: Into<PathBuf>>(
        &self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        path: impl FnOnce() -> P,
    ) -> Result<OwnedFd> {
        open_dir_noatime(parent, name).at_with("open", path)
    }

    fn open_root(&self) -> Result<Arc<DirNode>> {
        let root = self.src_root;
        let src = match self.src_fd {
            Some(fd) => fd.try_clone_to_owned().at("dup", root)?,
            None => self.open_src_dir(nix::fcntl::AT_FDCWD, &cpath(root)?, || root)?,
        };
        let st = fstat(&src).at("stat", root)?;
        let dst = self.staging_fd.try_clone_to_owned().at("dup", self.staging_root)?;
        self.count(&self.counters.dirs, 0);
        Ok(Arc::new(DirNode { rel: PathBuf::new(), src, dst, st, pending: AtomicUsize::new(1) }))
    }

    fn open_dir(&self, parent: &DirNode, name: &CStr) -> Result<Arc<DirNode>> {
        let rel = join_name(&parent.rel, name);
        let src = self.open_src_dir(parent.src.as_fd(), name, || self.src_root.join(&rel))?;
        let st = fstat(&src).at_with("stat", || self.src_root.join(&rel))?;
        let dst = openat(&parent.dst, name, DIR_FLAGS, Mode::empty())
            .at_with("open", || self.staging_root.join(&rel))?;
        self.count(&self.counters.dirs, 0);
        Ok(Arc::new(DirNode { rel, src, dst, st, pending: AtomicUsize::new(1) }))
    }

    /// Create the directory's subdirectories (queued for listing) and queue its other entries in
    /// batches; the last batch runs here.
    fn list_dir(&self, node: Arc<DirNode>, push: &dyn Fn(Task)) {
        let src_path = || self.src_root.join(&node.rel);
        let entries = match list_entries(node.src.as_fd(), &src_path()) {
            Ok(e) => e,
            Err(e) => return self.fail(e),
        };
        let mut batch = Vec::new();
        for (name, kind) in entries {
            let kind = match kind {
                Some(k) => Some(k),
                // DT_UNKNOWN: some filesystems do not fill d_type; ask.
                None => match fstatat(&node.src, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => type_of(st.st_mode),
                    Err(e) => {
                        return self.fail(Error::io("stat", join_name(&src_path(), &name), e))
                    }
                },
            };
            if kind == Some(Type::Directory) {
                if let Err(e) = mkdirat(&node.dst, name.as_c_str(), Mode::from_bits_truncate(0o700))
                {
                    let path = join_name(&self.staging_root.join(&node.rel), &name);
                    return self.fail(Error::io("mkdir", path, e));
                }
                push(Task::Dir { parent: node.clone(), name });
            } else {
                batch.push((name, kind));
                if batch.len() == BATCH {
                    node.pending.fetch_add(1, Ordering::AcqRel);
                    push(Task::Entries { dir: node.clone(), entries: std::mem::take(&mut batch) });
                }
            }
        }
        for (name, kind) in batch {
            if let Err(e) = self.copy_entry(&node, &name, kind) {
                return self.fail(e);
            }
        }
        self.entry_done(&node);
    }

    /// One of the directory's pending units is done; the last one applies its metadata.
    fn entry_done(&self, node: &DirNode) {
        if node.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        if let Err(e) =
            meta::apply_fd(node.src.as_fd(), node.dst.as_fd(), &node.st, self.privileged, None)
        {
            self.fail(self.meta_error(e, &self.staging_root.join(&node.rel)));
        }
    }

    fn meta_error(&self, e: MetaError, path: &Path) -> Error {
        match e.attr {
            Some(attr) => {
                Error::Xattr { op: e.op, attr, path: path.to_path_buf(), source: e.source }
            }
            None => Error::io(e.op, path, e.source),
        }
    }

    /// Copy one non-directory entry, or link it to its group's first copy.
    fn copy_entry(&self, dir: &DirNode, name: &CStr, kind: Option<Type>) -> Result<()> {
        let src_path = || join_name(&self.src_root.join(&dir.rel), name);
        // A regular file is opened first and stat'ed through the fd (one lookup, no race between
        // stat and open); everything else is stat'ed without following.
        let (st, file) = if kind == Some(Type::File) {
            let fd = open_src_file(dir.src.as_fd(), name).at_with("open", src_path)?;
            let st = fstat(&fd).at_with("stat", src_path)?;
            (st, Some(fd))
        } else {
            let st =
                fstatat(&dir.src, name, AtFlags::AT_SYMLINK_NOFOLLOW).at_with("stat", src_path)?;
            (st, None)
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(Error::io(
                "copy",
                src_path(),
                io::Error::other("entry turned into a directory during the copy"),
            ));
        }
        if st.st_nlink < 2 {
            return self.create_entry(dir, name, &st, file);
        }
        let slot: LinkSlot = {
            let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
            links.entry((st.st_dev, st.st_ino)).or_default().clone()
        };
        let mut first = false;
        let outcome = slot.get_or_init(|| {
            first = true;
            match self.create_entry(dir, name, &st, file) {
                Ok(()) => Ok(join_name(&dir.rel, name)),
                Err(e) => {
                    self.fail(e);
                    Err(())
                }
            }
        });
        match (first, outcome) {
            (true, Ok(_)) => Ok(()),
            (false, Ok(target)) => {
                linkat(
                    self.staging_fd,
                    target.as_path(),
                    &dir.dst,
                    name,
                    AtFlags::empty(), // never follow: the target may itself be a symlink
                )
                .map_err(|e| {
                    Error::io("link", join_name(&self.staging_root.join(&dir.rel), name), e)
                })?;
                self.count(&self.counters.hardlinks, 0);
                Ok(())
            }
            // The first copy failed and recorded why; this link just stops.
            (_, Err(())) => Err(Error::Cancelled),
        }
    }

    fn create_entry(
        &self,
        dir: &DirNode,
        name: &CStr,
        st: &FileStat,
        file: Option<OwnedFd>,
    ) -> Result<()> {
        let dst_path = || join_name(&self.staging_root.join(&dir.rel), name);
        let src_path = || join_name(&self.src_root.join(&dir.rel), name);
        match (st.st_mode & libc::S_IFMT, file) {
            (libc::S_IFREG, Some(src)) => {
                // Created with its final permission bits where the umask lets them through (the
                // write fd is ours whatever the mode), so most files need no chmod afterwards.
                let perm = st.st_mode & 0o777;
                let dst = openat(
                    &dir.dst,
                    name,
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(perm),
                )
                .at_with("create", dst_path)?;
                let size = st.st_size as u64;
                let sparse = (st.st_blocks as u64) * 512 < size;
                let caps = self.caps.get(st.st_dev, self.dst_dev);
                let method = data::copy_data(
                    &caps,
                    src.as_fd(),
                    dst.as_fd(),
                    size,
                    sparse,
                    self.clone_min_size,
                )
                .map_err(|(op, side, e)| match side {
                    data::Side::Source => Error::io(op, src_path(), e),
                    data::Side::Destination => Error::io(op, dst_path(), e),
                    data::Side::Both => {
                        Error::Transfer { op, src: src_path(), dst: dst_path(), source: e }
                    }
                })?;
                let created =
                    meta::Created { owner: self.creator, mode: self.umask.map(|u| perm & !u) };
                meta::apply_fd(src.as_fd(), dst.as_fd(), st, self.privileged, Some(created))
                    .map_err(|e| self.meta_error(e, &dst_path()))?;
                let c = &self.counters;
                match method {
                    Method::Empty => None,
                    Method::Cloned => Some(&c.cloned),
                    Method::CopyFileRange => Some(&c.copy_file_range),
                    Method::Sparse => Some(&c.sparse),
                    Method::ReadWrite => Some(&c.read_write),
                }
                .map(|m| m.fetch_add(1, Ordering::Relaxed));
                self.count(&c.files, size);
                Ok(())
            }
            (libc::S_IFREG, None) => {
                // d_type said otherwise; it changed between listing and stat: open it now.
                let src = open_src_file(dir.src.as_fd(), name).at_with("open", src_path)?;
                self.create_entry(dir, name, st, Some(src))
            }
            (libc::S_IFLNK, _) => {
                let target = readlinkat(&dir.src, name).at_with("readlink", src_path)?;
                symlinkat(target.as_os_str(), &dir.dst, name).at_with("symlink", dst_path)?;
                self.apply_at(dir, name, st)?;
                self.count(&self.counters.symlinks, 0);
                Ok(())
            }
            (fmt @ (libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK), _) => {
                // Overlay whiteouts are character devices 0/0: st_rdev carries major/minor as is.
                mknodat(
                    &dir.dst,
                    name,
                    SFlag::from_bits_truncate(fmt),
                    Mode::from_bits_truncate(0o600),
                    st.st_rdev,
                )
                .at_with("mknod", dst_path)?;
                self.apply_at(dir, name, st)?;
                self.count(&self.counters.specials, 0);
                Ok(())
            }
            (fmt, _) => Err(Error::Unsupported {
                what: format!("{}: unknown file type {:o}", src_path().display(), fmt),
            }),
        }
    }

    fn apply_at(&self, dir: &DirNode, name: &CStr, st: &FileStat) -> Result<()> {
        let dst_path = join_name(&self.staging_root.join(&dir.rel), name);
        let src_path = join_name(&self.src_root.join(&dir.rel), name);
        meta::apply_at(
            dir.dst.as_fd(),
            name,
            &entry_path(dir.src.as_fd(), name, &src_path)?,
            &entry_path(dir.dst.as_fd(), name, &dst_path)?,
            st,
            self.privileged,
        )
        .map_err(|e| self.meta_error(e, &dst_path))
    }
}

fn open_src_file(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<OwnedFd> {
    use rustix::fs::OFlags;
    // O_NONBLOCK: if the entry was swapped for a fifo since listing, open must not hang.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    crate::sys::fs::openat_noatime(dir, name, flags)
}

/// The process umask, from /proc (reading it with umask(2) would briefly change it for every
/// thread). `None` when /proc does not say: then every file gets an explicit chmod.
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
}

fn type_of(mode: libc::mode_t) -> Option<Type> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFDIR => Type::Directory,
        libc::S_IFREG => Type::File,
        libc::S_IFLNK => Type::Symlink,
        libc::S_IFCHR => Type::CharacterDevice,
        libc::S_IFBLK => Type::BlockDevice,
        libc::S_IFIFO => Type::Fifo,
        libc::S_IFSOCK => Type::Socket,
        _ => return None,
    })
}
