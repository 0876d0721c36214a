//! Writing a tree as a portable stream: one walk in name order (so the same tree gives the
//! same stream), each directory before its entries, each file's data as the extents
//! SEEK_DATA finds (holes are not sent, and come back as holes).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, OFlags, SeekFrom, Stat};

use super::record::{self, Entry, Kind, RecordWriter};
use super::StreamHeader;
use crate::copy::{CancelToken, Progress};
use crate::{Context, Error, Result};

/// What a tree holds, counted before it is sent: the header's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeCount {
    /// Entries, the root included; every name of a hardlinked file counts.
    pub entries: u64,
    /// Bytes of file data (apparent sizes), a hardlinked file's once.
    pub bytes: u64,
    /// Bytes allocated, a hardlinked file's once.
    pub used: u64,
}

fn full(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(std::ffi::OsStr::from_bytes(rel))
    }
}

fn join(rel: &[u8], name: &CStr) -> Vec<u8> {
    let mut p = rel.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name.to_bytes());
    p
}

fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<OwnedFd> {
    crate::sys::fs::openat_noatime(dir, name, crate::sys::fs::READ_DIR)
}

/// The open directory `dir` opened again, with O_NOATIME: listing it must not change the
/// atime a later send (or the receiver's copy) carries.
fn reopen(dir: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd> {
    open_dir(dir, c".").at("open", path)
}

/// Names in the open directory, sorted.
fn names(dir: BorrowedFd<'_>, path: &Path) -> Result<Vec<CString>> {
    let mut names: Vec<CString> =
        crate::copy::list_entries(dir, path)?.into_iter().map(|(n, _)| n).collect();
    names.sort();
    Ok(names)
}

/// ZFS's `f_type` (`ZFS_SUPER_MAGIC`).
const ZFS_MAGIC: i64 = 0x2fc1_2fc1;

/// Names of the tree's root directory, sorted: on ZFS without the snapshot directory `.zfs`,
/// which a dataset with `snapdir=visible` lists and which is no part of the tree.
fn root_names(root: BorrowedFd<'_>, path: &Path) -> Result<Vec<CString>> {
    let mut list = names(root, path)?;
    // `f_type`'s type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    if rustix::fs::fstatfs(root).is_ok_and(|s| s.f_type as i64 == ZFS_MAGIC) {
        list.retain(|n| n.as_bytes() != b".zfs");
    }
    Ok(list)
}

/// Count the tree at the open directory `root` (at `root_path`, for messages).
pub fn count_tree(root: BorrowedFd<'_>, root_path: &Path) -> Result<TreeCount> {
    let mut c = TreeCount { entries: 1, ..TreeCount::default() };
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(reopen(root, root_path)?, Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let listed = if rel.is_empty() {
            root_names(dir.as_fd(), root_path)?
        } else {
            names(dir.as_fd(), &full(root_path, &rel))?
        };
        for name in listed {
            c.entries += 1;
            let st = rustix::fs::statat(&dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                .at_with("stat", || full(root_path, &join(&rel, &name)))?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let path = join(&rel, &name);
                    let fd =
                        open_dir(dir.as_fd(), &name).at_with("open", || full(root_path, &path))?;
                    stack.push((fd, path));
                }
                FileType::RegularFile => {
                    if st.st_nlink > 1 && !seen.insert((st.st_dev, st.st_ino)) {
                        continue;
                    }
                    c.bytes += st.st_size as u64;
                    c.used += st.st_blocks as u64 * 512;
                }
                _ => {}
            }
        }
    }
    Ok(c)
}

/// Write the tree at the open directory `root` (at `root_path`, for messages) as a stream
/// with `header` to `out`, counting into `progress`, stopped by `cancel`. Returns the bytes
/// written.
pub fn send_tree(
    root: BorrowedFd<'_>,
    root_path: &Path,
    header: &StreamHeader,
    out: &mut dyn Write,
    progress: Option<&Progress>,
    cancel: Option<&CancelToken>,
) -> Result<u64> {
    let json = serde_json::to_vec(header)
        .map_err(|e| Error::InvalidArgument { what: format!("stream header: {e}") })?;
    if let Some(p) = progress {
        p.set_totals(header.entries, header.bytes);
    }
    let mut s = Sender {
        w: RecordWriter::start(out)?,
        root_path,
        links: HashMap::new(),
        progress,
        cancel,
        entries: 0,
        bytes: 0,
        buf: vec![0u8; record::CHUNK],
    };
    s.w.record(record::HEADER, &[&json])?;
    let root = reopen(root, root_path)?;
    let st = rustix::fs::fstat(&root).at("stat", root_path)?;
    s.entry(Vec::new(), Kind::Dir, &st, Vec::new(), Xattrs::Fd(root.as_fd()))?;
    s.entries += 1;
    let mut stack = vec![(root_names(root.as_fd(), root_path)?.into_iter(), root, Vec::new())];
    while let Some((iter, dir, rel)) = stack.last_mut() {
        let Some(name) = iter.next() else {
            stack.pop();
            continue;
        };
        if cancel.is_some_and(CancelToken::is_cancelled) {
            return Err(Error::Cancelled);
        }
        let (dir, path) = (dir.as_fd(), join(rel, &name));
        let next = s.send_entry(dir, &name, path)?;
        s.entries += 1;
        if let Some(p) = progress {
            p.add(1, 0);
        }
        if let Some(next) = next {
            let listed = names(next.0.as_fd(), &full(root_path, &next.1))?;
            stack.push((listed.into_iter(), next.0, next.1));
        }
    }
    let records = s.w.records;
    s.w.record(record::TRAILER, &[&record::trailer(s.entries, s.bytes, records)])?;
    s.w.flush()?;
    Ok(s.w.written)
}

struct Sender<'a, 'w> {
    w: RecordWriter<'w>,
    root_path: &'a Path,
    /// First path of every file with more than one link, by (dev, ino).
    links: HashMap<(u64, u64), Vec<u8>>,
    progress: Option<&'a Progress>,
    cancel: Option<&'a CancelToken>,
    entries: u64,
    bytes: u64,
    buf: Vec<u8>,
}

/// Where an entry's xattrs are read: its open fd, or the `/proc/self/fd` path of an entry
/// that cannot be opened for it (symlink, device node).
enum Xattrs<'f> {
    Fd(BorrowedFd<'f>),
    Path(CString),
}

impl Sender<'_, '_> {
    /// Send `name` of the open `dir`; for a directory, its fd and path, to be walked next.
    fn send_entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: Vec<u8>,
    ) -> Result<Option<(OwnedFd, Vec<u8>)>> {
        let at = || full(self.root_path, &path);
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).at_with("stat", at)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let fd = open_dir(dir, name).at_with("open", at)?;
                let st = rustix::fs::fstat(&fd).at_with("stat", at)?;
                self.entry(path.clone(), Kind::Dir, &st, Vec::new(), Xattrs::Fd(fd.as_fd()))?;
                Ok(Some((fd, path)))
            }
            FileType::RegularFile => {
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)) {
                        let first = first.clone();
                        self.entry(
                            path,
                            Kind::Hardlink,
                            &st,
                            first,
                            Xattrs::Path(CString::default()),
                        )?;
                        return Ok(None);
                    }
                }
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
                let fd = crate::sys::fs::openat_noatime(dir, name, flags).at_with("open", at)?;
                let st = rustix::fs::fstat(&fd).at_with("stat", at)?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    return Err(Error::Damaged {
                        path: at(),
                        what: "changed its kind while it was sent".into(),
                    });
                }
                if st.st_nlink > 1 {
                    self.links.insert((st.st_dev, st.st_ino), path.clone());
                }
                self.entry(path.clone(), Kind::File, &st, Vec::new(), Xattrs::Fd(fd.as_fd()))?;
                self.data(fd.as_fd(), st.st_size as u64, &at())?;
                Ok(None)
            }
            FileType::Symlink => {
                let target =
                    rustix::fs::readlinkat(dir, name, Vec::new()).at_with("readlink", at)?;
                keep_atime(dir, name, &st);
                let xp = crate::copy::entry_path(dir, name, &at())?;
                self.entry(path, Kind::Symlink, &st, target.into_bytes(), Xattrs::Path(xp))?;
                Ok(None)
            }
            FileType::CharacterDevice
            | FileType::BlockDevice
            | FileType::Fifo
            | FileType::Socket => {
                let xp = crate::copy::entry_path(dir, name, &at())?;
                self.entry(path, Kind::Special, &st, Vec::new(), Xattrs::Path(xp))?;
                Ok(None)
            }
            FileType::Unknown => Err(Error::Unsupported {
                what: format!("{}: unknown file type {:o}", at().display(), st.st_mode),
            }),
        }
    }

    fn entry(
        &mut self,
        path: Vec<u8>,
        kind: Kind,
        st: &Stat,
        target: Vec<u8>,
        xattrs: Xattrs<'_>,
    ) -> Result<()> {
        let xattrs = match (kind, xattrs) {
            // A hardlink's xattrs are its first name's.
            (Kind::Hardlink, _) => Vec::new(),
            (_, x) => read_xattrs(x, &full(self.root_path, &path))?,
        };
        let e = Entry {
            kind,
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: (st.st_atime, st.st_atime_nsec as u32),
            mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            rdev: st.st_rdev,
            size: if kind == Kind::File { st.st_size as u64 } else { 0 },
            target,
            xattrs,
            path,
        };
        self.w.record(record::ENTRY, &[&e.encode()])
    }

    /// The file's data up to `size`, extent by extent.
    fn data(&mut self, fd: BorrowedFd<'_>, size: u64, at: &Path) -> Result<()> {
        let mut off = 0u64;
        while off < size {
            let start = match rustix::fs::seek(fd, SeekFrom::Data(off)) {
                Ok(s) => s,
                Err(rustix::io::Errno::NXIO) => break, // only a hole is left
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => off,
                Err(e) => return Err(Error::io("lseek SEEK_DATA", at, e)),
            };
            let end = match rustix::fs::seek(fd, SeekFrom::Hole(start)) {
                Ok(e) => e.min(size),
                Err(_) => size,
            };
            let mut pos = start;
            while pos < end {
                if self.cancel.is_some_and(CancelToken::is_cancelled) {
                    return Err(Error::Cancelled);
                }
                let want = ((end - pos) as usize).min(self.buf.len());
                let n = rustix::io::pread(fd, &mut self.buf[..want], pos).at("read", at)?;
                if n == 0 {
                    return Err(Error::Damaged {
                        path: at.to_path_buf(),
                        what: "became shorter while it was sent".into(),
                    });
                }
                self.w.record(record::DATA, &[&pos.to_le_bytes(), &self.buf[..n]])?;
                pos += n as u64;
                self.bytes += n as u64;
                if let Some(p) = self.progress {
                    p.add(0, n as u64);
                }
            }
            off = end;
        }
        Ok(())
    }
}

/// Reading a symlink moves its atime (there is no O_NOATIME for it): put back the atime the
/// stream carries (`st`, from before the read), so that the tree is as it was and the next send
/// of it the same. Nothing to do where the read changed nothing (a read-only snapshot, subvolume
/// or image); a failure leaves the new atime, which is all the read did.
fn keep_atime(dir: BorrowedFd<'_>, name: &CStr, st: &Stat) {
    use rustix::fs::{Timespec, Timestamps, UTIME_OMIT};
    let Ok(now) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else { return };
    if (now.st_atime, now.st_atime_nsec) == (st.st_atime, st.st_atime_nsec) {
        return;
    }
    let times = Timestamps {
        last_access: Timespec { tv_sec: st.st_atime, tv_nsec: st.st_atime_nsec as _ },
        last_modification: Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT },
    };
    let _ = rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW);
}

fn read_xattrs(from: Xattrs<'_>, at: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let list = match &from {
        Xattrs::Fd(fd) => crate::sys::xattr::flist(*fd),
        Xattrs::Path(p) => crate::sys::xattr::llist(p),
    };
    let names = match list {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listxattr", at, e)),
    };
    let mut out = Vec::new();
    for name in names {
        if crate::copy::skipped_xattr(name.to_bytes()) {
            continue;
        }
        let value = match &from {
            Xattrs::Fd(fd) => crate::sys::xattr::fget(*fd, &name),
            Xattrs::Path(p) => crate::sys::xattr::lget(p, &name),
        };
        match value {
            Ok(v) => out.push((name.into_bytes(), v)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => {
                return Err(Error::Xattr {
                    op: "getxattr",
                    attr: name.to_string_lossy().into_owned(),
                    path: at.to_path_buf(),
                    source: e,
                })
            }
        }
    }
    Ok(out)
}
