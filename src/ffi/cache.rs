//! The golden lifecycle: a cache of projects, sessions, promotion, cleanup, gc.

use std::ffi::{c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use super::args;
use super::copy::{goldclone_cancel, goldclone_progress_fn, OnCaller, Reporter};
use super::error::{goldclone_result, Failure};
use super::handle::{self, Object};
use crate::copy::{CancelToken, Progress};
use crate::golden::{BackendKind, Cache, GcReport, GoldenInfo, OpenOptions, PromoteOptions, Watch};

/// A golden-tree cache rooted at a directory. Opaque; free with `goldclone_cache_free`. One
/// handle may be used from many threads at once.
pub struct goldclone_cache {
    _private: [u8; 0],
}

/// A project's state from `goldclone_cache_info`. Opaque; free with `goldclone_info_free`.
pub struct goldclone_info {
    _private: [u8; 0],
}

/// What `goldclone_cache_gc` removed. Opaque; free with `goldclone_gc_report_free`.
pub struct goldclone_gc_report {
    _private: [u8; 0],
}

/// `goldclone_open_options.backend`: detect the backend from the root. The header's
/// `GOLDCLONE_BACKEND_AUTO` (written in cbindgen.toml; the C tests check the two agree). The
/// other values are [`BackendKind`]'s, which the header calls `goldclone_backend`.
const BACKEND_AUTO: u32 = 0;

/// The name of a `goldclone_backend` (`"zfs"`, `"zvol"`, `"btrfs"`, `"copy"`; `"auto"` for
/// `GOLDCLONE_BACKEND_AUTO`), or `"unknown"`: a static NUL-terminated string, never freed. Does
/// not touch the last error.
#[no_mangle]
pub extern "C" fn goldclone_backend_name(backend: u32) -> *const c_char {
    let name = match backend {
        BACKEND_AUTO => "auto",
        n => BackendKind::from_repr(n).map_or("unknown", BackendKind::name),
    };
    std::panic::catch_unwind(|| args::static_name(name)).map_or(c"unknown".as_ptr(), |c| c.as_ptr())
}

/// How to open a cache. Fill with `goldclone_open_options_init` first.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct goldclone_open_options {
    /// A `goldclone_backend` value; `GOLDCLONE_BACKEND_AUTO` (0) detects it from the root.
    pub backend: u32,
    /// Worker threads of the copy backend (0 = default).
    pub copy_threads: u32,
    /// zvol backend: size in bytes of a project's first volume, which its sessions get too;
    /// 0 = four times the imported tree, at least 16 GiB (volumes are sparse).
    pub zvol_size: u64,
    /// zvol backend: `volblocksize` of new volumes, a power of two from 4096 to 131072;
    /// 0 = 8192. INVALID_ARGUMENT otherwise.
    pub zvol_block_size: u64,
    /// image backend: size in bytes of a new generation's image, which its sessions get too;
    /// 0 = four times the imported tree, at least 16 GiB, at most the root's filesystem
    /// (images are sparse). At least 512 MiB: INVALID_ARGUMENT otherwise.
    pub image_size: u64,
}

pub(super) fn cache(c: *const goldclone_cache) -> Result<Arc<Cache>, Failure> {
    handle::get(c, "goldclone_cache", |o| match o {
        Object::Cache(c) => Some(Arc::clone(c)),
        _ => None,
    })
}

fn info(i: *const goldclone_info) -> Result<Arc<GoldenInfo>, Failure> {
    handle::get(i, "goldclone_info", |o| match o {
        Object::Info(i) => Some(Arc::clone(i)),
        _ => None,
    })
}

fn gc_report(r: *const goldclone_gc_report) -> Result<Arc<GcReport>, Failure> {
    handle::get(r, "goldclone_gc_report", |o| match o {
        Object::GcReport(r) => Some(Arc::clone(r)),
        _ => None,
    })
}

fn index_error(what: &str, index: usize, len: usize) -> Failure {
    Failure::new(
        goldclone_result::InvalidArgument,
        format!("{what} index {index} out of range (count {len})"),
    )
}

/// Fill `*opts` with the defaults: detect the backend, default copy threads.
#[no_mangle]
pub unsafe extern "C" fn goldclone_open_options_init(
    opts: *mut goldclone_open_options,
) -> goldclone_result {
    // SAFETY: the caller's promise on `opts`, passed on.
    unsafe { args::init_defaults("goldclone_open_options_init", opts) }
}

/// Open (creating if needed) the cache at `root` (NUL-terminated bytes), finishing or rolling
/// back what a crashed process left half done. `opts` may be NULL (defaults). On success `*out`
/// is a new handle.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_open(
    root: *const c_char,
    opts: *const goldclone_open_options,
    out: *mut *mut goldclone_cache,
) -> goldclone_result {
    ffi_body!("goldclone_cache_open", {
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let root = unsafe { args::path(root, "root") }?;
        args::require(out, "out")?;
        let o = if opts.is_null() {
            goldclone_open_options::default()
        } else {
            // SAFETY: non-NULL, points to an initialized goldclone_open_options (POD).
            unsafe { opts.read() }
        };
        let backend = match o.backend {
            BACKEND_AUTO => None,
            n => Some(BackendKind::from_repr(n).ok_or_else(|| {
                Failure::new(
                    goldclone_result::InvalidArgument,
                    format!("{n} is not a goldclone_backend"),
                )
            })?),
        };
        let c = Cache::open(
            root,
            &OpenOptions {
                backend,
                copy_threads: o.copy_threads as usize,
                zvol_size: o.zvol_size,
                zvol_block_size: o.zvol_block_size,
                image_size: o.image_size,
            },
        )?;
        let h = handle::register(Object::Cache(Arc::new(c)));
        // SAFETY: non-NULL (checked), writable by the caller's promise.
        unsafe { args::store(out, h) };
        Ok(())
    })
}

/// Free a cache handle. Calls still running on it from other threads finish first (they hold
/// their own reference). NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_free(cache: *mut goldclone_cache) -> goldclone_result {
    ffi_body!("goldclone_cache_free", {
        handle::free(cache, "goldclone_cache", |o| matches!(o, Object::Cache(_)))
    })
}

/// The backend the cache uses, in `*out`.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_backend(
    cache: *const goldclone_cache,
    out: *mut BackendKind,
) -> goldclone_result {
    ffi_body!("goldclone_cache_backend", {
        args::require(out, "out")?;
        let b = self::cache(cache)?.backend();
        // SAFETY: non-NULL (checked), writable by the caller's promise.
        unsafe { args::store(out, b) };
        Ok(())
    })
}

/// The cache root into a caller buffer.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_root(
    cache: *const goldclone_cache,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> goldclone_result {
    ffi_body!("goldclone_cache_root", {
        let c = self::cache(cache)?;
        // SAFETY: the caller's promise on buf/buf_len/out_len.
        unsafe { args::write_string(buf, buf_len, out_len, c.root().as_os_str().as_bytes()) }
    })
}

/// How to run a long lifecycle operation (import, setup, promote): a progress callback and a
/// cancel handle. Fill with `goldclone_op_options_init` first, then change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct goldclone_op_options {
    /// Progress callback, or NULL; as for `goldclone_copy_tree`. Tree copies (every import, the
    /// copy backend's setups and promotes) report entries and bytes, with the totals counted
    /// alongside (`totals_known` once the count is done); a snapshot or clone reports only
    /// before and after. The callback must not call the cache for the same project: the
    /// operation's commit waits for the callback to return, and the project's lock is held.
    pub progress: goldclone_progress_fn,
    /// Passed to `progress` unchanged.
    pub progress_user_data: *mut c_void,
    /// Milliseconds between progress calls; 0 means 100.
    pub progress_interval_ms: u32,
    /// A cancel handle whose cancellation stops the operation, or NULL. A stopped operation
    /// leaves nothing behind and returns CANCELLED; one stopped after its commit point has
    /// taken effect and succeeds.
    pub cancel: *const goldclone_cancel,
}

impl Default for goldclone_op_options {
    fn default() -> Self {
        goldclone_op_options {
            progress: None,
            progress_user_data: std::ptr::null_mut(),
            progress_interval_ms: 0,
            cancel: std::ptr::null(),
        }
    }
}

/// Fill `*opts` with the defaults: no callback, no cancel handle.
#[no_mangle]
pub unsafe extern "C" fn goldclone_op_options_init(
    opts: *mut goldclone_op_options,
) -> goldclone_result {
    // SAFETY: the caller's promise on `opts`, passed on.
    unsafe { args::init_defaults("goldclone_op_options_init", opts) }
}

/// Run `work` under the caller's options: a token of its own (a child of the caller's handle,
/// which other operations may share) and, with a callback, progress reports on this thread.
///
/// # Safety
/// `opts` is NULL or points to an initialized `goldclone_op_options`.
pub(super) unsafe fn watched<T: Send>(
    opts: *const goldclone_op_options,
    work: impl FnOnce(&Watch, &OnCaller<'_>) -> crate::Result<T> + Send,
) -> Result<T, Failure> {
    let o = if opts.is_null() {
        goldclone_op_options::default()
    } else {
        // SAFETY: non-NULL, and the caller promises an initialized goldclone_op_options (POD).
        unsafe { opts.read() }
    };
    let token = if o.cancel.is_null() {
        CancelToken::new()
    } else {
        super::copy::cancel_token(o.cancel)?.child()
    };
    Ok(match o.progress {
        None => work(&Watch { progress: None, cancel: Some(token) }, &OnCaller::HERE)?,
        Some(callback) => {
            let reporter = Reporter::new(callback, o.progress_user_data, o.progress_interval_ms);
            let progress = Progress::new();
            let watch = Watch { progress: Some(progress.clone()), cancel: Some(token.clone()) };
            reporter.run(&progress, &token, |on_caller| work(&watch, on_caller))?
        }
    })
}

/// Make the directory `dir` (NUL-terminated bytes) generation 1 of a new project `project`
/// (UTF-8). `*generation` (may be NULL) receives the generation.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_import(
    cache: *const goldclone_cache,
    project: *const c_char,
    dir: *const c_char,
    generation: *mut u64,
) -> goldclone_result {
    // SAFETY: the caller's promises, passed on; NULL options are the defaults.
    unsafe { goldclone_cache_import_with(cache, project, dir, std::ptr::null(), generation) }
}

/// `goldclone_cache_import` with progress and cancellation (`opts` may be NULL).
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_import_with(
    cache: *const goldclone_cache,
    project: *const c_char,
    dir: *const c_char,
    opts: *const goldclone_op_options,
    generation: *mut u64,
) -> goldclone_result {
    ffi_body!("goldclone_cache_import_with", {
        // SAFETY: the caller's promises, passed on.
        unsafe { import(cache, project, dir, opts, generation, Cache::import_with) }
    })
}

/// The body of both imports: `how` is `Cache::import_with` or `Cache::import_next_with`.
///
/// # Safety
/// As `goldclone_cache_import_with`.
unsafe fn import(
    cache: *const goldclone_cache,
    project: *const c_char,
    dir: *const c_char,
    opts: *const goldclone_op_options,
    generation: *mut u64,
    how: fn(&Cache, &str, &Path, &Watch) -> crate::Result<u64>,
) -> super::error::FfiResult {
    // SAFETY: the caller passes NUL-terminated strings or NULL.
    let project = unsafe { args::name(project, "project") }?;
    // SAFETY: as above.
    let dir = unsafe { args::path(dir, "dir") }?;
    let c = self::cache(cache)?;
    // SAFETY: the caller's promise on `opts`.
    let g = unsafe { watched(opts, |w, _| how(&c, project, dir, w)) }?;
    // SAFETY: NULL or writable by the caller's promise.
    unsafe { args::store(generation, g) };
    Ok(())
}

/// Make the directory `dir` (NUL-terminated bytes) the next generation of the existing
/// project `project` (UTF-8), as a promote makes a session one: sessions keep their generation,
/// new sessions get this one. `*generation` (may be NULL) receives it. Progress and
/// cancellation as `goldclone_cache_import_with` (`opts` may be NULL).
///
/// On ZFS and zvol a stop that comes after the new head's first `lzc_promote` is too late: the
/// import finishes and succeeds.
///
/// Errors: NOT_FOUND (project, dir), NOT_A_DIRECTORY, INVALID_NAME, INVALID_ARGUMENT (`dir`
/// holds the cache root), ALREADY_EXISTS or DAMAGED (something without a record is where the
/// generation goes), BUSY, CANCELLED, NO_SPACE, INCOMPLETE (undoing a failure failed too:
/// recovery finishes it), IO.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_import_next(
    cache: *const goldclone_cache,
    project: *const c_char,
    dir: *const c_char,
    opts: *const goldclone_op_options,
    generation: *mut u64,
) -> goldclone_result {
    ffi_body!("goldclone_cache_import_next", {
        // SAFETY: the caller's promises, passed on.
        unsafe { import(cache, project, dir, opts, generation, Cache::import_next_with) }
    })
}

/// Set up session `session` of `project` (both UTF-8): a private writable copy of the
/// project's current generation. Its path goes into the caller buffer `path_buf` (a buffer of
/// `GOLDCLONE_PATH_BUF_SIZE` bytes always suffices). If the path does not fit, the session is
/// removed again and the call returns BUFFER_TOO_SMALL with the needed length in
/// `*path_len_out`: either the session exists and you have its path, or it does not exist.
///
/// Errors: NOT_FOUND (project), ALREADY_EXISTS (session), INVALID_NAME, NAME_TOO_LONG,
/// NO_SPACE, IO.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_setup(
    cache: *const goldclone_cache,
    project: *const c_char,
    session: *const c_char,
    path_buf: *mut c_char,
    path_buf_len: usize,
    path_len_out: *mut usize,
) -> goldclone_result {
    // SAFETY: the caller's promises, passed on; NULL options are the defaults.
    unsafe {
        goldclone_cache_setup_with(
            cache,
            project,
            session,
            std::ptr::null(),
            path_buf,
            path_buf_len,
            path_len_out,
        )
    }
}

/// `goldclone_cache_setup` with progress and cancellation (`opts` may be NULL); CANCELLED
/// when stopped in time, and then no session exists.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_setup_with(
    cache: *const goldclone_cache,
    project: *const c_char,
    session: *const c_char,
    opts: *const goldclone_op_options,
    path_buf: *mut c_char,
    path_buf_len: usize,
    path_len_out: *mut usize,
) -> goldclone_result {
    ffi_body!("goldclone_cache_setup_with", {
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let project = unsafe { args::name(project, "project") }?;
        // SAFETY: as above.
        let session = unsafe { args::name(session, "session") }?;
        args::require_buf(path_buf, path_buf_len)?;
        let c = self::cache(cache)?;
        // SAFETY: the caller's promise on `opts`.
        let path = unsafe { watched(opts, |w, _| c.setup_with(project, session, w)) }?;
        // SAFETY: the caller's promise on the buffer arguments.
        unsafe {
            give_path(&c, project, session, &path, true, path_buf, path_buf_len, path_len_out)
        }
    })
}

/// Write a session's path into the caller's buffer. A session this call made (`made`) whose
/// path does not fit is removed again: either the caller has the session's path or it does not
/// exist.
///
/// # Safety
/// `buf`/`buf_len`/`out_len` as for `args::write_string`.
#[allow(clippy::too_many_arguments)] // the buffer triple of the C call, passed on
unsafe fn give_path(
    c: &Cache,
    project: &str,
    session: &str,
    path: &Path,
    made: bool,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> Result<(), Failure> {
    // SAFETY: the caller's promise on the buffer arguments.
    let written = unsafe { args::write_string(buf, buf_len, out_len, path.as_os_str().as_bytes()) };
    match written {
        Err(mut f) if made => {
            if let Err(e) = c.cleanup(project, session) {
                f.message = format!("{}; removing the session again failed: {e}", f.message);
            } else {
                f.message = format!("{}; the session was removed again", f.message);
            }
            Err(f)
        }
        other => other,
    }
}

/// `goldclone_cache_setup_with`, but an existing session `session` is returned as it is
/// (`*reused` true; may be NULL) instead of ALREADY_EXISTS; DAMAGED if its tree is not the one
/// recorded. A reused session keeps the generation it was made from; one that a reboot
/// unmounted (images, ZFS, zvol) is mounted at its place again. With BUFFER_TOO_SMALL the
/// session exists (also one this call made): call again with a larger buffer to get its path.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_setup_or_reuse(
    cache: *const goldclone_cache,
    project: *const c_char,
    session: *const c_char,
    opts: *const goldclone_op_options,
    path_buf: *mut c_char,
    path_buf_len: usize,
    path_len_out: *mut usize,
    reused: *mut bool,
) -> goldclone_result {
    ffi_body!("goldclone_cache_setup_or_reuse", {
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let project = unsafe { args::name(project, "project") }?;
        // SAFETY: as above.
        let session = unsafe { args::name(session, "session") }?;
        args::require_buf(path_buf, path_buf_len)?;
        let c = self::cache(cache)?;
        // SAFETY: the caller's promise on `opts`.
        let (path, was_there) =
            unsafe { watched(opts, |w, _| c.setup_or_reuse(project, session, w)) }?;
        // SAFETY: NULL or writable by the caller's promise.
        unsafe { args::store(reused, was_there) };
        // SAFETY: the caller's promise on the buffer arguments.
        // A session this call made stays too: another caller may have been given it as reused
        // meanwhile, and calling again with a larger buffer hands it out.
        unsafe {
            give_path(&c, project, session, &path, false, path_buf, path_buf_len, path_len_out)
        }
    })
}

/// How `goldclone_cache_setup_with_options` sets a session up. Fill with
/// `goldclone_setup_options_init` first, then change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct goldclone_setup_options {
    /// Show the session at this absolute path (NUL-terminated) instead of
    /// `ROOT/<project>/sessions/<id>`, or NULL. Nothing may be there yet; its parent must be an
    /// existing directory reached without symlinks, outside the cache root and outside other
    /// sessions (INVALID_ARGUMENT, ALREADY_EXISTS, NOT_FOUND or NOT_A_DIRECTORY
    /// otherwise, nothing changed). goldclone makes the directory and bind-mounts the session
    /// there (any filesystem; needs CAP_SYS_ADMIN); cleanup, a consuming promote, delete and
    /// recovery take both away again. The path is copied: it need not outlive the call.
    pub at: *const c_char,
    /// Return an existing session of this name as it is instead of ALREADY_EXISTS (as
    /// `goldclone_cache_setup_or_reuse`); with `at`, it must be the session's recorded path
    /// (INVALID_ARGUMENT otherwise), where a bind a reboot took is made again.
    pub reuse: bool,
}

impl Default for goldclone_setup_options {
    fn default() -> Self {
        goldclone_setup_options { at: std::ptr::null(), reuse: false }
    }
}

/// Fill `*opts` with the defaults: the session at its place in the cache root, no reuse.
#[no_mangle]
pub unsafe extern "C" fn goldclone_setup_options_init(
    opts: *mut goldclone_setup_options,
) -> goldclone_result {
    // SAFETY: the caller's promise on `opts`, passed on.
    unsafe { args::init_defaults("goldclone_setup_options_init", opts) }
}

/// `goldclone_cache_setup_or_reuse` with `setup` choosing the session's path and whether an
/// existing session is reused (`setup` may be NULL: the defaults). `*reused` (may be NULL) says
/// whether the session was there already. The path (the caller's `at`, or the session's place)
/// goes into the caller buffer as with `goldclone_cache_setup_with`; a session this call made
/// is removed again when the buffer is too small, unless `reuse` is set.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_setup_with_options(
    cache: *const goldclone_cache,
    project: *const c_char,
    session: *const c_char,
    setup: *const goldclone_setup_options,
    opts: *const goldclone_op_options,
    path_buf: *mut c_char,
    path_buf_len: usize,
    path_len_out: *mut usize,
    reused: *mut bool,
) -> goldclone_result {
    ffi_body!("goldclone_cache_setup_with_options", {
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let project = unsafe { args::name(project, "project") }?;
        // SAFETY: as above.
        let session = unsafe { args::name(session, "session") }?;
        args::require_buf(path_buf, path_buf_len)?;
        // SAFETY: NULL or a valid, initialised struct by the caller's promise.
        let setup = unsafe { setup.as_ref() }.copied().unwrap_or_default();
        let at = if setup.at.is_null() {
            None
        } else {
            // SAFETY: non-NULL, NUL-terminated by the caller's promise.
            Some(unsafe { args::path(setup.at, "setup.at") }?.to_path_buf())
        };
        let options = crate::golden::SetupOptions { at, reuse: setup.reuse };
        let c = self::cache(cache)?;
        // SAFETY: the caller's promise on `opts`.
        let (path, was_there) =
            unsafe { watched(opts, |w, _| c.setup_with_options(project, session, &options, w)) }?;
        // SAFETY: NULL or writable by the caller's promise.
        unsafe { args::store(reused, was_there) };
        let made = !was_there && !setup.reuse;
        // SAFETY: the caller's promise on the buffer arguments.
        unsafe {
            give_path(&c, project, session, &path, made, path_buf, path_buf_len, path_len_out)
        }
    })
}

/// Whether session `session` is shown at its path now (`*shown`): false when the bind at the
/// caller's path it was set up at is gone (a reboot, an interrupted operation);
/// `goldclone_cache_setup_with_options` with `reuse` and the same path shows it there again.
/// Always true for a session at its place in the cache root. NOT_FOUND for an unknown project
/// or session.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_session_shown(
    cache: *const goldclone_cache,
    project: *const c_char,
    session: *const c_char,
    shown: *mut bool,
) -> goldclone_result {
    ffi_body!("goldclone_cache_session_shown", {
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let project = unsafe { args::name(project, "project") }?;
        // SAFETY: as above.
        let session = unsafe { args::name(session, "session") }?;
        args::require(shown, "shown")?;
        let is_shown = self::cache(cache)?.session_shown(project, session)?;
        // SAFETY: non-NULL (checked), writable by the caller's promise.
        unsafe { args::store(shown, is_shown) };
        Ok(())
    })
}

/// Make session `session`'s tree the next generation of `project`. `*generation` (may be NULL)
/// receives it. Sessions made from older generations keep running.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_promote(
    cache: *const goldclone_cache,
    project: *const c_char,
    session: *const c_char,
    generation: *mut u64,
) -> goldclone_result {
    // SAFETY: the caller's promises, passed on; NULL options are the defaults.
    unsafe { goldclone_cache_promote_with(cache, project, session, std::ptr::null(), generation) }
}

/// `goldclone_cache_promote` with progress and cancellation (`opts` may be NULL). On ZFS a
/// promote stopped after its first `lzc_promote` can only go forward: it finishes and succeeds.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_promote_with(
    cache: *const goldclone_cache,
    project: *const c_char,
    session: *const c_char,
    opts: *const goldclone_op_options,
    generation: *mut u64,
) -> goldclone_result {
    ffi_body!("goldclone_cache_promote_with", {
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let project = unsafe { args::name(project, "project") }?;
        // SAFETY: as above.
        let session = unsafe { args::name(session, "session") }?;
        let c = self::cache(cache)?;
        // SAFETY: the caller's promise on `opts`.
        let g = unsafe { watched(opts, |w, _| c.promote_with(project, session, w)) }?;
        // SAFETY: NULL or writable by the caller's promise.
        unsafe { args::store(generation, g) };
        Ok(())
    })
}

/// A promote's edit callback: called once, on the thread that called
/// `goldclone_cache_promote_with_options`, with the writable tree that becomes the new
/// generation (`tree`, NUL-terminated, valid only during the call) and the generation's number,
/// after the `drop` paths are gone from it and before anything is committed. Return 0 to go on;
/// anything else fails the promote with EDIT_FAILED and commits nothing. It must not call the
/// cache for the same project (the project's lock is held) and must not unwind.
pub type goldclone_edit_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, tree: *const c_char, generation: u64) -> i32,
>;

/// What a promote does besides making the session's tree the next generation. Fill with
/// `goldclone_promote_options_init` first, then change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct goldclone_promote_options {
    /// Take the session itself: it is gone once the promote has succeeded. On the copy backend
    /// its tree becomes the generation by a rename, whatever its size (BUSY if something got
    /// into it meanwhile); btrfs and ZFS make the generation as always, then remove the session
    /// (one that something has started using meanwhile stays). A promote that fails gives the
    /// session back, its dropped paths restored (what `edit` changed stays changed; on ZFS and
    /// zvol the drops are final once `edit` has returned).
    pub consume: bool,
    /// `drop_len` paths relative to the tree's top (NUL-terminated bytes, UTF-8) to leave out
    /// of the new generation; NULL when `drop_len` is 0. Plain relative paths only (no `..`,
    /// `.`, leading `/`): INVALID_ARGUMENT otherwise. A missing path is skipped; a symlink at a
    /// path is removed, never followed; a path through a symlink fails the promote.
    pub drop: *const *const c_char,
    /// The number of entries in `drop`.
    pub drop_len: usize,
    /// Edit callback, or NULL. On ZFS and zvol the tree it edits is the session's own, so it
    /// (and `drop`) needs `consume`: UNSUPPORTED otherwise.
    pub edit: goldclone_edit_fn,
    /// Passed to `edit` unchanged.
    pub edit_user_data: *mut c_void,
}

impl Default for goldclone_promote_options {
    fn default() -> Self {
        goldclone_promote_options {
            consume: false,
            drop: std::ptr::null(),
            drop_len: 0,
            edit: None,
            edit_user_data: std::ptr::null_mut(),
        }
    }
}

/// Fill `*opts` with the defaults: keep the session, drop nothing, no callback.
#[no_mangle]
pub unsafe extern "C" fn goldclone_promote_options_init(
    opts: *mut goldclone_promote_options,
) -> goldclone_result {
    // SAFETY: the caller's promise on `opts`, passed on.
    unsafe { args::init_defaults("goldclone_promote_options_init", opts) }
}

/// The caller's user data, carried to the caller's thread, where the callback runs.
#[derive(Clone, Copy)]
struct UserData(*mut c_void);

// SAFETY: the pointer is only dereferenced by the caller's own callback, on the caller's own
// thread (`OnCaller`); this library only copies it there.
unsafe impl Send for UserData {}
// SAFETY: as above: shared only to be copied, never dereferenced here.
unsafe impl Sync for UserData {}

impl UserData {
    fn get(self) -> *mut c_void {
        self.0
    }
}

/// A caller's edit callback, run on the caller's thread.
struct Edit<'a> {
    edit: goldclone_edit_fn,
    user: UserData,
    on_caller: &'a OnCaller<'a>,
}

impl Edit<'_> {
    fn call(
        &self,
        tree: &Path,
        number: u64,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let Some(edit) = self.edit else { return Ok(()) };
        let tree = std::ffi::CString::new(tree.as_os_str().as_bytes())?;
        let user = self.user;
        let rc = self
            .on_caller
            // SAFETY: the caller supplied this function and user data for exactly this call;
            // `tree` lives until it returns.
            .run(move || unsafe { edit(user.get(), tree.as_ptr(), number) })
            .ok_or("the calling thread stopped listening")?;
        match rc {
            0 => Ok(()),
            rc => Err(format!("the edit callback returned {rc}").into()),
        }
    }
}

/// `goldclone_cache_promote_with` with edits and consumption (`promote` and `opts` may be
/// NULL: the defaults). EDIT_FAILED if the edit callback returned nonzero; nothing is committed
/// then, nor on any other failure.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_promote_with_options(
    cache: *const goldclone_cache,
    project: *const c_char,
    session: *const c_char,
    promote: *const goldclone_promote_options,
    opts: *const goldclone_op_options,
    generation: *mut u64,
) -> goldclone_result {
    ffi_body!("goldclone_cache_promote_with_options", {
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let project = unsafe { args::name(project, "project") }?;
        // SAFETY: as above.
        let session = unsafe { args::name(session, "session") }?;
        let p = if promote.is_null() {
            goldclone_promote_options::default()
        } else {
            // SAFETY: non-NULL, and the caller promises an initialized
            // goldclone_promote_options (POD).
            unsafe { promote.read() }
        };
        if p.drop.is_null() && p.drop_len > 0 {
            return Err(Failure::null("promote->drop"));
        }
        let mut drop = Vec::with_capacity(p.drop_len);
        for i in 0..p.drop_len {
            // SAFETY: the caller promises `drop_len` readable entries at `drop`.
            let entry = unsafe { *p.drop.add(i) };
            // SAFETY: the caller promises each entry is a NUL-terminated string.
            drop.push(unsafe { args::path(entry, "promote->drop[i]") }?.to_path_buf());
        }
        let c = self::cache(cache)?;
        let (consume, edit, user) = (p.consume, p.edit, UserData(p.edit_user_data));
        // SAFETY: the caller's promise on `opts`.
        let g = unsafe {
            watched(opts, |w, on_caller| {
                let hook = Edit { edit, user, on_caller };
                let hook = |tree: &Path, number| hook.call(tree, number);
                let options =
                    PromoteOptions { consume, drop, edit: edit.is_some().then_some(&hook as _) };
                c.promote_with_options(project, session, &options, w)
            })
        }?;
        // SAFETY: NULL or writable by the caller's promise.
        unsafe { args::store(generation, g) };
        Ok(())
    })
}

/// Remove session `session` of `project`. BUSY if processes still use it.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_cleanup(
    cache: *const goldclone_cache,
    project: *const c_char,
    session: *const c_char,
) -> goldclone_result {
    ffi_body!("goldclone_cache_cleanup", {
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let project = unsafe { args::name(project, "project") }?;
        // SAFETY: as above.
        let session = unsafe { args::name(session, "session") }?;
        self::cache(cache)?.cleanup(project, session)?;
        Ok(())
    })
}

/// How `goldclone_cache_cleanup_with_options` removes a session. Fill with
/// `goldclone_cleanup_options_init` first, then change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct goldclone_cleanup_options {
    /// A session something still uses is taken from every path it is shown at at once
    /// (unmounted lazily), its tree left to the processes and mounts that have it, and removed
    /// by gc once nothing holds it (gc reports it as kept until then); its record is gone at
    /// once. Without it such a session is BUSY and nothing changes.
    pub lazy: bool,
}

/// Fill `*opts` with the defaults: not lazy.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cleanup_options_init(
    opts: *mut goldclone_cleanup_options,
) -> goldclone_result {
    // SAFETY: the caller's promise on `opts`, passed on.
    unsafe { args::init_defaults("goldclone_cleanup_options_init", opts) }
}

/// `goldclone_cache_cleanup` as `opts` says (`opts` may be NULL: the defaults). `*detached`
/// (may be NULL) is true when the session was in use and detached lazily: it is gone for every
/// caller, and its tree waits for its users (see `goldclone_cleanup_options`).
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_cleanup_with_options(
    cache: *const goldclone_cache,
    project: *const c_char,
    session: *const c_char,
    opts: *const goldclone_cleanup_options,
    detached: *mut bool,
) -> goldclone_result {
    ffi_body!("goldclone_cache_cleanup_with_options", {
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let project = unsafe { args::name(project, "project") }?;
        // SAFETY: as above.
        let session = unsafe { args::name(session, "session") }?;
        // SAFETY: NULL or a valid, initialised struct by the caller's promise.
        let o = unsafe { opts.as_ref() }.copied().unwrap_or_default();
        let options = crate::golden::CleanupOptions { lazy: o.lazy };
        let cleaned = self::cache(cache)?.cleanup_with_options(project, session, &options)?;
        let was_detached = matches!(cleaned, crate::golden::Cleaned::Detached { .. });
        // SAFETY: NULL or writable by the caller's promise.
        unsafe { args::store(detached, was_detached) };
        Ok(())
    })
}

/// Delete project `project`: every session, every generation, its records and directories.
/// BUSY (nothing changed) while a session of it is in use; DAMAGED (nothing changed) where its
/// directories hold anything goldclone did not record; NOT_FOUND for an unknown project. Once
/// begun it is finished, if this call fails later on, by the next open or gc.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_delete_project(
    cache: *const goldclone_cache,
    project: *const c_char,
) -> goldclone_result {
    ffi_body!("goldclone_cache_delete_project", {
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let project = unsafe { args::name(project, "project") }?;
        self::cache(cache)?.delete_project(project)?;
        Ok(())
    })
}

/// Remove orphans, retired generations without sessions and staging leftovers. `*report` (may
/// be NULL) receives a new handle listing what was removed.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_gc(
    cache: *const goldclone_cache,
    report: *mut *mut goldclone_gc_report,
) -> goldclone_result {
    ffi_body!("goldclone_cache_gc", {
        let r = self::cache(cache)?.gc()?;
        if !report.is_null() {
            let h = handle::register(Object::GcReport(Arc::new(r)));
            // SAFETY: non-NULL, writable by the caller's promise.
            unsafe { args::store(report, h) };
        }
        Ok(())
    })
}

/// The lists of a gc report (`goldclone_gc_report_list_count`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum goldclone_gc_list {
    /// Removed: retired generations, trash, records of trees that are gone.
    Removed = 0,
    /// Interrupted operations finished or rolled back.
    Recovered = 1,
    /// Found and left alone (entries goldclone did not make, damaged state), with why.
    Kept = 2,
    /// What could not be done now (a busy project, a removal that failed); the next gc retries.
    Failed = 3,
}

/// List `list` (a `goldclone_gc_list` value) of a report; INVALID_ARGUMENT for another value.
fn gc_list(r: &GcReport, list: u32) -> Result<&[String], Failure> {
    Ok(match list {
        0 => &r.removed,
        1 => &r.recovered,
        2 => &r.kept,
        3 => &r.failed,
        n => {
            return Err(Failure::new(
                goldclone_result::InvalidArgument,
                format!("{n} is not a goldclone_gc_list"),
            ))
        }
    })
}

/// Number of items in list `list` (a `goldclone_gc_list` value) of a gc report, in `*count`.
#[no_mangle]
pub unsafe extern "C" fn goldclone_gc_report_list_count(
    report: *const goldclone_gc_report,
    list: u32,
    count: *mut usize,
) -> goldclone_result {
    ffi_body!("goldclone_gc_report_list_count", {
        args::require(count, "count")?;
        let r = gc_report(report)?;
        let n = gc_list(&r, list)?.len();
        // SAFETY: non-NULL (checked), writable by the caller's promise.
        unsafe { args::store(count, n) };
        Ok(())
    })
}

/// Item `index` of list `list` of a gc report into a caller buffer. INVALID_ARGUMENT past the
/// end or for an unknown list.
#[no_mangle]
pub unsafe extern "C" fn goldclone_gc_report_list_item(
    report: *const goldclone_gc_report,
    list: u32,
    index: usize,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> goldclone_result {
    ffi_body!("goldclone_gc_report_list_item", {
        let r = gc_report(report)?;
        let items = gc_list(&r, list)?;
        let item = items.get(index).ok_or_else(|| index_error("gc report", index, items.len()))?;
        // SAFETY: the caller's promise on buf/buf_len/out_len.
        unsafe { args::write_string(buf, buf_len, out_len, item.as_bytes()) }
    })
}

/// Number of removed items in a gc report, in `*count` (list GOLDCLONE_GC_LIST_REMOVED).
#[no_mangle]
pub unsafe extern "C" fn goldclone_gc_report_count(
    report: *const goldclone_gc_report,
    count: *mut usize,
) -> goldclone_result {
    ffi_body!("goldclone_gc_report_count", {
        args::require(count, "count")?;
        let n = gc_report(report)?.removed.len();
        // SAFETY: non-NULL (checked), writable by the caller's promise.
        unsafe { args::store(count, n) };
        Ok(())
    })
}

/// Removed item `index` (a human-readable name) into a caller buffer. INVALID_ARGUMENT past
/// the end.
#[no_mangle]
pub unsafe extern "C" fn goldclone_gc_report_item(
    report: *const goldclone_gc_report,
    index: usize,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> goldclone_result {
    ffi_body!("goldclone_gc_report_item", {
        let r = gc_report(report)?;
        let item =
            r.removed.get(index).ok_or_else(|| index_error("gc report", index, r.removed.len()))?;
        // SAFETY: the caller's promise on buf/buf_len/out_len.
        unsafe { args::write_string(buf, buf_len, out_len, item.as_bytes()) }
    })
}

/// Free a gc report. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn goldclone_gc_report_free(
    report: *mut goldclone_gc_report,
) -> goldclone_result {
    ffi_body!("goldclone_gc_report_free", {
        handle::free(report, "goldclone_gc_report", |o| matches!(o, Object::GcReport(_)))
    })
}

/// The projects that have a golden, sorted, into a caller buffer as one string: the ids
/// separated by `\n` (ids never contain one), empty when there are none. Reads records only.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_projects(
    cache: *const goldclone_cache,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> goldclone_result {
    ffi_body!("goldclone_cache_projects", {
        args::require_buf(buf, buf_len)?;
        let list = self::cache(cache)?.projects()?.join("\n");
        // SAFETY: the caller's promise on buf/buf_len/out_len.
        unsafe { args::write_string(buf, buf_len, out_len, list.as_bytes()) }
    })
}

/// Whether `project` (UTF-8) has a golden: `*out` true or false. One small record read, no
/// walk of the tree (unlike `goldclone_cache_info`, which sizes it).
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_has_golden(
    cache: *const goldclone_cache,
    project: *const c_char,
    out: *mut bool,
) -> goldclone_result {
    ffi_body!("goldclone_cache_has_golden", {
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let project = unsafe { args::name(project, "project") }?;
        args::require(out, "out")?;
        let has = self::cache(cache)?.has_golden(project)?;
        // SAFETY: non-NULL (checked), writable by the caller's promise.
        unsafe { args::store(out, has) };
        Ok(())
    })
}

/// One session of `project`: the generation it was made from, when it was set up (seconds
/// since the Unix epoch), whether anything (a process or a mount, in any mount namespace)
/// holds it now, and its path into a caller buffer. Every output may be NULL; with `path_buf`
/// NULL (and `path_buf_len` 0) the call succeeds and `*path_len_out` gets the path's length.
/// NOT_FOUND for an unknown project or session. No walk of its tree; it waits while an
/// import, promote or gc of the project runs.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_session_info(
    cache: *const goldclone_cache,
    project: *const c_char,
    session: *const c_char,
    generation: *mut u64,
    created_at: *mut u64,
    in_use: *mut bool,
    path_buf: *mut c_char,
    path_buf_len: usize,
    path_len_out: *mut usize,
) -> goldclone_result {
    ffi_body!("goldclone_cache_session_info", {
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let project = unsafe { args::name(project, "project") }?;
        // SAFETY: as above.
        let session = unsafe { args::name(session, "session") }?;
        args::require_buf(path_buf, path_buf_len)?;
        let i = self::cache(cache)?.session_info(project, session)?;
        // SAFETY: each output is NULL or writable by the caller's promise.
        unsafe {
            args::store(generation, i.generation);
            args::store(created_at, i.created_at);
            args::store(in_use, i.in_use());
        }
        if path_buf.is_null() {
            // SAFETY: NULL or writable by the caller's promise.
            unsafe { args::store(path_len_out, i.path.as_os_str().len()) };
            return Ok(());
        }
        // SAFETY: the caller's promise on the buffer arguments.
        unsafe {
            args::write_string(path_buf, path_buf_len, path_len_out, i.path.as_os_str().as_bytes())
        }
    })
}

/// The state of `project` (UTF-8): a new handle in `*out`. NOT_FOUND for an unknown project.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_info(
    cache: *const goldclone_cache,
    project: *const c_char,
    out: *mut *mut goldclone_info,
) -> goldclone_result {
    ffi_body!("goldclone_cache_info", {
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let project = unsafe { args::name(project, "project") }?;
        args::require(out, "out")?;
        let i = self::cache(cache)?.info(project)?;
        let h = handle::register(Object::Info(Arc::new(i)));
        // SAFETY: non-NULL (checked), writable by the caller's promise.
        unsafe { args::store(out, h) };
        Ok(())
    })
}

/// Free an info handle. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn goldclone_info_free(info: *mut goldclone_info) -> goldclone_result {
    ffi_body!("goldclone_info_free", {
        handle::free(info, "goldclone_info", |o| matches!(o, Object::Info(_)))
    })
}

/// The project's numbers; each output may be NULL: current generation (from 1), when it was
/// made (seconds since the Unix epoch), bytes used by the golden tree, the backend holding it,
/// and the number of sessions.
#[no_mangle]
pub unsafe extern "C" fn goldclone_info_get(
    info: *const goldclone_info,
    generation: *mut u64,
    created_at: *mut u64,
    size_bytes: *mut u64,
    backend: *mut BackendKind,
    session_count: *mut usize,
) -> goldclone_result {
    ffi_body!("goldclone_info_get", {
        let i = self::info(info)?;
        // SAFETY: each output is NULL or writable by the caller's promise.
        unsafe {
            args::store(generation, i.generation);
            args::store(created_at, i.created_at);
            args::store(size_bytes, i.size_bytes);
            args::store(backend, i.backend);
            args::store(session_count, i.sessions.len());
        }
        Ok(())
    })
}

/// The session the current generation was promoted from, into a caller buffer; NOT_FOUND for
/// an imported generation.
#[no_mangle]
pub unsafe extern "C" fn goldclone_info_source_session(
    info: *const goldclone_info,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> goldclone_result {
    ffi_body!("goldclone_info_source_session", {
        args::require_buf(buf, buf_len)?;
        let i = self::info(info)?;
        let s = i.source_session.as_deref().ok_or_else(|| {
            Failure::new(
                goldclone_result::NotFound,
                format!(
                    "generation {} of {:?} was imported, not promoted",
                    i.generation, i.project
                ),
            )
        })?;
        // SAFETY: the caller's promise on buf/buf_len/out_len.
        unsafe { args::write_string(buf, buf_len, out_len, s.as_bytes()) }
    })
}

/// Session `index` (0-based, below the session count): its id into a caller buffer and the
/// generation it was made from in `*generation` (may be NULL). INVALID_ARGUMENT past the end.
#[no_mangle]
pub unsafe extern "C" fn goldclone_info_session(
    info: *const goldclone_info,
    index: usize,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
    generation: *mut u64,
) -> goldclone_result {
    ffi_body!("goldclone_info_session", {
        args::require_buf(buf, buf_len)?;
        let i = self::info(info)?;
        let (id, g) =
            i.sessions.get(index).ok_or_else(|| index_error("session", index, i.sessions.len()))?;
        // SAFETY: the caller's promise on buf/buf_len/out_len.
        unsafe { args::write_string(buf, buf_len, out_len, id.as_bytes()) }?;
        // SAFETY: NULL or writable by the caller's promise.
        unsafe { args::store(generation, *g) };
        Ok(())
    })
}
