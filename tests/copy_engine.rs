//! The copy engine's own behaviour on the host filesystem: cancellation, a copy killed with
//! SIGKILL and its cleanup, a live copy's staging left alone, concurrent hardlink groups,
//! progress counters, an unreadable entry. Metadata fidelity on each real filesystem is in
//! `copy_fidelity.rs`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use goldclone::copy::{self, CancelToken, CopyOptions, Progress, STAGING_PREFIX};
use goldclone::ErrorKind;

/// A scratch directory removed on drop (read-only directories included).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let base = std::env::var_os("GOLDCLONE_TEST_SCRATCH")
            .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        let dir = base.join(format!("goldclone-engine-{tag}-{}", std::process::id()));
        let _ = copy::remove_tree(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = copy::remove_tree(&self.0);
    }
}

/// `dirs` directories of `files` small files each.
fn wide_tree(root: &Path, dirs: usize, files: usize) {
    for d in 0..dirs {
        let dir = root.join(format!("d{d:04}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            fs::write(dir.join(format!("f{f:04}")), format!("{d}/{f}\n").repeat(f % 7 + 1))
                .unwrap();
        }
    }
}

fn staging_entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().as_encoded_bytes().starts_with(STAGING_PREFIX.as_bytes()))
        .map(|e| e.path())
        .collect()
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn cancel_from_another_thread_leaves_nothing() {
    let s = Scratch::new("cancel");
    let src = s.path().join("src");
    wide_tree(&src, 200, 100);
    let dst = s.path().join("dst");
    let cancel = CancelToken::new();
    let progress = Progress::new();
    let opts = CopyOptions {
        threads: 4,
        cancel: Some(cancel.clone()),
        progress: Some(progress.clone()),
        ..Default::default()
    };
    let result = std::thread::scope(|scope| {
        let worker = scope.spawn(|| copy::copy_tree(&src, &dst, &opts));
        wait_for(|| progress.entries() > 100, "the copy to start");
        cancel.cancel();
        worker.join().unwrap()
    });
    let err = result.expect_err("a cancelled copy must fail");
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(!dst.exists(), "DST must not exist after a cancelled copy");
    assert!(staging_entries(s.path()).is_empty(), "staging left behind");
}

#[test]
fn progress_counts_what_the_stats_report() {
    let s = Scratch::new("progress");
    let src = s.path().join("src");
    wide_tree(&src, 20, 50);
    fs::hard_link(src.join("d0000/f0006"), src.join("d0001/link")).unwrap();
    // An old atime (at its mtime, so relatime would move it on any read): neither the copy nor
    // the totals walk beside it may read the source without O_NOATIME.
    let old = nix::sys::time::TimeSpec::new(1_000_000_000, 0);
    let probe = src.join("d0003");
    let follow = nix::sys::stat::UtimensatFlags::FollowSymlink;
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, &probe, &old, &old, follow).unwrap();
    let progress = Progress::new();
    let opts =
        CopyOptions { progress: Some(progress.clone()), count_totals: true, ..Default::default() };
    let stats = copy::copy_tree(&src, &s.path().join("dst"), &opts).unwrap();
    assert_eq!(fs::metadata(&probe).unwrap().atime(), 1_000_000_000, "the source's atime moved");
    assert_eq!(stats.entries, 1 + 20 + 20 * 50 + 1);
    assert_eq!(progress.entries(), stats.entries);
    assert_eq!(progress.bytes(), stats.bytes);
    let expected_bytes: u64 = (0..20)
        .flat_map(|d| (0..50).map(move |f| format!("{d}/{f}\n").len() as u64 * (f % 7 + 1) as u64))
        .sum();
    assert_eq!(stats.bytes, expected_bytes);
    // Known once the copy has finished, whichever of the copy and the counting walk ended first,
    // and equal to what was copied: a hardlinked file's bytes count once, as the copy counts them.
    assert_eq!(progress.totals(), Some((stats.entries, stats.bytes)));
}

#[test]
fn killed_copy_leaves_a_staging_dir_that_cleanup_removes() {
    let s = Scratch::new("kill");
    let src = s.path().join("src");
    wide_tree(&src, 400, 100);
    let dst = s.path().join("dst");
    let mut child = Command::new(env!("CARGO_BIN_EXE_goldclone"))
        .args(["copy", "--quiet", "--threads", "2"])
        .arg(&src)
        .arg(&dst)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has written something into its staging directory.
    wait_for(
        || {
            staging_entries(s.path())
                .iter()
                .any(|p| fs::read_dir(p).map(|mut d| d.next().is_some()).unwrap_or(false))
        },
        "the staging directory to fill",
    );
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(!dst.exists(), "a killed copy must not have produced DST");
    let left = staging_entries(s.path());
    assert_eq!(left.len(), 1, "the killed copy's staging directory should remain: {left:?}");

    let removed = copy::cleanup_staging(s.path()).unwrap();
    assert_eq!(removed, left);
    assert!(staging_entries(s.path()).is_empty());
    assert!(src.join("d0399/f0099").exists(), "cleanup must not touch anything else");
}

#[test]
fn cleanup_leaves_a_running_copy_alone() {
    let s = Scratch::new("live");
    let src = s.path().join("src");
    wide_tree(&src, 300, 100);
    let dst = s.path().join("dst");
    let progress = Progress::new();
    let opts = CopyOptions { threads: 2, progress: Some(progress.clone()), ..Default::default() };
    let stats = std::thread::scope(|scope| {
        let worker = scope.spawn(|| copy::copy_tree(&src, &dst, &opts));
        wait_for(|| progress.entries() > 50 || worker.is_finished(), "the copy to start");
        if !worker.is_finished() {
            let removed = copy::cleanup_staging(s.path()).unwrap();
            assert!(removed.is_empty(), "cleanup removed a live copy's staging: {removed:?}");
        }
        worker.join().unwrap()
    })
    .unwrap();
    assert_eq!(stats.entries, 1 + 300 + 300 * 100);
    assert!(dst.join("d0299/f0099").exists());
}

#[test]
fn hardlink_groups_survive_many_threads() {
    let s = Scratch::new("links");
    let src = s.path().join("src");
    // 64 inodes, each linked from 16 directories: links of one inode are met concurrently.
    for d in 0..16 {
        fs::create_dir_all(src.join(format!("dir{d}"))).unwrap();
    }
    for i in 0..64 {
        let first = src.join("dir0").join(format!("file{i}"));
        fs::write(&first, vec![i as u8; 5000 + i]).unwrap();
        for d in 1..16 {
            fs::hard_link(&first, src.join(format!("dir{d}")).join(format!("file{i}"))).unwrap();
        }
    }
    let dst = s.path().join("dst");
    let stats =
        copy::copy_tree(&src, &dst, &CopyOptions { threads: 8, ..Default::default() }).unwrap();
    assert_eq!(stats.files, 64);
    assert_eq!(stats.hardlinks, 64 * 15);
    for i in 0..64 {
        let ino = fs::metadata(dst.join("dir0").join(format!("file{i}"))).unwrap().ino();
        for d in 1..16 {
            let m = fs::metadata(dst.join(format!("dir{d}")).join(format!("file{i}"))).unwrap();
            assert_eq!(m.ino(), ino, "dir{d}/file{i} is not linked to dir0/file{i}");
            assert_eq!(m.nlink(), 16);
        }
        assert_eq!(
            fs::read(dst.join("dir7").join(format!("file{i}"))).unwrap(),
            vec![i as u8; 5000 + i]
        );
    }
}

#[test]
fn dst_appearing_during_the_copy_is_not_replaced() {
    let s = Scratch::new("race");
    let src = s.path().join("src");
    wide_tree(&src, 50, 50);
    let dst = s.path().join("dst");
    let progress = Progress::new();
    let opts = CopyOptions { threads: 2, progress: Some(progress.clone()), ..Default::default() };
    let result = std::thread::scope(|scope| {
        let worker = scope.spawn(|| copy::copy_tree(&src, &dst, &opts));
        wait_for(|| progress.entries() > 0 || worker.is_finished(), "the copy to start");
        let _ = fs::create_dir(&dst);
        fs::write(dst.join("mine"), b"keep me").unwrap();
        worker.join().unwrap()
    });
    let err = result.expect_err("rename over a new DST must fail");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert_eq!(fs::read(dst.join("mine")).unwrap(), b"keep me");
    assert!(staging_entries(s.path()).is_empty());
}

#[test]
fn unreadable_entry_fails_cleanly_for_an_unprivileged_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("needs root to set up an entry another user cannot read");
        return;
    }
    let s = Scratch::new("eacces");
    fs::set_permissions(s.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let src = s.path().join("src");
    wide_tree(&src, 3, 3);
    let secret = src.join("d0001").join("secret");
    fs::write(&secret, b"root only").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    for p in [&src, &src.join("d0000"), &src.join("d0001"), &src.join("d0002")] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let dst = s.path().join("dst");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_goldclone"))
        .args(["copy", "--quiet"])
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("secret") && stderr.contains("Permission denied"),
        "unexpected error: {stderr}"
    );
    assert!(!dst.exists());
    assert!(staging_entries(s.path()).is_empty(), "staging left behind");
}

#[test]
fn remove_tree_never_follows_symlinks_and_handles_read_only_dirs() {
    let s = Scratch::new("remove");
    let outside = s.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("precious"), b"keep").unwrap();
    let tree = s.path().join("tree");
    let mut deep = tree.clone();
    for i in 0..60 {
        deep = deep.join(format!("level{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"x").unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("link-to-outside")).unwrap();
    std::os::unix::fs::symlink(&outside, deep.join("deep-link")).unwrap();
    wide_tree(&tree.join("wide"), 30, 30);
    let ro = tree.join("wide/d0007");
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(tree.join("level0"), fs::Permissions::from_mode(0o500)).unwrap();

    copy::remove_tree(&tree).unwrap();
    assert!(!tree.exists());
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep", "removal followed a symlink");
    copy::remove_tree(&tree).unwrap(); // a missing path is not an error
}
