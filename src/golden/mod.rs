//! The golden lifecycle: per project a golden tree in generations, per session a private writable
//! copy of the current generation, promotion of a session to the next generation while older
//! sessions keep running, cleanup, garbage collection, crash recovery.
//!
//! One API over the backends ([`crate::backend`]), picked from the cache root and overridable:
//! the lifecycle knows what a generation and a session are, never how a backend makes them.
//!
//! What the lifecycle guarantees (README, "The lifecycle's guarantees"):
//! * It only removes or changes what it made and recorded: every path is resolved beneath the
//!   root without following symlinks (`RootDir`); a tree is acted on only where it is the one
//!   its record names (its backend's `Identity`); anything else is reported by gc and left
//!   alone.
//! * A session in use ([`holders`]: any process or mount, in any mount namespace) is neither
//!   promoted nor removed, and removal never crosses a mount point.
//! * An operation that fails has had no effect, or its error is [`Error::Incomplete`]; one that
//!   is killed is finished or undone by the next operation on its project, `open` or `gc`.
//! * One stuck project or session is reported and skipped; `open` never waits for another
//!   process's operations.

mod attach;
mod edit;
mod holders;
mod state;
mod transfer;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use state::{validate_name, MAX_ID_LEN};
pub use transfer::Sent;

pub use crate::backend::{BackendKind, Watch};

use state::{
    lock_project, read_current, read_generation, read_session, Access, Found, GenerationMeta,
    Intent, Layout, Missing, ProjectLock, SessionMeta, Wait,
};

use crate::backend::{self, Backend, Generation, Identity, Presence, Retired, RootDir, Session};
use crate::{fault, Context, Error, Result};

/// How long gc waits for one project's lock before it reports the project busy and goes on.
const GC_LOCK_WAIT: Duration = Duration::from_secs(60);

/// How to open a cache.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Force a backend instead of detecting one from the root.
    pub backend: Option<BackendKind>,
    /// Worker threads of the copy backend (0 = default, at most 1024).
    pub copy_threads: usize,
    /// Backend setting passed through (zvol): size of a project's first volume, which every
    /// session of the project gets too; 0 picks four times the imported tree, at least 16 GiB
    /// (a session writes far more than the tree it starts from). Volumes are sparse: only
    /// written blocks use space.
    pub zvol_size: u64,
    /// Backend setting passed through (zvol): `volblocksize` of new volumes, a power of two
    /// from 4 KiB to 128 KiB; 0 picks 8 KiB (16 KiB costs XFS metadata writes a 4x
    /// read-modify-write).
    pub zvol_block_size: u64,
    /// Backend setting passed through (image): size of a new generation's image, which every
    /// session made from it gets too; 0 picks four times the imported tree, at least 16 GiB,
    /// at most the cache root's filesystem. Images are sparse: only written blocks use space.
    /// At least 512 MiB (an XFS needs 300 MiB).
    pub image_size: u64,
}

/// What a project's golden tree is now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GoldenInfo {
    /// The project id.
    pub project: String,
    /// Current generation, from 1.
    pub generation: u64,
    /// When this generation was made, seconds since the Unix epoch.
    pub created_at: u64,
    /// The session it was promoted from; `None` for an imported generation.
    pub source_session: Option<String>,
    /// The backend holding it.
    pub backend: BackendKind,
    /// Bytes used by the golden tree: ZFS's `referenced`, on btrfs with quotas on the
    /// subvolume's qgroup `rfer` (both read, not walked), else the allocated bytes of a walk
    /// made once per generation.
    pub size_bytes: u64,
    /// Sessions of this project that exist now, with the generation each was made from.
    pub sessions: Vec<(String, u64)>,
}

/// One session, from [`Cache::session_info`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionInfo {
    /// The project id.
    pub project: String,
    /// The session id.
    pub session: String,
    /// Where the session is shown: the caller's path it was set up at
    /// ([`SetupOptions::at`]), else its place in the cache root.
    pub path: PathBuf,
    /// Whether the session is shown at `path` now: false after a reboot or an interrupted
    /// operation took the bind at a caller's path away (setup with reuse shows it again).
    pub attached: bool,
    /// The generation it was made from.
    pub generation: u64,
    /// When it was set up, seconds since the Unix epoch.
    pub created_at: u64,
    /// What holds it now (processes, mounts), described; empty when it is not in use.
    pub holders: Vec<String>,
}

impl SessionInfo {
    /// Whether anything holds the session now.
    pub fn in_use(&self) -> bool {
        !self.holders.is_empty()
    }
}

/// How [`Cache::setup_with_options`] sets a session up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetupOptions {
    /// Show the session at this path instead of `ROOT/<project>/sessions/<id>`: an absolute,
    /// plain path where nothing is yet, whose parent is an existing directory reached without
    /// symlinks, outside the cache root and outside other sessions (InvalidArgument,
    /// AlreadyExists, NotFound or NotADirectory otherwise, with nothing changed). goldclone
    /// makes the directory and bind-mounts the session there (any filesystem; needs
    /// CAP_SYS_ADMIN); cleanup, a consuming promote, delete and recovery take both away again.
    /// The session's tree stays in the root. After a reboot the bind is gone and the directory
    /// is empty: [`SetupOptions::reuse`] with the same path shows the session there again.
    pub at: Option<PathBuf>,
    /// An existing session of this name is returned as it is (see [`Cache::setup_or_reuse`])
    /// instead of AlreadyExists. With `at`, it must be the session's recorded path
    /// (InvalidArgument otherwise).
    pub reuse: bool,
}

/// How [`Cache::cleanup_with_options`] removes a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupOptions {
    /// A session something still uses is taken from every path it is shown at (its place, a
    /// caller's path: unmounted lazily in this mount namespace, its empty directory kept until
    /// gc), so nothing new reaches it, and its tree is left to the processes and mounts that
    /// have it; gc removes it once nothing holds it, and until then
    /// reports it in [`GcReport::kept`]. Its record is gone at once (the name can be set up
    /// again; on ZFS and zvol only once gc has destroyed the old dataset). Without `lazy`, such
    /// a session is [`Error::SessionBusy`] and nothing changes.
    pub lazy: bool,
}

/// What [`Cache::cleanup_with_options`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleaned {
    /// The session and its tree are gone.
    Removed,
    /// The session is gone; its tree waits for these holders (described) to let go, and gc
    /// removes it then.
    Detached {
        /// What held the session when it was detached.
        holders: Vec<String>,
    },
}

/// The hook of a promote ([`PromoteOptions::edit`]): called with the new generation's writable
/// tree and its number; an error commits nothing.
pub type EditHook<'a> = dyn Fn(&Path, u64) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>
    + Sync
    + 'a;

/// What a promote does besides making the session's tree the next generation
/// ([`Cache::promote_with_options`]).
#[derive(Default)]
pub struct PromoteOptions<'a> {
    /// Take the session itself: the session is gone once the promote has succeeded (its record
    /// too), for a caller that would discard it anyway. On the copy backend its tree becomes the
    /// generation by a rename, whatever its size; btrfs and ZFS make the generation as always
    /// and then remove the session. If something has started using the session meanwhile the
    /// promote fails with [`Error::SessionBusy`] (copy) or the session is kept as an ordinary
    /// one (btrfs, ZFS). A promote that fails or is cancelled gives the session back at its
    /// place, its dropped paths restored (one whose place the edit hook took stays in an
    /// aside directory, reported); what `edit` changed stays changed. On ZFS and zvol, where
    /// the edits are made in the session itself, the drops are final once the hook has
    /// returned: the promote is not stopped after that point.
    pub consume: bool,
    /// Paths relative to the tree's top (`containers`, `overlay2/<id>`) removed from the new
    /// generation before it is committed; one that is not there is skipped. Plain relative
    /// paths only (no `..`, `.`, leading `/`): InvalidArgument otherwise. A symlink at a path
    /// is removed, never followed; a path that leads through a symlink or a mount fails the
    /// promote. Until the commit they are only moved aside, so a failed promote restores them.
    pub drop: Vec<PathBuf>,
    /// Called once, after `drop`, with the writable tree that becomes the generation and its
    /// number. On ZFS and zvol that tree is the session's own (the backend promotes the session
    /// itself), so edits there need `consume`.
    pub edit: Option<&'a EditHook<'a>>,
}

impl std::fmt::Debug for PromoteOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromoteOptions")
            .field("consume", &self.consume)
            .field("drop", &self.drop)
            .field("edit", &self.edit.map(|_| "<hook>"))
            .finish()
    }
}

/// What [`Cache::gc`] (or the recovery in [`Cache::open`]) did and found, one line per item.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Removed: retired generations, trash, records of trees that are gone.
    pub removed: Vec<String>,
    /// Interrupted operations finished or rolled back.
    pub recovered: Vec<String>,
    /// Found and left alone: entries goldclone did not make, damaged state, each with why.
    pub kept: Vec<String>,
    /// What could not be done now (a busy project, a removal that failed), with the error;
    /// the next gc tries again.
    pub failed: Vec<String>,
}

impl GcReport {
    /// Nothing removed, recovered, kept or failed.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
            && self.recovered.is_empty()
            && self.kept.is_empty()
            && self.failed.is_empty()
    }

    /// Say what was done and found: what was removed or recovered as information, what was
    /// left alone or could not be done as warnings.
    fn log(&self, during: &str) {
        for r in &self.removed {
            tracing::info!(target: "goldclone::gc", "{during}: removed {r}");
        }
        for r in &self.recovered {
            tracing::info!(target: "goldclone::recovery", "{during}: {r}");
        }
        for k in &self.kept {
            tracing::warn!(target: "goldclone::gc", "{during}: kept {k}");
        }
        for f in &self.failed {
            tracing::warn!(target: "goldclone::gc", "{during}: could not {f}");
        }
    }

    fn merge(&mut self, other: GcReport) {
        self.removed.extend(other.removed);
        self.recovered.extend(other.recovered);
        self.kept.extend(other.kept);
        self.failed.extend(other.failed);
    }
}

/// A golden-tree cache rooted at a directory (which backends may require to be a mount point:
/// see [`crate::backend`]).
///
/// `Cache` is `Send + Sync`: one value may serve many threads, and many processes may open the
/// same root at once; per-project locks (flock) keep them apart.
#[derive(Debug)]
pub struct Cache {
    root: RootDir,
    /// The cache's own id (`cache.json`): part of the stream id of every generation made here.
    id: String,
    store: Box<dyn Backend>,
    opened: GcReport,
}

/// What resolving an intent did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The operation took effect (it had committed, or could only go forward).
    Finished(String),
    /// The operation has no lasting effect.
    RolledBack(String),
}

impl Outcome {
    fn describe(self) -> String {
        match self {
            Outcome::Finished(s) | Outcome::RolledBack(s) => s,
        }
    }
}

impl Cache {
    /// Open (creating the state directory if needed) the cache at `root`, and finish or roll back
    /// what crashed processes left half done in projects nobody is working on. Never waits for
    /// another process's operations and never fails because of one project: what it could not
    /// resolve is in [`Cache::recovery_report`] (and gc, or the project's next operation,
    /// resolves it).
    pub fn open(root: &Path, opts: &OpenOptions) -> Result<Cache> {
        let meta = std::fs::metadata(root).at("stat", root)?;
        if !meta.is_dir() {
            return Err(Error::NotADirectory { path: root.to_path_buf() });
        }
        if opts.copy_threads > 1024 {
            return Err(Error::InvalidArgument {
                what: format!("{} copy threads is more than 1024", opts.copy_threads),
            });
        }
        if opts.zvol_block_size != 0
            && !(opts.zvol_block_size.is_power_of_two()
                && (4096..=128 << 10).contains(&opts.zvol_block_size))
        {
            return Err(Error::InvalidArgument {
                what: format!(
                    "zvol block size {} is not a power of two from 4 KiB to 128 KiB",
                    opts.zvol_block_size
                ),
            });
        }
        if opts.image_size != 0 && opts.image_size < 512 << 20 {
            return Err(Error::InvalidArgument {
                what: format!("image size {} is less than 512 MiB", opts.image_size),
            });
        }
        let canonical = root.canonicalize().at("canonicalize", root)?;
        let dir = RootDir::open(&canonical)?;
        // An existing cache keeps its backend (a default that changed, or detection that sees
        // another one for a less privileged process, must not turn its records away).
        let requested = match opts.backend {
            Some(b) => Some((b, "requested by the caller")),
            None => state::recorded_backend(&dir).map(|b| (b, "recorded in the cache")),
        };
        let plan = backend::plan(&canonical, requested)?;
        let cache_id = state::open_state(&dir, plan.kind())?;
        let settings = backend::Settings {
            copy_threads: opts.copy_threads,
            zvol_size: opts.zvol_size,
            zvol_block_size: opts.zvol_block_size,
            image_size: opts.image_size,
        };
        let store = plan.build(&cache_id, settings)?;
        store.prepare_root(&dir)?;
        let mut cache = Cache { root: dir, id: cache_id, store, opened: GcReport::default() };
        cache.opened = cache.recover_idle_projects();
        cache.opened.log("open");
        Ok(cache)
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        self.store.kind()
    }

    /// What [`Cache::open`] recovered, and what it found and left for later.
    pub fn recovery_report(&self) -> &GcReport {
        &self.opened
    }

    /// Make `dir` generation 1 of a new project. `dir` is copied into the backend's kind of
    /// tree; it is not changed. AlreadyExists if the project exists or
    /// `ROOT/<project>` is taken by anything.
    pub fn import(&self, project: &str, dir: &Path) -> Result<u64> {
        self.import_with(project, dir, &Watch::default())
    }

    /// [`Cache::import`], reporting to and stopped by `watch`.
    pub fn import_with(&self, project: &str, dir: &Path, watch: &Watch) -> Result<u64> {
        validate_name(project)?;
        self.check_import_source(dir)?;
        self.import_from(project, &backend::Source::Dir(dir), None, watch)
    }

    /// Make generation 1 of the new project `project` from `src` (`origin`: its id, for a
    /// received one).
    fn import_from(
        &self,
        project: &str,
        src: &backend::Source<'_, '_>,
        origin: Option<&str>,
        watch: &Watch,
    ) -> Result<u64> {
        if self.root.entry(&Layout::project(project))?.is_some()
            && self.root.entry(&Layout::project_state(project))?.is_none()
        {
            // Taken by something that is not a project of ours: never move in.
            return Err(Error::AlreadyExists { path: self.root.join(&Layout::project(project)) });
        }
        let lock =
            lock_project(&self.root, project, Access::Exclusive, Missing::Create, Wait::Forever)?
                .expect("waits for the lock");
        let imported = (|| {
            self.recover_or_fail(project, &lock)?;
            if read_current(&self.root, project)?.is_some() {
                return Err(Error::AlreadyExists {
                    path: self.root.join(&Layout::project(project)),
                });
            }
            if !state::generation_numbers(&self.root, project)?.is_empty()
                || !state::session_names(&self.root, project)?.is_empty()
            {
                return Err(Error::Damaged {
                    path: self.root.join(&Layout::project_state(project)),
                    what: "has records but no current generation".into(),
                });
            }
            if self.root.entry(&Layout::project(project))?.is_some() {
                return Err(Error::AlreadyExists {
                    path: self.root.join(&Layout::project(project)),
                });
            }
            let generation = 1;
            self.store.generation_free(&self.generation(project, generation, generation), None)?;
            let staging = state::own_name("import", "1");
            let intent = Intent::Import { project: project.to_string(), generation, staging };
            self.run(
                &intent,
                || Ok(()),
                || generation,
                |()| {
                    for d in [
                        Layout::project(project),
                        Layout::generations(project),
                        Layout::sessions(project),
                        Layout::generation_records(project),
                        Layout::session_records(project),
                        Layout::trash(project),
                    ] {
                        self.root.mkdir(&d)?;
                    }
                    let g = self.generation(project, generation, generation);
                    let staging = self.staging_of(&intent);
                    watch.check()?;
                    let identity = self.store.import(&self.root, src, &g, &staging, watch)?;
                    fault::point("import:tree-created");
                    self.commit_generation(&g, None, origin, identity, &staging, watch)?;
                    Ok(generation)
                },
            )
        })();
        if imported.is_err() {
            // A project that never came to be leaves nothing: no lock files, no journal.
            let _ = self.forget_if_empty(project, &lock);
        }
        drop(lock);
        imported
    }

    /// Make `dir` the next generation of the existing project `project`, as a promote makes a
    /// session one: sessions keep the generation they were made from, new sessions get this
    /// one, and the previous generation goes once no session uses it. `dir` is copied (on ZFS
    /// into a clone of the current generation, emptied first, so that the generations stay one
    /// chain of snapshots) and not changed. NotFound if the project does not exist.
    pub fn import_next(&self, project: &str, dir: &Path) -> Result<u64> {
        self.import_next_with(project, dir, &Watch::default())
    }

    /// [`Cache::import_next`], reporting to and stopped by `watch`. On ZFS an import stopped
    /// after its first `lzc_promote` can only go forward: it finishes and succeeds.
    pub fn import_next_with(&self, project: &str, dir: &Path, watch: &Watch) -> Result<u64> {
        validate_name(project)?;
        self.check_import_source(dir)?;
        self.import_next_from(project, &backend::Source::Dir(dir), None, None, watch)
    }

    /// Make `src` the next generation of the existing project `project` (`origin`: its id,
    /// for a received one: if that is the current generation already, nothing is done).
    fn import_next_from(
        &self,
        project: &str,
        src: &backend::Source<'_, '_>,
        origin: Option<&str>,
        base: Option<&str>,
        watch: &Watch,
    ) -> Result<u64> {
        if src.in_place() && base.is_none() {
            return Err(Error::InvalidArgument {
                what: "an increment applied in place needs its base checked".into(),
            });
        }
        let lock = self.lock_exclusive(project)?;
        self.recover_or_fail(project, &lock)?;
        let (previous, previous_meta) = self.current_generation(project)?;
        let current_id = self.stream_id(&previous_meta);
        if origin.is_some_and(|o| current_id == o) {
            src.verify()?;
            tracing::info!(
                target: "goldclone::golden",
                "{project}: generation {} is the stream's generation already; nothing received",
                previous.number
            );
            return Ok(previous.number);
        }
        // An increment goes onto its base only: the current generation when it was opened,
        // and still (the lock keeps it so from here).
        if let Some(base) = base.filter(|b| *b != current_id) {
            return Err(Error::NoBase {
                project: project.to_string(),
                base: base.to_string(),
                what: format!(
                    "generation {} ({current_id}) became current here meanwhile: receive again",
                    previous.number
                ),
            });
        }
        let g = self.next_generation(project, &previous)?;
        self.store.generation_free(&g, None)?;
        let number = g.number;
        let intent = Intent::ImportNext {
            project: project.to_string(),
            generation: number,
            previous: previous.number,
            staging: state::own_name("import", &number.to_string()),
            origin: origin.map(str::to_string),
        };
        // The exclusive lock keeps everything checked above as it is.
        let imported = self.run(
            &intent,
            || Ok(()),
            || number,
            |()| {
                watch.check()?;
                let staging = self.staging_of(&intent);
                let identity =
                    self.store.import_next(&self.root, src, &g, &previous, &staging, watch)?;
                fault::point("import:tree-created");
                self.commit_generation(&g, None, origin, identity, &staging, watch)?;
                Ok(number)
            },
        )?;
        drop(lock);
        // The previous generation is retired now: gone at once if no session uses it, else
        // with its last session. A failure here leaves it for gc.
        if let Ok(_lock) = self.lock_shared(project) {
            let _ = self.reclaim_if_unused(project, previous.number);
        }
        Ok(imported)
    }

    /// `dir` can be imported: a directory, and not one the cache root is inside (the root
    /// would be copied into itself, the staging copy too, until the filesystem fills). A tree
    /// inside the root (a session) is fine.
    fn check_import_source(&self, dir: &Path) -> Result<()> {
        let meta = std::fs::metadata(dir).at("stat", dir)?;
        if !meta.is_dir() {
            return Err(Error::NotADirectory { path: dir.to_path_buf() });
        }
        let src = dir.canonicalize().at("canonicalize", dir)?;
        if self.root.path().starts_with(&src) {
            return Err(Error::DestinationInsideSource {
                src: dir.to_path_buf(),
                dst: self.root.path().to_path_buf(),
            });
        }
        Ok(())
    }

    /// The generation after every one the project has had (numbers are never reused), with
    /// `current` as its head; Damaged if something without a record is at its place.
    fn next_generation(&self, project: &str, current: &Generation) -> Result<Generation> {
        let number = state::generation_numbers(&self.root, project)?
            .last()
            .copied()
            .unwrap_or(0)
            .max(current.number)
            + 1;
        let g = self.generation(project, number, current.number);
        if self.root.entry(&g.place)?.is_some() {
            return Err(Error::Damaged {
                path: self.root.join(&g.place),
                what: "is in the way of the next generation and has no record".into(),
            });
        }
        Ok(g)
    }

    /// A writable private copy of the project's current generation; returns its path. Sessions
    /// of one project are set up concurrently.
    pub fn setup(&self, project: &str, session: &str) -> Result<PathBuf> {
        self.setup_with(project, session, &Watch::default())
    }

    /// [`Cache::setup`], reporting to and stopped by `watch`.
    pub fn setup_with(&self, project: &str, session: &str, watch: &Watch) -> Result<PathBuf> {
        self.setup_with_options(project, session, &SetupOptions::default(), watch).map(|(p, _)| p)
    }

    /// The session's path if it exists (and is whole: [`Error::Damaged`] otherwise), else a new
    /// session as [`Cache::setup_with`] makes it; `true` with a session that was there already.
    /// A reused session keeps the generation it was made from ([`Cache::session_info`] tells).
    /// A session of a mount-based backend (images, ZFS, zvol) that is whole but not mounted
    /// (after a reboot) is mounted at its place again, with what was written in it; not over
    /// files in its bare mount point or another mount ([`Error::Damaged`]), and not while a
    /// loop device elsewhere still serves its image (Busy).
    /// A setup or cleanup of the same session in flight is waited for; a dead one is finished
    /// or undone first.
    pub fn setup_or_reuse(
        &self,
        project: &str,
        session: &str,
        watch: &Watch,
    ) -> Result<(PathBuf, bool)> {
        let opts = SetupOptions { reuse: true, ..SetupOptions::default() };
        self.setup_with_options(project, session, &opts, watch)
    }

    /// A session set up as `opts` says: at a path of the caller's choosing, or an existing one
    /// reused; returns its path and whether it was there already.
    pub fn setup_with_options(
        &self,
        project: &str,
        session: &str,
        opts: &SetupOptions,
        watch: &Watch,
    ) -> Result<(PathBuf, bool)> {
        validate_name(project)?;
        validate_name(session)?;
        let at = opts.at.as_deref();
        if !opts.reuse {
            return self.setup_new(project, session, at, watch).map(|p| (p, false));
        }
        let existing = || -> Result<Option<PathBuf>> {
            let _lock = self.lock_shared(project)?;
            self.known_project(project)?;
            self.settle_session(project, session)?;
            let Some(meta) = read_session(&self.root, project, session)? else { return Ok(None) };
            let s = self.session(project, session);
            if at.is_some() && meta.at.as_deref() != at {
                return Err(Error::InvalidArgument {
                    what: format!(
                        "session {session} of project {project} exists at {}, not at {}",
                        self.shown_path(&s, &meta).display(),
                        at.map_or_else(|| self.root.join(&s.place), Path::to_path_buf).display()
                    ),
                });
            }
            self.remount(&s, &meta)?;
            self.check_session_place(&s, &meta)?;
            self.reattach(&s, &meta)?;
            Ok(Some(self.shown_path(&s, &meta)))
        };
        if let Some(path) = existing()? {
            return Ok((path, true));
        }
        match self.setup_new(project, session, at, watch) {
            Ok(path) => Ok((path, false)),
            // Another caller set it up meanwhile (or is at it: its intent made ours busy), or
            // something that is no session is there.
            Err(e)
                if matches!(e, Error::AlreadyExists { .. }) || e.errno() == Some(libc::EBUSY) =>
            {
                match existing()? {
                    Some(path) => Ok((path, true)),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A new session, shown at `at` if given.
    fn setup_new(
        &self,
        project: &str,
        session: &str,
        at: Option<&Path>,
        watch: &Watch,
    ) -> Result<PathBuf> {
        let _lock = self.lock_shared(project)?;
        let (generation, gen_meta) = self.current_generation(project)?;
        let s = self.session(project, session);
        // Refused at once if taken; checked again once the intent holds the session's name, so
        // that a setup that raced this one to the same name is never taken for this one.
        let free = || -> Result<Option<attach::Target>> {
            if read_session(&self.root, project, session)?.is_some()
                || self.root.entry(&s.place)?.is_some()
            {
                return Err(Error::AlreadyExists { path: self.root.join(&s.place) });
            }
            self.store.session_free(&self.root, &s)?;
            at.map(|at| attach::Target::check(at, &self.cache_trees()?)).transpose()
        };
        free()?;
        let staging_name = state::own_name("setup", session);
        let intent = Intent::Setup {
            project: project.to_string(),
            session: session.to_string(),
            generation: generation.number,
            staging: staging_name.clone(),
            at: at.map(Path::to_path_buf),
        };
        let path = at.map_or_else(|| self.root.join(&s.place), Path::to_path_buf);
        self.run(
            &intent,
            free,
            || path.clone(),
            |target| {
                watch.check()?;
                let staging = self.staging_of(&intent);
                let identity = self.store.create_session(
                    &self.root,
                    &generation,
                    &gen_meta.identity,
                    &s,
                    &staging,
                    watch,
                )?;
                fault::point("setup:tree-created");
                if let Some(target) = &target {
                    // Before the commit: a setup that cannot show the session where asked
                    // has not happened. The bind follows the tree when it is published.
                    let tree = self.store.session_built_at(&staging, &s.place);
                    target.attach(&self.root, tree, &staging_name)?;
                    fault::point("setup:attached");
                }
                // The commit point: a stop asked for before it undoes the setup, none after.
                watch.commit(|| {
                    state::write_json(
                        &self.root,
                        &Layout::session_meta(project, session),
                        &SessionMeta {
                            project: project.to_string(),
                            session: session.to_string(),
                            generation: generation.number,
                            created_at: state::now(),
                            identity,
                            made_by: staging_name.clone(),
                            at: at.map(Path::to_path_buf),
                        },
                    )
                })?;
                fault::point("setup:meta-written");
                // Failing here (even after the rename, on its fsync), recovery decides from what is
                // where: the record stays for it.
                self.store.publish_session(&self.root, &staging, &s.place)?;
                Ok(path.clone())
            },
        )
    }

    /// Where the session is shown to its users: the caller's path, else its place.
    fn shown_path(&self, s: &Session, meta: &SessionMeta) -> PathBuf {
        meta.at.clone().unwrap_or_else(|| self.root.join(&s.place))
    }

    /// Device and inode of every directory whose inside is the cache's, for
    /// [`attach::Target::check`]: the root, and the trees of sessions and generations (which a
    /// bind mount may show elsewhere).
    fn cache_trees(&self) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        let root = crate::backend::rootdir::statx_entry(self.root.fd(), std::ffi::OsStr::new(""))
            .at_with("statx", || self.root.path().to_path_buf())?;
        out.push((root.dev, root.ino));
        // Every directory of the root's own (a bind mount of one elsewhere is inside the cache
        // too), and every tree in them.
        for top in self.root.list(Path::new(""))? {
            if let Ok(Some(e)) = self.root.entry(Path::new(&top)) {
                out.push((e.dev, e.ino));
            }
        }
        for project in state::projects(&self.root)?.0 {
            for dir in [Layout::sessions(&project), Layout::generations(&project)] {
                if let Ok(Some(e)) = self.root.entry(&dir) {
                    out.push((e.dev, e.ino));
                }
                let Ok(names) = self.root.list(&dir) else { continue };
                for name in names {
                    if let Ok(Some(e)) = self.root.entry(&dir.join(name)) {
                        out.push((e.dev, e.ino));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Run `f` on session `s` (recorded as `meta`) under the setup's own intent again, once the
    /// record is seen unchanged under it: no cleanup of the session runs meanwhile, and no
    /// second caller does the same. A kill leaves the intent for recovery, which finds the
    /// session whole (shown, mounted or not) and keeps it.
    fn under_setup_intent<T>(
        &self,
        s: &Session,
        meta: &SessionMeta,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let intent = Intent::Setup {
            project: s.project.clone(),
            session: s.name.clone(),
            generation: meta.generation,
            staging: meta.made_by.clone(),
            at: meta.at.clone(),
        };
        // Another caller at the same session (the reuse of one session by many after a
        // reboot): waited for, then this one looks again under its own intent.
        let mut tries = 0;
        let record = loop {
            match self.record(&intent) {
                Err(e) if e.errno() == Some(libc::EBUSY) && tries < 3 => {
                    tries += 1;
                    self.settle_session(&s.project, &s.name)?;
                }
                other => break other?,
            }
        };
        let done = (|| {
            if read_session(&self.root, &s.project, &s.name)?.as_ref() != Some(meta) {
                return Err(Error::UnknownSession {
                    project: s.project.clone(),
                    session: s.name.clone(),
                });
            }
            f()
        })();
        let _ = record.clear(&self.root);
        done
    }

    /// Mount a session that is whole but not mounted at its place (a reboot unmounts every
    /// session of the mount-based backends) there again: the reuse of a session after a
    /// reboot.
    fn remount(&self, s: &Session, meta: &SessionMeta) -> Result<()> {
        if !self.store.sessions_are_mounts()
            || !matches!(
                self.store.session_presence(&self.root, s, &meta.identity)?,
                Presence::Elsewhere(_)
            )
        {
            return Ok(());
        }
        let mounted = self.under_setup_intent(s, meta, || {
            let mounted = self.store.remount_session(&self.root, s, &meta.identity)?;
            fault::point("setup:remounted");
            Ok(mounted)
        })?;
        if mounted {
            tracing::info!(
                target: "goldclone::lifecycle",
                "session {} of project {} was not mounted (a reboot, or an unmount by someone): \
                 mounted at its place again",
                s.name,
                s.project
            );
        }
        Ok(())
    }

    /// Show session `s` (recorded as `meta`) at its recorded path again where the bind is gone
    /// (a reboot, a promote that gave the session back): the path empty and ours, or absent;
    /// anything else there is left alone (Damaged).
    fn reattach(&self, s: &Session, meta: &SessionMeta) -> Result<()> {
        let Some(at) = meta.at.as_deref() else { return Ok(()) };
        if attach::state_of(&self.root, &s.place, at, &meta.made_by)? == attach::State::Attached {
            return Ok(());
        }
        self.under_setup_intent(s, meta, || {
            match attach::state_of(&self.root, &s.place, at, &meta.made_by)? {
                attach::State::Attached => Ok(()),
                attach::State::Other(what) => Err(Error::Damaged { path: at.to_path_buf(), what }),
                state => {
                    if state == attach::State::Empty {
                        attach::detach(&self.root, &s.place, at, &meta.made_by)?;
                    }
                    attach::Target::check(at, &self.cache_trees()?)?.attach(
                        &self.root,
                        &s.place,
                        &meta.made_by,
                    )
                }
            }
        })
    }

    /// Take session `s`'s bind at its recorded path `at` away, with the directory setup
    /// `made_by` made for it; what is there and not goldclone's stays, logged.
    fn detach(&self, s: &Session, at: &Path, made_by: &str) -> Result<()> {
        if let attach::State::Other(what) = attach::detach(&self.root, &s.place, at, made_by)? {
            tracing::warn!(
                target: "goldclone::lifecycle",
                "session {} of project {}: {what}; left alone",
                s.name,
                s.project
            );
        }
        Ok(())
    }

    /// Wait (up to a minute) while a setup or cleanup of the session is in flight; finish or
    /// undo a dead one. The caller holds the project's shared lock.
    fn settle_session(&self, project: &str, session: &str) -> Result<()> {
        // Only the file name matters: one intent file per session.
        let probe = Intent::Cleanup {
            project: project.to_string(),
            session: session.to_string(),
            trash: String::new(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match state::find_intent(&self.root, &probe) {
                None | Some(Found::Gone) => return Ok(()),
                Some(Found::Dead(dead)) => {
                    self.resolve(&dead.intent)?;
                    return dead.clear(&self.root);
                }
                Some(Found::Damaged(e)) => return Err(e),
                Some(Found::Alive) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Some(Found::Alive) => {
                    return Err(Error::from_errno(
                        "wait for another operation on the session",
                        self.root.join(&Layout::session(project, session)),
                        libc::EBUSY,
                    ))
                }
            }
        }
    }

    /// Make the session's tree the project's next generation; returns that generation. The
    /// session must be quiesced (in use by nothing: [`Error::SessionBusy`] otherwise) and keeps
    /// running unchanged afterwards; sessions of older generations are not touched. A backend
    /// may only promote sessions of the current generation (ZFS): Unsupported otherwise.
    pub fn promote(&self, project: &str, session: &str) -> Result<u64> {
        self.promote_with(project, session, &Watch::default())
    }

    /// [`Cache::promote`], reporting to and stopped by `watch`. On ZFS a promote stopped after
    /// its first `lzc_promote` can only go forward: it finishes and succeeds.
    pub fn promote_with(&self, project: &str, session: &str, watch: &Watch) -> Result<u64> {
        self.promote_with_options(project, session, &PromoteOptions::default(), watch)
    }

    /// [`Cache::promote_with`], with edits of the new generation before it is committed and
    /// the session consumed if asked ([`PromoteOptions`]). A failed edit is
    /// [`Error::EditFailed`]; a failed, cancelled or killed promote commits nothing.
    pub fn promote_with_options(
        &self,
        project: &str,
        session: &str,
        opts: &PromoteOptions<'_>,
        watch: &Watch,
    ) -> Result<u64> {
        validate_name(project)?;
        validate_name(session)?;
        let drops = edit::check_drops(&opts.drop)?;
        let edits = !drops.is_empty() || opts.edit.is_some();
        let edits_session = edits && self.store.promotes_session_itself();
        if edits_session && !opts.consume {
            return Err(Error::Unsupported {
                what: format!(
                    "the {} backend promotes the session itself: edits of the generation \
                     change the session, so they need consume",
                    self.backend().name()
                ),
            });
        }
        let adopt = opts.consume && self.store.can_adopt_session();
        let lock = self.lock_exclusive(project)?;
        self.recover_or_fail(project, &lock)?;
        let (previous, _) = self.current_generation(project)?;
        let meta = self.session_meta(project, session)?;
        let s = self.session(project, session);
        self.check_session_place(&s, &meta)?;
        self.store.can_promote(&s, meta.generation, previous.number)?;
        self.ensure_unused(&s, meta.at.as_deref())?;
        let g = self.next_generation(project, &previous)?;
        let number = g.number;
        self.store.generation_free(&g, Some(&s))?;
        let staging_name = &state::own_name("promote", &number.to_string());
        let intent = Intent::Promote {
            project: project.to_string(),
            session: session.to_string(),
            generation: number,
            staging: staging_name.clone(),
            consume: opts.consume,
            drop: drops.clone(),
            edits_session,
            session_identity: Some(meta.identity.clone()),
        };
        // Dropped paths wait in the project's state directory where trees are directories of
        // the root's filesystem (removed after the commit: until then a kill gives them back);
        // elsewhere in the tree itself, removed before it is sealed.
        let aside_outside_tree = self.store.can_adopt_session();
        let edit_tree = |tree: &Path| -> Result<()> {
            if !edits {
                return Ok(());
            }
            let fd = edit::open_tree(&self.root, tree)?;
            let shown = self.root.join(tree);
            let aside = self.aside(project, tree, staging_name)?;
            aside.move_from(&fd, &shown, &drops)?;
            watch.check()?;
            if let Some(hook) = opts.edit {
                hook(&shown, number)
                    .map_err(|source| Error::EditFailed { generation: number, source })?;
            }
            fault::point("promote:edited");
            watch.check()?;
            if aside_outside_tree {
                Ok(())
            } else {
                // From here the drops cannot be put back: the last step before the seal.
                aside.remove()
            }
        };
        // A consumed session is shown at its caller's path no more: its users must not reach
        // what becomes the generation. A promote that fails shows it there again.
        let shown_at = meta.at.as_deref().filter(|_| opts.consume);
        if let Some(at) = shown_at {
            self.detach(&s, at, &meta.made_by)?;
        }
        // The exclusive lock keeps everything checked above as it is.
        let promoted = self.run(
            &intent,
            || Ok(()),
            || number,
            |()| {
                watch.check()?;
                let staging = self.staging_of(&intent);
                let identity = if adopt {
                    let id = self.store.adopt_session(&self.root, &s, &meta.identity, &staging)?;
                    fault::point("promote:session-taken");
                    edit_tree(&staging)?;
                    // Whoever got into the session since it was checked is in the generation's
                    // tree now: give the session back rather than commit a tree in use.
                    self.ensure_unused_at(&s, &staging, None)?;
                    id
                } else {
                    // Edits of the session itself (ZFS) are final once made: from there the
                    // promote is not stopped any more, so that a stop never rolls back a session
                    // that has lost its dropped paths.
                    let watch = if edits_session {
                        edit_tree(&s.place)?;
                        &Watch { progress: watch.progress.clone(), cancel: None }
                    } else {
                        watch
                    };
                    let id = self.store.promote(
                        &self.root,
                        &s,
                        &meta.identity,
                        &g,
                        &previous,
                        &staging,
                        watch,
                    )?;
                    if !edits_session {
                        edit_tree(&staging)?;
                    }
                    id
                };
                fault::point("promote:tree-created");
                self.store.seal(&self.root, &staging)?;
                self.commit_generation(&g, Some(session), None, identity, &staging, watch)?;
                if opts.consume {
                    // Under the intent: a kill from here on is finished by recovery.
                    self.finish_consume(&s, adopt)?;
                }
                if edits && aside_outside_tree {
                    // Committed: the dropped paths are trash now (a rename), for gc if a kill
                    // comes before they are removed below.
                    self.trash_aside(project, staging_name)?;
                }
                Ok(number)
            },
        );
        if let (Err(_), Some(at)) = (&promoted, shown_at) {
            if let Some(m) = read_session(&self.root, project, session)? {
                if let Err(e) = self.reattach(&s, &m) {
                    tracing::warn!(
                        target: "goldclone::lifecycle",
                        "session {session} of project {project}: given back, but not shown at \
                         {} again: {e}",
                        at.display()
                    );
                }
            }
        }
        let number = promoted?;
        drop(lock);
        // Removals that may take long, after the exclusive lock is let go so that setups do not
        // wait for them: the dropped paths, and the previous generation if the consumed session
        // was its last. What a kill leaves here, open and gc remove with the trash.
        if (edits && aside_outside_tree) || opts.consume {
            let Ok(_lock) = self.lock_shared(project) else { return Ok(number) };
            if edits && aside_outside_tree {
                let trashed = Layout::trash(project).join(edit::aside_name(staging_name));
                let _ = self.store.remove_trash(&self.root, &trashed);
            }
            if opts.consume {
                let _ = self.reclaim_if_unused(project, meta.generation);
            }
        }
        Ok(number)
    }

    /// Remove a session. Once the last session of a retired generation is gone, that generation
    /// is reclaimed too. A session in use is [`Error::SessionBusy`] and nothing changes; so is
    /// one with a mount inside it. Once the session is taken from its place the cleanup has
    /// happened: if reclaiming its space fails then, gc retries and reports it.
    pub fn cleanup(&self, project: &str, session: &str) -> Result<()> {
        self.cleanup_with_options(project, session, &CleanupOptions::default()).map(drop)
    }

    /// [`Cache::cleanup`], or with [`CleanupOptions::lazy`] a cleanup that does not wait for
    /// a session's users: see [`Cleaned`].
    pub fn cleanup_with_options(
        &self,
        project: &str,
        session: &str,
        opts: &CleanupOptions,
    ) -> Result<Cleaned> {
        validate_name(project)?;
        validate_name(session)?;
        let _lock = self.lock_shared(project)?;
        self.remove_session(project, session, opts.lazy)
    }

    /// [`Cache::cleanup_with_options`]; the caller holds the project's lock (shared or
    /// exclusive).
    fn remove_session(&self, project: &str, session: &str, lazy: bool) -> Result<Cleaned> {
        self.known_project(project)?;
        let s = self.session(project, session);
        // What is to be removed, and that nothing holds it: checked before the intent is
        // recorded (bad input changes nothing), and again once the intent holds the session's
        // name, against the record first seen, so that what is removed is what was checked.
        let seen = self.session_meta(project, session)?;
        // With `lazy`, who holds it (empty: nobody) instead of Busy.
        let check = || -> Result<(SessionMeta, Vec<String>)> {
            let meta = self.session_meta(project, session)?;
            if meta != seen {
                return Err(Error::UnknownSession {
                    project: project.to_string(),
                    session: session.to_string(),
                });
            }
            if self.root.entry(&s.place)?.is_some_and(|e| !e.is_dir()) {
                return Err(Error::Damaged {
                    path: self.root.join(&s.place),
                    what: "is not the session's directory (a symlink or a file)".into(),
                });
            }
            let mut holders = Vec::new();
            match self.store.session_presence(&self.root, &s, &meta.identity)? {
                Presence::Here | Presence::Elsewhere(_) => {
                    match self.ensure_unused(&s, meta.at.as_deref()) {
                        Err(Error::SessionBusy { holders: h, .. }) if lazy => holders = h,
                        other => other?,
                    }
                }
                Presence::Absent => {}
                Presence::Other(what) => {
                    return Err(Error::Damaged { path: self.root.join(&s.place), what })
                }
            }
            Ok((meta, holders))
        };
        let (_, held) = check()?;
        // A lazy cleanup's trash name says so, whether or not the session was free when
        // checked (someone may get in before it moves): recovery and gc remove such a tree
        // only once nothing holds it.
        let op = if lazy { "detached" } else { "cleanup" };
        let intent = Intent::Cleanup {
            project: project.to_string(),
            session: session.to_string(),
            trash: state::own_name(op, session),
        };
        let trash = self.staging_of(&intent);
        let detaching = !held.is_empty();
        let cleaned = self.run(
            &intent,
            || {
                let (meta, holders) = check()?;
                if !detaching && !holders.is_empty() {
                    // Taken meanwhile: refused as by a cleanup that is not lazy (a plain
                    // cleanup's trash is removed without asking who holds it).
                    let pids = Vec::new();
                    let (project, session) = (project.to_string(), session.to_string());
                    return Err(Error::SessionBusy { project, session, pids, holders });
                }
                Ok((meta, holders))
            },
            || {
                if detaching {
                    Cleaned::Detached { holders: held.clone() }
                } else {
                    Cleaned::Removed
                }
            },
            |(meta, holders)| {
                if detaching {
                    return self
                        .detach_session(&s, &meta, &trash)
                        .map(|()| Cleaned::Detached { holders });
                }
                // First the caller's path: once nothing shows the session there, its users
                // cannot reach it any more. A kill right after leaves the session, unshown
                // (setup with reuse shows it again).
                if let Some(at) = &meta.at {
                    self.detach(&s, at, &meta.made_by)?;
                    fault::point("cleanup:detached");
                }
                let retired = self.store.retire_session(&self.root, &s, &meta.identity, &trash)?;
                fault::point("cleanup:tree-moved");
                self.owe(project, &retired)?;
                self.root.remove_file(&Layout::session_meta(project, session))?;
                fault::point("cleanup:meta-removed");
                // The session is gone whatever happens next. Reclaiming its space is a courtesy
                // here, under the intent (a kill leaves it to recovery); what it cannot do now, gc
                // retries and reports.
                if let Retired::Moved(t) = &retired {
                    if lazy {
                        // Free when checked; whoever got in before the move keeps it.
                        let found = holders::holders(&self.root.join(t), false, &[])?;
                        if !found.is_empty() {
                            self.record_detached(&s, &meta, t)?;
                            let holders = found.into_iter().map(|h| h.what).collect();
                            return Ok(Cleaned::Detached { holders });
                        }
                    }
                    let _ = self.store.remove_trash(&self.root, t);
                }
                Ok(Cleaned::Removed)
            },
        )?;
        let _ = self.reclaim_if_unused(project, seen.generation);
        Ok(cleaned)
    }

    /// A lazy cleanup of session `s` (recorded as `meta`), which something holds: out of its
    /// caller's path and its place, a record of what waits (the commit is the removal of the
    /// session's record after it). Also what recovery does to finish one.
    fn detach_session(&self, s: &Session, meta: &SessionMeta, trash: &Path) -> Result<()> {
        if let Some(at) = &meta.at {
            if let attach::State::Other(_) =
                attach::unmount_lazily(&self.root, &s.place, at, &meta.made_by)?
            {
                tracing::warn!(
                    target: "goldclone::lifecycle",
                    "session {} of project {}: {} is not its bind; left alone",
                    s.name,
                    s.project,
                    at.display()
                );
            }
        }
        let retired = self.store.detach_session(&self.root, s, &meta.identity, trash)?;
        let (trash_kept, owed) = match retired {
            Retired::Moved(t) => (Some(t), None),
            Retired::Owed(id) => (None, Some(id)),
            // Moved by an earlier attempt (recovery), or gone.
            Retired::Absent | Retired::Removed => {
                (self.root.entry(trash)?.map(|_| trash.to_path_buf()), None)
            }
        };
        if trash_kept.is_some() || owed.is_some() {
            self.write_detached(s, meta, trash, trash_kept, owed)?;
        }
        fault::point("cleanup:tree-moved");
        self.root.remove_file(&Layout::session_meta(&s.project, &s.name))?;
        fault::point("cleanup:meta-removed");
        tracing::info!(
            target: "goldclone::lifecycle",
            "session {} of project {} detached while in use; gc removes it once free",
            s.name,
            s.project
        );
        Ok(())
    }

    /// Everything the backend still owes removing for `project`: owed records, and the trees of
    /// sessions cleaned up while in use. Not "unrecorded".
    fn owed_ids(&self, project: &str) -> Result<Vec<Identity>> {
        let mut out: Vec<Identity> =
            self.detached(project)?.into_iter().filter_map(|(_, d)| d.owed).collect();
        let (owed, _) = state::record_names(&self.root, &Layout::owed(project))?;
        for o in owed {
            let path = Layout::owed(project).join(format!("{o}.json"));
            if let Some(id) = state::read_json::<Identity>(&self.root, &path)? {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Record that session `s` (recorded as `meta`) waits in `trash` for its users.
    fn record_detached(&self, s: &Session, meta: &SessionMeta, trash: &Path) -> Result<()> {
        self.write_detached(s, meta, trash, Some(trash.to_path_buf()), None)
    }

    fn write_detached(
        &self,
        s: &Session,
        meta: &SessionMeta,
        trash: &Path,
        trash_kept: Option<PathBuf>,
        owed: Option<Identity>,
    ) -> Result<()> {
        let name = trash.file_name().expect("an own name");
        self.root.mkdir(&Layout::detached_records(&s.project))?;
        state::write_json(
            &self.root,
            &Layout::detached_record(&s.project, name),
            &state::DetachedMeta {
                session: s.name.clone(),
                generation: meta.generation,
                trash: trash_kept,
                owed,
                at: meta.at.clone(),
                made_by: meta.made_by.clone(),
            },
        )
    }

    /// The records of lazily cleaned-up sessions of `project`, with their paths.
    fn detached(&self, project: &str) -> Result<Vec<(PathBuf, state::DetachedMeta)>> {
        let dir = Layout::detached_records(project);
        let mut out = Vec::new();
        for name in self.root.list(&dir)? {
            let path = dir.join(&name);
            if !name.to_str().is_some_and(|n| {
                n.ends_with(".json") && state::is_detached_name(n.trim_end_matches(".json"))
            }) {
                continue; // temporary files of dead writers: removed with the records' temps
            }
            if let Some(m) = state::read_json::<state::DetachedMeta>(&self.root, &path)? {
                out.push((path, m));
            }
        }
        Ok(out)
    }

    /// Remove the trees of lazily cleaned-up sessions that nothing holds any more; what is
    /// still held is returned (described).
    fn finish_detached(
        &self,
        project: &str,
        report: &mut GcReport,
    ) -> Result<Vec<(String, String)>> {
        let mut held = Vec::new();
        for (record, d) in self.detached(project)? {
            let what = format!("{project}: session {} (cleaned up while in use)", d.session);
            if let Some(t) = &d.trash {
                if self.root.entry(t)?.is_some() {
                    let found = holders::holders(&self.root.join(t), false, &[])?;
                    if !found.is_empty() {
                        let by: Vec<String> = found.into_iter().map(|h| h.what).collect();
                        held.push((
                            d.session.clone(),
                            format!("{what}: held by {}", by.join("; ")),
                        ));
                        continue;
                    }
                    self.store.remove_trash(&self.root, t)?;
                }
            }
            if let Some(id) = &d.owed {
                match self.store.remove_owed(&self.root, id) {
                    Ok(()) => {}
                    Err(e) if e.kind() == crate::ErrorKind::Busy => {
                        held.push((d.session.clone(), format!("{what}: still in use ({e})")));
                        continue;
                    }
                    Err(e) => {
                        report.failed.push(format!("{what}: {e}"));
                        held.push((d.session.clone(), format!("{what}: {e}")));
                        continue;
                    }
                }
            }
            if let Some(at) = &d.at {
                // The directory it was shown at, kept while it was in use; nothing is mounted
                // there now that nothing holds the tree.
                let s = self.session(project, &d.session);
                if let Err(e) = self.detach(&s, at, &d.made_by) {
                    report.failed.push(format!("{what}: its path {}: {e}", at.display()));
                    continue;
                }
            }
            self.root.remove_file(&record)?;
            report.removed.push(format!("{what}: its tree, now that nothing holds it"));
        }
        Ok(held)
    }

    /// Finish interrupted operations, then remove what records say is no longer needed:
    /// retired generations without sessions, trash, records of trees that are gone, temporary
    /// files of dead writers. Entries goldclone did not make and damaged state are reported in
    /// [`GcReport::kept`] and left alone; a project that is busy for long or fails is reported
    /// in [`GcReport::failed`] and skipped, the others are still collected.
    pub fn gc(&self) -> Result<GcReport> {
        let mut report = GcReport::default();
        let (projects, bad) = state::projects(&self.root)?;
        for b in bad {
            report.kept.push(format!(
                "{}: not a project id; left alone",
                self.at(&Layout::projects().join(b))
            ));
        }
        for name in self.root.list(Path::new(""))? {
            let s = name.to_string_lossy();
            if s != ".goldclone" && !projects.iter().any(|p| *p == s) {
                report.kept.push(format!(
                    "{}: not made by goldclone; left alone",
                    self.at(Path::new(&name))
                ));
            }
        }
        for project in projects {
            match lock_project(
                &self.root,
                &project,
                Access::Exclusive,
                Missing::Refuse,
                Wait::Up(GC_LOCK_WAIT),
            ) {
                Ok(Some(lock)) => {
                    let mut r = GcReport::default();
                    // A project whose import, promote or delete could not be finished or undone
                    // is not collected: its records and trees are between two states, and what
                    // looks orphaned may be what recovery still needs.
                    if self.recover(&project, &lock, &mut r) {
                        if let Err(e) = self.collect(&project, &lock, &mut r) {
                            r.failed.push(format!("{project}: {e}"));
                        }
                    } else {
                        r.kept.push(format!(
                            "{project}: an interrupted operation could not be resolved; not \
                             collected until it is"
                        ));
                    }
                    report.merge(r);
                }
                Ok(None) => report.failed.push(format!(
                    "{project}: busy for more than {}s; skipped",
                    GC_LOCK_WAIT.as_secs()
                )),
                // Removed meanwhile (a rolled-back import): nothing to collect.
                Err(Error::UnknownProject { .. }) => {}
                Err(e) => report.failed.push(format!("{project}: {e}")),
            }
        }
        report.log("gc");
        Ok(report)
    }

    /// Delete a project: every session, every generation, its records and its directories.
    /// Refused before anything is touched while a session of it is in use
    /// ([`Error::SessionBusy`]), or where its directories hold anything no record names or a
    /// record does not match its tree ([`Error::Damaged`]: never removed, reported). The commit
    /// is the removal of its `current` record: from then on the project is gone for every
    /// caller, and a delete that fails or is killed after it is finished by the next open or gc
    /// (a session that something starts using meanwhile stays until it is free).
    pub fn delete_project(&self, project: &str) -> Result<()> {
        validate_name(project)?;
        let lock = self.lock_exclusive(project)?;
        self.recover_or_fail(project, &lock)?;
        let current = self.known_project(project)?;
        // Sessions cleaned up while in use: removed now if free, else the delete waits.
        let mut finished = GcReport::default();
        let held = self.finish_detached(project, &mut finished)?;
        finished.log("delete");
        if let Some((session, _)) = held.first() {
            return Err(Error::SessionBusy {
                project: project.to_string(),
                session: session.clone(),
                pids: Vec::new(),
                holders: held.into_iter().map(|(_, h)| h).collect(),
            });
        }
        self.check_deletable(project, current)?;
        let intent = Intent::Delete {
            project: project.to_string(),
            generation: current,
            trash: state::own_name("delete", project),
        };
        self.run(
            &intent,
            || self.check_deletable(project, current),
            || (),
            |()| {
                // The commit point.
                self.root.remove_file(&Layout::current(project))?;
                fault::point("delete:current-removed");
                self.finish_delete(project, current)
            },
        )?;
        let _ = self.forget_if_empty(project, &lock);
        Ok(())
    }

    /// Everything of `project` is ours and free: each session's tree is the recorded one and
    /// nothing holds it, every entry of its directories is a recorded tree, and the backend
    /// holds nothing unrecorded. Changes nothing.
    fn check_deletable(&self, project: &str, current: u64) -> Result<()> {
        let sessions = state::session_names(&self.root, project)?;
        for name in &sessions {
            let meta = self.session_meta(project, name)?;
            let s = self.session(project, name);
            match self.store.session_presence(&self.root, &s, &meta.identity)? {
                Presence::Here | Presence::Elsewhere(_) => {
                    self.ensure_unused(&s, meta.at.as_deref())?
                }
                Presence::Absent => {}
                Presence::Other(what) => {
                    return Err(Error::Damaged { path: self.root.join(&s.place), what })
                }
            }
        }
        let generations = state::generation_numbers(&self.root, project)?;
        for &n in &generations {
            // Claimed only for this check: the delete's exclusive lock keeps new sends out.
            if state::claim_generation(&self.root, project, n)?.is_none()
                && read_generation(&self.root, project, n)?.is_some()
            {
                return Err(Error::GenerationBusy {
                    project: project.to_string(),
                    generation: n,
                    what: "it is being sent".into(),
                });
            }
        }
        let foreign = |dir: PathBuf, known: &dyn Fn(&str) -> bool| -> Result<()> {
            for name in self.root.list(&dir)? {
                if !name.to_str().is_some_and(known) {
                    return Err(Error::Damaged {
                        path: self.root.join(&dir.join(&name)),
                        what: "no record names it: not goldclone's to delete".into(),
                    });
                }
            }
            Ok(())
        };
        foreign(Layout::project(project), &|n| n == "gen" || n == "sessions")?;
        foreign(Layout::sessions(project), &|n| sessions.iter().any(|s| s == n))?;
        foreign(Layout::generations(project), &|n| {
            n.parse::<u64>().is_ok_and(|g| generations.contains(&g))
        })?;
        let owed = self.owed_ids(project)?;
        if let Some(d) = self
            .store
            .unrecorded(&self.root, project, &sessions, &[current], &owed)?
            .into_iter()
            .next()
        {
            return Err(Error::Damaged {
                path: self.root.join(&Layout::project(project)),
                what: format!("{d} has no record: not goldclone's to delete"),
            });
        }
        Ok(())
    }

    /// After a delete's commit: remove every session (unless something holds it now: then the
    /// delete stays unfinished, for gc), every generation, what is owed, the backend's own
    /// things of the project, and its directories. The exclusive lock is held.
    fn finish_delete(&self, project: &str, head: u64) -> Result<()> {
        let root = &self.root;
        let trash = |what: &str| Layout::trash(project).join(state::own_name(what, project));
        for name in state::session_names(root, project)? {
            let s = self.session(project, &name);
            let Some(meta) = read_session(root, project, &name)? else { continue };
            match self.store.session_presence(root, &s, &meta.identity)? {
                Presence::Here | Presence::Elsewhere(_) => {
                    self.ensure_unused(&s, meta.at.as_deref())?
                }
                Presence::Absent => {}
                Presence::Other(what) => {
                    return Err(Error::Damaged { path: root.join(&s.place), what })
                }
            }
            if let Some(at) = &meta.at {
                self.detach(&s, at, &meta.made_by)?;
            }
            let retired = self.store.retire_session(root, &s, &meta.identity, &trash("cleanup"))?;
            self.owe(project, &retired)?;
            root.remove_file(&Layout::session_meta(project, &name))?;
            if let Retired::Moved(t) = &retired {
                self.store.remove_trash(root, t)?;
            }
        }
        fault::point("delete:sessions-removed");
        for n in state::generation_numbers(root, project)? {
            let Some(meta) = read_generation(root, project, n)? else { continue };
            let g = self.generation(project, n, head);
            let retired = self.store.retire_generation(root, &g, &meta.identity, &trash("gen"))?;
            self.owe(project, &retired)?;
            root.remove_file(&Layout::generation_meta(project, n))?;
            if let Retired::Moved(t) = &retired {
                self.store.remove_trash(root, t)?;
            }
        }
        let (owed, _) = state::record_names(root, &Layout::owed(project))?;
        for o in owed {
            let path = Layout::owed(project).join(format!("{o}.json"));
            if let Some(id) = state::read_json::<Identity>(root, &path)? {
                self.store.remove_owed(root, &id)?;
            }
            root.remove_file(&path)?;
        }
        // Checked again: what someone made under the project since the delete began is theirs.
        let owed = self.owed_ids(project)?;
        if let Some(d) =
            self.store.unrecorded(&self.root, project, &[], &[head], &owed)?.into_iter().next()
        {
            return Err(Error::Damaged {
                path: root.join(&Layout::project(project)),
                what: format!("{d} has no record: left alone, the delete stays unfinished"),
            });
        }
        self.store.remove_project(&self.root, project)?;
        for t in root.list(&Layout::trash(project))? {
            let path = Layout::trash(project).join(&t);
            if t.to_str().is_some_and(state::is_detached_name)
                && !holders::holders(&root.join(&path), false, &[])?.is_empty()
            {
                // A lazily cleaned-up session's tree with no record (its cleanup was killed
                // and not finished): in use, so the delete stays unfinished, for gc.
                return Err(Error::from_errno("remove trash", root.join(&path), libc::EBUSY));
            }
            if t.to_str().is_some_and(state::is_own_name) {
                self.store.remove_trash(root, &path)?;
            }
        }
        for d in [Layout::sessions(project), Layout::generations(project), Layout::project(project)]
        {
            if !root.rmdir(&d)? && root.entry(&d)?.is_some() {
                return Err(Error::Damaged {
                    path: root.join(&d),
                    what: "holds something no record names: left alone".into(),
                });
            }
        }
        Ok(())
    }

    /// The project's current generation and its sessions.
    pub fn info(&self, project: &str) -> Result<GoldenInfo> {
        validate_name(project)?;
        let _lock = self.lock_shared(project)?;
        let (g, meta) = self.current_generation(project)?;
        let mut sessions = Vec::new();
        for s in state::session_names(&self.root, project)? {
            if let Some(m) = read_session(&self.root, project, &s)? {
                sessions.push((s, m.generation));
            }
        }
        Ok(GoldenInfo {
            project: project.to_string(),
            generation: g.number,
            created_at: meta.created_at,
            source_session: meta.source_session,
            backend: self.backend(),
            size_bytes: self.golden_size(project, &g),
            sessions,
        })
    }

    /// The size of generation `g`: the backend's own count where it keeps one (ZFS, btrfs
    /// with quotas), else a walk of the tree, made once per generation (a committed generation
    /// never changes) and kept in the project's `size.json`. The caller holds the project's
    /// lock.
    fn golden_size(&self, project: &str, g: &Generation) -> u64 {
        if let Some(bytes) = self.store.counted_size(&self.root, g) {
            return bytes;
        }
        let cache = Layout::size_cache(project);
        if let Ok(Some(c)) = state::read_json::<state::SizeCache>(&self.root, &cache) {
            if c.generation == g.number {
                return c.bytes;
            }
        }
        let bytes = self
            .root
            .dir(&g.place)
            .map_or(0, |fd| crate::backend::disk_usage(fd, &self.root.join(&g.place)));
        let counted = state::SizeCache { generation: g.number, bytes };
        // Only a saving: a count that cannot be kept is made again next time.
        let _ = state::write_json(&self.root, &cache, &counted);
        bytes
    }

    /// Projects that have a golden (a current generation), sorted. Reads records only: a
    /// project being imported, or one whose records goldclone cannot read, is not listed (gc
    /// reports those).
    pub fn projects(&self) -> Result<Vec<String>> {
        let (names, _) = state::projects(&self.root)?;
        let mut out = Vec::new();
        for p in names {
            if let Ok(Some(_)) = read_current(&self.root, &p) {
                out.push(p);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether `project` has a golden (a current generation): one small record read, no walk
    /// of its tree and no lock. Damaged if its record of the current generation is not one.
    pub fn has_golden(&self, project: &str) -> Result<bool> {
        validate_name(project)?;
        Ok(read_current(&self.root, project)?.is_some())
    }

    /// One session: where it is, the generation it was made from, when, and what holds it now
    /// (in any mount namespace; empty when nothing does). No walk of its tree; it waits while
    /// an import, promote or gc of the project holds the project's lock.
    pub fn session_info(&self, project: &str, session: &str) -> Result<SessionInfo> {
        validate_name(project)?;
        validate_name(session)?;
        let _lock = self.lock_shared(project)?;
        self.known_project(project)?;
        let meta = self.session_meta(project, session)?;
        let s = self.session(project, session);
        self.check_session_place(&s, &meta)?;
        let holders = match self.ensure_unused(&s, meta.at.as_deref()) {
            Ok(()) => Vec::new(),
            Err(Error::SessionBusy { holders, .. }) => holders,
            Err(e) => return Err(e),
        };
        let attached = self.is_shown(&s, &meta)?;
        Ok(SessionInfo {
            project: project.to_string(),
            session: session.to_string(),
            path: self.shown_path(&s, &meta),
            attached,
            generation: meta.generation,
            created_at: meta.created_at,
            holders,
        })
    }

    /// [`SessionInfo::attached`] alone, without asking who holds the session (a scan of every
    /// process and mount).
    pub fn session_shown(&self, project: &str, session: &str) -> Result<bool> {
        validate_name(project)?;
        validate_name(session)?;
        let _lock = self.lock_shared(project)?;
        self.known_project(project)?;
        let meta = self.session_meta(project, session)?;
        let s = self.session(project, session);
        self.check_session_place(&s, &meta)?;
        self.is_shown(&s, &meta)
    }

    /// Whether session `s` (recorded as `meta`) is shown at its path now: always at its place,
    /// and at a caller's path while the bind is there.
    fn is_shown(&self, s: &Session, meta: &SessionMeta) -> Result<bool> {
        match &meta.at {
            Some(at) => Ok(attach::state_of(&self.root, &s.place, at, &meta.made_by)?
                == attach::State::Attached),
            None => Ok(true),
        }
    }

    /// Generations of the project that still exist (the current one and retired ones that
    /// sessions still use), oldest first.
    pub fn generations(&self, project: &str) -> Result<Vec<u64>> {
        validate_name(project)?;
        let _lock = self.lock_shared(project)?;
        let (current, _) = self.current_generation(project)?;
        let mut out = Vec::new();
        for n in state::generation_numbers(&self.root, project)? {
            if n > current.number {
                continue;
            }
            let Some(m) = read_generation(&self.root, project, n)? else { continue };
            let g = self.generation(project, n, current.number);
            if self.store.generation_presence(&self.root, &g, &m.identity)? == Presence::Here {
                out.push(n);
            }
        }
        Ok(out)
    }

    // ---- names ----

    fn generation(&self, project: &str, number: u64, head: u64) -> Generation {
        Generation {
            project: project.to_string(),
            number,
            place: Layout::generation(project, number),
            head,
        }
    }

    fn session(&self, project: &str, name: &str) -> Session {
        Session {
            project: project.to_string(),
            name: name.to_string(),
            place: Layout::session(project, name),
        }
    }

    /// Where an intent's staging (or trash) name lives.
    fn staging_of(&self, intent: &Intent) -> PathBuf {
        match intent {
            Intent::Import { project, staging, .. }
            | Intent::ImportNext { project, staging, .. }
            | Intent::Promote { project, staging, .. } => {
                Layout::generations(project).join(staging)
            }
            Intent::Setup { project, staging, .. } => Layout::sessions(project).join(staging),
            Intent::Cleanup { project, trash, .. } | Intent::Delete { project, trash, .. } => {
                Layout::trash(project).join(trash)
            }
        }
    }

    fn at(&self, rel: &Path) -> String {
        self.root.join(rel).display().to_string()
    }

    // ---- state ----

    fn known_project(&self, project: &str) -> Result<u64> {
        read_current(&self.root, project)?
            .ok_or_else(|| Error::UnknownProject { project: project.to_string() })
    }

    /// The current generation and its record.
    fn current_generation(&self, project: &str) -> Result<(Generation, GenerationMeta)> {
        let number = self.known_project(project)?;
        let meta = read_generation(&self.root, project, number)?.ok_or_else(|| Error::Damaged {
            path: self.root.join(&Layout::current(project)),
            what: format!("names generation {number}, which has no record"),
        })?;
        Ok((self.generation(project, number, number), meta))
    }

    fn session_meta(&self, project: &str, session: &str) -> Result<SessionMeta> {
        read_session(&self.root, project, session)?.ok_or_else(|| Error::UnknownSession {
            project: project.to_string(),
            session: session.to_string(),
        })
    }

    /// The session's place holds the tree its record names (not a symlink, not a replacement).
    fn check_session_place(&self, s: &Session, meta: &SessionMeta) -> Result<()> {
        match self.store.session_presence(&self.root, s, &meta.identity)? {
            Presence::Here => Ok(()),
            Presence::Elsewhere(what) | Presence::Other(what) => {
                Err(Error::Damaged { path: self.root.join(&s.place), what })
            }
            Presence::Absent => Err(Error::Damaged {
                path: self.root.join(&s.place),
                what: "the session's tree is gone".into(),
            }),
        }
    }

    /// Nothing holds the session: no process, no mount, in any namespace; its bind at its
    /// caller's path `shown_at` (if any) is not a holder, what uses the session through it is.
    fn ensure_unused(&self, s: &Session, shown_at: Option<&Path>) -> Result<()> {
        self.ensure_unused_at(s, &s.place, shown_at)
    }

    /// Nothing holds the session's tree, which is at `at` (its place, or where a promote took
    /// it).
    fn ensure_unused_at(&self, s: &Session, at: &Path, shown_at: Option<&Path>) -> Result<()> {
        if self.root.entry(at)?.is_none() {
            return Ok(()); // nothing there to hold (a session not mounted, without its directory)
        }
        let place = self.root.join(at);
        let ours: Vec<&Path> = shown_at.into_iter().collect();
        let found = holders::holders(&place, self.store.sessions_are_mounts(), &ours)?;
        if found.is_empty() {
            return Ok(());
        }
        let mut pids: Vec<u32> = found.iter().filter_map(|h| h.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        Err(Error::SessionBusy {
            project: s.project.clone(),
            session: s.name.clone(),
            pids,
            holders: found.into_iter().map(|h| h.what).collect(),
        })
    }

    /// Write generation metadata, publish the tree, then `current`: the commit of an import or
    /// a promote.
    fn commit_generation(
        &self,
        g: &Generation,
        source: Option<&str>,
        origin: Option<&str>,
        identity: Identity,
        staging: &Path,
        watch: &Watch,
    ) -> Result<()> {
        let meta_path = Layout::generation_meta(&g.project, g.number);
        let made_by =
            staging.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        state::write_json(
            &self.root,
            &meta_path,
            &GenerationMeta {
                project: g.project.clone(),
                generation: g.number,
                created_at: state::now(),
                source_session: source.map(str::to_string),
                backend: self.backend(),
                identity,
                made_by,
                origin: origin.map(str::to_string),
            },
        )?;
        fault::point(if source.is_some() { "promote:meta-written" } else { "import:meta-written" });
        self.store.publish(&self.root, staging, &g.place)?;
        // The commit point: a stop asked for before it undoes the operation, none after.
        watch.commit(|| state::write_current(&self.root, &g.project, g.number))?;
        fault::point(if source.is_some() {
            "promote:current-written"
        } else {
            "import:current-written"
        });
        Ok(())
    }

    /// Record that a removal is owed, if it is.
    fn owe(&self, project: &str, retired: &Retired) -> Result<()> {
        if let Retired::Owed(id) = retired {
            self.root.mkdir(&Layout::owed(project))?;
            let path = Layout::owed(project).join(format!("{}.json", state::nonce()));
            state::write_json(&self.root, &path, id)?;
        }
        Ok(())
    }

    /// Remove generation `number` if it is retired (older than a current generation that has
    /// its record) and no session record names it. Safe under the shared lock: sessions are
    /// only made from the current generation, and retiring lets exactly one of several
    /// concurrent callers do it. True if this call removed it. When in doubt (a record that
    /// does not read), keep it.
    fn reclaim_if_unused(&self, project: &str, number: u64) -> Result<bool> {
        self.reclaim_if_unused_within(project, number, std::time::Duration::ZERO)
    }

    /// [`Cache::reclaim_if_unused`], where a send of the generation is asked to let go for
    /// up to `patience`: right after this process's own send dropped its hold, a process that
    /// another thread of ours forked meanwhile still has a copy of the hold's descriptor (and
    /// with it the lock) until its exec closes it.
    fn reclaim_if_unused_within(
        &self,
        project: &str,
        number: u64,
        patience: std::time::Duration,
    ) -> Result<bool> {
        let Some(current) = read_current(&self.root, project)? else { return Ok(false) };
        if number >= current || read_generation(&self.root, project, current)?.is_none() {
            return Ok(false);
        }
        for s in state::session_names(&self.root, project)? {
            match read_session(&self.root, project, &s) {
                Ok(Some(m)) if m.generation != number => {}
                Ok(None) => {}
                _ => return Ok(false),
            }
        }
        // A session cleaned up lazily still uses it (on ZFS its clone depends on it).
        match self.detached(project) {
            Ok(d) if d.iter().all(|(_, m)| m.generation != number) => {}
            _ => return Ok(false),
        }
        // A send reading it keeps it: the send reclaims it when it is done.
        let until = std::time::Instant::now() + patience;
        let _claim = loop {
            match state::claim_generation(&self.root, project, number)? {
                Some(claim) => break claim,
                None if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                None => return Ok(false),
            }
        };
        let Some(meta) = read_generation(&self.root, project, number)? else { return Ok(false) };
        let g = self.generation(project, number, current);
        let trash = Layout::trash(project).join(state::own_name("gen", &number.to_string()));
        let retired = self.store.retire_generation(&self.root, &g, &meta.identity, &trash)?;
        self.owe(project, &retired)?;
        self.root.remove_file(&Layout::generation_meta(project, number))?;
        if let Retired::Moved(t) = &retired {
            let _ = self.store.remove_trash(&self.root, t);
        }
        Ok(retired != Retired::Absent)
    }

    // ---- locks and recovery ----

    fn lock_exclusive(&self, project: &str) -> Result<ProjectLock> {
        let started = std::time::Instant::now();
        let lock =
            lock_project(&self.root, project, Access::Exclusive, Missing::Refuse, Wait::Forever)?
                .expect("waits for the lock");
        log_wait(project, "exclusive", started);
        Ok(lock)
    }

    /// Lock the project shared for an operation on one session, first resolving what dead
    /// imports and promotes left (they may have left `current` and the generations out of
    /// step); dead operations on other sessions are theirs to wait for gc.
    fn lock_shared(&self, project: &str) -> Result<ProjectLock> {
        loop {
            let started = std::time::Instant::now();
            let lock =
                lock_project(&self.root, project, Access::Shared, Missing::Refuse, Wait::Forever)?
                    .expect("waits for the lock");
            log_wait(project, "shared", started);
            let dead_exclusive = state::intents(&self.root, project)?
                .iter()
                .any(|f| matches!(f, Found::Dead(d) if d.intent.is_exclusive()));
            if !dead_exclusive {
                return Ok(lock);
            }
            drop(lock);
            let exclusive = self.lock_exclusive(project)?;
            self.recover_or_fail(project, &exclusive)?;
        }
    }

    /// Resolve the project's dead intents (exclusive lock held); an import or promote that
    /// cannot be resolved is this operation's error, a stuck session is only reported.
    fn recover_or_fail(&self, project: &str, lock: &ProjectLock) -> Result<()> {
        debug_assert!(lock.exclusive);
        for found in state::intents(&self.root, project)? {
            if let Found::Dead(dead) = found {
                match self.resolve(&dead.intent) {
                    Ok(_) => dead.clear(&self.root)?,
                    Err(e) if dead.intent.is_exclusive() => return Err(e),
                    Err(_) => {} // one stuck session does not block the project
                }
            }
        }
        let _ = state::remove_record_temps(&self.root, project);
        Ok(())
    }

    /// At open: resolve dead intents of every project whose lock is free now; skip the others.
    fn recover_idle_projects(&self) -> GcReport {
        let mut report = GcReport::default();
        let projects = match state::projects(&self.root) {
            Ok((good, _)) => good,
            Err(e) => {
                report.failed.push(format!("listing projects: {e}"));
                return report;
            }
        };
        for project in projects {
            // Work to do: intents, or a project an import killed before its intent left behind.
            let journal = self.root.list(&Layout::journal(&project));
            let idle = matches!(&journal, Ok(names) if names.is_empty())
                && matches!(self.root.list(&Layout::trash(&project)), Ok(t) if t.is_empty());
            let unborn = matches!(read_current(&self.root, &project), Ok(None));
            if idle && !unborn {
                continue;
            }
            if let Err(e) = journal {
                report.failed.push(format!("{project}: {e}"));
                continue;
            }
            // An import killed before it had both lock files: make them to lock it.
            let missing = if unborn { Missing::Create } else { Missing::Refuse };
            match lock_project(&self.root, &project, Access::Exclusive, missing, Wait::No) {
                Ok(Some(lock)) => {
                    if !self.recover(&project, &lock, &mut report) {
                        continue; // not collected until its operation is resolved (see gc)
                    }
                    self.empty_trash(&project, &mut report);
                    if let Err(e) = self.forget_if_empty(&project, &lock) {
                        report.failed.push(format!("{project}: {e}"));
                    }
                }
                Ok(None) | Err(Error::UnknownProject { .. }) => {}
                Err(e) => report.failed.push(format!("{project}: {e}")),
            }
        }
        report
    }

    /// Resolve every dead intent of `project` (exclusive lock held), reporting each, and remove
    /// temporary files of dead writers. Never stops at one failure.
    fn recover(&self, project: &str, lock: &ProjectLock, report: &mut GcReport) -> bool {
        let found = match state::intents(&self.root, project) {
            Ok(f) => f,
            Err(e) => {
                report.failed.push(format!("{project}: {e}"));
                return false;
            }
        };
        let mut resolved = true;
        for f in found {
            match f {
                Found::Dead(dead) => match self.resolve(&dead.intent) {
                    Ok(outcome) => {
                        let exclusive = dead.intent.is_exclusive();
                        if let Err(e) = dead.clear(&self.root) {
                            report.failed.push(format!("{project}: {e}"));
                        }
                        if exclusive {
                            let _ = self.forget_if_empty(project, lock);
                        }
                        report.recovered.push(outcome.describe());
                    }
                    Err(e) => {
                        resolved &= !dead.intent.is_exclusive();
                        report.failed.push(format!("{project}: {:?}: {e}", dead.intent));
                    }
                },
                // Under the exclusive lock only a live operation of this very process (none) or a
                // race with another recoverer leaves one: its owner resolves it.
                Found::Alive | Found::Gone => {}
                Found::Damaged(e) => report.kept.push(format!("{e}; left alone")),
            }
        }
        match state::remove_record_temps(&self.root, project) {
            Ok(removed) => report.removed.extend(removed),
            Err(e) => report.failed.push(format!("{project}: {e}")),
        }
        resolved
    }

    /// Record `intent`, `check` (again) that the operation may go on, and run `work` with
    /// what the check found. A failed check ends the operation before anything was made: the
    /// intent is just cleared. If `work` fails, the intent is resolved as recovery would:
    /// undone, the error is returned; finished (it could only go forward), the operation took
    /// effect and `finished()` is its result; if even resolving fails, the error is
    /// [`Error::Incomplete`] and the intent stays for recovery. After the commit, a failure to
    /// clear the intent does not make the operation fail: recovery finds it committed.
    fn run<C, T>(
        &self,
        intent: &Intent,
        check: impl FnOnce() -> Result<C>,
        finished: impl FnOnce() -> T,
        work: impl FnOnce(C) -> Result<T>,
    ) -> Result<T> {
        let started = std::time::Instant::now();
        let result = self.run_recorded(intent, check, finished, work);
        let took = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => {
                tracing::debug!(target: "goldclone::lifecycle", "{intent:?}: done in {took:.3} s")
            }
            Err(e) => {
                tracing::debug!(target: "goldclone::lifecycle", "{intent:?}: failed after {took:.3} s: {e}")
            }
        }
        result
    }

    fn run_recorded<C, T>(
        &self,
        intent: &Intent,
        check: impl FnOnce() -> Result<C>,
        finished: impl FnOnce() -> T,
        work: impl FnOnce(C) -> Result<T>,
    ) -> Result<T> {
        let record = self.record(intent)?;
        fault::point(match intent {
            Intent::Import { .. } | Intent::ImportNext { .. } => "import:intent-recorded",
            Intent::Setup { .. } => "setup:intent-recorded",
            Intent::Promote { .. } => "promote:intent-recorded",
            Intent::Cleanup { .. } => "cleanup:intent-recorded",
            Intent::Delete { .. } => "delete:intent-recorded",
        });
        let checked = match check() {
            Ok(c) => c,
            Err(e) => {
                let _ = record.clear(&self.root);
                return Err(e);
            }
        };
        match work(checked) {
            Ok(value) => {
                let _ = record.clear(&self.root);
                Ok(value)
            }
            Err(e) => match self.resolve(intent) {
                Ok(Outcome::RolledBack(_)) => {
                    let _ = record.clear(&self.root);
                    Err(e)
                }
                Ok(Outcome::Finished(_)) => {
                    let _ = record.clear(&self.root);
                    Ok(finished())
                }
                Err(undo) => Err(Error::Incomplete {
                    what: format!("{e}; undoing it failed too ({undo})"),
                    source: Box::new(e),
                }),
            },
        }
    }

    /// Record an intent; a dead intent for the same session or generation is resolved first, a
    /// live one makes this operation Busy.
    fn record(&self, intent: &Intent) -> Result<state::IntentRecord> {
        let mut tries = 0;
        loop {
            let busy = match state::record_intent(&self.root, intent) {
                Err(e) if e.errno() == Some(libc::EBUSY) => e,
                other => return other,
            };
            tries += 1;
            match state::find_intent(&self.root, intent) {
                // Finished between our attempt and our look: try again.
                Some(Found::Gone) | None if tries < 8 => {}
                Some(Found::Dead(dead)) if tries < 8 => {
                    self.resolve(&dead.intent)?;
                    dead.clear(&self.root)?;
                }
                Some(Found::Damaged(e)) => return Err(e),
                _ => return Err(busy),
            }
        }
    }

    /// Finish or undo one interrupted operation, as its records say. A record is the commit:
    /// `current` for import and promote, the session's record for setup; a cleanup has
    /// committed once the session is no longer at its place. A promote the backend can only
    /// finish (past its point of no return) is finished and committed.
    fn resolve(&self, intent: &Intent) -> Result<Outcome> {
        let root = &self.root;
        let staging = self.staging_of(intent);
        match intent {
            Intent::ImportNext { project, generation, previous, origin, .. } => {
                let current = read_current(root, project)?;
                if current == Some(*generation) {
                    let g = self.generation(project, *generation, *generation);
                    self.ensure_published(&g, &staging)?;
                    return Ok(Outcome::Finished(format!(
                        "{project}: finished import of generation {generation}"
                    )));
                }
                // Under the exclusive lock nothing else moves `current`: anything but the
                // generation it began from is state not to act on.
                if current != Some(*previous) {
                    return Err(Error::Damaged {
                        path: root.join(&Layout::current(project)),
                        what: format!(
                            "names generation {current:?}, but an import of generation \
                             {generation} began from {previous}"
                        ),
                    });
                }
                let g = self.generation(project, *generation, *previous);
                let previous = self.generation(project, *previous, *previous);
                if let Some(identity) =
                    self.store.recover_import_next(root, &g, &previous, &staging)?
                {
                    let origin = origin.as_deref();
                    self.commit_generation(
                        &g,
                        None,
                        origin,
                        identity,
                        &staging,
                        &Watch::default(),
                    )?;
                    return Ok(Outcome::Finished(format!(
                        "{project}: finished import of generation {generation}"
                    )));
                }
                self.undo_generation(&g, &staging)?;
                Ok(Outcome::RolledBack(format!(
                    "{project}: rolled back import of generation {generation}"
                )))
            }
            Intent::Import { project, generation, .. } => {
                let g = self.generation(project, *generation, *generation);
                if read_current(root, project)? == Some(*generation) {
                    self.ensure_published(&g, &staging)?;
                    return Ok(Outcome::Finished(format!("{project}: finished import")));
                }
                self.undo_generation(&g, &staging)?;
                for d in [
                    Layout::generations(project),
                    Layout::sessions(project),
                    Layout::project(project),
                ] {
                    root.rmdir(&d)?;
                }
                Ok(Outcome::RolledBack(format!("{project}: rolled back import")))
            }
            Intent::Setup { project, session, staging: made_by, at, .. } => {
                let s = self.session(project, session);
                let what = |done: &str| format!("{project}: {done} setup of session {session}");
                let meta = read_session(root, project, session)?;
                // A record another setup made (this one died before its own checks): this
                // setup made nothing, and the session is not its to touch.
                if meta.as_ref().is_some_and(|m| m.made_by != *made_by) {
                    self.store.discard_session(root, &s, &staging, false)?;
                    return Ok(Outcome::RolledBack(what("rolled back")));
                }
                if let Some(meta) = meta {
                    match self.store.session_presence(root, &s, &meta.identity)? {
                        Presence::Here | Presence::Elsewhere(_) => {
                            return Ok(Outcome::Finished(what("finished")))
                        }
                        Presence::Other(what) => {
                            return Err(Error::Damaged { path: root.join(&s.place), what })
                        }
                        Presence::Absent => {
                            if self.store.presence(root, &staging, &meta.identity)?
                                == Presence::Here
                                && self.store.publish_session(root, &staging, &s.place).is_ok()
                            {
                                return Ok(Outcome::Finished(what("finished")));
                            }
                        }
                    }
                }
                if let Some(at) = at {
                    let built = self.store.session_built_at(&staging, &s.place).into();
                    self.detach(&Session { place: built, ..s.clone() }, at, made_by)?;
                    attach::remove_unfinished(at, made_by)?;
                }
                self.store.discard_session(root, &s, &staging, true)?;
                root.remove_file(&Layout::session_meta(project, session))?;
                Ok(Outcome::RolledBack(what("rolled back")))
            }
            Intent::Promote {
                project,
                session,
                generation,
                staging: name,
                consume,
                drop,
                edits_session,
                session_identity,
            } => {
                let current = read_current(root, project)?
                    .ok_or_else(|| Error::UnknownProject { project: project.clone() })?;
                let s = self.session(project, session);
                let adopt = *consume && self.store.can_adopt_session();
                let finished = |what: String| -> Result<Outcome> {
                    if *consume {
                        self.finish_consume(&s, adopt)?;
                    }
                    if !drop.is_empty() && self.store.can_adopt_session() {
                        self.trash_aside(project, name)?;
                        let trashed = Layout::trash(project).join(edit::aside_name(name));
                        let _ = self.store.remove_trash(root, &trashed);
                    }
                    Ok(Outcome::Finished(what))
                };
                if current == *generation {
                    self.ensure_published(&self.generation(project, current, current), &staging)?;
                    return finished(format!("{project}: finished promote of {session}"));
                }
                let g = self.generation(project, *generation, current);
                let previous = self.generation(project, current, current);
                // Before anything is discarded: a session taken as the generation goes back to
                // its place, and paths dropped from the session's own tree go back into it.
                if adopt {
                    let id = match session_identity {
                        Some(id) => Some(id.clone()),
                        None => read_session(root, project, session)?.map(|m| m.identity),
                    };
                    if let Some(id) = id {
                        for from in [&staging, &g.place] {
                            if self.store.presence(root, from, &id)? == Presence::Here {
                                self.store.return_session(root, from, &s)?;
                            }
                            // Whatever happened, never discard the session's tree.
                            if self.store.presence(root, from, &id)? == Presence::Here {
                                return Err(Error::Damaged {
                                    path: root.join(from),
                                    what: format!("holds session {session}'s tree, which could not go back to its place"),
                                });
                            }
                        }
                        if self.store.presence(root, &s.place, &id)? == Presence::Here {
                            self.restore_drops(project, &s.place, name, drop)?;
                        }
                    }
                } else if *edits_session && root.entry(&s.place)?.is_some() {
                    self.restore_drops(project, &s.place, name, drop)?;
                } else if !drop.is_empty() && self.store.can_adopt_session() {
                    // Dropped from a copy that is discarded now: nobody's data.
                    self.aside(project, &staging, name)?.remove()?;
                }
                if let Some(identity) =
                    self.store.recover_promote(root, &s, &g, &previous, &staging, *edits_session)?
                {
                    self.commit_generation(
                        &g,
                        Some(session),
                        None,
                        identity,
                        &staging,
                        &Watch::default(),
                    )?;
                    return finished(format!(
                        "{project}: finished promote of {session} to generation {generation}"
                    ));
                }
                self.undo_generation(&g, &staging)?;
                Ok(Outcome::RolledBack(format!("{project}: rolled back generation {generation}")))
            }
            Intent::Delete { project, generation, .. } => {
                if read_current(root, project)?.is_some() {
                    return Ok(Outcome::RolledBack(format!("{project}: delete had not begun")));
                }
                self.finish_delete(project, *generation)?;
                Ok(Outcome::Finished(format!("{project}: finished delete")))
            }
            Intent::Cleanup { project, session, trash } => {
                let s = self.session(project, session);
                let finished = format!("{project}: finished cleanup of session {session}");
                let lazy = state::is_detached_name(trash);
                let Some(meta) = read_session(root, project, session)? else {
                    // A lazy cleanup's tree waits (recorded) for its users: gc removes it.
                    if !lazy {
                        let _ = self.store.remove_trash(root, &staging);
                    }
                    return Ok(Outcome::Finished(finished));
                };
                if lazy {
                    // Its users are not asked again: the tree goes out of every path, and
                    // waits. Only a session never touched is kept as it is.
                    let untouched = self.store.session_presence(root, &s, &meta.identity)?
                        == Presence::Here
                        && meta.at.as_ref().map_or(true, |at| {
                            attach::state_of(root, &s.place, at, &meta.made_by).ok()
                                == Some(attach::State::Attached)
                        });
                    if untouched {
                        return Ok(Outcome::RolledBack(format!(
                            "{project}: lazy cleanup of session {session} had not begun"
                        )));
                    }
                    self.detach_session(&s, &meta, &staging)?;
                    return Ok(Outcome::Finished(finished));
                }
                match self.store.session_presence(root, &s, &meta.identity)? {
                    // Nothing was taken away: the cleanup never happened.
                    Presence::Here => Ok(Outcome::RolledBack(format!(
                        "{project}: cleanup of session {session} had not begun"
                    ))),
                    Presence::Other(what) => {
                        Err(Error::Damaged { path: root.join(&s.place), what })
                    }
                    Presence::Absent | Presence::Elsewhere(_) => {
                        if let Some(at) = &meta.at {
                            self.detach(&s, at, &meta.made_by)?;
                        }
                        let retired =
                            self.store.retire_session(root, &s, &meta.identity, &staging)?;
                        self.owe(project, &retired)?;
                        root.remove_file(&Layout::session_meta(project, session))?;
                        let _ = self.store.remove_trash(root, &staging);
                        Ok(Outcome::Finished(finished))
                    }
                }
            }
        }
    }

    /// Undo an import or promote of `g` that did not commit: what it built at `staging`, its
    /// tree if it was published and recorded, and its record.
    fn undo_generation(&self, g: &Generation, staging: &Path) -> Result<()> {
        let recorded = read_generation(&self.root, &g.project, g.number)?;
        self.store.discard_generation(
            &self.root,
            g,
            staging,
            recorded.as_ref().map(|m| &m.identity),
        )?;
        self.root.remove_file(&Layout::generation_meta(&g.project, g.number))
    }

    /// Where a promote of `project` with staging name `staging` keeps the paths it drops from
    /// the tree at `tree`: the project's state directory where trees are directories of the
    /// root's filesystem (never emptied by gc), else the tree itself (see `edit`).
    fn aside(&self, project: &str, tree: &Path, staging: &str) -> Result<edit::Aside> {
        let place = if self.store.can_adopt_session() {
            Layout::project_state(project)
        } else {
            tree.into()
        };
        let dir = edit::open_tree(&self.root, &place)?;
        Ok(edit::Aside::new(dir, self.root.join(&place), staging))
    }

    /// After the commit of a promote (staging name `staging`) whose dropped paths wait in the
    /// project's state directory: move them to the project's trash.
    fn trash_aside(&self, project: &str, staging: &str) -> Result<()> {
        let name = edit::aside_name(staging);
        let from = Layout::project_state(project).join(&name);
        if self.root.entry(&from)?.is_none() {
            return Ok(());
        }
        self.root.mkdir_all(&Layout::trash(project))?;
        self.root.rename_noreplace(&from, &Layout::trash(project).join(&name))
    }

    /// Put back into the tree at `tree` what a promote (staging name `staging`) dropped.
    fn restore_drops(
        &self,
        project: &str,
        tree: &Path,
        staging: &str,
        drops: &[String],
    ) -> Result<()> {
        if drops.is_empty() {
            return Ok(());
        }
        let fd = edit::open_tree(&self.root, tree)?;
        let aside = self.aside(project, tree, staging)?;
        for kept in aside.restore_into(&fd, &self.root.join(tree), drops)? {
            tracing::warn!(
                target: "goldclone::recovery",
                "{project}: could not put back {kept}: its place is taken; left there"
            );
        }
        Ok(())
    }

    /// After a committed promote that consumes its session: the session goes. Taken as the
    /// generation (`adopted`), only its record is left to remove; otherwise it is removed as a
    /// cleanup would, unless something uses it now (then it stays, an ordinary session). The
    /// caller holds the project's exclusive lock.
    fn finish_consume(&self, s: &Session, adopted: bool) -> Result<()> {
        let Some(meta) = read_session(&self.root, &s.project, &s.name)? else { return Ok(()) };
        if adopted {
            if self.store.session_presence(&self.root, s, &meta.identity)? == Presence::Absent {
                self.root.remove_file(&Layout::session_meta(&s.project, &s.name))?;
            }
            return Ok(());
        }
        let _ = self.remove_session(&s.project, &s.name, false);
        Ok(())
    }

    /// A committed generation is at its place: if a crash came between `current` and the
    /// rename, finish the rename.
    fn ensure_published(&self, g: &Generation, staging: &Path) -> Result<()> {
        let meta =
            read_generation(&self.root, &g.project, g.number)?.ok_or_else(|| Error::Damaged {
                path: self.root.join(&Layout::current(&g.project)),
                what: format!("names generation {}, which has no record", g.number),
            })?;
        if self.store.generation_presence(&self.root, g, &meta.identity)? == Presence::Here {
            return Ok(());
        }
        self.store.publish(&self.root, staging, &g.place)
    }

    /// Remove the state of a project that has nothing: no generation, no session, no intent.
    /// `lock` is the project's exclusive lock, and must still be the project's (not a lock on
    /// files a rolled-back import removed, while a new import made new ones). The lock files go
    /// last; waiters notice (see `lock_project`). The project's directories under the root are
    /// the import's to remove (undoing it), not this: they may be a user's.
    fn forget_if_empty(&self, project: &str, lock: &ProjectLock) -> Result<()> {
        let root = &self.root;
        debug_assert!(lock.exclusive);
        if !lock.is_current(root)?
            || read_current(root, project).ok().flatten().is_some()
            || !state::generation_numbers(root, project)?.is_empty()
            || !state::session_names(root, project)?.is_empty()
            || !root.list(&Layout::journal(project))?.is_empty()
            || !self.detached(project)?.is_empty()
        {
            return Ok(());
        }
        // Dead writers' temporary files go first; anything else left in a directory keeps the
        // project (and its locks) where it is.
        state::remove_record_temps(root, project)?;
        // Manifests describe generations that are gone with the project.
        for name in root.list(&Layout::manifests(project))? {
            root.remove_file(&Layout::manifests(project).join(name))?;
        }
        let state_dir = Layout::project_state(project);
        for d in ["journal", "gen", "sessions", "trash", "detached", "manifests"]
            .iter()
            .map(|d| state_dir.join(d))
            .chain(std::iter::once(Layout::trash(project)))
        {
            if !root.rmdir(&d)? && root.entry(&d)?.is_some() {
                return Ok(());
            }
        }
        if !self.store.forget_project(root, project)? {
            return Ok(());
        }
        for f in ["size.json", "gate", "lock"] {
            root.remove_file(&state_dir.join(f))?;
        }
        root.rmdir(&state_dir)?;
        Ok(())
    }

    /// Remove the project's trash: trees retired by operations that finished (or died after
    /// their commit). Exclusive lock held.
    fn empty_trash(&self, project: &str, report: &mut GcReport) {
        let names = match self.root.list(&Layout::trash(project)) {
            Ok(n) => n,
            Err(e) => return report.failed.push(format!("{project}: {e}")),
        };
        for name in names {
            let t = Layout::trash(project).join(&name);
            if !name.to_str().is_some_and(state::is_own_name) {
                report
                    .kept
                    .push(format!("{}: not a name goldclone gives trash; left alone", self.at(&t)));
                continue;
            }
            if name.to_str().is_some_and(state::is_detached_name) {
                // A lazily cleaned-up session's tree: removed with its record once free
                // (finish_detached); one without a record only if nothing holds it.
                let record = Layout::detached_record(project, &name);
                let recorded = self.root.entry(&record).ok().flatten().is_some();
                let free =
                    holders::holders(&self.root.join(&t), false, &[]).is_ok_and(|h| h.is_empty());
                if recorded || !free {
                    continue;
                }
            }
            match self.store.remove_trash(&self.root, &t) {
                Ok(()) => report.removed.push(format!("trash {}", self.at(&t))),
                Err(e) => report.failed.push(format!("removing trash {}: {e}", self.at(&t))),
            }
        }
    }

    /// Garbage-collect one project (exclusive lock held, intents resolved).
    fn collect(&self, project: &str, lock: &ProjectLock, report: &mut GcReport) -> Result<()> {
        let root = &self.root;
        if !lock.is_current(root)? {
            return Ok(()); // recovery found it never came to be, and forgot it
        }
        // Trash and owed removals first: they are ours whatever else is damaged.
        self.empty_trash(project, report);
        let (owed, _) = state::record_names(root, &Layout::owed(project))?;
        for o in owed {
            let path = Layout::owed(project).join(format!("{o}.json"));
            let done = state::read_json::<Identity>(root, &path).and_then(|id| match id {
                Some(id) => self.store.remove_owed(root, &id).map(|()| format!("{id:?}")),
                None => Ok(String::new()),
            });
            match done {
                Ok(what) => {
                    root.remove_file(&path)?;
                    report.removed.push(format!("{project}: owed removal of {what}"));
                }
                Err(e) => {
                    report.failed.push(format!("{project}: owed removal {}: {e}", self.at(&path)))
                }
            }
        }
        let current = match read_current(root, project) {
            Ok(Some(c)) => c,
            Ok(None) => {
                if self.forget_if_empty(project, lock).is_err()
                    || root.entry(&Layout::project_state(project))?.is_some()
                {
                    report.kept.push(format!("{project}: has no current generation; left alone"));
                } else {
                    report
                        .removed
                        .push(format!("{project}: state of a project that never came to be"));
                }
                return Ok(());
            }
            Err(e) => {
                report.kept.push(format!("{e}; project {project} left alone"));
                return Ok(());
            }
        };
        if read_generation(root, project, current)?.is_none() {
            report.kept.push(format!(
                "{project}: current names generation {current}, which has no record; left alone"
            ));
            return Ok(());
        }
        match self.finish_detached(project, report) {
            Ok(held) => {
                report.kept.extend(held.into_iter().map(|(_, h)| format!("{h}; removed once free")))
            }
            Err(e) => {
                report.failed.push(format!("{project}: sessions cleaned up while in use: {e}"))
            }
        }
        let sessions = state::session_names(root, project)?;
        for name in &sessions {
            let s = self.session(project, name);
            match read_session(root, project, name) {
                Ok(Some(meta)) => match self.store.session_presence(root, &s, &meta.identity)? {
                    Presence::Here => {
                        if let Some(at) = meta.at.as_deref() {
                            match attach::state_of(root, &s.place, at, &meta.made_by) {
                                Ok(attach::State::Other(what)) => report.kept.push(format!(
                                    "{project}: session {name}: {what} (its recorded path); \
                                     left alone"
                                )),
                                Ok(_) => {}
                                Err(e) => report.kept.push(format!(
                                    "{project}: session {name}: its recorded path: {e}; left alone"
                                )),
                            }
                        }
                    }
                    Presence::Absent => {
                        if let Some(at) = &meta.at {
                            if let Err(e) = self.detach(&s, at, &meta.made_by) {
                                report.kept.push(format!(
                                    "{project}: session {name}: its recorded path: {e}; left alone"
                                ));
                                continue;
                            }
                        }
                        root.remove_file(&Layout::session_meta(project, name))?;
                        report.removed.push(format!(
                            "{project}: record of session {name}, whose tree is gone"
                        ));
                    }
                    Presence::Elsewhere(what) | Presence::Other(what) => {
                        report.kept.push(format!("{project}: session {name}: {what}; left alone"))
                    }
                },
                Ok(None) => {}
                Err(e) => report.kept.push(format!("{e}; left alone")),
            }
        }
        let generations = state::generation_numbers(root, project)?;
        for &n in &generations {
            if n > current {
                report.kept.push(format!(
                    "{project}: generation {n} is newer than the current {current}; left alone"
                ));
            } else if n < current {
                match self.reclaim_if_unused(project, n) {
                    Ok(true) => report.removed.push(format!("{project}: retired generation {n}")),
                    Ok(false) => {}
                    Err(e) => report.failed.push(format!("{project}: generation {n}: {e}")),
                }
            }
        }
        let sessions = state::session_names(root, project)?;
        for name in root.list(&Layout::sessions(project))? {
            if !sessions.iter().any(|s| **s == *name) {
                report.kept.push(format!(
                    "{}: no record names it; left alone",
                    self.at(&Layout::sessions(project).join(&name))
                ));
            }
        }
        let generations = state::generation_numbers(root, project)?;
        for name in root.list(&Layout::generations(project))? {
            if !name
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| generations.contains(&n))
            {
                report.kept.push(format!(
                    "{}: no record names it; left alone",
                    self.at(&Layout::generations(project).join(&name))
                ));
            }
        }
        for name in root.list(&Layout::project_state(project))? {
            if name.to_str().is_some_and(|n| n.ends_with(".dropped")) {
                report.kept.push(format!(
                    "{}: paths a rolled-back promote dropped and could not put back (their \
                     places were taken); left alone",
                    self.at(&Layout::project_state(project).join(&name))
                ));
            }
        }
        for dir in [Layout::generation_records(project), Layout::session_records(project)] {
            let (_, other) = state::record_names(root, &dir)?;
            for o in other {
                report.kept.push(format!("{}: not a record; left alone", self.at(&dir.join(o))));
            }
        }
        for d in self.store.unrecorded(
            &self.root,
            project,
            &sessions,
            &[current],
            &self.owed_ids(project)?,
        )? {
            report.kept.push(format!("{project}: {d} has no record; left alone"));
        }
        Ok(())
    }
}

/// A wait for a project's lock that took a second or more: someone's promote, import, delete
/// or gc held it.
fn log_wait(project: &str, access: &str, started: std::time::Instant) {
    let waited = started.elapsed();
    if waited >= Duration::from_secs(1) {
        tracing::info!(
            target: "goldclone::lifecycle",
            "waited {:.1} s for project {project}'s lock ({access})",
            waited.as_secs_f64()
        );
    }
}
