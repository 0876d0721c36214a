//! One error type for the whole crate.
//!
//! Every failure keeps what an operator needs to act on it: the operation, the path (or dataset
//! name) it failed on, and the errno where the kernel gave one. [`Error::kind`] folds the variants
//! into a small stable set that the C ABI and the Go bindings turn into fixed result codes.

use std::io;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in goldclone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed on a path.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// The operation that failed, e.g. `"open"`, `"copy_file_range"`.
        op: &'static str,
        /// The path it failed on.
        path: PathBuf,
        /// The kernel's answer; `raw_os_error()` is the errno.
        #[source]
        source: io::Error,
    },
    /// Reading or writing one extended attribute failed.
    #[error("{op} {attr:?} on {}: {source}", path.display())]
    Xattr {
        /// `"getxattr"`, `"setxattr"`, ...
        op: &'static str,
        /// The attribute's name.
        attr: String,
        /// The file it belongs to.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// An in-kernel copy (FICLONE, copy_file_range) between two files failed; the errno does not
    /// say which side.
    #[error("{op} {} -> {}: {source}", src.display(), dst.display())]
    Transfer {
        /// The call, e.g. `"copy_file_range"`.
        op: &'static str,
        /// The file read from.
        src: PathBuf,
        /// The file written to.
        dst: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// On-disk state is not what goldclone recorded: corrupt or lying metadata, a journal entry
    /// with a hostile name, a tree replaced by something else. Nothing was changed.
    #[error("{}: {what}", path.display())]
    Damaged {
        /// The file or tree in question.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A removal reached a mount point and stopped there: nothing on the other side was touched.
    #[error("{} is a mount point; not removing across it", path.display())]
    MountPoint {
        /// The mount point.
        path: PathBuf,
    },
    /// The operation took effect in part and cannot be undone; the next `Cache::open` or
    /// `Cache::gc` finishes it.
    #[error("{what} (the next open or gc finishes it): {source}")]
    Incomplete {
        /// What took effect.
        what: String,
        /// Why the rest failed.
        #[source]
        source: Box<Error>,
    },
    /// A file the library reads (a mount table, a tool's output) could not be parsed.
    #[error("parse {}: {what}", path.display())]
    Parse {
        /// The file (or the tool) it came from.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A path that must be a directory is something else.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The offending path.
        path: PathBuf,
    },
    /// A path that must not exist yet already exists.
    #[error("{} already exists", path.display())]
    AlreadyExists {
        /// The offending path.
        path: PathBuf,
    },
    /// The copy destination lies inside the source tree.
    #[error("destination {} is inside source {}", dst.display(), src.display())]
    DestinationInsideSource {
        /// Source tree.
        src: PathBuf,
        /// Destination path.
        dst: PathBuf,
    },
    /// A caller-supplied argument is unusable (an option out of range, a path with no final
    /// component).
    #[error("invalid argument: {what}")]
    InvalidArgument {
        /// What is wrong with it.
        what: String,
    },
    /// A name (dataset, snapshot, project, session) was rejected before any call was made.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A name is longer than its namespace allows.
    #[error("name {name:?} is too long ({len} > {max} bytes)")]
    NameTooLong {
        /// The rejected name.
        name: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No golden tree exists for this project.
    #[error("unknown project {project:?}")]
    UnknownProject {
        /// The project id.
        project: String,
    },
    /// No such session in this project.
    #[error("unknown session {session:?} of project {project:?}")]
    UnknownSession {
        /// The project id.
        project: String,
        /// The session id.
        session: String,
    },
    /// The session is in use: a process (in any mount namespace) has its working directory,
    /// root, executable or an open or mapped file inside it, or a mount shows it or sits inside
    /// it.
    #[error("session {session:?} of project {project:?} is in use: {}", holders.join("; "))]
    SessionBusy {
        /// The project id.
        project: String,
        /// The session id.
        session: String,
        /// Processes holding it (for a mount, a process of its namespace).
        pids: Vec<u32>,
        /// Every holder, described.
        holders: Vec<String>,
    },
    /// A generation cannot be removed now: a send is reading it.
    #[error("generation {generation} of project {project:?} is in use: {what}")]
    GenerationBusy {
        /// The project id.
        project: String,
        /// The generation.
        generation: u64,
        /// What uses it.
        what: String,
    },
    /// The project has no such generation (never had, or it has been retired and removed).
    #[error("project {project:?} has no generation {generation}")]
    UnknownGeneration {
        /// The project id.
        project: String,
        /// The generation asked for.
        generation: u64,
    },
    /// An increment cannot be made or taken: the sender has no manifest of the base generation,
    /// or the receiver's current generation is not the stream's base. Nothing was changed.
    #[error("project {project:?}: no increment from {base}: {what}")]
    NoBase {
        /// The project id.
        project: String,
        /// The base generation (a number on the sender, an id on the receiver).
        base: String,
        /// Why not, and what to do instead.
        what: String,
    },
    /// A filesystem ran out of space (or quota): which one, and what needed the space. Told
    /// apart where goldclone writes through one filesystem into another (an image's XFS on
    /// the cache root's filesystem): the caller's remedy differs.
    #[error("no space left on {}: {what}: {source}", path.display())]
    NoSpace {
        /// A directory on the filesystem that is full.
        path: PathBuf,
        /// What needed the space, what is free, what to do.
        what: String,
        /// The failed call.
        #[source]
        source: Box<Error>,
    },
    /// A send/receive stream is not a goldclone stream, is of a newer version, breaks off
    /// before its trailer, or fails a checksum. Nothing of it was committed.
    #[error("bad stream at byte {at}: {what}")]
    BadStream {
        /// Where in the stream the problem is (bytes from its start).
        at: u64,
        /// What is wrong.
        what: String,
    },
    /// The operation was cancelled from another thread.
    #[error("cancelled")]
    Cancelled,
    /// The caller's edit of a new generation (a promote's edit hook) failed; the generation
    /// was not committed.
    #[error("edit of generation {generation} failed: {source}")]
    EditFailed {
        /// The generation being made.
        generation: u64,
        /// What the hook returned.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The filesystem (or the pair of filesystems) cannot do what was asked.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What could not be done.
        what: String,
    },
    /// libzfs_core or /dev/zfs is not available on this host.
    #[error("ZFS unavailable: {reason}")]
    ZfsUnavailable {
        /// Why: missing library, missing symbol, missing /dev/zfs.
        reason: String,
    },
    /// A component with its own error model failed (a libzfs_core call: see
    /// `Error::zfs` for its details).
    #[error("{0}")]
    Component(Box<dyn ComponentError>),
}

/// What [`Error`] needs of an error from a component with its own error model (libzfs_core's
/// errors carry an operation, names and per-name errnos): its class, its errno, and a way back
/// to the concrete type. This keeps the error type free of any backend.
pub trait ComponentError: std::error::Error + Send + Sync + 'static {
    /// The stable classification.
    fn kind(&self) -> ErrorKind;
    /// The errno behind it, where there is one.
    fn errno(&self) -> Option<i32>;
    /// The concrete error, for the component's own accessors.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// The one way a failed system call becomes an [`Error`]: `call().at("open", path)?`.
///
/// For any result whose error converts into an [`io::Error`] (std's, nix's `Errno`, rustix's
/// `Errno`): the error becomes [`Error::Io`] with the operation and path.
pub trait Context<T> {
    /// Fail as [`Error::Io`] with operation `op` on `path`; the path is copied only on failure.
    fn at(self, op: &'static str, path: impl AsRef<Path>) -> Result<T>;

    /// As [`Context::at`], for a path that costs something to make (a join): made only on
    /// failure.
    fn at_with<P: Into<PathBuf>>(self, op: &'static str, path: impl FnOnce() -> P) -> Result<T>;
}

impl<T, E: Into<io::Error>> Context<T> for std::result::Result<T, E> {
    fn at(self, op: &'static str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(op, path.as_ref(), e))
    }

    fn at_with<P: Into<PathBuf>>(self, op: &'static str, path: impl FnOnce() -> P) -> Result<T> {
        self.map_err(|e| Error::io(op, path(), e))
    }
}

/// A small, stable classification of [`Error`], for callers that branch on the cause and for the
/// C ABI's result codes (each kind is the code of the same name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorKind {
    /// A path, dataset or snapshot does not exist.
    NotFound,
    /// Something that must not exist yet already does.
    AlreadyExists,
    /// A path is not a directory.
    NotADirectory,
    /// A caller-supplied argument is wrong (destination inside source, bad option).
    InvalidArgument,
    /// A name was rejected by validation.
    InvalidName,
    /// A name is too long.
    NameTooLong,
    /// No space left (ENOSPC) or quota exceeded (EDQUOT).
    NoSpace,
    /// The object is busy (EBUSY): mounted, held, or has dependents.
    Busy,
    /// Permission denied (EPERM, EACCES).
    PermissionDenied,
    /// The filesystem cannot do it (EOPNOTSUPP, ENOTTY).
    Unsupported,
    /// Two objects are on different pools or filesystems (EXDEV).
    CrossDevice,
    /// The operation was cancelled.
    Cancelled,
    /// The caller's edit of a new generation failed; nothing was committed.
    EditFailed,
    /// ZFS is not available on this host.
    ZfsUnavailable,
    /// A ZFS snapshot cannot be destroyed because clones depend on it.
    SnapshotHasClones,
    /// A ZFS snapshot cannot be destroyed because it has user holds.
    SnapshotHeld,
    /// On-disk state is not what goldclone recorded; nothing was changed.
    Damaged,
    /// The operation took effect in part; the next open or gc finishes it.
    Incomplete,
    /// A file the library reads (a mount table, a tool's output) could not be parsed.
    Parse,
    /// A send/receive stream is truncated, corrupt, or not one this library reads; nothing
    /// of it was committed.
    BadStream,
    /// Any other I/O error.
    Io,
}

impl Error {
    /// Build an [`Error::Io`] from the last OS error.
    pub fn last_os(op: &'static str, path: impl Into<PathBuf>) -> Self {
        Error::Io { op, path: path.into(), source: io::Error::last_os_error() }
    }

    /// Build an [`Error::Io`] from an errno value.
    pub fn from_errno(op: &'static str, path: impl Into<PathBuf>, errno: i32) -> Self {
        Error::Io { op, path: path.into(), source: io::Error::from_raw_os_error(errno) }
    }

    /// Wrap the kernel's answer (an [`io::Error`], or nix's or rustix's errno) with the
    /// operation and path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: impl Into<io::Error>) -> Self {
        Error::Io { op, path: path.into(), source: source.into() }
    }

    /// The errno behind this error, where the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. }
            | Error::Xattr { source, .. }
            | Error::Transfer { source, .. } => source.raw_os_error(),
            Error::Incomplete { source, .. } | Error::NoSpace { source, .. } => source.errno(),
            Error::Component(c) => c.errno(),
            _ => None,
        }
    }

    /// The path this error is about, where there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::Io { path, .. }
            | Error::Xattr { path, .. }
            | Error::NotADirectory { path }
            | Error::AlreadyExists { path }
            | Error::Damaged { path, .. }
            | Error::Parse { path, .. }
            | Error::MountPoint { path }
            | Error::NoSpace { path, .. } => Some(path),
            Error::Transfer { src, .. } => Some(src),
            Error::Incomplete { source, .. } => source.path(),
            Error::DestinationInsideSource { dst, .. } => Some(dst),
            _ => None,
        }
    }

    /// The stable classification of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { source, .. }
            | Error::Xattr { source, .. }
            | Error::Transfer { source, .. } => match source.raw_os_error() {
                Some(e) => kind_of_errno(e),
                None => ErrorKind::Io,
            },
            Error::NotADirectory { .. } => ErrorKind::NotADirectory,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::DestinationInsideSource { .. } | Error::InvalidArgument { .. } => {
                ErrorKind::InvalidArgument
            }
            Error::InvalidName { .. } => ErrorKind::InvalidName,
            Error::NameTooLong { .. } => ErrorKind::NameTooLong,
            Error::NoSpace { .. } => ErrorKind::NoSpace,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::BadStream { .. } => ErrorKind::BadStream,
            Error::EditFailed { .. } => ErrorKind::EditFailed,
            Error::UnknownProject { .. }
            | Error::UnknownSession { .. }
            | Error::UnknownGeneration { .. }
            | Error::NoBase { .. } => ErrorKind::NotFound,
            Error::SessionBusy { .. } | Error::MountPoint { .. } | Error::GenerationBusy { .. } => {
                ErrorKind::Busy
            }
            Error::Damaged { .. } => ErrorKind::Damaged,
            Error::Parse { .. } => ErrorKind::Parse,
            Error::Incomplete { .. } => ErrorKind::Incomplete,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::ZfsUnavailable { .. } => ErrorKind::ZfsUnavailable,
            Error::Component(c) => c.kind(),
        }
    }
}

/// Classify an errno.
pub fn kind_of_errno(errno: i32) -> ErrorKind {
    match errno {
        libc::ENOENT => ErrorKind::NotFound,
        libc::EEXIST => ErrorKind::AlreadyExists,
        libc::ENOTDIR => ErrorKind::NotADirectory,
        libc::EINVAL => ErrorKind::InvalidArgument,
        libc::ENAMETOOLONG => ErrorKind::NameTooLong,
        libc::ENOSPC | libc::EDQUOT => ErrorKind::NoSpace,
        libc::EBUSY => ErrorKind::Busy,
        libc::EPERM | libc::EACCES => ErrorKind::PermissionDenied,
        libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS => ErrorKind::Unsupported,
        libc::EXDEV => ErrorKind::CrossDevice,
        libc::ECANCELED => ErrorKind::Cancelled,
        _ => ErrorKind::Io,
    }
}
