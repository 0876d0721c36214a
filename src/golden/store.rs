//! The primitives a backend provides to the lifecycle: make a golden tree from a directory, a
//! writable session from a golden tree, a golden tree from a session, and remove any of them.
//! Every call either completes or leaves only things the lifecycle's recovery removes.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::Mode;

use super::BackendKind;
use crate::copy::{self, CopyOptions};
use crate::sys::btrfs::BTRFS_FIRST_FREE_OBJECTID;
use crate::{sys, Error, Result};

/// Name prefix of the directory an import fills before it becomes a generation. Not the copy's
/// staging prefix: `goldclone cleanup` must not take a running import for a leftover (these are
/// not locked); the lifecycle removes them under the project's exclusive lock.
pub(crate) const IMPORT_PREFIX: &str = ".goldclone-import.";

/// A tree the lifecycle manages: a generation or a session of a project, and the path where
/// it is (or would be) stored or mounted.
#[derive(Debug, Clone)]
pub(crate) struct Tree {
    pub project: String,
    pub id: TreeId,
    pub path: PathBuf,
    /// For a generation: the current generation when the tree was named. ZFS keeps every live
    /// generation's snapshot on the current generation's head.
    pub head: Option<u64>,
}

/// Which tree of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TreeId {
    Generation(u64),
    Session(String),
}

/// What a backend does for the lifecycle. A destination tree does not exist when called.
/// Every call either completes or leaves only what `discard`, `remove_trash` and
/// `recover_golden_from` clean up.
pub(crate) trait Store: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> BackendKind;
    /// Generation `golden` with the contents of the directory `src`.
    fn import(&self, src: &Path, golden: &Tree) -> Result<()>;
    /// A writable `session` from the generation `golden`.
    fn session_from(&self, golden: &Tree, session: &Tree) -> Result<()>;
    /// Generation `golden` from the quiesced `session`; `previous` is the current generation.
    fn golden_from(&self, session: &Tree, golden: &Tree, previous: &Tree) -> Result<()>;
    /// After a crash or an error inside `golden_from`: finish it (`true`: `golden` is complete
    /// and may be committed) or undo it (`false`). By default, undo.
    fn recover_golden_from(&self, session: &Tree, golden: &Tree, previous: &Tree) -> Result<bool> {
        let _ = (session, previous);
        self.discard(golden)?;
        Ok(false)
    }
    /// Whether the tree exists (complete or not).
    fn exists(&self, tree: &Tree) -> Result<bool> {
        match std::fs::symlink_metadata(&tree.path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("stat", &tree.path, e)),
        }
    }
    /// Make the tree vanish from its place in one atomic step, so that of several concurrent
    /// callers exactly one succeeds. By default it moves to `trash`, to be removed with
    /// [`remove_trash`](Store::remove_trash) after the caller's bookkeeping.
    fn retire(&self, tree: &Tree, trash: &Path) -> Result<Retired> {
        rename_to_trash(&tree.path, trash)
    }
    /// Remove a partial or orphaned tree where it is.
    fn discard(&self, tree: &Tree) -> Result<()> {
        self.remove_trash(&tree.path)
    }
    /// Remove something this store left at `path`: a retired tree or a staging leftover.
    fn remove_trash(&self, path: &Path) -> Result<()>;
    /// Bytes the tree occupies, as this backend counts them.
    fn size(&self, tree: &Tree) -> u64 {
        disk_usage(&tree.path)
    }
    /// Sessions of `project` this store holds apart from their directories (ZFS datasets), so
    /// that gc finds one whose directory, metadata and intent are all gone. Directory-based
    /// stores have none: their trees are the directories gc lists anyway.
    fn session_names(&self, project: &str) -> Result<Vec<String>> {
        let _ = project;
        Ok(Vec::new())
    }
}

/// What [`Store::retire`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Retired {
    /// Moved here; remove it with [`Store::remove_trash`].
    Moved(PathBuf),
    /// Removed in place already.
    Removed,
    /// Was not there (another caller retired it).
    Absent,
}

fn rename_to_trash(path: &Path, trash: &Path) -> Result<Retired> {
    match std::fs::rename(path, trash) {
        Ok(()) => Ok(Retired::Moved(trash.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Retired::Absent),
        Err(e) => Err(Error::io("rename", path, e)),
    }
}

/// Bytes allocated under `path` (st_blocks), each inode once; 0 where unreadable.
pub(crate) fn disk_usage(path: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        total += m.blocks() * 512;
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// The tree-copy backend: every tree is an exact copy, reflinked where the filesystem can.
#[derive(Debug)]
pub(crate) struct CopyStore {
    pub threads: usize,
}

impl CopyStore {
    /// Golden trees are synced before `current` may name them: after a power loss a committed
    /// generation must have its data, not empty files from delayed allocation. Sessions are not
    /// (a session does not outlive its host's crash in any useful way, and syncing would cost
    /// every setup a filesystem-wide flush).
    fn opts(&self, durable: bool) -> CopyOptions {
        CopyOptions { threads: self.threads, sync: durable, ..CopyOptions::default() }
    }
}

impl Store for CopyStore {
    fn kind(&self) -> BackendKind {
        BackendKind::Copy
    }
    fn import(&self, src: &Path, golden: &Tree) -> Result<()> {
        copy::copy_tree(src, &golden.path, &self.opts(true)).map(drop)
    }
    fn session_from(&self, golden: &Tree, session: &Tree) -> Result<()> {
        copy::copy_tree(&golden.path, &session.path, &self.opts(false)).map(drop)
    }
    fn golden_from(&self, session: &Tree, golden: &Tree, _previous: &Tree) -> Result<()> {
        copy::copy_tree(&session.path, &golden.path, &self.opts(true)).map(drop)
    }
    fn remove_trash(&self, path: &Path) -> Result<()> {
        copy::remove_tree(path)
    }
}

/// The btrfs backend: golden trees are read-only subvolumes, sessions writable snapshots of them,
/// promotion a read-only snapshot of the session. Only `import` copies (into a new subvolume).
#[derive(Debug)]
pub(crate) struct BtrfsStore {
    pub threads: usize,
}

fn split(path: &Path) -> Result<(&Path, CString)> {
    let parent = path.parent().ok_or_else(|| Error::InvalidArgument {
        what: format!("{} has no parent", path.display()),
    })?;
    let name = path.file_name().ok_or_else(|| Error::InvalidArgument {
        what: format!("{} has no name", path.display()),
    })?;
    let name = CString::new(name.as_bytes())
        .map_err(|_| Error::InvalidArgument { what: "NUL in a name".into() })?;
    Ok((parent, name))
}

fn open_dir(path: &Path) -> Result<std::os::fd::OwnedFd> {
    openat(AT_FDCWD, path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| Error::io("open", path, std::io::Error::from(e)))
}

impl BtrfsStore {
    fn snapshot(&self, from: &Path, dst: &Path, read_only: bool) -> Result<()> {
        let (parent, name) = split(dst)?;
        let source = open_dir(from)?;
        let parent_fd = open_dir(parent)?;
        sys::btrfs::snapshot(source.as_fd(), parent_fd.as_fd(), &name, read_only)
            .map_err(|e| Error::io("btrfs snapshot", dst, e))
    }
}

impl Store for BtrfsStore {
    fn kind(&self) -> BackendKind {
        BackendKind::Btrfs
    }

    fn import(&self, src: &Path, golden: &Tree) -> Result<()> {
        let dst = golden.path.as_path();
        // Built under a staging name, made read-only, then renamed: `dst` appears complete or not
        // at all. A crash leaves the staging subvolume, which recovery removes.
        let (parent, name) = split(dst)?;
        let staging = parent.join(format!("{IMPORT_PREFIX}{}", name.to_string_lossy()));
        let (_, staging_name) = split(&staging)?;
        let parent_fd = open_dir(parent)?;
        let _ = self.remove_trash(&staging);
        sys::btrfs::subvol_create(parent_fd.as_fd(), &staging_name)
            .map_err(|e| Error::io("btrfs subvolume create", &staging, e))?;
        // Synced before it is made read-only and renamed into place (see CopyStore::opts).
        let filled = copy::copy_into(
            src,
            &staging,
            &CopyOptions { threads: self.threads, sync: true, ..CopyOptions::default() },
        )
        .and_then(|_| {
            let fd = open_dir(&staging)?;
            sys::btrfs::set_read_only(fd.as_fd(), true)
                .map_err(|e| Error::io("btrfs set read-only", &staging, e))
        })
        .and_then(|()| std::fs::rename(&staging, dst).map_err(|e| Error::io("rename", dst, e)));
        if filled.is_err() {
            let _ = self.remove_trash(&staging);
        }
        filled
    }

    fn session_from(&self, golden: &Tree, session: &Tree) -> Result<()> {
        self.snapshot(&golden.path, &session.path, false)
    }

    fn golden_from(&self, session: &Tree, golden: &Tree, _previous: &Tree) -> Result<()> {
        self.snapshot(&session.path, &golden.path, true)
    }

    /// A subvolume is deleted in place: deleting is itself atomic, and a read-only one cannot
    /// be renamed (its `..` entry cannot change).
    fn retire(&self, tree: &Tree, trash: &Path) -> Result<Retired> {
        let path = tree.path.as_path();
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() && m.ino() == BTRFS_FIRST_FREE_OBJECTID => {
                let (parent, name) = split(path)?;
                let parent_fd = open_dir(parent)?;
                match sys::btrfs::subvol_delete(parent_fd.as_fd(), &name) {
                    Ok(()) => Ok(Retired::Removed),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Retired::Absent),
                    Err(e) => Err(Error::io("btrfs subvolume delete", path, e)),
                }
            }
            Ok(_) => rename_to_trash(path, trash),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Retired::Absent),
            Err(e) => Err(Error::io("stat", path, e)),
        }
    }

    fn remove_trash(&self, path: &Path) -> Result<()> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        if meta.is_dir() && meta.ino() == BTRFS_FIRST_FREE_OBJECTID {
            let (parent, name) = split(path)?;
            let parent_fd = open_dir(parent)?;
            // Deleting a subvolume takes its whole tree at once, read-only or not.
            return sys::btrfs::subvol_delete(parent_fd.as_fd(), &name)
                .map_err(|e| Error::io("btrfs subvolume delete", path, e));
        }
        copy::remove_tree(path)
    }
}
