//! On-disk state of a cache: where things live, metadata files written by rename, the intent
//! journal, per-project locks, and name validation.
//!
//! ```text
//! ROOT/.goldclone/locks/<project>.lock        flock: shared for setup/cleanup, exclusive otherwise
//! ROOT/.goldclone/journal/<project>/<id>.json intents of operations in flight
//! ROOT/.goldclone/trash/                       trees on their way out (removed after the rename)
//! ROOT/<project>/current                       the current generation number
//! ROOT/<project>/gen/<n>  + gen/<n>.json       generation n's tree and its metadata
//! ROOT/<project>/sessions/<s> + <s>.json       session s's tree and its metadata
//! ```
//! A metadata file is the commit record of what it describes: a tree without one is a leftover.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::BackendKind;
use crate::{sys, Error, Result};

/// Longest project or session id, in bytes. Leaves room for both inside a 255-byte ZFS dataset
/// name under a pool and a cache dataset.
pub const MAX_ID_LEN: usize = 64;

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

/// Metadata of one generation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GenerationMeta {
    pub project: String,
    pub generation: u64,
    pub created_at: u64,
    pub source_session: Option<String>,
    pub backend: BackendKind,
}

/// Metadata of one session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionMeta {
    pub project: String,
    pub session: String,
    pub generation: u64,
    pub created_at: u64,
}

/// What an operation in flight is about to do: enough to finish or undo it after a crash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Intent {
    Import { project: String, generation: u64 },
    Setup { project: String, session: String, generation: u64 },
    Promote { project: String, session: String, generation: u64 },
    Cleanup { project: String, session: String },
}

impl Intent {
    pub fn project(&self) -> &str {
        match self {
            Intent::Import { project, .. }
            | Intent::Setup { project, .. }
            | Intent::Promote { project, .. }
            | Intent::Cleanup { project, .. } => project,
        }
    }

    /// One file per session (setup and cleanup of one session exclude each other) and per new
    /// generation (import and promote hold the exclusive lock anyway).
    fn file_name(&self) -> String {
        match self {
            Intent::Import { generation, .. } | Intent::Promote { generation, .. } => {
                format!("generation-{generation}.json")
            }
            Intent::Setup { session, .. } | Intent::Cleanup { session, .. } => {
                format!("session-{session}.json")
            }
        }
    }
}

/// Paths of one cache.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn state(&self) -> PathBuf {
        self.root.join(".goldclone")
    }
    pub fn lock_file(&self, project: &str) -> PathBuf {
        self.state().join("locks").join(format!("{project}.lock"))
    }
    pub fn journal(&self, project: &str) -> PathBuf {
        self.state().join("journal").join(project)
    }
    pub fn trash(&self) -> PathBuf {
        self.state().join("trash")
    }
    pub fn project(&self, project: &str) -> PathBuf {
        self.root.join(project)
    }
    pub fn current(&self, project: &str) -> PathBuf {
        self.project(project).join("current")
    }
    pub fn generations(&self, project: &str) -> PathBuf {
        self.project(project).join("gen")
    }
    pub fn generation(&self, project: &str, generation: u64) -> PathBuf {
        self.generations(project).join(generation.to_string())
    }
    pub fn generation_meta(&self, project: &str, generation: u64) -> PathBuf {
        self.generations(project).join(format!("{generation}.json"))
    }
    pub fn sessions(&self, project: &str) -> PathBuf {
        self.project(project).join("sessions")
    }
    pub fn session(&self, project: &str, session: &str) -> PathBuf {
        self.sessions(project).join(session)
    }
    pub fn session_meta(&self, project: &str, session: &str) -> PathBuf {
        self.sessions(project).join(format!("{session}.json"))
    }

    /// Create the state directories.
    pub fn create(&self) -> Result<()> {
        for dir in [self.state().join("locks"), self.state().join("journal"), self.trash()] {
            fs::create_dir_all(&dir).map_err(|e| Error::io("mkdir", &dir, e))?;
        }
        Ok(())
    }

    /// Projects that have a directory under the root.
    pub fn projects(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(|e| Error::io("readdir", &self.root, e))? {
            let entry = entry.map_err(|e| Error::io("readdir", &self.root, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_name(&name).is_ok() && entry.path().is_dir() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Projects with intents in the journal.
    pub fn journaled_projects(&self) -> Result<Vec<String>> {
        let dir = self.state().join("journal");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("readdir", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("readdir", &dir, e))?;
            if let Some(name) = entry.file_name().to_str() {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }

    /// The current generation, if the project exists.
    pub fn read_current(&self, project: &str) -> Result<Option<u64>> {
        let path = self.current(project);
        match fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map(Some).map_err(|_| {
                Error::io(
                    "parse",
                    &path,
                    io::Error::new(io::ErrorKind::InvalidData, "not a generation number"),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path, e)),
        }
    }

    /// Generation numbers with a tree or a metadata file.
    pub fn generation_numbers(&self, project: &str) -> Result<Vec<u64>> {
        let mut out: Vec<u64> = list_names(&self.generations(project))?
            .iter()
            .filter_map(|n| n.strip_suffix(".json").unwrap_or(n).parse().ok())
            .collect();
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Session ids with a tree or a metadata file.
    pub fn session_names(&self, project: &str) -> Result<Vec<String>> {
        let mut out: Vec<String> = list_names(&self.sessions(project))?
            .into_iter()
            .map(|n| n.strip_suffix(".json").map(str::to_string).unwrap_or(n))
            .filter(|n| validate_name(n).is_ok())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Names in a directory (none if it does not exist).
pub fn list_names(dir: &Path) -> Result<Vec<String>> {
    let read = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("readdir", dir, e)),
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| Error::io("readdir", dir, e))?;
        if let Some(n) = entry.file_name().to_str() {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

/// Write `bytes` to `path` atomically and durably: a temporary file beside it, fsync, rename,
/// fsync of the directory. Readers see the old content or the new, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = write_temp(path, bytes)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("rename", path, e));
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// A new temporary file beside `path` holding `bytes`, synced. Its name is unique per call (pid
/// and a counter): threads of one process may write beside the same path at once.
fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or(OsStr::new("file")).to_string_lossy();
    let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{n}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))
    })();
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// fsync a directory, so renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("fsync", dir, e))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::io("serialize", path, io::Error::new(io::ErrorKind::InvalidData, e)))?;
    write_atomic(path, &bytes)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::io("parse", path, io::Error::new(io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Remove a file if it exists, durably.
pub fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("unlink", path, e)),
    }
}

/// The journal: one file per operation in flight.
impl Layout {
    /// Record an intent, durably, failing with EBUSY if one for the same session or generation
    /// is already recorded (an operation in flight, or a dead one that recovery has not seen).
    pub fn record(&self, intent: &Intent) -> Result<PathBuf> {
        let dir = self.journal(intent.project());
        fs::create_dir_all(&dir).map_err(|e| Error::io("mkdir", &dir, e))?;
        let path = dir.join(intent.file_name());
        let bytes = serde_json::to_vec_pretty(intent).map_err(|e| {
            Error::io("serialize", &path, io::Error::new(io::ErrorKind::InvalidData, e))
        })?;
        let tmp = write_temp(&path, &bytes)?;
        // link(2) is the atomic "create if absent" for a file with content.
        let linked = fs::hard_link(&tmp, &path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::io("record intent", &path, io::Error::from_raw_os_error(libc::EBUSY))
            } else {
                Error::io("link", &path, e)
            }
        });
        let _ = fs::remove_file(&tmp);
        linked?;
        sync_dir(&dir)?;
        Ok(path)
    }

    /// The recorded intents of `project`. Reads only: temporary files of intents being recorded
    /// are skipped (see [`Layout::remove_journal_temps`]).
    pub fn intents(&self, project: &str) -> Result<Vec<(PathBuf, Intent)>> {
        let dir = self.journal(project);
        let mut out = Vec::new();
        for name in list_names(&dir)? {
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            let path = dir.join(&name);
            if let Some(intent) = read_json::<Intent>(&path)? {
                out.push((path, intent));
            }
        }
        Ok(out)
    }

    /// Remove temporary files left in the journal by writers that died while recording. Only
    /// under the project's exclusive lock: then nobody is recording.
    pub fn remove_journal_temps(&self, project: &str) -> Result<()> {
        let dir = self.journal(project);
        for name in list_names(&dir)? {
            if name.starts_with('.') {
                remove_file(&dir.join(&name))?;
            }
        }
        Ok(())
    }
}
/// A held per-project lock; released on drop.
pub struct ProjectLock {
    _file: File,
}

impl Layout {
    /// Lock `project`: shared (setup, cleanup, info) or exclusive (import, promote, gc,
    /// recovery). Works across processes (flock), and between threads of one process since each
    /// call opens its own file description. Only `create` makes a lock file for a project that
    /// has none (import, recovery): bad input must not leave one behind.
    pub fn lock(&self, project: &str, exclusive: bool, create: bool) -> Result<ProjectLock> {
        let path = self.lock_file(project);
        if !create && !path.exists() {
            return Err(Error::UnknownProject { project: project.to_string() });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        sys::fs::lock(file.as_fd(), exclusive).map_err(|e| Error::io("flock", &path, e))?;
        Ok(ProjectLock { _file: file })
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
