//! Crash recovery: the `goldclone` binary, built with the `fault-injection` feature, kills itself
//! with SIGKILL at every step of every lifecycle operation; reopening the cache must finish or
//! roll back that operation, lose no golden and no session, and leave nothing for a second gc.
//!
//! Run with `cargo test --features fault-injection --test lifecycle_crash` (tests/run-all.sh
//! does, and fails if these tests did not run).
#![cfg(feature = "fault-injection")]

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use goldclone::golden::{fault, BackendKind, Cache, OpenOptions};
use goldclone::ErrorKind;

const FILES: usize = 30;

/// The backends to crash: ZFS and zvol in the ZFS guest, else copy (ext4) and btrfs.
fn backends() -> Vec<(&'static str, Option<PathBuf>, BackendKind)> {
    if std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_some() {
        return vec![("zfs", None, BackendKind::Zfs), ("zvol", None, BackendKind::Zvol)];
    }
    [
        ("copy-ext4", common::Fs::Ext4, BackendKind::Copy),
        ("btrfs", common::Fs::Btrfs, BackendKind::Btrfs),
    ]
    .into_iter()
    .filter_map(|(n, fs, b)| common::mount(fs).map(|m| (n, Some(m), b)))
    .collect()
}

/// A fresh cache root for one crash case: a directory on the loop filesystem, or on ZFS a
/// dataset of its own (a cache root must be its dataset's mount point).
fn case_root(mnt: &Option<PathBuf>, tag: &str) -> (PathBuf, Option<common::ZfsRoot>) {
    match mnt {
        Some(mnt) => {
            let root = mnt.join(format!("{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).unwrap();
            (root, None)
        }
        None => {
            let zfs = common::ZfsRoot::new(tag).unwrap();
            (zfs.path.clone(), Some(zfs))
        }
    }
}

fn tree(dir: &Path, marker: &str) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("generation"), marker).unwrap();
    for i in 0..FILES {
        fs::write(dir.join("sub").join(format!("f{i:03}")), marker).unwrap();
    }
}

fn marker_of(dir: &Path) -> String {
    let m = fs::read_to_string(dir.join("generation")).unwrap();
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
    cache.cleanup("proj", "probe").unwrap();
    marker
}

fn open(root: &Path, backend: BackendKind) -> Cache {
    Cache::open(root, &OpenOptions { backend: Some(backend), ..Default::default() }).unwrap()
}

/// Run the CLI with the fault point armed; it must die by SIGKILL.
fn crash(root: &Path, backend: BackendKind, point: &str, args: &[&str]) {
    let backend = match backend {
        BackendKind::Copy => "copy",
        BackendKind::Btrfs => "btrfs",
        BackendKind::Zfs => "zfs",
        BackendKind::Zvol => "zvol",
    };
    let out = Command::new(env!("CARGO_BIN_EXE_goldclone"))
        .args(args)
        .arg("--root")
        .arg(root)
        .args(["--backend", backend])
        .env("GOLDCLONE_FAULT", point)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{point}: expected death by SIGKILL, got {:?}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// No intent, no trash, no staging anywhere: what a clean cache looks like after gc.
fn assert_nothing_leaked(root: &Path, what: &str) {
    let journal = root.join(".goldclone/journal");
    for p in fs::read_dir(&journal).unwrap().flatten() {
        let n = fs::read_dir(p.path()).map(|d| d.count()).unwrap_or(0);
        assert_eq!(n, 0, "{what}: intents left in {}", p.path().display());
    }
    assert_eq!(
        fs::read_dir(root.join(".goldclone/trash")).unwrap().count(),
        0,
        "{what}: trash left"
    );
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with(".goldclone-staging"),
                "{what}: staging left: {}",
                e.path().display()
            );
            assert!(!name.contains(".tmp."), "{what}: temporary file left: {}", e.path().display());
            // Only look at the cache's own directories, not inside the trees.
            if e.file_type().unwrap().is_dir()
                && d.components().count() < root.components().count() + 2
            {
                stack.push(e.path());
            }
        }
    }
}

#[test]
fn kill_at_every_step_then_reopen() {
    let src = PathBuf::from(format!("/var/tmp/goldclone-crash-src-{}", std::process::id()));
    let _ = fs::remove_dir_all(&src);
    tree(&src, "1");
    let mut checked = 0;
    let backends = backends();
    if backends.is_empty() {
        // Only when GOLDCLONE_SKIP_LOOPFS=1 asked for it (common::mount fails otherwise).
        eprintln!("SKIPPED: no backend to crash");
        return;
    }
    for (name, mnt, backend) in backends {
        for point in fault::POINTS.iter().filter(|p| fault::reached_by(p, backend)) {
            let what = format!("{name} {point}");
            let (root, _zfs) =
                case_root(&mnt, &format!("crash-{name}-{}", point.replace(':', "-")));
            let op = point.split(':').next().unwrap();
            if op != "import" {
                let cache = open(&root, backend);
                cache.import("proj", &src).unwrap();
                cache.setup("proj", "bystander").unwrap();
                let target = cache.setup("proj", "target").unwrap();
                fs::write(target.join("generation"), "2").unwrap();
                for i in 0..FILES {
                    fs::write(target.join("sub").join(format!("f{i:03}")), "2").unwrap();
                }
            }
            let src_arg = src.to_str().unwrap();
            match op {
                "import" => crash(&root, backend, point, &["golden", "import", "proj", src_arg]),
                "setup" => crash(&root, backend, point, &["session", "setup", "proj", "fresh"]),
                "promote" => {
                    crash(&root, backend, point, &["session", "promote", "proj", "target"])
                }
                "cleanup" => {
                    crash(&root, backend, point, &["session", "cleanup", "proj", "target"])
                }
                _ => unreachable!(),
            }

            // Reopen: recovery runs.
            let cache = open(&root, backend);
            // What recovery must make of the crash: finished or rolled back. A ZFS promote is
            // finished once its first lzc_promote may have moved snapshots.
            let zfs = matches!(backend, BackendKind::Zfs | BackendKind::Zvol);
            let committed = point.ends_with("current-written")
                || *point == "setup:meta-written"
                || op == "cleanup"
                || (zfs
                    && matches!(
                        *point,
                        "promote:head-promoted" | "promote:tree-created" | "promote:meta-written"
                    ));
            match op {
                "import" => {
                    let info = cache.info("proj");
                    if committed {
                        assert_eq!(info.unwrap().generation, 1, "{what}");
                        assert_eq!(current_marker(&cache), "1");
                    } else {
                        assert_eq!(
                            info.unwrap_err().kind(),
                            ErrorKind::NotFound,
                            "{what}: rolled-back import still visible"
                        );
                        assert!(!root.join("proj").exists(), "{what}: project directory left");
                        assert_eq!(
                            cache.import("proj", &src).unwrap(),
                            1,
                            "{what}: import after rollback"
                        );
                    }
                }
                "setup" => {
                    let info = cache.info("proj").unwrap();
                    let has = info.sessions.iter().any(|(s, _)| s == "fresh");
                    assert_eq!(has, committed, "{what}: session state after recovery");
                    if committed {
                        assert_eq!(marker_of(&root.join("proj/sessions/fresh")), "1");
                    } else {
                        assert!(
                            !root.join("proj/sessions/fresh").exists(),
                            "{what}: half-made session left"
                        );
                        cache.setup("proj", "fresh").unwrap();
                    }
                }
                "promote" => {
                    let info = cache.info("proj").unwrap();
                    if committed {
                        assert_eq!(
                            (info.generation, info.source_session.as_deref()),
                            (2, Some("target")),
                            "{what}"
                        );
                        assert_eq!(current_marker(&cache), "2");
                    } else {
                        assert_eq!(info.generation, 1, "{what}");
                        assert_eq!(
                            cache.generations("proj").unwrap(),
                            vec![1],
                            "{what}: half-made generation left"
                        );
                        assert_eq!(
                            cache.promote("proj", "target").unwrap(),
                            2,
                            "{what}: promote after rollback"
                        );
                    }
                    assert_eq!(
                        marker_of(&root.join("proj/sessions/target")),
                        "2",
                        "{what}: session lost"
                    );
                }
                "cleanup" => {
                    let info = cache.info("proj").unwrap();
                    assert!(
                        !info.sessions.iter().any(|(s, _)| s == "target"),
                        "{what}: cleanup not finished"
                    );
                    assert!(!root.join("proj/sessions/target").exists(), "{what}");
                }
                _ => unreachable!(),
            }
            if op != "import" {
                // Nothing else was lost.
                assert_eq!(
                    marker_of(&root.join("proj/sessions/bystander")),
                    "1",
                    "{what}: bystander session"
                );
                assert!(cache.info("proj").unwrap().sessions.iter().any(|(s, _)| s == "bystander"));
                current_marker(&cache);
            }
            cache.gc().unwrap();
            let second = cache.gc().unwrap();
            assert!(
                second.removed.is_empty(),
                "{what}: a second gc still found {:?}",
                second.removed
            );
            assert_nothing_leaked(&root, &what);

            // Tear down through the library (btrfs trees are subvolumes).
            let info = cache.info("proj").unwrap();
            for (s, _) in info.sessions {
                cache.cleanup("proj", &s).unwrap();
            }
            cache.gc().unwrap();
            let gen = root.join(format!("proj/gen/{}", info.generation));
            if backend == BackendKind::Btrfs {
                let _ = Command::new("btrfs").args(["subvolume", "delete"]).arg(&gen).output();
            }
            if _zfs.is_none() {
                let _ = goldclone::copy::remove_tree(&root);
            }
            checked += 1;
        }
    }
    let _ = fs::remove_dir_all(&src);
    assert!(checked >= fault::POINTS.len() - 2, "only {checked} crash cases ran");
}
