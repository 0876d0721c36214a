//! Resource limits: under a pids cgroup that refuses new threads (EAGAIN), a copy or a session
//! setup runs with the threads it gets, down to the calling thread alone; it never panics
//! (exit 101) and never leaves a partial copy. Needs root and a pids cgroup controller
//! (v1 at /sys/fs/cgroup/pids, or v2); a machine without one fails this suite.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A pids cgroup of this test's own, removed on drop.
struct PidsCgroup(PathBuf);

impl PidsCgroup {
    fn new(tag: &str, max: u32) -> PidsCgroup {
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let base = if v1.join("cgroup.procs").exists() {
            v1.to_path_buf()
        } else {
            let v2 = Path::new("/sys/fs/cgroup");
            let controllers = fs::read_to_string(v2.join("cgroup.controllers"))
                .expect("no pids cgroup controller (v1 /sys/fs/cgroup/pids or v2 /sys/fs/cgroup)");
            assert!(controllers.split_whitespace().any(|c| c == "pids"), "cgroup v2 without pids");
            let _ = fs::write(v2.join("cgroup.subtree_control"), "+pids");
            v2.to_path_buf()
        };
        let dir = base.join(format!("goldclone-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        fs::write(dir.join("pids.max"), max.to_string()).unwrap();
        PidsCgroup(dir)
    }

    /// Run the CLI inside the cgroup.
    fn run(&self, args: &[&str]) -> Output {
        Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"", self.0.display()))
            .arg(env!("CARGO_BIN_EXE_goldclone"))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

fn tree(dir: &Path, files: usize) {
    for d in 0..8 {
        fs::create_dir_all(dir.join(format!("d{d}"))).unwrap();
        for f in 0..files / 8 {
            fs::write(dir.join(format!("d{d}/f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
}

fn no_panic(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "{what} panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
}

#[test]
fn a_thread_limit_never_panics_the_copy() {
    let mnt = common::mount(common::Fs::Ext4).expect("loop filesystems");
    let base = mnt.join(format!("limits-{}", std::process::id()));
    let _ = goldclone::copy::remove_tree(&base);
    fs::create_dir_all(&base).unwrap();
    let src = base.join("src");
    tree(&src, 400);
    let (s, d) = (src.to_str().unwrap(), base.join("dst"));
    // Room for the process and two threads: it copies with those, completely.
    let some = PidsCgroup::new("some", 3);
    let out = some.run(&["copy", "--quiet", "--threads", "16", s, d.to_str().unwrap()]);
    no_panic(&out, "copy with 3 pids");
    assert!(out.status.success(), "copy with 3 pids: {}", String::from_utf8_lossy(&out.stderr));
    assert!(goldclone::treediff::compare(&src, &d, &Default::default()).unwrap().is_empty());
    // Room for the process alone: no worker thread at all, so the calling thread copies.
    let none = PidsCgroup::new("none", 1);
    let d2 = base.join("dst2");
    let out = none.run(&["copy", "--quiet", "--threads", "4", s, d2.to_str().unwrap()]);
    no_panic(&out, "copy with 1 pid");
    assert!(out.status.success(), "copy with 1 pid: {}", String::from_utf8_lossy(&out.stderr));
    assert!(goldclone::treediff::compare(&src, &d2, &Default::default()).unwrap().is_empty());
    assert!(common::staging_leftovers(&base).is_empty(), "staging left");
    // The lifecycle the same way: setup fails with the cause, and the session does not exist.
    let root = base.join("root");
    fs::create_dir(&root).unwrap();
    let r = root.to_str().unwrap();
    let ok = Command::new(env!("CARGO_BIN_EXE_goldclone"))
        .args(["golden", "import", "--root", r, "proj", s])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    for (cg, session) in [(&none, "s1"), (&some, "s2")] {
        let out = cg.run(&["session", "setup", "--root", r, "proj", session]);
        no_panic(&out, "setup under a thread limit");
        assert!(out.status.success(), "setup under a thread limit: {out:?}");
        let out = cg.run(&["session", "cleanup", "--root", r, "proj", session]);
        no_panic(&out, "cleanup under a thread limit");
        assert!(out.status.success(), "cleanup under a thread limit: {out:?}");
        assert!(!root.join("proj/sessions").join(session).exists());
    }
    drop((some, none));
    let _ = goldclone::copy::remove_tree(&base);
}

/// Output that cannot be written (a full disk, a closed pipe) is an error the command reports
/// on stderr with exit status 1, after the operation itself succeeded; never a panic.
#[test]
fn an_unwritable_stdout_is_an_error_not_a_panic() {
    let mnt = common::mount(common::Fs::Ext4).expect("loop filesystems");
    let root = mnt.join(format!("stdout-{}", std::process::id()));
    let _ = goldclone::copy::remove_tree(&root);
    let src = root.join("src");
    tree(&src, 16);
    let cache = root.join("cache");
    fs::create_dir(&cache).unwrap();
    let (r, s) = (cache.to_str().unwrap(), src.to_str().unwrap());
    let bin = env!("CARGO_BIN_EXE_goldclone");
    let full = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .stdout(fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap()
    };
    let out = full(&["golden", "import", "--root", r, "proj", s]);
    no_panic(&out, "import > /dev/full");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("No space left"), "{out:?}");
    for args in [
        vec!["info", "--root", r, "proj"],
        vec!["session", "setup", "--root", r, "proj", "s1"],
        vec!["gc", "--root", r],
    ] {
        let out = full(&args);
        no_panic(&out, &format!("{args:?} > /dev/full"));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
    }
    // The setup itself happened: its output was what failed.
    assert!(cache.join("proj/sessions/s1").is_dir());
    // A closed pipe: its read end is gone before the command writes anything.
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    drop(read_end);
    let out = Command::new(bin)
        .args(["info", "--root", r, "proj"])
        .stdout(std::process::Stdio::from(write_end))
        .output()
        .unwrap();
    no_panic(&out, "info into a closed pipe");
    assert_eq!(out.status.code(), Some(1), "info into a closed pipe: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Broken pipe"), "{out:?}");
    let _ = goldclone::copy::remove_tree(&root);
}
