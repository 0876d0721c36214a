//! Extended attributes: list, get and set, on open file descriptors and on paths without
//! following a final symlink (symlinks and device nodes cannot be opened for xattr calls).
//!
//! rustix makes the calls; what it leaves to the caller is the size dance: ask for the size,
//! allocate, and ask again if the value grew in between (ERANGE).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::BorrowedFd;

use rustix::fs::XattrFlags;

/// Learn the size with `query`, then `call` with a buffer that large, again if the value grew
/// in between (ERANGE). (rustix answers an empty buffer with 0, not the size: the size is
/// `query`'s.)
fn sized(
    query: impl Fn() -> rustix::io::Result<usize>,
    mut call: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Vec<u8>> {
    loop {
        let len = query()?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; len];
        match call(&mut buf) {
            Ok(got) => {
                buf.truncate(got);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
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
    sized(|| rustix::fs::flistxattr_query(fd), |buf| rustix::fs::flistxattr(fd, buf))
        .map(split_names)
}

/// Value of one extended attribute of an open file.
pub fn fget(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    sized(|| rustix::fs::fgetxattr_query(fd, name), |buf| rustix::fs::fgetxattr(fd, name, buf))
}

/// Set one extended attribute of an open file (create or replace).
pub fn fset(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty())?)
}

/// Names of all extended attributes of `path`, not following a final symlink.
pub fn llist(path: &CStr) -> io::Result<Vec<CString>> {
    sized(|| rustix::fs::llistxattr_query(path), |buf| rustix::fs::llistxattr(path, buf))
        .map(split_names)
}

/// Value of one extended attribute of `path`, not following a final symlink.
pub fn lget(path: &CStr, name: &CStr) -> io::Result<Vec<u8>> {
    sized(|| rustix::fs::lgetxattr_query(path, name), |buf| rustix::fs::lgetxattr(path, name, buf))
}

/// Set one extended attribute of `path`, not following a final symlink.
pub fn lset(path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::lsetxattr(path, name, value, XattrFlags::empty())?)
}

/// Remove one extended attribute of an open file.
pub fn fremove(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::fremovexattr(fd, name)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;

    /// Set, list, get and remove through both the fd and the path calls. (The copy and the
    /// tree comparison both use these, so a bug here would hide from the fidelity tests.)
    #[test]
    fn round_trip_on_fd_and_path() {
        // The loop XFS where the suites have it (user xattrs always work there), else /tmp.
        let on_xfs = std::env::var_os("GOLDCLONE_TEST_XFS");
        let base = on_xfs.clone().map_or_else(std::env::temp_dir, std::path::PathBuf::from);
        let dir = base.join(format!("goldclone-xattr-{}", crate::sys::unique_suffix()));
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("f");
        let f = std::fs::File::create(&file).unwrap();
        let name = c"user.goldclone.test";
        let big = vec![7u8; 3000];
        match fset(f.as_fd(), name, &big) {
            // tmpfs before 6.6 and some containers refuse user xattrs: nothing to check there.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) && on_xfs.is_none() => {
                let _ = std::fs::remove_dir_all(&dir);
                return;
            }
            r => r.unwrap(),
        }
        assert!(flist(f.as_fd()).unwrap().iter().any(|n| n.as_c_str() == name));
        assert_eq!(fget(f.as_fd(), name).unwrap(), big);
        let path = std::ffi::CString::new(file.as_os_str().as_bytes()).unwrap();
        assert!(llist(&path).unwrap().iter().any(|n| n.as_c_str() == name));
        assert_eq!(lget(&path, name).unwrap(), big);
        lset(&path, name, b"small").unwrap();
        assert_eq!(fget(f.as_fd(), name).unwrap(), b"small");
        fremove(f.as_fd(), name).unwrap();
        assert!(!flist(f.as_fd()).unwrap().iter().any(|n| n.as_c_str() == name));
        assert_eq!(fget(f.as_fd(), name).unwrap_err().raw_os_error(), Some(libc::ENODATA));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
