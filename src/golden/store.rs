//! The primitives a backend provides to the lifecycle: make a golden tree from a directory, a
//! writable session from a golden tree, a golden tree from a session, tell whether a recorded
//! tree is still where it was put, and take trees away.
//!
//! Arguments are typed ([`Generation`], [`Session`]): a session cannot be passed where a
//! generation is meant. Every path is relative to the cache root and resolved beneath it
//! ([`RootDir`]). A store only ever removes what the lifecycle names: a staging name it recorded
//! before anything was made, or a tree whose [`Identity`] it recorded.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::rootdir::RootDir;
use super::state::Identity;
use super::BackendKind;
use crate::copy::{self, CopyOptions};
use crate::sys::btrfs::BTRFS_FIRST_FREE_OBJECTID;
use crate::{sys, Error, Result};

/// A generation of a project, as the lifecycle names it.
#[derive(Debug, Clone)]
pub(crate) struct Generation {
    pub project: String,
    pub number: u64,
    /// Where its tree is (copy, btrfs), relative to the root.
    pub place: PathBuf,
    /// The project's current generation when this value was made. ZFS keeps every live
    /// generation's snapshot on the current generation's head.
    pub head: u64,
}

/// A session of a project, as the lifecycle names it.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub project: String,
    pub name: String,
    /// Where its tree is or is mounted, relative to the root.
    pub place: PathBuf,
}

/// Where a recorded tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Presence {
    /// At its place.
    Here,
    /// It exists but is not at its place (a ZFS session that is not mounted).
    Elsewhere(String),
    /// Nothing of it is left, and nothing is at its place.
    Absent,
    /// Something else is at its place: not ours to touch.
    Other(String),
}

/// What [`Store::retire_session`] and [`Store::retire_generation`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Retired {
    /// Moved to this trash path (relative to the root): remove it with
    /// [`Store::remove_trash`] after the caller's bookkeeping.
    Moved(PathBuf),
    /// Removed in place already.
    Removed,
    /// Taken away, but removing it failed for now: [`Store::remove_owed`] retries.
    Owed(Identity),
    /// Was not there (another caller retired it).
    Absent,
}

/// What a backend does for the lifecycle.
pub(crate) trait Store: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> BackendKind;

    /// Whether a session is a mount of its own (ZFS, zvol): that mount is the session, not a
    /// holder of it.
    fn sessions_are_mounts(&self) -> bool {
        false
    }

    /// Nothing of this store's is where `session` would be made. Checked before the setup's
    /// intent is recorded, so that undoing the setup never removes what was there before.
    fn session_free(&self, session: &Session) -> Result<()> {
        let _ = session;
        Ok(())
    }

    /// Nothing of this store's is where `generation` would be made (from `source`, for a
    /// promote); as [`Store::session_free`].
    fn generation_free(&self, generation: &Generation, source: Option<&Session>) -> Result<()> {
        let _ = (generation, source);
        Ok(())
    }

    /// Generation `generation` with the contents of the directory `src`, built at `staging`
    /// (a fresh name beside its place, which [`Store::publish`] then moves there).
    fn import(
        &self,
        root: &RootDir,
        src: &Path,
        generation: &Generation,
        staging: &Path,
    ) -> Result<Identity>;

    /// A writable `session` from `generation` (recorded as `recorded`), built at `staging`.
    fn create_session(
        &self,
        root: &RootDir,
        generation: &Generation,
        recorded: &Identity,
        session: &Session,
        staging: &Path,
    ) -> Result<Identity>;

    /// Generation `generation` from the quiesced `session` (recorded as `recorded`);
    /// `previous` is the current generation.
    fn promote(
        &self,
        root: &RootDir,
        session: &Session,
        recorded: &Identity,
        generation: &Generation,
        previous: &Generation,
        staging: &Path,
    ) -> Result<Identity>;

    /// After a crash or an error inside `promote`: finish it (`Some`: `generation` is complete
    /// and may be committed) or undo it (`None`). By default, undo.
    fn recover_promote(
        &self,
        root: &RootDir,
        session: &Session,
        generation: &Generation,
        previous: &Generation,
        staging: &Path,
    ) -> Result<Option<Identity>> {
        let _ = (session, previous);
        self.discard_generation(root, generation, staging, None)?;
        Ok(None)
    }

    /// Move a built tree from `staging` to `place`: a rename that never replaces. Stores that
    /// build in place have nothing to do.
    fn publish(&self, root: &RootDir, staging: &Path, place: &Path) -> Result<()> {
        root.rename_noreplace(staging, place)
    }

    /// Where the tree recorded as `id` is, for a tree whose place is `place`.
    fn presence(&self, root: &RootDir, place: &Path, id: &Identity) -> Result<Presence>;

    /// Where the session recorded as `id` is.
    fn session_presence(&self, root: &RootDir, s: &Session, id: &Identity) -> Result<Presence> {
        self.presence(root, &s.place, id)
    }

    /// Where the generation recorded as `id` is.
    fn generation_presence(
        &self,
        root: &RootDir,
        g: &Generation,
        id: &Identity,
    ) -> Result<Presence> {
        self.presence(root, &g.place, id)
    }

    /// Undo a setup of `session` that did not commit: remove what it made at `staging`, and,
    /// for stores that build in place and if `place_is_ours` (no other setup's record names
    /// the session), what it mounted at the session's place.
    fn discard_session(
        &self,
        root: &RootDir,
        session: &Session,
        staging: &Path,
        place_is_ours: bool,
    ) -> Result<()>;

    /// Whether `session`, made from generation `made_from`, can become the next generation
    /// while `current` is the current one.
    fn can_promote(&self, session: &Session, made_from: u64, current: u64) -> Result<()> {
        let _ = (session, made_from, current);
        Ok(())
    }

    /// Undo an import or promote of `generation` that did not commit: remove what it made at
    /// `staging`, and the published tree if it is the one recorded as `recorded`.
    fn discard_generation(
        &self,
        root: &RootDir,
        generation: &Generation,
        staging: &Path,
        recorded: Option<&Identity>,
    ) -> Result<()>;

    /// Take the session (recorded as `id`) away in one step, so that of several callers one
    /// succeeds: the commit of a cleanup. By default it moves to `trash`.
    fn retire_session(
        &self,
        root: &RootDir,
        session: &Session,
        id: &Identity,
        trash: &Path,
    ) -> Result<Retired> {
        let presence = self.session_presence(root, session, id)?;
        move_to_trash(root, presence, &session.place, trash)
    }

    /// Take a retired generation (recorded as `id`) away; as [`Store::retire_session`].
    fn retire_generation(
        &self,
        root: &RootDir,
        generation: &Generation,
        id: &Identity,
        trash: &Path,
    ) -> Result<Retired> {
        let presence = self.generation_presence(root, generation, id)?;
        move_to_trash(root, presence, &generation.place, trash)
    }

    /// Remove the tree at `trash` (relative to the root, under `.goldclone/trash/`).
    fn remove_trash(&self, root: &RootDir, trash: &Path) -> Result<()> {
        remove_beneath(root, trash)
    }

    /// Retry a removal [`Retired::Owed`] promised.
    fn remove_owed(&self, root: &RootDir, id: &Identity) -> Result<()> {
        let _ = root;
        Err(Error::Unsupported {
            what: format!("{:?} backend owes no removal of {id:?}", self.kind()),
        })
    }

    /// Bytes the generation occupies, as this backend counts them.
    fn size(&self, root: &RootDir, generation: &Generation) -> u64 {
        root.dir(&generation.place).map_or(0, |fd| disk_usage(fd, &root.join(&generation.place)))
    }

    /// Things of `project` this store holds apart from the root's directories (ZFS datasets)
    /// that no record names: reported by gc, never removed.
    fn unrecorded(
        &self,
        project: &str,
        sessions: &[String],
        generations: &[u64],
    ) -> Result<Vec<String>> {
        let _ = (project, sessions, generations);
        Ok(Vec::new())
    }
}

/// Rename the tree at `place`, if it is the recorded one (`presence`), to `trash`.
fn move_to_trash(
    root: &RootDir,
    presence: Presence,
    place: &Path,
    trash: &Path,
) -> Result<Retired> {
    match presence {
        Presence::Here => {}
        Presence::Absent | Presence::Elsewhere(_) => return Ok(Retired::Absent),
        Presence::Other(what) => return Err(Error::Damaged { path: root.join(place), what }),
    }
    if let Some(parent) = trash.parent() {
        root.mkdir_all(parent)?;
    }
    match root.rename_noreplace(place, trash) {
        Ok(()) => Ok(Retired::Moved(trash.to_path_buf())),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(Retired::Absent),
        Err(e) => Err(e),
    }
}

/// Remove the tree at `rel` (a staging or trash name) without following symlinks or crossing
/// mounts; a missing tree is not an error.
pub(crate) fn remove_beneath(root: &RootDir, rel: &Path) -> Result<()> {
    let (parent, name) = match root.parent(rel) {
        Ok(p) => p,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    copy::remove_at(parent.as_fd(), name, &root.join(rel))
}

/// Bytes allocated under the open directory `dir` (st_blocks), each inode once; 0 for what
/// cannot be read. Directories are opened with O_NOATIME and never through a symlink: sizing a
/// tree must not change it.
pub(crate) fn disk_usage(dir: OwnedFd, path: &Path) -> u64 {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let mut seen = std::collections::HashSet::new();
    let mut total = rustix::fs::fstat(&dir).map_or(0, |st| st.st_blocks as u64 * 512);
    let mut stack = vec![dir];
    while let Some(fd) = stack.pop() {
        let Ok(names) = super::rootdir::list_fd(fd.as_fd(), path) else { continue };
        for name in names {
            let Ok(st) = rustix::fs::statat(&fd, &name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if st.st_nlink > 1 && !is_dir && !seen.insert((st.st_dev, st.st_ino)) {
                continue;
            }
            total += st.st_blocks as u64 * 512;
            if is_dir {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let child = rustix::fs::openat(&fd, &name, flags | OFlags::NOATIME, Mode::empty())
                    .or_else(|_| rustix::fs::openat(&fd, &name, flags, Mode::empty()));
                if let Ok(child) = child {
                    stack.push(child);
                }
            }
        }
    }
    total
}

/// Create the empty directory `rel` (mode 0700) and open it.
fn make_dir(root: &RootDir, rel: &Path) -> Result<OwnedFd> {
    let (parent, name) = root.parent(rel)?;
    rustix::fs::mkdirat(&parent, name, rustix::fs::Mode::from_raw_mode(0o700)).map_err(|e| {
        if e == rustix::io::Errno::EXIST {
            Error::AlreadyExists { path: root.join(rel) }
        } else {
            Error::io("mkdir", root.join(rel), super::rootdir::errno(e))
        }
    })?;
    root.dir(rel)
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

    /// Copy the open directory `src` into a new directory at `staging`; its identity.
    fn copy(
        &self,
        root: &RootDir,
        src: OwnedFd,
        src_path: &Path,
        staging: &Path,
        durable: bool,
    ) -> Result<Identity> {
        let dst = make_dir(root, staging)?;
        let copied = copy::copy_dir_into(
            src.as_fd(),
            src_path,
            dst.as_fd(),
            &root.join(staging),
            &self.opts(durable),
        );
        if let Err(e) = copied {
            let _ = remove_beneath(root, staging);
            return Err(e);
        }
        dir_identity(root, &dst, staging)
    }
}

fn dir_identity(root: &RootDir, fd: &OwnedFd, rel: &Path) -> Result<Identity> {
    let e = super::rootdir::statx_entry(fd.as_fd(), std::ffi::OsStr::new(""))
        .map_err(|e| Error::io("stat", root.join(rel), super::rootdir::errno(e)))?;
    Ok(Identity::Dir { ino: e.ino, birth: e.birth })
}

/// The open source directory `src` (the caller's path: a symlink at its end is followed).
fn open_source(src: &Path) -> Result<OwnedFd> {
    let meta = std::fs::metadata(src).map_err(|e| Error::io("stat", src, e))?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory { path: src.to_path_buf() });
    }
    let flags =
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC;
    rustix::fs::open(src, flags, rustix::fs::Mode::empty())
        .map_err(|e| Error::io("open", src, super::rootdir::errno(e)))
}

impl Store for CopyStore {
    fn kind(&self) -> BackendKind {
        BackendKind::Copy
    }

    fn import(
        &self,
        root: &RootDir,
        src: &Path,
        _g: &Generation,
        staging: &Path,
    ) -> Result<Identity> {
        self.copy(root, open_source(src)?, src, staging, true)
    }

    fn create_session(
        &self,
        root: &RootDir,
        generation: &Generation,
        _recorded: &Identity,
        _session: &Session,
        staging: &Path,
    ) -> Result<Identity> {
        let src = root.dir(&generation.place)?;
        self.copy(root, src, &root.join(&generation.place), staging, false)
    }

    fn promote(
        &self,
        root: &RootDir,
        session: &Session,
        _recorded: &Identity,
        _generation: &Generation,
        _previous: &Generation,
        staging: &Path,
    ) -> Result<Identity> {
        let src = root.dir(&session.place)?;
        self.copy(root, src, &root.join(&session.place), staging, true)
    }

    fn presence(&self, root: &RootDir, place: &Path, id: &Identity) -> Result<Presence> {
        let Identity::Dir { ino, birth } = id else {
            return Ok(Presence::Other(format!("recorded as {id:?}, not a directory")));
        };
        let root_dev = rustix::fs::fstat(root.fd()).map_or(0, |st| st.st_dev);
        // Both inode and birth time: an inode number is reused by the next directory made.
        let same_birth = |b: Option<u64>| birth.is_none() || b.is_none() || b == *birth;
        Ok(match root.entry(place)? {
            None => Presence::Absent,
            Some(e) if e.is_dir() && e.ino == *ino && e.dev == root_dev && same_birth(e.birth) => {
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

/// What is at a place instead of what was recorded, for messages.
fn describe(e: &super::rootdir::Entry, wanted: &str) -> String {
    let kind = match e.mode & libc::S_IFMT {
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symlink",
        libc::S_IFREG => "a file",
        _ => "a special file",
    };
    format!("holds {kind} (device {}, inode {}), not the recorded {wanted}", e.dev, e.ino)
}

/// The btrfs backend: golden trees are read-only subvolumes, sessions writable snapshots of them,
/// promotion a read-only snapshot of the session. Only `import` copies (into a new subvolume).
#[derive(Debug)]
pub(crate) struct BtrfsStore {
    pub threads: usize,
}

fn cname(name: &std::ffi::OsStr) -> Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| Error::InvalidArgument { what: "NUL in a name".into() })
}

impl BtrfsStore {
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
            .map_err(|e| Error::io("btrfs snapshot", root.join(dst), e))?;
        self.identity(root, dst)
    }

    fn identity(&self, root: &RootDir, rel: &Path) -> Result<Identity> {
        let fd = root.dir(rel)?;
        let id = sys::btrfs::btrfs_subvolume_id(fd.as_fd())
            .map_err(|e| Error::io("btrfs subvolume id", root.join(rel), e))?;
        Ok(Identity::Subvolume { id })
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

impl Store for BtrfsStore {
    fn kind(&self) -> BackendKind {
        BackendKind::Btrfs
    }

    fn import(
        &self,
        root: &RootDir,
        src: &Path,
        _g: &Generation,
        staging: &Path,
    ) -> Result<Identity> {
        let source = open_source(src)?;
        let (parent, name) = root.parent(staging)?;
        sys::btrfs::subvol_create(parent.as_fd(), &cname(name)?)
            .map_err(|e| Error::io("btrfs subvolume create", root.join(staging), e))?;
        // Synced before it is made read-only and published (see CopyStore::opts).
        let filled = root.dir(staging).and_then(|dst| {
            copy::copy_dir_into(
                source.as_fd(),
                src,
                dst.as_fd(),
                &root.join(staging),
                &CopyOptions { threads: self.threads, sync: true, ..CopyOptions::default() },
            )?;
            sys::btrfs::set_read_only(dst.as_fd(), true)
                .map_err(|e| Error::io("btrfs set read-only", root.join(staging), e))
        });
        if let Err(e) = filled {
            let _ = self.remove(root, staging);
            return Err(e);
        }
        self.identity(root, staging)
    }

    fn create_session(
        &self,
        root: &RootDir,
        generation: &Generation,
        _recorded: &Identity,
        _session: &Session,
        staging: &Path,
    ) -> Result<Identity> {
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
    ) -> Result<Identity> {
        self.snapshot(root, &session.place, staging, true)
    }

    fn presence(&self, root: &RootDir, place: &Path, id: &Identity) -> Result<Presence> {
        let Identity::Subvolume { id: want } = id else {
            return Ok(Presence::Other(format!("recorded as {id:?}, not a subvolume")));
        };
        let Some(e) = root.entry(place)? else { return Ok(Presence::Absent) };
        if !(e.is_dir() && e.ino == BTRFS_FIRST_FREE_OBJECTID) {
            return Ok(Presence::Other(describe(&e, &format!("subvolume {want}"))));
        }
        let fd = root.dir(place)?;
        let have = sys::btrfs::btrfs_subvolume_id(fd.as_fd())
            .map_err(|e| Error::io("btrfs subvolume id", root.join(place), e))?;
        Ok(if have == *want {
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
}
