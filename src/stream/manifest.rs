//! A generation's manifest: what an increment from it needs to know of it, so that the sender
//! may retire the generation and still send increments from it (the role a ZFS bookmark plays).
//!
//! After the generation's id, the time it was made immutable; then for every entry, in the
//! send's walk order: its path, kind, inode number, ctime and link count (the quick check: on
//! btrfs, ZFS, zvols and images a session and the generation promoted from it keep the inodes
//! of the generation they came from, and nothing can change an inode without moving its
//! ctime), a digest of its entry record (owner, mode, times, xattrs, target: what the receiver
//! would set), and for a regular file a digest of its data ([`DataDigest`]). The file ends
//! with a SHA-256 of everything before it: a damaged manifest would make a wrong increment, so
//! it is refused instead.
//!
//! The quick check is not for every entry: the copy backend makes new inodes for every
//! session (a number the base had may be reused by another file), and a ctime is as coarse as
//! the kernel's clock tick, so a file changed in the same tick as its last change before the
//! generation was sealed would show the same ctime (git's "racy" entries). The sender compares
//! the data of those ([`crate::stream::Manifests::quick_check`]).

use std::cmp::Ordering;
use std::io::{self, BufRead, Write};

use sha2::{Digest, Sha256};

use super::record::Kind;
use crate::{Error, Result};

const MAGIC: &[u8] = b"goldclone-manifest 1\n";
/// Before an entry: one follows; before the digest: the entries are over.
const MORE: u8 = 1;
const END: u8 = 0;

/// A digest as a manifest keeps it: the first 16 bytes of a SHA-256.
pub type Digest16 = [u8; 16];

fn digest16(h: Sha256) -> Digest16 {
    h.finalize()[..16].try_into().expect("16 of 32 bytes")
}

/// The digest of an entry record's encoding.
pub fn meta_digest(encoded: &[u8]) -> Digest16 {
    let mut h = Sha256::new();
    h.update(encoded);
    digest16(h)
}

/// Block size of [`DataDigest`].
const BLOCK: usize = 4096;

/// The digest of a file's data that does not depend on how it is laid out: every 4 KiB block
/// (by its offset) that holds a byte other than zero, then the size. A hole and a block of
/// written zeros count alike, so one file has one digest on every filesystem and however the
/// sender found its extents. Fed in increasing offsets.
pub struct DataDigest {
    h: Sha256,
    block: Box<[u8; BLOCK]>,
    index: Option<u64>,
}

impl Default for DataDigest {
    fn default() -> Self {
        DataDigest { h: Sha256::new(), block: Box::new([0; BLOCK]), index: None }
    }
}

impl DataDigest {
    /// `bytes` of the file at `offset`, after everything fed before.
    pub fn feed(&mut self, mut offset: u64, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let index = offset / BLOCK as u64;
            if self.index != Some(index) {
                self.flush();
                self.index = Some(index);
            }
            let within = (offset % BLOCK as u64) as usize;
            let n = (BLOCK - within).min(bytes.len());
            self.block[within..within + n].copy_from_slice(&bytes[..n]);
            offset += n as u64;
            bytes = &bytes[n..];
        }
    }

    fn flush(&mut self) {
        if let Some(index) = self.index.take() {
            if self.block.iter().any(|b| *b != 0) {
                self.h.update(index.to_le_bytes());
                self.h.update(&self.block[..]);
            }
            self.block.fill(0);
        }
    }

    /// The digest of a file of `size` bytes.
    pub fn finish(mut self, size: u64) -> Digest16 {
        self.flush();
        self.h.update(b"size");
        self.h.update(size.to_le_bytes());
        digest16(self.h)
    }
}

/// One entry of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub path: Vec<u8>,
    pub kind: Kind,
    pub ino: u64,
    pub ctime: (i64, u32),
    pub nlink: u64,
    /// [`meta_digest`] of the entry's record as sent.
    pub meta: Digest16,
    /// A regular file's [`DataDigest`]; zeros for anything else.
    pub data: Digest16,
}

/// `a` before `b` in the send's walk order (each directory's names sorted, a directory before
/// everything in it): component by component.
pub fn walk_order(a: &[u8], b: &[u8]) -> Ordering {
    if a.is_empty() || b.is_empty() {
        return a.len().cmp(&b.len());
    }
    a.split(|c| *c == b'/').cmp(b.split(|c| *c == b'/'))
}

/// `path` is `dir` or below it (the root, `dir` empty, holds everything).
pub fn is_within(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty()
        || (path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/')
        || path == dir
}

/// Writes a manifest; [`ManifestWriter::finish`] completes it.
pub struct ManifestWriter<'w> {
    out: &'w mut dyn Write,
    h: Sha256,
    last: Option<Vec<u8>>,
}

impl<'w> ManifestWriter<'w> {
    /// A manifest of the generation whose stream id is `id`, made immutable at `sealed_at`
    /// (seconds since the Unix epoch: its record's creation time).
    pub fn start(out: &'w mut dyn Write, id: &str, sealed_at: u64) -> Result<Self> {
        let mut w = ManifestWriter { out, h: Sha256::new(), last: None };
        w.put(MAGIC)?;
        w.put(&(id.len() as u32).to_le_bytes())?;
        w.put(id.as_bytes())?;
        w.put(&sealed_at.to_le_bytes())?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.h.update(b);
        self.out.write_all(b).map_err(manifest_error)
    }

    /// The next entry, in walk order.
    pub fn push(&mut self, e: &ManifestEntry) -> Result<()> {
        debug_assert!(self.last.as_ref().map_or(true, |l| walk_order(l, &e.path).is_lt()));
        self.last = Some(e.path.clone());
        let mut b = Vec::with_capacity(80 + e.path.len());
        b.push(MORE);
        b.push(e.kind as u8);
        b.extend_from_slice(&(e.path.len() as u32).to_le_bytes());
        b.extend_from_slice(&e.path);
        b.extend_from_slice(&e.ino.to_le_bytes());
        b.extend_from_slice(&e.ctime.0.to_le_bytes());
        b.extend_from_slice(&e.ctime.1.to_le_bytes());
        b.extend_from_slice(&e.nlink.to_le_bytes());
        b.extend_from_slice(&e.meta);
        b.extend_from_slice(&e.data);
        self.put(&b)
    }

    /// The end mark and the digest of everything before it.
    pub fn finish(&mut self) -> Result<()> {
        self.put(&[END])?;
        let sum = self.h.clone().finalize();
        self.out.write_all(&sum).map_err(manifest_error)?;
        self.out.flush().map_err(manifest_error)
    }
}

fn manifest_error(e: io::Error) -> Error {
    Error::Io { op: "write manifest", path: "manifest".into(), source: e }
}

/// Reads a manifest entry by entry, with one entry of look-ahead; [`ManifestReader::finish`]
/// checks its digest.
pub struct ManifestReader<'r> {
    input: &'r mut dyn BufRead,
    h: Sha256,
    id: String,
    sealed_at: u64,
    next: Option<ManifestEntry>,
    ended: bool,
    /// What the manifest is, for errors.
    what: String,
}

impl<'r> ManifestReader<'r> {
    /// Open a manifest (`what` names it in errors).
    pub fn open(input: &'r mut dyn BufRead, what: &str) -> Result<Self> {
        let mut r = ManifestReader {
            input,
            h: Sha256::new(),
            id: String::new(),
            sealed_at: 0,
            next: None,
            ended: false,
            what: what.to_string(),
        };
        let magic = r.take(MAGIC.len())?;
        if magic != MAGIC {
            return Err(r.damaged("not a goldclone manifest"));
        }
        let n = u32::from_le_bytes(r.take(4)?.try_into().expect("4")) as usize;
        if n > 1024 {
            return Err(r.damaged("an id longer than 1024 bytes"));
        }
        r.id = String::from_utf8(r.take(n)?).map_err(|_| r.damaged("an id not UTF-8"))?;
        r.sealed_at = u64::from_le_bytes(r.take(8)?.try_into().expect("8"));
        r.advance()?;
        Ok(r)
    }

    /// The stream id of the generation it describes.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When the generation it describes was made immutable (seconds since the Unix epoch).
    pub fn sealed_at(&self) -> u64 {
        self.sealed_at
    }

    fn damaged(&self, what: &str) -> Error {
        Error::Damaged { path: self.what.clone().into(), what: format!("manifest: {what}") }
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        self.input.read_exact(&mut b).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.damaged("ends early")
            } else {
                Error::Io { op: "read manifest", path: self.what.clone().into(), source: e }
            }
        })?;
        self.h.update(&b);
        Ok(b)
    }

    fn advance(&mut self) -> Result<()> {
        if self.ended {
            self.next = None;
            return Ok(());
        }
        let mark = self.take(1)?[0];
        if mark == END {
            self.ended = true;
            self.next = None;
            return Ok(());
        }
        if mark != MORE {
            return Err(self.damaged("a bad mark"));
        }
        let head = self.take(5)?;
        // What a tree holds (never Same, which only a stream says).
        let kind = Kind::from_u8(head[0])
            .filter(|k| *k != Kind::Same)
            .ok_or_else(|| self.damaged("an entry of unknown kind"))?;
        let n = u32::from_le_bytes(head[1..5].try_into().expect("4")) as usize;
        if n > 1 << 20 {
            return Err(self.damaged("a path longer than 1 MiB"));
        }
        let path = self.take(n)?;
        let f = self.take(8 + 8 + 4 + 8 + 16 + 16)?;
        let u64_at = |i: usize| u64::from_le_bytes(f[i..i + 8].try_into().expect("8"));
        let e = ManifestEntry {
            path,
            kind,
            ino: u64_at(0),
            ctime: (u64_at(8) as i64, u32::from_le_bytes(f[16..20].try_into().expect("4"))),
            nlink: u64_at(20),
            meta: f[28..44].try_into().expect("16"),
            data: f[44..60].try_into().expect("16"),
        };
        self.next = Some(e);
        Ok(())
    }

    /// The next entry, not taken.
    pub fn peek(&self) -> Option<&ManifestEntry> {
        self.next.as_ref()
    }

    /// Take the next entry.
    pub fn take_next(&mut self) -> Result<Option<ManifestEntry>> {
        let e = self.next.take();
        if e.is_some() {
            self.advance()?;
            if let (Some(prev), Some(next)) = (&e, &self.next) {
                if !walk_order(&prev.path, &next.path).is_lt() {
                    return Err(self.damaged("entries out of order"));
                }
            }
        }
        Ok(e)
    }

    /// All entries have been taken: check the digest, and that nothing follows it.
    pub fn finish(&mut self) -> Result<()> {
        if !self.ended || self.next.is_some() {
            return Err(self.damaged("entries left unread"));
        }
        let want = self.h.clone().finalize();
        let mut got = [0u8; 32];
        self.input.read_exact(&mut got).map_err(|_| self.damaged("its digest is missing"))?;
        if got[..] != want[..] {
            return Err(self.damaged("its digest does not match: damaged"));
        }
        let mut rest = [0u8; 1];
        if self.input.read(&mut rest).map_err(|e| Error::Io {
            op: "read manifest",
            path: self.what.clone().into(),
            source: e,
        })? != 0
        {
            return Err(self.damaged("bytes after its digest"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind, n: u8) -> ManifestEntry {
        ManifestEntry {
            path: path.as_bytes().to_vec(),
            kind,
            ino: n as u64,
            ctime: (n as i64, n as u32),
            nlink: 1,
            meta: [n; 16],
            data: [n + 1; 16],
        }
    }

    fn written(entries: &[ManifestEntry]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = ManifestWriter::start(&mut out, "p.1.x", 1_700_000_000).unwrap();
        for e in entries {
            w.push(e).unwrap();
        }
        w.finish().unwrap();
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<ManifestEntry>> {
        let mut input = bytes;
        let mut r = ManifestReader::open(&mut input, "test")?;
        let mut got = Vec::new();
        while let Some(e) = r.take_next()? {
            got.push(e);
        }
        r.finish()?;
        Ok(got)
    }

    #[test]
    fn walk_order_is_the_send_walks() {
        let mut v = vec!["a-c", "a/b", "a", "", "b", "a/b/c", "a0", "a/a"];
        v.sort_by(|a, b| walk_order(a.as_bytes(), b.as_bytes()));
        assert_eq!(v, ["", "a", "a/a", "a/b", "a/b/c", "a-c", "a0", "b"]);
        assert!(is_within(b"a/b", b"a") && is_within(b"a", b"") && !is_within(b"ab", b"a"));
    }

    #[test]
    fn a_manifest_reads_back_and_any_damage_is_refused() {
        let entries = vec![
            entry("", Kind::Dir, 1),
            entry("a", Kind::Dir, 2),
            entry("a/f", Kind::File, 3),
            entry("b", Kind::Symlink, 4),
        ];
        let bytes = written(&entries);
        assert_eq!(read_all(&bytes).unwrap(), entries);
        for cut in 0..bytes.len() {
            assert!(read_all(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(read_all(&b).is_err(), "flipped byte {i}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read_all(&longer).is_err());
    }

    #[test]
    fn data_digest_is_layout_free() {
        let whole = {
            let mut d = DataDigest::default();
            d.feed(0, &[0u8; 8192]);
            d.feed(8192, b"abc");
            d.finish(8195)
        };
        // The same file with its first two blocks a hole, fed in odd pieces.
        let holey = {
            let mut d = DataDigest::default();
            d.feed(8192, b"a");
            d.feed(8193, b"bc");
            d.finish(8195)
        };
        assert_eq!(whole, holey);
        let other = {
            let mut d = DataDigest::default();
            d.feed(8192, b"abd");
            d.finish(8195)
        };
        assert_ne!(whole, other);
        let longer = {
            let mut d = DataDigest::default();
            d.feed(8192, b"abc");
            d.finish(8196)
        };
        assert_ne!(whole, longer);
    }
}
