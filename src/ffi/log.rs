//! The log callback: what the library decided and repaired (the `tracing` events of the
//! crate), handed to a C function. Silent until a callback is set; the library never writes to
//! stderr.
//!
//! The first `goldclone_set_log_callback` installs a small `tracing` subscriber as the process's
//! global default (this library's copy of `tracing`: a Rust program linking the rlib installs
//! its own subscriber instead and never calls this).

use std::ffi::{c_char, c_void, CString};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, RwLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

use super::error::goldclone_result;

/// How much a log message matters. The numbers are fixed.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum goldclone_log_level {
    /// Nothing: with `max_level` `OFF` the callback is never called.
    Off = 0,
    /// Something failed and was not handled.
    Error = 1,
    /// Something was left alone or could not be done now (gc's kept and failed items).
    Warn = 2,
    /// A decision or a repair: the backend chosen and why, recovery done at open, what gc
    /// removed, a long wait for a project's lock.
    Info = 3,
    /// Details: fallbacks of the tree copy (reflink refused), each operation's duration.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl goldclone_log_level {
    fn of(level: &Level) -> Self {
        match *level {
            Level::ERROR => Self::Error,
            Level::WARN => Self::Warn,
            Level::INFO => Self::Info,
            Level::DEBUG => Self::Debug,
            Level::TRACE => Self::Trace,
        }
    }
}

/// A log callback: called from any thread of the library (also several at once) with the
/// message's level, its target (`"goldclone::gc"`, `"goldclone::backend"`, ...) and text, both
/// NUL-terminated and valid only during the call. It must return quickly, must not call this
/// library, and must not unwind.
pub type goldclone_log_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        level: goldclone_log_level,
        target: *const c_char,
        message: *const c_char,
    ),
>;

struct Sink {
    callback: unsafe extern "C" fn(*mut c_void, goldclone_log_level, *const c_char, *const c_char),
    user_data: usize,
}

/// The callback, held for reading while it runs: replacing it waits for calls in flight, so
/// after `goldclone_set_log_callback` returns the old one is not running any more.
static SINK: RwLock<Option<Sink>> = RwLock::new(None);
/// The most detailed level passed on (a `goldclone_log_level`); 0 while no callback is set.
static MAX_LEVEL: AtomicU32 = AtomicU32::new(0);
static INSTALL: Once = Once::new();

struct CallbackSubscriber;

/// An event's message and fields as one line.
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl Subscriber for CallbackSubscriber {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Asked each time: the level can change.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event()
            && (goldclone_log_level::of(metadata.level()) as u32)
                <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1) // the library makes no spans; an id is still owed
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut line = Line(String::new());
        event.record(&mut line);
        let (Ok(target), Ok(message)) =
            (CString::new(meta.target()), CString::new(line.0.replace('\0', "\\0")))
        else {
            return;
        };
        let sink = SINK.read().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sink.as_ref() {
            // SAFETY: the caller set this function and user data for exactly this use; both
            // strings outlive the call.
            unsafe {
                (s.callback)(
                    s.user_data as *mut c_void,
                    goldclone_log_level::of(meta.level()),
                    target.as_ptr(),
                    message.as_ptr(),
                )
            }
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Set (or with NULL clear) the log callback, passing on messages up to `max_level`
/// (`GOLDCLONE_LOG_LEVEL_INFO` is a good default). Silent until called; the library never
/// writes to stderr. Returns once calls of the previous callback in flight have finished.
/// INVALID_ARGUMENT for a `max_level` that is not a `goldclone_log_level`.
#[no_mangle]
pub unsafe extern "C" fn goldclone_set_log_callback(
    callback: goldclone_log_fn,
    user_data: *mut c_void,
    max_level: u32,
) -> goldclone_result {
    ffi_body!("goldclone_set_log_callback", {
        if max_level > goldclone_log_level::Trace as u32 {
            return Err(super::error::Failure::new(
                goldclone_result::InvalidArgument,
                format!("{max_level} is not a goldclone_log_level"),
            ));
        }
        INSTALL.call_once(|| {
            // Fails only if this library's tracing already has a global subscriber: then that
            // one gets the events instead.
            let _ = tracing::subscriber::set_global_default(CallbackSubscriber);
        });
        let mut sink = SINK.write().unwrap_or_else(|p| p.into_inner());
        *sink = callback.map(|callback| Sink { callback, user_data: user_data as usize });
        MAX_LEVEL.store(if sink.is_some() { max_level } else { 0 }, Ordering::Relaxed);
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    })
}
