//! The tree-copy backend: every tree is an exact copy, reflinked where the filesystem can
//! (`crate::copy`). Works on any filesystem; the fallback of every other backend.

use super::Source;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::rootdir::{self, RootDir};
use super::{
    describe, make_dir, remove_beneath, Backend, BackendKind, Generation, Identity, Presence,
    Session, Watch,
};
use serde::{Deserialize, Serialize};

use crate::copy::{self, CopyOptions};
use crate::{Context, Result};

/// Fault points only this backend reaches: a promote that consumes its session renames it.
pub(crate) const FAULT_POINTS: &[&str] = &["promote:session-taken"];

/// A tree of this backend: a directory, by its inode on the cache root's filesystem and its
/// birth time in nanoseconds where the filesystem records one (an inode number alone is reused
/// by the next directory made).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum DirIdentity {
    Dir { ino: u64, birth: Option<u64> },
}

/// The tree-copy backend: every tree is an exact copy, reflinked where the filesystem can.
#[derive(Debug)]
pub(crate) struct CopyBackend {
    pub threads: usize,
}

impl CopyBackend {
    /// Golden trees are synced before `current` may name them: after a power loss a committed
    /// generation must have its data, not empty files from delayed allocation. Sessions are not
    /// (a session does not outlive its host's crash in any useful way, and syncing would cost
    /// every setup a filesystem-wide flush).
    fn opts(&self, durable: bool, watch: &Watch) -> CopyOptions {
        watch.copy_options(CopyOptions {
            threads: self.threads,
            sync: durable,
            ..CopyOptions::default()
        })
    }

    /// Copy the open directory `src` into a new directory at `staging`; its identity.
    fn copy(
        &self,
        root: &RootDir,
        src: OwnedFd,
        src_path: &Path,
        staging: &Path,
        durable: bool,
        watch: &Watch,
    ) -> Result<Identity> {
        self.make(root, staging, watch, |dst, dst_path| {
            copy::copy_dir_into(src.as_fd(), src_path, dst, dst_path, &self.opts(durable, watch))
                .map(|_| ())
        })
    }

    /// A new directory at `staging`, filled by `fill`; its identity.
    fn make(
        &self,
        root: &RootDir,
        staging: &Path,
        _watch: &Watch,
        fill: impl FnOnce(BorrowedFd<'_>, &Path) -> Result<()>,
    ) -> Result<Identity> {
        let dst = make_dir(root, staging)?;
        let copied = fill(dst.as_fd(), &root.join(staging));
        if let Err(e) = copied {
            let _ = remove_beneath(root, staging);
            return Err(e);
        }
        dir_identity(root, &dst, staging)
    }
}

fn dir_identity(root: &RootDir, fd: &OwnedFd, rel: &Path) -> Result<Identity> {
    let e = rootdir::statx_entry(fd.as_fd(), std::ffi::OsStr::new(""))
        .at_with("stat", || root.join(rel))?;
    Ok(Identity::new(&DirIdentity::Dir { ino: e.ino, birth: e.birth }))
}

impl Backend for CopyBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Copy
    }

    fn import(
        &self,
        root: &RootDir,
        src: &Source<'_, '_>,
        _g: &Generation,
        staging: &Path,
        watch: &Watch,
    ) -> Result<Identity> {
        src.check()?;
        self.make(root, staging, watch, |dst, dst_path| {
            src.fill(dst, dst_path, &self.opts(true, watch))
        })
    }

    fn open_generation(&self, root: &RootDir, g: &Generation, _id: &Identity) -> Result<OwnedFd> {
        // A generation is a directory (a read-only subvolume on btrfs) that nothing changes.
        root.dir(&g.place)
    }

    fn create_session(
        &self,
        root: &RootDir,
        generation: &Generation,
        _recorded: &Identity,
        _session: &Session,
        staging: &Path,
        watch: &Watch,
    ) -> Result<Identity> {
        let src = root.dir(&generation.place)?;
        self.copy(root, src, &root.join(&generation.place), staging, false, watch)
    }

    fn promote(
        &self,
        root: &RootDir,
        session: &Session,
        _recorded: &Identity,
        _generation: &Generation,
        _previous: &Generation,
        staging: &Path,
        watch: &Watch,
    ) -> Result<Identity> {
        let src = root.dir(&session.place)?;
        // Synced by `seal`, after the lifecycle's edits.
        self.copy(root, src, &root.join(&session.place), staging, false, watch)
    }

    fn can_adopt_session(&self) -> bool {
        true
    }

    fn adopt_session(
        &self,
        root: &RootDir,
        session: &Session,
        recorded: &Identity,
        staging: &Path,
    ) -> Result<Identity> {
        // The same directory: its identity as a generation is its identity as a session.
        root.rename_noreplace(&session.place, staging)?;
        Ok(recorded.clone())
    }

    fn seal(&self, root: &RootDir, staging: &Path) -> Result<()> {
        // Before `current` may name it: after a power loss a committed generation must have its
        // data (see `opts`). One syncfs for the copy and the edits.
        let fd = root.dir(staging)?;
        rustix::fs::syncfs(&fd).at_with("syncfs", || root.join(staging))
    }

    fn presence(&self, root: &RootDir, place: &Path, id: &Identity) -> Result<Presence> {
        let Some(DirIdentity::Dir { ino, birth }) = id.get() else { return Ok(id.foreign()) };
        let root_dev = rustix::fs::fstat(root.fd()).map_or(0, |st| st.st_dev);
        // Both inode and birth time: an inode number is reused by the next directory made.
        let same_birth = |b: Option<u64>| birth.is_none() || b.is_none() || b == birth;
        Ok(match root.entry(place)? {
            None => Presence::Absent,
            Some(e) if e.is_dir() && e.ino == ino && e.dev == root_dev && same_birth(e.birth) => {
                Presence::Here
            }
            Some(e) => Presence::Other(describe(&e, &format!("directory inode {ino}"))),
        })
    }

    fn discard_session(
        &self,
        root: &RootDir,
        _s: &Session,
        staging: &Path,
        _ours: bool,
    ) -> Result<()> {
        remove_beneath(root, staging)
    }

    fn discard_generation(
        &self,
        root: &RootDir,
        generation: &Generation,
        staging: &Path,
        recorded: Option<&Identity>,
    ) -> Result<()> {
        remove_beneath(root, staging)?;
        if let Some(id) = recorded {
            if self.presence(root, &generation.place, id)? == Presence::Here {
                remove_beneath(root, &generation.place)?;
            }
        }
        Ok(())
    }
}
