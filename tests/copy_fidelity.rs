//! Copy tests on real filesystems: XFS (reflink), btrfs, ext4, tmpfs, and a small ext4 for
//! ENOSPC. Run as root with `tests/loopfs.sh run`, which mounts them, runs this file and cleans up.
//! Without the mounts every test fails (see `common::mount`), unless GOLDCLONE_SKIP_LOOPFS=1.
//!
//! Each fidelity test builds `FixtureSpec::fidelity()` twice: `src`, which is copied, and `ref`,
//! which nobody touches. The copy is compared with `ref`, atimes of everything included: the copy
//! itself reads `src` and so may update its atimes (readlink always can), but the copy must carry
//! the times `src` had before it was read. The fixture is deterministic, so `ref` equals what
//! `src` was.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{assert_same, mount, mounts, staging_leftovers, Fs, Scratch};
use goldclone::copy::{copy_tree, CopyOptions, CopyStats};
use goldclone::fixture::{self, FixtureSpec, FixtureStats, SizeMix};
use goldclone::treediff::{AtimeScope, CompareOptions};
use goldclone::ErrorKind;

/// Everything, directory atimes included.
fn strict() -> CompareOptions {
    CompareOptions { atime: AtimeScope::All, ..Default::default() }
}

fn build(root: &Path, spec: &FixtureSpec) -> FixtureStats {
    fixture::build(root, spec)
        .unwrap_or_else(|e| panic!("building fixture at {}: {e}", root.display()))
}

/// The copy's counters agree with what the fixture made.
fn check_counts(stats: &CopyStats, fx: &FixtureStats) {
    let msg = format!("copy {stats:?}\nfixture {fx:?}");
    assert_eq!(stats.entries, fx.entries + 1, "entries (root included): {msg}");
    assert_eq!(stats.dirs, fx.dirs + 1, "dirs (root included): {msg}");
    assert_eq!(stats.files, fx.files, "files: {msg}");
    assert_eq!(stats.symlinks, fx.symlinks, "symlinks: {msg}");
    assert_eq!(stats.specials, fx.specials, "specials: {msg}");
    assert_eq!(stats.hardlinks, fx.hardlinks, "hardlinks: {msg}");
    assert_eq!(stats.bytes, fx.bytes, "bytes: {msg}");
}

/// Check how the data went: FICLONE for every file where both sides are one reflink
/// filesystem, never otherwise; within one filesystem without reflinks, in the kernel
/// (copy_file_range) rather than through a user-space buffer.
fn check_method(stats: &CopyStats, src_fs: Fs, dst_fs: Fs) {
    if src_fs == dst_fs && src_fs.reflinks() {
        assert!(stats.cloned > 0, "nothing cloned on a reflink filesystem: {stats:?}");
        assert_eq!(
            stats.copy_file_range + stats.sparse + stats.read_write,
            0,
            "data copied instead of cloned: {stats:?}"
        );
    } else {
        assert_eq!(
            stats.cloned, 0,
            "cloned across filesystems or without reflink support?: {stats:?}"
        );
        assert!(stats.copy_file_range + stats.read_write > 0, "{stats:?}");
        assert!(stats.sparse >= 1, "the 64 MiB sparse file was not copied as sparse: {stats:?}");
        if src_fs == dst_fs {
            assert_eq!(stats.read_write, 0, "user-space copy within one filesystem: {stats:?}");
        }
    }
}

/// Build src and ref on `src_fs`, copy src to dst on `dst_fs`, compare dst with ref.
fn fidelity(src_fs: Fs, dst_fs: Fs) {
    let Some([src_mnt, dst_mnt]) = mounts([src_fs, dst_fs]) else {
        return;
    };
    let s = Scratch::new(&src_mnt, &format!("fid-{src_fs:?}-{dst_fs:?}").to_lowercase());
    let d = if src_fs == dst_fs { None } else { Some(Scratch::new(&dst_mnt, "fid-dst")) };
    let (src, reference) = (s.join("src"), s.join("ref"));
    let dst = d.as_ref().unwrap_or(&s).join("dst");
    let spec = FixtureSpec::fidelity();
    let fx = build(&src, &spec);
    assert_eq!(build(&reference, &spec), fx);

    let stats = copy_tree(&src, &dst, &CopyOptions::default()).unwrap_or_else(|e| {
        panic!("copy {} -> {}: {e} ({:?})", src.display(), dst.display(), e.kind())
    });
    eprintln!("{src_fs:?} -> {dst_fs:?}: {stats:?}");

    assert_same(&reference, &dst, &strict());
    // The copy left the source alone (apart from atimes, which reading may update).
    assert_same(
        &reference,
        &src,
        &CompareOptions { atime: AtimeScope::None, ..Default::default() },
    );
    check_counts(&stats, &fx);
    check_method(&stats, src_fs, dst_fs);
    assert!(staging_leftovers(dst.parent().unwrap()).is_empty());
}

#[test]
fn loop_filesystems_are_mounted() {
    // One test that names every missing mount at once.
    if common::skipping() {
        eprintln!("SKIPPED: GOLDCLONE_SKIP_LOOPFS=1");
        return;
    }
    let missing: Vec<&str> = [Fs::Xfs, Fs::Btrfs, Fs::Ext4, Fs::Tmpfs, Fs::Small]
        .into_iter()
        .filter(|f| std::env::var_os(f.var()).is_none())
        .map(|f| f.var())
        .collect();
    assert!(missing.is_empty(), "not set: {missing:?}; run `tests/loopfs.sh run` as root");
    for f in [Fs::Xfs, Fs::Btrfs, Fs::Ext4, Fs::Tmpfs, Fs::Small] {
        mount(f);
    }
}

#[test]
fn fidelity_xfs() {
    fidelity(Fs::Xfs, Fs::Xfs);
}

#[test]
fn fidelity_btrfs() {
    fidelity(Fs::Btrfs, Fs::Btrfs);
}

#[test]
fn fidelity_ext4() {
    fidelity(Fs::Ext4, Fs::Ext4);
}

#[test]
fn fidelity_tmpfs() {
    fidelity(Fs::Tmpfs, Fs::Tmpfs);
}

#[test]
fn fidelity_cross_ext4_to_xfs() {
    fidelity(Fs::Ext4, Fs::Xfs);
}

#[test]
fn fidelity_cross_xfs_to_btrfs() {
    fidelity(Fs::Xfs, Fs::Btrfs);
}

#[test]
fn fidelity_cross_xfs_to_tmpfs() {
    fidelity(Fs::Xfs, Fs::Tmpfs);
}

#[test]
fn fidelity_cross_tmpfs_to_ext4() {
    fidelity(Fs::Tmpfs, Fs::Ext4);
}

/// The ENOSPC tests fill the one small filesystem and check that it is empty again afterwards:
/// one at a time, also when the test harness runs tests in parallel.
static SMALL_FS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock_small() -> std::sync::MutexGuard<'static, ()> {
    SMALL_FS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A docker-like tree bigger than the small filesystem (about 150 MB of data).
fn too_big_spec() -> FixtureSpec {
    FixtureSpec {
        layers: 2,
        dirs_per_layer: 10,
        files_per_dir: 10,
        file_size: SizeMix {
            small_max: 16 << 10,
            large_one_in: 4,
            large_min: 1 << 20,
            large_max: 4 << 20,
        },
        hardlinks: true,
        whiteouts: true,
        fidelity_extras: false,
        seed: 99,
    }
}

#[test]
fn enospc_leaves_nothing() {
    let Some([xfs, small]) = mounts([Fs::Xfs, Fs::Small]) else {
        return;
    };
    let _one_at_a_time = lock_small();
    let s = Scratch::new(&xfs, "enospc-src");
    let src = s.join("src");
    let fx = build(&src, &too_big_spec());
    let free_before = common::free_bytes(&small);
    assert!(
        fx.bytes > 2 * free_before,
        "fixture ({} bytes) not bigger than the fs ({free_before} free)",
        fx.bytes
    );
    let before = common::names(&small);

    let dst = small.join("dst-enospc");
    let err = copy_tree(&src, &dst, &CopyOptions::default())
        .expect_err("copy onto a full filesystem succeeded");
    assert_eq!(err.kind(), ErrorKind::NoSpace, "wrong error: {err}");
    assert!(
        std::fs::symlink_metadata(&dst).is_err(),
        "{} exists after a failed copy",
        dst.display()
    );
    assert!(staging_leftovers(&small).is_empty(), "staging left: {:?}", staging_leftovers(&small));
    assert_eq!(common::names(&small), before, "entries added to the destination's parent");
    let free_after = common::free_bytes(&small);
    assert!(
        free_after + (1 << 20) >= free_before,
        "space not given back: {free_before} free before, {free_after} after"
    );
}

#[test]
fn enospc_on_inodes_leaves_nothing() {
    // Many empty files: the small ext4 runs out of inodes, not blocks.
    let Some([ext4, small]) = mounts([Fs::Ext4, Fs::Small]) else {
        return;
    };
    let _one_at_a_time = lock_small();
    let inodes = nix::sys::statvfs::statvfs(&small).unwrap().files_free() as usize;
    let s = Scratch::new(&ext4, "enospc-inodes");
    let src = s.join("src");
    std::fs::create_dir(&src).unwrap();
    for d in 0..(inodes / 1000 + 2) {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..1000 {
            std::fs::File::create(dir.join(format!("f{f}"))).unwrap();
        }
    }
    let dst = small.join("dst-inodes");
    let err = copy_tree(&src, &dst, &CopyOptions::default())
        .expect_err("copy with too few inodes succeeded");
    assert_eq!(err.kind(), ErrorKind::NoSpace, "wrong error: {err}");
    assert!(std::fs::symlink_metadata(&dst).is_err());
    assert!(staging_leftovers(&small).is_empty());
    let after = nix::sys::statvfs::statvfs(&small).unwrap().files_free() as usize;
    assert_eq!(after, inodes, "inodes not given back");
}

#[test]
fn bad_inputs_create_nothing() {
    let Some(ext4) = mount(Fs::Ext4) else { return };
    let s = Scratch::new(&ext4, "bad-input");
    let src = s.join("src");
    build(
        &src,
        &FixtureSpec { layers: 1, dirs_per_layer: 2, files_per_dir: 2, ..FixtureSpec::demo() },
    );
    std::fs::write(s.join("a-file"), b"x").unwrap();
    std::fs::create_dir(s.join("existing")).unwrap();
    let before = common::names(&s.path);
    let src_before = goldclone::treediff::compare(&src, &src, &CompareOptions::default()).unwrap();
    assert!(src_before.is_empty());

    let cases: Vec<(&str, std::path::PathBuf, std::path::PathBuf, ErrorKind)> = vec![
        ("missing source", s.join("no-such-dir"), s.join("out1"), ErrorKind::NotFound),
        ("source is a file", s.join("a-file"), s.join("out2"), ErrorKind::NotADirectory),
        ("destination exists (dir)", src.clone(), s.join("existing"), ErrorKind::AlreadyExists),
        ("destination exists (file)", src.clone(), s.join("a-file"), ErrorKind::AlreadyExists),
        ("destination is the source", src.clone(), src.clone(), ErrorKind::AlreadyExists),
        (
            "destination inside source",
            src.clone(),
            src.join("overlay2/inside"),
            ErrorKind::InvalidArgument,
        ),
        ("destination parent missing", src.clone(), s.join("no-parent/out3"), ErrorKind::NotFound),
    ];
    let src_names = common::names(&src);
    let overlay_names = common::names(&src.join("overlay2"));
    for (what, from, to, kind) in cases {
        let r = copy_tree(&from, &to, &CopyOptions::default());
        let err = match r {
            Ok(st) => panic!("{what}: copy succeeded: {st:?}"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), kind, "{what}: {err}");
        assert_eq!(
            common::names(&s.path),
            before,
            "{what}: entries created beside the destination"
        );
        assert_eq!(common::names(&src), src_names, "{what}: source changed");
        assert_eq!(common::names(&src.join("overlay2")), overlay_names, "{what}: source changed");
    }
}

/// Our copy and `cp -a`'s agree in everything, times included. Done on ext4 (no reflink, so cp
/// copies data and detects holes) and on XFS (cp clones too).
fn matches_cp_a(fs: Fs) {
    let Some(mnt) = mount(fs) else { return };
    let s = Scratch::new(&mnt, &format!("cp-a-{fs:?}").to_lowercase());
    let spec = FixtureSpec::fidelity();
    build(&s.join("src"), &spec);
    build(&s.join("ref"), &spec);
    let out =
        Command::new("cp").arg("-a").arg(s.join("ref")).arg(s.join("cp")).output().expect("run cp");
    assert!(out.status.success(), "cp -a failed: {}", String::from_utf8_lossy(&out.stderr));
    copy_tree(&s.join("src"), &s.join("ours"), &CopyOptions::default()).unwrap();
    assert_same(&s.join("cp"), &s.join("ours"), &strict());
}

#[test]
fn matches_cp_a_ext4() {
    matches_cp_a(Fs::Ext4);
}

#[test]
fn matches_cp_a_xfs() {
    matches_cp_a(Fs::Xfs);
}

#[test]
fn sparse_file_stays_sparse_across_filesystems() {
    // Explicit numbers for the 64 MiB sparse file, beyond treediff's slack rule.
    let Some([ext4, xfs]) = mounts([Fs::Ext4, Fs::Xfs]) else {
        return;
    };
    let (s, d) = (Scratch::new(&ext4, "sparse-src"), Scratch::new(&xfs, "sparse-dst"));
    build(&s.join("src"), &FixtureSpec::fidelity());
    copy_tree(&s.join("src"), &d.join("dst"), &CopyOptions::default()).unwrap();
    let a = std::fs::symlink_metadata(s.join("src/special/sparse-64m")).unwrap();
    let b = std::fs::symlink_metadata(d.join("dst/special/sparse-64m")).unwrap();
    assert_eq!(a.size(), fixture::SPARSE_SIZE);
    assert_eq!(b.size(), fixture::SPARSE_SIZE);
    assert!(
        b.blocks() * 512 <= 4 << 20,
        "copy allocates {} bytes of a 64 MiB file with ~430 KiB of data",
        b.blocks() * 512
    );
}

/// The bound: a copy of a 772K-entry tree (the production /var/lib/docker's count) stays
/// under 64 MB of peak RSS. The copy runs as its own process (the CLI) so that its peak is
/// measured alone: getrusage(RUSAGE_CHILDREN) reports the largest peak of the waited-for
/// children, so another child of this test binary can only make the check stricter. On btrfs,
/// where 1-byte files live inline in metadata, both trees fit the 4 GiB loop filesystem.
#[test]
fn peak_rss_under_64mb_for_772k_entries() {
    let Some(mnt) = mount(Fs::Btrfs) else { return };
    let s = Scratch::new(&mnt, "rss");
    let (layers, files_per_dir) = (12, 15);
    let entries = 772_000;
    let spec = FixtureSpec {
        layers,
        dirs_per_layer: entries / (layers * (files_per_dir + 1)),
        files_per_dir,
        file_size: SizeMix { small_max: 1, large_one_in: 0, large_min: 0, large_max: 0 },
        ..FixtureSpec::bench(100_000)
    };
    let fx = build(&s.join("src"), &spec);
    assert!(fx.entries >= 770_000, "fixture too small: {fx:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_goldclone"))
        .args(["copy", "--quiet", "--json"])
        .arg(s.join("src"))
        .arg(s.join("dst"))
        .output()
        .unwrap();
    assert!(out.status.success(), "copy failed: {}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["entries"].as_u64(), Some(fx.entries + 1), "{stats}");
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let peak_kib = usage.max_rss(); // Linux reports KiB
    eprintln!("goldclone copy of {} entries: peak RSS {} KiB", fx.entries, peak_kib);
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB is over 64 MB");
}
