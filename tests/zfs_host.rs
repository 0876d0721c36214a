//! ZFS tests that run on any host: no link-time dependency on the ZFS libraries, and the typed
//! "unavailable" answer when the zfs kernel module is not loaded.

use std::path::{Path, PathBuf};

use goldclone::zfs::{self, DatasetName, Props, Zfs};
use goldclone::ErrorKind;

/// `DT_NEEDED` entries of an ELF64 little-endian file, read from its dynamic section.
fn dt_needed(path: &Path) -> Vec<String> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(&data[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!(
        (data[4], data[5]),
        (2, 1),
        "{}: only ELF64 little-endian is handled",
        path.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c));
    const SHT_DYNAMIC: usize = 6;
    const DT_NEEDED: usize = 1;
    let mut needed = Vec::new();
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        if u32_at(sh + 4) != SHT_DYNAMIC {
            continue;
        }
        let (off, size, link) = (u64_at(sh + 0x18), u64_at(sh + 0x20), u32_at(sh + 0x28));
        let strtab = u64_at(shoff + link * shentsize + 0x18);
        for entry in (off..off + size).step_by(16) {
            if u64_at(entry) == DT_NEEDED {
                let name_off = strtab + u64_at(entry + 8);
                let end = data[name_off..].iter().position(|&b| b == 0).unwrap();
                needed.push(String::from_utf8_lossy(&data[name_off..name_off + end]).into_owned());
            }
        }
    }
    needed
}

fn assert_no_zfs_needed(path: &Path) {
    let needed = dt_needed(path);
    // The reader must see the dynamic section at all, or an empty answer would prove nothing.
    assert!(
        needed.iter().any(|n| n.starts_with("libc.so")),
        "{}: expected libc.so.* among DT_NEEDED, got {needed:?}",
        path.display()
    );
    for n in &needed {
        assert!(
            !n.starts_with("libzfs") && !n.starts_with("libnvpair"),
            "{} links {n}: ZFS must be loaded at run time only",
            path.display()
        );
    }
}

#[test]
fn binary_has_no_dt_needed_on_zfs_libraries() {
    assert_no_zfs_needed(Path::new(env!("CARGO_BIN_EXE_goldclone")));
}

#[test]
fn cdylib_has_no_dt_needed_on_zfs_libraries() {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_goldclone")).parent().unwrap().to_owned();
    let lib = dir.join("libgoldclone.so");
    // `cargo test` builds the library only as the rlib the tests and the binary link, never the
    // cdylib, so a fresh checkout has none and an old one may be stale: build it here, with this
    // run's profile, features and target directory (a fingerprint check when it is up to date).
    // Run outside cargo (tests/zfs-vm.sh runs this binary in a guest that never compiles), the
    // caller has built it.
    if let Some(cargo) = std::env::var_os("CARGO") {
        build_cdylib(Path::new(&cargo), &dir);
    }
    assert!(lib.exists(), "{} not built (crate-type cdylib)", lib.display());
    assert_no_zfs_needed(&lib);
}

/// `cargo build --lib` into `profile_dir` (`<target-dir>[/<triple>]/<profile>`) with this
/// test's features.
fn build_cdylib(cargo: &Path, profile_dir: &Path) {
    let profile = profile_dir.file_name().unwrap().to_str().unwrap();
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--lib"])
        // The dev profile's directory is called "debug".
        .args(["--profile", if profile == "debug" { "dev" } else { profile }]);
    // Cargo marks the target directory itself with CACHEDIR.TAG; without it, the parent is a
    // `--target <triple>` directory inside it.
    let parent = profile_dir.parent().unwrap();
    if parent.join("CACHEDIR.TAG").exists() {
        cmd.arg("--target-dir").arg(parent);
    } else {
        cmd.arg("--target-dir").arg(parent.parent().unwrap());
        cmd.arg("--target").arg(parent.file_name().unwrap());
    }
    let features: Vec<&str> = [
        ("fault-injection", cfg!(feature = "fault-injection")),
        ("buildtime-bindgen", cfg!(feature = "buildtime-bindgen")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("run {}: {e}", cargo.display()));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Whether ZFS should load here, and the text the "unavailable" reason must contain.
///
/// By default: available exactly when `/dev/zfs` exists. tests/zfs-vm.sh also runs this binary
/// with libzfs_core.so.3 made unloadable (an empty file bind-mounted over it in a private mount
/// namespace, with /dev/zfs present) and says so through `GOLDCLONE_EXPECT_ZFS=unavailable` and
/// `GOLDCLONE_EXPECT_REASON`. Both are real conditions of the host, not a mock of the library.
fn expectation() -> (bool, String) {
    let reason = std::env::var("GOLDCLONE_EXPECT_REASON").unwrap_or_else(|_| zfs::ZFS_DEV.into());
    match std::env::var("GOLDCLONE_EXPECT_ZFS").as_deref() {
        Ok("available") => (true, reason),
        Ok("unavailable") => (false, reason),
        Ok(other) => panic!("GOLDCLONE_EXPECT_ZFS={other:?}: expected available or unavailable"),
        Err(_) => (Path::new(zfs::ZFS_DEV).exists(), reason),
    }
}

/// Without `/dev/zfs` (this host, or the test VM before `modprobe zfs`), or without a loadable
/// libzfs_core, every entry point says "ZFS unavailable", typed, and nothing panics; with both,
/// the library loads.
#[test]
fn availability_is_typed_and_matches_the_host() {
    let (expect_available, reason) = expectation();
    let opened = Zfs::open();
    if expect_available {
        opened.expect("ZFS should load here");
        return;
    }
    let err = opened.expect_err("ZFS should be unavailable here, yet Zfs::open succeeded");
    assert_eq!(err.kind(), ErrorKind::ZfsUnavailable, "{err}");
    assert!(err.to_string().contains(&reason), "reason should mention {reason}: {err}");
    let err = zfs::available().expect_err("available() must agree with open()");
    assert_eq!(err.kind(), ErrorKind::ZfsUnavailable);
    // A second attempt is not answered from a cache of the failure, and still does not panic.
    assert_eq!(Zfs::open().unwrap_err().kind(), ErrorKind::ZfsUnavailable);
}

/// Validation happens before loading anything, so it works (and fails) the same without ZFS.
#[test]
fn names_are_validated_without_zfs() {
    assert_eq!(DatasetName::new("tank/a@b").unwrap_err().kind(), ErrorKind::InvalidName);
    let long = format!("tank/{}", "x".repeat(300));
    assert_eq!(DatasetName::new(&long).unwrap_err().kind(), ErrorKind::NameTooLong);
    assert!(Props::new().mountpoint("legacy").user("goldclone:s", "1") != Props::new());
}

/// The first use races from many threads (a service starting sessions at once): every thread
/// gets the same answer, and none panics.
#[test]
fn first_use_from_many_threads_agrees() {
    let barrier = std::sync::Barrier::new(8);
    let results: Vec<Result<Zfs, ErrorKind>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    Zfs::open().map_err(|e| e.kind())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (expect_available, _) = expectation();
    for r in &results {
        match r {
            Ok(_) => assert!(expect_available, "opened where ZFS should be unavailable"),
            Err(kind) => {
                assert!(!expect_available, "failed where ZFS should load: {kind:?}");
                assert_eq!(*kind, ErrorKind::ZfsUnavailable);
            }
        }
    }
}
