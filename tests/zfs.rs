//! Real-ZFS integration tests: libzfs_core in process against the OpenZFS kernel module.
//!
//! Every test is `#[ignore]`d so that a plain `cargo test` on a host without ZFS does not pass
//! them vacuously; `tests/zfs-vm.sh` boots a VM with the zfs module, creates two file-backed
//! pools, and runs this binary with `--include-ignored`, naming the pools in
//! `GOLDCLONE_TEST_POOL_A` and `GOLDCLONE_TEST_POOL_B`. Each test works under its own dataset
//! `<pool>/t-<test>` and destroys it afterwards, so tests run in parallel.
//! Cases follow OpenZFS pyzfs `test_libzfs_core.py` where it applies.

use std::fs;
use std::io::ErrorKind as IoKind;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use goldclone::zfs::mount::{self, MountOptions};
use goldclone::zfs::{CanMount, DatasetName, Props, SnapshotName, ZcpValue, Zfs, ZfsErrorKind};
use goldclone::{Error, ErrorKind};

const VM_ONLY: &str = "needs real ZFS: run by tests/zfs-vm.sh";

fn pool_env(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run these tests through tests/zfs-vm.sh"))
}

fn ds(s: &str) -> DatasetName {
    DatasetName::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}
fn snap(s: &str) -> SnapshotName {
    SnapshotName::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The ZFS classification of an error, failing the test if it is not a libzfs_core error.
fn zkind(e: &Error) -> ZfsErrorKind {
    match e.zfs() {
        Some(z) => z.zfs_kind(),
        None => panic!("expected a ZFS error, got {e:?}"),
    }
}

/// One test's private dataset tree and mount directories, torn down on drop.
struct Fx {
    zfs: Zfs,
    root: DatasetName,
    roots_b: Mutex<Vec<DatasetName>>,
    dir: PathBuf,
    mounts: Mutex<Vec<PathBuf>>,
}

impl Fx {
    fn new(test: &str) -> Fx {
        let zfs = Zfs::open().expect("ZFS must be available in the test VM");
        let root = ds(&format!("{}/t-{test}", pool_env("GOLDCLONE_TEST_POOL_A")));
        // Leftovers from an aborted run would make every assertion below lie.
        assert!(!zfs.exists(root.as_str()).unwrap(), "{root} left over from an earlier run");
        zfs.create_filesystem(&root, &Props::new().canmount(CanMount::NoAuto)).unwrap();
        let dir = PathBuf::from(format!("/tmp/goldclone-zfs-tests/{test}"));
        fs::create_dir_all(&dir).unwrap();
        Fx { zfs, root, roots_b: Mutex::new(Vec::new()), dir, mounts: Mutex::new(Vec::new()) }
    }

    fn name(&self, rel: &str) -> DatasetName {
        self.root.child(rel).unwrap()
    }

    fn snap(&self, rel: &str) -> SnapshotName {
        snap(&format!("{}/{rel}", self.root))
    }

    /// A root on pool B for cross-pool cases, destroyed with the fixture.
    fn root_b(&self) -> DatasetName {
        let b = ds(&format!(
            "{}/t-{}",
            pool_env("GOLDCLONE_TEST_POOL_B"),
            self.root.as_str().rsplit('/').next().unwrap()
        ));
        if !self.zfs.exists(b.as_str()).unwrap() {
            self.zfs.create_filesystem(&b, &Props::new()).unwrap();
            self.roots_b.lock().unwrap().push(b.clone());
        }
        b
    }

    fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.dir.join(rel);
        fs::create_dir_all(&p).unwrap();
        p
    }

    fn mount(&self, dataset: &DatasetName, rel: &str) -> PathBuf {
        let dir = self.mkdir(rel);
        mount::mount_filesystem(dataset, &dir, MountOptions::default())
            .unwrap_or_else(|e| panic!("mount {dataset} on {}: {e}", dir.display()));
        self.mounts.lock().unwrap().push(dir.clone());
        dir
    }

    fn unmount(&self, dir: &Path) {
        mount::unmount(dir).unwrap_or_else(|e| panic!("unmount {}: {e}", dir.display()));
        self.mounts.lock().unwrap().retain(|d| d != dir);
    }

    /// `root/golden` with a few files, snapshotted as `root/golden@base`.
    fn golden(&self) -> SnapshotName {
        let golden = self.name("golden");
        self.zfs.create_filesystem(&golden, &Props::new()).unwrap();
        let dir = self.mount(&golden, "golden");
        fs::write(dir.join("hello.txt"), "golden\n").unwrap();
        fs::create_dir_all(dir.join("etc/app")).unwrap();
        fs::write(dir.join("etc/app/config"), "x=1\n").unwrap();
        self.unmount(&dir);
        let base = golden.snapshot("base").unwrap();
        self.zfs.snapshot(std::slice::from_ref(&base)).unwrap();
        base
    }
}

/// `destroy_tree`, retried while a volume is transiently busy. Seen in about 1 of 8 runs of the
/// zvol test: right after its XFS is unmounted a zvol can still be held for a moment (EBUSY)
/// by the kernel's asynchronous zvol work; OpenZFS's own test suite retries zvol destroys on
/// EBUSY for the same reason (`log_must_busy`). Anything else fails at once.
fn destroy_tree_retrying_busy(zfs: &Zfs, root: &DatasetName) -> Result<(), Error> {
    let mut attempts = 0;
    loop {
        match zfs.destroy_tree(root) {
            Err(e) if zkind_opt(&e) == Some(ZfsErrorKind::Busy) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

fn zkind_opt(e: &Error) -> Option<ZfsErrorKind> {
    e.zfs().map(|z| z.zfs_kind())
}

impl Drop for Fx {
    fn drop(&mut self) {
        let mut failures = Vec::new();
        for dir in self.mounts.lock().unwrap().drain(..).rev() {
            if let Err(e) = mount::unmount(&dir) {
                failures.push(format!("unmount {}: {e}", dir.display()));
            }
        }
        for root in std::iter::once(self.root.clone()).chain(self.roots_b.lock().unwrap().drain(..))
        {
            if let Err(e) = destroy_tree_retrying_busy(&self.zfs, &root) {
                failures.push(format!("destroy_tree {root}: {e}"));
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        // A test that passes but cannot clean up has found a bug too (a leaked mount or open
        // device): fail it, unless it is failing already.
        if !failures.is_empty() && !std::thread::panicking() {
            panic!("cleanup failed: {}", failures.join("; "));
        }
    }
}

// ---- availability, create, exists -------------------------------------------------------------

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn opens_and_sees_both_pools() {
    let zfs = Zfs::open().expect(VM_ONLY);
    assert!(zfs.exists(&pool_env("GOLDCLONE_TEST_POOL_A")).unwrap());
    assert!(zfs.exists(&pool_env("GOLDCLONE_TEST_POOL_B")).unwrap());
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn create_filesystem_then_exists() {
    let fx = Fx::new("create_exists");
    let fs_name = fx.name("a");
    assert!(!fx.zfs.exists(fs_name.as_str()).unwrap());
    fx.zfs.create_filesystem(&fs_name, &Props::new()).unwrap();
    assert!(fx.zfs.exists(fs_name.as_str()).unwrap());
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn create_existing_is_exists() {
    let fx = Fx::new("create_existing");
    let a = fx.name("a");
    fx.zfs.create_filesystem(&a, &Props::new()).unwrap();
    let err = fx.zfs.create_filesystem(&a, &Props::new()).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::Exists, "{err}");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn create_without_parent_is_not_found() {
    let fx = Fx::new("create_no_parent");
    let err = fx.zfs.create_filesystem(&fx.name("missing/child"), &Props::new()).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::NotFound, "{err}");
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn exists_is_false_for_missing_dataset_snapshot_and_pool() {
    let fx = Fx::new("exists_missing");
    assert!(!fx.zfs.exists(fx.name("nope").as_str()).unwrap());
    assert!(!fx.zfs.exists(fx.snap("nope@nope").as_str()).unwrap());
    assert!(!fx.zfs.exists("nosuchpool/x").unwrap());
}

// ---- snapshots ----------------------------------------------------------------------------------

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn snapshot_one() {
    let fx = Fx::new("snapshot_one");
    let s = fx.root.snapshot("s1").unwrap();
    fx.zfs.snapshot(std::slice::from_ref(&s)).unwrap();
    assert!(fx.zfs.exists(s.as_str()).unwrap());
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn snapshot_many_in_one_call() {
    let fx = Fx::new("snapshot_many");
    let snaps: Vec<SnapshotName> = (0..4)
        .map(|i| {
            let d = fx.name(&format!("d{i}"));
            fx.zfs.create_filesystem(&d, &Props::new()).unwrap();
            d.snapshot("batch").unwrap()
        })
        .collect();
    fx.zfs.snapshot(&snaps).unwrap();
    for s in &snaps {
        assert!(fx.zfs.exists(s.as_str()).unwrap(), "{s}");
    }
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn snapshot_batch_is_all_or_nothing_when_one_exists() {
    let fx = Fx::new("snapshot_batch_exists");
    let (a, b, c) = (fx.name("a"), fx.name("b"), fx.name("c"));
    for d in [&a, &b, &c] {
        fx.zfs.create_filesystem(d, &Props::new()).unwrap();
    }
    let taken = b.snapshot("s").unwrap();
    fx.zfs.snapshot(std::slice::from_ref(&taken)).unwrap();
    let batch = vec![a.snapshot("s").unwrap(), taken.clone(), c.snapshot("s").unwrap()];
    let err = fx.zfs.snapshot(&batch).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::Exists, "{err}");
    let Some(z) = err.zfs() else { unreachable!() };
    assert_eq!(z.per_name().len(), 1, "{err}");
    assert_eq!(z.per_name()[0].name, taken.as_str());
    assert_eq!(z.per_name()[0].kind, ZfsErrorKind::Exists);
    assert!(!fx.zfs.exists(batch[0].as_str()).unwrap(), "batch must be all-or-nothing");
    assert!(!fx.zfs.exists(batch[2].as_str()).unwrap(), "batch must be all-or-nothing");
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn snapshot_batch_is_all_or_nothing_when_one_dataset_is_missing() {
    let fx = Fx::new("snapshot_batch_missing");
    let a = fx.name("a");
    fx.zfs.create_filesystem(&a, &Props::new()).unwrap();
    let batch = vec![a.snapshot("s").unwrap(), fx.snap("missing@s")];
    let err = fx.zfs.snapshot(&batch).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::NotFound, "{err}");
    let Some(z) = err.zfs() else { unreachable!() };
    assert!(
        z.per_name()
            .iter()
            .any(|n| n.name == batch[1].as_str() && n.kind == ZfsErrorKind::NotFound),
        "{err}"
    );
    assert!(!fx.zfs.exists(batch[0].as_str()).unwrap());
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn snapshot_across_pools_is_pools_differ() {
    let fx = Fx::new("snapshot_cross_pool");
    let b = fx.root_b();
    let batch = vec![fx.root.snapshot("x").unwrap(), b.snapshot("x").unwrap()];
    let err = fx.zfs.snapshot(&batch).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::PoolsDiffer, "{err}");
    assert_eq!(err.kind(), ErrorKind::CrossDevice);
    assert!(!fx.zfs.exists(batch[0].as_str()).unwrap());
    assert!(!fx.zfs.exists(batch[1].as_str()).unwrap());
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn snapshot_two_of_one_dataset_is_refused_before_the_call() {
    let fx = Fx::new("snapshot_dup_dataset");
    let batch = vec![fx.root.snapshot("x").unwrap(), fx.root.snapshot("y").unwrap()];
    let err = fx.zfs.snapshot(&batch).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidName, "{err}");
    assert!(!fx.zfs.exists(batch[0].as_str()).unwrap());
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn snapshot_with_user_property_is_readable_by_channel_program() {
    let fx = Fx::new("snapshot_user_prop");
    let s = fx.root.snapshot("p").unwrap();
    fx.zfs.snapshot_with_props(std::slice::from_ref(&s), &[("goldclone:session", "abc")]).unwrap();
    let v = fx
        .zfs
        .channel_program(
            fx.root.pool(),
            "local v, src = zfs.get_prop((...)[\"argv\"][1], \"goldclone:session\") return v",
            &[s.as_str()],
            false,
        )
        .unwrap();
    assert_eq!(v, ZcpValue::String("abc".into()));
}

// ---- clones and mounting --------------------------------------------------------------------------

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn clone_mount_sees_golden_and_writes_stay_private() {
    let fx = Fx::new("clone_mount");
    let base = fx.golden();
    let session = fx.name("s1");
    fx.zfs.clone_snapshot(&session, &base, &Props::new().canmount(CanMount::NoAuto)).unwrap();
    let dir = fx.mount(&session, "s1");
    assert_eq!(fs::read_to_string(dir.join("hello.txt")).unwrap(), "golden\n");
    assert_eq!(fs::read_to_string(dir.join("etc/app/config")).unwrap(), "x=1\n");
    fs::write(dir.join("hello.txt"), "mine\n").unwrap();
    fx.unmount(&dir);
    let gdir = fx.mount(&base.dataset(), "golden-check");
    assert_eq!(fs::read_to_string(gdir.join("hello.txt")).unwrap(), "golden\n");
    fx.unmount(&gdir);
    let dir = fx.mount(&session, "s1");
    assert_eq!(fs::read_to_string(dir.join("hello.txt")).unwrap(), "mine\n");
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn clone_with_properties() {
    let fx = Fx::new("clone_props");
    let base = fx.golden();
    let c = fx.name("c");
    let mp = "/tmp/goldclone-zfs-tests/clone_props/c";
    fx.zfs
        .clone_snapshot(
            &c,
            &base,
            &Props::new().mountpoint(mp).canmount(CanMount::NoAuto).user("goldclone:owner", "t"),
        )
        .unwrap();
    let prog = "local a = (...)[\"argv\"] \
                local m = zfs.get_prop(a[1], \"mountpoint\") \
                local o = zfs.get_prop(a[1], \"goldclone:owner\") \
                local g = zfs.get_prop(a[1], \"origin\") \
                return {mountpoint = m, owner = o, origin = g}";
    let ZcpValue::Table(t) = fx.zfs.channel_program(c.pool(), prog, &[c.as_str()], false).unwrap()
    else {
        panic!("expected a table");
    };
    assert_eq!(t.get("mountpoint"), Some(&ZcpValue::String(mp.into())));
    assert_eq!(t.get("owner"), Some(&ZcpValue::String("t".into())));
    assert_eq!(t.get("origin"), Some(&ZcpValue::String(base.to_string())));
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn clone_onto_existing_is_exists() {
    let fx = Fx::new("clone_exists");
    let base = fx.golden();
    let c = fx.name("c");
    fx.zfs.clone_snapshot(&c, &base, &Props::new()).unwrap();
    let err = fx.zfs.clone_snapshot(&c, &base, &Props::new()).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::Exists, "{err}");
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn clone_of_missing_snapshot_is_not_found() {
    let fx = Fx::new("clone_missing_origin");
    fx.golden();
    let err =
        fx.zfs.clone_snapshot(&fx.name("c"), &fx.snap("golden@nope"), &Props::new()).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::NotFound, "{err}");
    assert!(!fx.zfs.exists(fx.name("c").as_str()).unwrap());
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn clone_into_missing_parent_is_not_found() {
    let fx = Fx::new("clone_missing_parent");
    let base = fx.golden();
    let err = fx.zfs.clone_snapshot(&fx.name("nope/c"), &base, &Props::new()).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::NotFound, "{err}");
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn clone_across_pools_is_pools_differ() {
    let fx = Fx::new("clone_cross_pool");
    let base = fx.golden();
    let target = fx.root_b().child("c").unwrap();
    let err = fx.zfs.clone_snapshot(&target, &base, &Props::new()).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::PoolsDiffer, "{err}");
    assert!(!fx.zfs.exists(target.as_str()).unwrap());
}

// ---- destroy ----------------------------------------------------------------------------------------

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn destroy_clone_then_its_snapshot() {
    let fx = Fx::new("destroy_clone_snap");
    let base = fx.golden();
    let c = fx.name("c");
    fx.zfs.clone_snapshot(&c, &base, &Props::new()).unwrap();
    fx.zfs.destroy(&c).unwrap();
    assert!(!fx.zfs.exists(c.as_str()).unwrap());
    fx.zfs.destroy_snapshots(std::slice::from_ref(&base), false).unwrap();
    assert!(!fx.zfs.exists(base.as_str()).unwrap());
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn destroy_missing_is_not_found_and_missing_snapshots_are_ignored() {
    let fx = Fx::new("destroy_missing");
    let err = fx.zfs.destroy(&fx.name("nope")).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::NotFound, "{err}");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    // libzfs_core documents that destroy_snaps skips snapshots that do not exist.
    fx.zfs.destroy_snapshots(&[fx.root.snapshot("nope").unwrap()], false).unwrap();
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn destroy_cloned_snapshot_is_snapshot_has_clones() {
    let fx = Fx::new("destroy_cloned_snap");
    let base = fx.golden();
    fx.zfs.clone_snapshot(&fx.name("c"), &base, &Props::new()).unwrap();
    let err = fx.zfs.destroy_snapshots(std::slice::from_ref(&base), false).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::SnapshotHasClones, "{err}");
    assert_eq!(err.kind(), ErrorKind::SnapshotHasClones);
    let Some(z) = err.zfs() else { unreachable!() };
    assert_eq!(z.per_name().first().map(|n| n.name.as_str()), Some(base.as_str()), "{err}");
    assert!(fx.zfs.exists(base.as_str()).unwrap());
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn destroy_snapshots_is_all_or_nothing() {
    let fx = Fx::new("destroy_snaps_atomic");
    let base = fx.golden();
    let free = fx.root.snapshot("free").unwrap();
    fx.zfs.snapshot(std::slice::from_ref(&free)).unwrap();
    fx.zfs.clone_snapshot(&fx.name("c"), &base, &Props::new()).unwrap();
    let err = fx.zfs.destroy_snapshots(&[free.clone(), base.clone()], false).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::SnapshotHasClones, "{err}");
    assert!(fx.zfs.exists(free.as_str()).unwrap(), "no snapshot may be destroyed when one fails");
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn deferred_destroy_of_cloned_snapshot_happens_with_last_clone() {
    let fx = Fx::new("destroy_deferred");
    let base = fx.golden();
    let c = fx.name("c");
    fx.zfs.clone_snapshot(&c, &base, &Props::new()).unwrap();
    fx.zfs.destroy_snapshots(std::slice::from_ref(&base), true).unwrap();
    assert!(fx.zfs.exists(base.as_str()).unwrap(), "still cloned: only marked");
    fx.zfs.destroy(&c).unwrap();
    assert!(!fx.zfs.exists(base.as_str()).unwrap(), "gone with its last clone");
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn destroy_mounted_filesystem_is_busy() {
    let fx = Fx::new("destroy_mounted");
    let base = fx.golden();
    let c = fx.name("c");
    fx.zfs.clone_snapshot(&c, &base, &Props::new()).unwrap();
    let dir = fx.mount(&c, "c");
    let err = fx.zfs.destroy(&c).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::Busy, "{err}");
    assert_eq!(err.kind(), ErrorKind::Busy);
    fx.unmount(&dir);
    fx.zfs.destroy(&c).unwrap();
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn unmount_with_open_file_is_busy() {
    let fx = Fx::new("unmount_busy");
    let base = fx.golden();
    let c = fx.name("c");
    fx.zfs.clone_snapshot(&c, &base, &Props::new()).unwrap();
    let dir = fx.mount(&c, "c");
    let open = fs::File::open(dir.join("hello.txt")).unwrap();
    let err = mount::unmount(&dir).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    drop(open);
    fx.unmount(&dir);
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn destroy_with_children_is_has_children_and_with_snapshots_is_busy() {
    let fx = Fx::new("destroy_children");
    let p = fx.name("p");
    fx.zfs.create_filesystem(&p, &Props::new()).unwrap();
    fx.zfs.create_filesystem(&p.child("kid").unwrap(), &Props::new()).unwrap();
    let err = fx.zfs.destroy(&p).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::HasChildren, "{err}");
    let q = fx.name("q");
    fx.zfs.create_filesystem(&q, &Props::new()).unwrap();
    fx.zfs.snapshot(&[q.snapshot("s").unwrap()]).unwrap();
    let err = fx.zfs.destroy(&q).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::Busy, "{err}");
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn destroy_tree_removes_clones_snapshots_and_children() {
    let fx = Fx::new("destroy_tree");
    let t = fx.name("t");
    let a = t.child("a").unwrap();
    fx.zfs.create_filesystem(&t, &Props::new()).unwrap();
    fx.zfs.create_filesystem(&a, &Props::new()).unwrap();
    fx.zfs.create_filesystem(&t.child("c").unwrap(), &Props::new()).unwrap();
    fx.zfs.create_filesystem(&t.child("c/d").unwrap(), &Props::new()).unwrap();
    let s = a.snapshot("s").unwrap();
    fx.zfs.snapshot(std::slice::from_ref(&s)).unwrap();
    let b = t.child("b").unwrap();
    fx.zfs.clone_snapshot(&b, &s, &Props::new()).unwrap();
    fx.zfs.snapshot(&[b.snapshot("s2").unwrap()]).unwrap();
    fx.zfs.destroy_tree(&t).unwrap();
    for n in [t.as_str(), a.as_str(), b.as_str(), s.as_str()] {
        assert!(!fx.zfs.exists(n).unwrap(), "{n} survived destroy_tree");
    }
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn destroy_tree_with_mounted_member_fails_busy() {
    let fx = Fx::new("destroy_tree_busy");
    let t = fx.name("t");
    fx.zfs.create_filesystem(&t, &Props::new()).unwrap();
    let k = t.child("k").unwrap();
    fx.zfs.create_filesystem(&k, &Props::new()).unwrap();
    let dir = fx.mount(&k, "k");
    let err = fx.zfs.destroy_tree(&t).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::Busy, "{err}");
    assert!(fx.zfs.exists(k.as_str()).unwrap());
    fx.unmount(&dir);
    fx.zfs.destroy_tree(&t).unwrap();
    assert!(!fx.zfs.exists(t.as_str()).unwrap());
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn destroy_many_sessions_in_one_call() {
    let fx = Fx::new("destroy_many");
    let base = fx.golden();
    let sessions: Vec<DatasetName> = (0..5).map(|i| fx.name(&format!("s{i}"))).collect();
    for s in &sessions {
        fx.zfs.clone_snapshot(s, &base, &Props::new()).unwrap();
    }
    fx.zfs.destroy_many(&sessions).unwrap();
    for s in &sessions {
        assert!(!fx.zfs.exists(s.as_str()).unwrap(), "{s} survived");
    }
    fx.zfs.destroy_snapshots(std::slice::from_ref(&base), false).unwrap();
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn destroy_many_is_all_or_nothing_with_per_name_errors() {
    let fx = Fx::new("destroy_many_atomic");
    let base = fx.golden();
    let sessions: Vec<DatasetName> = (0..3).map(|i| fx.name(&format!("s{i}"))).collect();
    for s in &sessions {
        fx.zfs.clone_snapshot(s, &base, &Props::new()).unwrap();
    }
    let dir = fx.mount(&sessions[1], "s1");
    let mut batch = sessions.clone();
    batch.push(fx.name("missing"));
    let err = fx.zfs.destroy_many(&batch).unwrap_err();
    let Some(z) = err.zfs() else { panic!("expected a ZFS error, got {err:?}") };
    let kinds: Vec<(&str, ZfsErrorKind)> =
        z.per_name().iter().map(|e| (e.name.as_str(), e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (sessions[1].as_str(), ZfsErrorKind::Busy),
            (batch[3].as_str(), ZfsErrorKind::NotFound)
        ],
        "{err}"
    );
    assert_eq!(zkind(&err), ZfsErrorKind::Busy);
    for s in &sessions {
        assert!(fx.zfs.exists(s.as_str()).unwrap(), "{s} destroyed although the batch failed");
    }
    fx.unmount(&dir);
    fx.zfs.destroy_many(&sessions).unwrap();
    let err = fx.zfs.destroy_many(&[sessions[0].clone(), fx.root_b()]).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::PoolsDiffer, "{err}");
}

// ---- holds ------------------------------------------------------------------------------------------

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn held_snapshot_cannot_be_destroyed_until_released() {
    let fx = Fx::new("held_snapshot");
    let base = fx.golden();
    fx.zfs.hold(std::slice::from_ref(&base), "goldclone-test", None).unwrap();
    assert_eq!(fx.zfs.holds(&base).unwrap(), vec!["goldclone-test".to_string()]);
    let err = fx.zfs.destroy_snapshots(std::slice::from_ref(&base), false).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::SnapshotHeld, "{err}");
    assert_eq!(err.kind(), ErrorKind::SnapshotHeld);
    fx.zfs.release(std::slice::from_ref(&base), "goldclone-test").unwrap();
    assert!(fx.zfs.holds(&base).unwrap().is_empty());
    fx.zfs.destroy_snapshots(std::slice::from_ref(&base), false).unwrap();
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn hold_errors_exists_and_missing() {
    let fx = Fx::new("hold_errors");
    let base = fx.golden();
    fx.zfs.hold(std::slice::from_ref(&base), "t", None).unwrap();
    let err = fx.zfs.hold(std::slice::from_ref(&base), "t", None).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::Exists, "{err}");
    let err = fx.zfs.hold(&[fx.snap("golden@nope")], "t", None).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::NotFound, "{err}");
    let err = fx.zfs.release(std::slice::from_ref(&base), "other").unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::NotFound, "{err}");
    fx.zfs.release(std::slice::from_ref(&base), "t").unwrap();
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn hold_with_cleanup_fd_goes_away_when_fd_closes() {
    let fx = Fx::new("hold_cleanup_fd");
    let base = fx.golden();
    let cleanup = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open("/dev/zfs")
        .unwrap();
    fx.zfs.hold(std::slice::from_ref(&base), "temp", Some(cleanup.as_fd())).unwrap();
    assert_eq!(fx.zfs.holds(&base).unwrap(), vec!["temp".to_string()]);
    drop(cleanup);
    assert!(fx.zfs.holds(&base).unwrap().is_empty(), "closing the cleanup fd releases the hold");
}

// ---- rename and promote ----------------------------------------------------------------------------

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn rename_filesystem_and_snapshot() {
    let fx = Fx::new("rename");
    let (a, b) = (fx.name("a"), fx.name("b"));
    fx.zfs.create_filesystem(&a, &Props::new()).unwrap();
    fx.zfs.rename(&a, &b).unwrap();
    assert!(!fx.zfs.exists(a.as_str()).unwrap());
    assert!(fx.zfs.exists(b.as_str()).unwrap());
    let (s1, s2) = (b.snapshot("one").unwrap(), b.snapshot("two").unwrap());
    fx.zfs.snapshot(std::slice::from_ref(&s1)).unwrap();
    fx.zfs.rename_snapshot(&s1, &s2).unwrap();
    assert!(!fx.zfs.exists(s1.as_str()).unwrap());
    assert!(fx.zfs.exists(s2.as_str()).unwrap());
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn rename_errors_exists_missing_cross_pool() {
    let fx = Fx::new("rename_errors");
    let (a, b) = (fx.name("a"), fx.name("b"));
    fx.zfs.create_filesystem(&a, &Props::new()).unwrap();
    fx.zfs.create_filesystem(&b, &Props::new()).unwrap();
    let err = fx.zfs.rename(&a, &b).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::Exists, "{err}");
    let err = fx.zfs.rename(&fx.name("nope"), &fx.name("z")).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::NotFound, "{err}");
    let other = fx.root_b().child("a").unwrap();
    let err = fx.zfs.rename(&a, &other).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::PoolsDiffer, "{err}");
    assert!(fx.zfs.exists(a.as_str()).unwrap());
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn promote_moves_origin_snapshot_to_clone() {
    let fx = Fx::new("promote");
    let base = fx.golden();
    let c = fx.name("c");
    fx.zfs.clone_snapshot(&c, &base, &Props::new()).unwrap();
    fx.zfs.promote(&c).unwrap();
    assert!(fx.zfs.exists(c.snapshot("base").unwrap().as_str()).unwrap());
    assert!(!fx.zfs.exists(base.as_str()).unwrap());
    // The former origin is now the clone and can go without touching the promoted dataset.
    fx.zfs.destroy(&base.dataset()).unwrap();
    let dir = fx.mount(&c, "c");
    assert_eq!(fs::read_to_string(dir.join("hello.txt")).unwrap(), "golden\n");
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn promote_errors_not_a_clone_and_conflicting_snapshot() {
    let fx = Fx::new("promote_errors");
    let base = fx.golden();
    let err = fx.zfs.promote(&base.dataset()).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::NotAClone, "{err}");
    let later = base.dataset().snapshot("later").unwrap();
    fx.zfs.snapshot(std::slice::from_ref(&later)).unwrap();
    let c = fx.name("c");
    fx.zfs.clone_snapshot(&c, &later, &Props::new()).unwrap();
    fx.zfs.snapshot(&[c.snapshot("base").unwrap()]).unwrap();
    let err = fx.zfs.promote(&c).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::Exists, "{err}");
    let Some(z) = err.zfs() else { unreachable!() };
    assert!(z.detail().is_some_and(|d| d.ends_with("base")), "conflict should be named: {err}");
}

// ---- names --------------------------------------------------------------------------------------------

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn invalid_names_never_reach_the_kernel() {
    let fx = Fx::new("invalid_names");
    for bad in ["", "/abs", "a//b", "trailing/", "bad*char", "two@@ats", "mirror/x", "1pool"] {
        assert_eq!(fx.zfs.exists(bad).unwrap_err().kind(), ErrorKind::InvalidName, "{bad:?}");
    }
    assert_eq!(
        SnapshotName::new(&format!("{}@a@b", fx.root)).unwrap_err().kind(),
        ErrorKind::InvalidName
    );
    assert_eq!(SnapshotName::new(fx.root.as_str()).unwrap_err().kind(), ErrorKind::InvalidName);
    let err = fx.zfs.channel_program("pool/child", "return 1", &[], false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidName);
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn name_length_limit_matches_the_kernel() {
    let fx = Fx::new("name_length");
    let prefix = format!("{}/", fx.root);
    // 253 bytes of dataset + "@s" = 255: the longest name the kernel accepts.
    let long = ds(&format!("{prefix}{}", "n".repeat(253 - prefix.len())));
    fx.zfs.create_filesystem(&long, &Props::new()).unwrap();
    let at_limit = long.snapshot("s").unwrap();
    assert_eq!(at_limit.as_str().len(), 255);
    fx.zfs.snapshot(std::slice::from_ref(&at_limit)).unwrap();
    assert!(fx.zfs.exists(at_limit.as_str()).unwrap());
    let err = long.snapshot("s2").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NameTooLong, "{err}");
    let err = DatasetName::new(&format!("{prefix}{}", "n".repeat(256 - prefix.len()))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NameTooLong);
}

// ---- channel programs, sync, space ------------------------------------------------------------------

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn channel_program_results_and_errors() {
    let fx = Fx::new("channel_program");
    let pool = fx.root.pool().to_string();
    assert_eq!(
        fx.zfs.channel_program(&pool, "return 40 + 2", &[], false).unwrap(),
        ZcpValue::Int(42)
    );
    let v = fx.zfs.channel_program(&pool, "return (...)[\"argv\"][2]", &["a", "b"], false).unwrap();
    assert_eq!(v, ZcpValue::String("b".into()));
    let err = fx.zfs.channel_program(&pool, "error(\"boom\")", &[], false).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::ProgramFailed, "{err}");
    let Some(z) = err.zfs() else { unreachable!() };
    assert!(z.detail().is_some_and(|d| d.contains("boom")), "{err}");
    let err = fx.zfs.channel_program(&pool, "return (", &[], false).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::ProgramFailed, "{err}");
    let err = fx.zfs.channel_program("nosuchpool", "return 1", &[], false).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::NotFound, "{err}");
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn children_lists_direct_children_only() {
    let fx = Fx::new("children");
    let parent = fx.name("p");
    fx.zfs.create_filesystem(&parent, &Props::new()).unwrap();
    assert_eq!(fx.zfs.children(&parent).unwrap(), Vec::<DatasetName>::new());
    let mut want = Vec::new();
    for n in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"] {
        let child = parent.child(n).unwrap();
        fx.zfs.create_filesystem(&child, &Props::new()).unwrap();
        want.push(child);
    }
    let v = parent.child("vol").unwrap();
    fx.zfs.create_volume(&v, &Props::new().volsize(16 << 20)).unwrap();
    want.push(v);
    // Grandchildren and snapshots are not children.
    fx.zfs.create_filesystem(&parent.child("a/deep").unwrap(), &Props::new()).unwrap();
    fx.zfs.snapshot(&[parent.snapshot("s").unwrap()]).unwrap();
    let mut got = fx.zfs.children(&parent).unwrap();
    got.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    want.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    assert_eq!(got, want);
    let err = fx.zfs.children(&fx.name("missing")).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::NotFound, "{err}");
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn sync_pool_and_missing_pool() {
    let fx = Fx::new("sync");
    fx.zfs.sync(fx.root.pool()).unwrap();
    let err = fx.zfs.sync("nosuchpool").unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::NotFound, "{err}");
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn reserving_more_than_the_pool_is_no_space() {
    let fx = Fx::new("no_space");
    let v = fx.name("v");
    let props = Props::new().volsize(64 << 20).number("refreservation", 1 << 40);
    let err = fx.zfs.create_volume(&v, &props).unwrap_err();
    assert_eq!(zkind(&err), ZfsErrorKind::NoSpace, "{err}");
    assert_eq!(err.kind(), ErrorKind::NoSpace);
}

const CHILD_SNAPSHOT_ENV: &str = "GOLDCLONE_TEST_CHILD_SNAPSHOT_WITHOUT_SYS_ADMIN";

/// Root without CAP_SYS_ADMIN (dropped from the bounding set by `setpriv` before exec) may open
/// /dev/zfs but not snapshot: the kernel's zfs_secpolicy answers EPERM. The test re-runs itself
/// in such a child; the child does the call and the parent checks that the child's assertions
/// ran and passed.
#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn snapshot_without_cap_sys_admin_is_permission_denied() {
    const NAME: &str = "snapshot_without_cap_sys_admin_is_permission_denied";
    if let Ok(name) = std::env::var(CHILD_SNAPSHOT_ENV) {
        let zfs = Zfs::open().expect("/dev/zfs opens without CAP_SYS_ADMIN");
        let err = zfs.snapshot(&[snap(&name)]).unwrap_err();
        assert_eq!(zkind(&err), ZfsErrorKind::PermissionDenied, "{err}");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        return;
    }
    let fx = Fx::new("no_sys_admin");
    let target = fx.root.snapshot("forbidden").unwrap();
    let out = Command::new("setpriv")
        .arg("--bounding-set=-sys_admin")
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--include-ignored", "--test-threads=1"])
        .env(CHILD_SNAPSHOT_ENV, target.as_str())
        .output()
        .expect("run setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!fx.zfs.exists(target.as_str()).unwrap());
}

// ---- sessions: concurrency, zvols, whole lifecycle ---------------------------------------------------

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn eight_threads_clone_mount_and_destroy_at_once() {
    let fx = Fx::new("eight_threads");
    let base = fx.golden();
    let barrier = std::sync::Barrier::new(8);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (fx, base, barrier) = (&fx, &base, &barrier);
            s.spawn(move || {
                barrier.wait();
                for round in 0..3 {
                    let c = fx.name(&format!("t{t}r{round}"));
                    fx.zfs
                        .clone_snapshot(&c, base, &Props::new().canmount(CanMount::NoAuto))
                        .unwrap();
                    let dir = fx.mount(&c, &format!("t{t}r{round}"));
                    assert_eq!(fs::read_to_string(dir.join("hello.txt")).unwrap(), "golden\n");
                    fs::write(dir.join("mine"), format!("{t}/{round}")).unwrap();
                    fx.unmount(&dir);
                    fx.zfs.destroy(&c).unwrap();
                }
            });
        }
    });
    assert!(
        fx.zfs.destroy_snapshots(std::slice::from_ref(&base), false).is_ok(),
        "all clones gone"
    );
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn zvol_clone_found_by_blkzname_and_xfs_mounts_with_nouuid() {
    let fx = Fx::new("zvol");
    let vol = fx.name("vol");
    fx.zfs.create_volume(&vol, &Props::new().volsize(512 << 20)).unwrap();
    let dev = mount::zvol_device(&vol, Duration::from_secs(60)).unwrap();
    let out = Command::new("mkfs.xfs").arg("-q").arg(&dev).output().expect("run mkfs.xfs");
    assert!(out.status.success(), "mkfs.xfs: {}", String::from_utf8_lossy(&out.stderr));
    let dir = fx.mkdir("vol");
    mount::mount_xfs(&dev, &dir, false).unwrap();
    fx.mounts.lock().unwrap().push(dir.clone());
    fs::write(dir.join("f"), "on xfs\n").unwrap();

    let frozen = mount::freeze(&dir).unwrap();
    let err = mount::freeze(&dir).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "second freeze: {err}");
    let s = vol.snapshot("s").unwrap();
    fx.zfs.snapshot(std::slice::from_ref(&s)).unwrap();
    frozen.thaw().unwrap();
    // Dropping the guard thaws too: freezing again works only on a thawed filesystem.
    drop(mount::freeze(&dir).unwrap());
    mount::freeze(&dir).unwrap().thaw().unwrap();
    fs::write(dir.join("after"), "not in the snapshot\n").unwrap();

    let cvol = fx.name("cvol");
    fx.zfs.clone_snapshot(&cvol, &s, &Props::new()).unwrap();
    let cdev = mount::zvol_device(&cvol, Duration::from_secs(60)).unwrap();
    assert_ne!(cdev, dev);
    let cdir = fx.mkdir("cvol");
    let err = mount::mount_xfs(&cdev, &cdir, false).unwrap_err();
    assert!(err.errno().is_some(), "duplicate UUID must be refused: {err}");
    mount::mount_xfs(&cdev, &cdir, true).unwrap();
    fx.mounts.lock().unwrap().push(cdir.clone());
    assert_eq!(fs::read_to_string(cdir.join("f")).unwrap(), "on xfs\n");
    assert_eq!(fs::metadata(cdir.join("after")).unwrap_err().kind(), IoKind::NotFound);
    fx.unmount(&cdir);
    fx.unmount(&dir);
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn session_lifecycle_end_to_end() {
    let fx = Fx::new("lifecycle");
    let golden = fx.name("golden");
    fx.zfs.create_filesystem(&golden, &Props::new()).unwrap();
    let gdir = fx.mount(&golden, "golden");
    fs::write(gdir.join("v"), "1").unwrap();
    fx.unmount(&gdir);
    // Publish a version, pin it while sessions use it, run two sessions, retire the version.
    let v1 = golden.snapshot("v1").unwrap();
    fx.zfs.snapshot(std::slice::from_ref(&v1)).unwrap();
    fx.zfs.hold(std::slice::from_ref(&v1), "sessions", None).unwrap();
    let sessions: Vec<DatasetName> = (0..2).map(|i| fx.name(&format!("sess{i}"))).collect();
    for (i, s) in sessions.iter().enumerate() {
        fx.zfs
            .clone_snapshot(
                s,
                &v1,
                &Props::new().canmount(CanMount::NoAuto).user("goldclone:session", &i.to_string()),
            )
            .unwrap();
        let d = fx.mount(s, &format!("sess{i}"));
        assert_eq!(fs::read_to_string(d.join("v")).unwrap(), "1");
        fx.unmount(&d);
    }
    fx.zfs.destroy_snapshots(std::slice::from_ref(&v1), true).unwrap();
    assert!(fx.zfs.exists(v1.as_str()).unwrap());
    fx.zfs.release(std::slice::from_ref(&v1), "sessions").unwrap();
    assert!(fx.zfs.exists(v1.as_str()).unwrap(), "clones still depend on it");
    for s in &sessions {
        fx.zfs.destroy(s).unwrap();
    }
    assert!(!fx.zfs.exists(v1.as_str()).unwrap(), "retired with its last session");
}

#[test]
#[ignore = "needs real ZFS: run by tests/zfs-vm.sh"]
fn errors_carry_op_name_and_errno() {
    let fx = Fx::new("error_fields");
    let missing = fx.name("nope");
    let err = fx.zfs.destroy(&missing).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT));
    let Some(z) = err.zfs() else { unreachable!() };
    assert_eq!(z.name(), missing.as_str());
    let text = err.to_string();
    assert!(text.contains("destroy") && text.contains(missing.as_str()), "{text}");
}
