//! Helpers for the integration tests that run on real, loop-mounted filesystems.
//!
//! `tests/loopfs.sh up` mounts them and writes their mount points to an env file; the tests read
//! `GOLDCLONE_TEST_{XFS,BTRFS,BTRFSQ,EXT4,TMPFS,SMALL}`. A missing variable fails the test, unless
//! `GOLDCLONE_SKIP_LOOPFS=1` says to skip (a developer's explicit opt-out): these tests must never
//! pass without having run.
#![allow(dead_code)]

pub mod lifecycle;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use goldclone::treediff::{self, CompareOptions, Difference};

/// A loop-mounted test filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    /// XFS with reflink=1.
    Xfs,
    /// btrfs.
    Btrfs,
    /// btrfs with quotas enabled.
    BtrfsQuota,
    /// ext4 (no FICLONE).
    Ext4,
    /// tmpfs (no FICLONE, no block device).
    Tmpfs,
    /// A 64 MiB ext4 for ENOSPC.
    Small,
    /// A 320 MiB XFS (reflink) for ENOSPC under the image backend.
    SmallXfs,
}

impl Fs {
    /// The environment variable holding the mount point.
    pub fn var(self) -> &'static str {
        match self {
            Fs::Xfs => "GOLDCLONE_TEST_XFS",
            Fs::Btrfs => "GOLDCLONE_TEST_BTRFS",
            Fs::BtrfsQuota => "GOLDCLONE_TEST_BTRFSQ",
            Fs::Ext4 => "GOLDCLONE_TEST_EXT4",
            Fs::Tmpfs => "GOLDCLONE_TEST_TMPFS",
            Fs::Small => "GOLDCLONE_TEST_SMALL",
            Fs::SmallXfs => "GOLDCLONE_TEST_SMALLXFS",
        }
    }

    fn magic(self) -> nix::sys::statfs::FsType {
        use nix::sys::statfs::*;
        match self {
            Fs::Xfs | Fs::SmallXfs => XFS_SUPER_MAGIC,
            Fs::Btrfs | Fs::BtrfsQuota => BTRFS_SUPER_MAGIC,
            Fs::Ext4 | Fs::Small => EXT4_SUPER_MAGIC,
            Fs::Tmpfs => TMPFS_MAGIC,
        }
    }

    /// Whether FICLONE works on it.
    pub fn reflinks(self) -> bool {
        matches!(self, Fs::Xfs | Fs::SmallXfs | Fs::Btrfs | Fs::BtrfsQuota)
    }
}

/// True when the developer opted out of the loop-filesystem tests.
pub fn skipping() -> bool {
    std::env::var_os("GOLDCLONE_SKIP_LOOPFS").is_some_and(|v| v == "1")
}

/// The mount point of `fs`, checked: a directory, the root of its own mount, of the right type.
/// `None` only when skipping is explicitly allowed; otherwise a missing or wrong mount panics.
pub fn mount(fs: Fs) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os(fs.var()).filter(|v| !v.is_empty()) else {
        if skipping() {
            eprintln!("SKIPPED: {} is not set and GOLDCLONE_SKIP_LOOPFS=1", fs.var());
            return None;
        }
        panic!(
            "{} is not set: the loop-filesystem tests did not run. Run them with \
             `sudo tests/loopfs.sh run` (or `tests/loopfs.sh up && . /var/tmp/goldclone-loop/env`), \
             or set GOLDCLONE_SKIP_LOOPFS=1 to skip them explicitly.",
            fs.var()
        );
    };
    let dir = PathBuf::from(dir);
    let m =
        std::fs::metadata(&dir).unwrap_or_else(|e| panic!("{}={}: {e}", fs.var(), dir.display()));
    assert!(m.is_dir(), "{}={} is not a directory", fs.var(), dir.display());
    let parent = std::fs::metadata(dir.join("..")).unwrap();
    assert_ne!(m.dev(), parent.dev(), "{}={} is not a mount point", fs.var(), dir.display());
    let st = nix::sys::statfs::statfs(&dir).unwrap();
    assert_eq!(
        st.filesystem_type(),
        fs.magic(),
        "{}={} is not {:?} (statfs type {:?})",
        fs.var(),
        dir.display(),
        fs,
        st.filesystem_type()
    );
    Some(dir)
}

/// Mount points of several filesystems, or `None` if skipping (see [`mount`]).
pub fn mounts<const N: usize>(fss: [Fs; N]) -> Option<[PathBuf; N]> {
    let v: Vec<PathBuf> = fss.iter().map(|&f| mount(f)).collect::<Option<_>>()?;
    Some(v.try_into().unwrap())
}

/// A directory for one test on a test filesystem, removed (read-only directories included)
/// when dropped, also when the test panics.
pub struct Scratch {
    /// The directory.
    pub path: PathBuf,
}

impl Scratch {
    /// A fresh directory `<mnt>/gc-<tag>-<pid>-<n>`.
    pub fn new(mnt: &Path, tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = mnt.join(format!(
            "gc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = goldclone::fixture::remove(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Scratch { path }
    }

    /// A path inside.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = goldclone::fixture::remove(&self.path) {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Compare two trees and panic listing every difference.
pub fn assert_same(a: &Path, b: &Path, opts: &CompareOptions) {
    let diffs = treediff::compare(a, b, opts).expect("compare");
    assert_no_differences(a, b, &diffs);
}

/// Panic listing every difference, if there are any.
pub fn assert_no_differences(a: &Path, b: &Path, diffs: &[Difference]) {
    if !diffs.is_empty() {
        let list: Vec<String> = diffs.iter().map(|d| format!("  {d}")).collect();
        panic!(
            "{} and {} differ ({}):\n{}",
            a.display(),
            b.display(),
            treediff::summarize(diffs),
            list.join("\n")
        );
    }
}

/// Names in `dir` that look like goldclone staging directories.
pub fn staging_leftovers(dir: &Path) -> Vec<OsString> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.as_bytes().starts_with(b".goldclone-staging"))
        .collect()
}

/// Names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    v.sort();
    v
}

/// Free bytes of the filesystem holding `p`.
pub fn free_bytes(p: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(p).unwrap();
    st.blocks_free() as u64 * st.fragment_size() as u64
}

/// A cache root on ZFS for one test: a dataset of its own under `GOLDCLONE_TEST_ZFS_PARENT`,
/// mounted (mount(2), legacy) under `GOLDCLONE_TEST_ZFS_MNT`. Set only in the ZFS guest
/// (tests/zfs-vm.sh); unmounted and destroyed with everything in it on drop.
pub struct ZfsRoot {
    pub path: PathBuf,
    pub dataset: goldclone::zfs::DatasetName,
}

impl ZfsRoot {
    /// `None` off the ZFS guest.
    pub fn new(tag: &str) -> Option<ZfsRoot> {
        let parent = std::env::var("GOLDCLONE_TEST_ZFS_PARENT").ok()?;
        let mnt = PathBuf::from(std::env::var_os("GOLDCLONE_TEST_ZFS_MNT")?);
        let zfs = goldclone::zfs::Zfs::open().expect("ZFS in the guest");
        let dataset = goldclone::zfs::DatasetName::new(&format!("{parent}/{tag}")).unwrap();
        let _ = zfs.destroy_tree(&dataset);
        zfs.create_filesystem(&dataset, &goldclone::zfs::Props::new().mountpoint("legacy"))
            .unwrap();
        let path = mnt.join(tag);
        std::fs::create_dir_all(&path).unwrap();
        goldclone::zfs::mount::mount_filesystem(&dataset, &path, Default::default()).unwrap();
        Some(ZfsRoot { path, dataset })
    }
}

impl Drop for ZfsRoot {
    fn drop(&mut self) {
        // Sessions are mounted below the root: unmount those first (deepest first).
        if let Ok(ms) = goldclone::detect::mounts() {
            let mut inner: Vec<PathBuf> = ms
                .into_iter()
                .map(|m| m.mount_point)
                .filter(|p| p.starts_with(&self.path) && p != &self.path)
                .collect();
            inner.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for p in inner {
                let _ = goldclone::zfs::mount::unmount(&p);
            }
        }
        let _ = goldclone::zfs::mount::unmount(&self.path);
        if let Ok(zfs) = goldclone::zfs::Zfs::open() {
            // A zvol whose XFS was just unmounted can be EBUSY for a moment (the library retries
            // the same way); tests/zfs-vm.sh fails the run if anything is left.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while zfs.destroy_tree(&self.dataset).is_err() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Whether `path` is a mount point in this namespace.
/// Loop devices whose backing file lies under `dir`, as `loopN: FILE`; with `unmounted_only`,
/// only those that no mount uses (an image session's device serves its mount).
pub fn loop_devices_under(dir: &Path, unmounted_only: bool) -> Vec<String> {
    // The kernel names the backing file by its resolved path.
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let sources: std::collections::BTreeSet<&str> =
        mounts.lines().filter_map(|l| l.split_once(" - ")?.1.split(' ').nth(1)).collect();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let Ok(file) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let name = e.file_name().to_string_lossy().into_owned();
        let used = sources.contains(format!("/dev/{name}").as_str());
        if Path::new(file.trim()).starts_with(&dir) && !(unmounted_only && used) {
            out.push(format!("{name}: {}", file.trim()));
        }
    }
    out
}

/// [`loop_devices_under`], once those that are going have gone (10 s at most): an autoclear
/// device lets go a moment after its last user (and udev may probe it meanwhile).
pub fn lasting_loop_devices_under(dir: &Path, unmounted_only: bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = loop_devices_under(dir, unmounted_only);
        if found.is_empty() || std::time::Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn is_mount_point(path: &Path) -> bool {
    let want = path.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want))
}
