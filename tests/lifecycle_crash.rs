//! Crash recovery. The `goldclone` binary is killed with SIGKILL in the middle of every
//! lifecycle operation — at every named step (built with the `fault-injection` feature), and at
//! sampled system calls (`strace -e inject=SYSCALL:signal=SIGKILL:when=N`) — and reopening the
//! cache must leave exactly the state before or after the operation: nothing lost, nothing
//! half made, no staging, temporary or intent file. A soak runs several processes doing random
//! operations on one root while others are killed, then checks the invariants.
//!
//! Run with `cargo test --features fault-injection --test lifecycle_crash` (tests/run-all.sh
//! does, and fails if these tests did not run).
#![cfg(feature = "fault-injection")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use goldclone::fault;
use goldclone::golden::{BackendKind, Cache, OpenOptions, SetupOptions};
use goldclone::ErrorKind;

const FILES: usize = 30;

fn in_zfs_guest() -> bool {
    std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_some()
}

/// The backends to crash: ZFS and zvol in the ZFS guest, else copy (ext4 and XFS), btrfs and
/// images (on XFS, btrfs and ext4).
fn backends() -> Vec<(&'static str, Option<PathBuf>, BackendKind)> {
    if in_zfs_guest() {
        return vec![("zfs", None, BackendKind::Zfs), ("zvol", None, BackendKind::Zvol)];
    }
    [
        ("copy-ext4", common::Fs::Ext4, BackendKind::Copy),
        ("copy-xfs", common::Fs::Xfs, BackendKind::Copy),
        ("btrfs", common::Fs::Btrfs, BackendKind::Btrfs),
        ("image-xfs", common::Fs::Xfs, BackendKind::Image),
        ("image-btrfs", common::Fs::Btrfs, BackendKind::Image),
        // No reflink: images are copied (sparsely) where XFS and btrfs clone them.
        ("image-ext4", common::Fs::Ext4, BackendKind::Image),
    ]
    .into_iter()
    .filter_map(|(n, fs, b)| common::mount(fs).map(|m| (n, Some(m), b)))
    .collect()
}

/// A fresh cache root for one case: a directory on the loop filesystem, or on ZFS a dataset of
/// its own (a cache root must be its dataset's mount point). Removed on drop.
struct CaseRoot {
    path: PathBuf,
    backend: BackendKind,
    _zfs: Option<common::ZfsRoot>,
}

impl CaseRoot {
    fn new(mnt: &Option<PathBuf>, backend: BackendKind, tag: &str) -> CaseRoot {
        match mnt {
            Some(mnt) => {
                let path = mnt.join(format!("{tag}-{}", std::process::id()));
                teardown_shown(&path);
                teardown_dir(&path, backend);
                fs::create_dir_all(&path).unwrap();
                fs::create_dir_all(shown_dir(&path)).unwrap();
                CaseRoot { path, backend, _zfs: None }
            }
            None => {
                let zfs = common::ZfsRoot::new(tag).unwrap();
                teardown_shown(&zfs.path);
                fs::create_dir_all(shown_dir(&zfs.path)).unwrap();
                CaseRoot { path: zfs.path.clone(), backend, _zfs: Some(zfs) }
            }
        }
    }
}

impl Drop for CaseRoot {
    fn drop(&mut self) {
        teardown_shown(&self.path);
        if self._zfs.is_none() {
            teardown_dir(&self.path, self.backend);
        }
    }
}

/// Remove a test root on a loop filesystem; btrfs generations are read-only subvolumes.
fn teardown_dir(path: &Path, backend: BackendKind) {
    if !path.exists() {
        return;
    }
    // Sessions a killed process left mounted (images), deepest first.
    let mut mounted: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .filter(|m| m.starts_with(path) && m != path)
        .collect();
    mounted.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounted {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    if backend == BackendKind::Btrfs {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "btrfs subvolume list -o {0} >/dev/null 2>&1; for d in {0}/*/gen/* {0}/*/sessions/* {0}/*/gen/.goldclone-* {0}/*/sessions/.goldclone-*; do [ -d \"$d\" ] && btrfs subvolume delete \"$d\" >/dev/null 2>&1; done; true",
                path.display()
            ))
            .status();
    }
    let _ = goldclone::copy::remove_tree(path);
}

fn tree(dir: &Path, marker: &str) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("generation"), marker).unwrap();
    for i in 0..FILES {
        fs::write(dir.join("sub").join(format!("f{i:03}")), marker).unwrap();
    }
}

/// Rewrite every file of a session with `marker`.
fn mark(dir: &Path, marker: &str) {
    fs::write(dir.join("generation"), marker).unwrap();
    for i in 0..FILES {
        fs::write(dir.join("sub").join(format!("f{i:03}")), marker).unwrap();
    }
}

/// The marker of a whole tree; panics if it mixes markers or misses a file.
fn marker_of(dir: &Path) -> String {
    let m = fs::read_to_string(dir.join("generation"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for i in 0..FILES {
        assert_eq!(
            fs::read_to_string(dir.join("sub").join(format!("f{i:03}"))).unwrap(),
            m,
            "{} is not whole",
            dir.display()
        );
    }
    m
}

/// The current generation's marker, read through a short-lived session (on ZFS a generation is
/// a snapshot, not a directory).
fn current_marker(cache: &Cache) -> String {
    let probe = cache.setup("proj", "probe").unwrap();
    let marker = marker_of(&probe);
    cleanup_read(cache, "probe");
    marker
}

/// A try that met something busy.
struct Busy;

/// `f` until it does not meet Busy, a second at most. A process that another thread of this
/// one spawns holds copies of this process's descriptors from its fork until its exec closes
/// them (already under its new name): a tree this process just read or wrote is busy, for a
/// moment, rightly.
fn retry_busy<T>(mut f: impl FnMut() -> Result<T, Busy>) -> T {
    for _ in 0..50 {
        match f() {
            Ok(v) => return v,
            Err(Busy) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    panic!("still busy after a second")
}

/// A lifecycle call that may meet the moment's holder of [`retry_busy`]: retried while
/// SessionBusy.
fn busy_retried<T>(mut f: impl FnMut() -> goldclone::Result<T>) -> T {
    retry_busy(|| match f() {
        Err(goldclone::Error::SessionBusy { .. }) => Err(Busy),
        other => Ok(other.unwrap()),
    })
}

/// Remove session `session`, which this process may just have read ([`retry_busy`]).
fn cleanup_read(cache: &Cache, session: &str) {
    busy_retried(|| cache.cleanup("proj", session))
}

fn open(root: &Path, backend: BackendKind) -> Cache {
    Cache::open(root, &OpenOptions { backend: Some(backend), ..Default::default() }).unwrap()
}

fn backend_arg(backend: BackendKind) -> &'static str {
    match backend {
        BackendKind::Copy => "copy",
        BackendKind::Btrfs => "btrfs",
        BackendKind::Zfs => "zfs",
        BackendKind::Zvol => "zvol",
        BackendKind::Image => "image",
    }
}

/// The CLI with root and backend, and the given subcommand.
fn cli(root: &Path, backend: BackendKind, args: &[impl AsRef<std::ffi::OsStr>]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_goldclone"));
    c.args(args).arg("--root").arg(root).args(["--backend", backend_arg(backend)]);
    c
}

/// The operations a case crashes: `Consume` is a promote that drops a path and consumes its
/// session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Import,
    /// An import of the next generation (`--next`) of a project with sessions.
    ImportNext,
    Setup,
    /// A setup at a caller's path (`--at`).
    SetupAt,
    Promote,
    Consume,
    Cleanup,
    /// The cleanup of a session set up at a caller's path.
    CleanupAt,
    /// A lazy cleanup (`--lazy`) of a session a process works in.
    CleanupLazy,
    /// A setup with reuse (`--reuse`) of a session that a reboot unmounted: it is mounted at
    /// its place again (the backends whose sessions are mounts).
    Remount,
    Delete,
    /// A receive of a full stream (`golden receive`) into a cache without the project.
    Receive,
    /// A receive of an increment onto the project's current generation, its base, with
    /// sessions (the project's first generation was received from the same sender).
    ReceiveNext,
}

impl Op {
    const ALL: [Op; 13] = [
        Op::Import,
        Op::ImportNext,
        Op::Setup,
        Op::SetupAt,
        Op::Promote,
        Op::Consume,
        Op::Cleanup,
        Op::CleanupAt,
        Op::CleanupLazy,
        Op::Remount,
        Op::Delete,
        Op::Receive,
        Op::ReceiveNext,
    ];

    /// Whether the operation makes the project's first generation / its next one.
    fn is_import(self) -> bool {
        matches!(self, Op::Import | Op::Receive)
    }

    fn is_import_next(self) -> bool {
        matches!(self, Op::ImportNext | Op::ReceiveNext)
    }

    /// The file the operation reads on stdin: a receive's stream.
    fn stdin(self, src: &Path) -> Stdio {
        match self {
            Op::Receive => Stdio::from(fs::File::open(full_stream(src)).unwrap()),
            Op::ReceiveNext => Stdio::from(fs::File::open(next_stream(src)).unwrap()),
            _ => Stdio::null(),
        }
    }

    /// The operations that reach fault point `point`.
    fn of(point: &str) -> &'static [Op] {
        match point {
            "promote:session-taken" | "promote:edited" => return &[Op::Consume],
            "import:snapshot-taken" | "import:head-promoted" => {
                return &[Op::ImportNext, Op::ReceiveNext]
            }
            "setup:attached" => return &[Op::SetupAt],
            "setup:remounted" => return &[Op::Remount],
            "cleanup:detached" => return &[Op::CleanupAt],
            _ => {}
        }
        match point.split(':').next().unwrap() {
            "import" => &[Op::Import, Op::ImportNext, Op::Receive, Op::ReceiveNext],
            "setup" => &[Op::Setup, Op::SetupAt],
            "promote" => &[Op::Promote, Op::Consume],
            "cleanup" => &[Op::Cleanup, Op::CleanupAt, Op::CleanupLazy],
            "delete" => &[Op::Delete],
            other => panic!("fault point of unknown operation {other}"),
        }
    }

    fn args(self, src: &str, shown: &str) -> Vec<String> {
        let fresh_at = format!("{shown}/fresh");
        let next = next_source(Path::new(src));
        let v = match self {
            Op::Import => vec!["golden", "import", "proj", src],
            Op::ImportNext => vec!["golden", "import", "--next", "proj", next.to_str().unwrap()],
            Op::Setup => vec!["session", "setup", "proj", "fresh"],
            Op::SetupAt => vec!["session", "setup", "--at", &fresh_at, "proj", "fresh"],
            Op::Promote => vec!["session", "promote", "proj", "target"],
            Op::Consume => {
                vec!["session", "promote", "--consume", "--drop", "dropme", "proj", "target"]
            }
            Op::Cleanup | Op::CleanupAt => vec!["session", "cleanup", "proj", "target"],
            Op::CleanupLazy => vec!["session", "cleanup", "--lazy", "proj", "target"],
            Op::Remount => vec!["session", "setup", "--reuse", "proj", "target"],
            Op::Delete => vec!["golden", "delete", "proj"],
            Op::Receive | Op::ReceiveNext => vec!["golden", "receive", "proj"],
        };
        v.into_iter().map(String::from).collect()
    }
}

/// Where a case's sessions at callers' paths go: beside its root, outside it.
fn shown_dir(root: &Path) -> PathBuf {
    PathBuf::from(format!("{}-shown", root.display()))
}

/// Take away what a failed case left at callers' paths.
fn teardown_shown(root: &Path) {
    let dir = shown_dir(root);
    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let _ = rustix::mount::unmount(e.path(), rustix::mount::UnmountFlags::DETACH);
    }
    let _ = fs::remove_dir_all(&dir);
}

/// A process that works in a session (its working directory is there) until dropped.
struct Holder(std::process::Child);

impl Holder {
    fn new(dir: &Path) -> Holder {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new("sleep");
        c.arg("3600").current_dir(dir);
        // Nothing of the test's: a holder left by a test binary that died must not keep its
        // output pipe (or the loop filesystem) open for an hour.
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches only the child's own state.
        unsafe {
            c.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Holder(c.spawn().unwrap())
    }

    /// The session's tree as its user sees it.
    fn cwd(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/cwd", self.0.id()))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The state before the operation: for all but import, a project with a bystander session and
/// the target session, rewritten to marker 2; for a lazy cleanup, the process that works in it.
fn prepare(root: &Path, backend: BackendKind, op: Op, src: &Path) -> Option<Holder> {
    if op.is_import() {
        return None;
    }
    let cache = open(root, backend);
    if op == Op::ReceiveNext {
        // The base of the increment: the sender's generation 1, received.
        let mut stream = fs::File::open(full_stream(src)).unwrap();
        assert_eq!(cache.receive("proj", &mut stream).unwrap(), 1);
    } else {
        cache.import("proj", src).unwrap();
    }
    cache.setup("proj", "bystander").unwrap();
    let target = if op == Op::CleanupAt {
        let opts = SetupOptions { at: Some(shown_dir(root).join("target")), reuse: false };
        cache.setup_with_options("proj", "target", &opts, &Default::default()).unwrap().0
    } else {
        cache.setup("proj", "target").unwrap()
    };
    mark(&target, "2");
    if op == Op::Consume {
        fs::create_dir_all(target.join("dropme/sub")).unwrap();
        fs::write(target.join("dropme/sub/file"), "dropped").unwrap();
    }
    if op == Op::Remount {
        // What a reboot leaves: the session recorded and whole, its place not mounted (and an
        // image's loop device gone with its mount).
        retry_busy(|| match nix::mount::umount2(&target, nix::mount::MntFlags::empty()) {
            Err(nix::errno::Errno::EBUSY) => Err(Busy),
            Err(e) => panic!("umount {}: {e}", target.display()),
            Ok(()) => Ok(()),
        });
        let _ = common::lasting_loop_devices_under(root, true);
    }
    (op == Op::CleanupLazy).then(|| Holder::new(&target))
}

/// Check that the cache at `root` is exactly in the state before or after `op` (`expect`
/// says which, if known), then that gc finds nothing more; returns whether it was after. A
/// lazy cleanup's `holder` works in the session throughout recovery and a gc: its tree must
/// stay whole for it; once it is gone, gc removes the tree.
fn verify(
    root: &Path,
    backend: BackendKind,
    op: Op,
    src: &Path,
    expect: Option<bool>,
    what: &str,
    holder: Option<Holder>,
) -> bool {
    let cache = open(root, backend);
    assert!(
        cache.recovery_report().failed.is_empty(),
        "{what}: open: {:?}",
        cache.recovery_report()
    );
    if let Some(holder) = holder {
        // Recovery finished or undid the cleanup: no intent left, whatever waits for the holder.
        assert_no_intents(root, what);
        assert_eq!(marker_of(&holder.cwd()), "2", "{what}: the session's user lost its tree");
        let gc = cache.gc().unwrap();
        assert!(gc.failed.is_empty(), "{what}: gc while held: {gc:?}");
        assert_eq!(marker_of(&holder.cwd()), "2", "{what}: gc took the tree from its user");
    } else {
        assert!(
            cache.recovery_report().kept.is_empty(),
            "{what}: open: {:?}",
            cache.recovery_report()
        );
        // Recovery at open leaves nothing: no intent, temporary file, staging or trash.
        assert_nothing_leaked(root, what);
    }
    let after = match op {
        Op::Import | Op::Receive => match cache.info("proj") {
            Ok(info) => {
                assert_eq!(info.generation, 1, "{what}");
                assert_eq!(current_marker(&cache), "1", "{what}");
                true
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::NotFound, "{what}: {e}");
                assert!(!root.join("proj").exists(), "{what}: project directory left");
                assert!(
                    !root.join(".goldclone/projects/proj").exists(),
                    "{what}: project state left"
                );
                false
            }
        },
        Op::Setup => {
            let info = cache.info("proj").unwrap();
            let has = info.sessions.iter().any(|(s, _)| s == "fresh");
            assert_eq!(
                has,
                root.join("proj/sessions/fresh").exists(),
                "{what}: record and tree disagree"
            );
            if has {
                assert_eq!(marker_of(&root.join("proj/sessions/fresh")), "1", "{what}");
            }
            has
        }
        Op::SetupAt => {
            let info = cache.info("proj").unwrap();
            let has = info.sessions.iter().any(|(s, _)| s == "fresh");
            let shown = shown_dir(root).join("fresh");
            assert_eq!(
                has,
                root.join("proj/sessions/fresh").exists(),
                "{what}: record and tree disagree"
            );
            if has {
                assert!(
                    common::is_mount_point(&shown),
                    "{what}: the session is not shown at its path"
                );
                assert_eq!(marker_of(&shown), "1", "{what}");
            } else {
                assert!(!shown.exists(), "{what}: a rolled-back setup left its path");
            }
            has
        }
        Op::CleanupAt => {
            let info = cache.info("proj").unwrap();
            let listed = info.sessions.iter().any(|(s, _)| s == "target");
            let present = root.join("proj/sessions/target").exists();
            let shown = shown_dir(root).join("target");
            assert_eq!(listed, present, "{what}: record and tree disagree");
            if listed {
                assert_eq!(marker_of(&root.join("proj/sessions/target")), "2", "{what}");
                // A kill after the bind went leaves the session unshown: the path gone, or an
                // empty directory.
                if common::is_mount_point(&shown) {
                    assert_eq!(marker_of(&shown), "2", "{what}");
                } else if shown.exists() {
                    assert_eq!(fs::read_dir(&shown).unwrap().count(), 0, "{what}");
                }
            } else {
                assert!(!shown.exists(), "{what}: the session's path is left");
            }
            !listed
        }
        Op::Promote => {
            let info = cache.info("proj").unwrap();
            let after = info.generation == 2;
            if after {
                assert_eq!(info.source_session.as_deref(), Some("target"), "{what}");
                assert_eq!(current_marker(&cache), "2", "{what}");
            } else {
                assert_eq!(info.generation, 1, "{what}");
                assert_eq!(
                    cache.generations("proj").unwrap(),
                    vec![1],
                    "{what}: half-made generation"
                );
                assert_eq!(current_marker(&cache), "1", "{what}");
            }
            assert_eq!(marker_of(&root.join("proj/sessions/target")), "2", "{what}: session lost");
            after
        }
        Op::Consume => {
            let info = cache.info("proj").unwrap();
            let after = info.generation == 2;
            let target = root.join("proj/sessions/target");
            let listed = info.sessions.iter().any(|(s, _)| s == "target");
            if after {
                assert_eq!(info.source_session.as_deref(), Some("target"), "{what}");
                assert_eq!(current_marker(&cache), "2", "{what}");
                let probe = cache.setup("proj", "probe").unwrap();
                assert!(!probe.join("dropme").exists(), "{what}: the drop was not applied");
                cleanup_read(&cache, "probe");
                assert!(!listed && !target.exists(), "{what}: the consumed session is left");
            } else {
                assert_eq!(info.generation, 1, "{what}");
                assert_eq!(cache.generations("proj").unwrap(), vec![1], "{what}");
                assert_eq!(current_marker(&cache), "1", "{what}");
                assert!(listed, "{what}: the session's record is gone");
                assert_eq!(marker_of(&target), "2", "{what}: session lost");
                // On ZFS the session itself is edited: a kill between removing the dropped
                // paths and the snapshot rolls back without them (documented). Elsewhere they
                // come back.
                let zfs =
                    matches!(backend, BackendKind::Zfs | BackendKind::Zvol | BackendKind::Image);
                match fs::read_to_string(target.join("dropme/sub/file")) {
                    Ok(text) => assert_eq!(text, "dropped", "{what}"),
                    Err(_) if zfs => {}
                    Err(e) => panic!("{what}: the dropped path was not given back: {e}"),
                }
                let names: Vec<_> = fs::read_dir(&target)
                    .unwrap()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                assert!(names.iter().all(|n| !n.starts_with(".goldclone")), "{what}: {names:?}");
            }
            after
        }
        Op::Delete => match cache.info("proj") {
            Ok(info) => {
                assert_eq!(info.generation, 1, "{what}");
                assert_eq!(info.sessions.len(), 2, "{what}: {:?}", info.sessions);
                assert_eq!(marker_of(&root.join("proj/sessions/target")), "2", "{what}");
                false
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::NotFound, "{what}: {e}");
                assert!(!root.join("proj").exists(), "{what}: the project's directory is left");
                assert!(
                    !root.join(".goldclone/projects/proj").exists(),
                    "{what}: the project's state is left"
                );
                true
            }
        },
        Op::Remount => {
            let info = cache.info("proj").unwrap();
            assert!(info.sessions.iter().any(|(s, _)| s == "target"), "{what}: record gone");
            let place = root.join("proj/sessions/target");
            let mounted = common::is_mount_point(&place);
            if mounted {
                assert_eq!(marker_of(&place), "2", "{what}: session lost");
            } else if place.exists() {
                assert_eq!(fs::read_dir(&place).unwrap().count(), 0, "{what}: not the place");
            }
            mounted
        }
        Op::Cleanup | Op::CleanupLazy => {
            let info = cache.info("proj").unwrap();
            let listed = info.sessions.iter().any(|(s, _)| s == "target");
            let present = root.join("proj/sessions/target").exists();
            assert_eq!(listed, present, "{what}: record and tree disagree");
            if listed {
                assert_eq!(marker_of(&root.join("proj/sessions/target")), "2", "{what}");
            }
            !listed
        }
        Op::ImportNext | Op::ReceiveNext => {
            let info = cache.info("proj").unwrap();
            let after = info.generation == 2;
            assert_eq!(info.source_session, None, "{what}");
            // Generation 1 stays either way: the sessions are made from it.
            let want = if after { vec![1, 2] } else { vec![1] };
            assert_eq!(cache.generations("proj").unwrap(), want, "{what}");
            let probe = cache.setup("proj", "probe").unwrap();
            assert_eq!(marker_of(&probe), if after { "3" } else { "1" }, "{what}");
            assert_eq!(probe.join("only-in-1").exists(), !after, "{what}: mixed trees");
            cleanup_read(&cache, "probe");
            assert_eq!(marker_of(&root.join("proj/sessions/target")), "2", "{what}: session lost");
            after
        }
    };
    if let Some(want) = expect {
        assert_eq!(after, want, "{what}: state after recovery (true = the operation took effect)");
    }
    if !(op.is_import() || op == Op::Delete && after) {
        // Nothing else was lost.
        assert_eq!(
            marker_of(&root.join("proj/sessions/bystander")),
            "1",
            "{what}: bystander session"
        );
        assert!(
            cache.info("proj").unwrap().sessions.iter().any(|(s, _)| s == "bystander"),
            "{what}"
        );
    }
    if op == Op::Remount && !after {
        // An unmounted session is what gc reports and leaves alone (as after a reboot): the
        // reuse that mounts it again comes first here.
        let opts = SetupOptions { at: None, reuse: true };
        let (path, reused) =
            cache.setup_with_options("proj", "target", &opts, &Default::default()).unwrap();
        assert!(reused, "{what}: set up anew");
        assert_eq!(marker_of(&path), "2", "{what}: session lost");
    }
    let first = cache.gc().unwrap();
    assert!(first.failed.is_empty() && first.kept.is_empty(), "{what}: gc: {first:?}");
    let second = cache.gc().unwrap();
    assert!(second.is_empty(), "{what}: a second gc still found {second:?}");
    assert_nothing_leaked(root, what);
    assert_no_stray_loop_devices(root, what);
    // Nothing waits for a user any more: gc removed every detached tree.
    for p in fs::read_dir(root.join(".goldclone/projects")).unwrap().flatten() {
        let left = fs::read_dir(p.path().join("detached")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "{what}: detached records left in {}", p.path().display());
    }
    // What was rolled back can be done again.
    if !after {
        match op {
            Op::Import => assert_eq!(cache.import("proj", src).unwrap(), 1, "{what}"),
            Op::ImportNext => {
                assert_eq!(cache.import_next("proj", &next_source(src)).unwrap(), 2, "{what}");
                assert_eq!(current_marker(&cache), "3", "{what}");
            }
            Op::Receive => {
                let mut stream = fs::File::open(full_stream(src)).unwrap();
                assert_eq!(cache.receive("proj", &mut stream).unwrap(), 1, "{what}");
                assert_eq!(current_marker(&cache), "1", "{what}");
            }
            Op::ReceiveNext => {
                let mut stream = fs::File::open(next_stream(src)).unwrap();
                assert_eq!(cache.receive("proj", &mut stream).unwrap(), 2, "{what}");
                assert_eq!(current_marker(&cache), "3", "{what}");
            }
            Op::Setup => drop(cache.setup("proj", "fresh").unwrap()),
            Op::SetupAt => {
                let opts = SetupOptions { at: Some(shown_dir(root).join("fresh")), reuse: false };
                cache.setup_with_options("proj", "fresh", &opts, &Default::default()).unwrap();
            }
            Op::Promote => assert_eq!(cache.promote("proj", "target").unwrap(), 2, "{what}"),
            Op::Consume => {
                let opts = goldclone::golden::PromoteOptions {
                    consume: true,
                    drop: vec!["dropme".into()],
                    edit: None,
                };
                let g = busy_retried(|| {
                    cache.promote_with_options("proj", "target", &opts, &Default::default())
                });
                assert_eq!(g, 2, "{what}");
            }
            Op::Cleanup | Op::CleanupAt | Op::CleanupLazy => cleanup_read(&cache, "target"),
            Op::Remount => {} // above
            Op::Delete => busy_retried(|| cache.delete_project("proj")),
        }
    }
    after
}

/// Every loop device on a file under `root` serves a mount (an image session): none was left
/// attached by a kill. An unmount frees its autoclear device a moment later: a short grace.
fn assert_no_stray_loop_devices(root: &Path, what: &str) {
    let left = common::lasting_loop_devices_under(root, true);
    assert!(left.is_empty(), "{what}: loop devices left attached: {left:?}");
}

/// No intent in any project's journal.
fn assert_no_intents(root: &Path, what: &str) {
    for p in fs::read_dir(root.join(".goldclone/projects")).into_iter().flatten().flatten() {
        let n = fs::read_dir(p.path().join("journal")).map(|d| d.count()).unwrap_or(0);
        assert_eq!(n, 0, "{what}: intents left in {}", p.path().display());
    }
}

/// No intent, temporary file, trash or staging anywhere; every tree under the project's
/// directories is one a record names.
fn assert_nothing_leaked(root: &Path, what: &str) {
    let state = root.join(".goldclone");
    let projects = state.join("projects");
    assert_no_intents(root, what);
    for p in fs::read_dir(&projects).unwrap().flatten() {
        for e in fs::read_dir(p.path()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                [
                    "lock",
                    "gate",
                    "current",
                    "gen",
                    "sessions",
                    "journal",
                    "trash",
                    "size.json",
                    "detached"
                ]
                .contains(&name.as_str()),
                "{what}: unexpected {} in the project's state",
                e.path().display()
            );
        }
        for dir in ["gen", "sessions", "trash"] {
            for e in fs::read_dir(p.path().join(dir)).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    dir != "trash" && name.ends_with(".json") && !name.contains(".tmp."),
                    "{what}: leftover {}",
                    e.path().display()
                );
            }
        }
        let project = p.file_name();
        let records = |dir: &str| -> BTreeSet<String> {
            fs::read_dir(p.path().join(dir))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json").map(str::to_string))
                .collect()
        };
        let trees = |dir: &str| -> BTreeSet<String> {
            fs::read_dir(root.join(&project).join(dir))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(trees("sessions"), records("sessions"), "{what}: session trees and records");
        // Images: one per recorded session, nothing else.
        let images: BTreeSet<String> = fs::read_dir(state.join("images").join(&project))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !images.is_empty() {
            assert_eq!(images, records("sessions"), "{what}: session images and records");
        }
        let gens = trees("gen");
        if !gens.is_empty() {
            assert_eq!(gens, records("gen"), "{what}: generation trees and records");
        }
    }
    for t in fs::read_dir(state.join("trash")).unwrap().flatten() {
        assert_eq!(
            fs::read_dir(t.path()).unwrap().count(),
            0,
            "{what}: trash left in {}",
            t.path().display()
        );
    }
    // Image directories only of projects that exist.
    for e in fs::read_dir(state.join("images")).into_iter().flatten().flatten() {
        assert!(
            state.join("projects").join(e.file_name()).exists(),
            "{what}: images of a project that is gone: {}",
            e.path().display()
        );
    }
    for e in fs::read_dir(&state).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            ["cache.json", "projects", "trash", "images"].contains(&name.as_str()),
            "{what}: unexpected {name}"
        );
    }
}

/// The source trees of a case: `src` (marker 1, with a file only it has) and beside it the
/// one an import of the next generation takes (marker 3).
fn scratch_source(tag: &str) -> PathBuf {
    let src = PathBuf::from(format!("/var/tmp/goldclone-crash-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&src);
    tree(&src, "1");
    fs::write(src.join("only-in-1"), "1").unwrap();
    let next = next_source(&src);
    let _ = fs::remove_dir_all(&next);
    tree(&next, "3");
    src
}

fn next_source(src: &Path) -> PathBuf {
    src.with_extension("next")
}

/// The stream of `src` as a sender's generation 1, and of `next_source(src)` as its
/// generation 2, an increment from 1: what the receives read.
fn full_stream(src: &Path) -> PathBuf {
    src.with_extension("full-stream")
}

fn next_stream(src: &Path) -> PathBuf {
    src.with_extension("next-stream")
}

/// Write the receives' streams for `src` once, from a sender cache of the first backend asked.
fn make_streams(src: &Path, mnt: &Option<PathBuf>, backend: BackendKind) {
    if next_stream(src).exists() {
        return;
    }
    let tag = format!("sender-{}", src.file_name().unwrap().to_string_lossy());
    let sender = CaseRoot::new(mnt, backend, &tag);
    let cache = open(&sender.path, backend);
    cache.import("proj", src).unwrap();
    let mut full = fs::File::create(full_stream(src)).unwrap();
    cache.send("proj", None, None, &mut full).unwrap();
    full.sync_all().unwrap();
    assert_eq!(cache.import_next("proj", &next_source(src)).unwrap(), 2);
    let tmp = src.with_extension("next-stream.tmp");
    let mut next = fs::File::create(&tmp).unwrap();
    cache.send("proj", None, Some(1), &mut next).unwrap();
    next.sync_all().unwrap();
    fs::rename(&tmp, next_stream(src)).unwrap();
}

/// Remove a test's source trees and streams.
fn remove_sources(src: &Path) {
    let _ = fs::remove_dir_all(src);
    let _ = fs::remove_dir_all(next_source(src));
    let _ = fs::remove_file(full_stream(src));
    let _ = fs::remove_file(next_stream(src));
}

/// The named points a consuming promote is killed at in the ZFS guest: where its outcome
/// differs from a plain promote's (the edits, forward recovery from the session's snapshot) and
/// its commit. The host runs every point.
const GUEST_CONSUME: &[&str] =
    &["promote:edited", "promote:snapshot-taken", "promote:current-written"];

/// The named points a setup or cleanup at a caller's path, and a lazy cleanup, is killed at in
/// the ZFS guest: the bind's own step and each operation's commit. The host runs every point.
const GUEST_AT: &[&str] =
    &["setup:attached", "setup:meta-written", "cleanup:detached", "cleanup:tree-moved"];

/// The named points a receive is killed at in the ZFS guest: it is an import with a stream for
/// its source, so its start, the tree filled from the stream and its commit. The host runs
/// every point.
const GUEST_RECEIVE: &[&str] =
    &["import:intent-recorded", "import:tree-created", "import:current-written"];

/// The named points the zvol backend is killed at in the ZFS guest: it is the ZFS backend's
/// code with volumes, so these are where it does something else (makes an XFS, mounts one,
/// freezes one for a snapshot) and each operation's commit. ZFS runs every point there.
const GUEST_ZVOL: &[&str] = &[
    "import:snapshot-taken",
    "import:head-promoted",
    "import:tree-created",
    "import:current-written",
    "setup:tree-created",
    "setup:attached",
    "setup:meta-written",
    "setup:remounted",
    "promote:edited",
    "promote:snapshot-taken",
    "promote:current-written",
    "cleanup:detached",
    "cleanup:tree-moved",
    "delete:current-removed",
];

/// What recovery must make of a kill at a named point: `true` if the operation took effect.
fn committed_at(point: &str, backend: BackendKind, op: Op) -> bool {
    let zfs = matches!(backend, BackendKind::Zfs | BackendKind::Zvol);
    match point {
        // A ZFS promote that edited the session itself goes forward once its snapshot exists.
        "promote:snapshot-taken" => zfs && op == Op::Consume,
        // A ZFS import of the next generation goes forward once its head exists.
        "import:head-promoted" => true,
        "import:tree-created" | "import:meta-written" => zfs && op.is_import_next(),
        p if p.ends_with("current-written") => true,
        "setup:meta-written" => true,
        // The session is mounted at its place again once that returned.
        "setup:remounted" => true,
        "cleanup:tree-moved" | "cleanup:meta-removed" => true,
        "delete:current-removed" | "delete:sessions-removed" => true,
        // A ZFS promote is finished once its first lzc_promote may have moved snapshots.
        "promote:head-promoted" => zfs,
        "promote:tree-created" | "promote:meta-written" if zfs => true,
        // An image promote that edited the session itself goes forward once its clone began.
        "promote:tree-created" | "promote:meta-written" => {
            backend == BackendKind::Image && op == Op::Consume
        }
        _ => false,
    }
}

#[test]
fn kill_at_every_named_step_then_reopen() {
    let src = scratch_source("named");
    let mut checked = 0;
    for (name, mnt, backend) in backends() {
        make_streams(&src, &mnt, backend);
        for (point, &op) in fault::POINTS
            .iter()
            .filter(|p| backend.reaches(p))
            .flat_map(|p| Op::of(p).iter().map(move |op| (p, op)))
            .filter(|(p, op)| match op {
                _ if !in_zfs_guest() => true,
                _ if backend == BackendKind::Zvol && !GUEST_ZVOL.contains(p) => false,
                Op::Consume => GUEST_CONSUME.contains(p),
                Op::SetupAt | Op::CleanupAt | Op::CleanupLazy | Op::Remount => {
                    GUEST_AT.contains(p) || **p == "setup:remounted"
                }
                Op::Receive | Op::ReceiveNext => GUEST_RECEIVE.contains(p),
                _ => true,
            })
        {
            let what = format!("{name} {op:?} {point}");
            let root = CaseRoot::new(
                &mnt,
                backend,
                &format!("crash-{name}-{op:?}-{}", point.replace(':', "-")),
            );
            let holder = prepare(&root.path, backend, op, &src);
            let shown = shown_dir(&root.path);
            let args = op.args(src.to_str().unwrap(), shown.to_str().unwrap());
            // A refusal as in use (the moment's holder of `retry_busy`) changed nothing: again.
            let out = retry_busy(|| {
                let out = cli(&root.path, backend, &args)
                    .env("GOLDCLONE_FAULT", point)
                    .stdin(op.stdin(&src))
                    .output()
                    .unwrap();
                let busy = out.status.code().is_some()
                    && String::from_utf8_lossy(&out.stderr).contains("is in use");
                if busy {
                    Err(Busy)
                } else {
                    Ok(out)
                }
            });
            assert_eq!(
                out.status.signal(),
                Some(9),
                "{what}: expected death by SIGKILL, got {:?}; stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let expect = Some(committed_at(point, backend, op));
            verify(&root.path, backend, op, &src, expect, &what, holder);
            checked += 1;
        }
    }
    remove_sources(&src);
    assert!(checked >= fault::POINTS.len() - 2, "only {checked} crash cases ran");
}

/// System calls that change something or decide an outcome: where a kill is interesting.
const SWEPT: &[&str] = &[
    "openat",
    "openat2",
    "mkdirat",
    "mkdir",
    "renameat2",
    "renameat",
    "rename",
    "linkat",
    "link",
    "unlinkat",
    "unlink",
    "rmdir",
    "write",
    "pwrite64",
    "fsync",
    "fdatasync",
    "syncfs",
    "flock",
    "ioctl",
    "copy_file_range",
    "fchown",
    "fchownat",
    "fchmod",
    "fchmodat",
    "utimensat",
    "fsetxattr",
    "setxattr",
    "lsetxattr",
    "mount",
    "umount2",
    "getdents64",
    "clone3",
    "clone",
    "wait4",
    "execve",
];

/// How many times the busiest thread of `op` makes each swept system call, from one run under
/// `strace -f`: strace counts `inject=…:when=N` per thread (a kill fires at a thread's N-th
/// use), so a total over the copy's threads would name uses that no thread reaches.
fn syscall_counts(
    root: &Path,
    backend: BackendKind,
    op: Op,
    src: &Path,
) -> BTreeMap<String, usize> {
    let log = root.with_extension("strace");
    let trace = format!("trace={}", SWEPT.join(","));
    let out = under_strace(&["-o", log.to_str().unwrap(), "-e", &trace], root, backend, op, src);
    assert!(out.status.success(), "{op:?} under strace: {}", String::from_utf8_lossy(&out.stderr));
    let text = fs::read_to_string(&log).unwrap();
    let _ = fs::remove_file(&log);
    let mut per_thread: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for line in text.lines() {
        // "1234 openat(AT_FDCWD, ..." (the thread's id first under -f); "<... resumed>" lines
        // are the second half of a call already counted.
        let (tid, rest) = match line.split_once(' ') {
            Some((tid, rest)) if tid.bytes().all(|b| b.is_ascii_digit()) => {
                (tid, rest.trim_start())
            }
            _ => ("", line),
        };
        if let Some((name, _)) = rest.split_once('(') {
            if SWEPT.contains(&name) {
                *per_thread.entry((tid, name.to_string())).or_insert(0) += 1;
            }
        }
    }
    let mut counts = BTreeMap::new();
    for ((_, name), n) in per_thread {
        let c = counts.entry(name).or_insert(0);
        *c = n.max(*c);
    }
    counts
}

/// Up to `n` kill points spread over every swept call the operation makes, drawn by `dice`:
/// each call's uses cut into equal strata with one random use from each, then `n` of those at
/// random. A run sees another sample than the last (its seed is printed), so CI's runs together
/// reach every use, where one run affords only a few dozen kills per backend.
fn sample(counts: &BTreeMap<String, usize>, n: usize, dice: &mut Dice) -> Vec<(String, usize)> {
    let per_call = n.div_ceil(counts.len().max(1)).max(3);
    let mut all = Vec::new();
    for (name, &c) in counts {
        let m = per_call.min(c);
        for i in 0..m {
            let (lo, hi) = (i * c / m, (i + 1) * c / m);
            all.push((name.clone(), 1 + lo + dice.roll((hi - lo) as u64) as usize));
        }
    }
    // A partial Fisher-Yates shuffle: the first n are a uniform pick.
    for i in 0..n.min(all.len()) {
        let j = i + dice.roll((all.len() - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(n);
    all
}

fn run_with_kill(
    root: &Path,
    backend: BackendKind,
    op: Op,
    src: &Path,
    call: &str,
    nth: usize,
) -> Output {
    let inject = format!("inject={call}:signal=SIGKILL:when={nth}");
    under_strace(&["-o", "/dev/null", "-e", &inject], root, backend, op, src)
}

/// `op` run by the CLI under `strace -f -qq` with `options`.
fn under_strace(options: &[&str], root: &Path, backend: BackendKind, op: Op, src: &Path) -> Output {
    Command::new("strace")
        .args(["-f", "-qq"])
        .args(options)
        .arg(env!("CARGO_BIN_EXE_goldclone"))
        .args(op.args(src.to_str().unwrap(), shown_dir(root).to_str().unwrap()))
        .arg("--root")
        .arg(root)
        .args(["--backend", backend_arg(backend)])
        .stdin(op.stdin(src))
        .output()
        .expect("strace (tests/run-all.sh installs it)")
}

/// A kill at any system call, not only at the named points: sampled over every swept call of
/// every operation, each outcome checked as "exactly before or exactly after". The sample is
/// another each run: `GOLDCLONE_SWEEP_SEED` (printed) repeats one, `GOLDCLONE_SWEEP_SAMPLES`
/// sets the kills per operation and backend.
#[test]
fn kill_at_sampled_system_calls_then_reopen() {
    let per_op: usize = std::env::var("GOLDCLONE_SWEEP_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if in_zfs_guest() { 3 } else { 16 });
    let seed = std::env::var("GOLDCLONE_SWEEP_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
        })
        | 1;
    eprintln!("sweep seed {seed} (GOLDCLONE_SWEEP_SEED={seed} repeats this sample)");
    let src = scratch_source("sweep");
    // In the emulated guest (slow: the whole suite must stay within CI's time) the sweep runs
    // on ZFS only (zvol is the same code with volumes: its own steps are among its named
    // points), and leaves out the consuming promote, the delete, the operations at callers'
    // paths and the full receive: their named points run there, and the host sweeps them.
    let lanes: Vec<_> = backends()
        .into_iter()
        .filter(|(_, _, b)| !in_zfs_guest() || *b == BackendKind::Zfs)
        .collect();
    for (_, mnt, backend) in &lanes {
        make_streams(&src, mnt, *backend);
    }
    let queue = Mutex::new(lanes.into_iter().enumerate().collect::<Vec<_>>());
    let killed = std::sync::atomic::AtomicUsize::new(0);
    let outcomes = Mutex::new(BTreeMap::new());
    // Two backends at a time: a kill's run is mostly waiting for its filesystem's syncs.
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| loop {
                    let Some((lane, (name, mnt, backend))) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let mut dice = Dice(seed.wrapping_add(lane as u64 * 0x9e37_79b9) | 1);
                    sweep_backend(name, &mnt, backend, &src, per_op, &mut dice, &killed, &outcomes);
                })
            })
            .collect();
        for w in workers {
            if let Err(panic) = w.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    remove_sources(&src);
    let killed = killed.into_inner();
    eprintln!(
        "sweep: {killed} runs killed; outcomes (backend, op, took effect): {:?}",
        outcomes.lock().unwrap()
    );
    let least = if in_zfs_guest() { 4 } else { 8 };
    assert!(
        killed >= least,
        "only {killed} runs were killed: the sweep did not sweep (seed {seed})"
    );
}

/// The sweep's kills of every operation on one backend.
#[allow(clippy::too_many_arguments)]
fn sweep_backend(
    name: &'static str,
    mnt: &Option<PathBuf>,
    backend: BackendKind,
    src: &Path,
    per_op: usize,
    dice: &mut Dice,
    killed: &std::sync::atomic::AtomicUsize,
    outcomes: &Mutex<BTreeMap<(&'static str, String, bool), usize>>,
) {
    for op in Op::ALL.into_iter().filter(|op| {
        !in_zfs_guest()
            || !matches!(
                op,
                Op::Consume
                    | Op::Delete
                    | Op::SetupAt
                    | Op::CleanupAt
                    | Op::CleanupLazy
                    | Op::Remount
                    | Op::Receive
            )
    }) {
        // A session is remounted only where sessions are mounts.
        if op == Op::Remount && !backend.reaches("setup:remounted") {
            continue;
        }
        let counts = {
            let root = CaseRoot::new(mnt, backend, &format!("count-{name}-{op:?}"));
            let _holder = prepare(&root.path, backend, op, src);
            syscall_counts(&root.path, backend, op, src)
        };
        assert!(!counts.is_empty(), "{name} {op:?}: strace saw no calls");
        // The bind at a caller's path, or the holder, adds few calls to a setup or cleanup:
        // half as many.
        let n = if matches!(op, Op::SetupAt | Op::CleanupAt | Op::CleanupLazy | Op::Remount) {
            per_op / 2
        } else {
            per_op
        };
        for (call, nth) in sample(&counts, n, dice) {
            let what = format!("{name} {op:?} killed at {call} #{nth}");
            let root = CaseRoot::new(mnt, backend, &format!("sweep-{name}-{op:?}-{call}-{nth}"));
            let holder = prepare(&root.path, backend, op, src);
            let out = run_with_kill(&root.path, backend, op, src, &call, nth);
            let expect = match (out.status.signal(), out.status.code()) {
                (Some(9), _) => {
                    killed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    None
                }
                // The kill came after the last such call of this run: it finished.
                (_, Some(0)) => Some(true),
                // A failed operation has had no effect.
                _ => Some(false),
            };
            let after = verify(&root.path, backend, op, src, expect, &what, holder);
            *outcomes.lock().unwrap().entry((name, format!("{op:?}"), after)).or_insert(0) += 1;
        }
    }
}

/// A tiny deterministic generator (no dependency for a test's dice).
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Several processes do random setups, promotes, cleanups and gcs on one root while another
/// thread SIGKILLs random ones. Afterwards: every listed session and generation is whole,
/// nothing leaked after gc, and nothing an operation reported done is missing.
#[test]
fn soak_random_operations_with_kills() {
    let src = scratch_source("soak");
    let ops_per_worker: u64 = if in_zfs_guest() { 12 } else { 200 };
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
            | 1;
    eprintln!("soak seed {seed}");
    for (name, mnt, backend) in backends() {
        let root = CaseRoot::new(&mnt, backend, &format!("soak-{name}"));
        open(&root.path, backend).import("proj", &src).unwrap();
        let running: Arc<Mutex<Vec<u32>>> = Arc::default();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // (worker, session) → whether a setup of it reported success and no cleanup was tried
        // since; and the generations promotes reported.
        let alive: Mutex<BTreeMap<String, bool>> = Mutex::default();
        let promoted: Mutex<Vec<u64>> = Mutex::default();
        let succeeded: Mutex<BTreeMap<String, usize>> = Mutex::default();
        std::thread::scope(|scope| {
            let killer = {
                let running = running.clone();
                let done = done.clone();
                scope.spawn(move || {
                    let mut dice = Dice(seed ^ 0x9e37_79b9_7f4a_7c15);
                    let mut kills = 0;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(std::time::Duration::from_millis(1 + dice.roll(15)));
                        let victim = {
                            let r = running.lock().unwrap();
                            if r.is_empty() {
                                None
                            } else {
                                Some(r[dice.roll(r.len() as u64) as usize])
                            }
                        };
                        if let Some(pid) = victim {
                            if nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid as i32),
                                nix::sys::signal::Signal::SIGKILL,
                            )
                            .is_ok()
                            {
                                kills += 1;
                            }
                        }
                    }
                    kills
                })
            };
            let workers: Vec<_> = (0..3u64)
                .map(|w| {
                    let running = running.clone();
                    let (root, alive, promoted, succeeded) = (&root, &alive, &promoted, &succeeded);
                    scope.spawn(move || {
                        let mut dice = Dice(seed.wrapping_add(w * 7919) | 1);
                        for _ in 0..ops_per_worker {
                            let session = format!("w{w}s{}", dice.roll(3));
                            let path = root.path.join("proj/sessions").join(&session);
                            let args: Vec<String> = match dice.roll(10) {
                                0..=3 => vec![
                                    "session".into(),
                                    "setup".into(),
                                    "proj".into(),
                                    session.clone(),
                                ],
                                4..=5 => vec![
                                    "session".into(),
                                    "cleanup".into(),
                                    "proj".into(),
                                    session.clone(),
                                ],
                                6..=7 => {
                                    // Only this worker touches its sessions: a whole-tree rewrite
                                    // gives the promoted generation its own marker.
                                    if alive.lock().unwrap().get(&session) == Some(&true)
                                        && path.exists()
                                    {
                                        mark(&path, &format!("{session}-{}", dice.roll(1 << 30)));
                                    }
                                    let mut a: Vec<String> =
                                        vec!["session".into(), "promote".into()];
                                    if dice.roll(2) == 0 {
                                        a.push("--consume".into());
                                    }
                                    a.extend(["proj".into(), session.clone()]);
                                    a
                                }
                                8 => vec!["gc".into()],
                                _ => vec!["info".into(), "proj".into()],
                            };
                            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                            let child = cli(&root.path, root.backend, &argv)
                                .stdout(Stdio::piped())
                                .stderr(Stdio::piped())
                                .spawn()
                                .unwrap();
                            running.lock().unwrap().push(child.id());
                            let pid = child.id();
                            let out = child.wait_with_output().unwrap();
                            running.lock().unwrap().retain(|p| *p != pid);
                            let ok = out.status.success();
                            if ok {
                                *succeeded
                                    .lock()
                                    .unwrap()
                                    .entry(
                                        args.iter().take(2).cloned().collect::<Vec<_>>().join(" "),
                                    )
                                    .or_insert(0) += 1;
                            }
                            match argv.get(1).copied().unwrap_or_default() {
                                "setup" if ok => {
                                    alive.lock().unwrap().insert(session.clone(), true);
                                }
                                "cleanup" => {
                                    alive.lock().unwrap().insert(session.clone(), false);
                                }
                                // A consuming promote tried may have taken the session.
                                "promote" if args.iter().any(|a| a == "--consume") && !ok => {
                                    alive.lock().unwrap().insert(session.clone(), false);
                                }
                                "promote" if ok => {
                                    if args.iter().any(|a| a == "--consume") {
                                        alive.lock().unwrap().insert(session.clone(), false);
                                    }
                                    let text = String::from_utf8_lossy(&out.stdout);
                                    let g = text
                                        .split_whitespace()
                                        .find_map(|w| w.parse::<u64>().ok())
                                        .unwrap();
                                    promoted.lock().unwrap().push(g);
                                }
                                _ => {}
                            }
                        }
                    })
                })
                .collect();
            let joined: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            let kills = killer.join().unwrap();
            eprintln!(
                "{name}: soak killed {kills} processes; succeeded: {:?}",
                succeeded.lock().unwrap()
            );
            for j in joined {
                if let Err(panic) = j {
                    std::panic::resume_unwind(panic);
                }
            }
        });
        let what = format!("{name} soak (seed {seed})");
        let cache = open(&root.path, backend);
        let report = cache.gc().unwrap();
        assert!(report.failed.is_empty() && report.kept.is_empty(), "{what}: gc: {report:?}");
        assert!(cache.gc().unwrap().is_empty(), "{what}: a second gc found more");
        assert_nothing_leaked(&root.path, &what);
        let info = cache.info("proj").unwrap();
        for (s, _) in &info.sessions {
            marker_of(&root.path.join("proj/sessions").join(s));
        }
        for (s, live) in alive.lock().unwrap().iter() {
            if *live {
                assert!(
                    info.sessions.iter().any(|(l, _)| l == s),
                    "{what}: session {s} was set up and never cleaned up, but is gone"
                );
            }
        }
        if let Some(max) = promoted.lock().unwrap().iter().max() {
            assert!(
                info.generation >= *max,
                "{what}: generation {max} was reported, current is {}",
                info.generation
            );
        }
        // The current generation is whole.
        current_marker(&cache);
        for g in cache.generations("proj").unwrap() {
            assert!(g <= info.generation, "{what}");
        }
        for (s, _) in info.sessions {
            cleanup_read(&cache, &s);
        }
        assert!(cache.gc().unwrap().failed.is_empty(), "{what}");
    }
    remove_sources(&src);
}
