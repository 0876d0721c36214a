//! Reading arguments from C and writing results back.

use std::ffi::{c_char, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

use super::error::{goldclone_result, Failure};

/// Names (project and session ids) longer than this are rejected here, before the library sees
/// them; the library's own limits are lower.
const NAME_MAX_BYTES: usize = 1024;

/// A NUL-terminated path argument, taken as bytes (any encoding).
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn path<'a>(p: *const c_char, param: &str) -> Result<&'a Path, Failure> {
    if p.is_null() {
        return Err(Failure::null(param));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string living for 'a.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    Ok(Path::new(OsStr::from_bytes(bytes)))
}

/// A NUL-terminated project or session id: UTF-8, at most [`NAME_MAX_BYTES`].
///
/// # Safety
/// As for [`path`].
pub(crate) unsafe fn name<'a>(p: *const c_char, param: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::null(param));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string living for 'a.
    let bytes = unsafe { CStr::from_ptr(p) }.to_bytes();
    if bytes.len() > NAME_MAX_BYTES {
        return Err(Failure::new(
            goldclone_result::NameTooLong,
            format!("{param} is {} bytes long, more than {NAME_MAX_BYTES}", bytes.len()),
        ));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        Failure::new(
            goldclone_result::InvalidName,
            format!("{param} {:?} is not UTF-8 ({e})", String::from_utf8_lossy(bytes)),
        )
    })
}

/// Fail unless an output pointer is non-NULL; check before doing the work it is for.
pub(crate) fn require<T>(p: *mut T, param: &str) -> Result<(), Failure> {
    if p.is_null() {
        Err(Failure::null(param))
    } else {
        Ok(())
    }
}

/// Store `v` through an output pointer that may be NULL (then nothing is stored).
///
/// # Safety
/// `p` is NULL or valid for writing a `T`.
pub(crate) unsafe fn store<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: non-NULL and writable by the caller's promise; `write` does not read or drop
        // the (possibly uninitialized) old value.
        unsafe { p.write(v) };
    }
}

/// The whole of every `goldclone_*_options_init` export, `name`: `*opts` gets `T`'s defaults;
/// NULL_PARAMETER for a NULL `opts`.
///
/// # Safety
/// `opts` is NULL or valid for writing a `T`.
pub(crate) unsafe fn init_defaults<T: Default>(
    name: &'static str,
    opts: *mut T,
) -> crate::ffi::error::goldclone_result {
    crate::ffi::error::boundary(name, move || {
        require(opts, "opts")?;
        // SAFETY: non-NULL (checked), writable by the caller's promise.
        unsafe { store(opts, T::default()) };
        Ok(())
    })
}

/// Check an output string buffer's arguments before the work that produces the string.
pub(crate) fn require_buf(buf: *mut c_char, buf_len: usize) -> Result<(), Failure> {
    if buf.is_null() && buf_len > 0 {
        Err(Failure::null("buf (with buf_len > 0)"))
    } else {
        Ok(())
    }
}

/// Write `s` into a caller buffer, snprintf-style: as much as fits, always NUL-terminated when
/// `buf_len > 0`; `*out_len` (if non-NULL) gets `s.len()`; BUFFER_TOO_SMALL if it did not fit.
///
/// # Safety
/// `buf` is NULL or valid for writing `buf_len` bytes; `out_len` is NULL or writable.
pub(crate) unsafe fn write_string(
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
    s: &[u8],
) -> Result<(), Failure> {
    require_buf(buf, buf_len)?;
    // SAFETY: the caller's promise on `out_len`.
    unsafe { store(out_len, s.len()) };
    if buf_len > 0 {
        let n = s.len().min(buf_len - 1);
        // SAFETY: `buf` is non-NULL (require_buf) with `buf_len` writable bytes; we write `n + 1
        // <= buf_len` bytes; `s` is a Rust slice that cannot overlap a buffer the caller handed
        // us for writing.
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), n);
            buf.add(n).write(0);
        }
    }
    if s.len() < buf_len {
        Ok(())
    } else {
        Err(Failure::new(
            goldclone_result::BufferTooSmall,
            format!("buffer of {buf_len} bytes is too small: {} needed", s.len() + 1),
        ))
    }
}

/// `name` as a static NUL-terminated string, for functions that return a constant's name. The
/// names are the enums' variant names, a few dozen in all: each is made once and kept.
pub(crate) fn static_name(name: &'static str) -> &'static CStr {
    static MADE: Mutex<Vec<(&'static str, &'static CStr)>> = Mutex::new(Vec::new());
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = made.iter().find(|(n, _)| *n == name) {
        return c;
    }
    let c: &'static CStr =
        Box::leak(std::ffi::CString::new(name).unwrap_or_default().into_boxed_c_str());
    made.push((name, c));
    c
}
