//! Send and receive on file descriptors: the caller's pipe, socket or file carries the stream.

use std::ffi::c_char;
use std::io::{BufReader, BufWriter, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};

use rustix::event::{PollFd, PollFlags};

use super::args;
use super::cache::{cache, goldclone_cache, goldclone_op_options, watched};
use super::error::{goldclone_result, Failure};
use crate::copy::CancelToken;

/// What a finished send wrote.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct goldclone_sent {
    /// The generation sent.
    pub generation: u64,
    /// Entries in the stream, the root included.
    pub entries: u64,
    /// Bytes of file data in it.
    pub bytes: u64,
    /// Bytes of stream written to the descriptor.
    pub stream_bytes: u64,
}

/// The caller's open descriptor `fd` as a `File` that is never closed here.
///
/// # Safety
/// `fd` is open for the duration of the call (checked: a closed one is INVALID_ARGUMENT).
unsafe fn borrowed_file(fd: RawFd, param: &str) -> Result<ManuallyDrop<std::fs::File>, Failure> {
    // SAFETY: fcntl(F_GETFD) only asks whether `fd` is open; it touches nothing.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Failure::new(
            goldclone_result::InvalidArgument,
            format!("{param} {fd} is not an open file descriptor"),
        ));
    }
    // SAFETY: open (checked above) and the caller's for the call; ManuallyDrop never closes it.
    Ok(ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) }))
}

/// The caller's descriptor, read or written only once `poll` says it is ready, so that a
/// cancel stops a send or receive whose peer stalled (checked every 100 ms while it waits).
struct Interruptible<'a> {
    file: &'a std::fs::File,
    cancel: Option<&'a CancelToken>,
}

impl Interruptible<'_> {
    fn wait(&self, flags: PollFlags) -> std::io::Result<()> {
        let tick = rustix::event::Timespec { tv_sec: 0, tv_nsec: 100_000_000 };
        loop {
            if self.cancel.is_some_and(CancelToken::is_cancelled) {
                return Err(std::io::Error::from_raw_os_error(libc::ECANCELED));
            }
            let mut fds = [PollFd::new(self.file, flags)];
            match rustix::event::poll(&mut fds, Some(&tick)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Read for Interruptible<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            self.wait(PollFlags::IN)?;
            // A non-blocking descriptor may still have nothing: wait again.
            match (&*self.file).read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }
}

impl Write for Interruptible<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            self.wait(PollFlags::OUT)?;
            match (&*self.file).write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Write generation `generation` of `project` (0: the current one) to the open descriptor
/// `fd` as a portable stream, which `goldclone_cache_receive` makes a generation of a cache of
/// any backend. `fd` is not closed. With `base` (0: none) the stream is an increment from that
/// older generation (only what changed since it), which a receiver whose current generation
/// is `base` takes; the base needs only its manifest here, which every send keeps for the
/// generation it sends (the newest four): NOT_FOUND without it. Progress (totals known up front) and cancellation as
/// `goldclone_cache_import_with` (`opts` may be NULL); `*sent` (may be NULL) receives what was
/// written. The project's lock is held only while the send starts: setups and promotes go on,
/// and a generation retired meanwhile stays until the send is done.
///
/// SIGPIPE is blocked on the writing thread while it writes: a reader that goes away fails the
/// send with IO (EPIPE) and does not kill the process.
///
/// `fd` may be a pipe, socket or file, blocking or not; a cancel stops the send also while the
/// reader stalls. On ZFS and zvol only the current generation can be sent (UNSUPPORTED for an
/// older one): the send reads through a session it makes and removes.
///
/// Errors: NOT_FOUND (project, generation, no manifest of `base`), INVALID_NAME, INVALID_ARGUMENT (`fd`),
/// UNSUPPORTED, CANCELLED, IO (EPIPE: the reader went away).
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_send(
    cache: *const goldclone_cache,
    project: *const c_char,
    generation: u64,
    base: u64,
    fd: i32,
    opts: *const goldclone_op_options,
    sent: *mut goldclone_sent,
) -> goldclone_result {
    ffi_body!("goldclone_cache_send", {
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let project = unsafe { args::name(project, "project") }?;
        let c = self::cache(cache)?;
        // SAFETY: the caller's promise on `fd`.
        let file = unsafe { borrowed_file(fd, "fd") }?;
        let which = (generation != 0).then_some(generation);
        let base = (base != 0).then_some(base);
        // SAFETY: the caller's promise on `opts`.
        let s = unsafe {
            watched(opts, |w, _| {
                let fd = Interruptible { file: &file, cancel: w.cancel.as_ref() };
                let mut out = BufWriter::with_capacity(1 << 20, fd);
                let sent = c.send_with(project, which, base, &mut out, w);
                // Not flushed again on drop: after a failed send that would write outside the
                // send's SIGPIPE guard (a reader gone would kill the process).
                drop(out.into_parts());
                sent
            })
        }?;
        let out = goldclone_sent {
            generation: s.generation,
            entries: s.entries,
            bytes: s.bytes,
            stream_bytes: s.stream_bytes,
        };
        // SAFETY: NULL or writable by the caller's promise.
        unsafe { args::store(sent, out) };
        Ok(())
    })
}

/// Read a stream that `goldclone_cache_send` wrote from the open descriptor `fd` and make it a
/// generation of `project`: its first if the project does not exist here, else its next
/// (sessions keep theirs). `*generation` (may be NULL) receives its number here. Nothing is
/// committed unless the whole stream verifies; a stream of the project's current generation
/// changes nothing and gives its number. `fd` is not closed; reads are buffered, so it may be
/// read past the stream's end.
/// Progress and cancellation as `goldclone_cache_import_with`.
///
/// Errors: BAD_STREAM (not a stream, truncated, a failed checksum, a newer format),
/// INVALID_ARGUMENT (a stream of another project; `fd`), UNSUPPORTED (an incremental stream),
/// INVALID_NAME, CANCELLED, NO_SPACE, BUSY, DAMAGED, INCOMPLETE, IO.
#[no_mangle]
pub unsafe extern "C" fn goldclone_cache_receive(
    cache: *const goldclone_cache,
    project: *const c_char,
    fd: i32,
    opts: *const goldclone_op_options,
    generation: *mut u64,
) -> goldclone_result {
    ffi_body!("goldclone_cache_receive", {
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let project = unsafe { args::name(project, "project") }?;
        let c = self::cache(cache)?;
        // SAFETY: the caller's promise on `fd`.
        let file = unsafe { borrowed_file(fd, "fd") }?;
        // SAFETY: the caller's promise on `opts`.
        let g = unsafe {
            watched(opts, |w, _| {
                let fd = Interruptible { file: &file, cancel: w.cancel.as_ref() };
                let mut input = BufReader::with_capacity(1 << 20, fd);
                c.receive_with(project, &mut input, w)
            })
        }?;
        // SAFETY: NULL or writable by the caller's promise.
        unsafe { args::store(generation, g) };
        Ok(())
    })
}
