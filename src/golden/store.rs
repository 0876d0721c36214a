//! The primitives a backend provides to the lifecycle: make a golden tree from a directory, a
//! writable session from a golden tree, a golden tree from a session, and remove any of them.
//! Every call either completes or leaves only things the lifecycle's recovery removes.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::Mode;

use super::BackendKind;
use crate::copy::{self, CopyOptions};
use crate::sys::btrfs::BTRFS_FIRST_FREE_OBJECTID;
use crate::{sys, Error, Result};

/// What a backend does for the lifecycle. Paths are where the lifecycle wants each tree; none of
/// the destinations exists when called.
pub(crate) trait Store: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> BackendKind;
    /// A golden tree at `dst` with the contents of the directory `src`.
    fn import(&self, src: &Path, dst: &Path) -> Result<()>;
    /// A writable session tree at `dst` from the golden tree `golden`.
    fn session_from(&self, golden: &Path, dst: &Path) -> Result<()>;
    /// A golden tree at `dst` from the (quiesced) session tree `session`.
    fn golden_from(&self, session: &Path, dst: &Path) -> Result<()>;
    /// Remove a tree this store made (or a leftover of one), wherever it has been moved.
    fn remove(&self, path: &Path) -> Result<()>;
    /// Make the tree at `path` vanish from its place in one atomic step, so that of several
    /// concurrent callers exactly one succeeds. Returns where it went, if somewhere (`trash`)
    /// to be removed later; `None` if it is gone already (or was never there).
    fn retire(&self, path: &Path, trash: &Path) -> Result<Option<std::path::PathBuf>> {
        match std::fs::rename(path, trash) {
            Ok(()) => Ok(Some(trash.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("rename", path, e)),
        }
    }
}

/// The tree-copy backend: every tree is an exact copy, reflinked where the filesystem can.
#[derive(Debug)]
pub(crate) struct CopyStore {
    pub threads: usize,
}

impl CopyStore {
    fn opts(&self) -> CopyOptions {
        CopyOptions {
            threads: self.threads,
            ..CopyOptions::default()
        }
    }
}

impl Store for CopyStore {
    fn kind(&self) -> BackendKind {
        BackendKind::Copy
    }
    fn import(&self, src: &Path, dst: &Path) -> Result<()> {
        copy::copy_tree(src, dst, &self.opts()).map(drop)
    }
    fn session_from(&self, golden: &Path, dst: &Path) -> Result<()> {
        copy::copy_tree(golden, dst, &self.opts()).map(drop)
    }
    fn golden_from(&self, session: &Path, dst: &Path) -> Result<()> {
        copy::copy_tree(session, dst, &self.opts()).map(drop)
    }
    fn remove(&self, path: &Path) -> Result<()> {
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
    let name = CString::new(name.as_bytes()).map_err(|_| Error::InvalidArgument {
        what: "NUL in a name".into(),
    })?;
    Ok((parent, name))
}

fn open_dir(path: &Path) -> Result<std::os::fd::OwnedFd> {
    openat(
        AT_FDCWD,
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
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

    fn import(&self, src: &Path, dst: &Path) -> Result<()> {
        // Built under a staging name, made read-only, then renamed: `dst` appears complete or not
        // at all. A crash leaves the staging subvolume, which recovery removes.
        let (parent, name) = split(dst)?;
        let staging = parent.join(format!(
            "{}{}",
            copy::STAGING_PREFIX,
            name.to_string_lossy()
        ));
        let (_, staging_name) = split(&staging)?;
        let parent_fd = open_dir(parent)?;
        let _ = self.remove(&staging);
        sys::btrfs::subvol_create(parent_fd.as_fd(), &staging_name)
            .map_err(|e| Error::io("btrfs subvolume create", &staging, e))?;
        let filled = copy::copy_into(
            src,
            &staging,
            &CopyOptions {
                threads: self.threads,
                ..CopyOptions::default()
            },
        )
        .and_then(|_| {
            let fd = open_dir(&staging)?;
            sys::btrfs::set_read_only(fd.as_fd(), true)
                .map_err(|e| Error::io("btrfs set read-only", &staging, e))
        })
        .and_then(|()| std::fs::rename(&staging, dst).map_err(|e| Error::io("rename", dst, e)));
        if filled.is_err() {
            let _ = self.remove(&staging);
        }
        filled
    }

    fn session_from(&self, golden: &Path, dst: &Path) -> Result<()> {
        self.snapshot(golden, dst, false)
    }

    fn golden_from(&self, session: &Path, dst: &Path) -> Result<()> {
        self.snapshot(session, dst, true)
    }

    /// A subvolume is deleted in place: deleting is itself atomic, and a read-only one cannot
    /// be renamed (its `..` entry cannot change).
    fn retire(&self, path: &Path, trash: &Path) -> Result<Option<std::path::PathBuf>> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() && m.ino() == BTRFS_FIRST_FREE_OBJECTID => {
                let (parent, name) = split(path)?;
                let parent_fd = open_dir(parent)?;
                match sys::btrfs::subvol_delete(parent_fd.as_fd(), &name) {
                    Ok(()) => Ok(None),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
                    Err(e) => Err(Error::io("btrfs subvolume delete", path, e)),
                }
            }
            Ok(_) => match std::fs::rename(path, trash) {
                Ok(()) => Ok(Some(trash.to_path_buf())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io("rename", path, e)),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat", path, e)),
        }
    }

    fn remove(&self, path: &Path) -> Result<()> {
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
