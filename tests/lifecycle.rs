//! The golden lifecycle on every backend the host has: the copy backend on XFS (reflink) and on
//! ext4, and the btrfs backend, each on its loop filesystem (see tests/loopfs.sh). The same tests
//! run in the ZFS guest (tests/zfs-vm.sh) on the ZFS and zvol backends.

mod common;

use common::lifecycle::*;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use goldclone::golden::{BackendKind, Cache, OpenOptions};
use goldclone::{Error, ErrorKind};

#[test]
fn setup_promote_cleanup_gc_on_every_backend() {
    let _shared = shared();
    let src = scratch_tree("full", "1", 20);
    for (root, name) in roots("full") {
        let cache = open(&root);
        assert_eq!(cache.import("proj", &src).unwrap(), 1, "{name}");
        let s1 = cache.setup("proj", "s1").unwrap();
        let s2 = cache.setup("proj", "s2").unwrap();
        assert_eq!(whole_generation(&s1, 20), "1");
        // A session is private and writable.
        fs::write(s1.join("generation"), "2").unwrap();
        for i in 0..20 {
            fs::write(s1.join("sub").join(format!("f{i:03}")), "2").unwrap();
        }
        fs::write(s1.join("added-by-s1"), "x").unwrap();
        assert_eq!(whole_generation(&s2, 20), "1", "{name}: s2 saw s1's writes");

        assert_eq!(cache.promote("proj", "s1").unwrap(), 2, "{name}");
        let info = cache.info("proj").unwrap();
        assert_eq!(
            (info.generation, info.source_session.as_deref(), info.backend),
            (2, Some("s1"), root.backend)
        );
        assert!(info.created_at > 1_600_000_000);
        assert!(info.size_bytes > 0, "{name}: size of the golden tree");
        assert_eq!(info.sessions, vec![("s1".to_string(), 1), ("s2".to_string(), 1)]);

        // Old sessions keep running on generation 1; new ones get generation 2.
        assert_eq!(whole_generation(&s2, 20), "1");
        fs::write(s2.join("still-writable"), "y").unwrap();
        let s3 = cache.setup("proj", "s3").unwrap();
        assert_eq!(whole_generation(&s3, 20), "2");
        assert!(s3.join("added-by-s1").exists());
        // The promoted session itself is untouched and still writable.
        fs::write(s1.join("after-promote"), "z").unwrap();
        assert!(!cache.setup("proj", "s4").unwrap().join("after-promote").exists());

        // Generation 1 is reclaimed once its last session is gone.
        assert_eq!(cache.generations("proj").unwrap(), vec![1, 2], "{name}");
        cache.cleanup("proj", "s1").unwrap();
        assert_eq!(
            cache.generations("proj").unwrap(),
            vec![1, 2],
            "{name}: gen 1 reclaimed while s2 still uses it"
        );
        assert_eq!(whole_generation(&s2, 20), "1");
        cache.cleanup("proj", "s2").unwrap();
        assert_eq!(
            cache.generations("proj").unwrap(),
            vec![2],
            "{name}: gen 1 not reclaimed after its last session"
        );
        assert!(!s1.exists() && !s2.exists());

        cache.cleanup("proj", "s3").unwrap();
        cache.cleanup("proj", "s4").unwrap();
        let report = cache.gc().unwrap();
        assert!(report.is_empty(), "{name}: gc found leftovers of clean operations: {report:?}");
        let left = snapshot_tree(&root.path.join("proj"));
        let mut want: BTreeSet<PathBuf> = ["gen", "sessions"].iter().map(PathBuf::from).collect();
        if matches!(root.backend, BackendKind::Copy | BackendKind::Btrfs | BackendKind::Image) {
            // a directory, subvolume or image file; on ZFS a snapshot
            want.insert(PathBuf::from("gen/2"));
        }
        let top: BTreeSet<PathBuf> =
            left.into_iter().filter(|p| p.components().count() <= 2).collect();
        assert_eq!(top, want, "{name}");
        assert_eq!(current_marker(&cache, 20), "2");
    }
    let _ = fs::remove_dir_all(&src);
}

#[test]
fn bad_input_gets_a_typed_error_and_changes_nothing() {
    let _shared = shared();
    let src = scratch_tree("bad", "1", 3);
    for (root, name) in roots("bad") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        cache.setup("proj", "s1").unwrap();
        let before = snapshot_tree(&root.path);

        let kind = |r: Result<(), Error>| r.map(|_| ()).unwrap_err().kind();
        assert_eq!(kind(cache.setup("nope", "s").map(drop)), ErrorKind::NotFound, "{name}");
        assert!(matches!(cache.setup("nope", "s"), Err(Error::UnknownProject { .. })));
        assert!(matches!(cache.promote("proj", "ghost"), Err(Error::UnknownSession { .. })));
        assert!(matches!(cache.cleanup("proj", "ghost"), Err(Error::UnknownSession { .. })));
        assert!(matches!(cache.info("nope"), Err(Error::UnknownProject { .. })));
        assert_eq!(kind(cache.setup("proj", "s1").map(drop)), ErrorKind::AlreadyExists);
        assert_eq!(kind(cache.import("proj", &src).map(drop)), ErrorKind::AlreadyExists);
        assert_eq!(
            kind(cache.import("other", Path::new("/nonexistent/dir")).map(drop)),
            ErrorKind::NotFound
        );
        for bad in ["a/b", "a@b", "", ".hidden", "-flag", "sp ace", "ünï", "..", "."] {
            assert_eq!(
                kind(cache.setup("proj", bad).map(drop)),
                ErrorKind::InvalidName,
                "session {bad:?}"
            );
            assert_eq!(
                kind(cache.setup(bad, "s").map(drop)),
                ErrorKind::InvalidName,
                "project {bad:?}"
            );
            assert_eq!(kind(cache.promote("proj", bad).map(drop)), ErrorKind::InvalidName);
            assert_eq!(kind(cache.cleanup(bad, "s1")), ErrorKind::InvalidName);
            assert_eq!(kind(cache.import(bad, &src).map(drop)), ErrorKind::InvalidName);
        }
        let long = "x".repeat(65);
        assert_eq!(kind(cache.setup("proj", &long).map(drop)), ErrorKind::NameTooLong);
        assert_eq!(kind(cache.import(&long, &src).map(drop)), ErrorKind::NameTooLong);
        assert!(cache.setup("proj", &"y".repeat(64)).is_ok(), "64 bytes is allowed");
        cache.cleanup("proj", &"y".repeat(64)).unwrap();

        assert_eq!(snapshot_tree(&root.path), before, "{name}: bad input changed the cache");
    }
    let _ = fs::remove_dir_all(&src);
}

#[test]
fn busy_session_is_neither_promoted_nor_removed() {
    let _shared = shared();
    let src = scratch_tree("busy", "1", 3);
    for (root, name) in roots("busy") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let s1 = cache.setup("proj", "s1").unwrap();
        let mut user = Command::new("sleep")
            .arg("600")
            .current_dir(&s1)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = user.id();
        match cache.promote("proj", "s1") {
            Err(Error::SessionBusy { pids, .. }) => {
                assert!(pids.contains(&pid), "{name}: {pids:?} lacks {pid}")
            }
            other => panic!("{name}: promote of a busy session gave {other:?}"),
        }
        assert_eq!(cache.cleanup("proj", "s1").unwrap_err().kind(), ErrorKind::Busy);
        assert_eq!(
            cache.info("proj").unwrap().generation,
            1,
            "{name}: a refused promote changed the generation"
        );
        user.kill().unwrap();
        user.wait().unwrap();
        assert_eq!(cache.promote("proj", "s1").unwrap(), 2);
        cache.cleanup("proj", "s1").unwrap();
    }
    let _ = fs::remove_dir_all(&src);
}

#[test]
fn eight_setups_and_a_promote_at_once() {
    let _shared = shared();
    const FILES: usize = 200;
    let src = scratch_tree("conc", "1", FILES);
    for (root, name) in roots("conc") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let promoted = cache.setup("proj", "promoted").unwrap();
        fs::write(promoted.join("generation"), "2").unwrap();
        for i in 0..FILES {
            fs::write(promoted.join("sub").join(format!("f{i:03}")), "2").unwrap();
        }
        let results: Vec<Result<String, Error>> = std::thread::scope(|scope| {
            let mut handles = Vec::new();
            for i in 0..8 {
                let cache = &cache;
                handles.push(scope.spawn(move || {
                    cache.setup("proj", &format!("c{i}")).map(|p| p.display().to_string())
                }));
            }
            let promote = scope.spawn(|| cache.promote("proj", "promoted").map(|g| g.to_string()));
            let mut out: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            out.push(promote.join().unwrap());
            out
        });
        for r in &results {
            assert!(r.is_ok(), "{name}: {r:?}");
        }
        assert_eq!(results[8].as_ref().unwrap(), "2");
        for i in 0..8 {
            let session = root.path.join(format!("proj/sessions/c{i}"));
            let marker = whole_generation(&session, FILES);
            let recorded = cache
                .info("proj")
                .unwrap()
                .sessions
                .into_iter()
                .find(|(s, _)| s == &format!("c{i}"))
                .unwrap()
                .1;
            assert_eq!(marker, recorded.to_string(), "{name}: c{i} content and metadata disagree");
        }
    }
    let _ = fs::remove_dir_all(&src);
}

#[test]
fn different_projects_never_wait_for_each_other() {
    let _shared = shared();
    let src = scratch_tree("indep", "1", 3);
    for (root, name) in roots("indep") {
        let cache = open(&root);
        cache.import("a", &src).unwrap();
        cache.import("b", &src).unwrap();
        // Hold project a's lock exclusively, as a long promote would.
        let lock = fs::File::open(root.path.join(".goldclone/projects/a/lock")).unwrap();
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map(|held| {
                let (tx, rx) = mpsc::channel();
                std::thread::scope(|scope| {
                    let cache = &cache;
                    scope.spawn(move || tx.send(cache.setup("b", "s").map(drop)).unwrap());
                    // Not a timing threshold: a generous bound that only a deadlock exceeds.
                    let got = rx
                        .recv_timeout(Duration::from_secs(120))
                        .unwrap_or_else(|_| panic!("{name}: project b waited for project a"));
                    got.unwrap();
                });
                drop(held);
            })
            .unwrap();
        cache.cleanup("b", "s").unwrap();
    }
    let _ = fs::remove_dir_all(&src);
}

/// A session whose directory and record were removed by hand, with no intent left either (an
/// operator's `umount; rm -rf`). On the directory-based backends that removed the session: gc
/// has nothing to do and the name can be used again. On ZFS the session's dataset is left, and
/// no record names it any more: gc reports it and leaves it alone (goldclone only removes what
/// its records name), and a setup of that name is refused rather than destroying it.
#[test]
fn gc_reports_a_session_whose_directory_and_record_are_gone() {
    let _shared = shared();
    let src = scratch_tree("lost", "1", 5);
    for (root, name) in roots("lost") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let kept = cache.setup("proj", "kept").unwrap();
        let lost = cache.setup("proj", "lost").unwrap();
        fs::write(lost.join("private"), "x").unwrap();
        let on_zfs = matches!(root.backend, BackendKind::Zfs | BackendKind::Zvol);
        let image = root.backend == BackendKind::Image;
        if on_zfs || image {
            nix::mount::umount2(&lost, nix::mount::MntFlags::empty()).unwrap();
        }
        goldclone::copy::remove_tree(&lost).unwrap();
        fs::remove_file(root.path.join(".goldclone/projects/proj/sessions/lost.json")).unwrap();

        let report = cache.gc().unwrap();
        assert!(report.removed.is_empty() && report.failed.is_empty(), "{name}: {report:?}");
        let reported: Vec<&String> = report
            .kept
            .iter()
            .filter(|r| r.contains("s-lost") || r.contains(".goldclone/images/proj/lost "))
            .collect();
        assert_eq!(reported.len(), usize::from(on_zfs || image), "{name}: {report:?}");
        assert_eq!(report.kept.len(), reported.len(), "{name}: {report:?}");
        // The other session is untouched.
        assert_eq!(whole_generation(&kept, 5), "1", "{name}");
        if on_zfs {
            assert_eq!(
                cache.setup("proj", "lost").unwrap_err().kind(),
                ErrorKind::AlreadyExists,
                "{name}: setup over an unrecorded dataset"
            );
            assert!(!root.path.join("proj/sessions/lost").exists(), "{name}");
        }
        if image {
            // The lost session's image is kept, and its name not reused over it.
            let img = root.path.join(".goldclone/images/proj/lost");
            assert!(img.is_file(), "{name}: the unrecorded image is gone");
            assert_eq!(
                cache.setup("proj", "lost").unwrap_err().kind(),
                ErrorKind::AlreadyExists,
                "{name}: setup over an unrecorded image"
            );
            assert!(img.is_file(), "{name}: a refused setup removed the image");
            assert!(!root.path.join("proj/sessions/lost").exists(), "{name}");
            fs::remove_file(&img).unwrap(); // the operator's own cleanup frees the name
        }
        if on_zfs {
            // The operator's own cleanup of the dataset frees the name.
            let zfs = goldclone::zfs::Zfs::open().unwrap();
            let ds = report.kept[0].split_whitespace().find(|w| w.ends_with("s-lost")).unwrap();
            // A zvol whose XFS was just unmounted stays busy for a moment.
            let ds = goldclone::zfs::DatasetName::new(ds).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while let Err(e) = zfs.destroy(&ds) {
                assert!(
                    e.kind() == ErrorKind::Busy && std::time::Instant::now() < deadline,
                    "{name}: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let again = cache.setup("proj", "lost").unwrap();
        assert_eq!(whole_generation(&again, 5), "1", "{name}");
        assert!(!again.join("private").exists(), "{name}: the old session's data came back");
        cache.cleanup("proj", "lost").unwrap();
        cache.cleanup("proj", "kept").unwrap();
        assert!(cache.gc().unwrap().is_empty(), "{name}");
    }
    let _ = fs::remove_dir_all(&src);
}

/// A session made from an older generation (another session was promoted meanwhile): on the
/// directory backends it becomes the next generation like any other; on ZFS it is refused
/// with Unsupported (its clone's origin is an older snapshot) and nothing changes.
#[test]
fn promote_of_a_session_from_an_older_generation() {
    let _shared = shared();
    let src = scratch_tree("older", "1", 5);
    for (root, name) in roots("older") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let old = cache.setup("proj", "old").unwrap();
        let new = cache.setup("proj", "new").unwrap();
        golden_tree(&new, "2", 5);
        assert_eq!(cache.promote("proj", "new").unwrap(), 2, "{name}");
        golden_tree(&old, "3", 5);
        let on_zfs = matches!(root.backend, BackendKind::Zfs | BackendKind::Zvol);
        match cache.promote("proj", "old") {
            Ok(g) => {
                assert!(!on_zfs, "{name}: ZFS promoted a session of an older generation");
                assert_eq!(g, 3, "{name}");
                assert_eq!(current_marker(&cache, 5), "3", "{name}");
            }
            Err(e) => {
                assert!(on_zfs, "{name}: {e}");
                assert_eq!(e.kind(), ErrorKind::Unsupported, "{name}: {e}");
                let info = cache.info("proj").unwrap();
                assert_eq!(info.generation, 2, "{name}");
                assert_eq!(current_marker(&cache, 5), "2", "{name}");
                assert_eq!(whole_generation(&old, 5), "3", "{name}");
            }
        }
        let report = cache.gc().unwrap();
        assert!(report.kept.is_empty() && report.failed.is_empty(), "{name}: {report:?}");
        cache.cleanup("proj", "old").unwrap();
        cache.cleanup("proj", "new").unwrap();
    }
    let _ = fs::remove_dir_all(&src);
}

/// A cache made with one backend is refused when opened as another: its records name trees
/// only that backend can judge.
#[test]
fn a_cache_is_opened_with_the_backend_it_was_made_with() {
    let _shared = shared();
    let src = scratch_tree("kind", "1", 2);
    for (root, name) in roots("kind") {
        open(&root).import("proj", &src).unwrap();
        let other = match root.backend {
            BackendKind::Copy => None,
            _ => Some(BackendKind::Copy),
        };
        if let Some(other) = other {
            let e = Cache::open(
                &root.path,
                &OpenOptions { backend: Some(other), ..Default::default() },
            )
            .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{name}: {e}");
        }
        // Importing a tree that holds the root would copy the cache into itself.
        let cache = open(&root);
        let parent = root.path.parent().unwrap();
        for dir in [root.path.as_path(), parent] {
            let e = cache.import("self", dir).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{name}: {e}");
        }
        assert!(!root.path.join("self").exists(), "{name}");
    }
    let _ = fs::remove_dir_all(&src);
}

/// Import, setup and promote report progress and stop when cancelled, on every backend; a
/// stopped operation leaves nothing behind (no record, no tree, no staging name) and the same
/// operation then succeeds.
#[test]
fn progress_and_cancel_of_import_setup_promote() {
    let _shared = shared();
    use goldclone::copy::{CancelToken, Progress};
    use goldclone::golden::Watch;
    let src = scratch_tree("watch", "1", 200);
    let stopped = || {
        let t = CancelToken::new();
        t.cancel();
        Watch { progress: None, cancel: Some(t) }
    };
    for (root, name) in roots("watch") {
        let cache = open(&root);
        let entries = |p: &Path| snapshot_tree(p).len();

        // A stopped import makes no project; the same import then works and counts its tree.
        let err = cache.import_with("proj", &src, &stopped()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{name}: {err}");
        assert!(!root.path.join("proj").exists(), "{name}: a stopped import left its project");
        assert_eq!(cache.info("proj").unwrap_err().kind(), ErrorKind::NotFound, "{name}");
        let progress = Progress::new();
        let watch = Watch { progress: Some(progress.clone()), cancel: Some(CancelToken::new()) };
        assert_eq!(cache.import_with("proj", &src, &watch).unwrap(), 1, "{name}");
        assert!(
            progress.entries() as usize >= entries(&src),
            "{name}: {} entries",
            progress.entries()
        );
        assert_eq!(progress.totals().map(|t| t.0), Some(progress.entries()), "{name}: totals");

        // A stopped setup makes no session.
        let err = cache.setup_with("proj", "s1", &stopped()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{name}: {err}");
        assert!(cache.info("proj").unwrap().sessions.is_empty(), "{name}");
        assert_eq!(list(&root.path.join("proj/sessions")), Vec::<String>::new(), "{name}");
        let progress = Progress::new();
        let watch = Watch { progress: Some(progress.clone()), cancel: Some(CancelToken::new()) };
        let s1 = cache.setup_with("proj", "s1", &watch).unwrap();
        assert_eq!(whole_generation(&s1, 200), "1", "{name}");
        if root.backend == BackendKind::Copy {
            // A copy reports every entry; a snapshot or clone is one step.
            assert!(progress.entries() as usize >= entries(&src), "{name}");
            assert_eq!(progress.totals().map(|t| t.0), Some(progress.entries()), "{name}");
        }

        // Stopped while it runs (from another thread, once the first entries are done): either
        // stopped in time and nothing is left, or done before the stop and complete.
        for round in 0..3 {
            let session = format!("mid{round}");
            let progress = Progress::new();
            let token = CancelToken::new();
            let watch = Watch { progress: Some(progress.clone()), cancel: Some(token.clone()) };
            let stopper = std::thread::spawn(move || {
                for _ in 0..5_000 {
                    if progress.entries() > 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                token.cancel();
            });
            let result = cache.setup_with("proj", &session, &watch);
            stopper.join().unwrap();
            match result {
                Ok(path) => assert_eq!(whole_generation(&path, 200), "1", "{name}"),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Cancelled, "{name}: {e}");
                    assert!(!root.path.join("proj/sessions").join(&session).exists(), "{name}");
                }
            }
        }

        // A stopped promote changes nothing: same generation, the session as it was.
        fs::write(s1.join("generation"), "2").unwrap();
        for i in 0..200 {
            fs::write(s1.join("sub").join(format!("f{i:03}")), "2").unwrap();
        }
        let err = cache.promote_with("proj", "s1", &stopped()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{name}: {err}");
        assert_eq!(cache.info("proj").unwrap().generation, 1, "{name}");
        assert_eq!(cache.generations("proj").unwrap(), vec![1], "{name}");
        assert_eq!(fs::read_to_string(s1.join("generation")).unwrap(), "2", "{name}");
        assert_eq!(cache.promote_with("proj", "s1", &Watch::default()).unwrap(), 2, "{name}");
        assert_eq!(current_marker(&cache, 200), "2", "{name}");

        for s in cache.info("proj").unwrap().sessions {
            cache.cleanup("proj", &s.0).unwrap();
        }
        let report = cache.gc().unwrap();
        assert!(report.is_empty(), "{name}: stopped operations left something: {report:?}");
    }
}

/// The cheap queries: which projects have a golden, whether one does, and one session's
/// generation, place and holders; none walks a tree, none changes anything.
#[test]
fn projects_has_golden_and_session_info() {
    let _shared = shared();
    use goldclone::copy::CancelToken;
    use goldclone::golden::Watch;
    let src = scratch_tree("queries", "1", 3);
    for (root, name) in roots("queries") {
        let cache = open(&root);
        assert_eq!(cache.projects().unwrap(), Vec::<String>::new(), "{name}");
        assert!(!cache.has_golden("proj").unwrap(), "{name}");
        assert_eq!(cache.has_golden("../x").unwrap_err().kind(), ErrorKind::InvalidName);
        assert_eq!(cache.session_info("proj", "s1").unwrap_err().kind(), ErrorKind::NotFound);

        // User data beside the projects, and a stopped import, are not projects.
        fs::create_dir_all(root.path.join("notes/sessions")).unwrap();
        let stopped = CancelToken::new();
        stopped.cancel();
        let watch = Watch { progress: None, cancel: Some(stopped) };
        assert!(cache.import_with("zeta", &src, &watch).is_err());
        cache.import("proj", &src).unwrap();
        cache.import("alpha", &src).unwrap();
        assert_eq!(cache.projects().unwrap(), ["alpha", "proj"], "{name}");
        assert!(cache.has_golden("proj").unwrap() && !cache.has_golden("zeta").unwrap());
        assert!(!cache.has_golden("notes").unwrap(), "{name}: user data taken for a project");

        let before = snapshot_tree(&root.path);
        let path = cache.setup("proj", "s1").unwrap();
        let info = cache.session_info("proj", "s1").unwrap();
        assert_eq!((info.path.as_path(), info.generation), (path.as_path(), 1), "{name}");
        assert!(info.created_at > 1_600_000_000 && !info.in_use(), "{name}: {info:?}");
        assert_eq!(
            cache.session_info("proj", "s2").unwrap_err().kind(),
            ErrorKind::NotFound,
            "{name}"
        );
        let mut user = Command::new("sleep")
            .arg("600")
            .current_dir(&path)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let busy = cache.session_info("proj", "s1").unwrap();
        user.kill().unwrap();
        user.wait().unwrap();
        assert!(busy.in_use(), "{name}: a process in the session is no holder");
        assert!(
            busy.holders.iter().any(|h| h.contains(&user.id().to_string())),
            "{name}: {:?}",
            busy.holders
        );
        assert!(!cache.session_info("proj", "s1").unwrap().in_use(), "{name}");
        cache.cleanup("proj", "s1").unwrap();
        assert_eq!(snapshot_tree(&root.path), before, "{name}: the queries changed something");
    }
    let _ = fs::remove_dir_all(&src);
}

/// A promote that drops paths, runs an edit hook and consumes its session, on every backend:
/// the new generation has the edits, the session is gone (on the copy backend its very
/// directory became the generation), other sessions are untouched; a failed or cancelled edit
/// commits nothing and gives the session back whole; a drop path through a symlink fails
/// without touching what the symlink points at.
#[test]
fn promote_with_edits_and_consume() {
    let _shared = shared();
    use goldclone::copy::CancelToken;
    use goldclone::golden::{PromoteOptions, Watch};
    use std::os::unix::fs::MetadataExt;
    let src = scratch_tree("edit", "1", 10);
    for d in ["containers/c1", "network/files", "overlay2/l1", "overlay2/l2", "image"] {
        fs::create_dir_all(src.join(d)).unwrap();
        fs::write(src.join(d).join("data"), d).unwrap();
    }
    std::os::unix::fs::symlink("/etc", src.join("etc-link")).unwrap();
    let outside = PathBuf::from(format!("/var/tmp/goldclone-edit-outside-{}", std::process::id()));
    let _ = fs::remove_dir_all(&outside);
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("sub/keep"), "host data").unwrap();
    let drops: Vec<PathBuf> =
        ["containers", "network", "overlay2/l2", "etc-link", "not/there"].map(PathBuf::from).into();
    for (root, name) in roots("edit") {
        // The backend promotes the session itself (ZFS, images): edits need consume.
        let on_zfs =
            matches!(root.backend, BackendKind::Zfs | BackendKind::Zvol | BackendKind::Image);
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let bystander = cache.setup("proj", "bystander").unwrap();
        let s1 = cache.setup("proj", "s1").unwrap();
        fs::write(s1.join("generation"), "2").unwrap();
        for i in 0..10 {
            fs::write(s1.join("sub").join(format!("f{i:03}")), "2").unwrap();
        }
        let s1_ino = fs::metadata(&s1).unwrap().ino();

        // Bad drop paths change nothing.
        for bad in ["../outside", "/etc", "a/../b", ""] {
            let opts =
                PromoteOptions { drop: vec![bad.into()], consume: true, ..Default::default() };
            let err =
                cache.promote_with_options("proj", "s1", &opts, &Watch::default()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name}: {bad:?}: {err}");
        }
        // ZFS promotes the session itself: edits without consume would change it.
        if on_zfs {
            let opts = PromoteOptions { drop: drops.clone(), ..Default::default() };
            let err =
                cache.promote_with_options("proj", "s1", &opts, &Watch::default()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{name}: {err}");
        }

        // A failing hook commits nothing; the session comes back with its dropped paths.
        let seen = std::sync::Mutex::new(Vec::new());
        let failing = |tree: &Path,
                       generation: u64|
         -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            seen.lock().unwrap().push((tree.join("containers").exists(), generation));
            Err("the service's version check failed".into())
        };
        let opts = PromoteOptions { consume: true, drop: drops.clone(), edit: Some(&failing) };
        let err = cache.promote_with_options("proj", "s1", &opts, &Watch::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::EditFailed, "{name}: {err}");
        assert!(err.to_string().contains("version check"), "{name}: {err}");
        assert_eq!(*seen.lock().unwrap(), vec![(false, 2)], "{name}: the hook ran after the drops");
        // A cancelled one too.
        let token = CancelToken::new();
        token.cancel();
        let cancelled = Watch { progress: None, cancel: Some(token) };
        let opts = PromoteOptions { consume: true, drop: drops.clone(), edit: None };
        let err = cache.promote_with_options("proj", "s1", &opts, &cancelled).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{name}: {err}");
        // A drop path through a symlink to the host fails and leaves the host alone.
        fs::remove_dir_all(s1.join("image")).unwrap();
        std::os::unix::fs::symlink(&outside, s1.join("image")).unwrap();
        let opts = PromoteOptions { consume: true, drop: vec!["image/sub".into()], edit: None };
        let err = cache.promote_with_options("proj", "s1", &opts, &Watch::default()).unwrap_err();
        assert_ne!(err.kind(), ErrorKind::EditFailed, "{name}: {err}");
        assert_eq!(fs::read_to_string(outside.join("sub/keep")).unwrap(), "host data", "{name}");
        assert_eq!(cache.info("proj").unwrap().generation, 1, "{name}");
        assert_eq!(cache.generations("proj").unwrap(), vec![1], "{name}");
        assert_eq!(whole_generation(&s1, 10), "2", "{name}: the session after failed promotes");
        for d in ["containers/c1", "network/files", "overlay2/l2"] {
            assert_eq!(fs::read_to_string(s1.join(d).join("data")).unwrap(), d, "{name}: {d}");
        }
        assert_eq!(fs::read_link(s1.join("etc-link")).unwrap(), Path::new("/etc"), "{name}");
        assert!(list(&s1).iter().all(|n| !n.starts_with(".goldclone")), "{name}: {:?}", list(&s1));
        assert_eq!(cache.session_info("proj", "s1").unwrap().generation, 1, "{name}");
        let report = cache.gc().unwrap();
        assert!(report.is_empty(), "{name}: failed promotes left {report:?}");

        // Now it works: drops, a hook that writes a version file, the session consumed.
        fs::remove_file(s1.join("image")).unwrap();
        fs::create_dir(s1.join("image")).unwrap();
        fs::write(s1.join("image/data"), "image").unwrap();
        let hook = |tree: &Path,
                    generation: u64|
         -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            fs::write(tree.join("version"), format!("gen {generation}"))?;
            Ok(())
        };
        let opts = PromoteOptions { consume: true, drop: drops.clone(), edit: Some(&hook) };
        assert_eq!(
            cache.promote_with_options("proj", "s1", &opts, &Watch::default()).unwrap(),
            2,
            "{name}"
        );
        assert!(!s1.exists(), "{name}: a consumed session is still at its place");
        let err = cache.session_info("proj", "s1").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{name}: {err}");
        assert_eq!(
            cache.info("proj").unwrap().sessions,
            vec![("bystander".to_string(), 1)],
            "{name}"
        );
        if root.backend == BackendKind::Copy {
            // Consumed by a rename: the generation is the session's own directory.
            let g = root.path.join("proj/gen/2");
            assert_eq!(fs::metadata(&g).unwrap().ino(), s1_ino, "{name}: the promote copied");
        }
        let s3 = cache.setup("proj", "s3").unwrap();
        assert_eq!(whole_generation(&s3, 10), "2", "{name}");
        assert_eq!(fs::read_to_string(s3.join("version")).unwrap(), "gen 2", "{name}");
        for gone in ["containers", "network", "overlay2/l2", "etc-link"] {
            assert!(fs::symlink_metadata(s3.join(gone)).is_err(), "{name}: {gone} was kept");
        }
        assert!(s3.join("overlay2/l1/data").exists() && s3.join("image/data").exists(), "{name}");
        assert!(list(&s3).iter().all(|n| !n.starts_with(".goldclone")), "{name}: {:?}", list(&s3));
        // The bystander still has everything, on generation 1.
        assert_eq!(whole_generation(&bystander, 10), "1", "{name}");
        assert!(bystander.join("containers/c1/data").exists(), "{name}");
        assert!(!bystander.join("version").exists(), "{name}");

        // Without consume (copy, btrfs): the session stays as it was.
        if !on_zfs {
            fs::write(s3.join("generation"), "3").unwrap();
            for i in 0..10 {
                fs::write(s3.join("sub").join(format!("f{i:03}")), "3").unwrap();
            }
            let opts = PromoteOptions { drop: vec!["image".into()], ..Default::default() };
            assert_eq!(
                cache.promote_with_options("proj", "s3", &opts, &Watch::default()).unwrap(),
                3,
                "{name}"
            );
            assert!(s3.join("image/data").exists(), "{name}: the promoted session was edited");
            let s4 = cache.setup("proj", "s4").unwrap();
            assert_eq!(whole_generation(&s4, 10), "3", "{name}");
            assert!(!s4.join("image").exists(), "{name}");
            cache.cleanup("proj", "s4").unwrap();
        }
        for (s, _) in cache.info("proj").unwrap().sessions {
            cache.cleanup("proj", &s).unwrap();
        }
        let report = cache.gc().unwrap();
        assert!(report.is_empty(), "{name}: {report:?}");
        assert_eq!(cache.generations("proj").unwrap().len(), 1, "{name}: retired generations left");
    }
    assert_eq!(fs::read_to_string(outside.join("sub/keep")).unwrap(), "host data");
    let _ = fs::remove_dir_all(&outside);
    let _ = fs::remove_dir_all(&src);
}

/// Deleting a project on every backend: refused with nothing changed while a session is in use
/// or where its directories hold what no record names; then everything of it goes (sessions of
/// two generations, records, directories, on ZFS its datasets), other projects stay, and the
/// name can be imported again.
#[test]
fn delete_project_on_every_backend() {
    let _shared = shared();
    let src = scratch_tree("delete", "1", 5);
    for (root, name) in roots("delete") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        cache.import("other", &src).unwrap();
        let kept = cache.setup("other", "keep").unwrap();
        let old = cache.setup("proj", "old").unwrap();
        let s1 = cache.setup("proj", "s1").unwrap();
        fs::write(s1.join("generation"), "2").unwrap();
        for i in 0..5 {
            fs::write(s1.join("sub").join(format!("f{i:03}")), "2").unwrap();
        }
        assert_eq!(cache.promote("proj", "s1").unwrap(), 2, "{name}");
        let s3 = cache.setup("proj", "s3").unwrap();
        assert_eq!(cache.generations("proj").unwrap(), vec![1, 2], "{name}");

        assert_eq!(cache.delete_project("ghost").unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(cache.delete_project("../x").unwrap_err().kind(), ErrorKind::InvalidName);
        let before = snapshot_tree(&root.path);
        // In use: refused, nothing changed.
        let mut user = Command::new("sleep")
            .arg("600")
            .current_dir(&old)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let err = cache.delete_project("proj").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy, "{name}: {err}");
        user.kill().unwrap();
        user.wait().unwrap();
        assert_eq!(snapshot_tree(&root.path), before, "{name}: a refused delete changed things");
        assert_eq!(whole_generation(&old, 5), "1", "{name}");
        // Something that is not goldclone's in its directories: refused, left alone.
        let stray = root.path.join("proj/sessions/users-notes");
        fs::create_dir(&stray).unwrap();
        fs::write(stray.join("notes.txt"), "mine").unwrap();
        let err = cache.delete_project("proj").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Damaged, "{name}: {err}");
        assert!(err.to_string().contains("users-notes"), "{name}: {err}");
        assert_eq!(fs::read_to_string(stray.join("notes.txt")).unwrap(), "mine", "{name}");
        fs::remove_dir_all(&stray).unwrap();
        assert_eq!(snapshot_tree(&root.path), before, "{name}");
        assert_eq!(cache.info("proj").unwrap().sessions.len(), 3, "{name}");

        cache.delete_project("proj").unwrap();
        assert_eq!(cache.info("proj").unwrap_err().kind(), ErrorKind::NotFound, "{name}");
        assert!(!cache.has_golden("proj").unwrap(), "{name}");
        assert_eq!(cache.projects().unwrap(), vec!["other".to_string()], "{name}");
        for p in [&old, &s1, &s3] {
            assert!(!p.exists(), "{name}: {} is left", p.display());
        }
        assert!(!root.path.join("proj").exists(), "{name}: the project's directory is left");
        assert!(
            !root.path.join(".goldclone/projects/proj").exists(),
            "{name}: the project's state is left"
        );
        assert!(!root.path.join(".goldclone/trash/proj").exists(), "{name}: trash is left");
        if let Some(zfs) = &root._zfs {
            let listed = Command::new("zfs")
                .args(["list", "-H", "-r", "-t", "all", "-o", "name"])
                .arg(zfs.dataset.as_str())
                .output()
                .unwrap();
            let listed = String::from_utf8_lossy(&listed.stdout);
            assert!(
                !listed.contains("/proj"),
                "{name}: datasets of the project are left: {listed}"
            );
        }
        let report = cache.gc().unwrap();
        assert!(report.is_empty(), "{name}: gc after a delete found {report:?}");
        // The other project is as it was, and the name can be imported again.
        assert_eq!(whole_generation(&kept, 5), "1", "{name}");
        assert_eq!(cache.import("proj", &src).unwrap(), 1, "{name}");
        assert_eq!(whole_generation(&cache.setup("proj", "again").unwrap(), 5), "1", "{name}");
    }
    let _ = fs::remove_dir_all(&src);
}

/// zvol settings: volumes get the configured (or 8 KiB) volblocksize and size, sessions are
/// mounted with `discard`; a block size that is not a power of two from 4 KiB to 128 KiB is
/// refused at open. Runs its zvol part in the ZFS guest (and fails there if it did not).
#[test]
fn zvol_block_size_size_and_discard() {
    let _shared = shared();
    let src = scratch_tree("zvolopts", "1", 3);
    let mut ran = false;
    for (root, name) in roots("zvolopts") {
        for bad in [1000, 2048, 3 << 12, 256 << 10] {
            let opts = OpenOptions {
                backend: Some(root.backend),
                zvol_block_size: bad,
                ..Default::default()
            };
            let err = Cache::open(&root.path, &opts).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name}: {bad}: {err}");
        }
        if root.backend != BackendKind::Zvol {
            continue;
        }
        ran = true;
        let zfs = root._zfs.as_ref().unwrap();
        let get = |prop: &str, dataset: &str| -> String {
            let out = Command::new("zfs")
                .args(["get", "-Hp", "-o", "value", prop, dataset])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let volumes = || -> Vec<String> {
            let out = Command::new("zfs")
                .args(["list", "-H", "-r", "-t", "volume", "-o", "name"])
                .arg(zfs.dataset.as_str())
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
        };
        // The defaults: 8 KiB blocks, at least 16 GiB.
        let cache = open(&root);
        cache.import("dflt", &src).unwrap();
        let s = cache.setup("dflt", "s1").unwrap();
        let head = volumes().into_iter().find(|v| v.contains("/dflt/g")).expect("a head volume");
        assert_eq!(get("volblocksize", &head), "8192", "{name}: {head}");
        assert!(get("volsize", &head).parse::<u64>().unwrap() >= 16 << 30, "{name}");
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(s.to_str().unwrap()))
            .unwrap_or_else(|| panic!("{name}: {} is not mounted", s.display()));
        assert!(line.contains("discard"), "{name}: session mounted without discard: {line}");
        cache.cleanup("dflt", "s1").unwrap();
        drop(cache);
        // Configured.
        let opts = OpenOptions {
            backend: Some(root.backend),
            zvol_size: 2 << 30,
            zvol_block_size: 16 << 10,
            ..Default::default()
        };
        let cache = Cache::open(&root.path, &opts).unwrap();
        cache.import("set", &src).unwrap();
        let head = volumes().into_iter().find(|v| v.contains("/set/g")).expect("a head volume");
        assert_eq!(get("volblocksize", &head), "16384", "{name}");
        assert_eq!(get("volsize", &head), (2u64 << 30).to_string(), "{name}");
    }
    if std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_some() {
        assert!(ran, "the zvol root did not run");
    }
    let _ = fs::remove_dir_all(&src);
}

/// `setup_or_reuse`: a new session the first time, the same one (with what was written into
/// it, on the generation it was made from) afterwards; a session whose place was replaced is
/// Damaged, not reused.
#[test]
fn setup_or_reuse_gives_back_the_session_that_is_there() {
    let _shared = shared();
    use goldclone::golden::Watch;
    let src = scratch_tree("reuse", "1", 3);
    for (root, name) in roots("reuse") {
        let cache = open(&root);
        let err = cache.setup_or_reuse("proj", "s1", &Watch::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{name}: {err}");
        cache.import("proj", &src).unwrap();
        let (s1, reused) = cache.setup_or_reuse("proj", "s1", &Watch::default()).unwrap();
        assert!(!reused, "{name}");
        fs::write(s1.join("work"), "kept").unwrap();
        let s2 = cache.setup("proj", "s2").unwrap();
        fs::write(s2.join("generation"), "2").unwrap();
        for i in 0..3 {
            fs::write(s2.join("sub").join(format!("f{i:03}")), "2").unwrap();
        }
        assert_eq!(cache.promote("proj", "s2").unwrap(), 2, "{name}");
        let (again, reused) = cache.setup_or_reuse("proj", "s1", &Watch::default()).unwrap();
        assert!(reused, "{name}");
        assert_eq!(again, s1, "{name}");
        assert_eq!(fs::read_to_string(again.join("work")).unwrap(), "kept", "{name}");
        assert_eq!(cache.session_info("proj", "s1").unwrap().generation, 1, "{name}");
        assert_eq!(whole_generation(&again, 3), "1", "{name}");
        let err = cache.setup("proj", "s1").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{name}: plain setup: {err}");
        if root.backend == BackendKind::Copy {
            let moved = root.path.join("moved-away");
            fs::rename(&s1, &moved).unwrap();
            std::os::unix::fs::symlink(&moved, &s1).unwrap();
            let err = cache.setup_or_reuse("proj", "s1", &Watch::default()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Damaged, "{name}: {err}");
            fs::remove_file(&s1).unwrap();
            fs::rename(&moved, &s1).unwrap();
        }
        for s in ["s1", "s2"] {
            cache.cleanup("proj", s).unwrap();
        }
    }
    let _ = fs::remove_dir_all(&src);
}

/// Rollbacks of a promote that dropped paths, where putting them back is not simple: a drop
/// inside another drop, a hook that recreates a dropped path before failing, and (copy) a
/// process that got into the session's tree during the promote. The session comes back each
/// time and no data is lost: what cannot go back is kept aside and reported.
#[test]
fn failed_promotes_give_everything_back() {
    let _shared = shared();
    use goldclone::golden::{PromoteOptions, Watch};
    type HookResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
    let src = scratch_tree("giveback", "1", 3);
    for d in ["containers/c1", "overlay2/l1", "overlay2/l2"] {
        fs::create_dir_all(src.join(d)).unwrap();
        fs::write(src.join(d).join("data"), d).unwrap();
    }
    for (root, name) in roots("giveback") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let s1 = cache.setup("proj", "s1").unwrap();
        let promote = |drop: &[&str], hook: &(dyn Fn(&Path, u64) -> HookResult + Sync)| {
            let opts = PromoteOptions {
                consume: true,
                drop: drop.iter().map(PathBuf::from).collect(),
                edit: Some(hook),
            };
            cache.promote_with_options("proj", "s1", &opts, &Watch::default())
        };
        let fail = |_: &Path, _: u64| -> HookResult { Err("no".into()) };

        // A drop inside another: both go back.
        let err = promote(&["overlay2/l2", "overlay2"], &fail).expect_err(name);
        assert_eq!(err.kind(), ErrorKind::EditFailed, "{name}: {err}");
        for d in ["overlay2/l1", "overlay2/l2"] {
            assert_eq!(fs::read_to_string(s1.join(d).join("data")).unwrap(), d, "{name}: {d}");
        }
        assert!(cache.gc().unwrap().is_empty(), "{name}");

        // The hook takes a dropped path's place, then fails: the session is back, the original
        // is kept (aside, reported by gc) or was never touched (btrfs edits a snapshot).
        let retake = |tree: &Path, _: u64| -> HookResult {
            fs::create_dir(tree.join("containers"))?;
            fs::write(tree.join("containers/new"), "hook")?;
            Err("no".into())
        };
        let err = promote(&["containers"], &retake).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::EditFailed, "{name}: {err}");
        assert_eq!(cache.info("proj").unwrap().generation, 1, "{name}");
        let original = "containers/c1";
        match root.backend {
            BackendKind::Btrfs => {
                assert_eq!(fs::read_to_string(s1.join(original).join("data")).unwrap(), original)
            }
            _ => {
                assert_eq!(
                    fs::read_to_string(s1.join("containers/new")).unwrap(),
                    "hook",
                    "{name}"
                );
                let kept_in = if root.backend == BackendKind::Copy {
                    root.path.join(".goldclone/projects/proj")
                } else {
                    s1.clone()
                };
                let aside = list(&kept_in).into_iter().find(|n| n.ends_with(".dropped"));
                let aside = aside.unwrap_or_else(|| panic!("{name}: the original is gone"));
                let data = kept_in.join(aside).join("0/c1/data");
                assert_eq!(fs::read_to_string(&data).unwrap(), original, "{name}");
                if root.backend == BackendKind::Copy {
                    let report = cache.gc().unwrap();
                    assert!(
                        report.kept.iter().any(|k| k.contains(".dropped")),
                        "{name}: gc does not report what was kept aside: {report:?}"
                    );
                }
            }
        }

        // Copy: something gets into the session's tree while the promote runs: Busy, and the
        // session goes back to its place.
        if root.backend == BackendKind::Copy {
            let child = std::sync::Mutex::new(None);
            let enter = |tree: &Path, _: u64| -> HookResult {
                let c = Command::new("sleep").arg("600").current_dir(tree).spawn()?;
                *child.lock().unwrap() = Some(c);
                Ok(())
            };
            let err = promote(&[], &enter).unwrap_err();
            let mut c = child.lock().unwrap().take().unwrap();
            c.kill().unwrap();
            c.wait().unwrap();
            assert_eq!(err.kind(), ErrorKind::Busy, "{name}: {err}");
            assert_eq!(cache.info("proj").unwrap().generation, 1, "{name}");
            assert_eq!(whole_generation(&s1, 3), "1", "{name}: the session is not back");
            assert_eq!(cache.session_info("proj", "s1").unwrap().generation, 1, "{name}");
        }
        cache.cleanup("proj", "s1").unwrap();
    }
    let _ = fs::remove_dir_all(&src);
}

/// Sessions shown at paths their caller chose, on this filesystem and on another: validated
/// before anything is made, the same tree as the session's place, busy through the path,
/// shown again after a reboot took the bind, and taken away (bind and directory, nothing
/// else) by cleanup, a consuming promote and delete.
#[test]
fn sessions_at_callers_paths() {
    let _shared = shared();
    use goldclone::golden::{PromoteOptions, SetupOptions, Watch};
    let src = scratch_tree("at", "1", 3);
    let at = |p: &Path, reuse: bool| SetupOptions { at: Some(p.to_path_buf()), reuse };
    for (root, name) in roots("at") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let base = PathBuf::from(format!("{}-shown", root.path.display()));
        let other_fs =
            PathBuf::from(format!("/dev/shm/goldclone-at-{name}-{}", std::process::id()));
        for d in [&base, &other_fs] {
            let _ = fs::remove_dir_all(d);
            fs::create_dir_all(d).unwrap();
        }
        let p1 = base.join("s1");
        let (got, reused) =
            cache.setup_with_options("proj", "s1", &at(&p1, false), &Watch::default()).unwrap();
        assert_eq!((got.as_path(), reused), (p1.as_path(), false), "{name}");
        assert!(common::is_mount_point(&p1), "{name}: not a mount");
        assert_eq!(whole_generation(&p1, 3), "1", "{name}");
        fs::write(p1.join("work"), "through the path").unwrap();
        let place = root.path.join("proj/sessions/s1");
        assert_eq!(fs::read_to_string(place.join("work")).unwrap(), "through the path", "{name}");
        let info = cache.session_info("proj", "s1").unwrap();
        assert_eq!((info.path.as_path(), info.attached), (p1.as_path(), true), "{name}");
        assert!(!info.in_use(), "{name}: our own bind counts as a holder: {:?}", info.holders);

        // Bad paths: a typed error, and neither a session nor anything at the path.
        fs::write(base.join("file"), "x").unwrap();
        fs::create_dir_all(base.join("real")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        fs::create_dir_all(base.join("empty")).unwrap();
        let bad: Vec<(PathBuf, ErrorKind)> = vec![
            ("relative/s2".into(), ErrorKind::InvalidArgument),
            (base.join("real/../s2"), ErrorKind::InvalidArgument),
            (PathBuf::from(format!("{}/", base.join("s2").display())), ErrorKind::InvalidArgument),
            (p1.clone(), ErrorKind::AlreadyExists),
            (base.join("empty"), ErrorKind::AlreadyExists),
            (base.join("file"), ErrorKind::AlreadyExists),
            (base.join("missing/s2"), ErrorKind::NotFound),
            (base.join("file/s2"), ErrorKind::NotADirectory),
            (base.join("link/s2"), ErrorKind::InvalidArgument),
            (root.path.join("s2"), ErrorKind::InvalidArgument),
            (root.path.join("proj/sessions/s1/s2"), ErrorKind::InvalidArgument),
            (p1.join("s2"), ErrorKind::InvalidArgument),
            (p1.join("sub/s2"), ErrorKind::InvalidArgument),
        ];
        for (p, kind) in bad {
            let err = cache.setup_with_options("proj", "s2", &at(&p, false), &Watch::default());
            let err = err.expect_err(&format!("{name}: {} was taken", p.display()));
            assert_eq!(err.kind(), kind, "{name}: {}: {err}", p.display());
            assert_eq!(
                cache.session_info("proj", "s2").unwrap_err().kind(),
                ErrorKind::NotFound,
                "{name}: {}",
                p.display()
            );
            assert!(!root.path.join("proj/sessions/s2").exists(), "{name}: {}", p.display());
        }
        assert!(!base.join("real/s2").exists() && !p1.join("s2").exists(), "{name}");
        assert_eq!(fs::read_to_string(base.join("file")).unwrap(), "x", "{name}");
        let mut left = list(&base);
        left.sort();
        assert_eq!(left, ["empty", "file", "link", "real", "s1"].map(String::from), "{name}");

        // In use through the path: busy, nothing changes.
        let mut user = Command::new("sleep")
            .arg("600")
            .current_dir(&p1)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        match cache.cleanup("proj", "s1") {
            Err(Error::SessionBusy { pids, .. }) => assert!(pids.contains(&user.id()), "{name}"),
            other => panic!("{name}: cleanup of a session in use through its path: {other:?}"),
        }
        assert!(cache.session_info("proj", "s1").unwrap().in_use(), "{name}");
        assert!(common::is_mount_point(&p1), "{name}");
        user.kill().unwrap();
        user.wait().unwrap();

        // Reuse: the same path gives the session back, another path is refused.
        let (again, reused) =
            cache.setup_with_options("proj", "s1", &at(&p1, true), &Watch::default()).unwrap();
        assert_eq!((again.as_path(), reused), (p1.as_path(), true), "{name}");
        let err = cache
            .setup_with_options("proj", "s1", &at(&base.join("elsewhere"), true), &Watch::default())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name}: {err}");
        assert!(!base.join("elsewhere").exists(), "{name}");
        // A reboot takes the bind: the record stays, reuse shows the session there again.
        rustix::mount::unmount(&p1, rustix::mount::UnmountFlags::empty()).unwrap();
        assert!(!cache.session_info("proj", "s1").unwrap().attached, "{name}");
        let (again, reused) =
            cache.setup_with_options("proj", "s1", &at(&p1, true), &Watch::default()).unwrap();
        assert!(reused && common::is_mount_point(&again), "{name}");
        assert_eq!(fs::read_to_string(p1.join("work")).unwrap(), "through the path", "{name}");

        // A promote keeps the session where it is shown; a consuming one takes it from there.
        assert_eq!(cache.promote("proj", "s1").unwrap(), 2, "{name}");
        assert!(common::is_mount_point(&p1), "{name}");
        let p3 = other_fs.join("s3");
        cache.setup_with_options("proj", "s3", &at(&p3, false), &Watch::default()).unwrap();
        fs::write(p3.join("from-s3"), "3").unwrap();
        let consume = PromoteOptions { consume: true, ..Default::default() };
        assert_eq!(
            cache.promote_with_options("proj", "s3", &consume, &Watch::default()).unwrap(),
            3
        );
        assert!(!p3.exists(), "{name}: a consumed session's path is left");
        let probe = cache.setup("proj", "probe").unwrap();
        assert_eq!(fs::read_to_string(probe.join("from-s3")).unwrap(), "3", "{name}");
        cache.cleanup("proj", "probe").unwrap();

        // Cleanup takes the bind and the directory away, and nothing that is not ours.
        cache.cleanup("proj", "s1").unwrap();
        assert!(!p1.exists() && !place.exists(), "{name}: cleanup left the path or the tree");
        let p4 = base.join("s4");
        cache.setup_with_options("proj", "s4", &at(&p4, false), &Watch::default()).unwrap();
        rustix::mount::unmount(&p4, rustix::mount::UnmountFlags::empty()).unwrap();
        fs::write(p4.join("users-file"), "mine").unwrap();
        cache.cleanup("proj", "s4").unwrap();
        assert_eq!(fs::read_to_string(p4.join("users-file")).unwrap(), "mine", "{name}");
        fs::remove_dir_all(&p4).unwrap();

        // Delete takes every session's path away.
        let p5 = other_fs.join("s5");
        cache.setup_with_options("proj", "s5", &at(&p5, false), &Watch::default()).unwrap();
        cache.delete_project("proj").unwrap();
        assert!(!p5.exists(), "{name}: delete left a session's path");
        let report = cache.gc().unwrap();
        assert!(report.is_empty(), "{name}: {report:?}");
        for d in [&base, &other_fs] {
            fs::remove_dir_all(d).unwrap();
        }
    }
    let _ = fs::remove_dir_all(&src);
}

/// Info's size: counted by a walk once per generation where the backend keeps no count (the
/// count is kept beside the records), read from ZFS where it does; a promote's new content is
/// in the next generation's size, and the kept count follows the current generation.
#[test]
fn info_size_is_counted_once_per_generation() {
    let _shared = shared();
    let src = scratch_tree("size", "1", 3);
    for (root, name) in roots("size") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let first = cache.info("proj").unwrap().size_bytes;
        assert!(first > 0, "{name}");
        let kept = root.path.join(".goldclone/projects/proj/size.json");
        let walks =
            !matches!(root.backend, BackendKind::Zfs | BackendKind::Zvol | BackendKind::Image);
        assert_eq!(kept.exists(), walks, "{name}: a kept count only where a walk made it");
        assert_eq!(cache.info("proj").unwrap().size_bytes, first, "{name}");
        let s = cache.setup("proj", "s").unwrap();
        fs::write(s.join("big"), noise(4 << 20, 0)).unwrap();
        assert_eq!(cache.promote("proj", "s").unwrap(), 2, "{name}");
        let second = cache.info("proj").unwrap().size_bytes;
        assert!(second >= first + (4 << 20) - (64 << 10), "{name}: {first} -> {second}");
        if walks {
            let text = fs::read_to_string(&kept).unwrap();
            assert!(
                text.contains("\"generation\": 2") || text.contains("\"generation\":2"),
                "{name}: {text}"
            );
        }
        cache.cleanup("proj", "s").unwrap();
        cache.delete_project("proj").unwrap();
        assert!(!root.path.join(".goldclone/projects/proj").exists(), "{name}: state left");
    }
    let _ = fs::remove_dir_all(&src);
}

/// The lazy-cleanup test makes a mount namespace, which starts as a copy of every mount there
/// is, other tests' sessions among them, until it lets go of them: for that moment they are
/// held (rightly). It runs alone; the others share.
static NAMESPACES: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    NAMESPACES.read().unwrap_or_else(|p| p.into_inner())
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    NAMESPACES.write().unwrap_or_else(|p| p.into_inner())
}

/// `btrfs` as the test filesystem's tools print it, checked.
fn btrfs_cli(args: &[&str]) -> String {
    let out = Command::new("btrfs").args(args).output().expect("btrfs (btrfs-progs) runs");
    assert!(out.status.success(), "btrfs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The `rfer` of qgroup `0/<subvolume of path>`, as `btrfs qgroup show` prints it.
fn qgroup_rfer(mnt: &Path, path: &Path) -> u64 {
    let id = btrfs_cli(&["inspect-internal", "rootid", path.to_str().unwrap()]);
    let want = format!("0/{}", id.trim());
    let table = btrfs_cli(&["qgroup", "show", "--raw", "--sync", mnt.to_str().unwrap()]);
    let row = table.lines().find(|l| l.split_whitespace().next() == Some(want.as_str()));
    let row = row.unwrap_or_else(|| panic!("no qgroup {want} in\n{table}"));
    row.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// On btrfs with quotas on, a generation's size is its subvolume's qgroup count, read (no walk,
/// nothing kept beside the records); with quotas off the tree is walked once, as elsewhere.
#[test]
fn btrfs_sizes_come_from_qgroups_where_quotas_are_on() {
    let _shared = shared();
    if std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_some() {
        return; // the ZFS guest has no btrfs; the host's run of this suite has this test
    }
    let Some(mnt) = common::mount(common::Fs::BtrfsQuota) else { return };
    // Quotas on and the counts consistent, also after an earlier run of this test.
    btrfs_cli(&["quota", "enable", mnt.to_str().unwrap()]);
    btrfs_cli(&["quota", "rescan", "-w", mnt.to_str().unwrap()]);
    let root = common::Scratch::new(&mnt, "qgroup");
    let src = scratch_tree("qgroup", "1", 3);
    fs::write(src.join("big"), noise(4 << 20, 1)).unwrap();
    let opts = OpenOptions { backend: Some(BackendKind::Btrfs), ..Default::default() };
    let cache = Cache::open(&root.path, &opts).unwrap();
    cache.import("proj", &src).unwrap();
    let kept = root.join(".goldclone/projects/proj/size.json");

    let first = cache.info("proj").unwrap().size_bytes;
    assert_eq!(first, qgroup_rfer(&mnt, &root.join("proj/gen/1")), "the qgroup's count");
    assert!(first >= 4 << 20, "{first}: the 4 MiB file is counted");
    assert!(!kept.exists(), "a count read from the qgroup is not kept");

    let s = cache.setup("proj", "s").unwrap();
    fs::write(s.join("big2"), noise(8 << 20, 2)).unwrap();
    assert_eq!(cache.promote("proj", "s").unwrap(), 2);
    let second = cache.info("proj").unwrap().size_bytes;
    assert_eq!(second, qgroup_rfer(&mnt, &root.join("proj/gen/2")));
    // Shared extents are referenced by both generations: counted in each.
    assert!(second >= first + (8 << 20), "{first} -> {second}");
    assert!(!kept.exists());

    // Without quotas there is no count to read: a walk, kept for the generation.
    btrfs_cli(&["quota", "disable", mnt.to_str().unwrap()]);
    let walked = cache.info("proj").unwrap().size_bytes;
    assert!(walked >= 12 << 20, "{walked}");
    assert!(kept.exists(), "the walk's count is kept");
    cache.cleanup("proj", "s").unwrap();
    cache.delete_project("proj").unwrap();
    btrfs_cli(&["quota", "enable", mnt.to_str().unwrap()]);
    let _ = fs::remove_dir_all(&src);
}

/// `len` bytes that do not compress (ZFS compresses by default), different for each `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A lazy cleanup of a session in use (the service's stop of a container that is still
/// busy): the session is gone for the API and from its paths at once, its user keeps working
/// in it, gc keeps its tree while it is held and removes it after, and delete waits for it.
#[test]
fn lazy_cleanup_of_a_session_in_use() {
    let _alone = alone();
    use goldclone::golden::{Cleaned, CleanupOptions, SetupOptions, Watch};
    let src = scratch_tree("lazy", "1", 3);
    let lazy = CleanupOptions { lazy: true };
    for (root, name) in roots("lazy") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        // Free: a lazy cleanup is a cleanup.
        cache.setup("proj", "free").unwrap();
        assert_eq!(cache.cleanup_with_options("proj", "free", &lazy).unwrap(), Cleaned::Removed);
        assert!(!root.path.join("proj/sessions/free").exists(), "{name}");

        let base = PathBuf::from(format!("{}-shown", root.path.display()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        // s1 at a caller's path, used from a mount namespace of its own (as a container
        // uses it); s2 at its place, used from ours.
        let p1 = base.join("s1");
        let opts = SetupOptions { at: Some(p1.clone()), reuse: false };
        cache.setup_with_options("proj", "s1", &opts, &Watch::default()).unwrap();
        let s2 = cache.setup("proj", "s2").unwrap();
        let mut users = vec![
            // The namespace starts as a copy of ours: other tests' sessions at callers' paths
            // (their binds) and their mounted sessions (images) are let go there first, or
            // they would be held by it.
            Command::new("unshare")
                .args(["-m", "sh", "-c"])
                .arg(format!(
                    "awk '($5 ~ /-shown\\// || $5 ~ /\\/sessions\\//) && $5 != \"{0}\" && \
                     index($5, \"{1}/\") != 1 {{print $5}}' /proc/self/mountinfo \
                     | while read -r m; do umount -l \"$m\"; done; cd {0} && exec sleep 600",
                    p1.display(),
                    root.path.display()
                ))
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
            Command::new("sleep")
                .arg("600")
                .current_dir(&s2)
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        ];
        let cwd = |u: &std::process::Child| PathBuf::from(format!("/proc/{}/cwd", u.id()));
        while !cwd(&users[0]).join("generation").exists() {
            std::thread::sleep(Duration::from_millis(20)); // until the shell is in the session
        }
        for (session, user) in ["s1", "s2"].iter().zip(&users) {
            match cache.cleanup_with_options("proj", session, &lazy).unwrap() {
                Cleaned::Detached { holders } => assert!(
                    holders.iter().any(|h| h.contains(&user.id().to_string())),
                    "{name} {session}: {holders:?}"
                ),
                other => panic!("{name} {session}: a lazy cleanup of a session in use: {other:?}"),
            }
            // Gone for everyone new; still there for its user.
            let err = cache.session_info("proj", session).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NotFound, "{name} {session}");
            assert!(!root.path.join("proj/sessions").join(session).exists(), "{name} {session}");
            assert_eq!(whole_generation(&cwd(user), 3), "1", "{name} {session}: tree lost");
            fs::write(cwd(user).join("still-writing"), "yes").unwrap();
        }
        // Not shown at the caller's path here any more; the directory stays while the session
        // is in use (removing it would take the path from the user's own namespace too).
        assert!(!common::is_mount_point(&p1), "{name}: still mounted at the caller's path");
        assert!(common::names(&p1).is_empty(), "{name}");
        let report = cache.gc().unwrap();
        for session in ["s1", "s2"] {
            assert!(
                report.kept.iter().any(|k| k.contains(session) && k.contains("removed once free")),
                "{name} {session}: {report:?}"
            );
        }
        assert!(report.failed.is_empty() && report.removed.is_empty(), "{name}: {report:?}");
        for user in &users {
            assert_eq!(whole_generation(&cwd(user), 3), "1", "{name}: gc removed a tree in use");
        }
        match cache.delete_project("proj") {
            Err(Error::SessionBusy { .. }) => {}
            other => panic!("{name}: delete while a detached session is in use gave {other:?}"),
        }
        assert!(cache.has_golden("proj").unwrap(), "{name}");
        for user in &mut users {
            user.kill().unwrap();
            user.wait().unwrap();
        }
        // Freed: gc removes them (a zvol's block device is let go a moment after its XFS).
        let mut removed = false;
        for _ in 0..100 {
            let report = cache.gc().unwrap();
            assert!(report.failed.is_empty(), "{name}: {report:?}");
            if report.kept.is_empty() {
                removed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(removed, "{name}: gc kept the freed sessions' trees");
        assert!(!p1.exists(), "{name}: gc left the caller's path");
        assert!(cache.gc().unwrap().is_empty(), "{name}");
        cache.setup("proj", "s1").unwrap();
        cache.cleanup("proj", "s1").unwrap();
        cache.delete_project("proj").unwrap();
        fs::remove_dir_all(&base).unwrap();
    }
    let _ = fs::remove_dir_all(&src);
}

/// A directory imported as the next generation of an existing project: older sessions keep
/// theirs, new sessions see exactly the new tree (nothing of the old one), the previous
/// generation goes with its last session, promotes and further imports continue the chain, and
/// bad input or a stop changes nothing.
#[test]
fn import_next_makes_a_directory_the_next_generation() {
    let _shared = shared();
    use goldclone::copy::CancelToken;
    use goldclone::golden::Watch;
    const FILES: usize = 20;
    let first = scratch_tree("next-1", "1", FILES);
    fs::write(first.join("only-in-1"), "old").unwrap();
    let second = scratch_tree("next-3", "3", FILES);
    fs::create_dir_all(second.join("new/deeper")).unwrap();
    fs::write(second.join("new/deeper/only-in-3"), "new").unwrap();
    for (root, name) in roots("next") {
        let cache = open(&root);
        let err = cache.import_next("proj", &second).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{name}: {err}");
        assert!(!root.path.join("proj").exists(), "{name}: made a project");
        cache.import("proj", &first).unwrap();
        let old = cache.setup("proj", "old").unwrap();
        fs::write(old.join("written"), "by the session").unwrap();

        // Bad input and a stopped import: typed errors, nothing changed.
        let before = snapshot_tree(&root.path);
        for (project, dir, kind) in [
            ("proj", root.path.join("missing"), ErrorKind::NotFound),
            ("proj", first.join("generation"), ErrorKind::NotADirectory),
            ("proj", root.path.parent().unwrap().to_path_buf(), ErrorKind::InvalidArgument),
            ("../proj", second.clone(), ErrorKind::InvalidName),
            ("other", second.clone(), ErrorKind::NotFound),
        ] {
            let err = cache.import_next(project, &dir).unwrap_err();
            assert_eq!(err.kind(), kind, "{name}: {project} {}: {err}", dir.display());
        }
        let stop = CancelToken::new();
        stop.cancel();
        let err = cache
            .import_next_with("proj", &second, &Watch { progress: None, cancel: Some(stop) })
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{name}: {err}");
        assert_eq!(snapshot_tree(&root.path), before, "{name}: a failed import changed the root");
        assert_eq!(cache.generations("proj").unwrap(), vec![1], "{name}");

        assert_eq!(cache.import_next("proj", &second).unwrap(), 2, "{name}");
        assert_eq!(cache.info("proj").unwrap().generation, 2, "{name}");
        assert_eq!(whole_generation(&old, FILES), "1", "{name}: the old session changed");
        assert_eq!(fs::read_to_string(old.join("written")).unwrap(), "by the session", "{name}");
        assert!(old.join("only-in-1").exists(), "{name}");
        let new = cache.setup("proj", "new").unwrap();
        assert_eq!(whole_generation(&new, FILES), "3", "{name}");
        assert!(!new.join("only-in-1").exists(), "{name}: the old tree shows through");
        assert_eq!(fs::read_to_string(new.join("new/deeper/only-in-3")).unwrap(), "new");
        assert_eq!(cache.generations("proj").unwrap(), vec![1, 2], "{name}: 1 has a session");

        // The chain goes on: a promote, then an import with no session of the current
        // generation, whose predecessor goes at once.
        golden_tree(&new, "4", FILES);
        assert_eq!(cache.promote("proj", "new").unwrap(), 3, "{name}");
        cache.cleanup("proj", "new").unwrap();
        assert_eq!(cache.generations("proj").unwrap(), vec![1, 3], "{name}");
        assert_eq!(current_marker(&cache, FILES), "4", "{name}");
        assert_eq!(cache.import_next("proj", &first).unwrap(), 4, "{name}");
        assert_eq!(cache.generations("proj").unwrap(), vec![1, 4], "{name}");
        assert_eq!(current_marker(&cache, FILES), "1", "{name}");

        // The oldest session still works, and its generation goes with it.
        assert_eq!(whole_generation(&old, FILES), "1", "{name}");
        cache.cleanup("proj", "old").unwrap();
        assert_eq!(cache.generations("proj").unwrap(), vec![4], "{name}");
        let report = cache.gc().unwrap();
        assert!(report.is_empty(), "{name}: {report:?}");
        cache.delete_project("proj").unwrap();
    }
    let _ = fs::remove_dir_all(&first);
    let _ = fs::remove_dir_all(&second);
}

/// The extents of file `path` as FIEMAP maps them (what a FICLONE walks; `filefrag` merges
/// physically adjacent ones in its count).
fn extents(path: &Path) -> u64 {
    #[repr(C)]
    struct Fiemap {
        start: u64,
        length: u64,
        flags: u32,
        mapped: u32,
        count: u32,
        reserved: u32,
    }
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut map = Fiemap { start: 0, length: u64::MAX, flags: 0, mapped: 0, count: 0, reserved: 0 };
    // FS_IOC_FIEMAP = _IOWR('f', 11, struct fiemap)
    // SAFETY: the fd is open; with count 0 the kernel writes only the 32-byte header `map`.
    let rc = unsafe {
        libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), 0xC020_660B, &mut map as *mut Fiemap)
    };
    assert_eq!(rc, 0, "FIEMAP {}: {}", path.display(), std::io::Error::last_os_error());
    u64::from(map.mapped)
}

/// Image backend: promoting a session whose image is fragmented (its blocks written one in two
/// after they were shared with a generation) gives a generation whose image is rewritten
/// sequentially, so that sessions from it clone in bounded time; its content is the session's.
#[test]
fn a_fragmented_image_is_rewritten_at_promote() {
    let _shared = shared();
    let src = scratch_tree("frag", "1", 3);
    let mut ran = 0;
    for (root, name) in roots("frag") {
        // Where images are copied (ext4), a session's writes land in its own blocks: nothing
        // to fragment.
        if root.backend != BackendKind::Image || name == "image-ext4" {
            continue;
        }
        ran += 1;
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let s = cache.setup("proj", "s").unwrap();
        let big = s.join("big");
        fs::write(&big, noise(48 << 20, 3)).unwrap();
        assert_eq!(cache.promote("proj", "s").unwrap(), 2, "{name}");
        // Its blocks are shared with generation 2 now: each one overwritten is copied on write,
        // one extent apart from the next.
        let mut want = noise(48 << 20, 3);
        {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new().write(true).open(&big).unwrap();
            for block in (0..(48 << 20) / 4096).step_by(2) {
                let at = block * 4096;
                want[at..at + 4096].fill(0x5a);
                f.write_all_at(&want[at..at + 4096], at as u64).unwrap();
            }
            f.sync_all().unwrap();
        }
        let session_image = root.path.join(".goldclone/images/proj/s");
        // The inner XFS's writes reach the image once it is frozen (as promote does).
        assert_eq!(cache.promote("proj", "s").unwrap(), 3, "{name}");
        let fragmented = extents(&session_image);
        assert!(fragmented > 4096, "{name}: the session's image has only {fragmented} extents");
        let generation = extents(&root.path.join("proj/gen/3"));
        assert!(generation <= 4096, "{name}: generation 3 kept {generation} extents");
        let s2 = cache.setup("proj", "s2").unwrap();
        assert!(fs::read(s2.join("big")).unwrap() == want, "{name}: the rewrite changed the data");
        for session in ["s", "s2"] {
            cache.cleanup("proj", session).unwrap();
        }
        // Generation 2 went with its last session's promote; nothing else is left.
        let report = cache.gc().unwrap();
        assert!(report.kept.is_empty() && report.failed.is_empty(), "{name}: {report:?}");
        assert!(cache.gc().unwrap().is_empty(), "{name}");
    }
    if std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_none() {
        assert_eq!(ran, 2, "the image roots did not run");
    }
    let _ = fs::remove_dir_all(&src);
}

/// The backend a cache gets without asking: images on a filesystem that reflinks (XFS) and on
/// one that does not but has a block device (ext4: copied sparsely), btrfs subvolumes on
/// btrfs, the tree copy on tmpfs; detection says whether the image backend can run, and why
/// not.
#[test]
fn the_default_backend_follows_the_filesystem() {
    let _shared = shared();
    if std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_some() {
        return; // the host's filesystems; the host's run of this suite has this test
    }
    for (fs_kind, want, image_ok) in [
        (common::Fs::Xfs, BackendKind::Image, true),
        (common::Fs::Btrfs, BackendKind::Btrfs, true),
        // No reflink: images copied sparsely, still ahead of the tree copy at a golden's size.
        (common::Fs::Ext4, BackendKind::Image, true),
        // No block device: images would be memory.
        (common::Fs::Tmpfs, BackendKind::Copy, false),
    ] {
        let Some(mnt) = common::mount(fs_kind) else { return };
        let root = common::Scratch::new(&mnt, "default");
        let found = goldclone::detect::detect(&root.path).unwrap();
        assert_eq!(found.image_backend.is_none(), image_ok, "{fs_kind:?}: {found:?}");
        let cache = Cache::open(&root.path, &OpenOptions::default()).unwrap();
        assert_eq!(cache.backend(), want, "{fs_kind:?}");
        // A cache made with another backend keeps it when opened without asking (a default
        // that changed must not turn an existing cache away).
        let made_as_copy = common::Scratch::new(&mnt, "default-copy");
        let copy = OpenOptions { backend: Some(BackendKind::Copy), ..Default::default() };
        drop(Cache::open(&made_as_copy.path, &copy).unwrap());
        let reopened = Cache::open(&made_as_copy.path, &OpenOptions::default()).unwrap();
        assert_eq!(reopened.backend(), BackendKind::Copy, "{fs_kind:?}: the recorded backend");
        // On ext4 the default image backend works (images copied sparsely).
        if fs_kind == common::Fs::Ext4 {
            let src = scratch_tree("default", "1", 3);
            cache.import("proj", &src).unwrap();
            let s = cache.setup("proj", "s").unwrap();
            assert_eq!(whole_generation(&s, 3), "1");
            cache.cleanup("proj", "s").unwrap();
            cache.delete_project("proj").unwrap();
            let _ = fs::remove_dir_all(&src);
        }
    }
}

fn syncfs(dir: &Path) {
    let f = fs::File::open(dir).unwrap();
    rustix::fs::syncfs(&f).unwrap();
}

/// Allocated bytes of a file.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

/// Fill the filesystem of `dir` with files of 1 MiB until it refuses one; the files.
fn fill_up(dir: &Path) -> Vec<PathBuf> {
    fs::create_dir_all(dir).unwrap();
    let mut files = Vec::new();
    for i in 0.. {
        let f = dir.join(format!("filler{i}"));
        let Ok(file) = fs::File::create(&f) else { break }; // no inode or block left for it
        let r = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, 1 << 20);
        files.push(f);
        if r.is_err() {
            break;
        }
    }
    files
}

/// A tree of `n` files of 100 MiB under `dir`, reflinked from one where the filesystem can.
fn big_tree(dir: &Path, n: usize) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("blob0"), noise(100 << 20, 9)).unwrap();
    for i in 1..n {
        let to = dir.join(format!("blob{i}"));
        let status = Command::new("cp")
            .args(["--reflink=auto"])
            .arg(dir.join("blob0"))
            .arg(&to)
            .status()
            .unwrap();
        assert!(status.success(), "cp --reflink {}", to.display());
    }
}

/// Image backend, space: an image has the configured size (by default more, and room for the
/// tree); blocks freed inside a session go back to the cache's filesystem (discard, which the
/// loop device turns into a hole punched in the session's image); a session that fills its
/// image gets ENOSPC and goes on; an import of a tree that does not fit in the image, and an
/// import or a setup on a full cache filesystem, fail with NoSpace saying which filesystem is
/// full and leave nothing behind (no file, no loop device).
#[test]
fn image_space_is_given_back_and_runs_out_clearly() {
    let _shared = shared();
    if std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_some() {
        return; // the host's filesystems; the host's run of this suite has this test
    }
    let src = scratch_tree("space", "1", 3);
    let sized = |root: &Path| {
        let opts = OpenOptions {
            backend: Some(BackendKind::Image),
            image_size: 512 << 20,
            ..Default::default()
        };
        Cache::open(root, &opts).unwrap()
    };
    let mut ran = 0;
    for (root, name) in roots("space") {
        if root.backend != BackendKind::Image {
            continue;
        }
        ran += 1;
        let cache = open(&root);
        cache.import("dflt", &src).unwrap();
        let default_size = fs::metadata(root.path.join("dflt/gen/1")).unwrap().len();
        assert!(default_size > 512 << 20, "{name}: default image size {default_size}");
        drop(cache);
        let cache = sized(&root.path);
        cache.import("proj", &src).unwrap();
        assert_eq!(fs::metadata(root.path.join("proj/gen/1")).unwrap().len(), 512 << 20, "{name}");

        // Freed blocks return: XFS discards them once its log checkpoint that frees them has
        // committed (asynchronously, within seconds), the loop device punches them out.
        let s = cache.setup("proj", "s").unwrap();
        let image = root.path.join(".goldclone/images/proj/s");
        let base = allocated(&image);
        fs::write(s.join("big"), noise(64 << 20, 5)).unwrap();
        syncfs(&s);
        let grown = allocated(&image);
        assert!(grown >= base + (60 << 20), "{name}: the image grew {base} -> {grown}");
        fs::remove_file(s.join("big")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while allocated(&image) > base + (8 << 20) && std::time::Instant::now() < deadline {
            syncfs(&s);
            std::thread::sleep(Duration::from_millis(500));
        }
        let after = allocated(&image);
        assert!(
            after <= base + (8 << 20),
            "{name}: freed blocks stayed in the session's image: {base} -> {grown} -> {after}"
        );

        // A session that fills its image: ENOSPC to the writer, and the session goes on.
        let err = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = fs::File::create(s.join("fill"))?;
            let chunk = noise(1 << 20, 6);
            for _ in 0..1024 {
                f.write_all(&chunk)?;
            }
            f.sync_all()
        })()
        .expect_err("1 GiB fitted into a 512 MiB image");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{name}: {err}");
        fs::remove_file(s.join("fill")).unwrap();
        fs::write(s.join("after"), "still here").unwrap();
        syncfs(&s);
        assert_eq!(fs::read_to_string(s.join("after")).unwrap(), "still here", "{name}");
        assert_eq!(whole_generation(&s, 3), "1", "{name}");
        cache.cleanup("proj", "s").unwrap();

        // A tree that does not fit in the image's 512 MiB.
        let big =
            root.path.parent().unwrap().join(format!("space-big-{name}-{}", std::process::id()));
        big_tree(&big, 6);
        let before = snapshot_tree(&root.path);
        let e = cache.import("large", &big).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NoSpace, "{name}: {e}");
        assert!(matches!(e, Error::NoSpace { .. }), "{name}: {e:?}");
        assert!(e.to_string().contains("image's own filesystem"), "{name}: {e}");
        assert_eq!(snapshot_tree(&root.path), before, "{name}: the failed import left something");
        assert_eq!(
            common::lasting_loop_devices_under(&root.path, false),
            Vec::<String>::new(),
            "{name}"
        );
        let _ = fs::remove_dir_all(&big);
        assert!(cache.gc().unwrap().is_empty(), "{name}");
    }
    assert_eq!(ran, 3, "the image roots did not run");

    // The cache's filesystem full (a 320 MiB XFS).
    let Some([small, xfs]) = common::mounts([common::Fs::SmallXfs, common::Fs::Xfs]) else {
        return;
    };
    let root = common::Scratch::new(&small, "space-host");
    let fillers = small.join(format!("space-fillers-{}", std::process::id()));
    let cache = sized(&root.path);
    let host_full = |e: &Error, what: &str| {
        assert_eq!(e.kind(), ErrorKind::NoSpace, "{what}: {e}");
        assert!(e.to_string().contains("filesystem holding the cache's images"), "{what}: {e}");
    };
    // An import that the filesystem cannot hold.
    let big = common::Scratch::new(&xfs, "space-big-src");
    big_tree(&big.path, 4);
    let before = snapshot_tree(&root.path);
    let e = cache.import("large", &big.path).unwrap_err();
    host_full(&e, "import");
    assert_eq!(snapshot_tree(&root.path), before, "the failed import left something");
    assert_eq!(common::lasting_loop_devices_under(&root.path, false), Vec::<String>::new());
    // A setup while it is full: refused, nothing left; once there is room, it works.
    cache.import("proj", &src).unwrap();
    let filled = fill_up(&fillers);
    let before = snapshot_tree(&root.path);
    let e = cache.setup("proj", "s").unwrap_err();
    host_full(&e, "setup");
    assert_eq!(snapshot_tree(&root.path), before, "the failed setup left something");
    assert_eq!(common::lasting_loop_devices_under(&root.path, false), Vec::<String>::new());
    assert!(cache.info("proj").unwrap().sessions.is_empty());
    for f in &filled {
        fs::remove_file(f).unwrap();
    }
    let s = cache.setup("proj", "s").unwrap();
    assert_eq!(whole_generation(&s, 3), "1");
    // Full under a running session: its writer is told at sync (the image's blocks are
    // allocated at writeback), never silently.
    let filled = fill_up(&fillers);
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(s.join("data"))?;
        std::io::Write::write_all(&mut f, &noise(16 << 20, 7))?;
        f.sync_all()
    })();
    let err = written.expect_err("16 MiB written to a full filesystem");
    assert!(matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EIO)), "{err}");
    for f in &filled {
        fs::remove_file(f).unwrap();
    }
    cache.cleanup("proj", "s").unwrap();
    assert!(cache.gc().unwrap().is_empty());
    assert_eq!(common::lasting_loop_devices_under(&root.path, false), Vec::<String>::new());
    let _ = fs::remove_dir_all(&fillers);

    // Where images are copied (ext4, no reflink), the same on its small filesystem: the image's
    // XFS cannot even be made there.
    let Some(ext4) = common::mount(common::Fs::Small) else { return };
    let root = common::Scratch::new(&ext4, "space-ext4");
    let cache = sized(&root.path);
    // Full but for 2 MiB: whatever mkfs writes (its log first) does not fit.
    let fillers = ext4.join(format!("space-fillers-{}", std::process::id()));
    let filled = fill_up(&fillers);
    for f in filled.iter().rev().take(3) {
        fs::remove_file(f).unwrap();
    }
    let before = snapshot_tree(&root.path);
    host_full(&cache.import("proj", &src).unwrap_err(), "import on the small ext4");
    assert_eq!(snapshot_tree(&root.path), before, "the failed import left something");
    assert_eq!(common::lasting_loop_devices_under(&root.path, false), Vec::<String>::new());
    let _ = fs::remove_dir_all(&fillers);
    let _ = fs::remove_dir_all(&src);
}

/// Fidelity through the lifecycle, on every backend: a session equals the tree its generation
/// was imported from entry by entry (owners, modes, nanosecond times, xattrs of every
/// namespace, ACLs, file capabilities, hardlinks, device nodes and overlay whiteouts, sparse
/// files, content), and a session of a promoted generation equals the session it came from.
#[test]
fn a_session_equals_its_generation_entry_by_entry() {
    use goldclone::fixture::{self, FixtureSpec};
    use goldclone::treediff::{AtimeScope, CompareOptions};
    let _shared = shared();
    if std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_some() {
        // The guest's overlaid /tmp takes neither the fixture's whiteouts nor its xattrs; the
        // same lifecycle code runs here on every host backend.
        return;
    }
    let mut ran = BTreeSet::new();
    for (root, name) in roots("fidelity") {
        ran.insert(name);
        // The fixture on the root's own filesystem: every feature it uses is one that
        // filesystem has, and the copy backend reflinks it there.
        let base =
            root.path.parent().unwrap().join(format!("fidelity-{name}-{}", std::process::id()));
        let (src, reference) = (base.join("src"), base.join("ref"));
        let spec = FixtureSpec::fidelity();
        let made = fixture::build(&src, &spec).unwrap();
        assert_eq!(fixture::build(&reference, &spec).unwrap(), made, "{name}");
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let s1 = cache.setup("proj", "s1").unwrap();
        // The session's own root directory is the backend's (a mount's root, a subvolume's):
        // its times are the setup's, so directory atimes are left out; every file's are in.
        let opts = CompareOptions { atime: AtimeScope::Files, ..Default::default() };
        common::assert_same(&reference, &s1, &opts);
        assert_eq!(cache.promote("proj", "s1").unwrap(), 2, "{name}");
        let s2 = cache.setup("proj", "s2").unwrap();
        // Reading s1 above set its atimes.
        let opts = CompareOptions { atime: AtimeScope::None, ..Default::default() };
        common::assert_same(&s1, &s2, &opts);
        common::assert_same(&reference, &s2, &opts);
        for s in ["s1", "s2"] {
            cache.cleanup("proj", s).unwrap();
        }
        drop(cache);
        let _ = goldclone::copy::remove_tree(&base);
    }
    let want: BTreeSet<&str> =
        ["copy-xfs", "copy-ext4", "btrfs", "image-xfs", "image-btrfs", "image-ext4"].into();
    assert_eq!(ran, want, "backends that ran");
}

fn run(cmd: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A reboot unmounts every session of the mount-based backends (images, ZFS, zvol) and leaves
/// their trees: reusing such a session mounts it at its place again, with what was written in
/// it. Never over files someone wrote into the bare mount point, never over another mount, and
/// (images) never while a loop device elsewhere still serves the image.
#[test]
fn a_session_a_reboot_unmounted_is_mounted_again_on_reuse() {
    use goldclone::golden::Watch;
    use std::ffi::OsStr;
    let _shared = shared();
    let src = scratch_tree("remount", "1", 3);
    let mut ran = 0;
    for (root, name) in roots("remount") {
        if !matches!(root.backend, BackendKind::Image | BackendKind::Zfs | BackendKind::Zvol) {
            continue;
        }
        ran += 1;
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let (s1, _) = cache.setup_or_reuse("proj", "s1", &Watch::default()).unwrap();
        fs::write(s1.join("work"), "kept").unwrap();
        syncfs(&s1);
        // The reboot: the session's mount (and with it an image's loop device) goes.
        let reboot = || {
            run("umount", &[s1.as_os_str()]);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !common::loop_devices_under(&root.path, false).is_empty()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        reboot();
        assert!(!s1.join("work").exists(), "{name}: still mounted");
        let err = cache.setup("proj", "s1").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{name}: plain setup: {err}");
        let (again, reused) = cache.setup_or_reuse("proj", "s1", &Watch::default()).unwrap();
        assert!(reused, "{name}");
        assert_eq!(again, s1, "{name}");
        assert_eq!(fs::read_to_string(s1.join("work")).unwrap(), "kept", "{name}");
        assert_eq!(whole_generation(&s1, 3), "1", "{name}");
        // Mounted again, not just found: it takes writes.
        fs::write(s1.join("more"), "after").unwrap();

        // Many callers reusing it at once after a reboot: every one gets it, mounted once.
        reboot();
        let reused: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| cache.setup_or_reuse("proj", "s1", &Watch::default())))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in reused {
            let (path, was) = r.unwrap_or_else(|e| panic!("{name}: reuse at once: {e}"));
            assert!(was && path == s1, "{name}");
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounts = mountinfo.lines().filter(|l| l.split(' ').nth(4) == s1.to_str()).count();
        assert_eq!(mounts, 1, "{name}: the session is mounted {mounts} times");
        assert_eq!(fs::read_to_string(s1.join("more")).unwrap(), "after", "{name}");

        // Files in the bare mount point: kept, and the session is not mounted over them.
        reboot();
        fs::write(s1.join("stray"), "someone's").unwrap();
        let err = cache.setup_or_reuse("proj", "s1", &Watch::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Damaged, "{name}: {err}");
        assert_eq!(fs::read_to_string(s1.join("stray")).unwrap(), "someone's", "{name}");
        fs::remove_file(s1.join("stray")).unwrap();

        // Another filesystem mounted at the place: never mounted over.
        let tmpfs = ["-t", "tmpfs", "remount-test"].map(OsStr::new);
        run("mount", &[&tmpfs[..], &[s1.as_os_str()]].concat());
        let err = cache.setup_or_reuse("proj", "s1", &Watch::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Damaged, "{name}: {err}");
        run("umount", &[s1.as_os_str()]);

        if root.backend == BackendKind::Image {
            // The image still on a loop device (a mount elsewhere): a second device would be a
            // second writer of its XFS.
            let image = root.path.join(".goldclone/images/proj/s1");
            let out = Command::new("losetup").args(["-f", "--show"]).arg(&image).output().unwrap();
            assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
            let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
            let err = cache.setup_or_reuse("proj", "s1", &Watch::default()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Busy, "{name}: {err}");
            assert!(err.to_string().contains("loop"), "{name}: {err}");
            run("losetup", &[OsStr::new("-d"), OsStr::new(&dev)]);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !common::loop_devices_under(&root.path, false).is_empty()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let (again, reused) = cache.setup_or_reuse("proj", "s1", &Watch::default()).unwrap();
        assert!(reused, "{name}");
        assert_eq!(fs::read_to_string(again.join("more")).unwrap(), "after", "{name}");
        cache.cleanup("proj", "s1").unwrap();
        assert!(cache.gc().unwrap().is_empty(), "{name}");
    }
    // Images on XFS, btrfs and ext4 here, ZFS and zvol in the guest.
    let want = if std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_some() { 2 } else { 3 };
    assert_eq!(ran, want, "the mount-based roots did not run");
    let _ = fs::remove_dir_all(&src);
}
