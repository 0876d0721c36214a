//! Detection: what backs a path, and therefore which backend can copy it.
//!
//! [`detect`] finds the mount that holds a path, its filesystem type, and what the filesystem can
//! do: a ZFS dataset (clone it), an XFS (or other) filesystem on a ZFS zvol (clone the zvol), a
//! btrfs subvolume (snapshot it), a reflink-capable filesystem (FICLONE tree copy), or a plain one
//! (byte copy). It never runs an external program and needs no udev.
//!
//! How the mount is found: the path is canonicalized (symlinks resolved), then `statx` gives the
//! id of the mount holding it (`STATX_MNT_ID`), which is looked up in `/proc/thread-self/mountinfo`
//! (the calling thread's mount namespace). On kernels without `STATX_MNT_ID`, or if the mount
//! vanished in between, [`find_mount`] resolves the path through the mount tree instead; both
//! handle bind mounts, stacked mounts and overmounts, and btrfs, whose per-subvolume `st_dev`
//! never matches the `major:minor` in mountinfo.

mod mountinfo;
mod reflink;
pub(crate) mod zvol;

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

pub use mountinfo::{
    find_mount, parse_line, parse_line_bytes, parse_mountinfo, parse_mountinfo_bytes, unescape,
    Mount, MountinfoError,
};
pub use reflink::{clear_reflink_cache, reflink_supported};
pub use zvol::{block_major, uevent_devname};

use crate::sys::btrfs::{btrfs_subvolume_id, BTRFS_FIRST_FREE_OBJECTID};
use crate::sys::detect::{statx, MntId};
use crate::{Context, Error, Result};

/// What [`detect`] found out about a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// The path, canonicalized: absolute, symlinks resolved.
    #[serde(serialize_with = "serialize_path_lossy")]
    pub path: PathBuf,
    /// The mount that holds it.
    pub mount: Mount,
    /// The backend that can copy it, most capable first.
    pub backend: Backend,
    /// Whether FICLONE works on its filesystem; `None` when that could not be probed (read-only
    /// filesystem, no permission to create a file there, or the path is a non-directory mount
    /// point such as a bind-mounted file).
    pub reflink: Option<bool>,
    /// Whether the image backend can serve the path (sessions as XFS images on loop devices,
    /// reflinked where the filesystem can, else copied sparsely): a block device holds its
    /// filesystem (or it reflinks), and this process can make loop devices and XFS images.
    /// `None` where it can, else why not.
    pub image_backend: Option<String>,
}

/// Whether this process can run the image backend's machinery: `/dev/loop-control` opens
/// read-write (root, or CAP_SYS_ADMIN and access to the device), and `mkfs.xfs` (xfsprogs) is on
/// the PATH or in /usr/sbin or /sbin. Why not, where it cannot.
pub fn loop_devices_usable() -> std::result::Result<(), String> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open("/dev/loop-control", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("/dev/loop-control: {e}"))?;
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = dirs
        .into_iter()
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d: PathBuf| d.join("mkfs.xfs").is_file());
    if !found {
        return Err("mkfs.xfs not found (xfsprogs)".into());
    }
    Ok(())
}

/// How a path's tree can be copied, as decided by [`detect`]. Serialized with a lower-case
/// `kind` tag: `zfs_dataset`, `zvol`, `btrfs`, `reflink`, `plain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Backend {
    /// A mounted ZFS filesystem dataset: snapshot and clone it.
    ZfsDataset {
        /// Dataset name, e.g. `tank/docker`.
        dataset: String,
        /// Pool name, the dataset name's first component.
        pool: String,
    },
    /// A filesystem on a ZFS volume: snapshot and clone the volume, mount the clone.
    Zvol {
        /// The zvol's block device node, e.g. `/dev/zd16`.
        #[serde(serialize_with = "serialize_path_lossy")]
        device: PathBuf,
        /// The volume's dataset name, e.g. `tank/golden-vol`.
        dataset: String,
        /// Pool name.
        pool: String,
        /// Filesystem on the volume, e.g. `xfs`.
        fs_type: String,
    },
    /// btrfs: snapshot the subvolume.
    Btrfs {
        /// Whether the path itself is the root of a subvolume (only those can be snapshotted).
        subvolume: bool,
        /// Id of the subvolume that holds the path (5 is the top-level subvolume).
        subvolume_id: u64,
    },
    /// Another filesystem on which FICLONE works (xfs with reflink): reflink tree copy.
    Reflink {
        /// Filesystem type.
        fs_type: String,
    },
    /// No cheaper way than copying the bytes.
    Plain {
        /// Filesystem type.
        fs_type: String,
    },
}

impl Backend {
    /// The ZFS pool, for the ZFS backends.
    pub fn pool(&self) -> Option<&str> {
        match self {
            Backend::ZfsDataset { pool, .. } | Backend::Zvol { pool, .. } => Some(pool),
            _ => None,
        }
    }

    /// The `kind` tag this backend serializes with.
    pub fn kind(&self) -> Kind {
        match self {
            Backend::ZfsDataset { .. } => Kind::ZfsDataset,
            Backend::Zvol { .. } => Kind::Zvol,
            Backend::Btrfs { .. } => Kind::Btrfs,
            Backend::Reflink { .. } => Kind::Reflink,
            Backend::Plain { .. } => Kind::Plain,
        }
    }
}

// The C header's `goldclone_detect_kind` is this enum (cbindgen.toml renames it); the Go package
// takes its constants from the header. The numbers are fixed; the names are [`Backend`]'s tags.
/// What backs a detected path, most capable first.
#[repr(u32)]
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::FromRepr,
    strum::IntoStaticStr,
    strum::Display,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum Kind {
    /// A mounted ZFS filesystem dataset.
    ZfsDataset = 1,
    /// A filesystem on a ZFS volume.
    Zvol = 2,
    /// btrfs.
    Btrfs = 3,
    /// Another filesystem on which FICLONE works (XFS with reflink).
    Reflink = 4,
    /// No cheaper way than copying the bytes.
    Plain = 5,
}

impl Kind {
    /// The name, as in [`Backend`]'s serialized `kind` tag, e.g. `"zfs_dataset"`.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// Serialize a path as a string, replacing bytes that are not UTF-8 (mount points can be any
/// bytes; JSON cannot carry them).
pub(crate) fn serialize_path_lossy<S: Serializer>(
    p: &Path,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// The pool of a ZFS dataset, snapshot or bookmark name: everything before the first `/`, `@`
/// or `#`.
pub fn pool_of(dataset: &str) -> &str {
    dataset.split(['/', '@', '#']).next().unwrap_or(dataset)
}

/// The current thread's mounts, from `/proc/thread-self/mountinfo` (`/proc/self/mountinfo` on
/// kernels before 3.17). The thread's view matters when it has its own mount namespace.
pub fn mounts() -> Result<Vec<Mount>> {
    let mut file = "/proc/thread-self/mountinfo";
    // Bytes, not a String: mount points need not be UTF-8.
    let text = match std::fs::read(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            file = "/proc/self/mountinfo";
            std::fs::read(file).at("read", file)?
        }
        Err(e) => return Err(Error::io("read", file, e)),
    };
    parse_mountinfo_bytes(&text)
        .map_err(|e| Error::Parse { path: file.into(), what: e.to_string() })
}

/// Detect what backs `path` (which must exist) and which backend can copy it.
///
/// Errors: the path does not exist or cannot be resolved ([`ErrorKind::NotFound`],
/// [`ErrorKind::PermissionDenied`]); for a zvol, opening its device needs read access to it
/// (root, usually), otherwise [`ErrorKind::PermissionDenied`].
///
/// [`ErrorKind::NotFound`]: crate::ErrorKind::NotFound
/// [`ErrorKind::PermissionDenied`]: crate::ErrorKind::PermissionDenied
pub fn detect(path: &Path) -> Result<Detection> {
    let canonical = std::fs::canonicalize(path).at("canonicalize", path)?;
    let c_path =
        CString::new(canonical.as_os_str().as_bytes()).map_err(|_| Error::InvalidName {
            name: canonical.to_string_lossy().into_owned(),
            reason: "contains NUL",
        })?;
    let st = statx(&c_path, MntId::Listed).at("statx", &canonical)?;
    // Read mountinfo after statx, so a mount made in between is in the list.
    let all = mounts()?;
    let mount = st
        .mnt_id
        .filter(|_| !st.mnt_id_unique)
        .and_then(|id| all.iter().find(|m| m.mount_id == id))
        .or_else(|| find_mount(&all, &canonical))
        .cloned()
        .ok_or_else(|| Error::Unsupported {
            what: format!("no mount holds {}", canonical.display()),
        })?;
    let is_dir = st.mode & libc::S_IFMT == libc::S_IFDIR;

    let backend = if mount.fs_type == "zfs" {
        let dataset = mount.source.clone();
        Some(Backend::ZfsDataset { pool: pool_of(&dataset).to_owned(), dataset })
    } else if mount.major != 0 && zvol::zvol_major()? == Some(mount.major) {
        let device = zvol::device_node(&mount.source, mount.major, mount.minor)?;
        let dataset = zvol::dataset_of(&device)?;
        Some(Backend::Zvol {
            device,
            pool: pool_of(&dataset).to_owned(),
            dataset,
            fs_type: mount.fs_type.clone(),
        })
    } else if mount.fs_type == "btrfs" {
        // A non-directory is always in its parent directory's subvolume.
        let dir =
            if is_dir { canonical.as_path() } else { canonical.parent().unwrap_or(&canonical) };
        let f = File::open(dir).at("open", dir)?;
        let subvolume_id = btrfs_subvolume_id(f.as_fd()).at("BTRFS_IOC_INO_LOOKUP", dir)?;
        Some(Backend::Btrfs {
            subvolume: is_dir && st.ino == BTRFS_FIRST_FREE_OBJECTID,
            subvolume_id,
        })
    } else {
        None
    };

    // Probe in the path's directory, which is on the same mount, unless the path is a
    // non-directory mounted on its own (a bind-mounted file): its parent is another filesystem.
    let probe_dir = if is_dir {
        Some(canonical.as_path())
    } else if canonical == mount.mount_point {
        None
    } else {
        canonical.parent()
    };
    let reflink = match probe_dir {
        Some(d) => reflink_supported(d)?,
        None => None,
    };
    let backend = backend.unwrap_or_else(|| {
        let fs_type = mount.fs_type.clone();
        if reflink == Some(true) {
            Backend::Reflink { fs_type }
        } else {
            Backend::Plain { fs_type }
        }
    });
    // Images reflinked where the filesystem can (O(extents)), else copied sparsely (O(bytes):
    // still ahead of the tree copy, O(files), at a golden's size; see BENCHMARKS.md) on the
    // ext family, measured and known to hold large sparse files. Not where no device holds
    // the files (tmpfs: the images would be memory), nor on filesystems without sparse or
    // large files (vfat, exFAT) or not measured.
    let image_backend = match reflink {
        Some(true) => loop_devices_usable().err(),
        _ if mount.major == 0 => Some(format!(
            "{} is held by no block device: its images would be memory",
            mount.fs_type
        )),
        _ if !matches!(mount.fs_type.as_str(), "ext2" | "ext3" | "ext4") => Some(format!(
            "{} cannot reflink, and images are copied sparsely only on ext2/3/4",
            mount.fs_type
        )),
        _ => loop_devices_usable().err(),
    };
    Ok(Detection { path: canonical, mount, backend, reflink, image_backend })
}

/// The ZFS pool behind `path`, whether a ZFS dataset holds it or a filesystem on a zvol; `None`
/// when it is not on ZFS or cannot be detected. The library side of the Go `DetectZFSPool`.
pub fn zfs_pool(path: &Path) -> Option<String> {
    detect(path).ok().and_then(|d| d.backend.pool().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names() {
        assert_eq!(pool_of("tank"), "tank");
        assert_eq!(pool_of("tank/a/b"), "tank");
        assert_eq!(pool_of("tank@snap"), "tank");
        assert_eq!(pool_of("my pool/x"), "my pool");
        assert_eq!(pool_of("tank#bm"), "tank");
    }

    #[test]
    fn backend_json_tags() {
        let b = Backend::ZfsDataset { dataset: "tank/docker".into(), pool: "tank".into() };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"kind":"zfs_dataset","dataset":"tank/docker","pool":"tank"}"#
        );
        let b = Backend::Zvol {
            device: "/dev/zd0".into(),
            dataset: "tank/v".into(),
            pool: "tank".into(),
            fs_type: "xfs".into(),
        };
        assert_eq!(b.kind().name(), "zvol");
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"kind":"zvol","device":"/dev/zd0","dataset":"tank/v","pool":"tank","fs_type":"xfs"}"#
        );
        let b = Backend::Btrfs { subvolume: true, subvolume_id: 256 };
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            r#"{"kind":"btrfs","subvolume":true,"subvolume_id":256}"#
        );
        assert_eq!(
            serde_json::to_string(&Backend::Plain { fs_type: "ext4".into() }).unwrap(),
            r#"{"kind":"plain","fs_type":"ext4"}"#
        );
        assert_eq!(Backend::Reflink { fs_type: "xfs".into() }.kind().name(), "reflink");
    }

    /// The serialized tag and the C constant's name come from two lists; they must agree.
    #[test]
    fn kind_names_are_the_serialized_tags() {
        let samples = [
            Backend::ZfsDataset { dataset: "t/d".into(), pool: "t".into() },
            Backend::Zvol {
                device: "/dev/zd0".into(),
                dataset: "t/v".into(),
                pool: "t".into(),
                fs_type: "xfs".into(),
            },
            Backend::Btrfs { subvolume: false, subvolume_id: 5 },
            Backend::Reflink { fs_type: "xfs".into() },
            Backend::Plain { fs_type: "ext4".into() },
        ];
        let kinds: Vec<Kind> = samples.iter().map(Backend::kind).collect();
        assert_eq!(kinds, <Kind as strum::VariantArray>::VARIANTS);
        for b in &samples {
            let json: serde_json::Value = serde_json::to_value(b).unwrap();
            assert_eq!(json["kind"], b.kind().name());
        }
    }
}
