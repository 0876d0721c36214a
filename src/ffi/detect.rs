//! Detection: what backs a path.

use std::ffi::c_char;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::args;
use super::error::{goldclone_result, Failure};
use super::handle::{self, Object};
use crate::detect::{Backend, Detection, Kind};

/// The result of `goldclone_detect`. Opaque; free with `goldclone_detection_free`.
pub struct goldclone_detection {
    _private: [u8; 0],
}

/// The name of a `goldclone_detect_kind` (`"zfs_dataset"`, `"zvol"`, `"btrfs"`, `"reflink"`,
/// `"plain"`), or `"unknown"`: a static NUL-terminated string, never freed. Does not touch the
/// last error.
#[no_mangle]
pub extern "C" fn goldclone_detect_kind_name(kind: u32) -> *const c_char {
    let name = Kind::from_repr(kind).map_or("unknown", Kind::name);
    std::panic::catch_unwind(|| args::static_name(name)).map_or(c"unknown".as_ptr(), |c| c.as_ptr())
}

/// A string property of a detection, for `goldclone_detection_string`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::FromRepr)]
pub enum goldclone_detection_field {
    /// The path, canonicalized (absolute, symlinks resolved); bytes, not necessarily UTF-8.
    Path = 1,
    /// Filesystem type of the mount holding the path (`zfs`, `xfs`, `btrfs`, ...).
    FsType = 2,
    /// Where that mount is mounted.
    MountPoint = 3,
    /// The mount source: a device, a ZFS dataset, or what the filesystem chose.
    MountSource = 4,
    /// ZFS dataset (ZFS_DATASET) or volume dataset (ZVOL) name.
    Dataset = 5,
    /// ZFS pool name (ZFS_DATASET, ZVOL).
    Pool = 6,
    /// The zvol's device node (ZVOL).
    Device = 7,
}

fn lookup(d: *const goldclone_detection) -> Result<Arc<Detection>, Failure> {
    handle::get(d, "goldclone_detection", |o| match o {
        Object::Detection(d) => Some(Arc::clone(d)),
        _ => None,
    })
}

/// Detect what backs `path` (NUL-terminated bytes; it must exist). On success `*out` is a new
/// handle. Errors: NOT_FOUND, PERMISSION_DENIED (a zvol device needs read access), IO.
#[no_mangle]
pub unsafe extern "C" fn goldclone_detect(
    path: *const c_char,
    out: *mut *mut goldclone_detection,
) -> goldclone_result {
    ffi_body!("goldclone_detect", {
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { args::path(path, "path") }?;
        args::require(out, "out")?;
        let d = crate::detect::detect(path)?;
        let h = handle::register(Object::Detection(Arc::new(d)));
        // SAFETY: `out` is non-NULL (checked) and writable by the caller's promise.
        unsafe { args::store(out, h) };
        Ok(())
    })
}

/// Free a detection. NULL is a no-op; a handle that is not a live detection is INVALID_HANDLE.
#[no_mangle]
pub unsafe extern "C" fn goldclone_detection_free(
    detection: *mut goldclone_detection,
) -> goldclone_result {
    ffi_body!("goldclone_detection_free", {
        handle::free(detection, "goldclone_detection", |o| matches!(o, Object::Detection(_)))
    })
}

/// The kind of backend that can copy the detected path.
#[no_mangle]
pub unsafe extern "C" fn goldclone_detection_kind(
    detection: *const goldclone_detection,
    out: *mut Kind,
) -> goldclone_result {
    ffi_body!("goldclone_detection_kind", {
        args::require(out, "out")?;
        let d = lookup(detection)?;
        // SAFETY: non-NULL (checked), writable by the caller's promise.
        unsafe { args::store(out, d.backend.kind()) };
        Ok(())
    })
}

/// A string property (`field`, one of `goldclone_detection_field`) into a caller buffer, as
/// described in the header's conventions. NOT_FOUND when the property does not apply to this
/// backend (a pool on XFS); INVALID_ARGUMENT for an unknown field.
#[no_mangle]
pub unsafe extern "C" fn goldclone_detection_string(
    detection: *const goldclone_detection,
    field: u32,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> goldclone_result {
    ffi_body!("goldclone_detection_string", {
        args::require_buf(buf, buf_len)?;
        let d = lookup(detection)?;
        let field = goldclone_detection_field::from_repr(field).ok_or_else(|| {
            Failure::new(
                goldclone_result::InvalidArgument,
                format!("{field} is not a goldclone_detection_field"),
            )
        })?;
        let value: Option<&[u8]> = match field {
            goldclone_detection_field::Path => Some(d.path.as_os_str().as_bytes()),
            goldclone_detection_field::FsType => Some(d.mount.fs_type.as_bytes()),
            goldclone_detection_field::MountPoint => {
                Some(d.mount.mount_point.as_os_str().as_bytes())
            }
            goldclone_detection_field::MountSource => Some(d.mount.source.as_bytes()),
            goldclone_detection_field::Dataset => match &d.backend {
                Backend::ZfsDataset { dataset, .. } | Backend::Zvol { dataset, .. } => {
                    Some(dataset.as_bytes())
                }
                _ => None,
            },
            goldclone_detection_field::Pool => d.backend.pool().map(str::as_bytes),
            goldclone_detection_field::Device => match &d.backend {
                Backend::Zvol { device, .. } => Some(device.as_os_str().as_bytes()),
                _ => None,
            },
        };
        let value = value.ok_or_else(|| {
            Failure::new(
                goldclone_result::NotFound,
                format!("field {field:?} does not apply to a {} backend", d.backend.kind()),
            )
        })?;
        // SAFETY: the caller's promise on buf/buf_len/out_len.
        unsafe { args::write_string(buf, buf_len, out_len, value) }
    })
}

/// Whether FICLONE works on the detected filesystem: `*out` = 1 yes, 0 no, -1 could not be
/// probed (read-only filesystem, no permission).
#[no_mangle]
pub unsafe extern "C" fn goldclone_detection_reflink(
    detection: *const goldclone_detection,
    out: *mut i32,
) -> goldclone_result {
    ffi_body!("goldclone_detection_reflink", {
        args::require(out, "out")?;
        let d = lookup(detection)?;
        let v = match d.reflink {
            Some(true) => 1,
            Some(false) => 0,
            None => -1,
        };
        // SAFETY: non-NULL (checked), writable by the caller's promise.
        unsafe { args::store(out, v) };
        Ok(())
    })
}

/// btrfs details: whether the path is a subvolume root, and the id of the subvolume holding it.
/// Either output may be NULL. NOT_FOUND if the path is not on btrfs.
#[no_mangle]
pub unsafe extern "C" fn goldclone_detection_btrfs(
    detection: *const goldclone_detection,
    is_subvolume: *mut bool,
    subvolume_id: *mut u64,
) -> goldclone_result {
    ffi_body!("goldclone_detection_btrfs", {
        let d = lookup(detection)?;
        match d.backend {
            Backend::Btrfs { subvolume, subvolume_id: id } => {
                // SAFETY: each is NULL or writable by the caller's promise.
                unsafe {
                    args::store(is_subvolume, subvolume);
                    args::store(subvolume_id, id);
                }
                Ok(())
            }
            _ => Err(Failure::new(
                goldclone_result::NotFound,
                format!("not on btrfs but {}", d.backend.kind()),
            )),
        }
    })
}

/// The ZFS pool behind `path` (a ZFS dataset or a filesystem on a zvol) into a caller buffer.
/// NOT_FOUND when the path is not on ZFS; detection errors as for `goldclone_detect`.
#[no_mangle]
pub unsafe extern "C" fn goldclone_zfs_pool(
    path: *const c_char,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> goldclone_result {
    ffi_body!("goldclone_zfs_pool", {
        // SAFETY: the caller passes a NUL-terminated string or NULL.
        let path = unsafe { args::path(path, "path") }?;
        args::require_buf(buf, buf_len)?;
        let d = crate::detect::detect(path)?;
        let pool = d.backend.pool().ok_or_else(|| {
            Failure::new(
                goldclone_result::NotFound,
                format!("{} is not on ZFS (it is on {})", d.path.display(), d.mount.fs_type),
            )
        })?;
        // SAFETY: the caller's promise on buf/buf_len/out_len.
        unsafe { args::write_string(buf, buf_len, out_len, pool.as_bytes()) }
    })
}
