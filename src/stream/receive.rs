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
                record::REMOVE => {}
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

    /// Make the stream's tree in the open directory `dst` (at `dst_path`, for messages), its
    /// root's metadata on `dst` itself, reading to the trailer and checking it. For a full
    /// stream `dst` is empty; for an increment (`header().base`) it holds the base's tree,
    /// which the stream changes into its own. On error `dst` holds part of the tree: the
    /// caller removes it.
    pub fn unpack_into(
        mut self,
        dst: BorrowedFd<'_>,
        dst_path: &Path,
        progress: Option<&Progress>,
        cancel: Option<&CancelToken>,
    ) -> Result<()> {
        // An increment is applied after the copy of its base, which counted the base's tree
        // into `progress`, or in place to a clone of it: its records count beyond that.
        let increment = self.header.base.is_some();
        let count = |entries, bytes| match progress {
            Some(p) if increment => p.add_beyond_totals(entries, bytes),
            Some(p) => p.add(entries, bytes),
            None => {}
        };
        if let Some(p) = progress.filter(|_| !increment) {
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
            increment,
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
                    count(1, 0);
                }
                record::REMOVE => {
                    u.finish_file()?;
                    u.remove(payload, at)?;
                }
                record::DATA => {
                    let n = u.data(payload, at)?;
                    count(0, n);
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
                    // An increment applied in place (no copy of its base counted before it):
                    // its totals are known now.
                    if let Some(p) = progress.filter(|p| p.totals().is_none()) {
                        p.set_totals(p.entries(), p.bytes());
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
    /// The base's directory, kept: xattrs it has that the entry has not are removed.
    kept: bool,
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
    /// The stream is an increment: the tree holds the base, and entries replace what is there.
    increment: bool,
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
            let kept = self.increment;
            if kept {
                self.make_writable(fd.as_fd(), self.dst_path)?;
                drop_default_acl(fd.as_fd(), self.dst_path)?;
            }
            self.stack.push(Frame { path: Vec::new(), fd, meta: e, kept });
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
        // In an increment an entry replaces what the base has at its path (a directory kept
        // where both are one, a file of kind Same taken as it is).
        let there = if self.increment {
            match rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
                Err(rustix::io::Errno::NOENT) => None,
                Err(err) => return Err(Error::io("stat", &path, err)),
            }
        } else {
            None
        };
        let keep = match e.kind {
            Kind::Dir => there == Some(FileType::Directory),
            Kind::Same => true,
            _ => false,
        };
        if there.is_some() && !keep {
            crate::copy::remove_entry(dir, OsStr::from_bytes(name.as_bytes()), &path)?;
        }
        match e.kind {
            Kind::Dir => {
                if !keep {
                    rustix::fs::mkdirat(dir, name.as_c_str(), Mode::from_raw_mode(0o700))
                        .at("mkdir", &path)?;
                }
                let fd = rustix::fs::openat(
                    dir,
                    name.as_c_str(),
                    crate::sys::fs::READ_DIR | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
                .at("open", &path)?;
                if keep {
                    self.make_writable(fd.as_fd(), &path)?;
                    drop_default_acl(fd.as_fd(), &path)?;
                }
                let p = e.path.clone();
                self.stack.push(Frame { path: p, fd, meta: e, kept: keep });
            }
            Kind::Same => {
                if !self.increment || there != Some(FileType::RegularFile) {
                    return Err(bad(
                        at,
                        format!(
                            "{:?} is sent as the base's file, and the base here has none there",
                            e.path_lossy()
                        ),
                    ));
                }
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(dir, name.as_c_str(), flags, Mode::empty())
                    .at("open", &path)?;
                let st = rustix::fs::fstat(&fd).at("stat", &path)?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
                    || st.st_size as u64 != e.size
                {
                    return Err(bad(
                        at,
                        format!(
                            "the base's file {:?} here is not the sender's ({} bytes, not {})",
                            e.path_lossy(),
                            st.st_size,
                            e.size
                        ),
                    ));
                }
                clear_other_xattrs(fd.as_fd(), &e, &path)?;
                apply_fd(fd.as_fd(), &e, self.privileged, &path)?;
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
        if f.kept {
            clear_other_xattrs(f.fd.as_fd(), &f.meta, &path)?;
        }
        apply_fd(f.fd.as_fd(), &f.meta, self.privileged, &path)
    }

    /// A kept directory of the base must take new entries (for a caller without
    /// CAP_DAC_OVERRIDE); its own mode is set when the stream leaves it.
    fn make_writable(&self, fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
        if self.privileged {
            return Ok(());
        }
        let st = rustix::fs::fstat(fd).at("stat", path)?;
        if st.st_mode & 0o700 != 0o700 {
            rustix::fs::fchmod(fd, Mode::from_raw_mode((st.st_mode | 0o700) & 0o7777))
                .at("chmod", path)?;
        }
        Ok(())
    }

    /// A removal record: the base's entry at its path goes, with all below it.
    fn remove(&mut self, payload: &[u8], at: u64) -> Result<()> {
        if !self.increment {
            return Err(bad(at, "a removal in a full stream"));
        }
        check_path(payload, at)?;
        let (parent, name) = split(payload);
        while self.stack.last().is_some_and(|f| f.path != parent) {
            self.leave()?;
        }
        let Some(top) = self.stack.last() else {
            return Err(bad(at, "a removal outside its directory"));
        };
        let path = self.full(payload);
        let name = cstr(name);
        match rustix::fs::statat(&top.fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => {
                crate::copy::remove_entry(top.fd.as_fd(), OsStr::from_bytes(name.as_bytes()), &path)
            }
            Err(rustix::io::Errno::NOENT) => Err(bad(
                at,
                format!(
                    "the stream removes {:?}, which the base here does not have",
                    String::from_utf8_lossy(payload)
                ),
            )),
            Err(err) => Err(Error::io("stat", &path, err)),
        }
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

/// The default ACL of a directory kept from the base goes while the stream fills it: what is
/// made inside would inherit it as an access ACL the sender's entry does not have (a full
/// receive sets a directory's ACLs only when it leaves it, for the same reason). The
/// directory's own entry sets it again, if it has one, when the stream leaves it.
fn drop_default_acl(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    match crate::sys::xattr::fremove(fd, c"system.posix_acl_default") {
        Ok(()) => Ok(()),
        Err(err) if matches!(err.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)) => Ok(()),
        Err(source) => Err(Error::Xattr {
            op: "removexattr",
            attr: "system.posix_acl_default".into(),
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The label a host's SELinux policy gives every file it makes: the receiving host's own, never
/// removable there, and not the sender's to take away.
const SELINUX_LABEL: &[u8] = b"security.selinux";

/// Remove the xattrs of an entry kept from the base that the stream's entry has not (those
/// the sender never sends, as `copy::meta` skips them, stay, and so does the host's SELinux
/// label).
fn clear_other_xattrs(fd: BorrowedFd<'_>, e: &Entry, path: &Path) -> Result<()> {
    let names = match crate::sys::xattr::flist(fd) {
        Ok(n) => n,
        Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(()),
        Err(err) => return Err(Error::io("listxattr", path, err)),
    };
    for name in names {
        let n = name.as_bytes();
        if crate::copy::skipped_xattr(n)
            || n == SELINUX_LABEL
            || e.xattrs.iter().any(|(k, _)| k == n)
        {
            continue;
        }
        match crate::sys::xattr::fremove(fd, &name) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENODATA) => {}
            Err(source) => {
                return Err(Error::Xattr {
                    op: "removexattr",
                    attr: name.to_string_lossy().into_owned(),
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
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

    enum Rec {
        E(Entry),
        R(&'static str),
    }

    /// An increment (its header names a base) of `recs` after a root entry.
    fn increment(recs: &[Rec], full: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = RecordWriter::start(&mut out).unwrap();
        let h = StreamHeader { base: (!full).then(|| "b".to_string()), ..header() };
        w.record(HEADER, &[&serde_json::to_vec(&h).unwrap()]).unwrap();
        w.record(ENTRY, &[&entry("", Kind::Dir, 0o40755, "").encode()]).unwrap();
        let (mut entries, mut bytes) = (1, 0);
        for r in recs {
            match r {
                Rec::E(e) => {
                    entries += 1;
                    w.record(ENTRY, &[&e.encode()]).unwrap();
                    if e.kind == Kind::File {
                        w.record(DATA, &[&0u64.to_le_bytes(), b"data"]).unwrap();
                        bytes += 4;
                    }
                }
                Rec::R(p) => w.record(crate::stream::record::REMOVE, &[p.as_bytes()]).unwrap(),
            }
        }
        let records = w.records;
        w.record(TRAILER, &[&crate::stream::record::trailer(entries, bytes, records)]).unwrap();
        out
    }

    /// An increment applies to the base's tree: what it replaces and removes is beneath the
    /// tree, never through a symlink of the base, and a record that does not fit the base
    /// (removing what is not there, "the base's file" where there is none) is BadStream.
    #[test]
    fn an_increment_changes_the_base_and_reaches_nothing_outside() {
        use Rec::{E, R};
        let base_tree = |dst: &Path| {
            std::os::unix::fs::symlink("../outside", dst.join("l")).unwrap();
            std::os::unix::fs::symlink("../outside/victim", dst.join("s")).unwrap();
            std::fs::create_dir(dst.join("d")).unwrap();
            std::fs::write(dst.join("d/f"), "base").unwrap();
            std::fs::write(dst.join("d/g"), "gone").unwrap();
        };
        let same =
            |p: &str| Entry { kind: Kind::Same, size: 4, ..entry(p, Kind::File, 0o100600, "") };
        let bad: Vec<(&str, Vec<Rec>, bool)> = vec![
            ("remove through a symlink", vec![R("l/victim")], false),
            ("remove outside", vec![R("../outside/victim")], false),
            ("remove absent", vec![R("absent")], false),
            (
                "remove in a new directory",
                vec![E(entry("l", Kind::Dir, 0o40755, "")), R("l/victim")],
                false,
            ),
            ("the base's file at a symlink", vec![E(same("s"))], false),
            ("the base's file at a directory", vec![E(same("d"))], false),
            ("a removal in a full stream", vec![R("d")], true),
        ];
        for (what, recs, full) in bad {
            let (base, dst) = scratch("inc-bad");
            base_tree(&dst);
            let err = unpack(&increment(&recs, full), &dst).unwrap_err();
            assert!(matches!(err, Error::BadStream { .. }), "{what}: {err}");
            assert_eq!(std::fs::read(base.join("outside/victim")).unwrap(), b"mine", "{what}");
            std::fs::remove_dir_all(&base).unwrap();
        }
        // Replacing the symlinks replaces them, not what they point to; the base's file keeps
        // its data and takes the new metadata.
        let (base, dst) = scratch("inc-good");
        base_tree(&dst);
        let recs = vec![
            E(entry("d", Kind::Dir, 0o40700, "")),
            E(same("d/f")),
            R("d/g"),
            E(entry("l", Kind::Dir, 0o40755, "")),
            E(entry("l/new", Kind::File, 0o100644, "")),
            E(entry("s", Kind::File, 0o100644, "")),
        ];
        unpack(&increment(&recs, false), &dst).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::read(base.join("outside/victim")).unwrap(), b"mine");
        assert!(!base.join("outside/new").exists());
        assert_eq!(std::fs::read(dst.join("d/f")).unwrap(), b"base");
        assert_eq!(std::fs::metadata(dst.join("d/f")).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::metadata(dst.join("d")).unwrap().mode() & 0o7777, 0o700);
        assert!(!dst.join("d/g").exists());
        assert_eq!(std::fs::read(dst.join("l/new")).unwrap(), b"data");
        assert_eq!(std::fs::read(dst.join("s")).unwrap(), b"data");
        assert!(!std::fs::symlink_metadata(dst.join("s")).unwrap().file_type().is_symlink());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
