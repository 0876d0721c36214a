//! The ZFS backends: filesystem clones, and zvol clones carrying XFS (the service's production
//! layout). Everything through libzfs_core in process and mount(2); no `zfs` or `mount` binary.
//!
//! Datasets under the store's root dataset `R` (for the zfs backend the dataset mounted at the
//! cache root; for the zvol backend `<parent>/<root zvol>.goldclone` beside the zvol the cache
//! root is on, so two roots on one parent never share a dataset name):
//!
//! ```text
//! R/<project>                 container, mountpoint=legacy, canmount=off, and the user
//!                             property goldclone:cache=<cache id>: made by this cache, and
//!                             nothing outside such a container is ever destroyed
//! R/<project>/g<N>            head of generation N (a filesystem or a volume), never mounted
//! R/<project>/g<H>@gen<K>     generation K: a snapshot, with goldclone:* user properties.
//!                             All live snapshots sit on the current head H.
//! R/<project>/s-<session>     a session: clone of the current generation's snapshot, mounted
//!                             at ROOT/<project>/sessions/<session>
//! R/<project>/i<M>            while generation M is imported from a directory after N: a clone
//!                             of `gN@genN`, emptied and filled, snapshotted as `i<M>@genM`, then
//!                             made the head `gM` as a promote does with a session's snapshot
//! ```
//!
//! Records name datasets and snapshots by guid: a dataset is destroyed only when its guid is the
//! recorded one (or, undoing an operation that did not commit, when the operation's own intent
//! named it inside this cache's container).
//!
//! Promote of session S to generation M (current N): snapshot `s-S@genM` (an XFS session is
//! frozen for it), clone it as head `gM`, then `lzc_promote(gM)` until it is no clone: the first
//! promote moves `@genM` from the session to `gM` (the session becomes its clone), the second
//! moves `gN`'s snapshots to `gM`. The old head `gN`, now an empty clone, is destroyed. Sessions
//! of older generations keep their origin snapshots, which move but never change. A retired
//! generation's snapshot is destroyed with `defer` once no session uses it: ZFS removes it when
//! its last clone goes, never `destroy -R`.

use super::Source;
use std::collections::HashSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rustix::fs::Mode;
use serde::{Deserialize, Serialize};

use super::rootdir::{self, RootDir};
use super::{
    cannot_serve, remove_beneath, zvol, Backend, BackendKind, Generation, Identity, Presence,
    Retired, Session, Settings, Watch,
};
use crate::copy::{self, CopyOptions};
use crate::detect::Detection;
use crate::zfs::mount::{self, MountOptions};
use crate::zfs::{CanMount, DatasetName, Props, SnapshotName, ZcpValue, Zfs, ZfsErrorKind};
use crate::{Context, Error, Result};

/// Fault points only the ZFS backends reach (between the steps that make a new head: a
/// promote's, and an import's of the next generation).
pub(crate) const FAULT_POINTS: &[&str] = &[
    "promote:snapshot-taken",
    "promote:head-promoted",
    "import:snapshot-taken",
    "import:head-promoted",
    "setup:remounted",
];

/// A tree of this backend: a dataset or snapshot, by its name when recorded and its guid
/// (a snapshot keeps its guid when promote moves it to another head).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum DatasetIdentity {
    Dataset { name: String, guid: u64 },
}

/// Where a cache root on ZFS puts its datasets, checked: the root must be the mount point of a
/// dataset (datasets, or for `Zvol` volumes, go under it), or for `Zvol` an XFS on a zvol
/// (volumes go beside it).
pub(crate) fn placement(root: &Path, found: &Detection, kind: BackendKind) -> Result<Placement> {
    use crate::detect::Backend as Found;
    match &found.backend {
        // Sessions and records live in directories of that dataset.
        Found::ZfsDataset { dataset, .. } if found.mount.mount_point == root => {
            Ok(Placement::Under(DatasetName::new(dataset)?))
        }
        Found::Zvol { dataset, .. } if kind == BackendKind::Zvol => {
            Ok(Placement::BesideZvol(DatasetName::new(dataset)?))
        }
        _ => Err(cannot_serve(
            kind,
            root,
            found,
            "needs the cache root to be the mount point of a ZFS dataset (or, for zvol, on a zvol)",
        )),
    }
}

/// The user property that marks a container as this cache's.
const OWNER_PROP: &str = "goldclone:cache";

/// Where a cache root is on ZFS, which decides where its datasets go.
#[derive(Debug)]
pub(crate) enum Placement {
    /// The root is the mount point of this dataset: projects' containers are its children.
    Under(DatasetName),
    /// The root is an XFS on this zvol: containers go under `<parent>/<zvol>.goldclone`, made
    /// for this cache, so that two roots on one parent never share a dataset name.
    BesideZvol(DatasetName),
}

#[derive(Debug)]
pub(crate) struct ZfsBackend {
    zfs: Zfs,
    /// Projects' containers are its children.
    root: DatasetName,
    /// Whether `root` is ours to create (zvol backend) rather than the user's dataset.
    root_is_ours: bool,
    /// Volumes with XFS instead of filesystems.
    volumes: bool,
    copy_threads: usize,
    /// Size of a new generation-1 volume; 0 picks four times the imported tree, at least 16 GiB.
    volume_size: u64,
    /// `volblocksize` of new volumes; 0 picks 8 KiB.
    volume_block_size: u64,
    /// This cache's id (`cache.json`).
    cache_id: String,
    /// Containers already checked to carry our id.
    owned: Mutex<HashSet<String>>,
}

fn zfs_kind(e: &Error) -> Option<ZfsErrorKind> {
    e.zfs().map(|z| z.zfs_kind())
}

/// The dataset name as a string value of a record.
fn identity(name: &str, guid: u64) -> Identity {
    Identity::new(&DatasetIdentity::Dataset { name: name.to_string(), guid })
}

impl ZfsBackend {
    /// A backend for a cache root placed as `place`, with filesystems or (`volumes`) zvols.
    pub fn new(
        place: Placement,
        volumes: bool,
        settings: Settings,
        cache_id: &str,
    ) -> Result<ZfsBackend> {
        let (root, root_is_ours) = match place {
            Placement::Under(dataset) => (dataset, false),
            Placement::BesideZvol(zvol) => (zvol::datasets_beside(&zvol)?, true),
        };
        Ok(ZfsBackend {
            zfs: Zfs::open()?,
            root,
            root_is_ours,
            volumes,
            copy_threads: settings.copy_threads,
            volume_size: settings.zvol_size,
            volume_block_size: settings.zvol_block_size,
            cache_id: cache_id.to_string(),
            owned: Mutex::new(HashSet::new()),
        })
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

    /// Where an import of generation `generation` of an existing project builds its tree: a
    /// clone of the current generation, emptied and filled (see `import_next`).
    fn import_dataset(&self, project: &str, generation: u64) -> Result<DatasetName> {
        self.container(project)?.child(&format!("i{generation}"))
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

    fn exists(&self, name: &str) -> Result<bool> {
        self.zfs.exists(name)
    }

    /// Properties of `name` (missing ones are absent); `None` if it does not exist.
    fn props(
        &self,
        name: &str,
        props: &[&str],
    ) -> Result<Option<std::collections::BTreeMap<String, ZcpValue>>> {
        // zfs.get_prop fails the whole program for a missing dataset and returns nothing for
        // an unset user property.
        const PROGRAM: &str = r#"local argv = (...)["argv"]
if not zfs.exists(argv[1]) then return "missing" end
local out = {}
for i = 2, #argv do
  local v, src = zfs.get_prop(argv[1], argv[i])
  if v ~= nil then out[argv[i]] = v end
  if src ~= nil then out[argv[i] .. " source"] = src end
end
return out"#;
        let mut args = vec![name];
        args.extend_from_slice(props);
        match self.zfs.channel_program(crate::detect::pool_of(name), PROGRAM, &args, false)? {
            ZcpValue::Table(t) => Ok(Some(t)),
            ZcpValue::String(s) if s == "missing" => Ok(None),
            // An empty table comes back as nil.
            ZcpValue::Nil => Ok(Some(Default::default())),
            other => Err(Error::Damaged {
                path: PathBuf::from(name),
                what: format!("unexpected property answer {other:?}"),
            }),
        }
    }

    /// The guid of `name`, if it exists.
    fn guid(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.props(name, &["guid"])?.and_then(|t| match t.get("guid") {
            Some(ZcpValue::Int(i)) => Some(*i as u64),
            _ => None,
        }))
    }

    /// The identity of `name`, which must exist.
    fn identify(&self, name: &str) -> Result<Identity> {
        let guid = self.guid(name)?.ok_or_else(|| Error::Damaged {
            path: PathBuf::from(name),
            what: "vanished right after it was made".into(),
        })?;
        Ok(identity(name, guid))
    }

    /// Whether the recorded dataset `id` is `name` now (same guid).
    fn is_recorded(&self, name: &str, id: &Identity) -> Result<std::result::Result<(), String>> {
        let Some(DatasetIdentity::Dataset { guid, .. }) = id.get() else {
            return Ok(Err(format!("recorded as {id}, not a dataset")));
        };
        Ok(match self.guid(name)? {
            None => Err("missing".into()),
            Some(g) if g == guid => Ok(()),
            Some(g) => Err(format!("{name} has guid {g}, not the recorded {guid}")),
        })
    }

    /// Check that the project's container (if it exists) is this cache's; `false` if it does
    /// not exist.
    fn check_owned(&self, project: &str) -> Result<bool> {
        let container = self.container(project)?;
        if self.owned.lock().unwrap_or_else(|p| p.into_inner()).contains(container.as_str()) {
            return Ok(true);
        }
        let Some(props) = self.props(container.as_str(), &[OWNER_PROP])? else {
            return Ok(false);
        };
        // Set on the container itself: a child a user made under one of ours inherits the
        // mark, and is not ours.
        let local = matches!(props.get(&format!("{OWNER_PROP} source")),
            Some(ZcpValue::String(src)) if src == container.as_str());
        match props.get(OWNER_PROP) {
            Some(ZcpValue::String(id)) if *id == self.cache_id && local => {
                self.owned.lock().unwrap_or_else(|p| p.into_inner()).insert(container.to_string());
                Ok(true)
            }
            other => Err(Error::AlreadyExists {
                path: PathBuf::from(format!(
                    "{container} (a dataset this cache did not make: {OWNER_PROP}={})",
                    match other {
                        Some(ZcpValue::String(s)) => s.as_str(),
                        _ => "unset",
                    }
                )),
            }),
        }
    }

    /// A dataset of ours to own containers under: created with our mark where it is ours to
    /// make (zvol), or the user's cache dataset.
    fn ensure_root(&self) -> Result<()> {
        if !self.root_is_ours || self.exists(self.root.as_str())? {
            return Ok(());
        }
        let props = Props::new()
            .mountpoint("legacy")
            .canmount(CanMount::Off)
            .user(OWNER_PROP, &self.cache_id);
        match self.zfs.create_filesystem(&self.root, &props) {
            Ok(()) => Ok(()),
            Err(e) if zfs_kind(&e) == Some(ZfsErrorKind::Exists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn ensure_container(&self, project: &str) -> Result<()> {
        self.ensure_root()?;
        if self.check_owned(project)? {
            return Ok(());
        }
        let container = self.container(project)?;
        // legacy: nothing under it is mounted by `zfs mount -a` or at boot; we mount sessions.
        let props = Props::new()
            .mountpoint("legacy")
            .canmount(CanMount::Off)
            .user(OWNER_PROP, &self.cache_id);
        match self.zfs.create_filesystem(&container, &props) {
            Ok(()) => {}
            Err(e) if zfs_kind(&e) == Some(ZfsErrorKind::Exists) => {}
            Err(e) => return Err(e),
        }
        if self.check_owned(project)? {
            Ok(())
        } else {
            Err(Error::Damaged {
                path: PathBuf::from(container.to_string()),
                what: "vanished".into(),
            })
        }
    }

    /// AlreadyExists if `dataset` exists.
    fn absent(&self, dataset: &DatasetName) -> Result<()> {
        if self.exists(dataset.as_str())? {
            return Err(Error::AlreadyExists { path: PathBuf::from(dataset.to_string()) });
        }
        Ok(())
    }

    /// Mount `dataset` at `dir`.
    fn mount(&self, dataset: &DatasetName, dir: &Path) -> Result<()> {
        if self.volumes {
            zvol::mount(dataset, dir)
        } else {
            mount::mount_filesystem(dataset, dir, MountOptions::default())
        }
    }

    /// Whether `dataset` is what is mounted at `dir` (the topmost mount there).
    fn mounted_at(&self, dataset: &DatasetName, dir: &Path) -> Result<bool> {
        let mounts = crate::detect::mounts()?;
        let Some(m) = mounts.iter().rev().find(|m| m.mount_point == dir) else { return Ok(false) };
        Ok(if self.volumes {
            zvol::is_mount_of(m, dataset)
        } else {
            m.fs_type == "zfs" && m.source == dataset.as_str()
        })
    }

    /// Unmount `dataset` from the directory `rel` if it is mounted there, then remove the
    /// directory if it is empty.
    fn unmount_and_rmdir(&self, root: &RootDir, dataset: &DatasetName, rel: &Path) -> Result<()> {
        let dir = root.join(rel);
        if self.mounted_at(dataset, &dir)? {
            mount::unmount(&dir)?;
        }
        root.rmdir(rel).map(drop)
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

    fn snapshot_generation(
        &self,
        snap: &SnapshotName,
        project: &str,
        generation: u64,
        session: Option<&str>,
    ) -> Result<()> {
        let generation = generation.to_string();
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
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
        let source = self.session_dataset(project, session)?;
        self.make_head(&source, project, generation, previous, "promote:head-promoted")
    }

    /// Make generation `generation`'s snapshot on `source` the project's head, holding every
    /// generation's snapshot (the previous head's move to it), and destroy the previous head.
    /// Each step is skipped when already done. From the first `lzc_promote` (fault point
    /// `promoted`) only forward is safe: the head holds the older generations' snapshots.
    fn make_head(
        &self,
        source: &DatasetName,
        project: &str,
        generation: u64,
        previous: u64,
        promoted: &str,
    ) -> Result<()> {
        let head = self.head(project, generation)?;
        let on_source = source.snapshot(&format!("gen{generation}"))?;
        if !self.exists(head.as_str())? {
            self.zfs.clone_snapshot(&head, &on_source, &Props::new())?;
        }
        // Until the new head is nobody's clone: at most twice (the source's snapshot, then the
        // previous head's snapshots).
        for round in 0..3 {
            match self.zfs.promote(&head) {
                Ok(()) if round == 0 => crate::fault::point(promoted),
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

    /// The import's ZFS steps after its snapshot exists: its head made, the clone it was built
    /// in destroyed (after the promotes it is a clone of the head's snapshot with nothing of
    /// its own). Each step is skipped when already done.
    fn finish_import_next(&self, g: &Generation, previous: &Generation) -> Result<()> {
        let tree = self.import_dataset(&g.project, g.number)?;
        self.make_head(&tree, &g.project, g.number, previous.number, "import:head-promoted")?;
        self.destroy_if_exists(&tree)?;
        Ok(())
    }

    /// Mount `dataset` at the new directory `staging`, copy the directory `src` into it
    /// (removing what it holds first if `empty_first`: a clone, unless `src` is an increment
    /// onto the clone's origin, which is applied to it), and take it away again.
    fn fill(
        &self,
        root: &RootDir,
        dataset: &DatasetName,
        staging: &Path,
        src: &Source<'_, '_>,
        empty_first: bool,
        watch: &Watch,
    ) -> Result<()> {
        root.mkdir(staging)?;
        let dir = root.join(staging);
        self.mount(dataset, &dir)?;
        let filled = (|| {
            // The dataset's own root, opened through its parent (RootDir does not cross
            // mounts).
            let (parent, name) = root.parent(staging)?;
            let fd = rustix::fs::openat(&parent, name, crate::sys::fs::READ_DIR, Mode::empty())
                .at("open", &dir)?;
            let opts = watch
                .copy_options(CopyOptions { threads: self.copy_threads, ..CopyOptions::default() });
            if empty_first && src.in_place() {
                // The clone is of the increment's base: the increment changes it.
                return src.fill_onto_base(fd.as_fd(), &dir, &opts);
            }
            if empty_first {
                for name in rootdir::list_fd(fd.as_fd(), &dir)? {
                    // The snapshot directory, where the user's dataset shows it.
                    if !self.volumes && name == ".zfs" {
                        continue;
                    }
                    watch.check()?;
                    copy::remove_at(fd.as_fd(), &name, &dir.join(&name))?;
                }
            }
            src.fill(fd.as_fd(), &dir, &opts)
        })();
        let unmounted = self.unmount_and_rmdir(root, dataset, staging);
        filled?;
        unmounted
    }

    /// Make the import's head: a filesystem, or a volume formatted with XFS.
    fn create_head(&self, head: &DatasetName, src: &Source<'_, '_>) -> Result<()> {
        if self.volumes {
            zvol::create(&self.zfs, head, src, self.volume_size, self.volume_block_size)
        } else {
            self.zfs.create_filesystem(head, &Props::new())
        }
    }
}

impl Backend for ZfsBackend {
    fn kind(&self) -> BackendKind {
        if self.volumes {
            BackendKind::Zvol
        } else {
            BackendKind::Zfs
        }
    }

    fn sessions_are_mounts(&self) -> bool {
        true
    }

    fn session_free(&self, _root: &RootDir, s: &Session) -> Result<()> {
        self.absent(&self.session_dataset(&s.project, &s.name)?)
    }

    fn generation_free(&self, g: &Generation, source: Option<&Session>) -> Result<()> {
        if self.check_owned(&g.project)? {
            self.absent(&self.head(&g.project, g.number)?)?;
            if source.is_none() {
                // Where an import of the next generation builds: undoing it destroys that.
                self.absent(&self.import_dataset(&g.project, g.number)?)?;
            }
        }
        if let Some(s) = source {
            // The promote's snapshot of the session: undoing it destroys it.
            let snap =
                self.session_dataset(&s.project, &s.name)?.snapshot(&format!("gen{}", g.number))?;
            if self.exists(snap.as_str())? {
                return Err(Error::AlreadyExists { path: PathBuf::from(snap.to_string()) });
            }
        }
        Ok(())
    }

    fn can_promote(&self, s: &Session, made_from: u64, current: u64) -> Result<()> {
        if made_from == current {
            return Ok(());
        }
        // Its origin is an older snapshot on the current head: promoting a clone of it would
        // leave the generations after it on the old head, with the current sessions' clones.
        Err(Error::Unsupported {
            what: format!(
                "session {} of {} was made from generation {made_from}; on ZFS only a session of \
                 the current generation {current} can be promoted",
                s.name, s.project
            ),
        })
    }

    fn import(
        &self,
        root: &RootDir,
        src: &Source<'_, '_>,
        g: &Generation,
        staging: &Path,
        watch: &Watch,
    ) -> Result<Identity> {
        src.check()?;
        self.ensure_container(&g.project)?;
        let head = self.head(&g.project, g.number)?;
        let result = (|| {
            self.create_head(&head, src)?;
            self.fill(root, &head, staging, src, false, watch)?;
            let snap = self.generation_snapshot(&g.project, g.number, g.number)?;
            self.snapshot_generation(&snap, &g.project, g.number, None)?;
            self.identify(snap.as_str())
        })();
        if result.is_err() {
            let _ = self.discard_generation(root, g, staging, None);
        }
        result
    }

    /// The next generation from `src`: a clone of the current generation's snapshot, emptied
    /// and filled with `src`, snapshotted, and made the head as a promote makes a session's
    /// snapshot one, so that every generation stays on the one head (sessions of the older ones
    /// are clones of their snapshots there). Failures are undone or finished by
    /// `recover_import_next`, which the lifecycle runs.
    fn import_next(
        &self,
        root: &RootDir,
        src: &Source<'_, '_>,
        g: &Generation,
        previous: &Generation,
        staging: &Path,
        watch: &Watch,
    ) -> Result<Identity> {
        src.check()?;
        self.check_owned(&g.project)?;
        let tree = self.import_dataset(&g.project, g.number)?;
        self.absent(&tree)?;
        let origin = self.generation_snapshot(&g.project, previous.number, previous.number)?;
        self.zfs.clone_snapshot(&tree, &origin, &Props::new())?;
        self.fill(root, &tree, staging, src, true, watch)?;
        // The last point a stop is asked for: from the head's first lzc_promote only forward.
        watch.check()?;
        let snap = tree.snapshot(&format!("gen{}", g.number))?;
        self.snapshot_generation(&snap, &g.project, g.number, None)?;
        crate::fault::point("import:snapshot-taken");
        self.finish_import_next(g, previous)?;
        self.identify(self.generation_snapshot(&g.project, g.number, g.number)?.as_str())
    }

    fn recover_import_next(
        &self,
        root: &RootDir,
        g: &Generation,
        previous: &Generation,
        staging: &Path,
    ) -> Result<Option<Identity>> {
        if !self.check_owned(&g.project)? {
            return Ok(None);
        }
        let tree = self.import_dataset(&g.project, g.number)?;
        self.unmount_and_rmdir(root, &tree, staging)?;
        let snap = tree.snapshot(&format!("gen{}", g.number))?;
        let head = self.head(&g.project, g.number)?;
        if self.exists(snap.as_str())? {
            // No lzc_promote has run (it would have moved this snapshot to the head): undo.
            // A head cloned from it has no snapshots of its own yet: destroyed alone, never as
            // a tree, so that if it had some the destroy fails rather than take them along.
            if self.exists(head.as_str())? {
                self.zfs.destroy(&head)?;
            }
            self.destroy_if_exists(&tree)?;
            return Ok(None);
        }
        if self.exists(head.as_str())? {
            // The head holds the new generation and maybe the older ones' snapshots already:
            // only forward is safe.
            self.finish_import_next(g, previous)?;
            let snap = self.generation_snapshot(&g.project, g.number, g.number)?;
            return Ok(Some(self.identify(snap.as_str())?));
        }
        // Never snapshotted: the clone is nothing but a half-filled copy.
        self.destroy_if_exists(&tree)?;
        Ok(None)
    }

    fn create_session(
        &self,
        root: &RootDir,
        g: &Generation,
        _recorded: &Identity,
        s: &Session,
        staging: &Path,
        watch: &Watch,
    ) -> Result<Identity> {
        watch.check()?;
        self.check_owned(&s.project)?;
        let origin = self.generation_snapshot(&g.project, g.head, g.number)?;
        let dataset = self.session_dataset(&s.project, &s.name)?;
        if !root.mkdir(&s.place)? {
            return Err(Error::AlreadyExists { path: root.join(&s.place) });
        }
        let made = (|| {
            // No properties on the clone: they would cost a second transaction group; the legacy
            // mountpoint and our mark are inherited from the project container.
            self.zfs.clone_snapshot(&dataset, &origin, &Props::new())?;
            self.mount(&dataset, &root.join(&s.place))?;
            self.identify(dataset.as_str())
        })();
        if made.is_err() {
            let _ = self.discard_session(root, s, staging, true);
        }
        made
    }

    fn promote(
        &self,
        root: &RootDir,
        s: &Session,
        _recorded: &Identity,
        g: &Generation,
        previous: &Generation,
        _staging: &Path,
        watch: &Watch,
    ) -> Result<Identity> {
        // Checked once, before the snapshot: from the first lzc_promote on only forward is safe.
        watch.check()?;
        self.check_owned(&s.project)?;
        let snap =
            self.session_dataset(&s.project, &s.name)?.snapshot(&format!("gen{}", g.number))?;
        let take = || self.snapshot_generation(&snap, &s.project, g.number, Some(&s.name));
        if self.volumes {
            zvol::frozen(&root.join(&s.place), take)?;
        } else {
            take()?;
        }
        crate::fault::point("promote:snapshot-taken");
        self.finish_promote(&s.project, &s.name, g.number, previous.number)?;
        self.identify(self.generation_snapshot(&g.project, g.number, g.number)?.as_str())
    }

    fn promotes_session_itself(&self) -> bool {
        true
    }

    fn recover_promote(
        &self,
        root: &RootDir,
        s: &Session,
        g: &Generation,
        previous: &Generation,
        _staging: &Path,
        forward: bool,
    ) -> Result<Option<Identity>> {
        self.check_owned(&s.project)?;
        if self.volumes {
            zvol::thaw_if_frozen(&root.join(&s.place));
        }
        let on_session =
            self.session_dataset(&s.project, &s.name)?.snapshot(&format!("gen{}", g.number))?;
        let head = self.head(&s.project, g.number)?;
        if self.exists(on_session.as_str())? && !forward {
            // No lzc_promote has run (it would have moved this snapshot to the head): nothing
            // irreversible happened, so undo. The head, if cloned, depends on the snapshot.
            self.destroy_if_exists(&head)?;
            self.zfs.destroy_snapshots(&[on_session], false)?;
            return Ok(None);
        }
        if !self.exists(head.as_str())? && !self.exists(on_session.as_str())? {
            return Ok(None); // nothing was done
        }
        // The head holds the promoted snapshot and maybe the older generations' ones already
        // (from here only forward is safe), or the session's snapshot holds edits of the session
        // that undoing cannot give back (`forward`): finish it.
        self.finish_promote(&s.project, &s.name, g.number, previous.number)?;
        Ok(Some(self.identify(self.generation_snapshot(&g.project, g.number, g.number)?.as_str())?))
    }

    fn publish(&self, _root: &RootDir, _staging: &Path, _place: &Path) -> Result<()> {
        Ok(()) // built in place
    }

    fn built_at<'p>(&self, _staging: &'p Path, place: &'p Path) -> &'p Path {
        place
    }

    fn presence(&self, root: &RootDir, place: &Path, id: &Identity) -> Result<Presence> {
        let Some(DatasetIdentity::Dataset { name, .. }) = id.get() else {
            return Ok(id.foreign());
        };
        if name.contains('@') {
            // A generation: its snapshot moves between heads, so the lifecycle asks by
            // generation (generation_presence), never by place.
            return Ok(match self.is_recorded(&name, id)? {
                Ok(()) => Presence::Here,
                Err(_) => Presence::Absent,
            });
        }
        let dataset = DatasetName::new(&name)?;
        match self.is_recorded(&name, id)? {
            Ok(()) if self.mounted_at(&dataset, &root.join(place))? => Ok(Presence::Here),
            Ok(()) => Ok(Presence::Elsewhere(format!("{name} is not mounted at its place"))),
            Err(_) if !self.exists(&name)? => Ok(Presence::Absent),
            Err(what) => Ok(Presence::Other(what)),
        }
    }

    fn remount_session(&self, root: &RootDir, s: &Session, id: &Identity) -> Result<bool> {
        let Some(DatasetIdentity::Dataset { name, .. }) = id.get() else { return Ok(false) };
        if !matches!(self.session_presence(root, s, id)?, Presence::Elsewhere(_)) {
            return Ok(false);
        }
        let dir = root.join(&s.place);
        // Not mounted there, but something else may be: never mounted over.
        if crate::detect::mounts()?.iter().any(|m| m.mount_point == dir) {
            return Err(Error::Damaged {
                path: dir,
                what: format!("another filesystem is mounted there, not {name}"),
            });
        }
        super::empty_place_for_remount(root, &s.place)?;
        // A second mount of one dataset (or of one volume's XFS) shares its superblock with
        // the first: one writer, whatever else still shows it.
        self.mount(&DatasetName::new(&name)?, &dir)?;
        Ok(true)
    }

    /// A generation is read through a session of it: a clone, mounted like every session.
    /// Not a detached mount of its snapshot: an `lzc_promote` that moves a mounted snapshot
    /// to the new head waits for it (seen hanging in the guest), so a promote would wait for
    /// the whole send.
    fn sends_through_session(&self) -> bool {
        true
    }

    fn applies_increments_in_place(&self) -> bool {
        true
    }

    fn generation_presence(
        &self,
        _root: &RootDir,
        g: &Generation,
        id: &Identity,
    ) -> Result<Presence> {
        if id.get::<DatasetIdentity>().is_none() {
            return Ok(id.foreign());
        }
        let snap = self.generation_snapshot(&g.project, g.head, g.number)?;
        Ok(match self.is_recorded(snap.as_str(), id)? {
            Ok(()) => Presence::Here,
            Err(_) if !self.exists(snap.as_str())? => Presence::Absent,
            Err(what) => Presence::Other(what),
        })
    }

    fn discard_session(
        &self,
        root: &RootDir,
        s: &Session,
        _staging: &Path,
        ours: bool,
    ) -> Result<()> {
        if !ours {
            return Ok(()); // built in place: the place is another setup's
        }
        let dataset = self.session_dataset(&s.project, &s.name)?;
        self.unmount_and_rmdir(root, &dataset, &s.place)?;
        // Only inside our own container: a same-named dataset elsewhere is not ours.
        if self.check_owned(&s.project)? {
            self.destroy_if_exists(&dataset)?;
        }
        Ok(())
    }

    fn discard_generation(
        &self,
        root: &RootDir,
        g: &Generation,
        staging: &Path,
        recorded: Option<&Identity>,
    ) -> Result<()> {
        let head = self.head(&g.project, g.number)?;
        self.unmount_and_rmdir(root, &head, staging)?;
        if !self.check_owned(&g.project)? {
            return Ok(());
        }
        if g.head != g.number {
            // A retired generation lives only as a snapshot on the current head.
            let snap = self.generation_snapshot(&g.project, g.head, g.number)?;
            if recorded.is_some_and(|id| matches!(self.is_recorded(snap.as_str(), id), Ok(Ok(()))))
            {
                self.zfs.destroy_snapshots(&[snap], true)?;
            }
        }
        self.destroy_if_exists(&head)?;
        Ok(())
    }

    fn retire_session(
        &self,
        root: &RootDir,
        s: &Session,
        id: &Identity,
        _t: &Path,
    ) -> Result<Retired> {
        let dataset = self.session_dataset(&s.project, &s.name)?;
        if let Some(e) = root.entry(&s.place)? {
            if !e.is_dir() {
                return Err(Error::Damaged {
                    path: root.join(&s.place),
                    what: "is not the session's mount point (not a directory)".into(),
                });
            }
        }
        match self.presence(root, &s.place, id)? {
            Presence::Here | Presence::Elsewhere(_) => {}
            Presence::Absent => {
                root.rmdir(&s.place)?;
                return Ok(Retired::Absent);
            }
            Presence::Other(what) => {
                return Err(Error::Damaged { path: root.join(&s.place), what })
            }
        }
        // Unmounted, the session is gone for its users: the commit of the cleanup.
        self.unmount_and_rmdir(root, &dataset, &s.place)?;
        match self.destroy_if_exists(&dataset) {
            Ok(_) => Ok(Retired::Removed),
            Err(_) => Ok(Retired::Owed(id.clone())),
        }
    }

    fn retire_generation(
        &self,
        root: &RootDir,
        g: &Generation,
        id: &Identity,
        _t: &Path,
    ) -> Result<Retired> {
        match self.generation_presence(root, g, id)? {
            Presence::Here => {}
            Presence::Absent | Presence::Elsewhere(_) => return Ok(Retired::Absent),
            Presence::Other(what) => {
                return Err(Error::Damaged {
                    path: PathBuf::from(format!("generation {}", g.number)),
                    what,
                })
            }
        }
        // Deferred: gone now if no session clones it, else with its last clone.
        let snap = self.generation_snapshot(&g.project, g.head, g.number)?;
        self.zfs.destroy_snapshots(&[snap], true)?;
        Ok(Retired::Removed)
    }

    fn remove_trash(&self, root: &RootDir, trash: &Path) -> Result<()> {
        remove_beneath(root, trash)
    }

    fn detach_session(
        &self,
        root: &RootDir,
        s: &Session,
        id: &Identity,
        _t: &Path,
    ) -> Result<Retired> {
        match self.presence(root, &s.place, id)? {
            Presence::Here => mount::detach_lazily(&root.join(&s.place))?,
            Presence::Elsewhere(_) => {}
            Presence::Absent => {
                root.rmdir(&s.place)?;
                return Ok(Retired::Absent);
            }
            Presence::Other(what) => {
                return Err(Error::Damaged { path: root.join(&s.place), what })
            }
        }
        root.rmdir(&s.place)?;
        // Mounted still, for its users: destroyed by gc once they are gone.
        Ok(Retired::Owed(id.clone()))
    }

    fn remove_owed(&self, _root: &RootDir, id: &Identity) -> Result<()> {
        let Some(DatasetIdentity::Dataset { name, .. }) = id.get() else {
            return Err(Error::Damaged {
                path: PathBuf::from(id.to_string()),
                what: "not a dataset".into(),
            });
        };
        match self.is_recorded(&name, id)? {
            // One attempt, no waiting out EBUSY: gc comes again, and a session detached lazily
            // stays busy for as long as its users keep it.
            Ok(()) => self.zfs.destroy_tree(&DatasetName::new(&name)?),
            Err(_) if !self.exists(&name)? => Ok(()),
            Err(what) => Err(Error::Damaged { path: PathBuf::from(&name), what }),
        }
    }

    fn remove_project(&self, _root: &RootDir, project: &str) -> Result<()> {
        // Ours only (our mark, set on the container itself). With its sessions gone, what is
        // left under it is the heads of its generations (the lifecycle checked that nothing
        // else is): each goes with its snapshots, then the container itself, alone.
        if !self.check_owned(project)? {
            return Ok(());
        }
        let container = self.container(project)?;
        for child in self.zfs.children(&container)? {
            let leaf = child.as_str().rsplit('/').next().unwrap_or_default();
            if !leaf.strip_prefix('g').is_some_and(|n| n.parse::<u64>().is_ok()) {
                return Err(Error::Damaged {
                    path: PathBuf::from(child.to_string()),
                    what: "is not a generation's head: left alone".into(),
                });
            }
            self.destroy_if_exists(&child)?;
        }
        self.zfs.destroy(&container)?;
        self.owned.lock().unwrap_or_else(|p| p.into_inner()).remove(container.as_str());
        Ok(())
    }

    fn counted_size(&self, _root: &RootDir, g: &Generation) -> Option<u64> {
        let Ok(snap) = self.generation_snapshot(&g.project, g.head, g.number) else {
            return Some(0);
        };
        match self.props(snap.as_str(), &["referenced"]) {
            Ok(Some(t)) => match t.get("referenced") {
                Some(ZcpValue::Int(i)) => Some(*i as u64),
                _ => Some(0),
            },
            _ => Some(0),
        }
    }

    fn unrecorded(
        &self,
        _root: &RootDir,
        project: &str,
        sessions: &[String],
        generations: &[u64],
        owed: &[Identity],
    ) -> Result<Vec<String>> {
        let container = self.container(project)?;
        let owed: Vec<String> = owed
            .iter()
            .filter_map(|id| match id.get() {
                Some(DatasetIdentity::Dataset { name, .. }) => Some(name),
                _ => None,
            })
            .collect();
        if !self.check_owned(project)? {
            return Ok(Vec::new());
        }
        let children = match self.zfs.children(&container) {
            Ok(c) => c,
            Err(e) if zfs_kind(&e) == Some(ZfsErrorKind::NotFound) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for c in &children {
            let leaf = c.as_str().rsplit('/').next().unwrap_or_default();
            let known = match (leaf.strip_prefix("s-"), leaf.strip_prefix('g')) {
                (Some(s), _) => sessions.iter().any(|r| r == s),
                (None, Some(n)) => n.parse::<u64>().is_ok_and(|n| generations.contains(&n)),
                _ => false,
            };
            if !known && !owed.iter().any(|o| o == c.as_str()) {
                out.push(format!("dataset {c}"));
            }
        }
        Ok(out)
    }
}
