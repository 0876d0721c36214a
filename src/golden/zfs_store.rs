//! The ZFS backends: filesystem clones, and zvol clones carrying XFS (the service's production
//! layout). Everything through libzfs_core in process and mount(2); no `zfs` or `mount` binary.
//!
//! Datasets under the cache dataset `D` (the one mounted at the cache root):
//!
//! ```text
//! D/<project>                 container, mountpoint=legacy, canmount=off: nothing auto-mounts
//! D/<project>/g<N>            head of generation N (a filesystem or a volume), never mounted
//! D/<project>/g<H>@gen<K>     generation K: a snapshot, with goldclone:* user properties.
//!                             All live snapshots sit on the current head H.
//! D/<project>/s-<session>     a session: clone of the current generation's snapshot, mounted
//!                             at ROOT/<project>/sessions/<session>
//! ```
//!
//! Promote of session S to generation M (current N): snapshot `s-S@genM` (an XFS session is
//! frozen for it), clone it as head `gM`, then `lzc_promote(gM)` until it is no clone: the first
//! promote moves `@genM` from the session to `gM` (the session becomes its clone), the second
//! moves `gN`'s snapshots to `gM`. The old head `gN`, now an empty clone, is destroyed. Sessions
//! of older generations keep their origin snapshots, which move but never change. A retired
//! generation's snapshot is destroyed with `defer` once no session uses it: ZFS removes it when
//! its last clone goes, never `destroy -R`.
//!
//! Each step is one transaction group; concurrent setups issue their clones in parallel and the
//! kernel syncs them in shared transaction groups.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::store::{Retired, Store, Tree, TreeId};
use super::BackendKind;
use crate::copy::{self, CopyOptions};
use crate::zfs::mount::{self, MountOptions};
use crate::zfs::{CanMount, DatasetName, Props, SnapshotName, ZcpValue, Zfs, ZfsErrorKind};
use crate::{Error, Result};

/// How long to wait for a new zvol's block device to appear (no udev needed; the kernel creates
/// it asynchronously).
const ZVOL_DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct ZfsStore {
    zfs: Zfs,
    /// The cache dataset: projects are its children.
    root: DatasetName,
    /// Volumes with XFS instead of filesystems.
    volumes: bool,
    copy_threads: usize,
    /// Size of a new generation-1 volume; 0 picks four times the imported tree, at least 1 GiB.
    volume_size: u64,
}

fn zfs_kind(e: &Error) -> Option<ZfsErrorKind> {
    match e {
        Error::Zfs(z) => Some(z.zfs_kind()),
        _ => None,
    }
}

impl ZfsStore {
    pub fn new(
        root: DatasetName,
        volumes: bool,
        copy_threads: usize,
        volume_size: u64,
    ) -> Result<ZfsStore> {
        Ok(ZfsStore { zfs: Zfs::open()?, root, volumes, copy_threads, volume_size })
    }

    fn container(&self, project: &str) -> Result<DatasetName> {
        self.root.child(project)
    }

    fn head(&self, project: &str, generation: u64) -> Result<DatasetName> {
        self.container(project)?.child(&format!("g{generation}"))
    }

    fn session_dataset(&self, project: &str, session: &str) -> Result<DatasetName> {
        self.container(project)?.child(&format!("s-{session}"))
    }

    /// Generation `generation`'s snapshot, on head `head`.
    fn generation_snapshot(
        &self,
        project: &str,
        head: u64,
        generation: u64,
    ) -> Result<SnapshotName> {
        self.head(project, head)?.snapshot(&format!("gen{generation}"))
    }

    fn tree_generation(tree: &Tree) -> (u64, u64) {
        match tree.id {
            TreeId::Generation(g) => (g, tree.head.unwrap_or(g)),
            TreeId::Session(_) => unreachable!("a generation tree was expected"),
        }
    }

    fn tree_session(tree: &Tree) -> &str {
        match &tree.id {
            TreeId::Session(s) => s,
            TreeId::Generation(_) => unreachable!("a session tree was expected"),
        }
    }

    fn exists(&self, name: &str) -> Result<bool> {
        self.zfs.exists(name)
    }

    /// Where generation `generation` is written during import, beside its metadata.
    fn staging_dir(golden: &Tree) -> PathBuf {
        let name =
            golden.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        golden.path.with_file_name(format!("{}{name}", super::store::IMPORT_PREFIX))
    }

    /// Mount a session or staging dataset at `dir` (created if needed).
    fn mount(&self, dataset: &DatasetName, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("mkdir", dir, e))?;
        if self.volumes {
            let dev = mount::zvol_device(dataset, ZVOL_DEVICE_TIMEOUT)?;
            // Sessions and the golden are clones of one XFS: same UUID, so `nouuid`.
            mount::mount_xfs(&dev, dir, true)
        } else {
            mount::mount_filesystem(dataset, dir, MountOptions::default())
        }
    }

    /// Unmount `dir` if something is mounted there, then remove the directory.
    fn unmount_dir(dir: &Path) -> Result<()> {
        if is_mount_point(dir) {
            mount::unmount(dir)?;
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("rmdir", dir, e)),
        }
    }

    /// Destroy a dataset and its snapshots if it exists. A volume whose XFS was just unmounted
    /// can stay busy for a moment (the kernel releases the block device asynchronously): EBUSY
    /// is retried for a few seconds before it is reported.
    fn destroy_if_exists(&self, dataset: &DatasetName) -> Result<bool> {
        if !self.exists(dataset.as_str())? {
            return Ok(false);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.zfs.destroy_tree(dataset) {
                Ok(()) => return Ok(true),
                Err(e)
                    if zfs_kind(&e) == Some(ZfsErrorKind::Busy)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn ensure_container(&self, project: &str) -> Result<()> {
        let container = self.container(project)?;
        if self.exists(container.as_str())? {
            return Ok(());
        }
        // legacy: nothing under it is mounted by `zfs mount -a` or at boot; we mount sessions.
        let props = Props::new().mountpoint("legacy").canmount(CanMount::Off);
        match self.zfs.create_filesystem(&container, &props) {
            Ok(()) => Ok(()),
            Err(e) if zfs_kind(&e) == Some(ZfsErrorKind::Exists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn volume_size_for(&self, src: &Path) -> u64 {
        let want = if self.volume_size > 0 {
            self.volume_size
        } else {
            (super::store::disk_usage(src).saturating_mul(4)).max(1 << 30)
        };
        want.div_ceil(1 << 20) << 20
    }

    fn snapshot_generation(
        &self,
        snap: &SnapshotName,
        project: &str,
        generation: u64,
        session: Option<&str>,
    ) -> Result<()> {
        let generation = generation.to_string();
        let created = super::state::now().to_string();
        let mut props = vec![
            ("goldclone:project", project),
            ("goldclone:generation", generation.as_str()),
            ("goldclone:created_at", created.as_str()),
        ];
        if let Some(s) = session {
            props.push(("goldclone:session", s));
        }
        self.zfs.snapshot_with_props(std::slice::from_ref(snap), &props)
    }

    /// The promote's ZFS steps after the session snapshot exists; each is skipped when already
    /// done, so recovery can run it again from any point.
    fn finish_promote(
        &self,
        project: &str,
        session: &str,
        generation: u64,
        previous: u64,
    ) -> Result<()> {
        let head = self.head(project, generation)?;
        let on_session =
            self.session_dataset(project, session)?.snapshot(&format!("gen{generation}"))?;
        if !self.exists(head.as_str())? {
            self.zfs.clone(&head, &on_session, &Props::new())?;
        }
        // Until the new head is nobody's clone: at most twice (the session's snapshot, then the
        // previous head's snapshots).
        for round in 0..3 {
            match self.zfs.promote(&head) {
                Ok(()) if round == 0 => super::fault::point("promote:head-promoted"),
                Ok(()) => {}
                Err(e) if zfs_kind(&e) == Some(ZfsErrorKind::NotAClone) => break,
                Err(e) => return Err(e),
            }
        }
        let old_head = self.head(project, previous)?;
        if previous != generation && self.exists(old_head.as_str())? {
            self.zfs.destroy(&old_head)?;
        }
        Ok(())
    }

    /// Thaw an XFS session a crash may have left frozen (FIFREEZE outlives its process).
    fn thaw_if_frozen(dir: &Path) {
        if let Ok(f) = std::fs::File::open(dir) {
            let _ = crate::sys::block::fithaw(std::os::fd::AsFd::as_fd(&f));
        }
    }
}

/// Whether `dir` is the root of a mount (its device differs from its parent's, or mountinfo
/// says so for bind-style mounts of the same device).
fn is_mount_point(dir: &Path) -> bool {
    let Ok(canon) = dir.canonicalize() else { return false };
    crate::detect::mounts().is_ok_and(|ms| ms.iter().any(|m| m.mount_point == canon))
}

impl Store for ZfsStore {
    fn kind(&self) -> BackendKind {
        if self.volumes {
            BackendKind::Zvol
        } else {
            BackendKind::Zfs
        }
    }

    fn import(&self, src: &Path, golden: &Tree) -> Result<()> {
        let (generation, _) = Self::tree_generation(golden);
        self.ensure_container(&golden.project)?;
        let head = self.head(&golden.project, generation)?;
        let staging = Self::staging_dir(golden);
        let result = (|| {
            if self.volumes {
                let props =
                    Props::new().volsize(self.volume_size_for(src)).number("refreservation", 0);
                self.zfs.create_volume(&head, &props)?;
                let dev = mount::zvol_device(&head, ZVOL_DEVICE_TIMEOUT)?;
                // There is no library for making an XFS; this is the one program the library runs.
                // Its chatter (e.g. about the volume's 16K sectors) is shown only on failure.
                let out = Command::new("mkfs.xfs")
                    .args(["-q", "-f"])
                    .arg(&dev)
                    .output()
                    .map_err(|e| Error::io("spawn mkfs.xfs", &dev, e))?;
                if !out.status.success() {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    return Err(Error::io(
                        "mkfs.xfs",
                        &dev,
                        std::io::Error::other(format!(
                            "exited with {}: {}",
                            out.status,
                            stderr.trim()
                        )),
                    ));
                }
            } else {
                self.zfs.create_filesystem(&head, &Props::new())?;
            }
            self.mount(&head, &staging)?;
            let copied = copy::copy_into(
                src,
                &staging,
                &CopyOptions { threads: self.copy_threads, ..CopyOptions::default() },
            );
            let unmounted = Self::unmount_dir(&staging);
            copied?;
            unmounted?;
            let snap = self.generation_snapshot(&golden.project, generation, generation)?;
            self.snapshot_generation(&snap, &golden.project, generation, None)
        })();
        if result.is_err() {
            let _ = self.discard(golden);
        }
        result
    }

    fn session_from(&self, golden: &Tree, session: &Tree) -> Result<()> {
        let (generation, head) = Self::tree_generation(golden);
        let origin = self.generation_snapshot(&golden.project, head, generation)?;
        let dataset = self.session_dataset(&session.project, Self::tree_session(session))?;
        // No properties on the clone: they would cost a second transaction group; the legacy
        // mountpoint is inherited from the project container.
        self.zfs.clone(&dataset, &origin, &Props::new())?;
        if let Err(e) = self.mount(&dataset, &session.path) {
            let _ = self.discard(session);
            return Err(e);
        }
        Ok(())
    }

    fn golden_from(&self, session: &Tree, golden: &Tree, previous: &Tree) -> Result<()> {
        let name = Self::tree_session(session);
        let (generation, _) = Self::tree_generation(golden);
        let (previous, _) = Self::tree_generation(previous);
        let snap =
            self.session_dataset(&session.project, name)?.snapshot(&format!("gen{generation}"))?;
        if self.volumes {
            // XFS keeps dirty data and log in memory: freeze for a consistent block-level image.
            let frozen = mount::freeze(&session.path)?;
            let taken = self.snapshot_generation(&snap, &session.project, generation, Some(name));
            frozen.thaw()?;
            taken?;
        } else {
            self.snapshot_generation(&snap, &session.project, generation, Some(name))?;
        }
        super::fault::point("promote:snapshot-taken");
        self.finish_promote(&session.project, name, generation, previous)
    }

    fn recover_golden_from(&self, session: &Tree, golden: &Tree, previous: &Tree) -> Result<bool> {
        let name = Self::tree_session(session);
        let (generation, _) = Self::tree_generation(golden);
        let (previous, _) = Self::tree_generation(previous);
        if self.volumes {
            Self::thaw_if_frozen(&session.path);
        }
        let on_session =
            self.session_dataset(&session.project, name)?.snapshot(&format!("gen{generation}"))?;
        let head = self.head(&session.project, generation)?;
        if self.exists(on_session.as_str())? {
            // No lzc_promote has run (it would have moved this snapshot to the head): nothing
            // irreversible happened, so undo. The head, if cloned, depends on the snapshot.
            self.destroy_if_exists(&head)?;
            self.zfs.destroy_snapshots(&[on_session], false)?;
            return Ok(false);
        }
        if !self.exists(head.as_str())? {
            return Ok(false); // nothing was done
        }
        // The head holds the promoted snapshot and maybe the older generations' ones already:
        // from here only forward is safe.
        self.finish_promote(&session.project, name, generation, previous)?;
        Ok(true)
    }

    fn exists(&self, tree: &Tree) -> Result<bool> {
        match &tree.id {
            TreeId::Session(s) => self.exists(self.session_dataset(&tree.project, s)?.as_str()),
            TreeId::Generation(g) => {
                let head = tree.head.unwrap_or(*g);
                Ok(self.exists(self.generation_snapshot(&tree.project, head, *g)?.as_str())?
                    || self.exists(self.head(&tree.project, *g)?.as_str())?)
            }
        }
    }

    fn retire(&self, tree: &Tree, _trash: &Path) -> Result<Retired> {
        match &tree.id {
            TreeId::Session(_) => {
                let existed = self.exists(
                    self.session_dataset(&tree.project, Self::tree_session(tree))?.as_str(),
                )?;
                self.discard(tree)?;
                Ok(if existed { Retired::Removed } else { Retired::Absent })
            }
            TreeId::Generation(g) => {
                let head = tree.head.unwrap_or(*g);
                let snap = self.generation_snapshot(&tree.project, head, *g)?;
                if !self.exists(snap.as_str())? {
                    return Ok(Retired::Absent);
                }
                // Deferred: gone now if no session clones it, else with its last clone.
                self.zfs.destroy_snapshots(&[snap], true)?;
                Ok(Retired::Removed)
            }
        }
    }

    fn discard(&self, tree: &Tree) -> Result<()> {
        match &tree.id {
            TreeId::Session(s) => {
                Self::unmount_dir(&tree.path)?;
                self.destroy_if_exists(&self.session_dataset(&tree.project, s)?)?;
            }
            TreeId::Generation(g) => {
                Self::unmount_dir(&Self::staging_dir(tree))?;
                let head = tree.head.unwrap_or(*g);
                if head != *g {
                    // A retired generation lives only as a snapshot on the current head.
                    let snap = self.generation_snapshot(&tree.project, head, *g)?;
                    self.zfs.destroy_snapshots(&[snap], true)?;
                }
                self.destroy_if_exists(&self.head(&tree.project, *g)?)?;
            }
        }
        Ok(())
    }

    fn remove_trash(&self, path: &Path) -> Result<()> {
        if is_mount_point(path) {
            mount::unmount(path)?;
        }
        copy::remove_tree(path)
    }

    fn session_names(&self, project: &str) -> Result<Vec<String>> {
        let container = self.container(project)?;
        let children = match self.zfs.children(&container) {
            Ok(c) => c,
            Err(e) if zfs_kind(&e) == Some(ZfsErrorKind::NotFound) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        // Only our own naming inside our own container: `s-<valid session name>`.
        Ok(children
            .iter()
            .filter_map(|c| c.as_str().rsplit('/').next()?.strip_prefix("s-"))
            .filter(|s| super::state::validate_name(s).is_ok())
            .map(str::to_string)
            .collect())
    }

    fn size(&self, tree: &Tree) -> u64 {
        let TreeId::Generation(g) = tree.id else { return 0 };
        let Ok(snap) = self.generation_snapshot(&tree.project, tree.head.unwrap_or(g), g) else {
            return 0;
        };
        const PROGRAM: &str = r#"local snap = (...)["argv"][1]
local value = zfs.get_prop(snap, "referenced")
return value"#;
        match self.zfs.channel_program(snap.pool(), PROGRAM, &[snap.as_str()], false) {
            Ok(v) => first_int(&v).unwrap_or(0),
            Err(_) => 0,
        }
    }
}

fn first_int(v: &ZcpValue) -> Option<u64> {
    match v {
        ZcpValue::Int(i) => u64::try_from(*i).ok(),
        ZcpValue::Table(t) => t.values().find_map(first_int),
        _ => None,
    }
}
