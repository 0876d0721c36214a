//! Result codes, the per-thread last error, and the panic boundary.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::{Error, ErrorKind};

/// The outcome of a call. The numbers are fixed and never reused: 1–98 classify a library error
/// (new classes get new numbers in that range), 99 is any error without a more specific code, 100
/// and up are errors in the call itself.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// The code for an error class.
    pub fn from_kind(kind: ErrorKind) -> Self {
        #[allow(unreachable_patterns)] // ErrorKind is non_exhaustive: new kinds land in `Other`.
        match kind {
            ErrorKind::NotFound => Self::NotFound,
            ErrorKind::AlreadyExists => Self::AlreadyExists,
            ErrorKind::NotADirectory => Self::NotADirectory,
            ErrorKind::InvalidArgument => Self::InvalidArgument,
            ErrorKind::InvalidName => Self::InvalidName,
            ErrorKind::NameTooLong => Self::NameTooLong,
            ErrorKind::NoSpace => Self::NoSpace,
            ErrorKind::Busy => Self::Busy,
            ErrorKind::PermissionDenied => Self::PermissionDenied,
            ErrorKind::Unsupported => Self::Unsupported,
            ErrorKind::CrossDevice => Self::CrossDevice,
            ErrorKind::Cancelled => Self::Cancelled,
            ErrorKind::ZfsUnavailable => Self::ZfsUnavailable,
            ErrorKind::Io => Self::Io,
            ErrorKind::SnapshotHasClones => Self::SnapshotHasClones,
            ErrorKind::SnapshotHeld => Self::SnapshotHeld,
            ErrorKind::Damaged => Self::Damaged,
            ErrorKind::Incomplete => Self::Incomplete,
            _ => Self::Other,
        }
    }

    /// The code with this number, if there is one.
    pub fn from_u32(n: u32) -> Option<Self> {
        ALL.iter().copied().find(|r| *r as u32 == n)
    }

    /// The C constant's name, NUL-terminated.
    fn name_nul(self) -> &'static str {
        match self {
            Self::Ok => "GOLDCLONE_RESULT_OK\0",
            Self::NotFound => "GOLDCLONE_RESULT_NOT_FOUND\0",
            Self::AlreadyExists => "GOLDCLONE_RESULT_ALREADY_EXISTS\0",
            Self::NotADirectory => "GOLDCLONE_RESULT_NOT_A_DIRECTORY\0",
            Self::InvalidArgument => "GOLDCLONE_RESULT_INVALID_ARGUMENT\0",
            Self::InvalidName => "GOLDCLONE_RESULT_INVALID_NAME\0",
            Self::NameTooLong => "GOLDCLONE_RESULT_NAME_TOO_LONG\0",
            Self::NoSpace => "GOLDCLONE_RESULT_NO_SPACE\0",
            Self::Busy => "GOLDCLONE_RESULT_BUSY\0",
            Self::PermissionDenied => "GOLDCLONE_RESULT_PERMISSION_DENIED\0",
            Self::Unsupported => "GOLDCLONE_RESULT_UNSUPPORTED\0",
            Self::CrossDevice => "GOLDCLONE_RESULT_CROSS_DEVICE\0",
            Self::Cancelled => "GOLDCLONE_RESULT_CANCELLED\0",
            Self::ZfsUnavailable => "GOLDCLONE_RESULT_ZFS_UNAVAILABLE\0",
            Self::Io => "GOLDCLONE_RESULT_IO\0",
            Self::SnapshotHasClones => "GOLDCLONE_RESULT_SNAPSHOT_HAS_CLONES\0",
            Self::SnapshotHeld => "GOLDCLONE_RESULT_SNAPSHOT_HELD\0",
            Self::Damaged => "GOLDCLONE_RESULT_DAMAGED\0",
            Self::Incomplete => "GOLDCLONE_RESULT_INCOMPLETE\0",
            Self::Other => "GOLDCLONE_RESULT_OTHER\0",
            Self::NullParameter => "GOLDCLONE_RESULT_NULL_PARAMETER\0",
            Self::InvalidHandle => "GOLDCLONE_RESULT_INVALID_HANDLE\0",
            Self::BufferTooSmall => "GOLDCLONE_RESULT_BUFFER_TOO_SMALL\0",
            Self::Panic => "GOLDCLONE_RESULT_PANIC\0",
        }
    }
}

const ALL: [goldclone_result; 24] = [
    goldclone_result::Ok,
    goldclone_result::NotFound,
    goldclone_result::AlreadyExists,
    goldclone_result::NotADirectory,
    goldclone_result::InvalidArgument,
    goldclone_result::InvalidName,
    goldclone_result::NameTooLong,
    goldclone_result::NoSpace,
    goldclone_result::Busy,
    goldclone_result::PermissionDenied,
    goldclone_result::Unsupported,
    goldclone_result::CrossDevice,
    goldclone_result::Cancelled,
    goldclone_result::ZfsUnavailable,
    goldclone_result::Io,
    goldclone_result::SnapshotHasClones,
    goldclone_result::SnapshotHeld,
    goldclone_result::Damaged,
    goldclone_result::Incomplete,
    goldclone_result::Other,
    goldclone_result::NullParameter,
    goldclone_result::InvalidHandle,
    goldclone_result::BufferTooSmall,
    goldclone_result::Panic,
];

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
    let name = catch_unwind(|| goldclone_result::from_u32(code).map(goldclone_result::name_nul))
        .ok()
        .flatten()
        .unwrap_or("GOLDCLONE_RESULT_UNKNOWN\0");
    name.as_ptr().cast()
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
        for r in ALL {
            assert_eq!(goldclone_result::from_u32(r as u32), Some(r));
            assert!(r.name_nul().starts_with("GOLDCLONE_RESULT_"));
            assert!(r.name_nul().ends_with('\0'));
        }
        assert_eq!(goldclone_result::from_u32(7777), None);
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
