//! Send and receive in the portable format, between caches of every backend this machine has:
//! on the host the copy backend on XFS and ext4, btrfs, and images on XFS, btrfs and ext4 (each
//! on its loop filesystem); in the ZFS guest ZFS and zvol. The oracle is a session on the
//! receiver, compared entry by entry with the tree the sender's generation was imported from.

mod common;

use common::lifecycle::*;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use goldclone::copy::{CancelToken, Progress};
use goldclone::golden::{BackendKind, Cache, Watch};
use goldclone::treediff::{AtimeScope, CompareOptions};
use goldclone::ErrorKind;

fn in_guest() -> bool {
    std::env::var_os("GOLDCLONE_TEST_ZFS_PARENT").is_some()
}

/// Roots for a test between caches: every host backend; in the guest two ZFS caches (on
/// datasets of their own) and a zvol one.
fn caches(tag: &str) -> Vec<(Root, &'static str)> {
    let mut out = roots(tag);
    if in_guest() {
        out.extend(roots(&format!("{tag}-b")).into_iter().map(|(r, _)| (r, "zfs-b")));
        out.extend(roots("zvolopts").into_iter().filter(|(r, _)| r.backend == BackendKind::Zvol));
    }
    out
}

fn sent(cache: &Cache, project: &str, generation: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    let s = cache.send(project, generation, None, &mut out).unwrap();
    assert_eq!(s.stream_bytes, out.len() as u64);
    out
}

/// The tree a test sends: the fidelity fixture on the host (owners, modes, ns times, xattrs
/// of every namespace, ACLs, capabilities, hardlinks, device nodes, whiteouts, sparse files),
/// built twice (source and reference); in the guest, whose overlaid /tmp takes neither
/// whiteouts nor xattrs, a plain tree with a hardlink, a symlink and a sparse file.
fn fixture(base: &Path) -> (PathBuf, PathBuf) {
    let (src, reference) = (base.join("src"), base.join("ref"));
    if in_guest() {
        let d = &src;
        golden_tree(d, "1", 30);
        fs::write(d.join("sub/linked"), "shared").unwrap();
        fs::hard_link(d.join("sub/linked"), d.join("other-name")).unwrap();
        std::os::unix::fs::symlink("sub/linked", d.join("sym")).unwrap();
        let f = fs::File::create(d.join("sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_at(b"middle", 32 << 20).unwrap();
        // The reference an exact copy (times included), made before anything reads the source.
        goldclone::copy::copy_tree(&src, &reference, &Default::default()).unwrap();
    } else {
        use goldclone::fixture::{self, FixtureSpec};
        let spec = FixtureSpec::fidelity();
        let made = fixture::build(&src, &spec).unwrap();
        assert_eq!(fixture::build(&reference, &spec).unwrap(), made);
    }
    (src, reference)
}

/// Every backend to every backend: a session on the receiver equals the sender's tree entry
/// by entry, and the stream of the same generation is the same bytes every time.
#[test]
fn every_backend_to_every_backend_entry_by_entry() {
    let roots = caches("stream");
    let base = PathBuf::from(format!(
        "{}/goldclone-send-fixture-{}",
        roots[0].0.path.parent().unwrap().display(),
        std::process::id()
    ));
    let (src, reference) = fixture(&base);
    let caches: Vec<(Cache, &str)> = roots.iter().map(|(r, n)| (open(r), *n)).collect();
    let mut streams = Vec::new();
    for (cache, name) in &caches {
        let project = format!("from-{name}");
        assert_eq!(cache.import(&project, &src).unwrap(), 1, "{name}");
        let stream = sent(cache, &project, None);
        assert!(sent(cache, &project, Some(1)) == stream, "{name}: a second send differs");
        streams.push((project, stream));
    }
    let mut pairs = BTreeSet::new();
    for (project, stream) in &streams {
        for (cache, to) in &caches {
            let project = project.as_str();
            let received = if cache.has_golden(project).unwrap() {
                // Its own stream: the generation is current already, nothing changes.
                let n = cache.receive(project, &mut &stream[..]).unwrap();
                assert_eq!(n, 1, "{project} -> {to}");
                assert_eq!(cache.generations(project).unwrap(), vec![1]);
                continue;
            } else {
                cache.receive(project, &mut &stream[..]).unwrap()
            };
            assert_eq!(received, 1, "{project} -> {to}");
            let s = cache.setup(project, "check").unwrap();
            let opts = CompareOptions { atime: AtimeScope::Files, ..Default::default() };
            common::assert_same(&reference, &s, &opts);
            cache.cleanup(project, "check").unwrap();
            // Sent on from the receiver, it is the same generation: the same id.
            let again = sent(cache, project, None);
            let id = |s: &[u8]| String::from_utf8_lossy(&s[..400.min(s.len())]).into_owned();
            assert!(
                id(&again).contains(&format!("\"id\":\"{}", id_of(stream))),
                "{project} -> {to}: the generation's id changed on the way"
            );
            pairs.insert((project.to_string(), to.to_string()));
        }
    }
    let n = caches.len();
    assert_eq!(pairs.len(), streams.len() * (n - 1), "pairs that ran: {pairs:?}");
    if !in_guest() {
        assert_eq!(n, 6, "backends that ran");
    }
    drop(caches);
    let _ = goldclone::copy::remove_tree(&base);
}

/// The stream's generation id, from its header.
fn id_of(stream: &[u8]) -> String {
    let head = String::from_utf8_lossy(&stream[..400.min(stream.len())]).into_owned();
    let at = head.find("\"id\":\"").unwrap() + 6;
    head[at..].split('"').next().unwrap().to_string()
}

/// A stream received into an existing project becomes its next generation: its sessions keep
/// theirs, new sessions get the received one, and the previous generation goes with its last
/// session.
#[test]
fn a_received_generation_is_the_next_and_sessions_keep_theirs() {
    let rs = roots("next");
    let (sender, receiver) = (&rs[0].0, &rs[rs.len() - 1].0);
    let (a, b) = (open(sender), open(receiver));
    let one = scratch_tree("stream-next-1", "1", 10);
    let two = scratch_tree("stream-next-2", "2", 10);
    a.import("proj", &one).unwrap();
    b.receive("proj", &mut &sent(&a, "proj", None)[..]).unwrap();
    let old = b.setup("proj", "old").unwrap();
    a.import_next("proj", &two).unwrap();
    assert_eq!(b.receive("proj", &mut &sent(&a, "proj", None)[..]).unwrap(), 2);
    assert_eq!(whole_generation(&old, 10), "1");
    assert_eq!(current_marker(&b, 10), "2");
    assert_eq!(b.generations("proj").unwrap(), vec![1, 2]);
    b.cleanup("proj", "old").unwrap();
    assert_eq!(b.generations("proj").unwrap(), vec![2]);
    // An older generation sent again is a generation of its own on the receiver.
    let err = a.send("proj", Some(1), None, &mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "generation 1 was retired: {err}");
    assert!(b.gc().unwrap().is_empty());
    for d in [one, two] {
        let _ = fs::remove_dir_all(d);
    }
}

/// Everything the receiver had before a bad stream, it has after, and nothing else: checked
/// on every path under the root, and on what gc finds.
fn assert_untouched(cache: &Cache, root: &Path, before: &BTreeSet<PathBuf>, what: &str) {
    let after = snapshot_tree(root);
    assert_eq!(&after, before, "{what}: the receiver's tree changed");
    assert!(cache.gc().unwrap().is_empty(), "{what}: gc found something");
}

/// A truncated stream (cut anywhere: in the magic, the header, an entry, a file's data, before
/// the trailer), one with a flipped bit, one of another project and garbage: each is a typed
/// error, into a new project and into an existing one with a session, and the receiver is as it
/// was.
#[test]
fn a_bad_stream_changes_nothing() {
    let rs = roots("bad");
    let root = &rs[0].0;
    let cache = open(root);
    let tree = scratch_tree("stream-bad", "1", 40);
    fs::write(tree.join("big"), vec![7u8; 3 << 20]).unwrap();
    cache.import("proj", &tree).unwrap();
    let session = cache.setup("proj", "s").unwrap();
    fs::write(session.join("mine"), "session data").unwrap();
    let stream = sent(&cache, "proj", None);
    // A stream of another generation, so that receiving it whole would change the project.
    let other = scratch_tree("stream-bad-2", "2", 40);
    cache.import_next("proj", &other).unwrap();
    let before = snapshot_tree(&root.path);
    let len = stream.len();
    // Magic, the header record's kind and length, its JSON, its checksum.
    let header_end = 17 + 5 + u32::from_le_bytes(stream[18..22].try_into().unwrap()) as usize + 4;
    let mut cuts: BTreeSet<usize> =
        [0, 5, 17, 18, 22, 60, 300, len / 3, len / 2, len - 40, len - 29, len - 28, len - 1]
            .into_iter()
            .collect();
    cuts.extend((1..16).map(|i| i * len / 16));
    for project in ["proj", "newproj"] {
        for &cut in &cuts {
            let err = cache.receive(project, &mut &stream[..cut]).unwrap_err();
            let what = format!("{project}, cut at {cut} of {len}");
            let want = if project == "newproj" && cut >= header_end {
                // The header is read, and names "proj".
                ErrorKind::InvalidArgument
            } else {
                ErrorKind::BadStream
            };
            assert_eq!(err.kind(), want, "{what}: {err}");
            assert_untouched(&cache, &root.path, &before, &what);
        }
        for at in [3, 20, 40, 100, len / 2, len - 10, len - 2] {
            let mut bad = stream.clone();
            bad[at] ^= 0x10;
            let err = cache.receive(project, &mut &bad[..]).unwrap_err();
            let what = format!("{project}, bit flipped at {at}");
            assert!(
                matches!(err.kind(), ErrorKind::BadStream | ErrorKind::InvalidArgument),
                "{what}: {err}"
            );
            assert_untouched(&cache, &root.path, &before, &what);
        }
    }
    for garbage in [&b""[..], b"not a stream at all", b"goldclone-stream\n"] {
        let err = cache.receive("proj", &mut &garbage[..]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BadStream, "{garbage:?}: {err}");
    }
    assert_untouched(&cache, &root.path, &before, "after all");
    assert!(!cache.has_golden("newproj").unwrap());
    assert_eq!(fs::read_to_string(session.join("mine")).unwrap(), "session data");
    assert_eq!(whole_generation(&session, 40), "1");
    // The stream whole is fine: it becomes generation 3.
    assert_eq!(cache.receive("proj", &mut &stream[..]).unwrap(), 3);
    assert_eq!(current_marker(&cache, 40), "1");
    cache.cleanup("proj", "s").unwrap();
    for d in [tree, other] {
        let _ = fs::remove_dir_all(d);
    }
}

/// A writer that tells when the send has begun and then waits to be let go.
struct Gate {
    started: Option<mpsc::Sender<()>>,
    go: mpsc::Receiver<()>,
    out: Vec<u8>,
}

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() > 4096 {
            if let Some(s) = self.started.take() {
                s.send(()).unwrap();
                self.go.recv().unwrap();
            }
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A generation being sent stays while it is: a promote that retires it and the cleanup of
/// its last session leave it until the send is done (and setups go on meanwhile), a delete of
/// the project is refused; once the send is done it is reclaimed.
#[test]
fn a_generation_being_sent_stays_until_the_send_is_done() {
    for (root, name) in roots("hold") {
        let cache = open(&root);
        let tree = scratch_tree(&format!("stream-hold-{name}"), "1", 200);
        fs::write(tree.join("big"), vec![1u8; 4 << 20]).unwrap();
        cache.import("proj", &tree).unwrap();
        let s1 = cache.setup("proj", "s1").unwrap();
        fs::write(s1.join("generation"), "2").unwrap();
        for i in 0..200 {
            fs::write(s1.join("sub").join(format!("f{i:03}")), "2").unwrap();
        }
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let mut gate = Gate { started: Some(started_tx), go: go_rx, out: Vec::new() };
        std::thread::scope(|scope| {
            let sending = scope.spawn(|| cache.send("proj", None, None, &mut gate).map(|_| ()));
            started.recv().unwrap();
            // Mid-send: the project goes on.
            assert_eq!(cache.promote("proj", "s1").unwrap(), 2, "{name}");
            cache.cleanup("proj", "s1").unwrap();
            let s2 = cache.setup("proj", "s2").unwrap();
            assert_eq!(whole_generation(&s2, 200), "2");
            cache.cleanup("proj", "s2").unwrap();
            assert_eq!(
                cache.generations("proj").unwrap(),
                vec![1, 2],
                "{name}: gen 1 went mid-send"
            );
            let err = cache.delete_project("proj").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Busy, "{name}: {err}");
            assert!(cache.has_golden("proj").unwrap());
            go.send(()).unwrap();
            sending.join().unwrap().unwrap();
        });
        assert_eq!(
            cache.generations("proj").unwrap(),
            vec![2],
            "{name}: gen 1 kept after the send"
        );
        // What was sent is generation 1, whole.
        let other = &roots("hold-recv")[0].0;
        let receiver = open(other);
        receiver.receive("proj", &mut &gate.out[..]).unwrap();
        assert_eq!(current_marker(&receiver, 200), "1", "{name}");
        cache.delete_project("proj").unwrap();
        let _ = fs::remove_dir_all(&tree);
    }
}

/// A send or a receive stopped through its token fails Cancelled and leaves nothing: the
/// receiver as it was, no project made.
#[test]
fn cancelled_send_and_receive_leave_nothing() {
    let rs = caches("cancel");
    let root = &rs[0].0;
    let cache = open(root);
    let tree = scratch_tree("stream-cancel", "1", 300);
    cache.import("proj", &tree).unwrap();
    let stream = sent(&cache, "proj", None);
    // Received whole, generation 1's stream would now make generation 3.
    let next = scratch_tree("stream-cancel-2", "2", 300);
    cache.import_next("proj", &next).unwrap();
    let before = snapshot_tree(&root.path);
    let token = CancelToken::new();
    token.cancel();
    let watch = Watch { progress: None, cancel: Some(token) };
    let err = cache.send_with("proj", None, None, &mut Vec::new(), &watch).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    for project in ["proj", "other"] {
        // The stream names "proj"; "other" is refused before anything is made.
        let err = cache.receive_with(project, &mut &stream[..], &watch).unwrap_err();
        let want =
            if project == "proj" { ErrorKind::Cancelled } else { ErrorKind::InvalidArgument };
        assert_eq!(err.kind(), want, "{err}");
    }
    // Into a new project, stopped halfway by a reader that cancels.
    let other = &rs[rs.len() - 1].0;
    let fresh = open(other);
    let fresh_before = snapshot_tree(&other.path);
    let token = CancelToken::new();
    let progress = Progress::new();
    let watch = Watch { progress: Some(progress.clone()), cancel: Some(token.clone()) };
    let mut half = CancelAt { data: &stream, at: stream.len() / 2, token };
    let err = fresh.receive_with("proj", &mut half, &watch).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(progress.entries() > 0 && progress.entries() < 300, "{}", progress.entries());
    assert_eq!(progress.totals().map(|t| t.0), Some(300 + 3), "totals from the header");
    assert!(!fresh.has_golden("proj").unwrap());
    assert_untouched(&fresh, &other.path, &fresh_before, "new project");
    assert_untouched(&cache, &root.path, &before, "existing project");
    for d in [tree, next] {
        let _ = fs::remove_dir_all(d);
    }
}

/// A reader that cancels its token once `at` bytes have been read.
struct CancelAt<'a> {
    data: &'a [u8],
    at: usize,
    token: CancelToken,
}

impl std::io::Read for CancelAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.data.len()).min(4096);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        if self.at <= n {
            self.token.cancel();
        }
        self.at = self.at.saturating_sub(n);
        Ok(n)
    }
}

/// The README's recipe, with a pipe for the ssh: `goldclone golden send | goldclone golden
/// receive`, between caches of two backends.
#[test]
fn the_cli_pipes_a_generation_to_another_cache() {
    let rs = roots("cli");
    let (a, b) = (&rs[0], &rs[rs.len() - 1]);
    let cache = open(&a.0);
    let tree = scratch_tree("stream-cli", "7", 5);
    cache.import("proj", &tree).unwrap();
    drop(cache);
    let bin = env!("CARGO_BIN_EXE_goldclone");
    let script = format!(
        "set -o pipefail; '{bin}' golden send --root '{}' --backend {} proj | '{bin}' golden receive --root '{}' --backend {} --json proj",
        a.0.path.display(),
        a.0.backend.name(),
        b.0.path.display(),
        b.0.backend.name(),
    );
    let out = std::process::Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}: {}", a.1, String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["generation"], 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("sent generation 1 of proj"));
    assert_eq!(current_marker(&open(&b.0), 5), "7");
    // A corrupt stream fails the receive with its own exit and message.
    let script = format!(
        "printf 'goldclone-stream\\nXXXX' | '{bin}' golden receive --root '{}' --backend {} proj2",
        b.0.path.display(),
        b.0.backend.name()
    );
    let out = std::process::Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad stream"), "{out:?}");
    let _ = fs::remove_dir_all(&tree);
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

/// The part of a tree an increment test changes, made in the source before the import.
fn increment_part(d: &Path) {
    let inc = d.join("inc");
    fs::create_dir_all(inc.join("gone-dir/deep")).unwrap();
    fs::create_dir_all(inc.join("to-file/child")).unwrap();
    for (name, content) in [
        ("same-size", "aaaa"),
        ("append", "x"),
        ("chmod", "c"),
        ("xattr", "x"),
        ("gone", "g"),
        ("gone-dir/a", "a"),
        ("gone-dir/deep/b", "b"),
        ("to-file/child/c", "c"),
        ("to-dir", "t"),
        ("link1", "linked"),
        ("pair1", "pair"),
        ("untouched", "u"),
    ] {
        fs::write(inc.join(name), content).unwrap();
    }
    fs::hard_link(inc.join("pair1"), inc.join("pair2")).unwrap();
    std::os::unix::fs::symlink("same-size", inc.join("sym")).unwrap();
    // A file made before its directory got a default ACL: it has no ACL of its own, and a
    // receiver must not give it one when it remakes the file in its kept copy of the directory.
    // (Not in the guest: its pools' datasets have no POSIX ACLs, acltype=off.)
    fs::create_dir(inc.join("acl-dir")).unwrap();
    fs::write(inc.join("acl-dir/plain"), "p").unwrap();
    if !in_guest() {
        use goldclone::fixture::{acl::*, acl_xattr, OTHER_UID};
        let default = acl_xattr(&[
            (USER_OBJ, 7, UNDEFINED_ID),
            (USER, 7, OTHER_UID),
            (GROUP_OBJ, 5, UNDEFINED_ID),
            (MASK, 7, UNDEFINED_ID),
            (OTHER, 0, UNDEFINED_ID),
        ]);
        set_xattr(&inc.join("acl-dir"), "system.posix_acl_default", &default);
    }
    // Data no increment may carry: random, so no filesystem makes it smaller.
    let mut big = vec![0u8; 4 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(inc.join("big"), &big).unwrap();
}

/// Changes of every kind an increment carries, made in a session.
fn change_for_increment(s: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let inc = s.join("inc");
    // Same size, mtime put back: only the data tells.
    let f = inc.join("same-size");
    let mtime = fs::metadata(&f).unwrap().modified().unwrap();
    fs::write(&f, "bbbb").unwrap();
    fs::File::options().write(true).open(&f).unwrap().set_modified(mtime).unwrap();
    fs::OpenOptions::new().append(true).open(inc.join("append")).unwrap().write_all(b"y").unwrap();
    fs::set_permissions(inc.join("chmod"), fs::Permissions::from_mode(0o600)).unwrap();
    set_xattr(&inc.join("xattr"), "user.added", b"1");
    fs::remove_file(inc.join("gone")).unwrap();
    fs::remove_dir_all(inc.join("gone-dir")).unwrap();
    fs::remove_dir_all(inc.join("to-file")).unwrap();
    fs::write(inc.join("to-file"), "now a file").unwrap();
    fs::remove_file(inc.join("to-dir")).unwrap();
    fs::create_dir(inc.join("to-dir")).unwrap();
    fs::write(inc.join("to-dir/inside"), "i").unwrap();
    fs::remove_file(inc.join("sym")).unwrap();
    std::os::unix::fs::symlink("append", inc.join("sym")).unwrap();
    // A new link to an unchanged file, and a pair broken apart.
    fs::hard_link(inc.join("link1"), inc.join("link2")).unwrap();
    fs::remove_file(inc.join("pair2")).unwrap();
    fs::write(inc.join("pair2"), "pair").unwrap();
    fs::create_dir_all(inc.join("new/dir")).unwrap();
    fs::write(inc.join("new/dir/file"), "new").unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(inc.join("acl-dir/plain"))
        .unwrap()
        .write_all(b"q")
        .unwrap();
}

/// Whether `path` has an access ACL of its own.
fn has_access_acl(path: &Path) -> bool {
    let mut buf = [0u8; 256];
    rustix::fs::lgetxattr(path, "system.posix_acl_access", &mut buf).is_ok()
}

/// Whether the directory `path` has a default ACL.
fn has_default_acl(path: &Path) -> bool {
    let mut buf = [0u8; 256];
    rustix::fs::lgetxattr(path, "system.posix_acl_default", &mut buf).is_ok()
}

/// Entries of one tree and another compared, with atimes of files.
fn assert_sessions_equal(a: &Path, b: &Path) {
    let opts = CompareOptions { atime: AtimeScope::Files, ..Default::default() };
    common::assert_same(a, b, &opts);
}

/// An increment carries what changed since its base (not the unchanged 4 MiB), and the
/// receiver whose current generation is the base makes from it the sender's generation, entry
/// by entry: data changed at the same size and mtime, appends, mode and xattr changes, removed
/// files and trees, a file become a directory and back, a new symlink target, hardlinks made
/// and broken, new trees. It does so from every backend to another, after the base was retired
/// on the sender (its manifest is enough), and onward as a chain (3 from 2). Receiving it again
/// changes nothing; a receiver without the base, or whose current generation is another, is
/// refused (NotFound) and unchanged; a cut increment is BadStream and changes nothing.
#[test]
fn increments_carry_the_change_and_rebuild_the_generation() {
    let roots = caches("incr");
    let base = PathBuf::from(format!(
        "{}/goldclone-incr-fixture-{}",
        roots[0].0.path.parent().unwrap().display(),
        std::process::id()
    ));
    let (src, _reference) = fixture(&base);
    increment_part(&src);
    let caches: Vec<(Cache, &str)> = roots.iter().map(|(r, n)| (open(r), *n)).collect();
    let n = caches.len();
    for (i, (a, from)) in caches.iter().enumerate() {
        let (b, to) = &caches[(i + 1) % n];
        let project = format!("incr-{from}");
        let p = project.as_str();
        let what = format!("{from} -> {to}");
        a.import(p, &src).unwrap();
        let full = sent(a, p, None);
        assert_eq!(b.receive(p, &mut &full[..]).unwrap(), 1, "{what}");
        // A generation is no base of itself.
        let err = a.send(p, None, Some(1), &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{what}: {err}");
        // Generation 2: a session changed and promoted (generation 1 is retired with it).
        let s = a.setup(p, "work").unwrap();
        change_for_increment(&s);
        assert_eq!(a.promote(p, "work").unwrap(), 2, "{what}");
        a.cleanup(p, "work").unwrap();
        assert_eq!(a.generations(p).unwrap(), vec![2], "{what}");
        if i == 0 {
            // A generation never sent has no manifest to make an increment from.
            a.import("never-sent", &src).unwrap();
            a.import_next("never-sent", &src).unwrap();
            let err = a.send("never-sent", None, Some(1), &mut Vec::new()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NotFound, "{what}: {err}");
            a.delete_project("never-sent").unwrap();
        }
        let mut inc = Vec::new();
        let sent2 = a.send(p, None, Some(1), &mut inc).unwrap();
        assert_eq!(sent2.generation, 2);
        assert!(inc.len() < 1 << 20, "{what}: an increment of {} bytes", inc.len());
        assert!(full.len() > 4 << 20, "{what}: a full stream of {} bytes", full.len());
        // A cut increment changes nothing.
        let before = snapshot_tree(&roots[(i + 1) % n].0.path);
        for cut in [inc.len() / 2, inc.len() - 1] {
            let err = b.receive(p, &mut &inc[..cut]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::BadStream, "{what}, cut at {cut}: {err}");
            assert_untouched(b, &roots[(i + 1) % n].0.path, &before, &what);
        }
        // Its progress: the copy of the base (where the backend copies it), then the increment
        // beyond it, never past the totals, and at them when done.
        let progress = Progress::new();
        let watch = Watch { progress: Some(progress.clone()), cancel: None };
        assert_eq!(b.receive_with(p, &mut &inc[..], &watch).unwrap(), 2, "{what}");
        let (entries, bytes) = progress.totals().expect("totals");
        assert_eq!((progress.entries(), progress.bytes()), (entries, bytes), "{what}");
        assert!(entries > 0 && bytes > 0, "{what}: {entries} entries, {bytes} bytes");
        let (sa, sb) = (a.setup(p, "check").unwrap(), b.setup(p, "check").unwrap());
        assert_sessions_equal(&sa, &sb);
        assert_eq!(fs::read_to_string(sb.join("inc/same-size")).unwrap(), "bbbb", "{what}");
        assert_eq!(fs::read_to_string(sb.join("inc/acl-dir/plain")).unwrap(), "pq", "{what}");
        if !in_guest() {
            assert!(has_default_acl(&sb.join("inc/acl-dir")), "{what}");
            assert!(!has_access_acl(&sa.join("inc/acl-dir/plain")), "{what}");
            assert!(!has_access_acl(&sb.join("inc/acl-dir/plain")), "{what}: an inherited ACL");
        }
        // Again: the generation is there, nothing changes.
        assert_eq!(b.receive(p, &mut &inc[..]).unwrap(), 2, "{what}");
        assert_eq!(b.generations(p).unwrap(), vec![2], "{what}");
        // Generation 3 from 2: the chain goes on (an xattr removed, a file changed).
        rustix::fs::lremovexattr(sa.join("inc/xattr"), "user.added").unwrap();
        fs::write(sa.join("inc/untouched"), "touched").unwrap();
        assert_eq!(a.promote(p, "check").unwrap(), 3, "{what}");
        a.cleanup(p, "check").unwrap();
        b.cleanup(p, "check").unwrap();
        let inc3 = {
            let mut out = Vec::new();
            a.send(p, Some(3), Some(2), &mut out).unwrap();
            out
        };
        assert!(inc3.len() < inc.len() + (64 << 10), "{what}: {} bytes", inc3.len());
        // Onto generation 1 of a third cache it does not go (its base is 2): NotFound.
        let (c, _) = &caches[(i + 2) % n];
        let err = c.receive(p, &mut &inc3[..]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{what}: {err}");
        assert!(!c.has_golden(p).unwrap(), "{what}");
        assert_eq!(b.receive(p, &mut &inc3[..]).unwrap(), 3, "{what}");
        let (sa, sb) = (a.setup(p, "check").unwrap(), b.setup(p, "check").unwrap());
        assert_sessions_equal(&sa, &sb);
        a.cleanup(p, "check").unwrap();
        b.cleanup(p, "check").unwrap();
        // A receiver whose current generation is another is refused, and unchanged.
        let other = base.join(format!("other-{i}"));
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join("x"), "x").unwrap();
        b.import_next(p, &other).unwrap();
        let err = b.receive(p, &mut &inc3[..]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{what}: {err}");
        assert_eq!(b.generations(p).unwrap(), vec![4], "{what}");
        for cache in [a, b] {
            cache.delete_project(p).unwrap();
            assert!(cache.gc().unwrap().is_empty(), "{what}");
        }
    }
    drop(caches);
    let _ = goldclone::copy::remove_tree(&base);
}

/// An increment is applied in place to a clone of the base's image, which was sized for the
/// base. When the new generation needs more (here: a larger image size is set on the receiver
/// by then), the clone grows, file and XFS; where it may not, the receive fails with NoSpace
/// and changes nothing.
#[test]
fn an_increment_that_outgrows_its_base_image_grows_it() {
    if in_guest() {
        return; // images are the host's backend
    }
    let Some(mnt) = common::mount(common::Fs::Xfs) else { return };
    let scratch = common::Scratch::new(&mnt, "grow");
    let (sender, receiver, src) =
        (scratch.join("sender"), scratch.join("receiver"), scratch.join("src"));
    for d in [&sender, &receiver, &src] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(src.join("small"), "small").unwrap();
    let with = |backend, image_size| goldclone::golden::OpenOptions {
        backend: Some(backend),
        image_size,
        ..Default::default()
    };
    let a = Cache::open(&sender, &with(BackendKind::Copy, 0)).unwrap();
    a.import("grow", &src).unwrap();
    let full = sent(&a, "grow", None);
    let small = 512 << 20;
    let b = Cache::open(&receiver, &with(BackendKind::Image, small)).unwrap();
    assert_eq!(b.receive("grow", &mut &full[..]).unwrap(), 1);
    drop(b);
    // Generation 2 holds more data than all of generation 1's image (not zeros: those could
    // be sent as holes).
    let s = a.setup("grow", "work").unwrap();
    let block = vec![0xa5u8; 1 << 20];
    let mut big = fs::File::create(s.join("big")).unwrap();
    for _ in 0..600 {
        big.write_all(&block).unwrap();
    }
    big.sync_all().unwrap();
    drop(big);
    assert_eq!(a.promote("grow", "work").unwrap(), 2);
    a.cleanup("grow", "work").unwrap();
    let mut inc = Vec::new();
    a.send("grow", None, Some(1), &mut inc).unwrap();
    // The size the base's image was made with is the size still set: the clone may not grow.
    let b = Cache::open(&receiver, &with(BackendKind::Image, small)).unwrap();
    let before = snapshot_tree(&receiver);
    let err = b.receive("grow", &mut &inc[..]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSpace, "{err}");
    assert_untouched(&b, &receiver, &before, "a receive that did not fit");
    assert!(b.gc().unwrap().failed.is_empty());
    drop(b);
    // A larger size set now: the clone of generation 1's image grows to it.
    let b = Cache::open(&receiver, &with(BackendKind::Image, 2 << 30)).unwrap();
    assert_eq!(b.receive("grow", &mut &inc[..]).unwrap(), 2);
    let (sa, sb) = (a.setup("grow", "check").unwrap(), b.setup("grow", "check").unwrap());
    assert_sessions_equal(&sa, &sb);
    let st = rustix::fs::statvfs(&sb).unwrap();
    assert!(
        st.f_blocks * st.f_frsize > 1 << 30,
        "the session's XFS is {} bytes",
        st.f_blocks * st.f_frsize
    );
    a.cleanup("grow", "check").unwrap();
    b.cleanup("grow", "check").unwrap();
    for cache in [&a, &b] {
        cache.delete_project("grow").unwrap();
    }
}
