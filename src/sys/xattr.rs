//! Extended attributes: list, get and set, on open file descriptors and on paths without
//! following a final symlink (symlinks and device nodes cannot be opened for xattr calls).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Call `f(buf_ptr, buf_len)` the way the xattr calls want: first with a zero-length buffer to
/// learn the size, then with a buffer that large, again if the value grew in between (ERANGE).
fn sized_call(mut f: impl FnMut(*mut libc::c_void, usize) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    loop {
        let len = f(std::ptr::null_mut(), 0);
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; len as usize];
        let got = f(buf.as_mut_ptr().cast(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
}

/// Split the NUL-separated name list the kernel returns.
fn split_names(list: Vec<u8>) -> Vec<CString> {
    list.split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| CString::new(n).expect("split on NUL leaves no NUL"))
        .collect()
}

/// Names of all extended attributes of an open file (every namespace the caller may read).
pub fn flist(fd: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    // SAFETY: `fd` is open; the kernel writes at most `len` bytes into `ptr`, which `sized_call`
    // allocated with that length (or passes NULL with length 0 to ask for the size).
    sized_call(|ptr, len| unsafe { libc::flistxattr(fd.as_raw_fd(), ptr.cast(), len) })
        .map(split_names)
}

/// Value of one extended attribute of an open file.
pub fn fget(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    // SAFETY: as for `flist`; `name` is NUL-terminated.
    sized_call(|ptr, len| unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), ptr, len) })
}

/// Set one extended attribute of an open file (create or replace).
pub fn fset(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `fd` is open; `name` is NUL-terminated; the kernel reads `value.len()` bytes.
    let rc = unsafe {
        libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Names of all extended attributes of `path`, not following a final symlink.
pub fn llist(path: &CStr) -> io::Result<Vec<CString>> {
    // SAFETY: `path` is NUL-terminated; buffer handling as for `flist`.
    sized_call(|ptr, len| unsafe { libc::llistxattr(path.as_ptr(), ptr.cast(), len) })
        .map(split_names)
}

/// Value of one extended attribute of `path`, not following a final symlink.
pub fn lget(path: &CStr, name: &CStr) -> io::Result<Vec<u8>> {
    // SAFETY: both strings are NUL-terminated; buffer handling as for `flist`.
    sized_call(|ptr, len| unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), ptr, len) })
}

/// Set one extended attribute of `path`, not following a final symlink.
pub fn lset(path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated; the kernel reads `value.len()` bytes of `value`.
    let rc = unsafe {
        libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Remove one extended attribute of an open file.
pub fn fremove(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: `fd` is open; `name` is NUL-terminated.
    let rc = unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
