//! Data safety of the lifecycle on every backend (copy on XFS and ext4, btrfs; ZFS and zvol in
//! the guest): goldclone never removes what a live user holds, never touches what it did not
//! make, keeps data when state is damaged, has no effect when it fails, and one stuck thing
//! never blocks the rest. Each test stands for a class; the cases are examples of it.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::lifecycle::*;
use goldclone::golden::{BackendKind, Cache, OpenOptions};
use goldclone::{Error, ErrorKind};

const FILES: usize = 5;

/// A process started in a mount namespace of its own (`unshare -m`), running `script` with
/// `$1` = `arg`; ready once it printed "ready". Killed when dropped.
struct Outsider(Child);

impl Outsider {
    fn start(script: &str, arg: &Path) -> Outsider {
        let mut child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(arg)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare (util-linux)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the outsider did not start: {line:?}");
        Outsider(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Outsider {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh empty directory outside every cache root.
fn outside_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = PathBuf::from(format!(
        "/var/tmp/goldclone-outside-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// Files a user owns, to check that nothing touched them.
fn user_files(dir: &Path) -> Vec<PathBuf> {
    let files: Vec<PathBuf> = ["notes.txt", "deep/er/photo.jpg", "sessions/s1/keep"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    for f in &files {
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, format!("user data {}", f.display())).unwrap();
    }
    files
}

fn assert_user_files(files: &[PathBuf], what: &str) {
    for f in files {
        assert_eq!(
            fs::read_to_string(f)
                .unwrap_or_else(|e| panic!("{what}: {} is gone: {e}", f.display())),
            format!("user data {}", f.display()),
            "{what}: {} changed",
            f.display()
        );
    }
}

fn busy_holders(r: Result<impl std::fmt::Debug, Error>, what: &str) -> (Vec<u32>, Vec<String>) {
    match r {
        Err(Error::SessionBusy { pids, holders, .. }) => (pids, holders),
        other => panic!("{what}: expected SessionBusy, got {other:?}"),
    }
}

fn intents_of(root: &Path, project: &str) -> usize {
    fs::read_dir(root.join(".goldclone/projects").join(project).join("journal"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One test at a time: these tests make holders the kernel cannot tell apart from holders of
/// other tests' sessions (a mount namespace copies every mount there is, a working directory
/// deeper than PATH_MAX is judged by its device), and a holder of another test's session is a
/// holder all the same.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a session is a mount of its own (ZFS, zvol, images).
fn sessions_are_mounts(b: BackendKind) -> bool {
    matches!(b, BackendKind::Zfs | BackendKind::Zvol | BackendKind::Image)
}

fn is_zfs(b: BackendKind) -> bool {
    matches!(b, BackendKind::Zfs | BackendKind::Zvol)
}

fn bind(src: &Path, dst: &Path) {
    let st = Command::new("mount").arg("--bind").arg(src).arg(dst).status().unwrap();
    assert!(st.success(), "mount --bind {} {}", src.display(), dst.display());
}

fn umount(dir: &Path) {
    let st = Command::new("umount").arg(dir).status().unwrap();
    assert!(st.success(), "umount {}", dir.display());
}

fn chattr(flag: &str, path: &Path) -> bool {
    Command::new("chattr")
        .arg(flag)
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Class 1: a user in another mount namespace, who reaches the session only through a bind
/// mount there, holds it: by working directory, by an open file, by a mapped file, or by the
/// bind mount alone. Cleanup and promote are Busy, name the holder, and change nothing.
#[test]
fn a_user_in_another_mount_namespace_holds_the_session() {
    let _serial = serial();
    let src = scratch_tree("ns", "1", FILES);
    for (root, name) in roots("ns") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let session = cache.setup("proj", "s1").unwrap();
        let scripts = [
            (
                "cwd",
                r#"mkdir -p "$1.mnt"; mount --bind "$1" "$1.mnt" && cd "$1.mnt" && echo ready && exec sleep 600"#,
            ),
            (
                "open file",
                r#"mkdir -p "$1.mnt"; mount --bind "$1" "$1.mnt" && exec 3<"$1.mnt/generation" && cd / && echo ready && exec sleep 600"#,
            ),
            (
                "mapped file",
                r#"mkdir -p "$1.mnt"; mount --bind "$1" "$1.mnt" && cd / && exec python3 -c 'import mmap,os,sys,time
f=open(sys.argv[1]); m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ); f.close(); print("ready",flush=True); time.sleep(600)' "$1.mnt/sub/f000""#,
            ),
            (
                "bind mount of a subdirectory",
                r#"mkdir -p "$1.mnt"; mount --bind "$1/sub" "$1.mnt" && cd / && echo ready && exec sleep 600"#,
            ),
        ];
        for (how, script) in scripts {
            let what = format!("{name}: {how}");
            let holder = Outsider::start(script, &session);
            let before = snapshot_tree(&root.path);
            let (pids, holders) = busy_holders(cache.cleanup("proj", "s1"), &what);
            assert!(!holders.is_empty(), "{what}: no holder named");
            if how != "bind mount of a subdirectory" {
                assert!(
                    pids.contains(&holder.pid()),
                    "{what}: {holders:?} lacks pid {}",
                    holder.pid()
                );
            } else {
                assert!(holders.iter().any(|h| h.contains("mount")), "{what}: {holders:?}");
            }
            busy_holders(cache.promote("proj", "s1"), &what);
            assert_eq!(
                snapshot_tree(&root.path),
                before,
                "{what}: a refused operation changed the cache"
            );
            assert_eq!(whole_generation(&session, FILES), "1", "{what}: the session was touched");
            assert_eq!(
                intents_of(&root.path, "proj"),
                0,
                "{what}: a refused operation left its intent"
            );
            assert_eq!(cache.info("proj").unwrap().generation, 1, "{what}");
            drop(holder);
            let _ = fs::remove_dir(session.with_extension("mnt"));
        }
        // Free again: both work.
        assert_eq!(cache.promote("proj", "s1").unwrap(), 2, "{name}");
        cache.cleanup("proj", "s1").unwrap();
    }
    let _ = fs::remove_dir_all(&src);
}

/// Class 1 at the kernel's limit: a process whose working directory is deeper inside the
/// session than a path can name (over PATH_MAX, so its /proc link cannot be read) still holds
/// it; cleanup is Busy, names it, and removes nothing.
#[test]
fn a_holder_deeper_than_path_max_still_holds() {
    let _serial = serial();
    let src = scratch_tree("deep", "1", FILES);
    let component = "d".repeat(200);
    // 24 directories of 200 bytes: about 4.8 KiB below the session, past PATH_MAX (4096).
    // Each step relative to the last (a shell's cd builds the whole path, and fails there).
    let script = format!(
        r#"exec python3 -c 'import os,sys,time
os.chdir(sys.argv[1])
for _ in range(24):
    os.mkdir("{component}"); os.chdir("{component}")
print("ready",flush=True); time.sleep(600)' "$1""#
    );
    for (root, name) in roots("deep") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let session = cache.setup("proj", "s1").unwrap();
        let holder = Outsider::start(&script, &session);
        let (pids, holders) = busy_holders(cache.cleanup("proj", "s1"), name);
        assert!(pids.contains(&holder.pid()), "{name}: {holders:?} lacks pid {}", holder.pid());
        assert_eq!(whole_generation(&session, FILES), "1", "{name}: the session was touched");
        assert!(session.join(&component).is_dir(), "{name}: the deep tree was removed");
        drop(holder);
        cache.cleanup("proj", "s1").unwrap();
        assert!(!session.exists(), "{name}");
    }
    let _ = fs::remove_dir_all(&src);
}

/// Class 2: removal never crosses a mount point. A host directory bind-mounted inside a
/// session makes cleanup and promote Busy, naming the mount, and nothing on the other side is
/// touched; removing such a tree directly stops at the mount.
#[test]
fn a_mount_inside_a_session_is_never_crossed() {
    let _serial = serial();
    let src = scratch_tree("mnt", "1", FILES);
    for (root, name) in roots("mnt") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let session = cache.setup("proj", "s1").unwrap();
        let host = outside_dir("hostdata");
        let files = user_files(&host);
        let inside = session.join("hostdata");
        fs::create_dir(&inside).unwrap();
        bind(&host, &inside);
        let (_, holders) = busy_holders(cache.cleanup("proj", "s1"), name);
        assert!(
            holders.iter().any(|h| h.contains("hostdata") || h.contains("mounted inside")),
            "{name}: the mount is not named: {holders:?}"
        );
        busy_holders(cache.promote("proj", "s1"), name);
        assert_user_files(&files, name);
        let report = cache.gc().unwrap();
        assert!(report.removed.is_empty(), "{name}: {report:?}");
        assert_user_files(&files, name);
        umount(&inside);
        assert_user_files(&files, name);
        let _ = cache.cleanup("proj", "s1");
        let _ = fs::remove_dir_all(&host);
    }
    let _ = fs::remove_dir_all(&src);
}

/// The removal primitive itself stops at a mount point (here in this namespace) and leaves
/// what is mounted there alone.
#[test]
fn remove_tree_stops_at_a_mount_point() {
    let _serial = serial();
    let tree = outside_dir("rm-mount-tree");
    fs::create_dir_all(tree.join("a/b")).unwrap();
    fs::write(tree.join("a/file"), "x").unwrap();
    let host = outside_dir("rm-mount");
    let files = user_files(&host);
    bind(&host, &tree.join("a/b"));
    let e = goldclone::copy::remove_tree(&tree).unwrap_err();
    assert!(matches!(e, Error::MountPoint { .. }), "{e:?}");
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.to_string().contains("a/b"), "{e}");
    assert_user_files(&files, "remove_tree");
    umount(&tree.join("a/b"));
    goldclone::copy::remove_tree(&tree).unwrap();
    assert_user_files(&files, "remove_tree");
    let _ = fs::remove_dir_all(&host);
}

/// Class 3: no valid id collides with a record or with another id's tree.
#[test]
fn ids_that_look_like_records_are_just_ids() {
    let _serial = serial();
    let src = scratch_tree("names", "1", FILES);
    for (root, name) in roots("names") {
        let cache = open(&root);
        for project in ["proj", "gen", "sessions", "trash", "projects", "current"] {
            cache.import(project, &src).unwrap();
        }
        let ids =
            ["b", "b.json", "a.json", "b.json.json", "current", "lock", "gate", "journal", "gen"];
        for s in ids {
            cache.setup("proj", s).unwrap();
        }
        assert_eq!(cache.setup("proj", "b.json").unwrap_err().kind(), ErrorKind::AlreadyExists);
        assert_eq!(cache.setup("proj", "b").unwrap_err().kind(), ErrorKind::AlreadyExists);
        let info = cache.info("proj").unwrap();
        let mut listed: Vec<String> = info.sessions.iter().map(|(s, _)| s.clone()).collect();
        listed.sort();
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(listed, want, "{name}");
        assert!(cache.gc().unwrap().is_empty(), "{name}");
        for s in ids {
            assert_eq!(
                whole_generation(&root.path.join("proj/sessions").join(s), FILES),
                "1",
                "{name}: {s}"
            );
        }
        cache.cleanup("proj", "b.json").unwrap();
        assert_eq!(whole_generation(&root.path.join("proj/sessions/b"), FILES), "1", "{name}");
        for s in ids.iter().filter(|s| **s != "b.json") {
            cache.cleanup("proj", s).unwrap();
        }
        assert!(cache.gc().unwrap().is_empty(), "{name}");
    }
    let _ = fs::remove_dir_all(&src);
}

/// Class 4: gc and every operation leave alone what goldclone did not make: user data under
/// the root, a project directory replaced by a symlink, a session tree replaced by a symlink.
#[test]
fn what_goldclone_did_not_make_is_reported_never_removed() {
    let _serial = serial();
    let src = scratch_tree("foreign", "1", FILES);
    for (root, name) in roots("foreign") {
        // A directory that already holds user data, named like projects and their parts.
        let mut files = user_files(&root.path.join("build"));
        files.extend(user_files(&root.path.join("photos/gen/1")));
        let cache = open(&root);
        assert_eq!(
            cache.import("photos", &src).unwrap_err().kind(),
            ErrorKind::AlreadyExists,
            "{name}: import into a user's directory"
        );
        // An empty directory of the user's: the refused import leaves it.
        fs::create_dir(root.path.join("empty")).unwrap();
        assert_eq!(cache.import("empty", &src).unwrap_err().kind(), ErrorKind::AlreadyExists);
        assert!(
            root.path.join("empty").is_dir(),
            "{name}: a refused import removed the user's directory"
        );
        fs::remove_dir(root.path.join("empty")).unwrap();
        cache.import("proj", &src).unwrap();
        cache.setup("proj", "s1").unwrap();
        let report = cache.gc().unwrap();
        assert!(report.removed.is_empty() && report.failed.is_empty(), "{name}: {report:?}");
        assert!(report.kept.iter().any(|k| k.contains("build")), "{name}: {report:?}");
        assert!(report.kept.iter().any(|k| k.contains("photos")), "{name}: {report:?}");
        assert_user_files(&files, name);

        // A session tree replaced by a symlink to somewhere else.
        let elsewhere = outside_dir("symlinked");
        let elsewhere_files = user_files(&elsewhere);
        let s1 = root.path.join("proj/sessions/s1");
        let aside = root.path.join("proj/s1.aside");
        if sessions_are_mounts(root.backend) {
            umount(&s1);
            fs::remove_dir(&s1).unwrap();
        } else {
            fs::rename(&s1, &aside).unwrap();
        }
        symlink(&elsewhere, &s1).unwrap();
        let e = cache.promote("proj", "s1").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Damaged, "{name}: promote of a symlinked session: {e}");
        assert_eq!(
            cache.info("proj").unwrap().generation,
            1,
            "{name}: a generation was made from it"
        );
        cache.cleanup("proj", "s1").unwrap_err();
        let report = cache.gc().unwrap();
        assert!(report.kept.iter().any(|k| k.contains("s1")), "{name}: {report:?}");
        assert_user_files(&elsewhere_files, name);
        assert!(
            fs::symlink_metadata(&s1).unwrap().file_type().is_symlink(),
            "{name}: the symlink was touched"
        );
        fs::remove_file(&s1).unwrap();
        if sessions_are_mounts(root.backend) {
            fs::create_dir(&s1).unwrap();
            // Remounting it by hand makes it the recorded session again.
            let ds = report.kept.iter().find(|k| k.contains("s1")).cloned().unwrap_or_default();
            let _ = ds;
        } else {
            fs::rename(&aside, &s1).unwrap();
        }

        // The project's directory replaced by a symlink out of the root.
        let target = outside_dir("proj-target");
        let target_files = user_files(&target.join("sessions/s1"));
        let proj = root.path.join("proj");
        let proj_aside = root.path.join("proj.aside");
        if !is_zfs(root.backend) {
            fs::rename(&proj, &proj_aside).unwrap();
            symlink(&target, &proj).unwrap();
            assert!(
                cache.setup("proj", "s2").is_err(),
                "{name}: setup through a symlinked project"
            );
            assert!(
                cache.cleanup("proj", "s1").is_err(),
                "{name}: cleanup through a symlinked project"
            );
            assert!(
                cache.promote("proj", "s1").is_err(),
                "{name}: promote through a symlinked project"
            );
            let report = cache.gc().unwrap();
            assert!(report.removed.is_empty(), "{name}: {report:?}");
            assert_user_files(&target_files, name);
            assert!(
                fs::read_dir(target.join("sessions")).unwrap().count() == 1,
                "{name}: something was added"
            );
            fs::remove_file(&proj).unwrap();
            fs::rename(&proj_aside, &proj).unwrap();
            cache.cleanup("proj", "s1").unwrap();
        }
        assert_user_files(&files, name);
        for d in [elsewhere, target] {
            let _ = fs::remove_dir_all(d);
        }
        let _ = goldclone::copy::remove_tree(&root.path.join("build"));
        let _ = goldclone::copy::remove_tree(&root.path.join("photos"));
    }
    let _ = fs::remove_dir_all(&src);
}

/// Class 5: damaged state — a lying or corrupt `current`, corrupt records, hostile journal
/// entries — gets a typed error or is reported; no generation that may be current is removed,
/// nothing outside the root is touched, nothing panics.
#[test]
fn damaged_state_keeps_every_generation() {
    let _serial = serial();
    let src = scratch_tree("damaged", "1", FILES);
    for (root, name) in roots("damaged") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let s1 = cache.setup("proj", "s1").unwrap();
        fs::write(s1.join("generation"), "2").unwrap();
        for i in 0..FILES {
            fs::write(s1.join("sub").join(format!("f{i:03}")), "2").unwrap();
        }
        assert_eq!(cache.promote("proj", "s1").unwrap(), 2);
        let current = root.path.join(".goldclone/projects/proj/current");
        let gen1 = root.path.join(".goldclone/projects/proj/gen/1.json");
        let gen2 = root.path.join(".goldclone/projects/proj/gen/2.json");
        for (damage, content) in [
            ("emptied", ""),
            ("garbage", "two\n"),
            ("missing generation", "9\n"),
            ("zero", "0\n"),
            ("older generation", "1\n"),
        ] {
            let what = format!("{name}: current {damage}");
            fs::write(&current, content).unwrap();
            let report = cache.gc().unwrap();
            assert!(report.removed.is_empty(), "{what}: gc removed {:?}", report.removed);
            assert!(!report.kept.is_empty(), "{what}: the damage was not reported: {report:?}");
            assert!(gen1.exists() && gen2.exists(), "{what}: a generation record was removed");
            if damage == "older generation" {
                // Lying but well formed: sessions come from what it names; generation 2, newer,
                // is kept as possibly current.
                assert!(report.kept.iter().any(|k| k.contains("newer")), "{what}: {report:?}");
            } else {
                let e = cache.setup("proj", "s2").unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Damaged, "{what}: {e}");
                assert_eq!(cache.info("proj").unwrap_err().kind(), ErrorKind::Damaged, "{what}");
            }
        }
        fs::write(&current, "2\n").unwrap();
        assert_eq!(current_marker(&cache, FILES), "2", "{name}: generation 2 survived");

        // A corrupt record: reported, typed, nothing removed.
        let text = fs::read(&gen2).unwrap();
        fs::write(&gen2, &text[..text.len() / 2]).unwrap();
        assert_eq!(
            cache.info("proj").unwrap_err().kind(),
            ErrorKind::Damaged,
            "{name}: truncated record"
        );
        let report = cache.gc().unwrap();
        assert!(report.removed.is_empty(), "{name}: {report:?}");
        fs::write(&gen2, &text).unwrap();
        let srec = root.path.join(".goldclone/projects/proj/sessions/s1.json");
        let stext = fs::read(&srec).unwrap();
        fs::write(&srec, b"{\"project\": \"proj\", \"session\": \"other\"").unwrap();
        assert_eq!(cache.cleanup("proj", "s1").unwrap_err().kind(), ErrorKind::Damaged, "{name}");
        let report = cache.gc().unwrap();
        assert!(report.removed.is_empty(), "{name}: {report:?}");
        assert_eq!(whole_generation(&s1, FILES), "2", "{name}: session with a corrupt record");
        fs::write(&srec, &stext).unwrap();

        // Hostile journal entries: names that lead outside, or that goldclone never writes.
        let outside = outside_dir("journal");
        let files = user_files(&outside);
        let journal = root.path.join(".goldclone/projects/proj/journal");
        fs::create_dir_all(&journal).unwrap();
        let rel = pathdiff(&outside, &root.path);
        let hostile = [
            format!(
                r#"{{"op":"cleanup","project":"{rel}","session":"x","trash":".goldclone-cleanup.x.1"}}"#
            ),
            format!(
                r#"{{"op":"cleanup","project":"proj","session":"s1","trash":"../../../../{rel}"}}"#
            ),
            format!(
                r#"{{"op":"setup","project":"proj","session":"../../{rel}","generation":1,"staging":".goldclone-setup.x.1"}}"#
            ),
            r#"{"op":"import","project":"proj","generation":0,"staging":".goldclone-import.1.1"}"#
                .to_string(),
            "not json".to_string(),
        ];
        for (i, h) in hostile.iter().enumerate() {
            fs::write(journal.join(format!("session-hostile{i}.json")), h).unwrap();
        }
        let reopened = Cache::open(
            &root.path,
            &OpenOptions { backend: Some(root.backend), ..Default::default() },
        )
        .unwrap();
        let report = reopened.gc().unwrap();
        assert!(
            report.kept.len() >= hostile.len(),
            "{name}: hostile entries not reported: {report:?}"
        );
        assert!(report.removed.is_empty() && report.recovered.is_empty(), "{name}: {report:?}");
        assert_user_files(&files, name);
        assert_eq!(whole_generation(&s1, FILES), "2", "{name}");
        for i in 0..hostile.len() {
            fs::remove_file(journal.join(format!("session-hostile{i}.json"))).unwrap();
        }
        // A state directory under an invalid project name.
        fs::create_dir_all(root.path.join(".goldclone/projects/-bad")).unwrap();
        let report = reopened.gc().unwrap();
        assert!(report.kept.iter().any(|k| k.contains("-bad")), "{name}: {report:?}");
        fs::remove_dir(root.path.join(".goldclone/projects/-bad")).unwrap();
        let _ = fs::remove_dir_all(&outside);
        reopened.cleanup("proj", "s1").unwrap();
    }
    let _ = fs::remove_dir_all(&src);
}

/// `to` relative to `from`, with `..` components.
fn pathdiff(to: &Path, from: &Path) -> String {
    let ups = from.components().count() - 1;
    format!("{}{}", "../".repeat(ups), to.strip_prefix("/").unwrap().display())
}

/// Class 6: an operation that returns an error has had no lasting effect; one that took effect
/// does not report failure.
#[test]
fn a_failed_operation_has_no_effect() {
    let _serial = serial();
    let src = scratch_tree("atomic", "1", FILES);
    for (root, name) in roots("atomic") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();

        // The session's own directory is immutable: it cannot be taken away. Either the
        // cleanup is refused and changes nothing, or (ZFS: unmount and destroy do not care) it
        // happens completely.
        let s1 = cache.setup("proj", "s1").unwrap();
        if chattr("+i", &s1) {
            let before = snapshot_tree(&root.path);
            match cache.cleanup("proj", "s1") {
                Err(e) => {
                    assert_eq!(
                        snapshot_tree(&root.path),
                        before,
                        "{name}: refused cleanup changed the cache ({e})"
                    );
                    assert!(
                        cache.info("proj").unwrap().sessions.iter().any(|(s, _)| s == "s1"),
                        "{name}: {e}"
                    );
                    assert_eq!(
                        intents_of(&root.path, "proj"),
                        0,
                        "{name}: refused cleanup left its intent"
                    );
                    // A later gc does not finish what was refused.
                    cache.gc().unwrap();
                    assert_eq!(whole_generation(&s1, FILES), "1", "{name}");
                    assert!(chattr("-i", &s1));
                    cache.cleanup("proj", "s1").unwrap();
                }
                Ok(()) => {
                    assert!(!s1.exists(), "{name}: cleanup reported success, session left");
                    assert!(cache.info("proj").unwrap().sessions.is_empty(), "{name}");
                }
            }
        }

        // An immutable file inside: the session is taken away (the cleanup succeeds); its
        // space comes back once gc can remove it.
        let s2 = cache.setup("proj", "s2").unwrap();
        let locked = s2.join("sub/f000");
        if chattr("+i", &locked) {
            cache.cleanup("proj", "s2").unwrap();
            assert!(!s2.exists(), "{name}: the session is still at its place");
            assert!(cache.info("proj").unwrap().sessions.is_empty(), "{name}");
            let report = cache.gc().unwrap();
            if let Some(f) = report.failed.first() {
                // Unlock what the trash still holds, then gc finishes.
                assert!(f.contains("trash"), "{name}: {report:?}");
                let trash = root.path.join(".goldclone/trash/proj");
                for e in fs::read_dir(&trash).unwrap().flatten() {
                    assert!(chattr("-i", &e.path().join("sub/f000")), "{name}");
                }
                let report = cache.gc().unwrap();
                assert!(
                    report.failed.is_empty() && !report.removed.is_empty(),
                    "{name}: {report:?}"
                );
            }
            assert!(cache.gc().unwrap().is_empty(), "{name}");
        }

        // Setup onto a place someone else took: refused, their file untouched, nothing left.
        let squat = root.path.join("proj/sessions/squat");
        fs::write(&squat, "mine").unwrap();
        let before = snapshot_tree(&root.path);
        assert_eq!(
            cache.setup("proj", "squat").unwrap_err().kind(),
            ErrorKind::AlreadyExists,
            "{name}"
        );
        assert_eq!(fs::read_to_string(&squat).unwrap(), "mine", "{name}");
        assert_eq!(
            snapshot_tree(&root.path),
            before,
            "{name}: the refused setup changed the cache"
        );
        fs::remove_file(&squat).unwrap();

        // Import of a tree that does not exist, or is a file: nothing is created for it.
        let before = snapshot_tree(&root.path);
        assert_eq!(
            cache.import("other", Path::new("/nonexistent")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            cache.import("other", &src.join("generation")).unwrap_err().kind(),
            ErrorKind::NotADirectory
        );
        assert_eq!(snapshot_tree(&root.path), before, "{name}: a failed import left something");
    }
    // Import that runs out of space half-way: no project, no lock file, no journal left (on
    // the host's small loop filesystem; the guest has none).
    if std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_none() {
        if let Some(small) = common::mount(common::Fs::Small) {
            let root = small.join(format!("nospace-{}", std::process::id()));
            fs::create_dir_all(&root).unwrap();
            let big = outside_dir("big");
            for i in 0..4 {
                fs::write(big.join(format!("blob{i}")), vec![7u8; 24 << 20]).unwrap();
            }
            let cache = Cache::open(
                &root,
                &OpenOptions { backend: Some(BackendKind::Copy), ..Default::default() },
            )
            .unwrap();
            let before = snapshot_tree(&root);
            let e = cache.import("proj", &big).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NoSpace, "{e}");
            assert_eq!(snapshot_tree(&root), before, "a failed import left something");
            let _ = fs::remove_dir_all(&big);
            let _ = goldclone::copy::remove_tree(&root);
        }
    }
    let _ = fs::remove_dir_all(&src);
}

/// Class 1 under churn: a descriptor that a busy process closes and reuses while goldclone looks
/// at it is judged by what it names at one moment, never by one file's name and another file's
/// mount. A thread of this process flips one descriptor between a file beside the sessions (on
/// the cache's filesystem) and `/proc/self/status`; nothing holds session `x`, so every cleanup
/// of it succeeds, and a file held open inside it still makes it busy.
#[test]
fn a_descriptor_reused_while_examined_holds_nothing() {
    let _serial = serial();
    let src = scratch_tree("churn", "1", FILES);
    for (root, name) in roots("churn") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let beside = root.path.join("churn-beside");
        fs::write(&beside, "not a session").unwrap();
        let stop = AtomicBool::new(false);
        let rounds = if std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_some() { 10 } else { 40 };
        let failures: Vec<String> = std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut slot = OwnedFd::from(fs::File::open(&beside).unwrap());
                while !stop.load(Ordering::Relaxed) {
                    for p in [beside.as_path(), Path::new("/proc/self/status")] {
                        let f = fs::File::open(p).unwrap();
                        rustix::io::dup2(&f, &mut slot).unwrap();
                    }
                }
            });
            let mut failures = Vec::new();
            for i in 0..rounds {
                // No panic while the thread runs: the scope would wait for it forever.
                if let Err(e) = cache.setup("proj", "x").map(drop).and_then(|()| {
                    cache.cleanup("proj", "x").or_else(|e| {
                        failures.push(format!("round {i}: {e}"));
                        cache.cleanup("proj", "x")
                    })
                }) {
                    failures.push(format!("round {i}: {e}"));
                    break;
                }
            }
            // And a file that is held open inside the session still holds it.
            match cache.setup("proj", "x") {
                Err(e) => failures.push(format!("held: setup: {e}")),
                Ok(session) => {
                    let held = fs::File::open(session.join("generation")).ok();
                    match cache.cleanup("proj", "x") {
                        Err(e) if e.kind() == ErrorKind::Busy => {}
                        other => failures.push(format!("held: {other:?}")),
                    }
                    drop(held);
                    if let Err(e) = cache.cleanup("proj", "x") {
                        failures.push(format!("after: {e}"));
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
            failures
        });
        assert!(failures.is_empty(), "{name}: {failures:#?}");
        assert!(!root.path.join("proj/sessions/x").exists(), "{name}");
    }
    let _ = fs::remove_dir_all(&src);
}

/// Class 6 under races: setups and cleanups of one session name from several threads at once.
/// Each call either takes effect or fails with no effect; afterwards the session's record and
/// tree agree, and nothing was left behind.
#[test]
fn one_session_name_raced_by_setups_and_cleanups() {
    let _serial = serial();
    let src = scratch_tree("race", "1", FILES);
    for (root, name) in roots("race") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        let made = AtomicU64::new(0);
        let removed = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (cache, made, removed) = (&cache, &made, &removed);
                scope.spawn(move || {
                    // Fewer rounds under emulation (the ZFS guest): each is a clone and a mount.
                    let rounds = if std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_some() {
                        8
                    } else {
                        30
                    };
                    for i in 0..rounds {
                        if (i + t) % 2 == 0 {
                            match cache.setup("proj", "x") {
                                Ok(_) => drop(made.fetch_add(1, Ordering::Relaxed)),
                                Err(e) => assert!(
                                    matches!(e.kind(), ErrorKind::AlreadyExists | ErrorKind::Busy),
                                    "{e}"
                                ),
                            }
                        } else {
                            match cache.cleanup("proj", "x") {
                                Ok(()) => drop(removed.fetch_add(1, Ordering::Relaxed)),
                                Err(e) => assert!(
                                    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Busy),
                                    "{e}"
                                ),
                            }
                        }
                    }
                });
            }
        });
        let (made, removed) = (made.into_inner(), removed.into_inner());
        let listed = cache.info("proj").unwrap().sessions.iter().any(|(s, _)| s == "x");
        assert_eq!(made, removed + u64::from(listed), "{name}: {made} setups, {removed} cleanups");
        assert_eq!(listed, root.path.join("proj/sessions/x").exists(), "{name}");
        if listed {
            assert_eq!(whole_generation(&root.path.join("proj/sessions/x"), FILES), "1", "{name}");
            cache.cleanup("proj", "x").unwrap();
        }
        let report = cache.gc().unwrap();
        assert!(report.kept.is_empty() && report.failed.is_empty(), "{name}: {report:?}");
        assert_eq!(intents_of(&root.path, "proj"), 0, "{name}");
        assert!(fs::read_dir(root.path.join("proj/sessions")).unwrap().next().is_none(), "{name}");
    }
    let _ = fs::remove_dir_all(&src);
}

/// Class 7: one stuck project never blocks the others: not gc, not open, not their operations.
#[test]
fn one_stuck_project_does_not_block_the_others() {
    let _serial = serial();
    let src = scratch_tree("stuck", "1", FILES);
    for (root, name) in roots("stuck") {
        let cache = open(&root);
        for p in ["a", "b", "c", "d", "e"] {
            cache.import(p, &src).unwrap();
        }
        // e: a dead cleanup whose recovery cannot finish (its session's place now holds a
        // file): reported at every open and gc, never a reason for either to fail.
        let e1 = cache.setup("e", "s1").unwrap();
        if sessions_are_mounts(root.backend) {
            umount(&e1);
        }
        goldclone::copy::remove_tree(&e1).unwrap();
        fs::write(&e1, "a file where the session was").unwrap();
        fs::write(
            root.path.join(".goldclone/projects/e/journal/session-s1.json"),
            r#"{"op":"cleanup","project":"e","session":"s1","trash":".goldclone-cleanup.s1.1"}"#,
        )
        .unwrap();
        // b: trash gc should remove.
        let b_trash = root.path.join(".goldclone/trash/b/.goldclone-cleanup.x.1");
        fs::create_dir_all(&b_trash).unwrap();
        fs::write(b_trash.join("file"), "x").unwrap();
        // c: damaged.
        fs::write(root.path.join(".goldclone/projects/c/current"), "garbage").unwrap();
        // d: trash that cannot be removed (where the filesystem has the immutable flag).
        let d_trash = root.path.join(".goldclone/trash/d/.goldclone-cleanup.y.1");
        fs::create_dir_all(&d_trash).unwrap();
        fs::write(d_trash.join("file"), "x").unwrap();
        let d_stuck = chattr("+i", &d_trash.join("file"));
        // A name goldclone never gives trash: not removed.
        fs::write(root.path.join(".goldclone/trash/b/user-file"), "mine").unwrap();
        // a: held exclusively by someone for as long as this test runs, with a dead intent.
        let journal = root.path.join(".goldclone/projects/a/journal");
        fs::create_dir_all(&journal).unwrap();
        fs::write(
            journal.join("session-ghost.json"),
            r#"{"op":"setup","project":"a","session":"ghost","generation":1,"staging":".goldclone-setup.ghost.1"}"#,
        )
        .unwrap();
        let hold = |f: &str| {
            let file = fs::File::open(root.path.join(".goldclone/projects/a").join(f)).unwrap();
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).unwrap()
        };
        let (gate, lock) = (hold("gate"), hold("lock"));
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|scope| {
            let path = root.path.clone();
            let backend = root.backend;
            scope.spawn(move || {
                let opened = Cache::open(
                    &path,
                    &OpenOptions { backend: Some(backend), ..Default::default() },
                );
                let worked = opened.and_then(|c| c.setup("b", "s2").map(|_| c));
                tx.send(worked.map(|c| c.recovery_report().clone())).unwrap();
            });
            // Not a timing threshold: a generous bound that only a deadlock exceeds.
            let got = rx
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("{name}: open or project b waited for project a"));
            let opened = got.unwrap_or_else(|e| panic!("{name}: {e}"));
            // Open did what it could without waiting: b's trash, not a's intent; e's stuck
            // recovery is reported.
            assert!(opened.removed.iter().any(|r| r.contains("trash/b/")), "{name}: {opened:?}");
            assert!(!opened.recovered.iter().any(|r| r.contains("ghost")), "{name}: {opened:?}");
            assert!(opened.failed.iter().any(|f| f.starts_with("e:")), "{name}: {opened:?}");
        });
        drop((gate, lock));
        let report = cache.gc().unwrap();
        assert!(!b_trash.exists(), "{name}");
        assert!(report.kept.iter().any(|k| k.contains("user-file")), "{name}: {report:?}");
        assert_eq!(
            fs::read_to_string(root.path.join(".goldclone/trash/b/user-file")).unwrap(),
            "mine"
        );
        fs::remove_file(root.path.join(".goldclone/trash/b/user-file")).unwrap();
        assert!(
            report.kept.iter().any(|k| k.contains("/c/current") || k.contains("project c")),
            "{name}: {report:?}"
        );
        assert!(report.recovered.iter().any(|r| r.contains("ghost")), "{name}: {report:?}");
        if d_stuck {
            assert!(report.failed.iter().any(|f| f.contains("trash/d/")), "{name}: {report:?}");
            assert!(chattr("-i", &d_trash.join("file")));
            assert!(cache.gc().unwrap().removed.iter().any(|r| r.contains("trash/d/")), "{name}");
        }
        assert!(report.failed.iter().any(|f| f.starts_with("e:")), "{name}: {report:?}");
        assert_eq!(fs::read_to_string(&e1).unwrap(), "a file where the session was", "{name}");
        // Other sessions of e still work.
        cache.setup("e", "s2").unwrap();
        cache.cleanup("e", "s2").unwrap();
        fs::remove_file(root.path.join(".goldclone/projects/e/journal/session-s1.json")).unwrap();
        fs::remove_file(&e1).unwrap();
        cache.cleanup("b", "s2").unwrap();
        fs::write(root.path.join(".goldclone/projects/c/current"), "1\n").unwrap();
    }
    let _ = fs::remove_dir_all(&src);
}

/// Class 7: exclusive operations are not starved by a stream of shared ones: promote and gc
/// finish while other threads keep setting up and cleaning up sessions of the same project.
#[test]
fn promote_and_gc_are_not_starved_by_setups() {
    let _serial = serial();
    let src = scratch_tree("starve", "1", FILES);
    for (root, name) in roots("starve") {
        let cache = open(&root);
        cache.import("proj", &src).unwrap();
        cache.setup("proj", "target").unwrap();
        let stop = AtomicBool::new(false);
        let rounds = AtomicU64::new(0);
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (cache, stop, rounds) = (&cache, &stop, &rounds);
                scope.spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let s = format!("t{t}-{i}");
                        cache.setup("proj", &s).unwrap();
                        cache.cleanup("proj", &s).unwrap();
                        rounds.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                });
            }
            let (cache, rounds) = (&cache, &rounds);
            scope.spawn(move || {
                // Let the traffic get going first.
                while rounds.load(Ordering::Relaxed) < 8 {
                    std::thread::yield_now();
                }
                let promoted = cache.promote("proj", "target");
                let collected = cache.gc();
                tx.send((promoted.map(drop), collected.map(drop))).unwrap();
            });
            // Not a timing threshold: a generous bound that only starvation exceeds.
            let got = rx.recv_timeout(Duration::from_secs(300));
            stop.store(true, Ordering::Relaxed);
            let (p, g) = got.unwrap_or_else(|_| panic!("{name}: promote and gc starved"));
            p.unwrap();
            g.unwrap();
        });
        assert_eq!(cache.info("proj").unwrap().generation, 2, "{name}");
        cache.cleanup("proj", "target").unwrap();
    }
    let _ = fs::remove_dir_all(&src);
}

/// ZFS: two cache roots, each an XFS on a zvol under one parent dataset, never share a dataset;
/// a failed import in one never destroys the other's; a same-named dataset this cache did not
/// make is refused and kept. Runs in the ZFS guest (tests/zfs-vm.sh), which fails the run if
/// it does not.
#[test]
fn two_zvol_roots_on_one_parent_share_nothing() {
    let _serial = serial();
    let Ok(parent) = std::env::var("GOLDCLONE_TEST_ZFS_PARENT") else {
        eprintln!("not in the ZFS guest: tests/zfs-vm.sh runs this");
        return;
    };
    let sh = |cmd: &str| {
        let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let base = format!("{parent}/tworoots");
    let _ = Command::new("zfs").args(["destroy", "-r", &base]).stderr(Stdio::null()).status();
    sh(&format!("zfs create -o mountpoint=none {base}"));
    let src = scratch_tree("tworoots", "1", FILES);
    let mut roots = Vec::new();
    for z in ["za", "zb", "zc"] {
        sh(&format!("zfs create -s -V 512M {base}/{z}"));
        let dev = goldclone::zfs::mount::zvol_device(
            &goldclone::zfs::DatasetName::new(&format!("{base}/{z}")).unwrap(),
            Duration::from_secs(30),
        )
        .unwrap();
        sh(&format!("mkfs.xfs -q -f {}", dev.display()));
        let dir = PathBuf::from(format!("/tmp/gc-tworoots-{z}"));
        fs::create_dir_all(&dir).unwrap();
        sh(&format!("mount -t xfs -o nouuid {} {}", dev.display(), dir.display()));
        roots.push(dir);
    }
    let open_zvol = |dir: &Path| {
        Cache::open(dir, &OpenOptions { backend: Some(BackendKind::Zvol), ..Default::default() })
            .unwrap()
    };
    let (a, b, c) = (open_zvol(&roots[0]), open_zvol(&roots[1]), open_zvol(&roots[2]));
    a.import("proj", &src).unwrap();
    let a1 = a.setup("proj", "s1").unwrap();
    b.import("proj", &src).unwrap();
    let listed = sh(&format!("zfs list -H -o name -r {base}"));
    assert!(listed.contains(&format!("{base}/za.goldclone/proj/g1")), "{listed}");
    assert!(listed.contains(&format!("{base}/zb.goldclone/proj/g1")), "{listed}");
    // A dataset where root C's would go, made by someone else: refused, kept.
    sh(&format!("zfs create -o mountpoint=none {base}/zc.goldclone"));
    sh(&format!("zfs create -o mountpoint=none {base}/zc.goldclone/proj"));
    let e = c.import("proj", &src).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let listed = sh(&format!("zfs list -H -o name -r {base}"));
    assert!(
        listed.contains(&format!("{base}/zc.goldclone/proj")),
        "the foreign dataset went: {listed}"
    );
    // A dataset a user made inside A's own one inherits the mark, but is not A's.
    sh(&format!("zfs create -o mountpoint=none {base}/za.goldclone/other"));
    let e = a.import("other", &src).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert!(sh(&format!("zfs list -H -o name {base}/za.goldclone/other")).contains("other"));
    // B's failures and B's gc leave A alone.
    assert!(b.import("proj", &src).is_err());
    b.setup("proj", "s1").unwrap();
    b.cleanup("proj", "s1").unwrap();
    assert!(b.gc().unwrap().failed.is_empty());
    assert_eq!(whole_generation(&a1, FILES), "1");
    assert!(
        sh(&format!("zfs list -H -o name -t all -r {base}/za.goldclone")).contains("proj/g1@gen1")
    );
    a.cleanup("proj", "s1").unwrap();
    drop((a, b, c));
    for dir in &roots {
        let _ = Command::new("umount").arg(dir).status();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while Command::new("zfs")
        .args(["destroy", "-r", &base])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| !s.success())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = fs::remove_dir_all(&src);
}

/// Image sessions whose mount someone else changed: goldclone acts only on the mount of the
/// session's own image. (1) A foreign filesystem mounted at a session's place after its own
/// was detached: promote refuses and freezes nothing (the foreign filesystem stays writable),
/// cleanup refuses and unmounts nothing. (2) A session detached from its place by someone else
/// while a mount namespace still uses it: its image is still on a loop device, so a cleanup is
/// Busy, a lazy one waits, and gc removes the image only once the user is gone.
#[test]
fn image_sessions_changed_behind_goldclone() {
    let _serial = serial();
    let src = scratch_tree("imgchanged", "1", FILES);
    let mut ran = 0;
    for (root, name) in roots("imgchanged") {
        if root.backend != BackendKind::Image {
            continue;
        }
        ran += 1;
        let cache = open(&root);
        cache.import("proj", &src).unwrap();

        // (1) a foreign tmpfs where the session was mounted
        let s1 = cache.setup("proj", "s1").unwrap();
        let st = Command::new("umount").arg("-l").arg(&s1).status().unwrap();
        assert!(st.success());
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "foreign"])
            .arg(&s1)
            .status()
            .unwrap();
        assert!(st.success());
        fs::write(s1.join("user-data"), "keep").unwrap();
        let err = cache.promote("proj", "s1").unwrap_err();
        assert_ne!(err.kind(), ErrorKind::Io, "{name}: an untyped refusal: {err}");
        assert_eq!(cache.info("proj").unwrap().generation, 1, "{name}: {err}");
        // Not frozen: a write returns.
        fs::write(s1.join("after-promote"), "written").unwrap();
        let err = cache.cleanup("proj", "s1").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Damaged, "{name}: cleanup of a foreign mount: {err}");
        assert!(common::is_mount_point(&s1), "{name}: the foreign mount was unmounted");
        assert_eq!(fs::read_to_string(s1.join("user-data")).unwrap(), "keep", "{name}");
        umount(&s1);
        // Free of the foreign mount, the session goes (a cleanup, or the recovery of the one
        // refused above).
        let _ = cache.cleanup("proj", "s1");
        let err = cache.session_info("proj", "s1").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{name}: {err}");
        assert!(!root.path.join(".goldclone/images/proj/s1").exists(), "{name}");

        // (2) detached by someone else, still used from another mount namespace
        let s2 = cache.setup("proj", "s2").unwrap();
        let user = Outsider::start(r#"cd "$1" && echo ready && exec sleep 600"#, &s2);
        let st = Command::new("umount").arg("-l").arg(&s2).status().unwrap();
        assert!(st.success());
        let err = cache.cleanup("proj", "s2").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy, "{name}: {err}");
        let image = root.path.join(".goldclone/images/proj/s2");
        assert!(image.is_file(), "{name}: the image of a session in use was removed");
        let lazy = goldclone::golden::CleanupOptions { lazy: true };
        cache.cleanup_with_options("proj", "s2", &lazy).unwrap();
        let report = cache.gc().unwrap();
        assert!(report.failed.is_empty(), "{name}: {report:?}");
        assert!(image.is_file(), "{name}: gc removed the image of a session in use");
        assert!(
            !report.kept.iter().any(|k| k.contains("has no record")),
            "{name}: an owed image reported as unrecorded: {report:?}"
        );
        drop(user);
        let mut gone = false;
        for _ in 0..100 {
            cache.gc().unwrap();
            if !image.exists() {
                gone = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(gone, "{name}: the freed image was not removed");
        cache.delete_project("proj").unwrap();
    }
    if std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_none() {
        assert_eq!(ran, 3, "the image roots did not run");
    }
    let _ = fs::remove_dir_all(&src);
}
