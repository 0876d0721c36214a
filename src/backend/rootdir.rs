//! The cache root, open, and every file operation the lifecycle makes inside it.
//!
//! A path is always resolved beneath the root's directory fd with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`: a symlink where a directory
//! was, a `..` that leaves the root, or a mount point on the way ends the call with an error
//! instead of acting somewhere else. Only the last component of a call that is about a tree's own
//! place (a ZFS session is a mount point) may be a mount; nothing here follows a symlink.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};

use crate::{Context, Error, Result};

/// Resolution of every path below the root: no symlinks, no escape, no mount crossings.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

const DIR: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// What is at a path, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    /// Birth time in nanoseconds since the epoch, where the filesystem records one.
    pub birth: Option<u64>,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// What `statx` says of `name` in `dir` (not following a symlink), birth time included.
pub(crate) fn statx_entry(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<Entry> {
    use rustix::fs::{makedev, StatxFlags};
    let empty = if name.is_empty() { AtFlags::EMPTY_PATH } else { AtFlags::empty() };
    let st = rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW | empty,
        StatxFlags::TYPE | StatxFlags::MODE | StatxFlags::INO | StatxFlags::BTIME,
    )?;
    let birth = StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::BTIME).then(|| {
        (st.stx_btime.tv_sec as u64).wrapping_mul(1_000_000_000) + u64::from(st.stx_btime.tv_nsec)
    });
    Ok(Entry {
        dev: makedev(st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
        mode: u32::from(st.stx_mode),
        birth,
    })
}

/// The open cache root.
#[derive(Debug)]
pub(crate) struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// The parent and final name of a relative path of normal components.
fn split(rel: &Path) -> Result<(&Path, &OsStr)> {
    check_relative(rel)?;
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(Error::InvalidArgument { what: format!("{} has no final name", rel.display()) }),
    }
}

/// Only plain names: no `..`, no `.`, not absolute. Names come from validated ids and our own
/// prefixes, so anything else is a bug or hostile state, never something to resolve.
fn check_relative(rel: &Path) -> Result<()> {
    if rel.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            what: format!("{} is not a plain relative path", rel.display()),
        })
    }
}

impl RootDir {
    /// Open `path` (canonical) as the root.
    pub fn open(path: &Path) -> Result<RootDir> {
        let fd = rustix::fs::open(path, DIR, Mode::empty()).at("open", path)?;
        Ok(RootDir { fd, path: path.to_path_buf() })
    }

    /// The root's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The full path of `rel`, for messages and for calls that take paths (mount(2)).
    pub fn join(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// The root's own fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Open directory `rel` (the root itself for an empty path). NotFound where it is missing;
    /// ELOOP, EXDEV or ENOTDIR where a symlink, a mount point or a file is in the way.
    pub fn dir(&self, rel: &Path) -> Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return rustix::io::fcntl_dupfd_cloexec(&self.fd, 0).at("dup", &self.path);
        }
        check_relative(rel)?;
        rustix::fs::openat2(&self.fd, rel, DIR, Mode::empty(), RESOLVE)
            .at_with("open", || self.join(rel))
    }

    /// The parent directory of `rel`, open, and its final name.
    pub fn parent<'p>(&self, rel: &'p Path) -> Result<(OwnedFd, &'p OsStr)> {
        let (parent, name) = split(rel)?;
        Ok((self.dir(parent)?, name))
    }

    /// What is at `rel`, not following a symlink there; `None` if nothing (or no parent).
    pub fn entry(&self, rel: &Path) -> Result<Option<Entry>> {
        let (parent, name) = split(rel)?;
        let parent_fd = match self.dir(parent) {
            Ok(fd) => fd,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        match statx_entry(parent_fd.as_fd(), name) {
            Ok(e) => Ok(Some(e)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(Error::io("stat", self.join(rel), e)),
        }
    }

    /// Create directory `rel` (mode 0755); `false` if a directory is already there. Its parent
    /// must exist.
    pub fn mkdir(&self, rel: &Path) -> Result<bool> {
        let (parent_fd, name) = self.parent(rel)?;
        match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o755)) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::EXIST) => match statx_entry(parent_fd.as_fd(), name) {
                Ok(e) if e.is_dir() => Ok(false),
                _ => Err(Error::AlreadyExists { path: self.join(rel) }),
            },
            Err(e) => Err(Error::io("mkdir", self.join(rel), e)),
        }
    }

    /// Create `rel` and every missing parent.
    pub fn mkdir_all(&self, rel: &Path) -> Result<()> {
        check_relative(rel)?;
        let mut at = PathBuf::new();
        for c in rel.components() {
            at.push(c);
            self.mkdir(&at)?;
        }
        Ok(())
    }

    /// Remove the empty directory `rel`; `false` if it is missing or not empty.
    pub fn rmdir(&self, rel: &Path) -> Result<bool> {
        let (parent_fd, name) = match self.parent(rel) {
            Ok(p) => p,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(false),
            Err(e) => return Err(e),
        };
        match rustix::fs::unlinkat(&parent_fd, name, AtFlags::REMOVEDIR) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTEMPTY) => Ok(false),
            Err(e) => Err(Error::io("rmdir", self.join(rel), e)),
        }
    }

    /// Names in directory `rel` (none if it does not exist).
    pub fn list(&self, rel: &Path) -> Result<Vec<OsString>> {
        let fd = match self.dir(rel) {
            Ok(fd) => fd,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        list_fd(fd.as_fd(), &self.join(rel))
    }

    /// The content of file `rel`, or `None` if it does not exist.
    pub fn read(&self, rel: &Path) -> Result<Option<Vec<u8>>> {
        let (parent_fd, name) = match self.parent(rel) {
            Ok(p) => p,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&parent_fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(Error::io("open", self.join(rel), e)),
        };
        let st = rustix::fs::fstat(&fd).at_with("stat", || self.join(rel))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::Damaged {
                path: self.join(rel),
                what: "is not a regular file".into(),
            });
        }
        let mut out = Vec::new();
        let mut file = std::fs::File::from(fd);
        io::Read::read_to_end(&mut file, &mut out).at_with("read", || self.join(rel))?;
        Ok(Some(out))
    }

    /// Write `bytes` to `rel` atomically and durably: a temporary file beside it (named
    /// `.<name>.tmp.<unique>`; see [`is_temp_name`]), fsync, rename, fsync of the directory.
    pub fn write_atomic(&self, rel: &Path, bytes: &[u8]) -> Result<()> {
        let (parent_fd, name) = self.parent(rel)?;
        let tmp = self.write_temp(parent_fd.as_fd(), rel, name, bytes)?;
        if let Err(e) = rustix::fs::renameat(&parent_fd, &tmp, &parent_fd, name) {
            let _ = rustix::fs::unlinkat(&parent_fd, &tmp, AtFlags::empty());
            return Err(Error::io("rename", self.join(rel), e));
        }
        self.sync_dir(parent_fd.as_fd(), rel)
    }

    /// Create file `rel` with `bytes`, durably, failing with AlreadyExists if it exists. The
    /// file is written unnamed (O_TMPFILE) and linked to its name when complete, so a process
    /// killed meanwhile leaves nothing; where the filesystem has no O_TMPFILE, a named
    /// temporary file is linked instead (link(2) never replaces).
    pub fn create_new(&self, rel: &Path, bytes: &[u8]) -> Result<()> {
        let (parent_fd, name) = self.parent(rel)?;
        let unnamed = rustix::fs::openat(
            &parent_fd,
            ".",
            OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        );
        let linked = match unnamed {
            Ok(fd) => {
                let mut f = std::fs::File::from(fd);
                io::Write::write_all(&mut f, bytes).at_with("write", || self.join(rel))?;
                f.sync_all().at_with("fsync", || self.join(rel))?;
                // linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH; the /proc link does not.
                let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    proc_path.as_str(),
                    &parent_fd,
                    name,
                    AtFlags::SYMLINK_FOLLOW,
                )
            }
            Err(
                rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL,
            ) => {
                let tmp = self.write_temp(parent_fd.as_fd(), rel, name, bytes)?;
                let linked =
                    rustix::fs::linkat(&parent_fd, &tmp, &parent_fd, name, AtFlags::empty());
                let _ = rustix::fs::unlinkat(&parent_fd, &tmp, AtFlags::empty());
                linked
            }
            Err(e) => return Err(Error::io("create", self.join(rel), e)),
        };
        match linked {
            Ok(()) => self.sync_dir(parent_fd.as_fd(), rel),
            Err(rustix::io::Errno::EXIST) => Err(Error::AlreadyExists { path: self.join(rel) }),
            Err(e) => Err(Error::io("link", self.join(rel), e)),
        }
    }

    /// A new synced temporary file beside `rel` (in the open `parent`) holding `bytes`; its
    /// name. Unique per call: threads and processes may write beside one path at once.
    fn write_temp(
        &self,
        parent: BorrowedFd<'_>,
        rel: &Path,
        name: &OsStr,
        bytes: &[u8],
    ) -> Result<OsString> {
        let tmp = temp_name(name);
        let tmp_path = self.join(rel).with_file_name(&tmp);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(parent, &tmp, flags, Mode::from_raw_mode(0o644))
            .at("create", &tmp_path)?;
        let written = (|| {
            let mut f = std::fs::File::from(fd);
            io::Write::write_all(&mut f, bytes).at("write", &tmp_path)?;
            f.sync_all().at("fsync", &tmp_path)
        })();
        match written {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = rustix::fs::unlinkat(parent, &tmp, AtFlags::empty());
                Err(e)
            }
        }
    }

    fn sync_dir(&self, dir: BorrowedFd<'_>, rel: &Path) -> Result<()> {
        rustix::fs::fsync(dir)
            .map_err(|e| Error::io("fsync", self.join(rel.parent().unwrap_or(Path::new(""))), e))
    }

    /// Remove file `rel` if it exists, durably.
    pub fn remove_file(&self, rel: &Path) -> Result<()> {
        let (parent_fd, name) = match self.parent(rel) {
            Ok(p) => p,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        match rustix::fs::unlinkat(&parent_fd, name, AtFlags::empty()) {
            Ok(()) => self.sync_dir(parent_fd.as_fd(), rel),
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(Error::io("unlink", self.join(rel), e)),
        }
    }

    /// Rename `from` to `to` (both below the root), never replacing anything, durably.
    /// AlreadyExists if `to` exists, NotFound if `from` does not.
    pub fn rename_noreplace(&self, from: &Path, to: &Path) -> Result<()> {
        let (from_fd, from_name) = self.parent(from)?;
        let (to_fd, to_name) = self.parent(to)?;
        match rustix::fs::renameat_with(
            &from_fd,
            from_name,
            &to_fd,
            to_name,
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {
                self.sync_dir(to_fd.as_fd(), to)?;
                self.sync_dir(from_fd.as_fd(), from)
            }
            Err(rustix::io::Errno::EXIST) => Err(Error::AlreadyExists { path: self.join(to) }),
            Err(e) => Err(Error::io("rename", self.join(from), e)),
        }
    }
}

/// Names in the open directory `fd` (at `path`), without `.` and `..`.
pub(crate) fn list_fd(fd: BorrowedFd<'_>, path: &Path) -> Result<Vec<OsString>> {
    let mut dir = rustix::fs::Dir::read_from(fd).at("opendir", path)?;
    let mut out = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry.at("readdir", path)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsString::from_vec(name.to_vec()));
        }
    }
    out.sort();
    Ok(out)
}

/// `.<name>.tmp.<unique>`: the temporary files of [`RootDir::write_atomic`].
fn temp_name(name: &OsStr) -> OsString {
    let mut out = b".".to_vec();
    // Kept within NAME_MAX whatever the name.
    out.extend_from_slice(&name.as_bytes()[..name.len().min(200)]);
    out.extend_from_slice(format!(".tmp.{}", crate::sys::unique_suffix()).as_bytes());
    OsString::from_vec(out)
}

/// Whether `name` is one of [`RootDir::write_atomic`]'s temporary files.
pub(crate) fn is_temp_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b".") && memfind(b, b".tmp.").is_some()
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised_and_bounded() {
        let t = temp_name(OsStr::new("current"));
        assert!(is_temp_name(&t), "{t:?}");
        assert!(!is_temp_name(OsStr::new("current")));
        assert!(!is_temp_name(OsStr::new("a.tmp.1.json")), "an id may contain .tmp.");
        let long = temp_name(OsStr::new(&"x".repeat(255)));
        assert!(long.len() <= 255);
    }

    #[test]
    fn only_plain_relative_paths() {
        for bad in ["../x", "/etc", "a/../b", "./a", ""] {
            assert!(check_relative(Path::new(bad)).is_err() || bad.is_empty(), "{bad}");
        }
        assert!(split(Path::new("")).is_err());
        assert!(check_relative(Path::new("a/b.json")).is_ok());
    }
}
