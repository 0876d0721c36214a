//! The C ABI: `goldclone_*` functions over opaque handles, declared in `include/goldclone.h`
//! (generated from this module by cbindgen; `tests/c/header-check.sh` fails on drift).
//!
//! The conventions every export follows (docs/C-API.md is the long form):
//!
//! * **Results.** Every function that can fail returns a [`goldclone_result`] with a fixed
//!   number; `GOLDCLONE_RESULT_OK` is 0. On failure the calling thread's *last error* holds a
//!   message and the errno (if the kernel gave one): [`goldclone_last_error_message`],
//!   [`goldclone_last_error_errno`]. A successful call clears it.
//! * **Panics** never cross the boundary: each body runs under `catch_unwind` and a panic becomes
//!   `GOLDCLONE_RESULT_PANIC` with the panic message as the last error.
//! * **NULL** for a required pointer is `GOLDCLONE_RESULT_NULL_PARAMETER`, never a crash.
//! * **Handles** are opaque pointers owned by the caller, released with their `*_free` function.
//!   The library never dereferences a handle pointer: handles are looked up in a registry, so a
//!   freed, foreign or wrong-type pointer is `GOLDCLONE_RESULT_INVALID_HANDLE`.
//! * **Strings in** are NUL-terminated. Paths are bytes (any encoding); project and session ids
//!   must be UTF-8.
//! * **Strings out** go into a caller buffer `(char *buf, size_t buf_len, size_t *out_len)`:
//!   `*out_len` receives the string's length without the NUL; a buffer shorter than
//!   `*out_len + 1` gives `GOLDCLONE_RESULT_BUFFER_TOO_SMALL` (with a truncated, NUL-terminated
//!   prefix in `buf` when `buf_len > 0`).
//! * **Threads.** Every function may be called from any thread; a `goldclone_cache` may be used
//!   from many threads at once. The last error is per thread.
//!
//! Every export is an `unsafe extern "C" fn`: the caller promises that each non-NULL pointer
//! points to what its type says (a NUL-terminated string, `buf_len` writable bytes, a writable
//! `T`), for the duration of the call. That is the one safety contract, stated here once instead
//! of on each function.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

#[macro_use]
mod macros;
mod args;
mod cache;
mod copy;
mod detect;
mod error;
mod handle;
mod log;
mod transfer;

pub use cache::*;
pub use copy::*;
pub use detect::*;
pub use error::*;
pub use handle::goldclone_debug_live_handles;
pub use log::*;
pub use transfer::*;

use std::ffi::c_char;

/// Version of the C ABI described by `include/goldclone.h`. Bumped on any incompatible change;
/// compare with [`goldclone_abi_version`] at run time. The header's `#define` of the same name
/// is written by `cbindgen.toml` (`after_includes`); a unit test keeps the two equal.
pub const GOLDCLONE_ABI_VERSION: u32 = 4;

/// A buffer of this many bytes holds any path the library returns (Linux `PATH_MAX`). Also a
/// `#define` in `cbindgen.toml`, checked by the same test.
pub const GOLDCLONE_PATH_BUF_SIZE: usize = 4096;

/// The library version, e.g. `"0.1.0"`: a static NUL-terminated string, never freed.
#[no_mangle]
pub extern "C" fn goldclone_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The ABI version the library was built with; equals `GOLDCLONE_ABI_VERSION` of a matching
/// header.
#[no_mangle]
pub extern "C" fn goldclone_abi_version() -> u32 {
    GOLDCLONE_ABI_VERSION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_constants_match() {
        let toml = include_str!("../../cbindgen.toml");
        assert!(toml.contains(&format!("#define GOLDCLONE_ABI_VERSION {GOLDCLONE_ABI_VERSION}\n")));
        assert!(
            toml.contains(&format!("#define GOLDCLONE_PATH_BUF_SIZE {GOLDCLONE_PATH_BUF_SIZE}"))
        );
    }

    #[test]
    fn version_is_nul_terminated() {
        // SAFETY: goldclone_version returns a static NUL-terminated string.
        let v = unsafe { std::ffi::CStr::from_ptr(goldclone_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
