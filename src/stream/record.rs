//! Framing of the portable stream: records with a kind, a length and a CRC32C chained through
//! every record before it, and the entry record's encoding. docs/STREAM.md is the format's
//! description; this file is its one implementation.

use std::io::{self, Read, Write};

use crate::{Error, Result};

/// First bytes of every stream: a line a person recognises with `head -c 17`.
pub const MAGIC: &[u8] = b"goldclone-stream\n";

/// The header (JSON), first record after the magic.
pub const HEADER: u8 = b'H';
/// An entry: path, kind, metadata, xattrs, link target.
pub const ENTRY: u8 = b'E';
/// File data of the entry before it: an offset and bytes.
pub const DATA: u8 = b'D';
/// In an increment: remove this path (and all below it) of the base's tree.
pub const REMOVE: u8 = b'R';
/// The last record: counts of what came before it.
pub const TRAILER: u8 = b'T';

/// Largest payload a record may have (an entry with large xattrs; data comes in [`CHUNK`]s).
/// Anything larger is a corrupt length, refused before allocating.
pub const MAX_PAYLOAD: u32 = 8 << 20;
/// Bytes of file data per data record.
pub const CHUNK: usize = 1 << 20;

/// What a broken stream error says where it broke.
fn bad(at: u64, what: impl Into<String>) -> Error {
    Error::BadStream { at, what: what.into() }
}

/// Writes records, counting them and chaining their checksums.
pub struct RecordWriter<'w> {
    out: &'w mut dyn Write,
    crc: u32,
    pub records: u64,
    pub written: u64,
}

impl<'w> RecordWriter<'w> {
    /// Write the magic; records follow.
    pub fn start(out: &'w mut dyn Write) -> Result<Self> {
        let mut w = RecordWriter { out, crc: 0, records: 0, written: 0 };
        w.raw(MAGIC)?;
        Ok(w)
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(write_error)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// One record of `kind` whose payload is `parts` one after the other.
    pub fn record(&mut self, kind: u8, parts: &[&[u8]]) -> Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len).ok().filter(|l| *l <= MAX_PAYLOAD).ok_or_else(|| {
            Error::InvalidArgument { what: format!("a stream record of {len} bytes is too large") }
        })?;
        let mut head = [0u8; 5];
        head[0] = kind;
        head[1..].copy_from_slice(&len.to_le_bytes());
        let mut crc = crc32c::crc32c_append(self.crc, &head);
        for p in parts {
            crc = crc32c::crc32c_append(crc, p);
        }
        self.raw(&head)?;
        for p in parts {
            self.raw(p)?;
        }
        self.raw(&crc.to_le_bytes())?;
        self.crc = crc;
        self.records += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(write_error)
    }
}

fn write_error(e: io::Error) -> Error {
    Error::Io { op: "write the stream", path: "<stream>".into(), source: e }
}

/// Reads records and checks each one's checksum and the chain.
pub struct RecordReader<'r> {
    input: &'r mut dyn Read,
    crc: u32,
    /// Records read so far.
    pub records: u64,
    /// Bytes read so far: where the next record starts.
    pub at: u64,
    buf: Vec<u8>,
}

impl<'r> RecordReader<'r> {
    /// Check the magic; BadStream if it is not a goldclone stream.
    pub fn start(input: &'r mut dyn Read) -> Result<Self> {
        let mut r = RecordReader { input, crc: 0, records: 0, at: 0, buf: Vec::new() };
        let mut magic = [0u8; MAGIC.len()];
        r.fill(&mut magic, "the stream's magic")?;
        if magic != MAGIC {
            return Err(bad(0, "not a goldclone stream (bad magic)"));
        }
        Ok(r)
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(bad(
                        self.at + got as u64,
                        format!(
                            "truncated: the stream ends inside {what}, after {} complete records \
                             and without its trailer",
                            self.records
                        ),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::Io {
                        op: "read the stream",
                        path: "<stream>".into(),
                        source: e,
                    })
                }
            }
        }
        self.at += got as u64;
        Ok(())
    }

    /// The next record: its kind and payload (valid until the next call).
    pub fn next_record(&mut self) -> Result<(u8, &[u8])> {
        let start = self.at;
        let mut head = [0u8; 5];
        self.fill(&mut head, "a record's head")?;
        let len = u32::from_le_bytes(head[1..].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            return Err(bad(start, format!("corrupt: a record claims {len} bytes")));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len as usize, 0);
        let filled = self.fill(&mut buf, "a record");
        let mut sum = [0u8; 4];
        let summed = filled.and_then(|()| self.fill(&mut sum, "a record's checksum"));
        self.buf = buf;
        summed?;
        let crc = crc32c::crc32c_append(crc32c::crc32c_append(self.crc, &head), &self.buf);
        if crc != u32::from_le_bytes(sum) {
            return Err(bad(
                start,
                format!("corrupt: record {} fails its checksum", self.records + 1),
            ));
        }
        self.crc = crc;
        self.records += 1;
        Ok((head[0], &self.buf))
    }
}

/// An entry's kind on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir = 0,
    File = 1,
    Symlink = 2,
    /// Another name of a file sent before (the target is its first path).
    Hardlink = 3,
    /// Character or block device, fifo, socket: made by mknod with `mode` and `rdev`.
    Special = 4,
    /// In an increment: a regular file whose data is the base's at the same path (only its
    /// metadata changed); no data records follow.
    Same = 5,
}

impl Kind {
    pub(crate) fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Dir,
            1 => Kind::File,
            2 => Kind::Symlink,
            3 => Kind::Hardlink,
            4 => Kind::Special,
            5 => Kind::Same,
            _ => return None,
        })
    }
}

/// One entry of the tree, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the tree's root, `/`-separated; empty for the root.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// `st_mode`, type bits included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub rdev: u64,
    /// A file's size; its data follows in data records.
    pub size: u64,
    /// A symlink's target, or a hardlink's first path.
    pub target: Vec<u8>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.path.len() + self.target.len());
        put_bytes(&mut b, &self.path);
        b.push(self.kind as u8);
        for v in [self.mode, self.uid, self.gid] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for (s, ns) in [self.atime, self.mtime] {
            b.extend_from_slice(&s.to_le_bytes());
            b.extend_from_slice(&ns.to_le_bytes());
        }
        b.extend_from_slice(&self.rdev.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        put_bytes(&mut b, &self.target);
        b.extend_from_slice(&(self.xattrs.len() as u32).to_le_bytes());
        for (name, value) in &self.xattrs {
            put_bytes(&mut b, name);
            put_bytes(&mut b, value);
        }
        b
    }

    /// Decode an entry record's payload (which passed its checksum, so a failure here is a
    /// sender's bug or a forged stream: BadStream either way).
    pub fn decode(payload: &[u8], at: u64) -> Result<Entry> {
        let mut c = Cursor { b: payload, at };
        let path = c.bytes()?;
        let kind = Kind::from_u8(c.u8()?).ok_or_else(|| bad(at, "an entry of unknown kind"))?;
        let (mode, uid, gid) = (c.u32()?, c.u32()?, c.u32()?);
        let atime = (c.i64()?, c.u32()?);
        let mtime = (c.i64()?, c.u32()?);
        let (rdev, size) = (c.u64()?, c.u64()?);
        let target = c.bytes()?;
        let n = c.u32()?;
        let mut xattrs = Vec::new();
        for _ in 0..n {
            xattrs.push((c.bytes()?, c.bytes()?));
        }
        if !c.b.is_empty() {
            return Err(bad(at, "an entry record with bytes after its end"));
        }
        Ok(Entry { path, kind, mode, uid, gid, atime, mtime, rdev, size, target, xattrs })
    }
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    b.extend_from_slice(&(v.len() as u32).to_le_bytes());
    b.extend_from_slice(v);
}

struct Cursor<'a> {
    b: &'a [u8],
    at: u64,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(bad(self.at, "an entry record ends early"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

/// The trailer's payload: entries, data bytes, and records before it.
pub fn trailer(entries: u64, bytes: u64, records: u64) -> [u8; 24] {
    let mut t = [0u8; 24];
    t[..8].copy_from_slice(&entries.to_le_bytes());
    t[8..16].copy_from_slice(&bytes.to_le_bytes());
    t[16..].copy_from_slice(&records.to_le_bytes());
    t
}

/// Decode a trailer: (entries, bytes, records).
pub fn read_trailer(payload: &[u8], at: u64) -> Result<(u64, u64, u64)> {
    let mut c = Cursor { b: payload, at };
    let t = (c.u64()?, c.u64()?, c.u64()?);
    if !c.b.is_empty() {
        return Err(bad(at, "a trailer with bytes after its end"));
    }
    Ok(t)
}

/// A data record's offset and bytes.
pub fn read_data(payload: &[u8], at: u64) -> Result<(u64, &[u8])> {
    if payload.len() < 8 {
        return Err(bad(at, "a data record without its offset"));
    }
    let (off, data) = payload.split_at(8);
    Ok((u64::from_le_bytes(off.try_into().expect("8 bytes")), data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            path: b"a/b c".to_vec(),
            kind: Kind::File,
            mode: 0o100644,
            uid: 1000,
            gid: 0,
            atime: (-5, 999_999_999),
            mtime: (1_700_000_000, 1),
            rdev: 0,
            size: 1 << 40,
            target: Vec::new(),
            xattrs: vec![
                (b"trusted.overlay.opaque".to_vec(), b"y".to_vec()),
                (b"user.x".to_vec(), vec![0, 255]),
            ],
        }
    }

    #[test]
    fn an_entry_decodes_to_itself() {
        let e = entry();
        assert_eq!(Entry::decode(&e.encode(), 0).unwrap(), e);
    }

    #[test]
    fn a_short_or_long_entry_is_refused() {
        let b = entry().encode();
        for cut in 0..b.len() {
            assert_eq!(
                Entry::decode(&b[..cut], 0).unwrap_err().kind(),
                crate::ErrorKind::BadStream
            );
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(Entry::decode(&long, 0).unwrap_err().kind(), crate::ErrorKind::BadStream);
    }

    fn stream() -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = RecordWriter::start(&mut out).unwrap();
        w.record(HEADER, &[b"{}"]).unwrap();
        w.record(ENTRY, &[&entry().encode()]).unwrap();
        w.record(DATA, &[&7u64.to_le_bytes(), b"data"]).unwrap();
        let records = w.records;
        w.record(TRAILER, &[&trailer(1, 4, records)]).unwrap();
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>> {
        let mut input = bytes;
        let mut r = RecordReader::start(&mut input)?;
        let mut out = Vec::new();
        loop {
            let (k, p) = r.next_record()?;
            out.push((k, p.to_vec()));
            if k == TRAILER {
                return Ok(out);
            }
        }
    }

    #[test]
    fn records_read_back_in_order() {
        let got = read_all(&stream()).unwrap();
        assert_eq!(got.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [HEADER, ENTRY, DATA, TRAILER]);
        assert_eq!(read_data(&got[2].1, 0).unwrap(), (7, &b"data"[..]));
    }

    /// Every cut and every flipped bit anywhere is a typed BadStream, never a wrong read.
    #[test]
    fn every_cut_and_every_flipped_bit_is_bad_stream() {
        let s = stream();
        for cut in 0..s.len() {
            let e = read_all(&s[..cut]).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::BadStream, "cut at {cut}: {e}");
        }
        for i in 0..s.len() {
            for bit in 0..8 {
                let mut b = s.clone();
                b[i] ^= 1 << bit;
                match read_all(&b) {
                    Err(e) => assert_eq!(e.kind(), crate::ErrorKind::BadStream, "{i}/{bit}: {e}"),
                    Ok(r) => panic!("byte {i} bit {bit} flipped read as {r:?}"),
                }
            }
        }
    }

    /// Two records swapped each pass their own checksum; the chain catches it.
    #[test]
    fn swapped_records_fail_the_chain() {
        let mut out = Vec::new();
        let mut w = RecordWriter::start(&mut out).unwrap();
        w.record(ENTRY, &[b"one"]).unwrap();
        w.record(ENTRY, &[b"two"]).unwrap();
        let first = MAGIC.len()..MAGIC.len() + 12;
        let second = MAGIC.len() + 12..MAGIC.len() + 24;
        let mut swapped = out[..MAGIC.len()].to_vec();
        swapped.extend_from_slice(&out[second]);
        swapped.extend_from_slice(&out[first]);
        let mut input = &swapped[..];
        let mut r = RecordReader::start(&mut input).unwrap();
        assert_eq!(r.next_record().unwrap_err().kind(), crate::ErrorKind::BadStream);
    }
}
