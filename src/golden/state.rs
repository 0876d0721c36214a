//! On-disk state of a cache: where things live, the records that say what goldclone made, the
//! intent journal, per-project locks, and name validation.
//!
//! ```text
//! ROOT/.goldclone/cache.json                   layout version and this cache's random id
//! ROOT/.goldclone/projects/<p>/                a project goldclone made (nothing else is one)
//!     lock, gate                               flocks: see ProjectLock
//!     current                                  the current generation number
//!     gen/<n>.json                             generation n: its record (identity of its tree)
//!     sessions/<s>.json                        session s: its record (identity of its tree)
//!     journal/<kind>-<id>.json                 intents of operations in flight, each flocked
//!                                              by its owner for as long as it runs
//!     trash/<name>.json                        removals still owed (trees a backend keeps
//!                                              outside the root, e.g. datasets, that stayed busy)
//! ROOT/.goldclone/trash/<p>/<name>             trees on their way out
//! ROOT/<p>/gen/<n>                             generation n's tree, for backends whose trees
//!                                              are directories
//! ROOT/<p>/sessions/<s>                        session s's tree or mount point
//! ```
//!
//! Records live in their own namespace under `.goldclone/`: no valid id can collide with one,
//! and a directory under the root is never taken for a project because of its name. A record is
//! the commit point of what it describes; a tree is acted on only where it is the tree its
//! record names ([`Identity`]).

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::backend::rootdir::is_temp_name;
use crate::backend::{BackendKind, Identity, RootDir};
use crate::{Context, Error, Result};

/// Longest project or session id, in bytes. Leaves room for both inside a backend's names (a
/// 255-byte ZFS dataset name under a pool and a cache dataset).
pub const MAX_ID_LEN: usize = 64;

/// The version of this layout, in `cache.json`. A root with another version is refused.
pub const LAYOUT_VERSION: u32 = 2;

/// Check a project or session id: 1–64 bytes of `[A-Za-z0-9_.-]`, not starting with `.` or `-`
/// (so it is a safe path component and ZFS dataset name component, and never `.goldclone`).
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_ID_LEN {
        return Err(Error::NameTooLong {
            name: name.to_string(),
            len: name.len(),
            max: MAX_ID_LEN,
        });
    } else if name.starts_with('.') || name.starts_with('-') {
        "starts with '.' or '-'"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains('@') {
        "contains '@'"
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        "may only contain ASCII letters, digits, '_', '.' and '-'"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { name: name.to_string(), reason })
}

/// The record of one generation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct GenerationMeta {
    pub project: String,
    pub generation: u64,
    pub created_at: u64,
    pub source_session: Option<String>,
    pub backend: BackendKind,
    pub identity: Identity,
    /// The staging name of the operation that made it: recovery takes a record as its
    /// operation's commit only if it is this one.
    pub made_by: String,
    /// For a generation received from another cache: its id there (the stream's), which it
    /// keeps on every host it is sent on to. `None` for one made here (its id is then made
    /// from the cache's id, its number and its creation time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// The record of one session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SessionMeta {
    pub project: String,
    pub session: String,
    pub generation: u64,
    pub created_at: u64,
    pub identity: Identity,
    /// The staging name of the setup that made it (see [`GenerationMeta::made_by`]).
    pub made_by: String,
    /// The caller's path the session is shown at (bind-mounted there), if it chose one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<PathBuf>,
}

/// A session cleaned up lazily while still in use (`CleanupOptions::lazy`): out of every path,
/// its tree waits for its last user; gc removes it then, and this record with it. Named after
/// the cleanup's trash name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct DetachedMeta {
    pub session: String,
    /// The generation it was made from: not reclaimed while this waits.
    pub generation: u64,
    /// Where its tree waits (relative to the root), for backends whose trees are directories.
    pub trash: Option<PathBuf>,
    /// What the backend still has to remove (a ZFS dataset, mounted for its users).
    pub owed: Option<crate::backend::Identity>,
    /// The caller's path it was shown at, and the setup that made the directory there: the
    /// directory is removed once the tree is (see `attach::unmount_lazily`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<PathBuf>,
    #[serde(default)]
    pub made_by: String,
}

/// `size.json`: what a walk of a generation's tree counted. A generation never changes once
/// committed, so the count stays true; only the current generation's is kept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SizeCache {
    pub generation: u64,
    pub bytes: u64,
}

/// `cache.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct CacheMeta {
    layout: u32,
    id: String,
    /// The backend the cache was made with: records mean something only to it.
    backend: BackendKind,
}

/// The backend recorded in the cache at `root` (its `cache.json`), if it has one that reads.
/// A cache keeps the backend it was made with, whatever detection would pick today.
pub(crate) fn recorded_backend(root: &RootDir) -> Option<BackendKind> {
    read_json::<CacheMeta>(root, &Layout::cache_meta()).ok().flatten().map(|m| m.backend)
}

/// What an operation in flight is about to do: enough to finish or undo it after a crash. The
/// staging and trash names are chosen before anything is made, so recovery removes exactly what
/// the operation made and nothing else.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Intent {
    Import {
        project: String,
        generation: u64,
        staging: String,
    },
    /// `Cache::import_next`: a directory as generation `generation` after `previous` (the
    /// current generation when it began). An operation of its own, not an `Import` with one
    /// more field: a goldclone that does not know it must leave it alone (damaged state),
    /// never undo it as a first import, which would remove the project's generations.
    ImportNext {
        project: String,
        generation: u64,
        previous: u64,
        staging: String,
        /// The received generation's id (see [`GenerationMeta::origin`]), for a receive.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<String>,
    },
    Setup {
        project: String,
        session: String,
        generation: u64,
        staging: String,
        /// The caller's path the session is to be shown at: a rollback takes the bind and
        /// the directory made there away.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<PathBuf>,
    },
    Promote {
        project: String,
        session: String,
        generation: u64,
        staging: String,
        /// The session's tree itself becomes the generation (`PromoteOptions::consume`).
        #[serde(default)]
        consume: bool,
        /// Paths dropped from the new generation: until the commit, moved aside in the tree
        /// being edited (see `edit`).
        #[serde(default)]
        drop: Vec<String>,
        /// The tree being edited is the session's own (ZFS promotes the session itself).
        #[serde(default)]
        edits_session: bool,
        /// The session's identity when the promote began: a consumed session is recognised by
        /// it wherever it is, whatever its record says meanwhile.
        #[serde(default)]
        session_identity: Option<crate::backend::Identity>,
    },
    Cleanup {
        project: String,
        session: String,
        trash: String,
    },
    /// Delete the whole project; `generation` is its current one when the delete began (ZFS
    /// keeps every generation on that one's head), `trash` the name trees are retired under.
    Delete {
        project: String,
        generation: u64,
        trash: String,
    },
}

impl Intent {
    pub fn project(&self) -> &str {
        match self {
            Intent::Import { project, .. }
            | Intent::ImportNext { project, .. }
            | Intent::Setup { project, .. }
            | Intent::Promote { project, .. }
            | Intent::Cleanup { project, .. }
            | Intent::Delete { project, .. } => project,
        }
    }

    /// Whether resolving it needs the project's exclusive lock: it may change `current` or the
    /// generations every setup reads.
    pub fn is_exclusive(&self) -> bool {
        matches!(
            self,
            Intent::Import { .. }
                | Intent::ImportNext { .. }
                | Intent::Promote { .. }
                | Intent::Delete { .. }
        )
    }

    /// The session it is about, if any.
    pub fn session(&self) -> Option<&str> {
        match self {
            Intent::Setup { session, .. }
            | Intent::Promote { session, .. }
            | Intent::Cleanup { session, .. } => Some(session),
            Intent::Import { .. } | Intent::ImportNext { .. } | Intent::Delete { .. } => None,
        }
    }

    /// One file per session (setup and cleanup of one session exclude each other) and per new
    /// generation (import and promote hold the exclusive lock anyway).
    fn file_name(&self) -> String {
        match self {
            Intent::Import { generation, .. }
            | Intent::ImportNext { generation, .. }
            | Intent::Promote { generation, .. } => {
                format!("generation-{generation}.json")
            }
            Intent::Setup { session, .. } | Intent::Cleanup { session, .. } => {
                format!("session-{session}.json")
            }
            Intent::Delete { .. } => "delete.json".into(),
        }
    }

    /// Every name in it is what goldclone itself would have written: a journal entry naming
    /// `../outside` is damaged state, never acted on.
    fn validate(&self, project: &str) -> std::result::Result<(), String> {
        if self.project() != project {
            return Err(format!("names project {:?}, filed under {project:?}", self.project()));
        }
        validate_name(self.project()).map_err(|e| e.to_string())?;
        if let Some(s) = self.session() {
            validate_name(s).map_err(|e| e.to_string())?;
        }
        if let Intent::Setup { at: Some(at), .. } = self {
            if !at.is_absolute()
                || at.components().skip(1).any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(format!("session path {} is not absolute and plain", at.display()));
            }
        }
        let (generation, name) = match self {
            Intent::Import { generation, staging, .. }
            | Intent::ImportNext { generation, staging, .. }
            | Intent::Setup { generation, staging, .. }
            | Intent::Promote { generation, staging, .. } => (*generation, staging),
            Intent::Cleanup { trash, .. } => (1, trash),
            Intent::Delete { generation, trash, .. } => (*generation, trash),
        };
        if generation == 0 {
            return Err("names generation 0".into());
        }
        if !is_own_name(name) {
            return Err(format!("names {name:?}, not a name goldclone makes"));
        }
        if let Intent::ImportNext { previous, .. } = self {
            if *previous == 0 || *previous >= generation {
                return Err(format!("imports generation {generation} after {previous}"));
            }
        }
        if let Intent::Promote { drop, .. } = self {
            for d in drop {
                super::edit::check_drop_path(d)?;
            }
        }
        Ok(())
    }
}

/// Prefix of every staging and trash name the lifecycle makes.
pub(crate) const OWN_PREFIX: &str = ".goldclone-";

/// Whether `name` is the trash name of a lazy cleanup (`own_name("detached", ..)`): a tree
/// that may still be in use, removed only once nothing holds it.
pub(crate) fn is_detached_name(name: &str) -> bool {
    is_own_name(name) && name.starts_with(&format!("{OWN_PREFIX}detached."))
}

/// `.goldclone-<op>.<id>.<nonce>`: one path component of safe characters.
pub(crate) fn is_own_name(name: &str) -> bool {
    name.len() <= 255
        && name.starts_with(OWN_PREFIX)
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !name.contains("..")
}

/// A name nobody else has: `.goldclone-<op>.<id>.<pid><time><counter>`.
pub(crate) fn own_name(op: &str, id: &str) -> String {
    format!("{OWN_PREFIX}{op}.{id}.{}", nonce())
}

/// Unique in this boot and host (see [`crate::sys::unique_suffix`]).
pub(crate) fn nonce() -> String {
    crate::sys::unique_suffix()
}

/// 16 random hex digits from the kernel.
fn random_id() -> Result<String> {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::io("getrandom", "/dev/urandom", e)),
        }
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Paths of one cache, relative to its root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout;

impl Layout {
    pub fn state() -> PathBuf {
        PathBuf::from(".goldclone")
    }
    fn cache_meta() -> PathBuf {
        Self::state().join("cache.json")
    }
    pub fn projects() -> PathBuf {
        Self::state().join("projects")
    }
    pub fn project_state(project: &str) -> PathBuf {
        Self::projects().join(project)
    }
    fn lock_file(project: &str) -> PathBuf {
        Self::project_state(project).join("lock")
    }
    fn gate_file(project: &str) -> PathBuf {
        Self::project_state(project).join("gate")
    }
    pub fn current(project: &str) -> PathBuf {
        Self::project_state(project).join("current")
    }
    pub fn generation_records(project: &str) -> PathBuf {
        Self::project_state(project).join("gen")
    }
    pub fn generation_meta(project: &str, generation: u64) -> PathBuf {
        Self::generation_records(project).join(format!("{generation}.json"))
    }
    pub fn session_records(project: &str) -> PathBuf {
        Self::project_state(project).join("sessions")
    }
    pub fn session_meta(project: &str, session: &str) -> PathBuf {
        Self::session_records(project).join(format!("{session}.json"))
    }
    /// Records of sessions cleaned up lazily, waiting for their last user.
    pub fn detached_records(project: &str) -> PathBuf {
        Self::project_state(project).join("detached")
    }
    /// The record of the session cleaned up lazily into trash name `trash`.
    pub fn detached_record(project: &str, trash: &OsStr) -> PathBuf {
        let mut name = trash.to_os_string();
        name.push(".json");
        Self::detached_records(project).join(name)
    }
    /// The current generation's size, where it takes a walk to know (see `SizeCache`).
    pub fn size_cache(project: &str) -> PathBuf {
        Self::project_state(project).join("size.json")
    }
    /// Manifests of sent generations, by number (`stream::manifest`).
    pub fn manifests(project: &str) -> PathBuf {
        Self::project_state(project).join("manifests")
    }
    pub fn manifest(project: &str, generation: u64) -> PathBuf {
        Self::manifests(project).join(generation.to_string())
    }
    pub fn journal(project: &str) -> PathBuf {
        Self::project_state(project).join("journal")
    }
    /// Records of removals still owed (a backend's trees outside the root that stayed busy).
    pub fn owed(project: &str) -> PathBuf {
        Self::project_state(project).join("trash")
    }
    /// Trees on their way out.
    pub fn trash(project: &str) -> PathBuf {
        Self::state().join("trash").join(project)
    }
    pub fn project(project: &str) -> PathBuf {
        PathBuf::from(project)
    }
    pub fn generations(project: &str) -> PathBuf {
        Self::project(project).join("gen")
    }
    pub fn generation(project: &str, generation: u64) -> PathBuf {
        Self::generations(project).join(generation.to_string())
    }
    pub fn sessions(project: &str) -> PathBuf {
        Self::project(project).join("sessions")
    }
    pub fn session(project: &str, session: &str) -> PathBuf {
        Self::sessions(project).join(session)
    }
}

/// The state directory's version check and this cache's id, created on first use with
/// `backend`; a cache made with another backend is refused (its records name trees another
/// backend cannot judge).
pub(crate) fn open_state(root: &RootDir, backend: BackendKind) -> Result<String> {
    root.mkdir(&Layout::state())?;
    root.mkdir(&Layout::projects())?;
    root.mkdir(&Layout::state().join("trash"))?;
    let path = Layout::cache_meta();
    if root.read(&path)?.is_none() {
        let fresh = CacheMeta { layout: LAYOUT_VERSION, id: random_id()?, backend };
        match root.create_new(&path, &to_json(root, &path, &fresh)?) {
            Ok(()) | Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let meta: CacheMeta = read_json(root, &path)?
        .ok_or_else(|| Error::Damaged { path: root.join(&path), what: "vanished".into() })?;
    if meta.layout != LAYOUT_VERSION {
        return Err(Error::Unsupported {
            what: format!(
                "{} has layout {}; this goldclone reads layout {LAYOUT_VERSION}",
                root.join(&path).display(),
                meta.layout
            ),
        });
    }
    if meta.id.len() != 16 || !meta.id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Damaged { path: root.join(&path), what: "bad cache id".into() });
    }
    if meta.backend != backend {
        return Err(Error::Unsupported {
            what: format!(
                "the cache at {} was made with the {} backend, not {}",
                root.path().display(),
                meta.backend.name(),
                backend.name()
            ),
        });
    }
    Ok(meta.id)
}

fn to_json<T: Serialize>(root: &RootDir, path: &Path, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(|e| Error::Damaged {
        path: root.join(path),
        what: format!("cannot serialize: {e}"),
    })
}

/// Write a record atomically and durably.
pub(crate) fn write_json<T: Serialize>(root: &RootDir, path: &Path, value: &T) -> Result<()> {
    root.write_atomic(path, &to_json(root, path, value)?)
}

/// Read a record; `None` if it does not exist, Damaged if it does not parse.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(
    root: &RootDir,
    path: &Path,
) -> Result<Option<T>> {
    match root.read(path)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Damaged {
            path: root.join(path),
            what: format!("corrupt record: {e}"),
        }),
    }
}

/// The current generation: `None` if the project has none (yet), Damaged if `current` is not a
/// generation number.
pub(crate) fn read_current(root: &RootDir, project: &str) -> Result<Option<u64>> {
    let path = Layout::current(project);
    match root.read(&path)? {
        None => Ok(None),
        Some(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&g| g > 0)
            .map(Some)
            .ok_or_else(|| Error::Damaged {
                path: root.join(&path),
                what: "is not a generation number".into(),
            }),
    }
}

pub(crate) fn write_current(root: &RootDir, project: &str, generation: u64) -> Result<()> {
    root.write_atomic(&Layout::current(project), format!("{generation}\n").as_bytes())
}

/// A generation's record, checked against where it is filed.
pub(crate) fn read_generation(
    root: &RootDir,
    project: &str,
    generation: u64,
) -> Result<Option<GenerationMeta>> {
    let path = Layout::generation_meta(project, generation);
    let meta: Option<GenerationMeta> = read_json(root, &path)?;
    match meta {
        Some(m) if m.project != project || m.generation != generation => Err(Error::Damaged {
            path: root.join(&path),
            what: format!("describes generation {} of {:?}", m.generation, m.project),
        }),
        other => Ok(other),
    }
}

/// A session's record, checked against where it is filed.
pub(crate) fn read_session(
    root: &RootDir,
    project: &str,
    session: &str,
) -> Result<Option<SessionMeta>> {
    let path = Layout::session_meta(project, session);
    let meta: Option<SessionMeta> = read_json(root, &path)?;
    match meta {
        Some(m) if m.project != project || m.session != session => Err(Error::Damaged {
            path: root.join(&path),
            what: format!("describes session {:?} of {:?}", m.session, m.project),
        }),
        other => Ok(other),
    }
}

/// Projects this cache made, and names under `projects/` that are not valid ids (damaged).
pub(crate) fn projects(root: &RootDir) -> Result<(Vec<String>, Vec<String>)> {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for name in root.list(&Layout::projects())? {
        match name.to_str().filter(|n| validate_name(n).is_ok()) {
            Some(n) => good.push(n.to_string()),
            None => bad.push(name.to_string_lossy().into_owned()),
        }
    }
    Ok((good, bad))
}

/// Ids filed in a records directory as `<id>.json`, and the other names there (temporary
/// files of dead writers, or foreign files).
pub(crate) fn record_names(root: &RootDir, dir: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let (mut ids, mut other) = (Vec::new(), Vec::new());
    for name in root.list(dir)? {
        let s = name.to_string_lossy();
        match s.strip_suffix(".json") {
            Some(id) if !is_temp_name(&name) => ids.push(id.to_string()),
            _ => other.push(s.into_owned()),
        }
    }
    Ok((ids, other))
}

/// Generation numbers with a record.
pub(crate) fn generation_numbers(root: &RootDir, project: &str) -> Result<Vec<u64>> {
    let (ids, _) = record_names(root, &Layout::generation_records(project))?;
    let mut out: Vec<u64> = ids.iter().filter_map(|n| n.parse().ok()).filter(|&g| g > 0).collect();
    out.sort_unstable();
    Ok(out)
}

/// Session ids with a record.
pub(crate) fn session_names(root: &RootDir, project: &str) -> Result<Vec<String>> {
    let (ids, _) = record_names(root, &Layout::session_records(project))?;
    Ok(ids.into_iter().filter(|n| validate_name(n).is_ok()).collect())
}

/// Remove temporary files left by writers that died in the project's record directories. Only
/// under the project's exclusive lock: then nobody is writing there.
pub(crate) fn remove_record_temps(root: &RootDir, project: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for dir in [
        Layout::project_state(project),
        Layout::generation_records(project),
        Layout::session_records(project),
        Layout::journal(project),
        Layout::owed(project),
        Layout::detached_records(project),
    ] {
        for name in root.list(&dir)? {
            if is_temp_name(&name) {
                root.remove_file(&dir.join(&name))?;
                removed.push(root.join(&dir.join(&name)).display().to_string());
            }
        }
    }
    Ok(removed)
}

// ---- the journal ----

/// A recorded intent, its file locked by this process: while the lock is held the operation
/// is alive; a dead owner's lock goes with its process, so recovery can tell the two apart.
#[derive(Debug)]
pub(crate) struct IntentRecord {
    path: PathBuf,
    _lock: OwnedFd,
}

impl IntentRecord {
    /// The operation is over (done or undone): remove the record. An error here comes after the
    /// operation's outcome; the caller decides whether it matters (see `Cache::run`).
    pub fn clear(self, root: &RootDir) -> Result<()> {
        root.remove_file(&self.path)
    }
}

/// A recorded intent of a dead operation, locked by us for as long as we resolve it.
#[derive(Debug)]
pub(crate) struct DeadIntent {
    pub intent: Intent,
    record: IntentRecord,
}

impl DeadIntent {
    pub fn clear(self, root: &RootDir) -> Result<()> {
        self.record.clear(root)
    }
}

/// One journal entry as found: dead (ours to resolve), alive (another operation's), gone
/// (finished while we looked), or damaged.
#[derive(Debug)]
pub(crate) enum Found {
    Dead(DeadIntent),
    Alive,
    Gone,
    Damaged(Error),
}

fn flock_try(fd: impl AsFd, exclusive: bool) -> std::io::Result<bool> {
    let op = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    match rustix::fs::flock(fd, op) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn flock_wait(fd: impl AsFd, exclusive: bool) -> std::io::Result<()> {
    let op = if exclusive { FlockOperation::LockExclusive } else { FlockOperation::LockShared };
    loop {
        match rustix::fs::flock(&fd, op) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// A generation being read (sent): a shared `flock` on its record, which a reclaim or a
/// delete must take exclusively first ([`claim_generation`]), so a held generation stays. The
/// kernel drops it with the process, so a killed send holds nothing.
#[derive(Debug)]
pub(crate) struct GenerationHold(#[allow(dead_code)] OwnedFd);

/// Hold generation `generation` of `project`; `None` if it has no record (any more).
pub(crate) fn hold_generation(
    root: &RootDir,
    project: &str,
    generation: u64,
) -> Result<Option<GenerationHold>> {
    let path = Layout::generation_meta(project, generation);
    let Some(fd) = open_rw(root, &path, false)? else { return Ok(None) };
    // Waits out a reclaim that has it; that one removes the record, seen below.
    crate::sys::fs::lock(fd.as_fd(), false).at_with("flock", || root.join(&path))?;
    if !still_at(root, &path, &fd)? {
        return Ok(None);
    }
    Ok(Some(GenerationHold(fd)))
}

/// Take generation `generation` of `project` from every holder, for removing it: `None` if a
/// send holds it (or it has no record). Kept until the record is removed.
pub(crate) fn claim_generation(
    root: &RootDir,
    project: &str,
    generation: u64,
) -> Result<Option<OwnedFd>> {
    let path = Layout::generation_meta(project, generation);
    let Some(fd) = open_rw(root, &path, false)? else { return Ok(None) };
    if !crate::sys::fs::try_lock_exclusive(fd.as_fd()).at_with("flock", || root.join(&path))? {
        return Ok(None);
    }
    Ok(Some(fd))
}

/// Whether the open file `fd` is still the one at `rel` (not unlinked or replaced since it was
/// opened): after waiting for a lock, the file may have been removed by its previous holder.
fn still_at(root: &RootDir, rel: &Path, fd: &OwnedFd) -> Result<bool> {
    let st = rustix::fs::fstat(fd).at_with("stat", || root.join(rel))?;
    Ok(root.entry(rel)?.is_some_and(|e| e.dev == st.st_dev && e.ino == st.st_ino))
}

fn open_rw(root: &RootDir, rel: &Path, create: bool) -> Result<Option<OwnedFd>> {
    let (parent, name) = match root.parent(rel) {
        Ok(p) => p,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if create {
        flags |= OFlags::CREATE;
    }
    match rustix::fs::openat(&parent, name, flags, Mode::from_raw_mode(0o644)) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(Error::io("open", root.join(rel), e)),
    }
}

/// Record `intent` durably, its file locked from the moment it has its name. Busy if an intent
/// for the same session or generation is recorded (an operation in flight, or a dead one not
/// resolved yet: [`find_intent`] tells which).
pub(crate) fn record_intent(root: &RootDir, intent: &Intent) -> Result<IntentRecord> {
    let dir = Layout::journal(intent.project());
    root.mkdir(&dir)?;
    let path = dir.join(intent.file_name());
    let bytes = to_json(root, &path, intent)?;
    let (parent, _) = root.parent(&path)?;
    let tmp = format!(".{}.tmp.{}", intent.file_name(), nonce());
    let tmp_path = root.join(&dir.join(&tmp));
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&parent, tmp.as_str(), flags, Mode::from_raw_mode(0o644))
        .at("create", &tmp_path)?;
    let written = (|| {
        flock_wait(&fd, true).at("flock", &tmp_path)?;
        let mut f = File::from(fd.try_clone().at("dup", &tmp_path)?);
        f.write_all(&bytes).at("write", &tmp_path)?;
        f.sync_all().at("fsync", &tmp_path)?;
        // link(2) is the atomic "create if absent" for a file with content.
        rustix::fs::linkat(
            &parent,
            tmp.as_str(),
            &parent,
            intent.file_name().as_str(),
            AtFlags::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::EXIST => {
                Error::from_errno("record intent", root.join(&path), libc::EBUSY)
            }
            e => Error::io("link", root.join(&path), e),
        })?;
        rustix::fs::fsync(&parent).at_with("fsync", || root.join(&dir))
    })();
    let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
    written?;
    Ok(IntentRecord { path, _lock: fd })
}

/// The journal entry `name` of `project`.
fn open_intent(root: &RootDir, project: &str, name: &OsStr) -> Found {
    let path = Layout::journal(project).join(name);
    let fd = match open_rw(root, &path, false) {
        Ok(Some(fd)) => fd,
        Ok(None) => return Found::Gone,
        Err(e) => return Found::Damaged(e),
    };
    let intent = match read_json::<Intent>(root, &path) {
        Ok(Some(i)) => i,
        Ok(None) => return Found::Gone,
        Err(e) => return Found::Damaged(e),
    };
    if let Err(what) = intent.validate(project) {
        return Found::Damaged(Error::Damaged { path: root.join(&path), what });
    }
    match flock_try(&fd, true) {
        Ok(true) => match still_at(root, &path, &fd) {
            Ok(true) => {
                Found::Dead(DeadIntent { intent, record: IntentRecord { path, _lock: fd } })
            }
            // Resolved and removed by someone else between our open and our lock.
            Ok(false) => Found::Gone,
            Err(e) => Found::Damaged(e),
        },
        Ok(false) => Found::Alive,
        Err(e) => Found::Damaged(Error::io("flock", root.join(&path), e)),
    }
}

/// Every journal entry of `project` (temporary files of intents being recorded are skipped).
pub(crate) fn intents(root: &RootDir, project: &str) -> Result<Vec<Found>> {
    let mut found = root
        .list(&Layout::journal(project))?
        .into_iter()
        .filter(|n| !is_temp_name(n))
        .map(|n| open_intent(root, project, &n))
        .filter(|f| !matches!(f, Found::Gone))
        .collect::<Vec<_>>();
    // Sessions' intents first: resolving a promote that consumed its session may clean that
    // session up, which needs the session's own dead intent resolved (and its lock let go).
    found.sort_by_key(|f| matches!(f, Found::Dead(d) if d.intent.is_exclusive()));
    Ok(found)
}

/// The journal entry `intent` would be filed under, if one exists.
pub(crate) fn find_intent(root: &RootDir, intent: &Intent) -> Option<Found> {
    let name = intent.file_name();
    let path = Layout::journal(intent.project()).join(&name);
    match root.entry(&path) {
        Ok(Some(_)) => Some(open_intent(root, intent.project(), OsStr::new(&name))),
        Ok(None) => None,
        Err(e) => Some(Found::Damaged(e)),
    }
}

// ---- locks ----

/// How long to wait for a project lock.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// As long as it takes.
    Forever,
    /// Not at all: `None` if it is held.
    No,
    /// Up to this long: `None` after that.
    Up(Duration),
}

/// A held per-project lock; released on drop.
///
/// Two flocks make it writer-preferring: a shared locker takes `gate` shared, then `lock`
/// shared, and lets go of `gate`; an exclusive locker takes `gate` exclusively and keeps it
/// while it waits for and holds `lock`. New shared lockers then queue on `gate`, so a stream of
/// setups cannot starve a promote or gc, while setups still run side by side.
#[derive(Debug)]
pub(crate) struct ProjectLock {
    lock: OwnedFd,
    _gate: Option<OwnedFd>,
    pub exclusive: bool,
    project: String,
}

/// Take `fd`'s flock within `wait`.
fn take(fd: &OwnedFd, exclusive: bool, wait: Wait) -> std::io::Result<bool> {
    match wait {
        Wait::Forever => flock_wait(fd, exclusive).map(|()| true),
        Wait::No => flock_try(fd, exclusive),
        Wait::Up(limit) => {
            let deadline = Instant::now() + limit;
            loop {
                if flock_try(fd, exclusive)? {
                    return Ok(true);
                }
                if Instant::now() >= deadline {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// How a project is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Setup, cleanup, info: many at once.
    Shared,
    /// Import, promote, gc, recovery: alone.
    Exclusive,
}

/// What locking a project without lock files does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    /// UnknownProject.
    Refuse,
    /// Make them (an import, or recovery of an import killed before it had both).
    Create,
}

/// Lock `project` for `access`. Works across processes and between threads (each call opens its
/// own file description). Without a state directory: UnknownProject, or with
/// [`Missing::Create`] the lock files are made. `Ok(None)` when `wait` ran out.
pub(crate) fn lock_project(
    root: &RootDir,
    project: &str,
    access: Access,
    missing: Missing,
    wait: Wait,
) -> Result<Option<ProjectLock>> {
    let exclusive = access == Access::Exclusive;
    let create = missing == Missing::Create;
    let unknown = || Error::UnknownProject { project: project.to_string() };
    loop {
        if create {
            root.mkdir(&Layout::project_state(project))?;
        }
        let gate_path = Layout::gate_file(project);
        let lock_path = Layout::lock_file(project);
        // With `create`, a state directory removed meanwhile (a rolled-back import) is made
        // again: go round.
        let Some(gate) = open_rw(root, &gate_path, create)? else {
            if create {
                continue;
            }
            return Err(unknown());
        };
        if !take(&gate, exclusive, wait).at_with("flock", || root.join(&gate_path))? {
            return Ok(None);
        }
        let Some(lock) = open_rw(root, &lock_path, create)? else {
            if create {
                continue;
            }
            return Err(unknown());
        };
        if !take(&lock, exclusive, wait).at_with("flock", || root.join(&lock_path))? {
            return Ok(None);
        }
        // The previous holder may have removed the project (a rolled-back import) while we
        // waited: then these are unlinked files, and the lock means nothing.
        if !still_at(root, &lock_path, &lock)? || !still_at(root, &gate_path, &gate)? {
            if create {
                continue;
            }
            return Err(unknown());
        }
        return Ok(Some(ProjectLock {
            lock,
            _gate: exclusive.then_some(gate),
            exclusive,
            project: project.to_string(),
        }));
    }
}

impl ProjectLock {
    /// Whether this lock is still the project's: its file has not been removed (and maybe made
    /// again by an import) since it was taken. Only then may its holder remove the project.
    pub fn is_current(&self, root: &RootDir) -> Result<bool> {
        still_at(root, &Layout::lock_file(&self.project), &self.lock)
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_names_are_single_safe_components() {
        let n = own_name("setup", "s1");
        assert!(is_own_name(&n), "{n}");
        for bad in ["../outside", ".goldclone-x/../../etc", "x", ".goldclone-a b", ".goldclone-.."]
        {
            assert!(!is_own_name(bad), "{bad}");
        }
    }

    #[test]
    fn hostile_intents_are_refused() {
        let ok = Intent::Setup {
            project: "p".into(),
            session: "s".into(),
            generation: 1,
            staging: own_name("setup", "s"),
            at: Some("/srv/sessions/s".into()),
        };
        assert!(ok.validate("p").is_ok());
        assert!(ok.validate("q").is_err(), "filed under another project");
        for at in ["relative/s", "/srv/../etc"] {
            let bad = Intent::Setup {
                project: "p".into(),
                session: "s".into(),
                generation: 1,
                staging: own_name("setup", "s"),
                at: Some(at.into()),
            };
            assert!(bad.validate("p").is_err(), "{at}");
        }
        let outside = Intent::Import {
            project: "../outside".into(),
            generation: 1,
            staging: own_name("import", "x"),
        };
        assert!(outside.validate("../outside").is_err());
        for previous in [0, 1, 2, 3, 4] {
            let after = Intent::ImportNext {
                project: "p".into(),
                generation: 3,
                previous,
                staging: own_name("import", "3"),
                origin: None,
            };
            assert_eq!(after.validate("p").is_ok(), (1..3).contains(&previous), "{previous}");
        }
        let staging =
            Intent::Cleanup { project: "p".into(), session: "s".into(), trash: "../../etc".into() };
        assert!(staging.validate("p").is_err());
        let zero = Intent::Promote {
            project: "p".into(),
            session: "s".into(),
            generation: 0,
            staging: own_name("promote", "s"),
            consume: false,
            drop: Vec::new(),
            edits_session: false,
            session_identity: None,
        };
        assert!(zero.validate("p").is_err());
        let escape = Intent::Promote {
            project: "p".into(),
            session: "s".into(),
            generation: 2,
            staging: own_name("promote", "2"),
            consume: true,
            drop: vec!["containers".into(), "../../etc".into()],
            edits_session: false,
            session_identity: None,
        };
        assert!(escape.validate("p").is_err(), "a drop path outside the tree");
        // Intents recorded before promotes had options still read.
        let old: Intent = serde_json::from_str(
            r#"{"op":"promote","project":"p","session":"s","generation":2,"staging":".goldclone-promote.2.x"}"#,
        )
        .unwrap();
        assert!(matches!(old, Intent::Promote { consume: false, ref drop, .. } if drop.is_empty()));
    }

    #[test]
    fn ids_and_metadata_never_share_a_name() {
        // "b.json" is a valid session id; its record is "b.json.json", in another directory
        // than any tree.
        assert!(validate_name("b.json").is_ok());
        assert_eq!(
            Layout::session_meta("p", "b.json"),
            Path::new(".goldclone/projects/p/sessions/b.json.json")
        );
        assert_eq!(Layout::session("p", "b.json"), Path::new("p/sessions/b.json"));
    }
}
