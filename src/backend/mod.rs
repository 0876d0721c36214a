//! Backends: what the lifecycle ([`crate::golden`]) drives to make trees, one module each.
//!
//! * [`copy`] — an exact tree copy, reflinked where the filesystem can; works anywhere.
//! * [`btrfs`] — read-only subvolumes and writable snapshots, by ioctl.
//! * [`zfs`] — datasets, snapshots and clones through libzfs_core, mounted with mount(2);
//!   [`zvol`] adds the volumes-with-XFS flavour.
//!
//! A backend module owns everything about its kind of tree: which cache roots it can serve and
//! how it is built from detection ([`plan`]), how it names what it makes, what a tree's
//! [`Identity`] is, and how it finishes or undoes its part of an interrupted operation. The
//! lifecycle knows none of that: it calls the [`Backend`] trait with typed arguments
//! ([`Generation`], [`Session`]: one cannot be passed for the other), keeps each tree's
//! identity in its records without looking inside, and passes every path relative to the cache
//! root, resolved beneath it ([`RootDir`]). A backend only ever removes what the lifecycle names:
//! a staging name recorded before anything was made, or a tree whose identity was recorded.
//!
//! Adding a backend: a module implementing [`Backend`], a [`BackendKind`] variant, and its line
//! in [`plan`].

pub(crate) mod btrfs;
pub(crate) mod copy;
pub(crate) mod image;
pub(crate) mod rootdir;
pub(crate) mod zfs;
pub(crate) mod zvol;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub(crate) use rootdir::RootDir;

use crate::copy::{CancelToken, CopyOptions, Progress};
use crate::detect::{self, Detection};
use crate::stream::StreamHeader;
use crate::{Context, Error, Result};

// The one list of backends: the C header's `goldclone_backend` is this enum (cbindgen.toml
// renames it), the Go package takes its constants from the header, and the CLI's `--backend`
// values and the records' names are the snake_case variant names. The numbers are fixed.
/// The primitive a cache uses to give sessions their copy.
#[repr(u32)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::FromRepr,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum BackendKind {
    /// A ZFS dataset per generation; sessions are clones mounted with mount(2).
    Zfs = 1,
    /// A ZFS volume with XFS per generation; sessions are zvol clones mounted `nouuid`.
    Zvol = 2,
    /// btrfs subvolumes; sessions are snapshots.
    Btrfs = 3,
    /// The exact parallel tree copy (reflinked where the filesystem can).
    Copy = 4,
    /// A filesystem image (XFS) per generation; sessions are reflinked copies of it on loop
    /// devices, mounted `nouuid`.
    Image = 5,
}

impl BackendKind {
    /// The name in records, messages and the CLI, e.g. `"zfs"`.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// Fault points (see [`crate::fault`]) only this backend reaches.
    fn own_fault_points(self) -> &'static [&'static str] {
        match self {
            BackendKind::Zfs | BackendKind::Zvol => zfs::FAULT_POINTS,
            BackendKind::Copy => copy::FAULT_POINTS,
            BackendKind::Image => image::FAULT_POINTS,
            BackendKind::Btrfs => &[],
        }
    }

    /// Whether this backend reaches fault point `point`: every backend reaches the lifecycle's
    /// own points, and each its own.
    pub fn reaches(self, point: &str) -> bool {
        let owns = |k: BackendKind| k.own_fault_points().contains(&point);
        !<BackendKind as strum::VariantArray>::VARIANTS.iter().copied().any(owns) || owns(self)
    }
}

/// How a caller follows and stops one long operation (import, setup, promote): live counters
/// and a cancel token, both optional. Tree copies report every entry and count the totals
/// alongside; a backend that makes its tree in one step (a snapshot, a clone) reports nothing
/// until it is done. A cancelled operation leaves nothing behind and fails with
/// [`Error::Cancelled`]; one cancelled after its commit point has taken effect and succeeds.
///
/// The token is the operation's own: its commit marks it committed, after which a stop is not
/// asked for ([`CancelToken::child`] gives one per operation from a shared one).
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Counters the operation updates.
    pub progress: Option<Arc<Progress>>,
    /// Stops the operation when cancelled.
    pub cancel: Option<CancelToken>,
}

impl Watch {
    /// `base` with this watch's counters and a stop for one tree copy: a child of the
    /// operation's token, because the copy commits before the operation does.
    pub(crate) fn copy_options(&self, base: CopyOptions) -> CopyOptions {
        CopyOptions {
            progress: self.progress.clone(),
            cancel: self.cancel.as_ref().map(CancelToken::child),
            count_totals: self.progress.is_some(),
            ..base
        }
    }

    /// [`Error::Cancelled`] if the caller has stopped the operation.
    pub(crate) fn check(&self) -> Result<()> {
        match &self.cancel {
            Some(t) if t.is_cancelled() => Err(Error::Cancelled),
            _ => Ok(()),
        }
    }

    /// Run the operation's commit unless the caller stopped it first (see
    /// [`CancelToken::commit`]).
    pub(crate) fn commit<T>(&self, commit: impl FnOnce() -> Result<T>) -> Result<T> {
        match &self.cancel {
            Some(t) => t.commit(commit),
            None => commit(),
        }
    }
}

/// Settings of the backends, from `golden::OpenOptions`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Settings {
    /// Worker threads of tree copies (0 = adaptive).
    pub copy_threads: usize,
    /// zvol: size of a project's first volume (0 = from the imported tree).
    pub zvol_size: u64,
    /// zvol: `volblocksize` of new volumes (0 = 8 KiB).
    pub zvol_block_size: u64,
    /// image: size of a new generation's image (0 = from the tree and the filesystem).
    pub image_size: u64,
}

/// A backend chosen for a cache root and checked against it, before anything is written.
#[derive(Debug)]
pub(crate) struct Plan {
    kind: BackendKind,
    build: Build,
}

#[derive(Debug)]
enum Build {
    Copy,
    Image,
    Btrfs,
    Zfs(zfs::Placement, bool),
}

/// Choose the backend for the cache root `root` (canonical): `requested`, or the best one
/// detection finds, checked that it can serve this root.
pub(crate) fn plan(root: &Path, requested: Option<(BackendKind, &str)>) -> Result<Plan> {
    let found = detect::detect(root)?;
    let mut no_image = None;
    let kind = requested.map(|(k, _)| k).unwrap_or_else(|| match &found.backend {
        detect::Backend::ZfsDataset { .. } => BackendKind::Zfs,
        detect::Backend::Zvol { .. } => BackendKind::Zvol,
        detect::Backend::Btrfs { .. } => BackendKind::Btrfs,
        // A session is one image: reflinked where files share extents, O(extents), not
        // O(files); copied sparsely elsewhere, O(bytes), which at a golden's size is still
        // well ahead of the tree copy's O(files) (BENCHMARKS.md: 772K entries on ext4).
        detect::Backend::Reflink { .. } | detect::Backend::Plain { .. } => {
            match &found.image_backend {
                None => BackendKind::Image,
                Some(why) => {
                    no_image = Some(why.clone());
                    BackendKind::Copy
                }
            }
        }
    });
    log_choice(root, &found, kind, requested.map(|(_, why)| why), no_image.as_deref());
    let build = match kind {
        BackendKind::Copy => Build::Copy,
        BackendKind::Image => image::check(root, &found).map(|()| Build::Image)?,
        BackendKind::Btrfs => btrfs::check(root, &found).map(|()| Build::Btrfs)?,
        BackendKind::Zfs | BackendKind::Zvol => {
            Build::Zfs(zfs::placement(root, &found, kind)?, kind == BackendKind::Zvol)
        }
    };
    Ok(Plan { kind, build })
}

/// Say which backend a root gets, what that means there, and for the copy backend why no
/// faster one.
fn log_choice(
    root: &Path,
    found: &Detection,
    kind: BackendKind,
    requested: Option<&str>,
    no_image: Option<&str>,
) {
    let fs = &found.mount.fs_type;
    let what = match (&found.backend, kind) {
        (detect::Backend::Reflink { .. }, BackendKind::Copy) => format!(
            "{fs} shares extents (reflink) but has no snapshots: sessions are copies whose \
             file data is shared, O(files){}",
            no_image.map_or(String::new(), |why| format!(
                "; the image backend (O(extents)) cannot run here: {why}"
            ))
        ),
        (_, BackendKind::Copy) => format!(
            "{fs} has neither snapshots nor reflink here: sessions are full copies, O(files) \
             and O(bytes); btrfs, ZFS or XFS with reflink would be faster{}",
            no_image.map_or(String::new(), |why| format!(
                "; the image backend (O(bytes), not O(files)) cannot run here: {why}"
            ))
        ),
        (_, BackendKind::Btrfs) => "btrfs: sessions are writable snapshots".into(),
        (detect::Backend::Reflink { .. }, BackendKind::Image) => format!(
            "{fs} shares extents: a generation is an XFS image, a session a reflink of it on a \
             loop device, O(extents)"
        ),
        (_, BackendKind::Image) => format!(
            "{fs} cannot share extents: a generation is an XFS image, a session a sparse copy \
             of it on a loop device, O(bytes)"
        ),
        (_, BackendKind::Zfs) => "a ZFS dataset: sessions are clones".into(),
        (_, BackendKind::Zvol) => "an XFS on a zvol: sessions are volume clones".into(),
    };
    let how = requested.unwrap_or("detected");
    tracing::info!(
        target: "goldclone::backend",
        "{}: {} backend, {how} ({fs} at {}): {what}",
        root.display(),
        kind.name(),
        found.mount.mount_point.display()
    );
}

impl Plan {
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The backend, for the cache whose id is `cache_id`.
    pub fn build(self, cache_id: &str, settings: Settings) -> Result<Box<dyn Backend>> {
        Ok(match self.build {
            Build::Copy => Box::new(copy::CopyBackend { threads: settings.copy_threads }),
            Build::Image => Box::new(image::ImageBackend {
                threads: settings.copy_threads,
                image_size: settings.image_size,
            }),
            Build::Btrfs => Box::new(btrfs::BtrfsBackend { threads: settings.copy_threads }),
            Build::Zfs(place, volumes) => {
                Box::new(zfs::ZfsBackend::new(place, volumes, settings, cache_id)?)
            }
        })
    }
}

/// Unsupported: `kind` cannot serve the root detection describes.
pub(crate) fn cannot_serve(kind: BackendKind, root: &Path, found: &Detection, why: &str) -> Error {
    Error::Unsupported {
        what: format!(
            "{} backend {why}; {} is on {} at {}",
            kind.name(),
            root.display(),
            found.mount.fs_type,
            found.mount.mount_point.display()
        ),
    }
}

/// What a tree was when its backend made it, in that backend's own terms (a directory's inode,
/// a subvolume id, a dataset's guid): the one test of "this is ours" before anything at its
/// place is changed or removed. The lifecycle records it and hands it back, never looking in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Identity(serde_json::Value);

impl Identity {
    /// A backend's own identity value (a `#[serde(tag = "kind")]` type, so records say what
    /// they name).
    pub fn new<T: Serialize>(value: &T) -> Identity {
        Identity(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
    }

    /// The identity as `T`, if it is one (a record made by another backend is not).
    pub fn get<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_value(self.0.clone()).ok()
    }

    /// "Not one of ours": what a backend says of an identity it cannot read.
    pub fn foreign(&self) -> Presence {
        Presence::Other(format!("recorded as {}, which this backend did not make", self.0))
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

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

/// What [`Backend::retire_session`] and [`Backend::retire_generation`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Retired {
    /// Moved to this trash path (relative to the root): remove it with
    /// [`Backend::remove_trash`] after the caller's bookkeeping.
    Moved(PathBuf),
    /// Removed in place already.
    Removed,
    /// Taken away, but removing it failed for now: [`Backend::remove_owed`] retries.
    Owed(Identity),
    /// Was not there (another caller retired it).
    Absent,
}

/// Make the place of a session that is about to be mounted again: missing → made, an empty
/// directory → kept; anything else is refused (see [`Backend::remount_session`]).
pub(crate) fn empty_place_for_remount(root: &RootDir, place: &Path) -> Result<()> {
    match root.entry(place)? {
        None => {
            root.mkdir(place)?;
            Ok(())
        }
        Some(e) if e.mode & libc::S_IFMT == libc::S_IFDIR => {
            if root.list(place)?.is_empty() {
                Ok(())
            } else {
                Err(Error::Damaged {
                    path: root.join(place),
                    what: "the session is not mounted, and its mount point holds files that a \
                           mount would hide: move them away first"
                        .into(),
                })
            }
        }
        Some(_) => Err(Error::Damaged {
            path: root.join(place),
            what: "is no directory: the session cannot be mounted there".into(),
        }),
    }
}

/// What a backend does for the lifecycle.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> BackendKind;

    /// Make what the backend keeps beside the lifecycle's state, at open (the image backend's
    /// `.goldclone/images`, shared by every project: made once, never by one project's
    /// import, which could not take it away again without racing another's).
    fn prepare_root(&self, root: &RootDir) -> Result<()> {
        let _ = root;
        Ok(())
    }

    /// Whether a session is a mount of its own (ZFS, zvol): that mount is the session, not a
    /// holder of it.
    fn sessions_are_mounts(&self) -> bool {
        false
    }

    /// Nothing of this backend's is where `session` would be made. Checked before the setup's
    /// intent is recorded, so that undoing the setup never removes what was there before.
    fn session_free(&self, root: &RootDir, session: &Session) -> Result<()> {
        let _ = (root, session);
        Ok(())
    }

    /// Nothing of this backend's is where `generation` would be made (from `source`, for a
    /// promote); as [`Backend::session_free`].
    fn generation_free(&self, generation: &Generation, source: Option<&Session>) -> Result<()> {
        let _ = (generation, source);
        Ok(())
    }

    /// Generation `generation` with the contents of the directory `src`, built at `staging`
    /// (a fresh name beside its place, which [`Backend::publish`] then moves there), reporting
    /// to and stopped by `watch`.
    fn import(
        &self,
        root: &RootDir,
        src: &Source<'_, '_>,
        generation: &Generation,
        staging: &Path,
        watch: &Watch,
    ) -> Result<Identity>;

    /// Generation `generation` of an existing project with the contents of the directory
    /// `src`, after `previous` (the current generation), built at `staging`. By default an
    /// import like the first one: the generations are trees of their own.
    fn import_next(
        &self,
        root: &RootDir,
        src: &Source<'_, '_>,
        generation: &Generation,
        previous: &Generation,
        staging: &Path,
        watch: &Watch,
    ) -> Result<Identity> {
        let _ = previous;
        self.import(root, src, generation, staging, watch)
    }

    /// After a crash or an error inside `import_next`: finish it (`Some`: `generation` is
    /// complete and may be committed) where only forward is safe, else `None`, and the
    /// lifecycle undoes it ([`Backend::discard_generation`]). By default, undo.
    fn recover_import_next(
        &self,
        root: &RootDir,
        generation: &Generation,
        previous: &Generation,
        staging: &Path,
    ) -> Result<Option<Identity>> {
        let _ = (root, generation, previous, staging);
        Ok(None)
    }

    /// Generation `g`'s tree (recorded as `id`, checked present), read-only, for a send: an
    /// open directory that stays readable while it is open (a detached mount goes with its last
    /// descriptor). Unsupported where the backend cannot show a generation as a tree.
    fn open_generation(&self, root: &RootDir, g: &Generation, id: &Identity) -> Result<OwnedFd> {
        let _ = (root, id);
        Err(Error::Unsupported {
            what: format!(
                "generation {} of {} cannot be sent from the {} backend yet",
                g.number,
                g.project,
                self.kind().name()
            ),
        })
    }

    /// Whether a send reads the current generation through a session of it (made and removed
    /// by the send) instead of [`Backend::open_generation`]: where a session is a cheap clone
    /// and a generation has no tree of its own (ZFS, zvol).
    fn sends_through_session(&self) -> bool {
        false
    }

    /// Whether [`Backend::import_next`] takes an increment onto the previous generation
    /// ([`StreamBase::InPlace`]) and applies it to a writable clone of that one (ZFS, zvol,
    /// images, btrfs), instead of onto a copy of its tree.
    fn applies_increments_in_place(&self) -> bool {
        false
    }

    /// A writable `session` from `generation` (recorded as `recorded`), built at `staging`.
    fn create_session(
        &self,
        root: &RootDir,
        generation: &Generation,
        recorded: &Identity,
        session: &Session,
        staging: &Path,
        watch: &Watch,
    ) -> Result<Identity>;

    /// Generation `generation` from the quiesced `session` (recorded as `recorded`);
    /// `previous` is the current generation. Built at `staging` writable (the lifecycle edits
    /// it, then calls [`Backend::seal`]), or in place where [`Backend::promotes_session_itself`].
    #[allow(clippy::too_many_arguments)] // each is a distinct typed thing the trait names
    fn promote(
        &self,
        root: &RootDir,
        session: &Session,
        recorded: &Identity,
        generation: &Generation,
        previous: &Generation,
        staging: &Path,
        watch: &Watch,
    ) -> Result<Identity>;

    /// Whether `promote` makes the generation from the session's own tree in place (ZFS: the
    /// session's dataset becomes the head), so that edits of the generation are edits of the
    /// session.
    fn promotes_session_itself(&self) -> bool {
        false
    }

    /// Whether [`Backend::adopt_session`] can take a session's tree as a generation.
    fn can_adopt_session(&self) -> bool {
        false
    }

    /// Move the quiesced session's tree (recorded as `recorded`, checked at its place by the
    /// lifecycle under the project's exclusive lock) to `staging`, to become a generation as it
    /// is: O(1), the session is consumed. Its identity as a generation.
    fn adopt_session(
        &self,
        root: &RootDir,
        session: &Session,
        recorded: &Identity,
        staging: &Path,
    ) -> Result<Identity> {
        let _ = (root, recorded, staging);
        Err(Error::Unsupported {
            what: format!(
                "the {} backend cannot take session {:?} as a generation",
                self.kind().name(),
                session.name
            ),
        })
    }

    /// Undo [`Backend::adopt_session`]: move the session's tree from `from` back to its place,
    /// never replacing anything there.
    fn return_session(&self, root: &RootDir, from: &Path, session: &Session) -> Result<()> {
        root.rename_noreplace(from, &session.place)
    }

    /// Make the tree `promote` (or `adopt_session`) left at `staging` ready to be committed,
    /// after the lifecycle's edits: durable, and read-only where the backend can.
    fn seal(&self, root: &RootDir, staging: &Path) -> Result<()> {
        let _ = (root, staging);
        Ok(())
    }

    /// After a crash or an error inside `promote`: finish it (`Some`: `generation` is complete
    /// and may be committed) or undo it (`None`). With `forward` (the session itself was edited
    /// for the generation, and undoing cannot give the edits back) finish it wherever the
    /// generation's tree is whole. By default, undo.
    fn recover_promote(
        &self,
        root: &RootDir,
        session: &Session,
        generation: &Generation,
        previous: &Generation,
        staging: &Path,
        forward: bool,
    ) -> Result<Option<Identity>> {
        let _ = (session, previous, forward);
        self.discard_generation(root, generation, staging, None)?;
        Ok(None)
    }

    /// Move a built tree from `staging` to `place`: a rename that never replaces. Backends that
    /// build in place have nothing to do.
    fn publish(&self, root: &RootDir, staging: &Path, place: &Path) -> Result<()> {
        root.rename_noreplace(staging, place)
    }

    /// Where a tree just built for `place` is until [`Backend::publish`]: `staging`, or
    /// `place` for backends that build in place.
    fn built_at<'p>(&self, staging: &'p Path, place: &'p Path) -> &'p Path {
        let _ = place;
        staging
    }

    /// [`Backend::publish`] for a session: backends whose sessions are mounts made at their
    /// place (images) build sessions in place even where generations move from staging.
    fn publish_session(&self, root: &RootDir, staging: &Path, place: &Path) -> Result<()> {
        self.publish(root, staging, place)
    }

    /// [`Backend::built_at`] for a session (see [`Backend::publish_session`]).
    fn session_built_at<'p>(&self, staging: &'p Path, place: &'p Path) -> &'p Path {
        self.built_at(staging, place)
    }

    /// Where the tree recorded as `id` is, for a tree whose place is `place`.
    fn presence(&self, root: &RootDir, place: &Path, id: &Identity) -> Result<Presence>;

    /// Mount session `s` (recorded as `id`, and [`Presence::Elsewhere`]: whole, but not
    /// mounted at its place, as after a reboot) at its place again; `false` for backends whose
    /// sessions are no mounts. The place must be missing or an empty directory: files there
    /// were written by someone into the bare mount point, and are never hidden. Refused while
    /// anything else still serves the tree (an image on a loop device elsewhere: a second
    /// device on it would be a second writer of one XFS).
    fn remount_session(&self, root: &RootDir, s: &Session, id: &Identity) -> Result<bool> {
        let _ = (root, s, id);
        Ok(false)
    }

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
    /// for backends that build in place and if `place_is_ours` (no other setup's record names
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

    /// Take a session that is still in use (recorded as `id`) away from its place without
    /// disturbing its users (a lazy cleanup): nothing new reaches it, what has it keeps it, and
    /// its removal waits until nothing holds it. By default it moves to `trash` (a rename: open
    /// files, working directories and bind mounts of it follow the tree); the caller removes
    /// that trash only once nothing holds it.
    fn detach_session(
        &self,
        root: &RootDir,
        session: &Session,
        id: &Identity,
        trash: &Path,
    ) -> Result<Retired> {
        let presence = self.session_presence(root, session, id)?;
        move_to_trash(root, presence, &session.place, trash)
    }

    /// Take a retired generation (recorded as `id`) away; as [`Backend::retire_session`].
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
            what: format!("the {} backend owes no removal of {id}", self.kind().name()),
        })
    }

    /// Remove what this backend holds of `project` apart from its trees (ZFS: the project's
    /// container dataset), once every session and generation is gone: the end of a delete.
    fn remove_project(&self, root: &RootDir, project: &str) -> Result<()> {
        let _ = (root, project);
        Ok(())
    }

    /// Remove what this backend keeps for `project` beside its trees (an empty directory of
    /// its own) when a project that never came to be is forgotten; `false` keeps the project,
    /// because something of it is still there.
    fn forget_project(&self, root: &RootDir, project: &str) -> Result<bool> {
        let _ = (root, project);
        Ok(true)
    }

    /// Bytes the generation occupies, where this backend keeps that count (ZFS's `referenced`,
    /// a btrfs qgroup): read, not walked. `None` where it keeps none, and the lifecycle walks
    /// the tree once ([`disk_usage`]).
    fn counted_size(&self, root: &RootDir, generation: &Generation) -> Option<u64> {
        let _ = (root, generation);
        None
    }

    /// Things of `project` this backend holds apart from the root's directories (ZFS datasets)
    /// that no record names and that are not `owed` removals: reported by gc, never removed.
    fn unrecorded(
        &self,
        root: &RootDir,
        project: &str,
        sessions: &[String],
        generations: &[u64],
        owed: &[Identity],
    ) -> Result<Vec<String>> {
        let _ = (root, project, sessions, generations, owed);
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
    crate::copy::remove_at(parent.as_fd(), name, &root.join(rel))
}

/// Bytes allocated under the open directory `dir` (st_blocks), each inode once; 0 for what
/// cannot be read. Directories are opened with O_NOATIME and never through a symlink: sizing a
/// tree must not change it.
pub(crate) fn disk_usage(dir: OwnedFd, path: &Path) -> u64 {
    use crate::sys::fs::READ_DIR;
    use rustix::fs::AtFlags;
    let mut seen = std::collections::HashSet::new();
    let mut total = rustix::fs::fstat(&dir).map_or(0, |st| st.st_blocks as u64 * 512);
    let mut stack = vec![dir];
    while let Some(fd) = stack.pop() {
        let Ok(names) = rootdir::list_fd(fd.as_fd(), path) else { continue };
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
                let child = crate::sys::fs::openat_noatime(fd.as_fd(), &*name, READ_DIR);
                if let Ok(child) = child {
                    stack.push(child);
                }
            }
        }
    }
    total
}

/// Create the empty directory `rel` (mode 0700) and open it.
pub(crate) fn make_dir(root: &RootDir, rel: &Path) -> Result<OwnedFd> {
    let (parent, name) = root.parent(rel)?;
    rustix::fs::mkdirat(&parent, name, rustix::fs::Mode::from_raw_mode(0o700)).map_err(|e| {
        if e == rustix::io::Errno::EXIST {
            Error::AlreadyExists { path: root.join(rel) }
        } else {
            Error::io("mkdir", root.join(rel), e)
        }
    })?;
    root.dir(rel)
}

/// What is at a place instead of what was recorded, for messages.
pub(crate) fn describe(e: &rootdir::Entry, wanted: &str) -> String {
    let kind = match e.mode & libc::S_IFMT {
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symlink",
        libc::S_IFREG => "a file",
        _ => "a special file",
    };
    format!("holds {kind} (device {}, inode {}), not the recorded {wanted}", e.dev, e.ino)
}

/// What an import fills a new generation with: a directory of the caller's, copied, or a
/// received stream, unpacked. The backends build the same tree either way, under the same
/// intents, so a receive is recovered and rolled back exactly as an import is.
pub(crate) enum Source<'a, 'r> {
    /// A directory tree (the caller's path: a symlink at its end is followed).
    Dir(&'a Path),
    /// A stream whose header has been read; taken by the one fill that unpacks it. An
    /// increment comes with where its base is (the receiver's generation it was sent from).
    Stream(
        &'a std::cell::RefCell<Option<crate::stream::StreamReader<'r>>>,
        &'a StreamHeader,
        Option<StreamBase<'a>>,
    ),
}

/// Where an increment finds the tree of its base.
pub(crate) enum StreamBase<'a> {
    /// Open beside the new tree: the fill copies it in first.
    Copy(&'a BaseTree),
    /// In the new tree already: the backend makes the next generation as a clone of the
    /// current one ([`Backend::applies_increments_in_place`]), and the lifecycle checked, under
    /// the project's exclusive lock, that the current one is the base. Only
    /// [`Source::fill_onto_base`] takes it.
    InPlace,
}

/// The open tree of the generation an increment applies to.
pub(crate) struct BaseTree {
    pub fd: OwnedFd,
    pub path: PathBuf,
}

impl Source<'_, '_> {
    /// Checked before anything is made: a directory must be one.
    pub(crate) fn check(&self) -> Result<()> {
        match self {
            Source::Dir(src) => check_source(src),
            Source::Stream(..) => Ok(()),
        }
    }

    /// Bytes the tree occupies (to size a new image or volume): a walk of a directory, the
    /// sender's count for a stream.
    pub(crate) fn used(&self) -> u64 {
        match self {
            Source::Dir(src) => open_source(src).map_or(0, |fd| disk_usage(fd, src)),
            // The sender's word, so bounded: at least the data (a compressing sender counts
            // fewer blocks), at most 1 PiB (a hostile header must not size a volume to wrap).
            Source::Stream(_, header, _) => header.used.max(header.bytes).min(1 << 50),
        }
    }

    /// The source is not needed after all (the generation is there already): a stream is
    /// still read to its end and checked.
    pub(crate) fn verify(&self) -> Result<()> {
        match self {
            Source::Dir(_) => Ok(()),
            Source::Stream(reader, _, _) => match reader.borrow_mut().take() {
                Some(r) => r.verify_to_end(),
                None => Ok(()),
            },
        }
    }

    /// Fill the empty open directory `dst` (at `dst_path`) with the tree, its root's metadata
    /// on `dst`, with `opts` (progress, cancel, sync). On error `dst` is emptied again.
    pub(crate) fn fill(
        &self,
        dst: BorrowedFd<'_>,
        dst_path: &Path,
        opts: &CopyOptions,
    ) -> Result<()> {
        match self {
            Source::Dir(src) => {
                let source = open_source(src)?;
                crate::copy::copy_dir_into(source.as_fd(), src, dst, dst_path, opts).map(|_| ())
            }
            Source::Stream(_, _, Some(StreamBase::InPlace)) => Err(Error::InvalidArgument {
                what: "an increment to apply in place needs a clone of its base".into(),
            }),
            Source::Stream(reader, _, base) => {
                let reader = take_reader(reader)?;
                // An increment changes a copy of its base (reflinked where the filesystem
                // can) into its own tree.
                let based = match base {
                    Some(StreamBase::Copy(b)) => {
                        let copy = CopyOptions { sync: false, ..opts.clone() };
                        crate::copy::copy_dir_into(b.fd.as_fd(), &b.path, dst, dst_path, &copy)
                            .map(|_| ())
                    }
                    _ => Ok(()),
                };
                let filled = based.and_then(|()| unpack_synced(reader, dst, dst_path, opts));
                if filled.is_err() {
                    let _ = crate::copy::remove_contents(dst, dst_path);
                }
                filled
            }
        }
    }

    /// Whether this is an increment to apply in place ([`StreamBase::InPlace`]).
    pub(crate) fn in_place(&self) -> bool {
        matches!(self, Source::Stream(_, _, Some(StreamBase::InPlace)))
    }

    /// Apply an increment in place to `dst`, a writable clone of its base (see
    /// [`StreamBase::InPlace`]). On error `dst` holds part of the change: the caller discards
    /// it with the new generation.
    pub(crate) fn fill_onto_base(
        &self,
        dst: BorrowedFd<'_>,
        dst_path: &Path,
        opts: &CopyOptions,
    ) -> Result<()> {
        let Source::Stream(reader, _, Some(StreamBase::InPlace)) = self else {
            return Err(Error::InvalidArgument {
                what: "only an increment can be applied onto its base".into(),
            });
        };
        unpack_synced(take_reader(reader)?, dst, dst_path, opts)
    }
}

/// Unpack `reader` into `dst` with `opts`' progress and cancel, then sync it if `opts` asks.
fn unpack_synced(
    reader: crate::stream::StreamReader<'_>,
    dst: BorrowedFd<'_>,
    dst_path: &Path,
    opts: &CopyOptions,
) -> Result<()> {
    reader.unpack_into(dst, dst_path, opts.progress.as_deref(), opts.cancel.as_ref())?;
    if opts.sync {
        rustix::fs::syncfs(dst).at("syncfs", dst_path)?;
    }
    Ok(())
}

fn take_reader<'r>(
    reader: &std::cell::RefCell<Option<crate::stream::StreamReader<'r>>>,
) -> Result<crate::stream::StreamReader<'r>> {
    reader.borrow_mut().take().ok_or_else(|| Error::InvalidArgument {
        what: "a received stream can fill one tree only".into(),
    })
}

/// The source directory `src` is a directory (a symlink at its end is followed).
pub(crate) fn check_source(src: &Path) -> Result<()> {
    let meta = std::fs::metadata(src).at("stat", src)?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory { path: src.to_path_buf() });
    }
    Ok(())
}

/// The open source directory `src` (the caller's path: a symlink at its end is followed).
pub(crate) fn open_source(src: &Path) -> Result<OwnedFd> {
    check_source(src)?;
    // Following a final symlink (the caller's path), but not moving the source's atime.
    let flags =
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC;
    crate::sys::fs::openat_noatime(rustix::fs::CWD, src, flags).at("open", src)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    /// Records (serde), messages and the C names (strum) spell a backend the same way.
    #[test]
    fn a_backend_has_one_name() {
        for &kind in BackendKind::VARIANTS {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
            assert_eq!(kind.name().parse::<BackendKind>().unwrap(), kind);
            assert_eq!(BackendKind::from_repr(kind as u32), Some(kind));
        }
        assert_eq!(BackendKind::from_repr(0), None, "0 is the C API's 'detect'");
    }
}
