//! SIGPIPE kept away from a library's writes: a send into a pipe whose reader went away must
//! fail with EPIPE, not kill the process that called us (a C or Go program that did not
//! ignore SIGPIPE).

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

/// Run `f` with SIGPIPE blocked on this thread. A write to a broken pipe then fails with EPIPE
/// and leaves a SIGPIPE pending on the thread, which is taken away again before the mask is
/// restored. If SIGPIPE was blocked already, nothing changes.
pub fn without_sigpipe<T>(f: impl FnOnce() -> T) -> T {
    let mut pipe = SigSet::empty();
    pipe.add(Signal::SIGPIPE);
    let mut old = SigSet::empty();
    if nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&pipe), Some(&mut old))
        .is_err()
    {
        return f();
    }
    let out = f();
    if !old.contains(Signal::SIGPIPE) {
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        loop {
            // SAFETY: `pipe` is an initialised sigset_t, the info pointer may be NULL, and
            // `zero` is a valid timespec; with a zero timeout the call only takes a pending
            // SIGPIPE (or fails with EAGAIN).
            let got = unsafe { libc::sigtimedwait(pipe.as_ref(), std::ptr::null_mut(), &zero) };
            if got != libc::SIGPIPE {
                break;
            }
        }
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&pipe), None);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A write into a pipe with no reader fails with EPIPE and the process lives on, with the
    /// thread's mask as it was.
    #[test]
    fn a_broken_pipe_is_an_error_not_a_death() {
        use nix::sys::signal::{signal, SigHandler};
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        let mut w = std::fs::File::from(w);
        // The test harness ignores SIGPIPE, as every Rust program does; a C program does not.
        // SAFETY: setting a signal's disposition to the default (and back below) installs no
        // handler code.
        let before = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.unwrap();
        let err = without_sigpipe(|| w.write_all(b"x")).unwrap_err();
        // SAFETY: as above: the disposition the harness had.
        unsafe { signal(Signal::SIGPIPE, before) }.unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        let mask = SigSet::thread_get_mask().unwrap();
        assert!(!mask.contains(Signal::SIGPIPE));
    }
}
