//! dlopen of libnvpair and libzfs_core, once per process, and a safe shim per libzfs_core call.
//!
//! Nothing links against the ZFS libraries: a host without them (or without the zfs kernel
//! module) gets [`Error::ZfsUnavailable`] from [`lzc`] and runs every other path. A failed attempt
//! is not cached, so a service started before `modprobe zfs` succeeds on a later call; a success
//! is kept for the life of the process (the libraries are never closed and `libzfs_core_fini` is
//! never called, so `&'static` borrows stay valid).
//!
//! The shims below are the only place that passes pointers to libzfs_core. Each takes validated
//! C strings and [`NvList`]s and returns the raw errno (0 on success) plus any output nvlist;
//! turning those into typed errors is `super`'s job.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::ptr;
use std::sync::{Mutex, OnceLock, PoisonError};

use super::bindings::lzc::{lzc_dataset_type, LibZfsCore};
use super::bindings::nvpair::{nvlist_t, LibNvpair, B_FALSE, B_TRUE};
use super::nvlist::NvList;
use crate::Error;

/// The sonames goldclone loads: the OpenZFS 2.x user-space ABI (2.0 through 2.3 ship these).
pub const LIBNVPAIR_SONAME: &str = "libnvpair.so.3";
/// See [`LIBNVPAIR_SONAME`].
pub const LIBZFS_CORE_SONAME: &str = "libzfs_core.so.3";
/// The control device libzfs_core opens; exists only while the zfs kernel module is loaded.
pub const ZFS_DEV: &str = "/dev/zfs";

/// Both loaded libraries. libzfs_core has been initialised (its `/dev/zfs` fd is open).
pub struct Lzc {
    pub(crate) nv: LibNvpair,
    core: LibZfsCore,
}

static LOADED: OnceLock<Lzc> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// The process-wide libzfs_core, loading and initialising it on first use.
pub fn lzc() -> Result<&'static Lzc, Error> {
    if let Some(l) = LOADED.get() {
        return Ok(l);
    }
    // One loader at a time, so two threads never both call libzfs_core_init for one OnceLock slot.
    let _guard = LOADING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(l) = LOADED.get() {
        return Ok(l);
    }
    let loaded = load()?;
    Ok(LOADED.get_or_init(|| loaded))
}

fn unavailable(reason: String) -> Error {
    Error::ZfsUnavailable { reason }
}

fn load() -> Result<Lzc, Error> {
    if !Path::new(ZFS_DEV).exists() {
        return Err(unavailable(format!(
            "{ZFS_DEV} does not exist (zfs kernel module not loaded)"
        )));
    }
    // SAFETY: loading libnvpair runs only its ELF constructors, which set up no state beyond the
    // library itself; every symbol the generated table lists is resolved now (require_all), with
    // the signature bindgen read from the OpenZFS 2.3 headers, unchanged across 2.x.
    let nv = unsafe { LibNvpair::new(LIBNVPAIR_SONAME) }
        .map_err(|e| unavailable(format!("cannot load {LIBNVPAIR_SONAME}: {e}")))?;
    // SAFETY: as above, for libzfs_core (whose constructors do nothing; init is explicit).
    let core = unsafe { LibZfsCore::new(LIBZFS_CORE_SONAME) }
        .map_err(|e| unavailable(format!("cannot load {LIBZFS_CORE_SONAME}: {e}")))?;
    // SAFETY: libzfs_core_init takes no arguments and is thread-safe (reference-counted open).
    let ret = unsafe { core.libzfs_core_init() };
    if ret != 0 {
        let err = std::io::Error::from_raw_os_error(ret);
        return Err(unavailable(format!("libzfs_core_init: open {ZFS_DEV}: {err}")));
    }
    Ok(Lzc { nv, core })
}

/// Raw outcome of a libzfs_core call: errno (0 = success) and the output nvlist, if any.
pub struct Outcome {
    pub errno: i32,
    pub out: Option<NvList>,
}

fn opt_ptr(list: Option<&NvList>) -> *mut nvlist_t {
    list.map_or(ptr::null_mut(), NvList::as_ptr)
}

impl Lzc {
    /// A new empty nvlist.
    pub fn nvlist(&'static self) -> std::io::Result<NvList> {
        NvList::new(&self.nv)
    }

    fn take(&'static self, raw: *mut nvlist_t) -> Option<NvList> {
        // SAFETY: `raw` is null or a list libzfs_core allocated with this libnvpair and handed to
        // the caller to free.
        unsafe { NvList::from_raw(&self.nv, raw) }
    }

    /// `lzc_snapshot`: all snapshots in `snaps` (keys) atomically. `out` is the per-name errlist.
    pub fn snapshot(&'static self, snaps: &NvList, props: Option<&NvList>) -> Outcome {
        let mut errlist: *mut nvlist_t = ptr::null_mut();
        // SAFETY: input lists are live and only read; `errlist` is a valid out-pointer.
        let errno = unsafe { self.core.lzc_snapshot(snaps.as_ptr(), opt_ptr(props), &mut errlist) };
        Outcome { errno, out: self.take(errlist) }
    }

    /// `lzc_create`.
    pub fn create(&'static self, name: &CStr, ty: lzc_dataset_type, props: Option<&NvList>) -> i32 {
        // SAFETY: `name` is NUL-terminated; no wrapping key (null, 0) means unencrypted.
        unsafe { self.core.lzc_create(name.as_ptr(), ty, opt_ptr(props), ptr::null_mut(), 0) }
    }

    /// `lzc_clone`.
    pub fn clone(&'static self, name: &CStr, origin: &CStr, props: Option<&NvList>) -> i32 {
        // SAFETY: both names are NUL-terminated; `props` is live or null.
        unsafe { self.core.lzc_clone(name.as_ptr(), origin.as_ptr(), opt_ptr(props)) }
    }

    /// `lzc_promote`. On EEXIST the second value is the snapshot name that conflicts.
    pub fn promote(&'static self, name: &CStr) -> (i32, Option<String>) {
        let mut buf = [0 as libc::c_char; crate::sys::block::ZFS_MAX_DATASET_NAME_LEN];
        // SAFETY: `buf` is writable for its full length, which we pass; lzc_promote strlcpy's into
        // it (always NUL-terminated) only on EEXIST.
        let errno = unsafe {
            self.core.lzc_promote(name.as_ptr(), buf.as_mut_ptr(), buf.len() as libc::c_int)
        };
        let conflict = (errno == libc::EEXIST && buf[0] != 0).then(|| {
            // SAFETY: on EEXIST the buffer holds a NUL-terminated string (strlcpy).
            unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
        });
        (errno, conflict)
    }

    /// `lzc_destroy_snaps`: all or none; `out` is the per-name errlist.
    pub fn destroy_snaps(&'static self, snaps: &NvList, defer: bool) -> Outcome {
        let mut errlist: *mut nvlist_t = ptr::null_mut();
        let defer = if defer { B_TRUE } else { B_FALSE };
        // SAFETY: `snaps` is live and only read; `errlist` is a valid out-pointer.
        let errno = unsafe { self.core.lzc_destroy_snaps(snaps.as_ptr(), defer, &mut errlist) };
        Outcome { errno, out: self.take(errlist) }
    }

    /// `lzc_rename`.
    pub fn rename(&'static self, from: &CStr, to: &CStr) -> i32 {
        // SAFETY: both names are NUL-terminated.
        unsafe { self.core.lzc_rename(from.as_ptr(), to.as_ptr()) }
    }

    /// `lzc_destroy` (one filesystem, volume or snapshot).
    pub fn destroy(&'static self, name: &CStr) -> i32 {
        // SAFETY: `name` is NUL-terminated.
        unsafe { self.core.lzc_destroy(name.as_ptr()) }
    }

    /// `lzc_exists`.
    pub fn exists(&'static self, name: &CStr) -> bool {
        // SAFETY: `name` is NUL-terminated.
        unsafe { self.core.lzc_exists(name.as_ptr()) != B_FALSE }
    }

    /// `lzc_hold`. With `cleanup_fd` (an fd of `/dev/zfs` opened O_EXCL) the holds go away when
    /// it is closed.
    pub fn hold(&'static self, holds: &NvList, cleanup_fd: Option<BorrowedFd<'_>>) -> Outcome {
        let mut errlist: *mut nvlist_t = ptr::null_mut();
        let fd = cleanup_fd.map_or(-1, |fd| fd.as_raw_fd());
        // SAFETY: `holds` is live and only read; `fd` is -1 or open for the call; `errlist` is a
        // valid out-pointer.
        let errno = unsafe { self.core.lzc_hold(holds.as_ptr(), fd, &mut errlist) };
        Outcome { errno, out: self.take(errlist) }
    }

    /// `lzc_release`.
    pub fn release(&'static self, holds: &NvList) -> Outcome {
        let mut errlist: *mut nvlist_t = ptr::null_mut();
        // SAFETY: `holds` is live and only read; `errlist` is a valid out-pointer.
        let errno = unsafe { self.core.lzc_release(holds.as_ptr(), &mut errlist) };
        Outcome { errno, out: self.take(errlist) }
    }

    /// `lzc_get_holds`: `out` maps hold tag to creation time.
    pub fn get_holds(&'static self, snap: &CStr) -> Outcome {
        let mut holds: *mut nvlist_t = ptr::null_mut();
        // SAFETY: `snap` is NUL-terminated; `holds` is a valid out-pointer.
        let errno = unsafe { self.core.lzc_get_holds(snap.as_ptr(), &mut holds) };
        Outcome { errno, out: self.take(holds) }
    }

    /// `lzc_channel_program` (or `_nosync`, which runs in open context and cannot modify).
    pub fn channel_program(
        &'static self,
        pool: &CStr,
        program: &CString,
        instr_limit: u64,
        mem_limit: u64,
        args: &NvList,
        sync: bool,
    ) -> Outcome {
        let mut out: *mut nvlist_t = ptr::null_mut();
        let f =
            if sync { self.core.lzc_channel_program } else { self.core.lzc_channel_program_nosync };
        // SAFETY: strings are NUL-terminated, `args` is live and only read, `out` is a valid
        // out-pointer; both functions have this exact signature.
        let errno = unsafe {
            f(pool.as_ptr(), program.as_ptr(), instr_limit, mem_limit, args.as_ptr(), &mut out)
        };
        Outcome { errno, out: self.take(out) }
    }

    /// `lzc_sync`: wait for the pool's open transaction group to reach disk.
    pub fn sync(&'static self, pool: &CStr, args: &NvList) -> i32 {
        // SAFETY: `pool` is NUL-terminated; `args` is live; lzc_sync never writes its out-list.
        unsafe { self.core.lzc_sync(pool.as_ptr(), args.as_ptr(), ptr::null_mut()) }
    }
}
