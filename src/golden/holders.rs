//! Who holds a tree: every process and every mount on the host, in every mount namespace.
//!
//! A tree is *held* when
//! * a process's working directory, root, executable, an open file, a memory-mapped file, or a
//!   thread's working directory or root lies inside it, seen through any mount: a Docker
//!   container that has a session bind-mounted as `/var/lib/docker` holds it;
//! * a mount, in any namespace, shows the tree or anything inside it (a bind mount of the
//!   session or of one of its directories), or sits on a directory inside it (a host directory
//!   bind-mounted into the session): removing such a tree would either fail half-way or, in
//!   another namespace, silently detach the mount.
//!
//! Paths differ between namespaces, so "inside" is decided on the filesystem, not on names: a
//! location is a device (mountinfo's `major:minor`) and a path from that filesystem's root, and
//! every object a process holds is turned into one through its mount (found by `statx`'s mount
//! id in the holder's own `/proc/PID/mountinfo`). Where a path cannot be lined up with its
//! mount, the object counts as held if its mount could contain the tree: when in doubt, busy.
//!
//! Complete for a caller that can read every `/proc/PID` (root); processes the caller may not
//! inspect are not seen.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::detect::{find_mount, parse_line_bytes, Mount};
use crate::sys::detect::{fstatx, statx_follow, MntId};
use crate::{Context, Error, Result};

/// One process or mount holding a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    /// The process (for a mount: one process of its namespace), if any.
    pub pid: Option<u32>,
    /// What holds it, for messages: `pid 42 (sleep): cwd /mnt/x`.
    pub what: String,
}

/// A place on a filesystem, independent of where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    dev: (u32, u32),
    path: PathBuf,
}

impl Location {
    fn contains(&self, dev: (u32, u32), path: &Path) -> bool {
        dev == self.dev && path.starts_with(&self.path)
    }
}

/// The mounts one group of processes sees: same mount namespace, same root directory.
struct Frame {
    mounts: Vec<Mount>,
    by_id: HashMap<u64, usize>,
    /// A process of this frame, named in mount holders.
    pid: u32,
    ns: u64,
}

impl Frame {
    fn get(&self, id: u64) -> Option<&Mount> {
        self.by_id.get(&id).map(|&i| &self.mounts[i])
    }
}

fn dev_of(m: &Mount) -> (u32, u32) {
    (m.major, m.minor)
}

/// `m`'s root plus the part of `path` below `m`'s mount point, if `path` lies under it.
fn fs_path(m: &Mount, path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix(&m.mount_point).ok()?;
    Some(if rel.as_os_str().is_empty() { m.root.clone() } else { m.root.join(rel) })
}

fn peer_group(m: &Mount, prefix: &str) -> Option<String> {
    m.optional_fields.iter().find_map(|f| f.strip_prefix(prefix)).map(str::to_string)
}

/// Everything holding the tree at `tree` (an absolute, canonical path in our mount namespace).
/// `is_mount`: the tree is itself a mount we made (a ZFS or zvol session); that mount and the
/// copies of it that its unmount takes along (its peers and slaves) are not holders. Otherwise
/// a mount at `tree` itself is one.
pub(crate) fn holders(tree: &Path, is_mount: bool, also_ours: &[&Path]) -> Result<Vec<Holder>> {
    let scan = Scan::new()?;
    let own = scan
        .own_frame()
        .ok_or_else(|| Error::Unsupported { what: "cannot read /proc/self/mountinfo".into() })?;
    let c = CString::new(tree.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument { what: "NUL in a path".into() })?;
    let st = statx_follow(&c, MntId::Listed).at("statx", tree)?;
    let mount =
        st.mnt_id.and_then(|id| own.get(id)).or_else(|| find_mount(&own.mounts, tree)).ok_or_else(
            || Error::Unsupported {
                what: format!("no mount of {} in /proc/self/mountinfo", tree.display()),
            },
        )?;
    let mut out = Vec::new();
    let at_mount_point = mount.mount_point == tree;
    if at_mount_point && !is_mount {
        out.push(Holder {
            pid: None,
            what: format!(
                "mount {} ({} {}) covers {}",
                mount.mount_id,
                mount.fs_type,
                mount.source,
                tree.display()
            ),
        });
    }
    let location = Location {
        dev: dev_of(mount),
        path: fs_path(mount, tree).expect("the mount holding a path is a prefix of it"),
    };
    // The mounts we made, and the copies their unmount takes along: mounts that propagation
    // made of them (peers, or slaves of their group) on the same directory, seen through any
    // mount of the parent filesystem. A bind mount of the session elsewhere shares the peer
    // group but sits somewhere else, and stays a holder.
    let ours_at = |m: &Mount| {
        let place = own
            .get(m.parent_id)
            .and_then(|p| fs_path(p, &m.mount_point).map(|path| Location { dev: dev_of(p), path }));
        (m.mount_id, peer_group(m, "shared:"), place)
    };
    let mut ours = Vec::new();
    if is_mount && at_mount_point {
        ours.push(ours_at(mount));
    }
    // Our bind mounts of the tree at callers' paths, in this namespace: each must be the
    // mount at exactly that path and show exactly this tree.
    for path in also_ours {
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { continue };
        let Some(m) = statx_follow(&c, MntId::Listed).ok().and_then(|st| own.get(st.mnt_id?))
        else {
            continue;
        };
        if m.mount_point == *path && dev_of(m) == location.dev && m.root == location.path {
            ours.push(ours_at(m));
        }
    }
    let goes_with_ours = |m: &Mount, frame: &Frame| {
        ours.iter().any(|(id, group, place)| {
            if m.mount_id == *id {
                return true;
            }
            let related = group.as_ref().is_some_and(|g| {
                peer_group(m, "shared:").as_ref() == Some(g)
                    || peer_group(m, "master:").as_ref() == Some(g)
            });
            let same_place = || {
                frame.get(m.parent_id).is_some_and(|p| {
                    fs_path(p, &m.mount_point).is_some_and(|path| {
                        place.as_ref() == Some(&Location { dev: dev_of(p), path })
                    })
                })
            };
            related && same_place()
        })
    };
    scan.mount_holders(&location, &goes_with_ours, &mut out);
    // The device statx gives for the tree's own files: mountinfo names one device per
    // filesystem, but a btrfs subvolume's files have a device of their own.
    scan.process_holders(&location, (st.dev_major, st.dev_minor), &mut out);
    Ok(out)
}

/// One pass over /proc: the frames of every process, read once each.
struct Scan {
    frames: Vec<Frame>,
    /// Frame of each process.
    procs: Vec<(u32, usize)>,
    own_pid: u32,
}

fn read_link(p: &Path) -> Option<OsString> {
    std::fs::read_link(p).ok().map(PathBuf::into_os_string)
}

/// An absolute path from a /proc symlink, without the kernel's " (deleted)" suffix; `None` for
/// pipes, sockets and anonymous inodes.
fn link_path(target: &OsStr) -> Option<PathBuf> {
    let b = target.as_bytes();
    if !b.starts_with(b"/") {
        return None;
    }
    let b = b.strip_suffix(b" (deleted)").unwrap_or(b);
    Some(PathBuf::from(OsStr::from_bytes(b)))
}

/// The mounts process `pid` sees; `None` if it is gone. A line that does not parse is
/// skipped, never the whole namespace.
fn read_mounts(pid: u32) -> Option<Vec<Mount>> {
    let text = std::fs::read(format!("/proc/{pid}/mountinfo")).ok()?;
    Some(
        text.split(|&c| c == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| parse_line_bytes(l).ok())
            .collect(),
    )
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Scan {
    fn new() -> Result<Scan> {
        let own_pid = std::process::id();
        let mut keys: HashMap<(u64, OsString), usize> = HashMap::new();
        let mut frames = Vec::new();
        let mut procs = Vec::new();
        let rd = std::fs::read_dir("/proc").at("readdir", "/proc")?;
        for entry in rd.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let base = entry.path();
            // Gone or not ours to inspect: skip (see the module doc).
            let Ok(ns) = std::fs::metadata(base.join("ns/mnt")).map(|m| m.ino()) else {
                continue;
            };
            let Some(root) = read_link(&base.join("root")) else { continue };
            let key = (ns, root);
            let index = match keys.get(&key) {
                Some(&i) => i,
                None => {
                    // Unreadable (the process is gone): its links are gone too.
                    let Some(mounts) = read_mounts(pid) else { continue };
                    let by_id = mounts.iter().enumerate().map(|(i, m)| (m.mount_id, i)).collect();
                    frames.push(Frame { mounts, by_id, pid, ns });
                    keys.insert(key, frames.len() - 1);
                    frames.len() - 1
                }
            };
            procs.push((pid, index));
        }
        Ok(Scan { frames, procs, own_pid })
    }

    fn own_frame(&self) -> Option<&Frame> {
        let i = self.procs.iter().find(|(p, _)| *p == self.own_pid)?.1;
        Some(&self.frames[i])
    }

    /// Mounts showing the location or sitting inside it, once per mount.
    fn mount_holders(
        &self,
        loc: &Location,
        goes_with_ours: &dyn Fn(&Mount, &Frame) -> bool,
        out: &mut Vec<Holder>,
    ) {
        // A mount is judged in every frame it appears in (a chroot's frame may lack its
        // parent), and reported once.
        let mut reported = BTreeSet::new();
        for f in &self.frames {
            for m in &f.mounts {
                if reported.contains(&m.mount_id) || goes_with_ours(m, f) {
                    continue;
                }
                let shows = loc.contains(dev_of(m), &m.root);
                let sits_inside =
                    f.get(m.parent_id).filter(|p| p.mount_id != m.mount_id).is_some_and(|p| {
                        fs_path(p, &m.mount_point).is_some_and(|mp| loc.contains(dev_of(p), &mp))
                    });
                if shows || sits_inside {
                    reported.insert(m.mount_id);
                    let how = if shows { "shows" } else { "is mounted inside" };
                    out.push(Holder {
                        pid: Some(f.pid),
                        what: format!(
                            "mount {} at {} ({} {}, mount namespace {}, e.g. pid {} ({})) {how} it",
                            m.mount_id,
                            m.mount_point.display(),
                            m.fs_type,
                            m.source,
                            f.ns,
                            f.pid,
                            comm(f.pid)
                        ),
                    });
                }
            }
        }
    }

    /// Processes with something inside the location: one holder per process.
    fn process_holders(&self, loc: &Location, tree_dev: (u32, u32), out: &mut Vec<Holder>) {
        for &(pid, frame) in &self.procs {
            if let Some(what) = self.process_holds(pid, &self.frames[frame], loc, tree_dev) {
                out.push(Holder {
                    pid: Some(pid),
                    what: format!("pid {pid} ({}): {what}", comm(pid)),
                });
            }
        }
    }

    /// What of process `pid` lies inside `loc`, if anything.
    fn process_holds(
        &self,
        pid: u32,
        frame: &Frame,
        loc: &Location,
        tree_dev: (u32, u32),
    ) -> Option<String> {
        let base = PathBuf::from(format!("/proc/{pid}"));
        let mut links: Vec<(String, PathBuf)> =
            ["cwd", "root", "exe"].iter().map(|l| (l.to_string(), base.join(l))).collect();
        for dir in ["fd", "map_files"] {
            if let Ok(rd) = std::fs::read_dir(base.join(dir)) {
                links.extend(
                    rd.flatten()
                        .map(|e| (format!("{dir}/{}", e.file_name().to_string_lossy()), e.path())),
                );
            }
        }
        // Threads may have their own working directory and root (unshare(CLONE_FS)).
        if let Ok(rd) = std::fs::read_dir(base.join("task")) {
            for t in rd.flatten() {
                if t.file_name().to_str() != Some(&pid.to_string()) {
                    let tid = t.file_name().to_string_lossy().into_owned();
                    links.push((format!("task {tid} cwd"), t.path().join("cwd")));
                    links.push((format!("task {tid} root"), t.path().join("root")));
                }
            }
        }
        let mut seen = BTreeSet::new();
        for (label, link) in links {
            match std::fs::read_link(&link) {
                Ok(target) => {
                    let Some(path) = link_path(target.as_os_str()) else { continue };
                    // One check per object: a library is mapped many times.
                    if !seen.insert(path) && label.starts_with("map_files") {
                        continue;
                    }
                }
                // Deeper than PATH_MAX: the object is still there to look at.
                Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {}
                Err(_) => continue,
            }
            if let Some(path) = self.object_inside(pid, frame, &link, loc, tree_dev) {
                return Some(format!("{label} {}", path.display()));
            }
        }
        None
    }

    /// The name of the object behind the /proc link `link` if it lies inside `loc`, whose own
    /// files statx puts on device `tree_dev`.
    ///
    /// The object is pinned first (an `O_PATH` descriptor of ours, which neither opens nor
    /// blocks on it), and its name and mount are both read from that descriptor: a busy
    /// process (or this one) closes and reuses descriptors all the time, and a name read from
    /// its link with a mount read a moment later may belong to two different files.
    fn object_inside(
        &self,
        pid: u32,
        frame: &Frame,
        link: &Path,
        loc: &Location,
        tree_dev: (u32, u32),
    ) -> Option<PathBuf> {
        // Gone (closed, the process exited) or not ours to follow: it holds nothing we can see.
        let pinned = rustix::fs::open(link, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).ok()?;
        // thread-self: this thread's descriptor table, which may not be the process's.
        let own = format!("/proc/thread-self/fd/{}", pinned.as_raw_fd());
        let st = fstatx(pinned.as_fd(), MntId::Listed).ok()?;
        let dev = (st.dev_major, st.dev_minor);
        let path = match std::fs::read_link(&own) {
            Ok(target) => link_path(target.as_os_str())?,
            // A path too long for the kernel to name: busy if it is on the location's
            // filesystem at all (when in doubt, busy).
            Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                return (dev == loc.dev || dev == tree_dev)
                    .then(|| PathBuf::from("(a path longer than PATH_MAX)"));
            }
            Err(_) => return None,
        };
        let inside = match st.mnt_id {
            Some(id) => self.mount_holds(pid, frame, id, &path, dev, loc, tree_dev),
            // A kernel without STATX_MNT_ID (before 5.8): the mount the path names in the
            // holder's own view.
            None => find_mount(&frame.mounts, &path)
                .is_some_and(|m| fs_path(m, &path).is_some_and(|p| loc.contains(dev_of(m), &p))),
        };
        inside.then_some(path)
    }

    /// Whether an object the kernel names `path`, on mount `id` and device `dev`, lies inside
    /// `loc`.
    #[allow(clippy::too_many_arguments)] // the object, its process, and what it is judged by
    fn mount_holds(
        &self,
        pid: u32,
        frame: &Frame,
        id: u64,
        path: &Path,
        dev: (u32, u32),
        loc: &Location,
        tree_dev: (u32, u32),
    ) -> bool {
        // The kernel names an object relative to our root where it can, else relative to its
        // own namespace's root: try the holder's frame, then ours, then any frame with it.
        let own = self.own_frame();
        let candidates =
            std::iter::once(frame).chain(own).chain(self.frames.iter()).filter_map(|f| f.get(id));
        let mut any = None;
        for m in candidates {
            any.get_or_insert(m);
            if let Some(p) = fs_path(m, path) {
                return loc.contains(dev_of(m), &p);
            }
        }
        // A mount no frame of the scan lists may be younger than the scan: the process made
        // it, or moved to a new mount namespace, since. Its mounts as they are now.
        let fresh = if any.is_none() { read_mounts(pid) } else { None };
        if let Some(m) = fresh.as_ref().and_then(|ms| ms.iter().find(|m| m.mount_id == id)) {
            any = Some(m);
            if let Some(p) = fs_path(m, path) {
                return loc.contains(dev_of(m), &p);
            }
        }
        match any {
            // Mount found but the path does not line up with it: busy if that mount could
            // hold the location at all.
            Some(m) => {
                dev_of(m) == loc.dev
                    && (m.root.starts_with(&loc.path) || loc.path.starts_with(&m.root))
            }
            // A mount no frame lists (detached with umount -l, or of a namespace without
            // processes): busy if the object is on the location's filesystem at all, by
            // mountinfo's device or by the one the tree's own files have (a btrfs subvolume).
            None => dev == loc.dev || dev == tree_dev,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::parse_line;

    #[test]
    fn deleted_suffix_and_non_paths() {
        assert_eq!(link_path(OsStr::new("/a/b (deleted)")), Some(PathBuf::from("/a/b")));
        assert_eq!(link_path(OsStr::new("socket:[123]")), None);
        assert_eq!(link_path(OsStr::new("anon_inode:[eventfd]")), None);
    }

    #[test]
    fn a_path_maps_onto_its_mount_root() {
        let bind =
            parse_line("40 30 8:1 /srv/cache/p/sessions/s1 /mnt/x rw - xfs /dev/sda1 rw").unwrap();
        assert_eq!(
            fs_path(&bind, Path::new("/mnt/x/sub/f")),
            Some(PathBuf::from("/srv/cache/p/sessions/s1/sub/f"))
        );
        assert_eq!(fs_path(&bind, Path::new("/mnt/xy")), None, "component-wise prefix");
        let loc = Location { dev: (8, 1), path: PathBuf::from("/srv/cache/p/sessions/s1") };
        assert!(loc.contains((8, 1), Path::new("/srv/cache/p/sessions/s1/sub")));
        assert!(!loc.contains((8, 1), Path::new("/srv/cache/p/sessions/s10")));
        assert!(!loc.contains((8, 2), Path::new("/srv/cache/p/sessions/s1")));
    }
}
