//! Reading a portable stream into an empty directory.
//!
//! Entries come parent first (the sender's walk), so the directory an entry goes into is always
//! one this reader made and still holds open: a stack of open directories follows the stream's
//! path, and an entry whose parent is not on it is a broken stream. Nothing is resolved through
//! a path the stream names, except a hardlink's target, which is opened beneath the root with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`. A directory's own metadata is applied when the
//! stream leaves it (after that nothing changes its mtime, and its default ACL no longer
//! reaches entries made in it).

use std::ffi::{CStr, CString, OsStr};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

use super::record::{self, Entry, Kind, RecordReader};
use super::{StreamHeader, FORMAT_VERSION};
use crate::copy::{CancelToken, Progress};
use crate::{Context, Error, Result};

fn bad(at: u64, what: impl Into<String>) -> Error {
    Error::BadStream { at, what: what.into() }
}

/// A stream whose magic and header have been read and checked.
pub struct StreamReader<'r> {
    records: RecordReader<'r>,
    header: StreamHeader,
}

impl<'r> StreamReader<'r> {
    /// Read and check the magic and the header. BadStream if `input` is not a goldclone
    /// stream, is of a newer version, or breaks off.
    pub fn open(input: &'r mut dyn Read) -> Result<Self> {
        let mut records = RecordReader::start(input)?;
        let at = records.at;
        let (kind, payload) = records.next_record()?;
        if kind != record::HEADER {
            return Err(bad(at, "the stream does not begin with its header"));
        }
        let header: StreamHeader = serde_json::from_slice(payload)
            .map_err(|e| bad(at, format!("the header does not parse: {e}")))?;
        if header.version != FORMAT_VERSION {
            return Err(bad(
                at,
                format!(
                    "stream format version {}; this goldclone reads version {FORMAT_VERSION}",
                    header.version
                ),
            ));
        }
        Ok(StreamReader { records, header })
    }

    pub fn header(&self) -> &StreamHeader {
        &self.header
    }

    /// Read the rest of the stream, checking every record and the trailer, and make nothing
    /// (a stream of a generation the receiver has already: the sender's pipe is read to its
    /// end, and a broken stream is still reported).
    pub fn verify_to_end(mut self) -> Result<()> {
        let (mut entries, mut bytes) = (0u64, 0u64);
        loop {
            let at = self.records.at;
            let before = self.records.records;
            let (kind, payload) = self.records.next_record()?;
            match kind {
                record::ENTRY => entries += 1,
                record::DATA => bytes += record::read_data(payload, at)?.1.len() as u64,
                record::TRAILER => {
                    if record::read_trailer(payload, at)? != (entries, bytes, before) {
                        return Err(bad(at, "the trailer's counts are not the stream's"));
                    }
                    return Ok(());
                }
                other => return Err(bad(at, format!("a record of unknown kind {other:#x}"))),
            }
        }
    }

    /// Make the stream's tree in the empty open directory `dst` (at `dst_path`, for messages),
    /// its root's metadata on `dst` itself, reading to the trailer and checking it. On error
    /// `dst` holds part of the tree: the caller removes it.
    pub fn unpack_into(
        mut self,
        dst: BorrowedFd<'_>,
        dst_path: &Path,
        progress: Option<&Progress>,
        cancel: Option<&CancelToken>,
    ) -> Result<()> {
        if let Some(p) = progress {
            p.set_totals(self.header.entries, self.header.bytes);
        }
        let root = dst.try_clone_to_owned().at("dup", dst_path)?;
        let privileged = rustix::process::geteuid().is_root();
        let mut u = Unpacker {
            dst_path,
            root,
            stack: Vec::new(),
            file: None,
            privileged,
            entries: 0,
            bytes: 0,
        };
        loop {
            if cancel.is_some_and(CancelToken::is_cancelled) {
                return Err(Error::Cancelled);
            }
            let at = self.records.at;
            let before = self.records.records;
            let (kind, payload) = self.records.next_record()?;
            match kind {
                record::ENTRY => {
                    u.finish_file()?;
                    u.entry(Entry::decode(payload, at)?, at)?;
                    if let Some(p) = progress {
                        p.add(1, 0);
                    }
                }
                record::DATA => {
                    let n = u.data(payload, at)?;
                    if let Some(p) = progress {
                        p.add(0, n);
                    }
                }
                record::TRAILER => {
                    let (entries, bytes, records) = record::read_trailer(payload, at)?;
                    if (entries, bytes, records) != (u.entries, u.bytes, before) {
                        return Err(bad(
                            at,
                            format!(
                                "the trailer counts {entries} entries, {bytes} bytes and {records} \
                                 records; the stream held {}, {} and {before}",
                                u.entries, u.bytes
                            ),
                        ));
                    }
                    u.finish_file()?;
                    if u.stack.is_empty() {
                        return Err(bad(at, "the stream has no root entry"));
                    }
                    while !u.stack.is_empty() {
                        u.leave()?;
                    }
                    return Ok(());
                }
                other => return Err(bad(at, format!("a record of unknown kind {other:#x}"))),
            }
        }
    }
}

/// A directory the stream is in: open, with its metadata to apply when the stream leaves it.
struct Frame {
    path: Vec<u8>,
    fd: OwnedFd,
    meta: Entry,
}

/// A file whose data is arriving.
struct OpenFile {
    fd: OwnedFd,
    meta: Entry,
    path: PathBuf,
}

struct Unpacker<'a> {
    dst_path: &'a Path,
    root: OwnedFd,
    stack: Vec<Frame>,
    file: Option<OpenFile>,
    privileged: bool,
    entries: u64,
    bytes: u64,
}

/// `path` is relative, of plain components: no empty one, no `.` or `..`, no NUL.
fn check_path(path: &[u8], at: u64) -> Result<()> {
    // No limit on the whole length: everything is made relative to open directories.
    let plain = !path.is_empty()
        && !path.contains(&0)
        && path
            .split(|b| *b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b".." && c.len() <= 255);
    if plain {
        Ok(())
    } else {
        Err(bad(at, format!("an entry names the path {:?}", String::from_utf8_lossy(path))))
    }
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn cstr(name: &[u8]) -> CString {
    CString::new(name).expect("checked: no NUL")
}

impl Unpacker<'_> {
    fn full(&self, rel: &[u8]) -> PathBuf {
        self.dst_path.join(OsStr::from_bytes(rel))
    }

    fn entry(&mut self, e: Entry, at: u64) -> Result<()> {
        self.entries += 1;
        if self.stack.is_empty() {
            // The first entry is the root's.
            if !e.path.is_empty() || e.kind != Kind::Dir {
                return Err(bad(at, "the stream does not begin with its root directory"));
            }
            let fd = self.root.try_clone().at("dup", self.dst_path)?;
            self.stack.push(Frame { path: Vec::new(), fd, meta: e });
            return Ok(());
        }
        check_path(&e.path, at)?;
        let (parent, name) = split(&e.path);
        while self.stack.last().is_some_and(|f| f.path != parent) {
            self.leave()?;
        }
        let Some(top) = self.stack.last() else {
            return Err(bad(at, format!("entry {:?} comes outside its directory", e.path_lossy())));
        };
        let (dir, name) = (top.fd.as_fd(), cstr(name));
        let path = self.full(&e.path);
        match e.kind {
            Kind::Dir => {
                rustix::fs::mkdirat(dir, name.as_c_str(), Mode::from_raw_mode(0o700))
                    .at("mkdir", &path)?;
                let fd = rustix::fs::openat(
                    dir,
                    name.as_c_str(),
                    crate::sys::fs::READ_DIR,
                    Mode::empty(),
                )
                .at("open", &path)?;
                let p = e.path.clone();
                self.stack.push(Frame { path: p, fd, meta: e });
            }
            Kind::File => {
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let fd =
                    rustix::fs::openat(dir, name.as_c_str(), flags, Mode::from_raw_mode(0o600))
                        .at("create", &path)?;
                self.file = Some(OpenFile { fd, meta: e, path });
            }
            Kind::Symlink => {
                rustix::fs::symlinkat(e.target.as_slice(), dir, name.as_c_str())
                    .at("symlink", &path)?;
                apply_at(dir, &name, &e, self.privileged, &path)?;
            }
            Kind::Special => {
                let ft = FileType::from_raw_mode(e.mode);
                if !matches!(
                    ft,
                    FileType::CharacterDevice
                        | FileType::BlockDevice
                        | FileType::Fifo
                        | FileType::Socket
                ) {
                    return Err(bad(
                        at,
                        format!("special entry {:?} of mode {:o}", e.path_lossy(), e.mode),
                    ));
                }
                rustix::fs::mknodat(dir, name.as_c_str(), ft, Mode::from_raw_mode(0o600), e.rdev)
                    .at("mknod", &path)?;
                apply_at(dir, &name, &e, self.privileged, &path)?;
            }
            Kind::Hardlink => {
                check_path(&e.target, at)?;
                let (tparent, tname) = split(&e.target);
                let tdir = if tparent.is_empty() {
                    self.root.try_clone().at("dup", self.dst_path)?
                } else {
                    rustix::fs::openat2(
                        &self.root,
                        OsStr::from_bytes(tparent),
                        crate::sys::fs::READ_DIR,
                        Mode::empty(),
                        ResolveFlags::BENEATH
                            | ResolveFlags::NO_SYMLINKS
                            | ResolveFlags::NO_MAGICLINKS,
                    )
                    .at_with("open", || self.full(tparent))?
                };
                rustix::fs::linkat(
                    &tdir,
                    cstr(tname).as_c_str(),
                    dir,
                    name.as_c_str(),
                    AtFlags::empty(),
                )
                .at("link", &path)?;
            }
        }
        Ok(())
    }

    fn data(&mut self, payload: &[u8], at: u64) -> Result<u64> {
        let (off, bytes) = record::read_data(payload, at)?;
        let Some(f) = &self.file else {
            return Err(bad(at, "data with no file before it"));
        };
        if !matches!(off.checked_add(bytes.len() as u64), Some(end) if end <= f.meta.size) {
            return Err(bad(at, format!("data past the end of {}", f.path.display())));
        }
        let mut done = 0;
        while done < bytes.len() {
            let n = rustix::io::pwrite(&f.fd, &bytes[done..], off + done as u64)
                .at("write", &f.path)?;
            done += n;
        }
        self.bytes += bytes.len() as u64;
        Ok(bytes.len() as u64)
    }

    /// The file whose data was arriving is complete: its size (holes at its end) and metadata.
    fn finish_file(&mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            rustix::fs::ftruncate(&f.fd, f.meta.size).at("ftruncate", &f.path)?;
            apply_fd(f.fd.as_fd(), &f.meta, self.privileged, &f.path)?;
        }
        Ok(())
    }

    /// The stream has left the innermost directory: its metadata.
    fn leave(&mut self) -> Result<()> {
        let f = self.stack.pop().expect("a directory to leave");
        let path = self.full(&f.path);
        apply_fd(f.fd.as_fd(), &f.meta, self.privileged, &path)
    }
}

impl Entry {
    fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

fn times(e: &Entry) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: e.atime.0, tv_nsec: e.atime.1 as _ },
        last_modification: Timespec { tv_sec: e.mtime.0, tv_nsec: e.mtime.1 as _ },
    }
}

/// The permission bits to set: setuid and setgid only where the owner was given too (as
/// `cp -a` does for a caller who cannot give files away).
fn mode(e: &Entry, owned: bool) -> Mode {
    let mut m = e.mode & 0o7777;
    if !owned {
        m &= !(libc::S_ISUID | libc::S_ISGID);
    }
    Mode::from_raw_mode(m as _)
}

fn owner_error(e: rustix::io::Errno, privileged: bool, path: &Path) -> Result<bool> {
    if !privileged && e == rustix::io::Errno::PERM {
        Ok(false)
    } else {
        Err(Error::io("chown", path, e))
    }
}

fn set_xattrs(
    e: &Entry,
    path: &Path,
    set: impl Fn(&CStr, &[u8]) -> std::io::Result<()>,
) -> Result<()> {
    for (name, value) in &e.xattrs {
        let cname = CString::new(name.as_slice())
            .map_err(|_| bad(0, format!("an xattr name of {} holds a NUL", path.display())))?;
        set(&cname, value).map_err(|source| Error::Xattr {
            op: "setxattr",
            attr: cname.to_string_lossy().into_owned(),
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Owner, xattrs, mode and times of an open file or directory, in the order that keeps each:
/// chown clears setuid and capabilities, so it comes first; times last.
fn apply_fd(fd: BorrowedFd<'_>, e: &Entry, privileged: bool, path: &Path) -> Result<()> {
    let owned = match rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(e.uid)),
        Some(rustix::fs::Gid::from_raw(e.gid)),
    ) {
        Ok(()) => true,
        Err(err) => owner_error(err, privileged, path)?,
    };
    set_xattrs(e, path, |n, v| crate::sys::xattr::fset(fd, n, v))?;
    rustix::fs::fchmod(fd, mode(e, owned)).at("chmod", path)?;
    rustix::fs::futimens(fd, &times(e)).at("utimens", path)
}

/// As [`apply_fd`], for an entry that cannot be opened for it (symlink, device node).
fn apply_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    e: &Entry,
    privileged: bool,
    path: &Path,
) -> Result<()> {
    let owned = match rustix::fs::chownat(
        dir,
        name,
        Some(rustix::fs::Uid::from_raw(e.uid)),
        Some(rustix::fs::Gid::from_raw(e.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    ) {
        Ok(()) => true,
        Err(err) => owner_error(err, privileged, path)?,
    };
    if !e.xattrs.is_empty() {
        let xp = crate::copy::entry_path(dir, name, path)?;
        set_xattrs(e, path, |n, v| crate::sys::xattr::lset(&xp, n, v))?;
    }
    if e.kind != Kind::Symlink {
        rustix::fs::chmodat(dir, name, mode(e, owned), AtFlags::empty()).at("chmod", path)?;
    }
    rustix::fs::utimensat(dir, name, &times(e), AtFlags::SYMLINK_NOFOLLOW).at("utimens", path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::record::{RecordWriter, DATA, ENTRY, HEADER, TRAILER};

    fn header() -> StreamHeader {
        StreamHeader {
            format: crate::stream::PORTABLE.into(),
            version: FORMAT_VERSION,
            project: "p".into(),
            generation: 1,
            id: "x.1.1".into(),
            base: None,
            sent_from: "copy".into(),
            entries: 0,
            bytes: 0,
            used: 0,
        }
    }

    fn entry(path: &str, kind: Kind, mode: u32, target: &str) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            atime: (1, 0),
            mtime: (2, 0),
            rdev: 0,
            size: if kind == Kind::File { 4 } else { 0 },
            target: target.as_bytes().to_vec(),
            xattrs: Vec::new(),
        }
    }

    /// A stream of `entries` after a root entry, with correct framing and trailer: only what
    /// the entries say is wrong.
    fn stream(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = RecordWriter::start(&mut out).unwrap();
        w.record(HEADER, &[&serde_json::to_vec(&header()).unwrap()]).unwrap();
        w.record(ENTRY, &[&entry("", Kind::Dir, 0o40755, "").encode()]).unwrap();
        let mut bytes = 0;
        for e in entries {
            w.record(ENTRY, &[&e.encode()]).unwrap();
            if e.kind == Kind::File {
                w.record(DATA, &[&0u64.to_le_bytes(), b"data"]).unwrap();
                bytes += 4;
            }
        }
        let records = w.records;
        let t = crate::stream::record::trailer(entries.len() as u64 + 1, bytes, records);
        w.record(TRAILER, &[&t]).unwrap();
        out
    }

    fn unpack(bytes: &[u8], dst: &Path) -> Result<()> {
        let mut input = bytes;
        let r = StreamReader::open(&mut input)?;
        let fd = rustix::fs::open(dst, crate::sys::fs::READ_DIR, Mode::empty()).unwrap();
        r.unpack_into(fd.as_fd(), dst, None, None)
    }

    fn scratch(tag: &str) -> (PathBuf, PathBuf) {
        let base = std::env::temp_dir()
            .join(format!("goldclone-recv-{tag}-{}", crate::sys::unique_suffix()));
        let (dst, outside) = (base.join("dst"), base.join("outside"));
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), "mine").unwrap();
        (base, dst)
    }

    #[test]
    fn a_plain_stream_unpacks() {
        let (base, dst) = scratch("plain");
        let s = stream(&[
            entry("d", Kind::Dir, 0o40750, ""),
            entry("d/f", Kind::File, 0o100640, ""),
            entry("d/l", Kind::Symlink, 0o120777, "f"),
            entry("d/h", Kind::Hardlink, 0o100640, "d/f"),
        ]);
        unpack(&s, &dst).unwrap();
        assert_eq!(std::fs::read(dst.join("d/f")).unwrap(), b"data");
        assert_eq!(std::fs::read(dst.join("d/h")).unwrap(), b"data");
        assert_eq!(std::fs::read_link(dst.join("d/l")).unwrap(), Path::new("f"));
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(dst.join("d/f")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.nlink(), m.mtime()), (0o640, 2, 2));
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// A stream that names a path outside the tree, goes through a symlink it made, links to
    /// something outside or comes out of order is refused, and nothing outside is touched.
    #[test]
    fn a_hostile_stream_reaches_nothing_outside() {
        let cases: Vec<(&str, Vec<Entry>)> = vec![
            ("dotdot", vec![entry("../outside/victim", Kind::File, 0o100644, "")]),
            (
                "inner dotdot",
                vec![
                    entry("a", Kind::Dir, 0o40755, ""),
                    entry("a/../../outside/x", Kind::File, 0o100644, ""),
                ],
            ),
            ("absolute", vec![entry("/tmp/goldclone-evil", Kind::File, 0o100644, "")]),
            ("empty component", vec![entry("a//b", Kind::File, 0o100644, "")]),
            (
                "through a symlink",
                vec![
                    entry("l", Kind::Symlink, 0o120777, "../outside"),
                    entry("l/victim", Kind::File, 0o100644, ""),
                ],
            ),
            ("link outside", vec![entry("h", Kind::Hardlink, 0o100644, "../outside/victim")]),
            (
                "link through a symlink",
                vec![
                    entry("l", Kind::Symlink, 0o120777, "../outside"),
                    entry("h", Kind::Hardlink, 0o100644, "l/victim"),
                ],
            ),
            ("parent not sent", vec![entry("nodir/f", Kind::File, 0o100644, "")]),
            (
                "parent left already",
                vec![
                    entry("a", Kind::Dir, 0o40755, ""),
                    entry("b", Kind::Dir, 0o40755, ""),
                    entry("a/f", Kind::File, 0o100644, ""),
                ],
            ),
            (
                "twice",
                vec![entry("f", Kind::File, 0o100644, ""), entry("f", Kind::File, 0o100644, "")],
            ),
            ("special of file mode", vec![entry("s", Kind::Special, 0o100644, "")]),
        ];
        for (what, entries) in cases {
            let (base, dst) = scratch("hostile");
            let err = unpack(&stream(&entries), &dst).expect_err(what);
            let victim = base.join("outside/victim");
            assert_eq!(std::fs::read(&victim).unwrap(), b"mine", "{what}: {err}");
            use std::os::unix::fs::MetadataExt;
            assert_eq!(std::fs::metadata(&victim).unwrap().nlink(), 1, "{what}");
            assert_eq!(std::fs::read_dir(base.join("outside")).unwrap().count(), 1, "{what}");
            assert!(!Path::new("/tmp/goldclone-evil").exists(), "{what}");
            std::fs::remove_dir_all(&base).unwrap();
        }
    }

    #[test]
    fn data_past_a_files_end_is_refused() {
        let (base, dst) = scratch("past");
        let mut e = entry("f", Kind::File, 0o100644, "");
        e.size = 2; // the stream's data record carries 4 bytes
        let err = unpack(&stream(&[e]), &dst).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::BadStream, "{err}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
