//! Result codes, the per-thread last error, and the panic boundary.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::sync::OnceLock;

use std::panic::{catch_unwind, AssertUnwindSafe};
use strum::VariantArray;

use crate::{Error, ErrorKind};

// The one list of codes: the header's constants are generated from it, the Go package takes
// its constants from the header, `goldclone_result::from_kind` maps an `ErrorKind` to the code
// of the same name, and a test checks docs/C-API.md's table against it.
/// The outcome of a call. The numbers are fixed and never reused: 1–98 classify a library error
/// (new classes get new numbers in that range), 99 is any error without a more specific code, 100
/// and up are errors in the call itself.
#[repr(u32)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::FromRepr,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum goldclone_result {
    /// Success.
    Ok = 0,
    /// A path, project, session, dataset or snapshot does not exist.
    NotFound = 1,
    /// Something that must not exist yet already does (a copy destination, a session).
    AlreadyExists = 2,
    /// A path that must be a directory is not one.
    NotADirectory = 3,
    /// An argument is unusable (destination inside source, an option out of range, an index
    /// past the end).
    InvalidArgument = 4,
    /// A name (project, session, dataset) was rejected, including a name that is not UTF-8.
    InvalidName = 5,
    /// A name or path is too long.
    NameTooLong = 6,
    /// No space left, or a quota exceeded.
    NoSpace = 7,
    /// Busy: a session still in use, a dataset mounted or held.
    Busy = 8,
    /// Permission denied.
    PermissionDenied = 9,
    /// The filesystem or backend cannot do it.
    Unsupported = 10,
    /// Two objects are on different filesystems or pools.
    CrossDevice = 11,
    /// Cancelled through a `goldclone_cancel` or a progress callback.
    Cancelled = 12,
    /// ZFS (libzfs_core, /dev/zfs) is not available on this host.
    ZfsUnavailable = 13,
    /// Any other I/O error; see the errno.
    Io = 14,
    /// A ZFS snapshot cannot be destroyed: clones depend on it.
    SnapshotHasClones = 15,
    /// A ZFS snapshot cannot be destroyed: it has user holds.
    SnapshotHeld = 16,
    /// On-disk state is not what goldclone recorded (corrupt metadata, a replaced tree, a
    /// hostile journal entry); nothing was changed.
    Damaged = 17,
    /// The operation took effect in part and cannot be undone; the next open or gc finishes it.
    Incomplete = 18,
    /// A file the library reads (a mount table, a tool's output) could not be parsed.
    Parse = 19,
    /// A promote's edit callback failed (returned nonzero); nothing was committed.
    EditFailed = 20,
    /// A send/receive stream is truncated, corrupt, or of a newer format; nothing of it was
    /// committed.
    BadStream = 21,
    /// An error without a more specific code (a newer library error class).
    Other = 99,
    /// A required pointer argument was NULL.
    NullParameter = 100,
    /// A handle that is not live: freed, never returned by this library, or of another type.
    InvalidHandle = 101,
    /// An output buffer is too small; `*out_len` holds the length needed (without the NUL).
    BufferTooSmall = 102,
    /// The library panicked (a bug); the last error message says where.
    Panic = 103,
}

impl goldclone_result {
    /// The code for an error class: the code of the same name. Every [`ErrorKind`] has one (a
    /// test checks it); `Other` is for kinds newer than this list.
    pub fn from_kind(kind: ErrorKind) -> Self {
        let name: &'static str = kind.into();
        name.parse().unwrap_or(Self::Other)
    }

    /// The code with this number, if there is one.
    pub fn from_u32(n: u32) -> Option<Self> {
        Self::from_repr(n)
    }

    /// The constant's name without the `GOLDCLONE_RESULT_` prefix, e.g. `"NOT_FOUND"`.
    pub fn short_name(self) -> &'static str {
        self.into()
    }

    /// The C constant's name (`"GOLDCLONE_RESULT_NOT_FOUND"`), NUL-terminated, static.
    fn c_name(self) -> &'static CStr {
        static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
        let names = NAMES.get_or_init(|| {
            let name = |r: &Self| format!("GOLDCLONE_RESULT_{}", r.short_name());
            Self::VARIANTS.iter().map(|r| &*String::leak(name(r))).collect()
        });
        let index = Self::VARIANTS.iter().position(|r| *r == self).unwrap_or(0);
        super::args::static_name(names[index])
    }
}

/// A failed call: what the caller gets back and what the last error records.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) code: goldclone_result,
    pub(crate) errno: i32,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: goldclone_result, message: impl Into<String>) -> Self {
        Failure { code, errno: 0, message: message.into() }
    }

    pub(crate) fn null(param: &str) -> Self {
        Self::new(goldclone_result::NullParameter, format!("{param} must not be NULL"))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure {
            code: goldclone_result::from_kind(e.kind()),
            errno: e.errno().unwrap_or(0),
            message: e.to_string(),
        }
    }
}

/// What an export body returns.
pub(crate) type FfiResult = Result<(), Failure>;

thread_local! {
    static LAST_ERROR: RefCell<Option<Failure>> = const { RefCell::new(None) };
}

fn set_last(f: Option<Failure>) {
    // `try_with`: during thread teardown the slot may be gone; then there is no one to tell.
    let _ = LAST_ERROR.try_with(|l| *l.borrow_mut() = f);
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Run an export's body: catch a panic, record the outcome as the thread's last error, return
/// the code.
pub(crate) fn boundary(name: &str, body: impl FnOnce() -> FfiResult) -> goldclone_result {
    let outcome = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(payload) => Err(Failure::new(
            goldclone_result::Panic,
            format!("panic in {name}: {}", panic_message(&*payload)),
        )),
    };
    match outcome {
        Ok(()) => {
            set_last(None);
            goldclone_result::Ok
        }
        Err(f) => {
            let code = f.code;
            set_last(Some(f));
            code
        }
    }
}

/// The constant's name for a result code (`"GOLDCLONE_RESULT_NOT_FOUND"`), or
/// `"GOLDCLONE_RESULT_UNKNOWN"` for a number that is no code: a static NUL-terminated string,
/// never freed. Does not touch the last error.
#[no_mangle]
pub extern "C" fn goldclone_result_name(code: u32) -> *const c_char {
    let name = catch_unwind(|| goldclone_result::from_u32(code).map(goldclone_result::c_name))
        .ok()
        .flatten()
        .unwrap_or(c"GOLDCLONE_RESULT_UNKNOWN");
    name.as_ptr()
}

/// The code of the calling thread's last failed call, `GOLDCLONE_RESULT_OK` if the last call
/// succeeded (or none was made). Does not touch the last error.
#[no_mangle]
pub extern "C" fn goldclone_last_error_code() -> goldclone_result {
    catch_unwind(|| LAST_ERROR.try_with(|l| l.borrow().as_ref().map(|f| f.code)).ok().flatten())
        .ok()
        .flatten()
        .unwrap_or(goldclone_result::Ok)
}

/// The errno behind the calling thread's last failed call, 0 if there is none. Does not touch
/// the last error.
#[no_mangle]
pub extern "C" fn goldclone_last_error_errno() -> i32 {
    catch_unwind(|| {
        LAST_ERROR.try_with(|l| l.borrow().as_ref().map_or(0, |f| f.errno)).unwrap_or(0)
    })
    .unwrap_or(0)
}

/// Copy the message of the calling thread's last failed call into `buf` (NUL-terminated; the
/// empty string when the last call succeeded). `*out_len` (if `out_len` is not NULL) receives
/// the message length without the NUL. Returns `GOLDCLONE_RESULT_BUFFER_TOO_SMALL` if `buf_len`
/// is less than that length + 1; `buf` then holds as much of the message as fits, NUL-terminated
/// (nothing if `buf_len` is 0). `buf` may be NULL only when `buf_len` is 0. Does not touch the
/// last error, whatever it returns.
#[no_mangle]
pub unsafe extern "C" fn goldclone_last_error_message(
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> goldclone_result {
    let message = LAST_ERROR
        .try_with(|l| l.borrow().as_ref().map(|f| f.message.clone()))
        .ok()
        .flatten()
        .unwrap_or_default();
    // SAFETY: the caller promises `buf` has `buf_len` writable bytes and `out_len` is NULL or
    // writable, which is write_string's contract.
    let r = catch_unwind(AssertUnwindSafe(|| unsafe {
        super::args::write_string(buf, buf_len, out_len, message.as_bytes())
    }));
    match r {
        Ok(Ok(())) => goldclone_result::Ok,
        Ok(Err(f)) => f.code,
        Err(_) => goldclone_result::Panic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_name_and_round_trips() {
        for &r in goldclone_result::VARIANTS {
            assert_eq!(goldclone_result::from_u32(r as u32), Some(r));
            let name = r.c_name().to_str().unwrap();
            assert_eq!(name, format!("GOLDCLONE_RESULT_{}", r.short_name()));
            // SAFETY: goldclone_result_name returns a static NUL-terminated string.
            let exported = unsafe { CStr::from_ptr(goldclone_result_name(r as u32)) };
            assert_eq!(exported.to_str().unwrap(), name);
        }
        assert_eq!(goldclone_result::from_u32(7777), None);
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(goldclone_result_name(7777)) };
        assert_eq!(unknown.to_str().unwrap(), "GOLDCLONE_RESULT_UNKNOWN");
    }

    #[test]
    fn every_error_kind_has_its_own_code() {
        let mut seen = std::collections::HashSet::new();
        for &kind in ErrorKind::VARIANTS {
            let code = goldclone_result::from_kind(kind);
            assert_ne!(code, goldclone_result::Other, "{kind:?} has no code of its name");
            assert!((1..99).contains(&(code as u32)), "{kind:?} -> {code:?} is not a library code");
            assert!(seen.insert(code), "{code:?} taken twice");
        }
        // And back: every library code (1-98) is some kind's.
        for &r in goldclone_result::VARIANTS {
            if (1..99).contains(&(r as u32)) {
                assert!(seen.contains(&r), "{r:?} is no ErrorKind's code");
            }
        }
    }

    /// docs/C-API.md's table lists every code, with its number and name, in order.
    #[test]
    fn the_docs_table_is_the_list_of_codes() {
        let doc = include_str!("../../docs/C-API.md");
        let rows: Vec<(u32, String)> = doc
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let n = cells.get(1)?.parse().ok()?;
                Some((n, cells.get(2)?.trim_matches('`').to_string()))
            })
            .collect();
        let codes: Vec<(u32, String)> = goldclone_result::VARIANTS
            .iter()
            .map(|&r| (r as u32, r.short_name().to_string()))
            .collect();
        assert_eq!(rows, codes, "docs/C-API.md's result table differs from goldclone_result");
    }

    #[test]
    fn boundary_turns_a_panic_into_a_code() {
        let r = boundary("goldclone_test", || panic!("boom"));
        assert_eq!(r, goldclone_result::Panic);
        assert_eq!(goldclone_last_error_code(), goldclone_result::Panic);
        let r = boundary("goldclone_test", || Ok(()));
        assert_eq!(r, goldclone_result::Ok);
        assert_eq!(goldclone_last_error_code(), goldclone_result::Ok);
    }
}
