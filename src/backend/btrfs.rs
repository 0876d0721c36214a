//! The btrfs backend: golden trees are read-only subvolumes, sessions writable snapshots of
//! them, promotion a read-only snapshot of the session, all by ioctl. Only `import` copies (into a
//! new subvolume). A tree is identified by its subvolume id.

use super::Source;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::rootdir::RootDir;
use serde::{Deserialize, Serialize};

use super::{
    cannot_serve, describe, remove_beneath, Backend, BackendKind, Generation, Identity, Presence,
    Retired, Session, Watch,
};
use crate::copy::CopyOptions;
use crate::detect::Detection;
use crate::sys::btrfs::BTRFS_FIRST_FREE_OBJECTID;
use crate::{sys, Context, Error, Result};

/// A tree of this backend: a subvolume, by its subvolume (tree) id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum SubvolumeIdentity {
    Subvolume { id: u64 },
}

/// Whether a cache root can be served by btrfs: it must be on btrfs.
pub(crate) fn check(root: &Path, found: &Detection) -> Result<()> {
    match found.backend {
        crate::detect::Backend::Btrfs { .. } => Ok(()),
        _ => Err(cannot_serve(BackendKind::Btrfs, root, found, "needs the cache root on btrfs")),
    }
}

/// The btrfs backend: golden trees are read-only subvolumes, sessions writable snapshots of them,
/// promotion a read-only snapshot of the session. Only `import` copies (into a new subvolume).
#[derive(Debug)]
pub(crate) struct BtrfsBackend {
    pub threads: usize,
}

fn cname(name: &std::ffi::OsStr) -> Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| Error::InvalidArgument { what: "NUL in a name".into() })
}

impl BtrfsBackend {
    /// Snapshot the subvolume at `from` as `dst`; its identity.
    fn snapshot(
        &self,
        root: &RootDir,
        from: &Path,
        dst: &Path,
        read_only: bool,
    ) -> Result<Identity> {
        let source = root.dir(from)?;
        let (parent, name) = root.parent(dst)?;
        sys::btrfs::snapshot(source.as_fd(), parent.as_fd(), &cname(name)?, read_only)
            .at_with("btrfs snapshot", || root.join(dst))?;
        self.identity(root, dst)
    }

    /// Fill the new subvolume at `staging` with `src` (`onto_base`: it is a snapshot of an
    /// increment's base, which the increment changes), synced before it is made read-only
    /// and published (see CopyStore::opts); its identity. On error it is removed.
    fn fill_and_seal(
        &self,
        root: &RootDir,
        src: &Source<'_, '_>,
        staging: &Path,
        onto_base: bool,
        watch: &Watch,
    ) -> Result<Identity> {
        let filled = root.dir(staging).and_then(|dst| {
            let (dst_path, opts) = (
                root.join(staging),
                watch.copy_options(CopyOptions {
                    threads: self.threads,
                    sync: true,
                    ..CopyOptions::default()
                }),
            );
            if onto_base {
                src.fill_onto_base(dst.as_fd(), &dst_path, &opts)?;
            } else {
                src.fill(dst.as_fd(), &dst_path, &opts)?;
            }
            sys::btrfs::set_read_only(dst.as_fd(), true)
                .at_with("btrfs set read-only", || root.join(staging))
        });
        if let Err(e) = filled {
            let _ = self.remove(root, staging);
            return Err(e);
        }
        self.identity(root, staging)
    }

    fn identity(&self, root: &RootDir, rel: &Path) -> Result<Identity> {
        let fd = root.dir(rel)?;
        let id = sys::btrfs::btrfs_subvolume_id(fd.as_fd())
            .at_with("btrfs subvolume id", || root.join(rel))?;
        Ok(Identity::new(&SubvolumeIdentity::Subvolume { id }))
    }

    /// Delete the subvolume at `rel` in place (deleting is atomic; a read-only subvolume cannot
    /// be moved to another directory). Absent if it is not there.
    fn delete(&self, root: &RootDir, rel: &Path) -> Result<Retired> {
        let (parent, name) = root.parent(rel)?;
        match sys::btrfs::subvol_delete(parent.as_fd(), &cname(name)?) {
            Ok(()) => Ok(Retired::Removed),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Retired::Absent),
            Err(e) => Err(Error::io("btrfs subvolume delete", root.join(rel), e)),
        }
    }

    /// Remove what is at `rel` if it is a subvolume made there, else as a directory tree.
    fn remove(&self, root: &RootDir, rel: &Path) -> Result<()> {
        match root.entry(rel)? {
            None => Ok(()),
            Some(e) if e.is_dir() && e.ino == BTRFS_FIRST_FREE_OBJECTID => {
                self.delete(root, rel).map(drop)
            }
            Some(_) => remove_beneath(root, rel),
        }
    }

    fn retire(&self, root: &RootDir, place: &Path, id: &Identity) -> Result<Retired> {
        match self.presence(root, place, id)? {
            Presence::Here => self.delete(root, place),
            Presence::Absent | Presence::Elsewhere(_) => Ok(Retired::Absent),
            Presence::Other(what) => Err(Error::Damaged { path: root.join(place), what }),
        }
    }
}

impl Backend for BtrfsBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Btrfs
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
        let (parent, name) = root.parent(staging)?;
        sys::btrfs::subvol_create(parent.as_fd(), &cname(name)?)
            .at_with("btrfs subvolume create", || root.join(staging))?;
        self.fill_and_seal(root, src, staging, false, watch)
    }

    /// An increment onto `previous` ([`super::StreamBase::InPlace`]) is applied to a writable
    /// snapshot of it, O(change); anything else is an import like the first.
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
        self.snapshot(root, &previous.place, staging, false)?;
        self.fill_and_seal(root, src, staging, true, watch)
    }

    fn applies_increments_in_place(&self) -> bool {
        true
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
        watch.check()?;
        self.snapshot(root, &generation.place, staging, false)
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
        watch.check()?;
        // Writable until `seal`, after the lifecycle's edits.
        self.snapshot(root, &session.place, staging, false)
    }

    fn seal(&self, root: &RootDir, staging: &Path) -> Result<()> {
        let fd = root.dir(staging)?;
        sys::btrfs::set_read_only(fd.as_fd(), true)
            .at_with("btrfs set read-only", || root.join(staging))?;
        // The snapshot is committed with a btrfs transaction: before `current` may name it.
        rustix::fs::syncfs(&fd).at_with("syncfs", || root.join(staging))
    }

    fn presence(&self, root: &RootDir, place: &Path, id: &Identity) -> Result<Presence> {
        let Some(SubvolumeIdentity::Subvolume { id: want }) = id.get() else {
            return Ok(id.foreign());
        };
        let Some(e) = root.entry(place)? else { return Ok(Presence::Absent) };
        if !(e.is_dir() && e.ino == BTRFS_FIRST_FREE_OBJECTID) {
            return Ok(Presence::Other(describe(&e, &format!("subvolume {want}"))));
        }
        let fd = root.dir(place)?;
        let have = sys::btrfs::btrfs_subvolume_id(fd.as_fd())
            .at_with("btrfs subvolume id", || root.join(place))?;
        Ok(if have == want {
            Presence::Here
        } else {
            Presence::Other(format!("holds subvolume {have}, not the recorded {want}"))
        })
    }

    fn discard_session(
        &self,
        root: &RootDir,
        _s: &Session,
        staging: &Path,
        _ours: bool,
    ) -> Result<()> {
        self.remove(root, staging)
    }

    fn discard_generation(
        &self,
        root: &RootDir,
        generation: &Generation,
        staging: &Path,
        recorded: Option<&Identity>,
    ) -> Result<()> {
        self.remove(root, staging)?;
        if let Some(id) = recorded {
            self.retire(root, &generation.place, id)?;
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
        self.retire(root, &s.place, id)
    }

    fn retire_generation(
        &self,
        root: &RootDir,
        g: &Generation,
        id: &Identity,
        _t: &Path,
    ) -> Result<Retired> {
        self.retire(root, &g.place, id)
    }

    fn remove_trash(&self, root: &RootDir, trash: &Path) -> Result<()> {
        self.remove(root, trash)
    }

    /// The generation's qgroup `rfer` where quotas are on and exact (see
    /// [`sys::btrfs::qgroup_referenced`]); else `None`, and the lifecycle walks the tree.
    fn counted_size(&self, root: &RootDir, g: &Generation) -> Option<u64> {
        let fd = root.dir(&g.place).ok()?;
        let id = sys::btrfs::btrfs_subvolume_id(fd.as_fd()).ok()?;
        match sys::btrfs::qgroup_referenced(fd.as_fd(), id) {
            Ok(count) => count,
            Err(e) => {
                tracing::debug!(
                    target: "goldclone::backend",
                    "{}: no qgroup count ({e}), walking the tree",
                    root.join(&g.place).display()
                );
                None
            }
        }
    }
}
