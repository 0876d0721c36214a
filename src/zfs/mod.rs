//! ZFS through libzfs_core, loaded at run time.
//!
//! The service used to fork `zfs` and `mount` per session; this module makes the same ioctls in
//! process. ZFS is never a hard dependency: the libraries are opened with dlopen on first use
//! ([`Zfs::open`]), and a host without them, or without the zfs kernel module, gets
//! [`Error::ZfsUnavailable`] while every other path of the same binary keeps working.
//!
//! # Supported OpenZFS versions
//!
//! OpenZFS 2.0 through 2.3 on Linux: they ship `libzfs_core.so.3` and `libnvpair.so.3`, and every
//! call used here (`lzc_snapshot`, `lzc_clone`, `lzc_create`, `lzc_destroy`,
//! `lzc_destroy_snaps`, `lzc_rename`, `lzc_promote`, `lzc_exists`, `lzc_hold`, `lzc_release`,
//! `lzc_get_holds`, `lzc_channel_program[_nosync]`, `lzc_sync`) has had the same C signature
//! since 0.8. Tested against 2.3.2 (Debian bookworm-backports) in a VM (`tests/zfs-vm.sh`).
//! OpenZFS 0.8 and ZoL 0.7 used soname `.so.1` and are not loaded; a future soname bump will
//! be reported as unavailable rather than called with a guessed ABI.
//!
//! # Map
//!
//! * [`name`] — [`DatasetName`] / [`SnapshotName`], validated before any call.
//! * `loader` — dlopen once, `libzfs_core_init`, one safe shim per libzfs_core call.
//! * `nvlist` — owned/borrowed nvlists over libnvpair.
//! * [`mount`] — mount(2)/umount2 of clones, zvol device lookup, XFS freeze/thaw.
//! * this module — [`Zfs`], the safe API, and [`ZfsError`], which maps errno plus the kernel's
//!   per-name error list to a [`ZfsErrorKind`].
//!
//! # A session, end to end
//!
//! ```no_run
//! # fn main() -> goldclone::Result<()> {
//! use goldclone::zfs::{mount, DatasetName, Props, SnapshotName, Zfs};
//! let zfs = Zfs::open()?; // Err(ZfsUnavailable) on a host without ZFS
//! let golden = SnapshotName::new("tank/golden@v42")?;
//! // Sessions live under a parent created once with mountpoint=legacy: clones inherit it, so
//! // they need no properties of their own (each property set costs the kernel another txg).
//! let session = DatasetName::new("tank/sessions/s-123")?;
//! zfs.clone_snapshot(&session, &golden, &Props::new())?;
//! let dir = std::path::Path::new("/srv/sessions/s-123");
//! mount::mount_filesystem(&session, dir, mount::MountOptions::default())?;
//! // ... the session runs ...
//! mount::unmount(dir)?;
//! zfs.destroy(&session)?; // or destroy_many(&[...]) for many sessions in one txg
//! # Ok(())
//! # }
//! ```

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    dead_code,
    unsafe_op_in_unsafe_fn,
    unsafe_code,
    clippy::all,
    clippy::missing_safety_doc
)]
mod bindings;
// Calls through the dlopen'ed function pointers: the only unsafe code of the ZFS layer.
#[allow(unsafe_code)]
mod loader;
pub mod mount;
pub mod name;
// nvlists are libnvpair's C objects, built and read through raw pointers.
#[allow(unsafe_code)]
mod nvlist;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::os::fd::BorrowedFd;

pub use loader::{LIBNVPAIR_SONAME, LIBZFS_CORE_SONAME, ZFS_DEV};
pub use name::{DatasetName, SnapshotName, MAX_NAME_LEN};

use bindings::lzc::{LZC_DATSET_TYPE_ZFS, LZC_DATSET_TYPE_ZVOL};
use loader::{Lzc, Outcome};
use nvlist::{NvList, NvValue};

use crate::Error;

/// What went wrong in a libzfs_core call, classified from errno in the context of the operation
/// (EEXIST means "has clones" for a snapshot destroy but "exists" for a clone, for instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ZfsErrorKind {
    /// The dataset, snapshot or hold to create already exists.
    Exists,
    /// A dataset, snapshot, pool or hold does not exist.
    NotFound,
    /// The names involved are on different pools (EXDEV).
    PoolsDiffer,
    /// A name (or hold tag) is too long.
    NameTooLong,
    /// A snapshot cannot be destroyed because clones depend on it (destroy later with `defer`).
    SnapshotHasClones,
    /// A snapshot cannot be destroyed because it has user holds (or is otherwise long-held).
    SnapshotHeld,
    /// A dataset cannot be destroyed because it has child datasets.
    HasChildren,
    /// The dataset is busy: mounted, has snapshots, or is in use (EBUSY).
    Busy,
    /// Permission denied (EPERM, EACCES).
    PermissionDenied,
    /// Out of space or over quota.
    NoSpace,
    /// `promote` on a dataset that is not a clone.
    NotAClone,
    /// A channel program failed (syntax, runtime error, limits); see the detail text.
    ProgramFailed,
    /// The kernel refused an argument (EINVAL), typically a property: names are validated
    /// before any call and fail with [`Error::InvalidName`] / [`Error::NameTooLong`] instead.
    InvalidArgument,
    /// Anything else; see the errno.
    Other,
}

impl ZfsErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ZfsErrorKind::Exists => "already exists",
            ZfsErrorKind::NotFound => "not found",
            ZfsErrorKind::PoolsDiffer => "names are on different pools",
            ZfsErrorKind::NameTooLong => "name too long",
            ZfsErrorKind::SnapshotHasClones => "snapshot has clones",
            ZfsErrorKind::SnapshotHeld => "snapshot is held",
            ZfsErrorKind::HasChildren => "dataset has children",
            ZfsErrorKind::Busy => "busy",
            ZfsErrorKind::PermissionDenied => "permission denied",
            ZfsErrorKind::NoSpace => "no space",
            ZfsErrorKind::NotAClone => "not a clone",
            ZfsErrorKind::ProgramFailed => "channel program failed",
            ZfsErrorKind::InvalidArgument => "invalid argument",
            ZfsErrorKind::Other => "failed",
        }
    }
}

/// The libzfs_core operation, which decides how an errno reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZfsOp {
    /// `lzc_snapshot`.
    Snapshot,
    /// `lzc_create`.
    Create,
    /// `lzc_clone`.
    Clone,
    /// `lzc_destroy` of a filesystem or volume.
    Destroy,
    /// `lzc_destroy_snaps`.
    DestroySnapshots,
    /// `lzc_rename`.
    Rename,
    /// `lzc_promote`.
    Promote,
    /// `lzc_hold`.
    Hold,
    /// `lzc_release`.
    Release,
    /// `lzc_get_holds`.
    GetHolds,
    /// `lzc_channel_program`.
    ChannelProgram,
    /// `lzc_sync`.
    Sync,
    /// Building an argument nvlist (allocation).
    BuildArguments,
}

impl ZfsOp {
    fn as_str(self) -> &'static str {
        match self {
            ZfsOp::Snapshot => "snapshot",
            ZfsOp::Create => "create",
            ZfsOp::Clone => "clone",
            ZfsOp::Destroy => "destroy",
            ZfsOp::DestroySnapshots => "destroy snapshots",
            ZfsOp::Rename => "rename",
            ZfsOp::Promote => "promote",
            ZfsOp::Hold => "hold",
            ZfsOp::Release => "release",
            ZfsOp::GetHolds => "get holds",
            ZfsOp::ChannelProgram => "channel program",
            ZfsOp::Sync => "sync",
            ZfsOp::BuildArguments => "build arguments",
        }
    }
}

/// Classify `errno` from operation `op` (pyzfs `_error_translation.py` and the kernel's
/// dsl_destroy.c / dsl_userhold.c are the sources for the operation-specific readings).
pub fn classify(op: ZfsOp, errno: i32) -> ZfsErrorKind {
    use ZfsErrorKind as K;
    match (op, errno) {
        (ZfsOp::DestroySnapshots, libc::EEXIST) => K::SnapshotHasClones,
        (ZfsOp::DestroySnapshots, libc::EBUSY) => K::SnapshotHeld,
        (ZfsOp::Destroy, libc::EEXIST) => K::HasChildren,
        (ZfsOp::Promote, libc::EINVAL) => K::NotAClone,
        (ZfsOp::Release, libc::ESRCH) => K::NotFound,
        (ZfsOp::Hold | ZfsOp::Release, libc::E2BIG) => K::NameTooLong,
        (ZfsOp::ChannelProgram, libc::EINVAL | libc::ECHRNG | libc::ETIME | libc::ENOMEM) => {
            K::ProgramFailed
        }
        (_, libc::EEXIST) => K::Exists,
        (_, libc::ENOENT | libc::ESRCH) => K::NotFound,
        (_, libc::EXDEV) => K::PoolsDiffer,
        (_, libc::ENAMETOOLONG) => K::NameTooLong,
        (_, libc::EBUSY) => K::Busy,
        (_, libc::EPERM | libc::EACCES) => K::PermissionDenied,
        (_, libc::ENOSPC | libc::EDQUOT) => K::NoSpace,
        (_, libc::EINVAL) => K::InvalidArgument,
        _ => K::Other,
    }
}

/// One name's failure from the kernel's per-name error list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    /// The snapshot (or dataset) the error is about.
    pub name: String,
    /// Its errno.
    pub errno: i32,
    /// Its classification.
    pub kind: ZfsErrorKind,
}

/// A failed libzfs_core call: operation, name(s), errno, classification, and the kernel's
/// per-name errors where it gave them.
#[derive(Debug)]
pub struct ZfsError {
    op: ZfsOp,
    name: String,
    errno: i32,
    kind: ZfsErrorKind,
    per_name: Vec<NameError>,
    suppressed: u64,
    detail: Option<String>,
}

impl ZfsError {
    fn new(op: ZfsOp, name: impl Into<String>, errno: i32) -> Self {
        ZfsError {
            op,
            name: name.into(),
            errno,
            kind: classify(op, errno),
            per_name: Vec::new(),
            suppressed: 0,
            detail: None,
        }
    }

    fn with_kind(mut self, kind: ZfsErrorKind) -> Self {
        self.kind = kind;
        self
    }

    fn with_detail(mut self, detail: Option<String>) -> Self {
        self.detail = detail;
        self
    }

    /// The errno libzfs_core returned (for a batch: the errno of one failed name).
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The operation that failed.
    pub fn op(&self) -> ZfsOp {
        self.op
    }

    /// The name the call was about (for a batch: the names, comma-separated).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What went wrong.
    pub fn zfs_kind(&self) -> ZfsErrorKind {
        self.kind
    }

    /// The kernel's per-name errors (batch calls), possibly empty.
    pub fn per_name(&self) -> &[NameError] {
        &self.per_name
    }

    /// How many more per-name errors the kernel left out of the list (`N_MORE_ERRORS`).
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Extra text from the kernel: a channel program's error message, or the snapshot name that
    /// blocks a promote.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// Stable classification.
    pub fn kind(&self) -> crate::ErrorKind {
        use crate::ErrorKind as E;
        match self.kind {
            ZfsErrorKind::Exists => E::AlreadyExists,
            ZfsErrorKind::NotFound => E::NotFound,
            ZfsErrorKind::PoolsDiffer => E::CrossDevice,
            ZfsErrorKind::NameTooLong => E::NameTooLong,
            ZfsErrorKind::SnapshotHasClones => E::SnapshotHasClones,
            ZfsErrorKind::SnapshotHeld => E::SnapshotHeld,
            ZfsErrorKind::HasChildren | ZfsErrorKind::Busy => E::Busy,
            ZfsErrorKind::PermissionDenied => E::PermissionDenied,
            ZfsErrorKind::NoSpace => E::NoSpace,
            ZfsErrorKind::NotAClone
            | ZfsErrorKind::ProgramFailed
            | ZfsErrorKind::InvalidArgument => E::InvalidArgument,
            ZfsErrorKind::Other => E::Io,
        }
    }
}

impl fmt::Display for ZfsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = std::io::Error::from_raw_os_error(self.errno);
        write!(f, "zfs {} {}: {} ({os})", self.op.as_str(), self.name, self.kind.describe())?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        for e in &self.per_name {
            let os = std::io::Error::from_raw_os_error(e.errno);
            write!(f, "; {}: {} ({os})", e.name, e.kind.describe())?;
        }
        if self.suppressed > 0 {
            write!(f, "; and {} more", self.suppressed)?;
        }
        Ok(())
    }
}

impl std::error::Error for ZfsError {}

impl crate::error::ComponentError for ZfsError {
    fn kind(&self) -> crate::ErrorKind {
        ZfsError::kind(self)
    }

    fn errno(&self) -> Option<i32> {
        Some(self.errno)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl From<ZfsError> for Error {
    fn from(e: ZfsError) -> Error {
        Error::Component(Box::new(e))
    }
}

impl Error {
    /// The libzfs_core error behind this error, if it is one.
    pub fn zfs(&self) -> Option<&ZfsError> {
        match self {
            Error::Component(c) => c.as_any().downcast_ref(),
            _ => None,
        }
    }
}

/// Build a [`ZfsError`] from a batch call's errno and per-name error list.
fn batch_error(op: ZfsOp, names: &[&str], outcome: &Outcome) -> ZfsError {
    let mut err = ZfsError::new(op, names.join(","), outcome.errno);
    if let Some(list) = &outcome.out {
        for (name, value) in list.view().iter() {
            let name = name.to_string_lossy().into_owned();
            match value {
                NvValue::Int32(e) if name == "N_MORE_ERRORS" => err.suppressed = e as u64,
                NvValue::Int32(e) => {
                    err.per_name.push(NameError { kind: classify(op, e), name, errno: e })
                }
                _ => {}
            }
        }
    }
    if err.per_name.len() == 1 && names.len() > 1 {
        err.name = err.per_name[0].name.clone();
    }
    err
}

/// The result of a hold/release call: the kernel returns 0 yet lists names it skipped (ENOENT),
/// which the caller must hear about.
fn batch_result(op: ZfsOp, names: &[&str], outcome: &Outcome) -> Result<(), Error> {
    let err = batch_error(op, names, outcome);
    if outcome.errno != 0 {
        return Err(err.into());
    }
    match err.per_name.first() {
        Some(first) => Err(ZfsError { errno: first.errno, kind: first.kind, ..err }.into()),
        None => Ok(()),
    }
}

fn nv_error(e: std::io::Error) -> Error {
    ZfsError::new(ZfsOp::BuildArguments, "", e.raw_os_error().unwrap_or(libc::ENOMEM)).into()
}

/// `canmount` property values (an index property: the kernel takes the number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanMount {
    /// Never mounted.
    Off = 0,
    /// Mounted by `zfs mount -a`.
    On = 1,
    /// Mounted only explicitly: what in-process mounting wants.
    NoAuto = 2,
}

/// Properties to set on a created or cloned dataset.
///
/// Only what the kernel accepts without libzfs's string-to-number translation: string
/// properties as strings, index properties (canmount, readonly, ...) as their numbers through
/// the typed setters, numbers as numbers, user properties (`module:name`) as strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props {
    strings: BTreeMap<String, String>,
    numbers: BTreeMap<String, u64>,
}

impl Props {
    /// No properties.
    pub fn new() -> Self {
        Self::default()
    }
    /// `mountpoint`: a path, `legacy` or `none`.
    pub fn mountpoint(mut self, value: &str) -> Self {
        self.strings.insert("mountpoint".into(), value.into());
        self
    }
    /// `canmount`.
    pub fn canmount(mut self, value: CanMount) -> Self {
        self.numbers.insert("canmount".into(), value as u64);
        self
    }
    /// `readonly`.
    pub fn readonly(mut self, on: bool) -> Self {
        self.numbers.insert("readonly".into(), u64::from(on));
        self
    }
    /// `volsize` in bytes (volumes only; required to create one).
    pub fn volsize(mut self, bytes: u64) -> Self {
        self.numbers.insert("volsize".into(), bytes);
        self
    }
    /// `volblocksize` in bytes (volumes only, at creation).
    pub fn volblocksize(mut self, bytes: u64) -> Self {
        self.numbers.insert("volblocksize".into(), bytes);
        self
    }
    /// A user property (`module:name`, e.g. `goldclone:session`).
    pub fn user(mut self, name: &str, value: &str) -> Self {
        self.strings.insert(name.into(), value.into());
        self
    }
    /// Any string-typed native property.
    pub fn string(mut self, name: &str, value: &str) -> Self {
        self.strings.insert(name.into(), value.into());
        self
    }
    /// Any number- or index-typed native property, by number.
    pub fn number(mut self, name: &str, value: u64) -> Self {
        self.numbers.insert(name.into(), value);
        self
    }
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty() && self.numbers.is_empty()
    }

    fn to_nvlist(&self, lzc: &'static Lzc) -> Result<Option<NvList>, Error> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut nv = lzc.nvlist().map_err(nv_error)?;
        for (k, v) in &self.strings {
            nv.add_string(k, v).map_err(nv_error)?;
        }
        for (k, v) in &self.numbers {
            nv.add_uint64(k, *v).map_err(nv_error)?;
        }
        Ok(Some(nv))
    }
}

/// A channel program's result value, decoded from the output nvlist's `return` entry.
#[derive(Debug, Clone, PartialEq)]
pub enum ZcpValue {
    /// No return value.
    Nil,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A string.
    String(String),
    /// A table, keys rendered as strings.
    Table(BTreeMap<String, ZcpValue>),
}

fn zcp_value(v: NvValue<'_>) -> ZcpValue {
    match v {
        NvValue::Boolean => ZcpValue::Nil,
        NvValue::Bool(b) => ZcpValue::Bool(b),
        NvValue::Int32(i) => ZcpValue::Int(i64::from(i)),
        NvValue::Int64(i) => ZcpValue::Int(i),
        NvValue::Uint64(u) => ZcpValue::Int(u as i64),
        NvValue::String(s) => ZcpValue::String(s.to_string_lossy().into_owned()),
        NvValue::List(l) => ZcpValue::Table(
            l.iter().map(|(k, v)| (k.to_string_lossy().into_owned(), zcp_value(v))).collect(),
        ),
        NvValue::Other => ZcpValue::Nil,
    }
}

/// Handle to libzfs_core; cheap to copy, shareable across threads (libzfs_core is thread-safe).
#[derive(Clone, Copy)]
pub struct Zfs {
    lzc: &'static Lzc,
}

impl fmt::Debug for Zfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Zfs")
    }
}

/// Whether ZFS can be used in this process: the libraries load and `/dev/zfs` opens.
pub fn available() -> Result<(), Error> {
    Zfs::open().map(drop)
}

impl Zfs {
    /// Load libzfs_core (first call in the process) and return a handle, or
    /// [`Error::ZfsUnavailable`].
    pub fn open() -> Result<Zfs, Error> {
        loader::lzc().map(|lzc| Zfs { lzc })
    }

    fn snapshot_list(&self, snaps: &[&SnapshotName]) -> Result<NvList, Error> {
        let mut nv = self.lzc.nvlist().map_err(nv_error)?;
        for s in snaps {
            nv.add_boolean(s.as_str()).map_err(nv_error)?;
        }
        Ok(nv)
    }

    /// Whether a filesystem, volume or snapshot exists.
    pub fn exists(&self, name: &str) -> Result<bool, Error> {
        let cname = if name.contains('@') {
            SnapshotName::new(name)?.as_cstr().to_owned()
        } else {
            DatasetName::new(name)?.as_cstr().to_owned()
        };
        Ok(self.lzc.exists(&cname))
    }

    /// Create all `snaps` atomically: either every snapshot exists afterwards or none does.
    /// All must be on one pool (else [`ZfsErrorKind::PoolsDiffer`]) and name distinct datasets.
    pub fn snapshot(&self, snaps: &[SnapshotName]) -> Result<(), Error> {
        self.snapshot_with_props(snaps, &[])
    }

    /// [`Zfs::snapshot`] with user properties (`module:name` = value) set on every snapshot.
    pub fn snapshot_with_props(
        &self,
        snaps: &[SnapshotName],
        user_props: &[(&str, &str)],
    ) -> Result<(), Error> {
        if snaps.is_empty() {
            return Ok(());
        }
        // The kernel answers EXDEV, indistinguishable from "pools differ", for two snapshots of
        // one dataset in one call; say what it is instead.
        let mut datasets: Vec<DatasetName> = snaps.iter().map(SnapshotName::dataset).collect();
        datasets.sort();
        if let Some(w) = datasets.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::InvalidName {
                name: w[0].to_string(),
                reason: "more than one snapshot of this dataset in one call",
            });
        }
        let refs: Vec<&SnapshotName> = snaps.iter().collect();
        let list = self.snapshot_list(&refs)?;
        let props = if user_props.is_empty() {
            None
        } else {
            let mut nv = self.lzc.nvlist().map_err(nv_error)?;
            for (k, v) in user_props {
                nv.add_string(k, v).map_err(nv_error)?;
            }
            Some(nv)
        };
        let outcome = self.lzc.snapshot(&list, props.as_ref());
        if outcome.errno == 0 {
            return Ok(());
        }
        let names: Vec<&str> = snaps.iter().map(SnapshotName::as_str).collect();
        let mut err = batch_error(ZfsOp::Snapshot, &names, &outcome);
        if outcome.errno == libc::EXDEV {
            err = err.with_kind(ZfsErrorKind::PoolsDiffer);
        }
        Err(err.into())
    }

    /// Create a filesystem.
    pub fn create_filesystem(&self, name: &DatasetName, props: &Props) -> Result<(), Error> {
        let props = props.to_nvlist(self.lzc)?;
        match self.lzc.create(name.as_cstr(), LZC_DATSET_TYPE_ZFS, props.as_ref()) {
            0 => Ok(()),
            e => Err(ZfsError::new(ZfsOp::Create, name.as_str(), e).into()),
        }
    }

    /// Create a volume (zvol) of `props.volsize` bytes. Its `/dev/zdN` appears asynchronously:
    /// see [`mount::zvol_device`].
    pub fn create_volume(&self, name: &DatasetName, props: &Props) -> Result<(), Error> {
        let props = props.to_nvlist(self.lzc)?;
        match self.lzc.create(name.as_cstr(), LZC_DATSET_TYPE_ZVOL, props.as_ref()) {
            0 => Ok(()),
            e => Err(ZfsError::new(ZfsOp::Create, name.as_str(), e).into()),
        }
    }

    /// Clone `origin` as `target` with `props`. The clone is not mounted: see
    /// [`mount::mount_filesystem`]. `target` must be on `origin`'s pool.
    ///
    /// Non-empty `props` cost a second transaction group: the kernel creates the clone in one
    /// sync task and sets the properties in another (`zfs_ioc_clone`), which doubled the clone
    /// time in the benchmark. For session clones, put them under a parent with
    /// `mountpoint=legacy` (inherited, so `zfs mount -a` leaves them alone) and pass no props.
    pub fn clone_snapshot(
        &self,
        target: &DatasetName,
        origin: &SnapshotName,
        props: &Props,
    ) -> Result<(), Error> {
        let props = props.to_nvlist(self.lzc)?;
        match self.lzc.clone(target.as_cstr(), origin.as_cstr(), props.as_ref()) {
            0 => Ok(()),
            e => Err(ZfsError::new(ZfsOp::Clone, target.as_str(), e).into()),
        }
    }

    /// Destroy a filesystem or volume. It must have no snapshots and no children, and must not
    /// be mounted ([`ZfsErrorKind::Busy`] / [`ZfsErrorKind::HasChildren`] otherwise).
    ///
    /// A volume can answer [`ZfsErrorKind::Busy`] for a moment right after the filesystem on it
    /// was unmounted (the kernel's asynchronous zvol work still holds it; seen in about 1 of 8
    /// zvol test runs in the VM). Callers tearing down zvol sessions should retry Busy a few
    /// times, as OpenZFS's own test suite does.
    pub fn destroy(&self, name: &DatasetName) -> Result<(), Error> {
        match self.lzc.destroy(name.as_cstr()) {
            0 => Ok(()),
            e => Err(ZfsError::new(ZfsOp::Destroy, name.as_str(), e).into()),
        }
    }

    /// Destroy snapshots, all or none. Missing snapshots are ignored (as libzfs_core does).
    /// Without `defer`, a snapshot with clones fails with [`ZfsErrorKind::SnapshotHasClones`] and
    /// one with holds with [`ZfsErrorKind::SnapshotHeld`]; with `defer`, such snapshots are marked
    /// and go away when their last clone or hold does.
    pub fn destroy_snapshots(&self, snaps: &[SnapshotName], defer: bool) -> Result<(), Error> {
        if snaps.is_empty() {
            return Ok(());
        }
        let refs: Vec<&SnapshotName> = snaps.iter().collect();
        let list = self.snapshot_list(&refs)?;
        let outcome = self.lzc.destroy_snaps(&list, defer);
        if outcome.errno == 0 {
            return Ok(());
        }
        let names: Vec<&str> = snaps.iter().map(SnapshotName::as_str).collect();
        Err(batch_error(ZfsOp::DestroySnapshots, &names, &outcome).into())
    }

    /// Rename a filesystem or volume within its pool.
    pub fn rename(&self, from: &DatasetName, to: &DatasetName) -> Result<(), Error> {
        self.rename_raw(from.as_str(), from.as_cstr(), to.as_cstr(), from.pool() != to.pool())
    }

    /// Rename a snapshot; both names must be of the same dataset.
    pub fn rename_snapshot(&self, from: &SnapshotName, to: &SnapshotName) -> Result<(), Error> {
        self.rename_raw(from.as_str(), from.as_cstr(), to.as_cstr(), from.pool() != to.pool())
    }

    fn rename_raw(
        &self,
        name: &str,
        from: &std::ffi::CStr,
        to: &std::ffi::CStr,
        cross_pool: bool,
    ) -> Result<(), Error> {
        match self.lzc.rename(from, to) {
            0 => Ok(()),
            e => {
                let mut err = ZfsError::new(ZfsOp::Rename, name, e);
                // Across pools the kernel says EXDEV or EINVAL depending on the path taken.
                if cross_pool && matches!(e, libc::EXDEV | libc::EINVAL) {
                    err = err.with_kind(ZfsErrorKind::PoolsDiffer);
                }
                Err(err.into())
            }
        }
    }

    /// Promote a clone: it takes over its origin's snapshots up to the origin snapshot, and the
    /// former parent becomes its clone. [`ZfsErrorKind::Exists`] names the snapshot that clashes.
    pub fn promote(&self, clone: &DatasetName) -> Result<(), Error> {
        match self.lzc.promote(clone.as_cstr()) {
            (0, _) => Ok(()),
            (e, conflict) => {
                Err(ZfsError::new(ZfsOp::Promote, clone.as_str(), e).with_detail(conflict).into())
            }
        }
    }

    /// Put user hold `tag` on each snapshot, atomically. The kernel still places the holds on the
    /// snapshots that exist when some are missing; that case is reported as
    /// [`ZfsErrorKind::NotFound`] naming the missing ones.
    /// With `cleanup_fd` (an fd of `/dev/zfs` opened `O_EXCL`) the holds are released when it is
    /// closed, including when the process dies.
    pub fn hold(
        &self,
        snaps: &[SnapshotName],
        tag: &str,
        cleanup_fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), Error> {
        if snaps.is_empty() {
            return Ok(());
        }
        let mut nv = self.lzc.nvlist().map_err(nv_error)?;
        for s in snaps {
            nv.add_string(s.as_str(), tag).map_err(nv_error)?;
        }
        let outcome = self.lzc.hold(&nv, cleanup_fd);
        let names: Vec<&str> = snaps.iter().map(SnapshotName::as_str).collect();
        batch_result(ZfsOp::Hold, &names, &outcome)
    }

    /// Release user hold `tag` from each snapshot, atomically. As for [`Zfs::hold`], holds that do
    /// not exist do not stop the others from being released, and are reported as
    /// [`ZfsErrorKind::NotFound`] (per-name entries are `snapshot#tag`).
    pub fn release(&self, snaps: &[SnapshotName], tag: &str) -> Result<(), Error> {
        if snaps.is_empty() {
            return Ok(());
        }
        let mut nv = self.lzc.nvlist().map_err(nv_error)?;
        for s in snaps {
            let mut tags = self.lzc.nvlist().map_err(nv_error)?;
            tags.add_boolean(tag).map_err(nv_error)?;
            nv.add_nvlist(s.as_str(), &tags).map_err(nv_error)?;
        }
        let outcome = self.lzc.release(&nv);
        let names: Vec<&str> = snaps.iter().map(SnapshotName::as_str).collect();
        batch_result(ZfsOp::Release, &names, &outcome)
    }

    /// The user hold tags on a snapshot.
    pub fn holds(&self, snap: &SnapshotName) -> Result<Vec<String>, Error> {
        let outcome = self.lzc.get_holds(snap.as_cstr());
        if outcome.errno != 0 {
            return Err(ZfsError::new(ZfsOp::GetHolds, snap.as_str(), outcome.errno).into());
        }
        let tags = outcome
            .out
            .as_ref()
            .map(|l| l.view().iter().map(|(k, _)| k.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        Ok(tags)
    }

    /// Run a ZFS channel program (Lua) on `pool` with string arguments (`...` in the program is
    /// `{argv = {...}}`) and return its `return` value. `sync = false` runs it read-only in open
    /// context. Limits are the `zfs program` defaults (10M instructions, 10 MiB).
    pub fn channel_program(
        &self,
        pool: &str,
        program: &str,
        args: &[&str],
        sync: bool,
    ) -> Result<ZcpValue, Error> {
        const INSTR_LIMIT: u64 = 10_000_000;
        const MEM_LIMIT: u64 = 10 << 20;
        let pool_name = DatasetName::new(pool)?;
        if pool_name.parent().is_some() {
            return Err(Error::InvalidName { name: pool.into(), reason: "a pool name has no '/'" });
        }
        let program_c = CString::new(program).map_err(|_| Error::InvalidName {
            name: "<program>".into(),
            reason: "program text contains NUL",
        })?;
        let mut argv = self.lzc.nvlist().map_err(nv_error)?;
        argv.add_string_array("argv", args).map_err(nv_error)?;
        let outcome = self.lzc.channel_program(
            pool_name.as_cstr(),
            &program_c,
            INSTR_LIMIT,
            MEM_LIMIT,
            &argv,
            sync,
        );
        let out = outcome.out.as_ref().map(NvList::view);
        if outcome.errno != 0 {
            let detail = out.and_then(|o| match o.get("error") {
                Some(NvValue::String(s)) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            });
            return Err(ZfsError::new(ZfsOp::ChannelProgram, pool, outcome.errno)
                .with_detail(detail)
                .into());
        }
        Ok(out.and_then(|o| o.get("return")).map_or(ZcpValue::Nil, zcp_value))
    }

    /// Destroy several filesystems or volumes (e.g. many sessions) in one channel program: one
    /// transaction group instead of one per dataset, and all or nothing. Every name is first
    /// checked with `zfs.check.destroy` in the same sync task, and nothing is destroyed unless
    /// all checks pass; failures come back per name ([`ZfsError::per_name`]): mounted
    /// ([`ZfsErrorKind::Busy`]), has snapshots (Busy), has children
    /// ([`ZfsErrorKind::HasChildren`]), missing ([`ZfsErrorKind::NotFound`]). The checks are
    /// independent, so a dataset and its own child cannot be in one call. All names must be on
    /// one pool.
    pub fn destroy_many(&self, names: &[DatasetName]) -> Result<(), Error> {
        const PROGRAM: &str = r#"
local names = (...)["argv"]
local failed = {}
local any = false
for _, name in ipairs(names) do
    local err = zfs.check.destroy(name)
    if err ~= 0 then
        failed[name] = err
        any = true
    end
end
if any then return {destroyed = false, failed = failed} end
for _, name in ipairs(names) do
    local err = zfs.sync.destroy(name)
    if err ~= 0 then
        failed[name] = err
        any = true
    end
end
return {destroyed = not any, failed = failed}
"#;
        let Some(first) = names.first() else { return Ok(()) };
        if let Some(other) = names.iter().find(|n| n.pool() != first.pool()) {
            return Err(ZfsError::new(ZfsOp::Destroy, other.as_str(), libc::EXDEV).into());
        }
        let argv: Vec<&str> = names.iter().map(DatasetName::as_str).collect();
        let result = self.channel_program(first.pool(), PROGRAM, &argv, true)?;
        let unexpected = |what: &ZcpValue| -> Error {
            ZfsError::new(ZfsOp::ChannelProgram, first.pool(), libc::EPROTO)
                .with_detail(Some(format!("unexpected result {what:?}")))
                .into()
        };
        let ZcpValue::Table(t) = &result else { return Err(unexpected(&result)) };
        let mut per_name: Vec<NameError> = match t.get("failed") {
            Some(ZcpValue::Table(f)) => f
                .iter()
                .filter_map(|(name, v)| match v {
                    ZcpValue::Int(e) => {
                        let errno = i32::try_from(*e).unwrap_or(libc::EIO);
                        let kind = classify(ZfsOp::Destroy, errno);
                        Some(NameError { name: name.clone(), errno, kind })
                    }
                    _ => None,
                })
                .collect(),
            // An empty Lua table comes back as an empty nvlist or not at all.
            None | Some(ZcpValue::Nil) => Vec::new(),
            Some(other) => return Err(unexpected(other)),
        };
        match (t.get("destroyed"), per_name.is_empty()) {
            (Some(ZcpValue::Bool(true)), true) => Ok(()),
            (Some(ZcpValue::Bool(_)), false) => {
                // Report in the caller's order.
                per_name.sort_by_key(|e| argv.iter().position(|n| *n == e.name));
                let first_err = per_name[0].clone();
                let mut err = ZfsError::new(ZfsOp::Destroy, argv.join(","), first_err.errno);
                err.per_name = per_name;
                Err(err.into())
            }
            _ => Err(unexpected(&result)),
        }
    }

    /// Destroy `root` with all its descendants and their snapshots in one channel program (one
    /// transaction group, no process per dataset). Clones inside the tree are destroyed before
    /// their origin snapshots by retrying in passes. Nothing may be mounted; a clone outside the
    /// tree keeps its origin (and so `root`) alive. On failure the error names the dataset
    /// that blocked the rest (the first one left that is not merely waiting for a dependent) and
    /// lists everything left in [`ZfsError::per_name`]; whatever could be destroyed is gone.
    pub fn destroy_tree(&self, root: &DatasetName) -> Result<(), Error> {
        const PROGRAM: &str = r#"
local root = (...)["argv"][1]
local pending = {}
local function collect(ds)
    for child in zfs.list.children(ds) do collect(child) end
    for snap in zfs.list.snapshots(ds) do table.insert(pending, snap) end
    table.insert(pending, ds)
end
collect(root)
while #pending > 0 do
    local left = {}
    local failed = {}
    for _, name in ipairs(pending) do
        local err = zfs.sync.destroy(name)
        if err ~= 0 then
            table.insert(left, name)
            table.insert(failed, name .. "=" .. err)
        end
    end
    if #left == #pending then
        return {left = #left, failed = table.concat(failed, ";")}
    end
    pending = left
end
return {left = 0}
"#;
        let result = self.channel_program(root.pool(), PROGRAM, &[root.as_str()], true)?;
        let unexpected = |what: String| -> Error {
            ZfsError::new(ZfsOp::ChannelProgram, root.as_str(), libc::EPROTO)
                .with_detail(Some(format!("unexpected result {what}")))
                .into()
        };
        let ZcpValue::Table(t) = &result else { return Err(unexpected(format!("{result:?}"))) };
        let failed = match (t.get("left"), t.get("failed")) {
            (Some(ZcpValue::Int(0)), _) => return Ok(()),
            (Some(ZcpValue::Int(_)), Some(ZcpValue::String(f))) => f,
            _ => return Err(unexpected(format!("{t:?}"))),
        };
        // "name=errno;..." in collection order: children before parents, snapshots before their
        // dataset. ZFS names cannot contain '=' or ';'.
        let per_name: Vec<NameError> = failed
            .split(';')
            .filter_map(|item| {
                let (name, errno) = item.rsplit_once('=')?;
                let errno: i32 = errno.parse().ok()?;
                let op = if name.contains('@') { ZfsOp::DestroySnapshots } else { ZfsOp::Destroy };
                Some(NameError { name: name.to_owned(), errno, kind: classify(op, errno) })
            })
            .collect();
        // The cause is the first entry not merely blocked by a dependent (EEXIST: clones or
        // children left); the rest usually follow from it.
        let Some(cause) = per_name.iter().find(|e| e.errno != libc::EEXIST).or(per_name.first())
        else {
            return Err(unexpected(format!("{t:?}")));
        };
        let mut err = ZfsError::new(ZfsOp::Destroy, cause.name.clone(), cause.errno);
        err.kind = cause.kind;
        err.per_name = per_name;
        Err(err.into())
    }

    /// The direct children (filesystems and volumes) of `dataset`, read in open context by a
    /// read-only channel program (libzfs_core has no listing call). [`ZfsErrorKind::NotFound`]
    /// when `dataset` does not exist.
    pub fn children(&self, dataset: &DatasetName) -> Result<Vec<DatasetName>, Error> {
        const PROGRAM: &str = r#"
local ds = (...)["argv"][1]
if not zfs.exists(ds) then return {found = false} end
local names = {}
for child in zfs.list.children(ds) do table.insert(names, child) end
return {found = true, names = names}
"#;
        let result = self.channel_program(dataset.pool(), PROGRAM, &[dataset.as_str()], false)?;
        let unexpected = || -> Error {
            ZfsError::new(ZfsOp::ChannelProgram, dataset.as_str(), libc::EPROTO)
                .with_detail(Some(format!("unexpected result {result:?}")))
                .into()
        };
        let ZcpValue::Table(t) = &result else { return Err(unexpected()) };
        match (t.get("found"), t.get("names")) {
            (Some(ZcpValue::Bool(false)), _) => {
                Err(ZfsError::new(ZfsOp::ChannelProgram, dataset.as_str(), libc::ENOENT).into())
            }
            (Some(ZcpValue::Bool(true)), names) => {
                let names = match names {
                    Some(ZcpValue::Table(n)) => n,
                    // An empty Lua table may come back as no entry at all.
                    None => return Ok(Vec::new()),
                    Some(_) => return Err(unexpected()),
                };
                names
                    .values()
                    .map(|v| match v {
                        ZcpValue::String(name) => DatasetName::new(name),
                        _ => Err(unexpected()),
                    })
                    .collect()
            }
            _ => Err(unexpected()),
        }
    }

    /// Wait until everything written to `pool` so far is on disk.
    pub fn sync(&self, pool: &str) -> Result<(), Error> {
        let pool_name = DatasetName::new(pool)?;
        let mut args = self.lzc.nvlist().map_err(nv_error)?;
        args.add_bool("force", false).map_err(nv_error)?;
        match self.lzc.sync(pool_name.as_cstr(), &args) {
            0 => Ok(()),
            e => Err(ZfsError::new(ZfsOp::Sync, pool, e).into()),
        }
    }
}
