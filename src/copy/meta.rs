//! `cp -a` metadata: owner, extended attributes (ACLs are the `system.posix_acl_*` ones), mode
//! including setuid/setgid/sticky, and nanosecond atime/mtime.
//!
//! Order matters and is the same everywhere: owner first (chown clears setuid/setgid), then
//! xattrs (setting an access ACL rewrites the group bits), then the mode, then the times (every
//! earlier step moves ctime, and data writes move mtime).

use std::ffi::CStr;
use std::io;
use std::os::fd::BorrowedFd;

use nix::fcntl::AtFlags;
use nix::sys::stat::{
    fchmod, fchmodat, futimens, utimensat, FchmodatFlags, FileStat, Mode, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, Gid, Uid};

use crate::sys;

/// A failed metadata call: which call, the attribute for xattr calls, and the kernel's answer.
pub(super) struct MetaError {
    pub op: &'static str,
    pub attr: Option<String>,
    pub source: io::Error,
}

impl MetaError {
    fn new(op: &'static str, source: io::Error) -> Self {
        MetaError { op, attr: None, source }
    }
    fn xattr(op: &'static str, name: &CStr, source: io::Error) -> Self {
        MetaError { op, attr: Some(name.to_string_lossy().into_owned()), source }
    }
}

fn nix_err(op: &'static str) -> impl Fn(nix::Error) -> MetaError {
    move |e| MetaError::new(op, io::Error::from(e))
}

fn times(st: &FileStat) -> (TimeSpec, TimeSpec) {
    (TimeSpec::new(st.st_atime, st.st_atime_nsec), TimeSpec::new(st.st_mtime, st.st_mtime_nsec))
}

/// Whether a failed chown may be ignored: an unprivileged caller cannot give files away, and
/// `cp -a` then keeps going with its own ownership (and drops setuid/setgid, below).
fn chown_failure_tolerated(privileged: bool, e: nix::Error) -> bool {
    !privileged && e == nix::Error::EPERM
}

fn mode_after_chown(st: &FileStat, owned: bool) -> Mode {
    let mut mode = st.st_mode & 0o7777;
    if !owned {
        mode &= !(libc::S_ISUID | libc::S_ISGID);
    }
    Mode::from_bits_truncate(mode)
}

/// What a just-created destination file already has, so calls that would change nothing can be
/// skipped: its owner (uid, gid) and, when known, its permission bits.
pub(super) struct Created {
    pub owner: (u32, u32),
    pub mode: Option<u32>,
}

/// Apply `st` and `src`'s xattrs to the open destination `dst` (regular file or directory).
pub(super) fn apply_fd(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    st: &FileStat,
    privileged: bool,
    created: Option<Created>,
) -> Result<(), MetaError> {
    let owner_right = created.as_ref().is_some_and(|c| c.owner == (st.st_uid, st.st_gid));
    let owned = owner_right
        || match fchown(dst, Some(Uid::from_raw(st.st_uid)), Some(Gid::from_raw(st.st_gid))) {
            Ok(()) => true,
            Err(e) if chown_failure_tolerated(privileged, e) => false,
            Err(e) => return Err(MetaError::new("chown", io::Error::from(e))),
        };
    copy_xattrs(
        sys::xattr::flist(src),
        |name| sys::xattr::fget(src, name),
        |name, value| sys::xattr::fset(dst, name, value),
    )?;
    // chmod is needed for setuid/setgid/sticky (never set by create, cleared by chown), for bits
    // the umask took away, and after a chown (which may clear setuid/setgid).
    let mode = mode_after_chown(st, owned);
    let mode_right = owner_right && created.and_then(|c| c.mode) == Some(mode.bits());
    if !mode_right {
        fchmod(dst, mode).map_err(nix_err("chmod"))?;
    }
    let (atime, mtime) = times(st);
    futimens(dst, &atime, &mtime).map_err(nix_err("utimens"))
}

/// Apply `st` and the source's xattrs to entry `name` of the open directory `dst_dir`, an entry
/// that cannot be opened for this (symlink, device node, fifo, socket). `src_path` and
/// `dst_path` are full paths for the path-based xattr calls.
pub(super) fn apply_at(
    dst_dir: BorrowedFd<'_>,
    name: &CStr,
    src_path: &CStr,
    dst_path: &CStr,
    st: &FileStat,
    privileged: bool,
) -> Result<(), MetaError> {
    let is_symlink = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
    let owned = match fchownat(
        dst_dir,
        name,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(()) => true,
        Err(e) if chown_failure_tolerated(privileged, e) => false,
        Err(e) => return Err(MetaError::new("chown", io::Error::from(e))),
    };
    copy_xattrs(
        sys::xattr::llist(src_path),
        |name| sys::xattr::lget(src_path, name),
        |name, value| sys::xattr::lset(dst_path, name, value),
    )?;
    if !is_symlink {
        // Symlink modes are always 0777 on Linux and cannot be changed.
        fchmodat(dst_dir, name, mode_after_chown(st, owned), FchmodatFlags::NoFollowSymlink)
            .or_else(|e| match e {
                // Older kernels refuse AT_SYMLINK_NOFOLLOW outright; this entry is no symlink.
                nix::Error::EOPNOTSUPP | nix::Error::EINVAL => fchmodat(
                    dst_dir,
                    name,
                    mode_after_chown(st, owned),
                    FchmodatFlags::FollowSymlink,
                ),
                e => Err(e),
            })
            .map_err(nix_err("chmod"))?;
    }
    let (atime, mtime) = times(st);
    utimensat(dst_dir, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(nix_err("utimens"))
}

/// Attributes that are another view of metadata copied anyway, or that only the kernel may
/// write; the same list coreutils keeps in /etc/xattr.conf. XFS, for one, lists every ACL a second
/// time as `trusted.SGI_ACL_*` (its on-disk name) to a privileged caller: copied to another
/// filesystem those would become ordinary attributes full of XFS's raw bytes.
pub(crate) fn skipped_xattr(name: &[u8]) -> bool {
    matches!(
        name,
        b"trusted.SGI_ACL_DEFAULT"
            | b"trusted.SGI_ACL_FILE"
            | b"trusted.SGI_CAP_FILE"
            | b"trusted.SGI_MAC_FILE"
            | b"security.evm"
    ) || name.starts_with(b"trusted.SGI_DMI_")
        || name.starts_with(b"xfsroot.")
}

/// Copy every attribute `list` names (but the skipped ones) with `get` and `set`. An attribute
/// removed between list and get is passed over.
fn copy_xattrs(
    list: io::Result<Vec<std::ffi::CString>>,
    get: impl Fn(&CStr) -> io::Result<Vec<u8>>,
    set: impl Fn(&CStr, &[u8]) -> io::Result<()>,
) -> Result<(), MetaError> {
    for name in list.map_err(|e| MetaError::new("listxattr", e))? {
        if skipped_xattr(name.to_bytes()) {
            continue;
        }
        let value = match get(&name) {
            Ok(v) => v,
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(MetaError::xattr("getxattr", &name, e)),
        };
        set(&name, &value).map_err(|e| MetaError::xattr("setxattr", &name, e))?;
    }
    Ok(())
}
