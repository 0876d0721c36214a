//! The export wrapper.
//!
//! cbindgen reads signatures without expanding macros, so each export is written out as
//! `#[no_mangle] pub unsafe extern "C" fn ...` and only its body goes through [`ffi_body!`]:
//! the body runs under `catch_unwind`, returns `Result<(), Failure>`, and the outcome becomes the
//! thread's last error and the returned `goldclone_result`.

/// Wrap an export's body (a block evaluating to `FfiResult`, where `?` works) in the panic
/// boundary. The first argument names the function for panic messages.
macro_rules! ffi_body {
    ($name:literal, $body:block) => {
        $crate::ffi::error::boundary($name, move || -> $crate::ffi::error::FfiResult { $body })
    };
}
