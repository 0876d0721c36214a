//! The tree copy, with a progress callback on the calling thread and cancellation.

use std::ffi::{c_char, c_void};
use std::sync::mpsc;
use std::time::Duration;

use super::args;
use super::error::{goldclone_result, Failure};
use super::handle::{self, Object};
use crate::copy::{copy_tree, CancelToken, CopyOptions, CopyStats, Progress};

/// A cancellation flag for copies, settable from any thread. Opaque; free with
/// `goldclone_cancel_free`.
pub struct goldclone_cancel {
    _private: [u8; 0],
}

/// Counters passed to a progress callback.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct goldclone_progress {
    /// Entries (files, directories, links, ...) copied so far.
    pub entries: u64,
    /// File bytes copied (or shared by reflink) so far.
    pub bytes: u64,
    /// Entries in the source tree; valid when `totals_known`.
    pub total_entries: u64,
    /// File bytes in the source tree; valid when `totals_known`.
    pub total_bytes: u64,
    /// Whether the totals are known yet (only with `count_totals`).
    pub totals_known: bool,
    /// Set on the last call, made after the copy succeeded; its return value is ignored.
    pub finished: bool,
}

/// A progress callback. Called on the thread that called `goldclone_copy_tree` (or a
/// `goldclone_cache_*_with` call; "the copy" below is then the operation): once before
/// the copy starts, every `progress_interval_ms` while it runs, and once after it succeeded
/// (`finished` set; its return value is ignored). Return 0 to go on, anything else to cancel the copy (which then fails with
/// CANCELLED); once the copy is cancelled (by the callback or a cancel handle) the callback is
/// not called again. `progress` is valid only during the call. Must not unwind (no C++ exceptions, no
/// Go panics).
pub type goldclone_progress_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, progress: *const goldclone_progress) -> i32,
>;

/// How to copy. Fill with `goldclone_copy_options_init` first, then change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct goldclone_copy_options {
    /// Worker threads, at most 1024; 0 adapts: one per CPU while the source is read from memory,
    /// twice that (4 to 32) while it is read from storage.
    pub threads: u32,
    /// `syncfs` the destination before the final rename.
    pub sync: bool,
    /// Walk the source alongside the copy to learn the totals for progress reports.
    pub count_totals: bool,
    /// Files smaller than this many bytes are written instead of reflinked (0: clone all).
    pub clone_min_size: u64,
    /// Progress callback, or NULL.
    pub progress: goldclone_progress_fn,
    /// Passed to `progress` unchanged.
    pub progress_user_data: *mut c_void,
    /// Milliseconds between progress calls; 0 means 100.
    pub progress_interval_ms: u32,
    /// A cancel handle whose cancellation stops the copy, or NULL.
    pub cancel: *const goldclone_cancel,
}

impl Default for goldclone_copy_options {
    fn default() -> Self {
        goldclone_copy_options {
            threads: 0,
            sync: false,
            count_totals: false,
            clone_min_size: 0,
            progress: None,
            progress_user_data: std::ptr::null_mut(),
            progress_interval_ms: 0,
            cancel: std::ptr::null(),
        }
    }
}

pub(crate) fn cancel_token(c: *const goldclone_cancel) -> Result<CancelToken, Failure> {
    handle::get(c, "goldclone_cancel", |o| match o {
        Object::Cancel(t) => Some(t.clone()),
        _ => None,
    })
}

/// A new cancel handle, not cancelled, in `*out`.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cancel_new(out: *mut *mut goldclone_cancel) -> goldclone_result {
    ffi_body!("goldclone_cancel_new", {
        args::require(out, "out")?;
        let h = handle::register(Object::Cancel(CancelToken::new()));
        // SAFETY: non-NULL (checked), writable by the caller's promise.
        unsafe { args::store(out, h) };
        Ok(())
    })
}

/// Cancel: every copy using this handle stops soon and fails with CANCELLED. Any thread may
/// call it, also while a copy is running; cancelling twice is fine.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cancel_cancel(
    cancel: *const goldclone_cancel,
) -> goldclone_result {
    ffi_body!("goldclone_cancel_cancel", {
        cancel_token(cancel)?.cancel();
        Ok(())
    })
}

/// Whether the handle was cancelled, in `*out`.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cancel_is_cancelled(
    cancel: *const goldclone_cancel,
    out: *mut bool,
) -> goldclone_result {
    ffi_body!("goldclone_cancel_is_cancelled", {
        args::require(out, "out")?;
        let cancelled = cancel_token(cancel)?.is_cancelled();
        // SAFETY: non-NULL (checked), writable by the caller's promise.
        unsafe { args::store(out, cancelled) };
        Ok(())
    })
}

/// Free a cancel handle. A copy already running with it keeps its own reference. NULL is a
/// no-op.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cancel_free(cancel: *mut goldclone_cancel) -> goldclone_result {
    ffi_body!("goldclone_cancel_free", {
        handle::free(cancel, "goldclone_cancel", |o| matches!(o, Object::Cancel(_)))
    })
}

/// Fill `*opts` with the defaults: no callback, no cancel handle, default threads.
#[no_mangle]
pub unsafe extern "C" fn goldclone_copy_options_init(
    opts: *mut goldclone_copy_options,
) -> goldclone_result {
    // SAFETY: the caller's promise on `opts`, passed on.
    unsafe { args::init_defaults("goldclone_copy_options_init", opts) }
}

/// A caller's progress callback, called on the caller's thread while the work runs on another.
pub(crate) struct Reporter {
    callback: unsafe extern "C" fn(*mut c_void, *const goldclone_progress) -> i32,
    user_data: *mut c_void,
    interval: Duration,
}

impl Reporter {
    pub(crate) fn new(
        callback: unsafe extern "C" fn(*mut c_void, *const goldclone_progress) -> i32,
        user_data: *mut c_void,
        interval_ms: u32,
    ) -> Self {
        let interval = Duration::from_millis(match interval_ms {
            0 => 100,
            ms => u64::from(ms),
        });
        Reporter { callback, user_data, interval }
    }

    fn report(&self, progress: &Progress, finished: bool) -> i32 {
        let snap = snapshot(progress, finished);
        // SAFETY: the caller supplied this function pointer and user data for exactly this
        // use; `snap` outlives the call.
        unsafe { (self.callback)(self.user_data, &snap) }
    }

    /// Run `work` on a thread of its own while this thread reports `progress`: once before,
    /// every interval while it runs, and once after it succeeded (`finished`). A nonzero answer
    /// cancels `token`, decided under its commit lock: a stop is never answered by finished
    /// work. Once `token` is cancelled the callback is not called again. What `work` hands to
    /// its [`OnCaller`] runs on this thread too, between reports.
    pub(crate) fn run<T: Send>(
        &self,
        progress: &Progress,
        token: &CancelToken,
        work: impl FnOnce(&OnCaller<'_>) -> crate::Result<T> + Send,
    ) -> crate::Result<T> {
        token.decide(|| self.report(progress, false) != 0);
        let result = std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel();
            let jobs = tx.clone();
            let spawned = std::thread::Builder::new().name("goldclone-work".into()).spawn_scoped(
                scope,
                move || {
                    let send = move |job: CallerJob| jobs.send(Message::Call(job)).is_ok();
                    let on_caller = OnCaller { send: Some(&send) };
                    // The receiver lives until a result arrives.
                    let _ = tx.send(Message::Done(work(&on_caller)));
                },
            );
            if let Err(e) = spawned {
                return Err(crate::Error::io("spawn the worker thread", "", e));
            }
            loop {
                match rx.recv_timeout(self.interval) {
                    Ok(Message::Done(r)) => break r,
                    Ok(Message::Call(job)) => job(),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // Once cancelled, the caller hears nothing more from this work.
                        if !token.is_cancelled() {
                            token.decide(|| self.report(progress, false) != 0);
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        // The worker panicked; the scope re-raises it on exit.
                        break Err(crate::Error::Cancelled);
                    }
                }
            }
        });
        if result.is_ok() && !token.is_cancelled() {
            self.report(progress, true);
        }
        result
    }
}

/// Something to run on the caller's thread.
pub(crate) type CallerJob = Box<dyn FnOnce() + Send>;

enum Message<T> {
    Done(crate::Result<T>),
    Call(CallerJob),
}

/// Runs the caller's callbacks (a promote's edit) on the caller's thread: the thread a C
/// caller's thread-local state and a Go caller's goroutine belong to. With a [`Reporter`] the
/// work runs on a thread of its own and hands them over; without one it runs on the caller's
/// thread already.
pub(crate) struct OnCaller<'a> {
    send: Option<&'a (dyn Fn(CallerJob) -> bool + Sync)>,
}

impl OnCaller<'_> {
    /// Work that runs on the caller's thread itself.
    pub(crate) const HERE: OnCaller<'static> = OnCaller { send: None };

    /// Run `f` on the caller's thread and wait for its value; `None` if that thread no longer
    /// listens (it cannot happen while the work runs).
    pub(crate) fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let Some(send) = self.send else { return Some(f()) };
        let (tx, rx) = mpsc::sync_channel(1);
        if !send(Box::new(move || {
            let _ = tx.send(f());
        })) {
            return None;
        }
        rx.recv().ok()
    }
}

fn snapshot(p: &Progress, finished: bool) -> goldclone_progress {
    let totals = p.totals();
    goldclone_progress {
        entries: p.entries(),
        bytes: p.bytes(),
        total_entries: totals.map_or(0, |t| t.0),
        total_bytes: totals.map_or(0, |t| t.1),
        totals_known: totals.is_some(),
        finished,
    }
}

/// Copy the directory tree `src` to `dst` exactly (`cp -a` semantics, reflinked where
/// possible). `dst` must not exist; its parent must. Paths are NUL-terminated bytes. `opts` may
/// be NULL (defaults); `stats` may be NULL. On any error nothing is left at `dst`.
///
/// Errors: NOT_FOUND (src), NOT_A_DIRECTORY, ALREADY_EXISTS (dst), INVALID_ARGUMENT (dst inside
/// src, too many threads), NO_SPACE, CANCELLED, IO.
#[no_mangle]
pub unsafe extern "C" fn goldclone_copy_tree(
    src: *const c_char,
    dst: *const c_char,
    opts: *const goldclone_copy_options,
    stats: *mut CopyStats,
) -> goldclone_result {
    ffi_body!("goldclone_copy_tree", {
        // SAFETY: the caller passes NUL-terminated strings or NULL.
        let src = unsafe { args::path(src, "src") }?;
        // SAFETY: as above.
        let dst = unsafe { args::path(dst, "dst") }?;
        let o = if opts.is_null() {
            goldclone_copy_options::default()
        } else {
            // SAFETY: non-NULL, and the caller promises it points to an initialized
            // goldclone_copy_options (filled by goldclone_copy_options_init). Copy: it is POD.
            unsafe { opts.read() }
        };
        let cancel = if o.cancel.is_null() { None } else { Some(cancel_token(o.cancel)?) };
        let mut copy_opts = CopyOptions {
            threads: o.threads as usize,
            progress: None,
            cancel,
            sync: o.sync,
            count_totals: o.count_totals,
            clone_min_size: o.clone_min_size,
        };
        let result = match o.progress {
            None => copy_tree(src, dst, &copy_opts),
            Some(callback) => {
                let reporter =
                    Reporter::new(callback, o.progress_user_data, o.progress_interval_ms);
                let progress = Progress::new();
                // The callback's stop cancels this copy only, never the caller's handle (which
                // other copies may share); the caller's cancel still reaches this copy.
                let token =
                    copy_opts.cancel.as_ref().map_or_else(CancelToken::new, CancelToken::child);
                copy_opts.cancel = Some(token.clone());
                copy_opts.progress = Some(progress.clone());
                let copy_opts = &copy_opts;
                reporter.run(&progress, &token, |_| copy_tree(src, dst, copy_opts))
            }
        };
        let s = result?;
        // SAFETY: NULL or writable by the caller's promise.
        unsafe { args::store(stats, s) };
        Ok(())
    })
}
