//! The golden lifecycle: per project a golden tree in generations, per session a private writable
//! copy of the current generation, promotion of a session to the next generation while older
//! sessions keep running, cleanup, garbage collection, crash recovery.
//!
//! One API over four backends, picked by [`detect`](crate::detect) from the cache root and
//! overridable: ZFS filesystems, ZFS zvol + XFS, btrfs subvolumes, and the tree copy.

mod busy;
pub mod fault;
mod state;
mod store;
mod zfs_store;

use std::path::{Path, PathBuf};

pub use state::{validate_name, MAX_ID_LEN};

use state::{GenerationMeta, Intent, Layout, SessionMeta};
use store::{BtrfsStore, CopyStore, Retired, Store, Tree, TreeId};

use crate::copy::STAGING_PREFIX;
use crate::detect::{self, Backend};
use crate::{Error, Result};

/// Which primitive a cache uses to give sessions their copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// A ZFS dataset per generation; sessions are clones mounted with mount(2).
    Zfs,
    /// A ZFS volume with XFS per generation; sessions are zvol clones mounted `nouuid`.
    Zvol,
    /// btrfs subvolumes; sessions are snapshots.
    Btrfs,
    /// The exact parallel tree copy (reflinked where the filesystem can).
    Copy,
}

/// How to open a cache.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Force a backend instead of detecting one from the root.
    pub backend: Option<BackendKind>,
    /// Worker threads of the copy backend (0 = default).
    pub copy_threads: usize,
    /// zvol backend: size of a project's first volume; 0 picks four times the imported tree
    /// (at least 1 GiB). Volumes are sparse: only written blocks use space.
    pub zvol_size: u64,
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
    /// Bytes used by the golden tree (as the backend counts them).
    pub size_bytes: u64,
    /// Sessions of this project that exist now, with the generation each was made from.
    pub sessions: Vec<(String, u64)>,
}

/// What [`Cache::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Human-readable names of what was removed (retired generations, orphans, staging).
    pub removed: Vec<String>,
}

/// A golden-tree cache rooted at a directory (on ZFS: the directory a dataset is mounted at).
///
/// `Cache` is `Send + Sync`: one value may serve many threads, and many processes may open the
/// same root at once; per-project locks (flock) keep them apart.
#[derive(Debug)]
pub struct Cache {
    layout: Layout,
    store: Box<dyn Store>,
}

impl Cache {
    /// Open (creating the state directory if needed) the cache at `root`, and finish or roll back
    /// whatever a crashed process left half done.
    pub fn open(root: &Path, opts: &OpenOptions) -> Result<Cache> {
        let meta = std::fs::metadata(root).map_err(|e| Error::io("stat", root, e))?;
        if !meta.is_dir() {
            return Err(Error::NotADirectory { path: root.to_path_buf() });
        }
        let root = root.canonicalize().map_err(|e| Error::io("canonicalize", root, e))?;
        let found = detect::detect(&root)?;
        let kind = opts.backend.unwrap_or(match &found.backend {
            Backend::ZfsDataset { .. } => BackendKind::Zfs,
            Backend::Zvol { .. } => BackendKind::Zvol,
            Backend::Btrfs { .. } => BackendKind::Btrfs,
            Backend::Reflink { .. } | Backend::Plain { .. } => BackendKind::Copy,
        });
        let store: Box<dyn Store> = match kind {
            BackendKind::Copy => Box::new(CopyStore { threads: opts.copy_threads }),
            BackendKind::Btrfs => {
                if !matches!(found.backend, Backend::Btrfs { .. }) {
                    return Err(Error::Unsupported {
                        what: format!(
                            "btrfs backend asked for, but {} is on {}",
                            root.display(),
                            found.mount.fs_type
                        ),
                    });
                }
                Box::new(BtrfsStore { threads: opts.copy_threads })
            }
            BackendKind::Zfs | BackendKind::Zvol => {
                let dataset = match (&found.backend, kind) {
                    // The cache root must be where its dataset is mounted: sessions and
                    // metadata live in directories of that dataset.
                    (Backend::ZfsDataset { dataset, .. }, _) if found.mount.mount_point == root => dataset.clone(),
                    // A root on XFS on a zvol: new volumes go beside that zvol.
                    (Backend::Zvol { dataset, .. }, BackendKind::Zvol) => match dataset.rsplit_once('/') {
                        Some((parent, _)) => parent.to_string(),
                        None => {
                            return Err(Error::Unsupported {
                                what: format!("zvol {dataset} has no parent dataset to put volumes in"),
                            })
                        }
                    },
                    _ => {
                        return Err(Error::Unsupported {
                            what: format!(
                                "{kind:?} backend needs the cache root to be the mount point of a ZFS dataset (or, for zvol, on a zvol); {} is on {} at {}",
                                root.display(),
                                found.mount.fs_type,
                                found.mount.mount_point.display()
                            ),
                        })
                    }
                };
                let dataset = crate::zfs::DatasetName::new(&dataset)?;
                Box::new(zfs_store::ZfsStore::new(
                    dataset,
                    kind == BackendKind::Zvol,
                    opts.copy_threads,
                    opts.zvol_size,
                )?)
            }
        };
        let cache = Cache { layout: Layout { root }, store };
        cache.layout.create()?;
        cache.recover_all()?;
        Ok(cache)
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.layout.root
    }

    /// The backend in use.
    pub fn backend(&self) -> BackendKind {
        self.store.kind()
    }

    /// Make `dir` generation 1 of a new project. `dir` is copied (or, on ZFS and btrfs, turned
    /// into a snapshot source); it is not changed.
    pub fn import(&self, project: &str, dir: &Path) -> Result<u64> {
        validate_name(project)?;
        let meta = std::fs::metadata(dir).map_err(|e| Error::io("stat", dir, e))?;
        if !meta.is_dir() {
            return Err(Error::NotADirectory { path: dir.to_path_buf() });
        }
        let _lock = self.layout.lock(project, true, true)?;
        if self.layout.read_current(project)?.is_some() {
            return Err(Error::AlreadyExists { path: self.layout.project(project) });
        }
        for d in [self.layout.generations(project), self.layout.sessions(project)] {
            std::fs::create_dir_all(&d).map_err(|e| Error::io("mkdir", &d, e))?;
        }
        let generation = 1;
        let intent = Intent::Import { project: project.to_string(), generation };
        self.run(&intent, "import", || {
            self.store.import(dir, &self.generation_tree(project, generation, Some(generation)))?;
            fault::point("import:tree-created");
            self.commit_generation(project, generation, None)?;
            Ok(generation)
        })
    }

    /// A writable private copy of the project's current generation; returns its path. Sessions
    /// of one project are set up concurrently.
    pub fn setup(&self, project: &str, session: &str) -> Result<PathBuf> {
        validate_name(project)?;
        validate_name(session)?;
        let _lock = self.layout.lock(project, false, false)?;
        let generation = self.current(project)?;
        let path = self.layout.session(project, session);
        let intent = Intent::Setup {
            project: project.to_string(),
            session: session.to_string(),
            generation,
        };
        self.run(&intent, "setup", || {
            let tree = self.session_tree(project, session);
            if self.layout.session_meta(project, session).exists() || self.store.exists(&tree)? {
                return Err(Error::AlreadyExists { path: path.clone() });
            }
            self.store.session_from(
                &self.generation_tree(project, generation, Some(generation)),
                &tree,
            )?;
            fault::point("setup:tree-created");
            state::write_json(
                &self.layout.session_meta(project, session),
                &SessionMeta {
                    project: project.to_string(),
                    session: session.to_string(),
                    generation,
                    created_at: state::now(),
                },
            )?;
            fault::point("setup:meta-written");
            Ok(path.clone())
        })
    }

    /// Make the session's tree the project's next generation; returns that generation. The
    /// session must be quiesced (no process using it) and keeps running unchanged afterwards;
    /// sessions of older generations are not touched.
    pub fn promote(&self, project: &str, session: &str) -> Result<u64> {
        validate_name(project)?;
        validate_name(session)?;
        let _lock = self.layout.lock(project, true, false)?;
        let previous = self.current(project)?;
        self.session_meta(project, session)?;
        let path = self.layout.session(project, session);
        self.ensure_quiesced(project, session, &path)?;
        let generation = self.layout.generation_numbers(project)?.last().copied().unwrap_or(0) + 1;
        let intent = Intent::Promote {
            project: project.to_string(),
            session: session.to_string(),
            generation,
        };
        self.run(&intent, "promote", || {
            self.store.golden_from(
                &self.session_tree(project, session),
                &self.generation_tree(project, generation, Some(previous)),
                &self.generation_tree(project, previous, Some(previous)),
            )?;
            fault::point("promote:tree-created");
            self.commit_generation(project, generation, Some(session))?;
            Ok(generation)
        })
    }

    /// Remove a session. Once the last session of a retired generation is gone, that generation
    /// is reclaimed too.
    pub fn cleanup(&self, project: &str, session: &str) -> Result<()> {
        validate_name(project)?;
        validate_name(session)?;
        let _lock = self.layout.lock(project, false, false)?;
        self.current(project)?;
        let meta = self.session_meta(project, session)?;
        let path = self.layout.session(project, session);
        self.ensure_quiesced(project, session, &path)?;
        let intent = Intent::Cleanup { project: project.to_string(), session: session.to_string() };
        if let Retired::Moved(trash) =
            self.run(&intent, "cleanup", || self.retire_session(project, session))?
        {
            self.store.remove_trash(&trash)?;
        }
        // The session is gone whatever happens next. Reclaiming its generation is a courtesy
        // here; what it cannot do now, gc does later.
        let _ = self.reclaim_if_unused(project, meta.generation);
        Ok(())
    }

    /// Finish interrupted operations, then remove what no committed state refers to: session and
    /// generation trees without metadata (and the reverse), retired generations without sessions,
    /// staging leftovers, trash.
    pub fn gc(&self) -> Result<GcReport> {
        let mut report = GcReport::default();
        let mut projects = self.layout.projects()?;
        for p in self.layout.journaled_projects()? {
            if !projects.contains(&p) {
                projects.push(p);
            }
        }
        for project in projects {
            let _lock = self.layout.lock(&project, true, true)?;
            self.recover(&project, &mut report)?;
            self.collect(&project, &mut report)?;
        }
        Ok(report)
    }

    /// The project's current generation and its sessions.
    pub fn info(&self, project: &str) -> Result<GoldenInfo> {
        validate_name(project)?;
        let _lock = self.layout.lock(project, false, false)?;
        let generation = self.current(project)?;
        let meta: GenerationMeta =
            state::read_json(&self.layout.generation_meta(project, generation))?
                .ok_or_else(|| Error::UnknownProject { project: project.to_string() })?;
        let mut sessions = Vec::new();
        for s in self.layout.session_names(project)? {
            if let Some(m) =
                state::read_json::<SessionMeta>(&self.layout.session_meta(project, &s))?
            {
                sessions.push((s, m.generation));
            }
        }
        Ok(GoldenInfo {
            project: project.to_string(),
            generation,
            created_at: meta.created_at,
            source_session: meta.source_session,
            backend: self.backend(),
            size_bytes: self.store.size(&self.generation_tree(
                project,
                generation,
                Some(generation),
            )),
            sessions,
        })
    }

    /// Generations of the project that still exist (the current one and retired ones that
    /// sessions still use), oldest first.
    pub fn generations(&self, project: &str) -> Result<Vec<u64>> {
        validate_name(project)?;
        let _lock = self.layout.lock(project, false, false)?;
        let current = self.current(project)?;
        let mut out = Vec::new();
        for g in self.layout.generation_numbers(project)? {
            if self.layout.generation_meta(project, g).exists()
                && self.store.exists(&self.generation_tree(project, g, Some(current)))?
            {
                out.push(g);
            }
        }
        Ok(out)
    }

    // ---- internals ----

    fn current(&self, project: &str) -> Result<u64> {
        self.layout
            .read_current(project)?
            .ok_or_else(|| Error::UnknownProject { project: project.to_string() })
    }

    fn session_meta(&self, project: &str, session: &str) -> Result<SessionMeta> {
        state::read_json(&self.layout.session_meta(project, session))?.ok_or_else(|| {
            Error::UnknownSession { project: project.to_string(), session: session.to_string() }
        })
    }

    fn ensure_quiesced(&self, project: &str, session: &str, path: &Path) -> Result<()> {
        let pids = busy::users_of(path);
        if pids.is_empty() {
            Ok(())
        } else {
            Err(Error::SessionBusy {
                project: project.to_string(),
                session: session.to_string(),
                pids,
            })
        }
    }

    /// Generation `generation` of `project`, while `head` is the current generation (ZFS keeps
    /// every live generation's snapshot on the current one's head).
    fn generation_tree(&self, project: &str, generation: u64, head: Option<u64>) -> Tree {
        Tree {
            project: project.to_string(),
            id: TreeId::Generation(generation),
            path: self.layout.generation(project, generation),
            head,
        }
    }

    fn session_tree(&self, project: &str, session: &str) -> Tree {
        Tree {
            project: project.to_string(),
            id: TreeId::Session(session.to_string()),
            path: self.layout.session(project, session),
            head: None,
        }
    }

    /// Record `intent`, run `work`, and clear the intent. If `work` fails, resolve the intent
    /// as recovery would (undo, or finish what can only be finished); if even that fails, the
    /// intent stays for the next recovery.
    fn run<T>(
        &self,
        intent: &Intent,
        op: &'static str,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let record = self.layout.record(intent)?;
        fault::point(match op {
            "import" => "import:intent-recorded",
            "setup" => "setup:intent-recorded",
            "promote" => "promote:intent-recorded",
            _ => "cleanup:intent-recorded",
        });
        let result = work();
        // The caller's lock may be shared (setup, cleanup): other operations of the project are
        // running, so their staging directories must not be swept here.
        if result.is_err() && self.resolve(intent, false, &mut GcReport::default()).is_err() {
            return result;
        }
        state::remove_file(&record)?;
        result
    }

    /// Take the session's tree away and drop its metadata: from here on it is gone.
    fn retire_session(&self, project: &str, session: &str) -> Result<Retired> {
        let retired = self
            .store
            .retire(&self.session_tree(project, session), &self.trash_name(project, session))?;
        fault::point("cleanup:tree-moved");
        state::remove_file(&self.layout.session_meta(project, session))?;
        fault::point("cleanup:meta-removed");
        Ok(retired)
    }

    fn trash_name(&self, project: &str, what: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.layout.trash().join(format!("{project}.{what}.{}.{nanos:x}", std::process::id()))
    }

    /// Remove generation `generation` if it is retired (not current) and no session uses it.
    /// Safe under the shared lock: sessions are only made from the current generation, and
    /// `retire` lets exactly one of several concurrent callers do it. True if this call did.
    fn reclaim_if_unused(&self, project: &str, generation: u64) -> Result<bool> {
        let current = self.layout.read_current(project)?;
        if current == Some(generation) {
            return Ok(false);
        }
        for s in self.layout.session_names(project)? {
            if let Some(m) =
                state::read_json::<SessionMeta>(&self.layout.session_meta(project, &s))?
            {
                if m.generation == generation {
                    return Ok(false);
                }
            }
        }
        let tree = self.generation_tree(project, generation, current);
        let retired =
            self.store.retire(&tree, &self.trash_name(project, &format!("gen-{generation}")))?;
        state::remove_file(&self.layout.generation_meta(project, generation))?;
        if let Retired::Moved(trash) = &retired {
            self.store.remove_trash(trash)?;
        }
        Ok(retired != Retired::Absent)
    }

    fn recover_all(&self) -> Result<()> {
        let mut report = GcReport::default();
        for project in self.layout.journaled_projects()? {
            // Only a project with intents needs the exclusive lock, which would otherwise wait
            // behind every running setup of the project for nothing.
            if self.layout.intents(&project)?.is_empty() {
                continue;
            }
            let _lock = self.layout.lock(&project, true, true)?;
            self.recover(&project, &mut report)?;
        }
        Ok(())
    }

    /// Resolve every intent of `project`. Needs the project's exclusive lock: then every intent
    /// left belongs to a process that died.
    fn recover(&self, project: &str, report: &mut GcReport) -> Result<()> {
        for (path, intent) in self.layout.intents(project)? {
            self.resolve(&intent, true, report)?;
            state::remove_file(&path)?;
        }
        self.layout.remove_journal_temps(project)?;
        let _ = std::fs::remove_dir(self.layout.journal(project));
        Ok(())
    }

    /// Finish or undo one interrupted operation. Its commit record decides: `current` for import
    /// and promote, the session's metadata for setup; a cleanup always rolls forward. A promote
    /// the backend can only finish (ZFS, once the clone is promoted) is finished and committed.
    ///
    /// `exclusive`: the caller holds the project's exclusive lock, so staging leftovers in the
    /// project's directories belong to dead writers and are swept too.
    fn resolve(&self, intent: &Intent, exclusive: bool, report: &mut GcReport) -> Result<()> {
        let l = &self.layout;
        match intent {
            Intent::Import { project, generation } => {
                if l.read_current(project)? == Some(*generation) {
                    return Ok(());
                }
                self.store.discard(&self.generation_tree(
                    project,
                    *generation,
                    Some(*generation),
                ))?;
                state::remove_file(&l.generation_meta(project, *generation))?;
                if exclusive {
                    self.remove_staging(&l.generations(project), report)?;
                }
                for d in [l.generations(project), l.sessions(project), l.project(project)] {
                    let _ = std::fs::remove_dir(&d);
                }
                report.removed.push(format!("{project}: rolled back import"));
            }
            Intent::Promote { project, session, generation } => {
                let current = l.read_current(project)?;
                if current == Some(*generation) {
                    return Ok(());
                }
                let previous =
                    current.ok_or_else(|| Error::UnknownProject { project: project.clone() })?;
                let finished = self.store.recover_golden_from(
                    &self.session_tree(project, session),
                    &self.generation_tree(project, *generation, Some(previous)),
                    &self.generation_tree(project, previous, Some(previous)),
                )?;
                if finished {
                    self.commit_generation(project, *generation, Some(session))?;
                    report.removed.push(format!(
                        "{project}: finished promote of {session} to generation {generation}"
                    ));
                } else {
                    state::remove_file(&l.generation_meta(project, *generation))?;
                    if exclusive {
                        self.remove_staging(&l.generations(project), report)?;
                    }
                    report.removed.push(format!("{project}: rolled back generation {generation}"));
                }
            }
            Intent::Setup { project, session, .. } => {
                if l.session_meta(project, session).exists() {
                    return Ok(());
                }
                self.store.discard(&self.session_tree(project, session))?;
                if exclusive {
                    self.remove_staging(&l.sessions(project), report)?;
                }
                report.removed.push(format!("{project}: rolled back session {session}"));
            }
            Intent::Cleanup { project, session } => {
                self.store.discard(&self.session_tree(project, session))?;
                state::remove_file(&l.session_meta(project, session))?;
                report.removed.push(format!("{project}: finished cleanup of session {session}"));
            }
        }
        Ok(())
    }

    /// Write generation metadata, then `current`: the commit of an import or a promote.
    fn commit_generation(
        &self,
        project: &str,
        generation: u64,
        source: Option<&str>,
    ) -> Result<()> {
        state::write_json(
            &self.layout.generation_meta(project, generation),
            &GenerationMeta {
                project: project.to_string(),
                generation,
                created_at: state::now(),
                source_session: source.map(str::to_string),
                backend: self.backend(),
            },
        )?;
        fault::point(if source.is_some() { "promote:meta-written" } else { "import:meta-written" });
        state::write_atomic(&self.layout.current(project), format!("{generation}\n").as_bytes())?;
        fault::point(if source.is_some() {
            "promote:current-written"
        } else {
            "import:current-written"
        });
        Ok(())
    }

    /// Remove staging leftovers in `dir`. Only under the exclusive project lock: then no writer
    /// of this project is alive.
    fn remove_staging(&self, dir: &Path, report: &mut GcReport) -> Result<()> {
        for name in state::list_names(dir)? {
            if name.starts_with(STAGING_PREFIX) || name.starts_with(store::IMPORT_PREFIX) {
                self.store.remove_trash(&dir.join(&name))?;
                report.removed.push(format!("staging {}", dir.join(&name).display()));
            }
        }
        Ok(())
    }

    /// Garbage-collect one project (exclusive lock held, intents resolved).
    fn collect(&self, project: &str, report: &mut GcReport) -> Result<()> {
        let l = &self.layout;
        let current = l.read_current(project)?;
        self.remove_staging(&l.generations(project), report)?;
        self.remove_staging(&l.sessions(project), report)?;
        let mut sessions = l.session_names(project)?;
        for s in self.store.session_names(project)? {
            if !sessions.contains(&s) {
                sessions.push(s);
            }
        }
        for s in sessions {
            let tree = self.session_tree(project, &s);
            let meta = l.session_meta(project, &s);
            match (self.store.exists(&tree)?, meta.exists()) {
                (true, false) => {
                    self.store.discard(&tree)?;
                    report.removed.push(format!("{project}: orphan session tree {s}"));
                }
                (false, true) => {
                    state::remove_file(&meta)?;
                    report.removed.push(format!("{project}: metadata of missing session {s}"));
                }
                _ => {}
            }
        }
        for g in l.generation_numbers(project)? {
            if Some(g) == current {
                continue;
            }
            let tree = self.generation_tree(project, g, current);
            let meta = l.generation_meta(project, g);
            if meta.exists() {
                if self.reclaim_if_unused(project, g)? {
                    report.removed.push(format!("{project}: retired generation {g}"));
                }
            } else if self.store.exists(&tree)? {
                self.store.discard(&tree)?;
                report.removed.push(format!("{project}: incomplete generation {g}"));
            }
        }
        let prefix = format!("{project}.");
        for name in state::list_names(&l.trash())? {
            if name.starts_with(&prefix) {
                self.store.remove_trash(&l.trash().join(&name))?;
                report.removed.push(format!("trash {name}"));
            }
        }
        if current.is_none() {
            for d in [l.generations(project), l.sessions(project), l.project(project)] {
                let _ = std::fs::remove_dir(&d);
            }
        }
        Ok(())
    }
}
