//! Cache roots on every backend this machine has, and small golden trees, for the lifecycle
//! suites.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use goldclone::golden::{BackendKind, Cache, OpenOptions};

/// A cache root on one backend, removed on drop.
pub struct Root {
    pub path: PathBuf,
    pub backend: BackendKind,
    /// On ZFS: the test's own dataset, destroyed after the cache is emptied.
    pub _zfs: Option<super::ZfsRoot>,
}

impl Drop for Root {
    fn drop(&mut self) {
        // Sessions and generations on btrfs and ZFS are subvolumes and datasets: let the library
        // remove what it can first.
        if let Ok(cache) = Cache::open(
            &self.path,
            &OpenOptions { backend: Some(self.backend), ..Default::default() },
        ) {
            for project in list(&self.path).into_iter().filter(|p| !p.starts_with('.')) {
                if let Ok(info) = cache.info(&project) {
                    for (s, _) in info.sessions {
                        let _ = cache.cleanup(&project, &s);
                    }
                }
            }
            let _ = cache.gc();
        }
        if self._zfs.is_some() {
            return; // the dataset goes with everything in it
        }
        // What is left on btrfs (the current generation) is a read-only subvolume.
        for sub in subvolumes(&self.path) {
            let _ = Command::new("btrfs")
                .args(["subvolume", "delete"])
                .arg(&sub)
                .stdout(Stdio::null())
                .status();
        }
        let _ = goldclone::copy::remove_tree(&self.path);
    }
}

/// btrfs subvolume roots (inode 256) under `dir`, deepest first.
pub fn subvolumes(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if e.metadata().is_ok_and(|m| m.ino() == 256) {
                    out.push(e.path());
                }
                stack.push(e.path());
            }
        }
    }
    out.reverse();
    out
}

pub fn list(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// The tests (by tag) that run on the zvol backend in the ZFS guest too: those that reach what
/// zvol does and ZFS does not (an XFS made at import, mounted per session, frozen for a
/// promote's snapshot, unmounted and its block device let go; mounts in and of it). The others
/// test the lifecycle's own logic, the same code on both, and run on ZFS only there, for the
/// guest's time (emulated, it is most of CI's). `GOLDCLONE_TEST_ALL_ZVOL=1` runs every test on
/// zvol as well.
const ZVOL_TAGS: &[&str] = &[
    "full", "busy", "lost", "watch", "edit", "delete", "zvolopts", "at", "lazy", "ns", "mnt",
    "next", "remount",
];

/// One cache root per backend this machine has: in the ZFS guest the ZFS filesystem and zvol
/// backends (each on a dataset of its own), elsewhere the copy backend on XFS and ext4, the
/// btrfs backend, and the image backend on XFS, btrfs and ext4, on their loop filesystems.
pub fn roots(tag: &str) -> Vec<(Root, &'static str)> {
    if std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_some() {
        let zvol =
            ZVOL_TAGS.contains(&tag) || std::env::var_os("GOLDCLONE_TEST_ALL_ZVOL").is_some();
        return [("zfs", BackendKind::Zfs), ("zvol", BackendKind::Zvol)]
            .into_iter()
            .filter(|(_, b)| zvol || *b == BackendKind::Zfs)
            .map(|(name, backend)| {
                let zfs = super::ZfsRoot::new(&format!("{tag}-{name}")).unwrap();
                (Root { path: zfs.path.clone(), backend, _zfs: Some(zfs) }, name)
            })
            .collect();
    }
    let mut out = Vec::new();
    for (name, fs_kind, backend) in [
        ("copy-xfs", super::Fs::Xfs, BackendKind::Copy),
        ("copy-ext4", super::Fs::Ext4, BackendKind::Copy),
        ("btrfs", super::Fs::Btrfs, BackendKind::Btrfs),
        ("image-xfs", super::Fs::Xfs, BackendKind::Image),
        ("image-btrfs", super::Fs::Btrfs, BackendKind::Image),
        // No reflink: images copied sparsely (the default on ext4).
        ("image-ext4", super::Fs::Ext4, BackendKind::Image),
    ] {
        let Some(mnt) = super::mount(fs_kind) else { continue }; // skipping was asked for
        let path = mnt.join(format!("lifecycle-{tag}-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        out.push((Root { path, backend, _zfs: None }, name));
    }
    out
}

pub fn open(root: &Root) -> Cache {
    let cache =
        Cache::open(&root.path, &OpenOptions { backend: Some(root.backend), ..Default::default() })
            .unwrap();
    assert_eq!(cache.backend(), root.backend);
    cache
}

/// A small golden tree: `files` files whose content is the generation marker.
pub fn golden_tree(dir: &Path, marker: &str, files: usize) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("generation"), marker).unwrap();
    for i in 0..files {
        fs::write(dir.join("sub").join(format!("f{i:03}")), marker).unwrap();
    }
}

/// Every file of the session carries the same marker: it saw one whole generation.
pub fn whole_generation(session: &Path, files: usize) -> String {
    let marker = fs::read_to_string(session.join("generation")).unwrap();
    for i in 0..files {
        let f = session.join("sub").join(format!("f{i:03}"));
        assert_eq!(
            fs::read_to_string(&f).unwrap(),
            marker,
            "{} mixes generations",
            session.display()
        );
    }
    marker
}

/// The marker of the project's current generation, read through a short-lived session (on ZFS
/// a generation is a snapshot, not a directory).
pub fn current_marker(cache: &Cache, files: usize) -> String {
    let probe = cache.setup("proj", "probe").unwrap();
    let marker = whole_generation(&probe, files);
    cache.cleanup("proj", "probe").unwrap();
    marker
}

/// Every path under the root, for "nothing changed" checks.
pub fn snapshot_tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).into_iter().flatten().flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            out.insert(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    out
}

pub fn scratch_tree(tag: &str, marker: &str, files: usize) -> PathBuf {
    let dir = PathBuf::from(format!("/var/tmp/goldclone-lifecycle-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    golden_tree(&dir, marker, files);
    dir
}
