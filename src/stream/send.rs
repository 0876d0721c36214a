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

use super::manifest::{
    self, meta_digest, DataDigest, Digest16, ManifestEntry, ManifestReader, ManifestWriter,
};
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

/// The manifests a send reads and writes: the base generation's, for an increment from it,
/// and the sent generation's, for increments from it later.
#[derive(Default)]
pub struct Manifests<'m, 'r, 'w> {
    pub base: Option<&'m mut ManifestReader<'r>>,
    pub record: Option<&'m mut ManifestWriter<'w>>,
    /// Whether the tree keeps the inodes of the base's (its backend's sessions and promotes do
    /// not copy files): only then may a file whose inode, ctime and metadata are the base's be
    /// taken as unchanged without reading it, and only if that ctime is more than
    /// [`RACY_SECONDS`] older than the base's sealing.
    pub quick_check: bool,
}

/// How long before a generation was sealed a ctime is not proof enough that nothing changed
/// the file after: a ctime has the kernel's tick as its grain, and the generation's record
/// time is taken in whole seconds just after the tree was frozen.
pub const RACY_SECONDS: u64 = 2;

/// Write the tree at the open directory `root` (at `root_path`, for messages) as a stream
/// with `header` to `out`, counting into `progress`, stopped by `cancel`. Returns the bytes
/// written.
///
/// With a base manifest the stream is an increment: an entry the base has unchanged is not
/// sent (nor its directory, unless something below it changed), a file whose data is the
/// base's but whose metadata changed is sent as [`Kind::Same`] without data, and an entry of
/// the base that the tree no longer has is sent as a removal. A file with more than one link
/// (here or in the base) is always sent whole, so the receiver rebuilds its links as here.
pub fn send_tree(
    root: BorrowedFd<'_>,
    root_path: &Path,
    header: &StreamHeader,
    out: &mut dyn Write,
    progress: Option<&Progress>,
    cancel: Option<&CancelToken>,
    manifests: Manifests<'_, '_, '_>,
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
        quick_before: match &manifests.base {
            Some(b) if manifests.quick_check => b.sealed_at().saturating_sub(RACY_SECONDS) as i64,
            _ => i64::MIN,
        },
        base: manifests.base,
        record: manifests.record,
        pending: Vec::new(),
    };
    s.w.record(record::HEADER, &[&json])?;
    let root = reopen(root, root_path)?;
    let st = rustix::fs::fstat(&root).at("stat", root_path)?;
    if let Some(base) = s.base.as_deref_mut() {
        match base.take_next()? {
            Some(e) if e.path.is_empty() && e.kind == Kind::Dir => {}
            _ => {
                return Err(Error::Damaged {
                    path: root_path.to_path_buf(),
                    what: "the base's manifest does not begin with its root".into(),
                })
            }
        }
    }
    let e = s.entry(Vec::new(), Kind::Dir, &st, Vec::new(), Xattrs::Fd(root.as_fd()))?;
    let enc = e.encode();
    s.emit(&enc)?;
    s.note(Vec::new(), Kind::Dir, &st, meta_digest(&enc), ZERO)?;
    s.pending.push(None);
    let mut stack = vec![(root_names(root.as_fd(), root_path)?.into_iter(), root, Vec::new())];
    while let Some((iter, dir, rel)) = stack.last_mut() {
        let Some(name) = iter.next() else {
            // What the base has in this directory beyond its last name here is gone.
            let rel = std::mem::take(rel);
            s.drain(|p| manifest::is_within(p, &rel) && p != rel.as_slice())?;
            stack.pop();
            s.pending.pop();
            continue;
        };
        if cancel.is_some_and(CancelToken::is_cancelled) {
            return Err(Error::Cancelled);
        }
        let (dir, path) = (dir.as_fd(), join(rel, &name));
        let next = s.send_entry(dir, &name, path)?;
        if let Some(p) = progress {
            p.add(1, 0);
        }
        if let Some((fd, path, pending)) = next {
            let listed = names(fd.as_fd(), &full(root_path, &path))?;
            stack.push((listed.into_iter(), fd, path));
            s.pending.push(pending);
        }
    }
    if let Some(base) = s.base.as_deref_mut() {
        base.finish()?;
    }
    let records = s.w.records;
    s.w.record(record::TRAILER, &[&record::trailer(s.entries, s.bytes, records)])?;
    s.w.flush()?;
    Ok(s.w.written)
}

const ZERO: Digest16 = [0; 16];

fn ctime(st: &Stat) -> (i64, u32) {
    (st.st_ctime, st.st_ctime_nsec as u32)
}

struct Sender<'a, 'w, 'r, 'o> {
    w: RecordWriter<'w>,
    root_path: &'a Path,
    /// First path of every file with more than one link, by (dev, ino).
    links: HashMap<(u64, u64), Vec<u8>>,
    progress: Option<&'a Progress>,
    cancel: Option<&'a CancelToken>,
    entries: u64,
    bytes: u64,
    buf: Vec<u8>,
    base: Option<&'a mut ManifestReader<'r>>,
    record: Option<&'a mut ManifestWriter<'o>>,
    /// A base file whose ctime (seconds) is before this, and whose inode, ctime and metadata
    /// are the file's here, is taken as unchanged unread ([`Manifests::quick_check`]).
    quick_before: i64,
    /// For each directory the walk is in, outermost first: its entry record while it has not
    /// been sent (unchanged from the base, and nothing below it sent yet).
    pending: Vec<Option<Vec<u8>>>,
}

/// Where an entry's xattrs are read: its open fd, or the `/proc/self/fd` path of an entry
/// that cannot be opened for it (symlink, device node).
enum Xattrs<'f> {
    Fd(BorrowedFd<'f>),
    Path(CString),
}

impl Sender<'_, '_, '_, '_> {
    /// Send the entry record `enc`, after the directories it is in that are not sent yet.
    fn emit(&mut self, enc: &[u8]) -> Result<()> {
        self.emit_ancestors()?;
        self.w.record(record::ENTRY, &[enc])?;
        self.entries += 1;
        Ok(())
    }

    fn emit_ancestors(&mut self) -> Result<()> {
        for pending in self.pending.iter_mut() {
            if let Some(enc) = pending.take() {
                self.w.record(record::ENTRY, &[&enc])?;
                self.entries += 1;
            }
        }
        Ok(())
    }

    /// Add the entry to the sent generation's manifest.
    fn note(
        &mut self,
        path: Vec<u8>,
        kind: Kind,
        st: &Stat,
        meta: Digest16,
        data: Digest16,
    ) -> Result<()> {
        match self.record.as_deref_mut() {
            Some(r) => r.push(&ManifestEntry {
                path,
                kind,
                ino: st.st_ino,
                ctime: ctime(st),
                nlink: st.st_nlink,
                meta,
                data,
            }),
            None => Ok(()),
        }
    }

    /// The base's next entry if it is at `path` (everything before `path` is gone from the
    /// tree: sent as removals first).
    fn base_at(&mut self, path: &[u8]) -> Result<Option<ManifestEntry>> {
        self.drain(|p| manifest::walk_order(p, path).is_lt())?;
        match self.base.as_deref_mut() {
            Some(b) if b.peek().is_some_and(|e| e.path == path) => b.take_next(),
            _ => Ok(None),
        }
    }

    /// Send a removal for each of the base's next entries that `gone` holds for, skipping
    /// what is below a removed directory.
    fn drain(&mut self, gone: impl Fn(&[u8]) -> bool) -> Result<()> {
        loop {
            let e = match self.base.as_deref_mut() {
                Some(b) if b.peek().is_some_and(|e| gone(&e.path)) => b.take_next()?,
                _ => return Ok(()),
            };
            let Some(e) = e else { return Ok(()) };
            self.emit_ancestors()?;
            self.w.record(record::REMOVE, &[&e.path])?;
            self.skip_below(&e.path)?;
        }
    }

    /// Pass over the base's entries below `path` (replaced or removed with it).
    fn skip_below(&mut self, path: &[u8]) -> Result<()> {
        if let Some(b) = self.base.as_deref_mut() {
            while b.peek().is_some_and(|e| e.path != path && manifest::is_within(&e.path, path)) {
                b.take_next()?;
            }
        }
        Ok(())
    }

    /// Send `name` of the open `dir` (as far as it differs from the base); for a directory,
    /// its fd, path and entry record if not sent yet, to be walked next.
    #[allow(clippy::type_complexity)]
    fn send_entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: Vec<u8>,
    ) -> Result<Option<(OwnedFd, Vec<u8>, Option<Vec<u8>>)>> {
        let base = self.base_at(&path)?;
        let at = || full(self.root_path, &path);
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).at_with("stat", at)?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::Directory && base.as_ref().is_some_and(|b| b.kind == Kind::Dir) {
            self.skip_below(&path)?;
        }
        let unchanged = |kind: Kind, meta: &Digest16| {
            base.as_ref().is_some_and(|b| b.kind == kind && b.meta == *meta)
        };
        match kind {
            FileType::Directory => {
                let fd = open_dir(dir, name).at_with("open", at)?;
                let st = rustix::fs::fstat(&fd).at_with("stat", at)?;
                let e =
                    self.entry(path.clone(), Kind::Dir, &st, Vec::new(), Xattrs::Fd(fd.as_fd()))?;
                let enc = e.encode();
                let meta = meta_digest(&enc);
                self.note(path.clone(), Kind::Dir, &st, meta, ZERO)?;
                let pending = if unchanged(Kind::Dir, &meta) {
                    Some(enc)
                } else {
                    self.emit(&enc)?;
                    None
                };
                Ok(Some((fd, path, pending)))
            }
            FileType::RegularFile => {
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)) {
                        let first = first.clone();
                        let e = self.entry(
                            path.clone(),
                            Kind::Hardlink,
                            &st,
                            first,
                            Xattrs::Path(CString::default()),
                        )?;
                        self.emit(&e.encode())?;
                        self.note(path, Kind::Hardlink, &st, ZERO, ZERO)?;
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
                let mut e =
                    self.entry(path.clone(), Kind::File, &st, Vec::new(), Xattrs::Fd(fd.as_fd()))?;
                let enc = e.encode();
                let meta = meta_digest(&enc);
                let size = st.st_size as u64;
                // Only a file of one link, here and in the base, can be left to the base.
                let single = base
                    .as_ref()
                    .filter(|b| b.kind == Kind::File && b.nlink == 1 && st.st_nlink == 1);
                let data = match single {
                    Some(b)
                        if b.ino == st.st_ino
                            && b.ctime == ctime(&st)
                            && b.ctime.0 < self.quick_before
                            && b.meta == meta =>
                    {
                        b.data
                    }
                    Some(b) => {
                        let d = self.digest_file(fd.as_fd(), size, &at())?;
                        if d != b.data {
                            self.emit(&enc)?;
                            self.data(fd.as_fd(), size, &at())?
                        } else {
                            if b.meta != meta {
                                e.kind = Kind::Same;
                                self.emit(&e.encode())?;
                            }
                            d
                        }
                    }
                    None => {
                        self.emit(&enc)?;
                        self.data(fd.as_fd(), size, &at())?
                    }
                };
                self.note(path, Kind::File, &st, meta, data)?;
                Ok(None)
            }
            FileType::Symlink => {
                let target =
                    rustix::fs::readlinkat(dir, name, Vec::new()).at_with("readlink", at)?;
                keep_atime(dir, name, &st);
                let xp = crate::copy::entry_path(dir, name, &at())?;
                let e = self.entry(
                    path.clone(),
                    Kind::Symlink,
                    &st,
                    target.into_bytes(),
                    Xattrs::Path(xp),
                )?;
                let enc = e.encode();
                let meta = meta_digest(&enc);
                if !unchanged(Kind::Symlink, &meta) {
                    self.emit(&enc)?;
                }
                self.note(path, Kind::Symlink, &st, meta, ZERO)?;
                Ok(None)
            }
            FileType::CharacterDevice
            | FileType::BlockDevice
            | FileType::Fifo
            | FileType::Socket => {
                let xp = crate::copy::entry_path(dir, name, &at())?;
                let e =
                    self.entry(path.clone(), Kind::Special, &st, Vec::new(), Xattrs::Path(xp))?;
                let enc = e.encode();
                let meta = meta_digest(&enc);
                if !unchanged(Kind::Special, &meta) {
                    self.emit(&enc)?;
                }
                self.note(path, Kind::Special, &st, meta, ZERO)?;
                Ok(None)
            }
            FileType::Unknown => Err(Error::Unsupported {
                what: format!("{}: unknown file type {:o}", at().display(), st.st_mode),
            }),
        }
    }

    /// The entry record of `path`, as sent.
    fn entry(
        &mut self,
        path: Vec<u8>,
        kind: Kind,
        st: &Stat,
        target: Vec<u8>,
        xattrs: Xattrs<'_>,
    ) -> Result<Entry> {
        let xattrs = match (kind, xattrs) {
            // A hardlink's xattrs are its first name's.
            (Kind::Hardlink, _) => Vec::new(),
            (_, x) => read_xattrs(x, &full(self.root_path, &path))?,
        };
        Ok(Entry {
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
        })
    }

    /// Send the file's data up to `size`, extent by extent; its [`DataDigest`].
    fn data(&mut self, fd: BorrowedFd<'_>, size: u64, at: &Path) -> Result<Digest16> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut digest = DataDigest::default();
        let (w, bytes, progress) = (&mut self.w, &mut self.bytes, self.progress);
        let sent = extents(fd, size, at, &mut buf, self.cancel, |pos, chunk| {
            digest.feed(pos, chunk);
            w.record(record::DATA, &[&pos.to_le_bytes(), chunk])?;
            *bytes += chunk.len() as u64;
            if let Some(p) = progress {
                p.add(0, chunk.len() as u64);
            }
            Ok(())
        });
        self.buf = buf;
        sent.map(|()| digest.finish(size))
    }

    /// The file's [`DataDigest`], nothing sent.
    fn digest_file(&mut self, fd: BorrowedFd<'_>, size: u64, at: &Path) -> Result<Digest16> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut digest = DataDigest::default();
        let read = extents(fd, size, at, &mut buf, self.cancel, |pos, chunk| {
            digest.feed(pos, chunk);
            Ok(())
        });
        self.buf = buf;
        read.map(|()| digest.finish(size))
    }
}

/// Read the file's data up to `size` extent by extent (SEEK_DATA/SEEK_HOLE: holes are not
/// read) into `buf`, a chunk at a time, giving each chunk and its offset to `each`.
fn extents(
    fd: BorrowedFd<'_>,
    size: u64,
    at: &Path,
    buf: &mut [u8],
    cancel: Option<&CancelToken>,
    mut each: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
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
            if cancel.is_some_and(CancelToken::is_cancelled) {
                return Err(Error::Cancelled);
            }
            let want = ((end - pos) as usize).min(buf.len());
            let n = rustix::io::pread(fd, &mut buf[..want], pos).at("read", at)?;
            if n == 0 {
                return Err(Error::Damaged {
                    path: at.to_path_buf(),
                    what: "became shorter while it was sent".into(),
                });
            }
            each(pos, &buf[..n])?;
            pos += n as u64;
        }
        off = end;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::manifest::ManifestEntry;
    use crate::stream::FORMAT_VERSION;
    use rustix::fs::Mode;

    fn header(base: Option<&str>) -> StreamHeader {
        StreamHeader {
            format: crate::stream::PORTABLE.into(),
            version: FORMAT_VERSION,
            project: "p".into(),
            generation: 2,
            id: "x.2.2".into(),
            base: base.map(str::to_string),
            sent_from: "copy".into(),
            entries: 0,
            bytes: 0,
            used: 0,
        }
    }

    /// The stream of `dir` and its manifest (sealed at `sealed_at`), sent in full.
    fn full_send(dir: &Path, sealed_at: u64) -> Vec<ManifestEntry> {
        let fd = rustix::fs::open(dir, crate::sys::fs::READ_DIR, Mode::empty()).unwrap();
        let mut kept = Vec::new();
        let mut record = ManifestWriter::start(&mut kept, "x.1.1", sealed_at).unwrap();
        let manifests = Manifests { record: Some(&mut record), ..Manifests::default() };
        send_tree(fd.as_fd(), dir, &header(None), &mut Vec::new(), None, None, manifests).unwrap();
        record.finish().unwrap();
        drop(record);
        let mut input = &kept[..];
        let mut r = ManifestReader::open(&mut input, "test").unwrap();
        let mut entries = Vec::new();
        while let Some(e) = r.take_next().unwrap() {
            entries.push(e);
        }
        r.finish().unwrap();
        entries
    }

    /// The bytes of an increment of `dir` from a manifest of `entries` sealed at `sealed_at`.
    fn increment(dir: &Path, entries: &[ManifestEntry], sealed_at: u64, quick: bool) -> usize {
        let mut base = Vec::new();
        let mut w = ManifestWriter::start(&mut base, "x.1.1", sealed_at).unwrap();
        for e in entries {
            w.push(e).unwrap();
        }
        w.finish().unwrap();
        drop(w);
        let mut input = &base[..];
        let mut reader = ManifestReader::open(&mut input, "test").unwrap();
        let fd = rustix::fs::open(dir, crate::sys::fs::READ_DIR, Mode::empty()).unwrap();
        let manifests = Manifests { base: Some(&mut reader), record: None, quick_check: quick };
        let mut out = Vec::new();
        send_tree(fd.as_fd(), dir, &header(Some("x.1.1")), &mut out, None, None, manifests)
            .unwrap();
        out.len()
    }

    /// A file whose inode, ctime and metadata are the base's is taken unread only where the
    /// backend keeps inodes and the ctime is well before the base's sealing: the base's
    /// manifest here says its data was other, so a read finds the difference and sends it.
    #[test]
    fn the_quick_check_trusts_only_old_ctimes_of_kept_inodes() {
        let dir = std::env::temp_dir()
            .join(format!("goldclone-send-quick-{}", crate::sys::unique_suffix()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("f"), vec![7u8; 64 << 10]).unwrap();
        let mut entries = full_send(&dir, u64::MAX);
        let f = entries.iter_mut().find(|e| e.path == b"f").unwrap();
        f.data[0] ^= 1; // what a change in the same clock tick would hide from the ctime
        let ctime = f.ctime.0 as u64;
        let trusted = increment(&dir, &entries, ctime + 60, true);
        let racy = increment(&dir, &entries, ctime + 1, true);
        let copy_backend = increment(&dir, &entries, ctime + 60, false);
        assert!(trusted < 4096, "the unchanged file was sent: {trusted} bytes");
        assert!(racy > 64 << 10, "a racy ctime was trusted: {racy} bytes");
        assert_eq!(copy_backend, racy, "the copy backend's inodes were trusted");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
