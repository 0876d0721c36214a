//! Copying one regular file's data: FICLONE, else copy_file_range, else a sparse-aware
//! SEEK_DATA/SEEK_HOLE copy, else read/write.
//!
//! Answers that say the *filesystem* cannot (EOPNOTSUPP, ENOTTY, EXDEV, ENOSYS) are remembered per
//! (source device, destination device) pair, so the remaining files of a 772K-file tree skip the
//! call that is bound to fail. Answers about *this file* (EINVAL, ETXTBSY, anything unexpected)
//! fall back for this file only. Answers that mean the copy cannot go on (EIO, ENOSPC, EDQUOT,
//! ENOMEM) end it.

use std::collections::HashMap;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use nix::fcntl::copy_file_range;
use nix::sys::uio::{pread, pwrite};
use nix::unistd::{ftruncate, lseek, Whence};

use crate::sys;

/// How a file's data got to its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    /// Nothing to copy (size 0).
    Empty,
    /// Extents shared with FICLONE.
    Cloned,
    /// In-kernel copy with copy_file_range.
    CopyFileRange,
    /// Only the data extents, found with SEEK_DATA/SEEK_HOLE; holes stay holes.
    Sparse,
    /// Through a user-space buffer.
    ReadWrite,
}

const CANNOT: u8 = 2;

/// What one (source fs, destination fs) pair has shown it cannot do: each field is 0 until a
/// call answers that the filesystems cannot, then [`CANNOT`]; only that answer is worth sharing.
#[derive(Default)]
pub(super) struct PairCaps {
    ficlone: AtomicU8,
    copy_file_range: AtomicU8,
}

/// One copy's cache of [`PairCaps`], keyed by (source st_dev, destination st_dev).
#[derive(Default)]
pub(super) struct CapsCache {
    pairs: RwLock<HashMap<(u64, u64), Arc<PairCaps>>>,
}

impl CapsCache {
    pub fn get(&self, src_dev: u64, dst_dev: u64) -> Arc<PairCaps> {
        if let Some(c) =
            self.pairs.read().unwrap_or_else(|p| p.into_inner()).get(&(src_dev, dst_dev))
        {
            return c.clone();
        }
        let mut map = self.pairs.write().unwrap_or_else(|p| p.into_inner());
        map.entry((src_dev, dst_dev)).or_default().clone()
    }
}

/// What an errno from an accelerated call means for the rest of the copy.
enum Verdict {
    /// The filesystem pair cannot do this call: remember, fall back.
    FsCannot,
    /// This file cannot: fall back for it only.
    FileCannot,
    /// The copy cannot go on.
    Fatal,
}

fn verdict(err: &io::Error) -> Verdict {
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EXDEV | libc::ENOSYS) => Verdict::FsCannot,
        Some(libc::EIO | libc::ENOSPC | libc::EDQUOT | libc::ENOMEM) => Verdict::Fatal,
        _ => Verdict::FileCannot,
    }
}

/// Which file a failed data call was about: a read fails on the source, a write on the
/// destination, and an in-kernel copy (FICLONE, copy_file_range) on either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Source,
    Destination,
    Both,
}

/// A failed data copy: the call that failed, which file it was about, and the kernel's answer.
pub(super) type DataError = (&'static str, Side, io::Error);

/// Copy `size` bytes of data from `src` to the freshly created, empty `dst`. `sparse` says the
/// source has fewer blocks allocated than its size implies; files under `clone_min_size` bytes
/// are written rather than cloned.
pub(super) fn copy_data(
    caps: &PairCaps,
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    size: u64,
    sparse: bool,
    clone_min_size: u64,
) -> Result<Method, DataError> {
    if size == 0 {
        return Ok(Method::Empty);
    }
    if size < clone_min_size {
        // Small enough that writing the bytes costs less than the clone's transactions.
        read_write(src, dst, 0, size as i64)?;
        return Ok(Method::ReadWrite);
    }
    if caps.ficlone.load(Ordering::Relaxed) != CANNOT {
        match sys::fs::ficlone(dst, src) {
            Ok(()) => return Ok(Method::Cloned),
            Err(e) => match verdict(&e) {
                Verdict::FsCannot => {
                    if caps.ficlone.swap(CANNOT, Ordering::Relaxed) != CANNOT {
                        tracing::debug!(
                            target: "goldclone::copy",
                            "FICLONE refused ({e}): the copy falls back to copy_file_range"
                        );
                    }
                }
                Verdict::FileCannot => {}
                Verdict::Fatal => return Err(("FICLONE", Side::Both, e)),
            },
        }
    }
    if sparse {
        if let Some(()) = copy_extents(caps, src, dst, size)? {
            return Ok(Method::Sparse);
        }
    }
    copy_range(caps, src, dst, 0, size)
}

/// Copy only the data extents, leaving holes. `None` if the filesystem cannot tell data from
/// holes (the caller then copies densely).
fn copy_extents(
    caps: &PairCaps,
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    size: u64,
) -> Result<Option<()>, DataError> {
    let mut pos: i64 = 0;
    let end = size as i64;
    while pos < end {
        let data = match lseek(src, pos, Whence::SeekData) {
            Ok(off) => off,
            Err(nix::Error::ENXIO) => break, // only a hole from `pos` to the end
            Err(nix::Error::EINVAL | nix::Error::EOPNOTSUPP) if pos == 0 => return Ok(None),
            Err(e) => return Err(("lseek(SEEK_DATA)", Side::Source, io::Error::from(e))),
        };
        let hole = match lseek(src, data, Whence::SeekHole) {
            Ok(off) => off.min(end),
            Err(nix::Error::ENXIO) => end,
            Err(e) => return Err(("lseek(SEEK_HOLE)", Side::Source, io::Error::from(e))),
        };
        if hole > data {
            copy_range(caps, src, dst, data as u64, hole as u64)?;
        }
        pos = hole;
    }
    // The trailing hole (or a file that is all hole) has no data to write: set the size.
    ftruncate(dst, end).map_err(|e| ("ftruncate", Side::Destination, io::Error::from(e)))?;
    Ok(Some(()))
}

/// Copy bytes `[start, end)` to the same offsets: copy_file_range where the pair allows,
/// finishing with read/write from wherever it stopped.
fn copy_range(
    caps: &PairCaps,
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    start: u64,
    end: u64,
) -> Result<Method, DataError> {
    let mut off_in = start as i64;
    let mut off_out = start as i64;
    let end = end as i64;
    if caps.copy_file_range.load(Ordering::Relaxed) != CANNOT {
        loop {
            if off_in >= end {
                return Ok(Method::CopyFileRange);
            }
            let want = (end - off_in).min(1 << 30) as usize;
            match copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
                Ok(0) => return Ok(Method::CopyFileRange), // source shrank under us
                Ok(_) => {}
                Err(e) => {
                    let e = io::Error::from(e);
                    match verdict(&e) {
                        Verdict::FsCannot => {
                            if caps.copy_file_range.swap(CANNOT, Ordering::Relaxed) != CANNOT {
                                tracing::debug!(
                                    target: "goldclone::copy",
                                    "copy_file_range refused ({e}): the copy falls back to \
                                     read/write"
                                );
                            }
                            break;
                        }
                        Verdict::FileCannot => break,
                        Verdict::Fatal => return Err(("copy_file_range", Side::Both, e)),
                    }
                }
            }
        }
    }
    read_write(src, dst, off_in, end)?;
    Ok(Method::ReadWrite)
}

thread_local! {
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

const BUFFER_SIZE: usize = 1 << 20;

fn read_write(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    mut off: i64,
    end: i64,
) -> Result<(), DataError> {
    BUFFER.with_borrow_mut(|buf| {
        if buf.is_empty() {
            buf.resize(BUFFER_SIZE, 0);
        }
        while off < end {
            let want = ((end - off) as usize).min(buf.len());
            let n = match pread(src, &mut buf[..want], off) {
                Ok(0) => return Ok(()), // source shrank under us
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(("read", Side::Source, io::Error::from(e))),
            };
            let mut done = 0;
            while done < n {
                match pwrite(dst, &buf[done..n], off + done as i64) {
                    Ok(w) => done += w,
                    Err(nix::Error::EINTR) => {}
                    Err(e) => return Err(("write", Side::Destination, io::Error::from(e))),
                }
            }
            off += n as i64;
        }
        Ok(())
    })
}
