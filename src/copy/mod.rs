//! The fallback backend every host has: an exact, parallel, crash-safe tree copy.
//!
//! [`copy_tree`] gives the result of `cp -a SRC DST` (owners, modes, nanosecond times, all
//! xattrs including `trusted.overlay.*` and ACLs, hardlink groups, device nodes, fifos, symlinks
//! never followed, sparse files kept sparse), with each file's data shared by FICLONE where the
//! filesystem can, copied in the kernel by copy_file_range where it cannot, and through user space
//! only as a last resort.
//!
//! The copy is written into a locked staging directory beside DST and renamed to DST only when
//! complete: DST either does not exist or is whole. On error nothing is left; a killed copy leaves
//! a staging directory that [`cleanup_staging`] recognises and removes.

mod data;
mod meta;
mod pool;
mod staging;
mod walk;

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) use meta::skipped_xattr;
pub use staging::{cleanup_staging, remove_at, remove_tree, STAGING_PREFIX};
pub(crate) use staging::{list_entries, remove_contents, remove_entry};
pub(crate) use walk::entry_path;

use crate::{Context, Error, Result};
use pool::Workers;

/// A flag another thread sets to stop a copy. The copy then fails with [`Error::Cancelled`]
/// and leaves nothing behind.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<CancelFlag>);

#[derive(Debug, Default)]
struct CancelFlag {
    set: AtomicBool,
    parent: Option<CancelToken>,
    /// Held while a copy commits and while a progress callback decides whether to stop, so a
    /// stop is either in time (the copy is cancelled) or never asked for (the copy is done);
    /// true once committed.
    committed: Mutex<bool>,
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// A token that is cancelled when this one is, and can be cancelled on its own without
    /// cancelling this one (a caller's handle shared by several copies stays as it was).
    pub fn child(&self) -> CancelToken {
        CancelToken(Arc::new(CancelFlag { parent: Some(self.clone()), ..CancelFlag::default() }))
    }
    /// Run `commit` unless this token is cancelled (then `commit(false)` undoes instead), with
    /// no [`CancelToken::decide`] in between.
    fn commit_unless_cancelled(&self, commit: impl FnOnce(bool) -> Result<()>) -> Result<()> {
        let mut committed = self.0.committed.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_cancelled() {
            commit(false)?;
            return Err(Error::Cancelled);
        }
        commit(true)?;
        *committed = true;
        Ok(())
    }
    /// Run an operation's commit `commit` unless this token is cancelled (then
    /// [`Error::Cancelled`] and `commit` does not run), with no [`CancelToken::decide`] in
    /// between; once it succeeded the token counts as committed.
    pub(crate) fn commit<T>(&self, commit: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut committed = self.0.committed.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let value = commit()?;
        *committed = true;
        Ok(value)
    }
    /// Cancel if `stop()` says so, unless the copy has committed already (then `stop` is not
    /// asked): a stop is never answered by a finished copy.
    pub(crate) fn decide(&self, stop: impl FnOnce() -> bool) {
        let committed = self.0.committed.lock().unwrap_or_else(|p| p.into_inner());
        if !*committed && stop() {
            self.cancel();
        }
    }
    /// Ask every copy holding this token (or a child of it) to stop.
    pub fn cancel(&self) {
        self.0.set.store(true, Ordering::Relaxed);
    }
    /// Whether [`cancel`](Self::cancel) was called on this token or one it is a child of.
    pub fn is_cancelled(&self) -> bool {
        self.0.set.load(Ordering::Relaxed) || self.0.parent.as_ref().is_some_and(Self::is_cancelled)
    }
}

/// Live counters of a running copy, readable from any thread.
#[derive(Debug, Default)]
pub struct Progress {
    entries: AtomicU64,
    bytes: AtomicU64,
    /// (entries, bytes), set as one pair: a reader never sees one from each of two settings.
    totals: Mutex<Option<(u64, u64)>>,
}

impl Progress {
    /// A fresh set of counters.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Entries (files, directories, links, ...) copied so far.
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }
    /// File bytes copied (or cloned) so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    /// Count `entries` and `bytes` more done (for work that is not a tree copy: a stream).
    pub(crate) fn add(&self, entries: u64, bytes: u64) {
        self.entries.fetch_add(entries, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Count `entries` and `bytes` more done of work beyond the totals set (an increment
    /// applied after the copy of its base): the totals grow with them, so done never passes
    /// them.
    pub(crate) fn add_beyond_totals(&self, entries: u64, bytes: u64) {
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((e, b)) = totals.as_mut() {
            *e += entries;
            *b += bytes;
        }
        self.add(entries, bytes);
    }
    pub(crate) fn set_totals(&self, entries: u64, bytes: u64) {
        *self.totals.lock().unwrap_or_else(|p| p.into_inner()) = Some((entries, bytes));
    }
    /// Totals (entries, bytes) once the counting walk has finished, if
    /// [`CopyOptions::count_totals`] asked for it; after a successful copy, the copy's own
    /// counts.
    pub fn totals(&self) -> Option<(u64, u64)> {
        *self.totals.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How to copy.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Worker threads; 0 (the default) adapts: one per CPU while the source is read from memory,
    /// twice that (4 to 32) while it is read from storage.
    pub threads: usize,
    /// Counters to update while copying.
    pub progress: Option<Arc<Progress>>,
    /// Stops the copy when cancelled.
    pub cancel: Option<CancelToken>,
    /// `syncfs` the destination before the final rename, so a power loss never shows a partial
    /// tree under DST. Off by default, like `cp -a`.
    pub sync: bool,
    /// Walk the source once more, alongside the copy, to learn the totals for a progress bar.
    pub count_totals: bool,
    /// Files smaller than this many bytes are written instead of reflinked. Cloning a file costs
    /// several filesystem transactions whatever its size, writing a few KiB costs less CPU; the
    /// price is that those bytes are not shared with the source. 0 (the default) clones every
    /// file, which BENCHMARKS.md measured as the faster setting with the adaptive worker count.
    pub clone_min_size: u64,
}

// The C header's `goldclone_copy_stats` is this struct (cbindgen.toml renames it), so its
// fields are C types and its order is the ABI's.
/// What a finished copy did.
#[repr(C)]
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyStats {
    /// All entries, the root directory included.
    pub entries: u64,
    /// Regular files created (hardlinks excluded).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Device nodes, fifos and sockets.
    pub specials: u64,
    /// Extra links made to an already copied file.
    pub hardlinks: u64,
    /// Bytes of regular-file data (apparent size).
    pub bytes: u64,
    /// Files whose data was shared with FICLONE.
    pub cloned: u64,
    /// Files copied by copy_file_range.
    pub copy_file_range: u64,
    /// Sparse files copied extent by extent.
    pub sparse: u64,
    /// Files copied through a user-space buffer.
    pub read_write: u64,
    /// Worker threads started (with the adaptive default, at most this many ran at once).
    pub threads: u32,
    /// Wall time in nanoseconds.
    #[serde(rename = "elapsed", serialize_with = "serialize_ns_as_secs")]
    pub elapsed_ns: u64,
}

fn serialize_ns_as_secs<S: serde::Serializer>(
    ns: &u64,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(Duration::from_nanos(*ns).as_secs_f64())
}

/// `d` in nanoseconds, saturating (585 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl CopyStats {
    /// Wall time.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_ns)
    }

    /// The data method that carried most files: `"reflink"`, `"copy_file_range"`, `"sparse"`,
    /// `"read_write"`, or `"none"` for a tree without file data.
    pub fn main_method(&self) -> &'static str {
        [
            (self.cloned, "reflink"),
            (self.copy_file_range, "copy_file_range"),
            (self.sparse, "sparse"),
            (self.read_write, "read_write"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .max_by_key(|(n, _)| *n)
        .map_or("none", |(_, m)| m)
    }
}

/// Copy the directory tree `src` to `dst`, which must not exist (its parent must).
///
/// Errors, each leaving nothing behind: `src` missing ([`ErrorKind::NotFound`](crate::ErrorKind)),
/// not a directory, `dst` existing, `dst` inside `src`, an unreadable entry, no space, a
/// cancelled copy.
pub fn copy_tree(src: &Path, dst: &Path, opts: &CopyOptions) -> Result<CopyStats> {
    let started = Instant::now();
    let workers = workers_for(opts)?;
    let staging = staging::Staging::prepare(src, dst)?;
    let result = run_walk(&staging.src, None, &staging.path, staging.fd.as_fd(), opts, workers);
    let stats =
        match result.and_then(|s| if opts.sync { staging.sync().map(|()| s) } else { Ok(s) }) {
            Ok(stats) => stats,
            Err(e) => {
                staging.abandon();
                return Err(e);
            }
        };
    // A stop asked for while the last entries were written still counts: nothing is left.
    match &opts.cancel {
        Some(token) => token.commit_unless_cancelled(|go_on| {
            if go_on {
                staging.commit()
            } else {
                staging.abandon();
                Ok(())
            }
        })?,
        None => staging.commit()?,
    }
    Ok(CopyStats { elapsed_ns: nanos(started.elapsed()), ..stats })
}

/// Copy the contents of `src`, and its root's own metadata, into the existing empty directory
/// `dst` (a fresh btrfs subvolume, say). No staging: the caller makes the result visible
/// atomically (with [`CopyOptions::sync`], after the data is on disk). On error `dst` is
/// emptied again.
pub fn copy_into(src: &Path, dst: &Path, opts: &CopyOptions) -> Result<CopyStats> {
    let started = Instant::now();
    let workers = workers_for(opts)?;
    let src = staging::source_dir(src)?;
    let dst_fd = nix::fcntl::openat(
        nix::fcntl::AT_FDCWD,
        dst,
        staging::DIR_FLAGS,
        nix::sys::stat::Mode::empty(),
    )
    .at("open", dst)?;
    if !staging::list_entries(dst_fd.as_fd(), dst)?.is_empty() {
        return Err(Error::AlreadyExists { path: dst.to_path_buf() });
    }
    let dst_canon = dst.canonicalize().at("canonicalize", dst)?;
    if dst_canon.starts_with(&src) {
        return Err(Error::DestinationInsideSource { src: src.clone(), dst: dst.to_path_buf() });
    }
    fill(&src, None, dst_fd.as_fd(), dst, opts, workers, started)
}

/// [`copy_into`] between open directories: the contents and root metadata of `src` (at
/// `src_path`, named in messages only) into the empty `dst` (at `dst_path`). Nothing is resolved
/// by path, so a symlink swapped in for either after the caller opened it changes nothing. On
/// error `dst` is emptied again.
pub fn copy_dir_into(
    src: BorrowedFd<'_>,
    src_path: &Path,
    dst: BorrowedFd<'_>,
    dst_path: &Path,
    opts: &CopyOptions,
) -> Result<CopyStats> {
    let started = Instant::now();
    let workers = workers_for(opts)?;
    if !staging::list_entries(dst, dst_path)?.is_empty() {
        return Err(Error::AlreadyExists { path: dst_path.to_path_buf() });
    }
    fill(src_path, Some(src), dst, dst_path, opts, workers, started)
}

/// Copy into the empty, open `dst`, sync if asked, and empty it again on error.
fn fill(
    src: &Path,
    src_fd: Option<BorrowedFd<'_>>,
    dst_fd: BorrowedFd<'_>,
    dst: &Path,
    opts: &CopyOptions,
    workers: Workers,
    started: Instant,
) -> Result<CopyStats> {
    let synced = run_walk(src, src_fd, dst, dst_fd, opts, workers).and_then(|stats| {
        if opts.sync {
            nix::unistd::syncfs(dst_fd).at("syncfs", dst)?;
        }
        if opts.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
            return Err(Error::Cancelled);
        }
        Ok(stats)
    });
    match synced {
        Ok(stats) => Ok(CopyStats { elapsed_ns: nanos(started.elapsed()), ..stats }),
        Err(e) => {
            let _ = staging::remove_contents(dst_fd, dst);
            Err(e)
        }
    }
}

fn workers_for(opts: &CopyOptions) -> Result<Workers> {
    match opts.threads {
        0 => Ok(Workers::adaptive()),
        n if n > 1024 => {
            Err(Error::InvalidArgument { what: format!("{n} threads is more than 1024") })
        }
        n => Ok(Workers::Fixed(n)),
    }
}

/// Copy `src` (or, if given, the open directory `src_fd`, with `src` its name for messages)
/// into the open directory `dst_fd` (at `dst_path`), with the totals counter beside it when
/// asked for.
fn run_walk(
    src: &Path,
    src_fd: Option<BorrowedFd<'_>>,
    dst_path: &Path,
    dst_fd: BorrowedFd<'_>,
    opts: &CopyOptions,
    workers: Workers,
) -> Result<CopyStats> {
    let progress = opts.progress.as_deref();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        if let (true, Some(p)) = (opts.count_totals, progress) {
            let done = &done;
            // Totals are a nicety: without a thread for them (a thread limit) the copy goes on.
            let _ = std::thread::Builder::new()
                .name("goldclone-count".into())
                .spawn_scoped(scope, move || count_totals(src, src_fd, p, done));
        }
        let result = walk::Walk::new(src, src_fd, dst_path, dst_fd, opts, progress)
            .and_then(|w| w.run(workers));
        done.store(true, Ordering::Relaxed);
        result
    })
    .inspect(|_| {
        // The counting thread has been joined. A finished copy's counts are the totals, also
        // when it ended before the counting walk did (a small tree) or the walk counted a
        // hardlinked file's bytes once per link: the last report then shows copied == total.
        if let (true, Some(p)) = (opts.count_totals, progress) {
            p.set_totals(p.entries(), p.bytes());
        }
    })
}

/// Count entries and bytes under `root` (or the open `root_fd`) for the progress totals; gives
/// up quietly on errors (the copy reports them) and stops when the copy is over.
fn count_totals(
    root: &Path,
    root_fd: Option<BorrowedFd<'_>>,
    progress: &Progress,
    done: &AtomicBool,
) {
    use nix::dir::Type;
    use nix::fcntl::{AtFlags, AT_FDCWD};
    // Directories relative to the root, opened from the root's fd.
    let base = match root_fd {
        Some(fd) => fd.try_clone_to_owned(),
        None => staging::open_dir_noatime(AT_FDCWD, root),
    };
    let Ok(base) = base else { return };
    let mut stack = vec![std::path::PathBuf::from(".")];
    let (mut entries, mut bytes) = (1u64, 0u64);
    while let Some(dir) = stack.pop() {
        if done.load(Ordering::Relaxed) {
            return;
        }
        // Opened like the copy opens it (O_NOATIME): counting must not touch the source either.
        let Ok(fd) = staging::open_dir_noatime(base.as_fd(), dir.as_path()) else { continue };
        let Ok(list) = staging::list_entries(fd.as_fd(), &dir) else { continue };
        for (name, kind) in list {
            entries += 1;
            match kind {
                Some(Type::Directory) => {
                    stack.push(dir.join(std::ffi::OsStr::from_bytes(name.as_bytes())))
                }
                Some(Type::File) | None => {
                    if let Ok(st) =
                        nix::sys::stat::fstatat(&fd, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    {
                        if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                            bytes += st.st_size as u64;
                        } else if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                            stack.push(dir.join(std::ffi::OsStr::from_bytes(name.as_bytes())));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    progress.set_totals(entries, bytes);
}
