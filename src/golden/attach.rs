//! A session shown at a path its caller chose (`SetupOptions::at`): goldclone makes an empty
//! directory there and bind-mounts the session's tree onto it. The tree itself stays in the
//! cache root, where recovery and gc find it; the path is recorded with the session (and in the
//! setup's intent before anything is made), so cleanup, recovery and gc take the bind and the
//! directory away again, and nothing else.
//!
//! One mechanism for every backend: a ZFS or zvol session is already a mount, a copy or btrfs
//! session a directory, and a bind mount shows either at any path on any filesystem. It needs
//! CAP_SYS_ADMIN, as every mount-based backend does.
//!
//! What is checked before anything is made ([`Target::check`]): the path is absolute and
//! plain (no `.`, `..`, empty or trailing components), nothing is there, its parent is an
//! existing directory reached without any symlink, and neither the parent nor any directory
//! above it is the cache root or a tree the cache shows elsewhere (a session at another
//! caller's path): a session inside a session or a golden would be removed with it.
//!
//! What counts as ours when taking it away ([`state_of`]): the path is a mount root showing the
//! session's own tree (same device and inode); a directory once the bind is gone (a reboot, a
//! crash after the unmount) only if it is empty and carries our mark, the extended attribute
//! `trusted.goldclone.session` naming the setup that made it (an empty directory somebody else
//! made there meanwhile is theirs), and it is removed with `rmdir`, which never removes content.
//! Anything else at the path is somebody else's and left alone. Every step goes through the
//! parent directory opened without symlinks and held: a symlink swapped into the path between
//! the check and the act is not followed.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use std::os::fd::AsRawFd;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxFlags, XattrFlags};
use rustix::mount::{MoveMountFlags, OpenTreeFlags, UnmountFlags};

use crate::backend::rootdir::{statx_entry, RootDir};
use crate::{Context, Error, Result};

/// The mark on a directory goldclone made for a session at a caller's path: the name of the
/// setup that made it (`SessionMeta::made_by`).
const MARK: &str = "trusted.goldclone.session";

/// A checked place for a session: its parent directory, open, and the final name.
#[derive(Debug)]
pub(crate) struct Target {
    parent: OwnedFd,
    name: OsString,
    path: PathBuf,
}

/// What is at a recorded path now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// The bind mount of the session's tree.
    Attached,
    /// An empty directory, not a mount: ours, the bind gone (reboot, interrupted cleanup).
    Empty,
    /// Nothing.
    Absent,
    /// Something that is not ours: left alone.
    Other(String),
}

/// `path` as plain absolute components: no `.`, `..` or repeated or trailing slashes.
fn check_plain(path: &Path) -> Result<()> {
    let bytes = path.as_os_str().as_bytes();
    let plain = path.is_absolute()
        && path.components().skip(1).all(|c| matches!(c, Component::Normal(_)))
        && path.components().count() >= 2
        && !bytes.ends_with(b"/")
        && !bytes.windows(2).any(|w| w == b"//");
    if plain {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            what: format!(
                "session path {} must be absolute and plain (no ., .., // or trailing /)",
                path.display()
            ),
        })
    }
}

/// Open directory `dir` (absolute) from `/` without following any symlink on the way.
fn open_dir_no_symlinks(dir: &Path) -> Result<OwnedFd> {
    // No O_NOFOLLOW: with it a symlink as the last component is ENOTDIR, not the ELOOP that
    // RESOLVE_NO_SYMLINKS gives for every component.
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    rustix::fs::openat2(rustix::fs::CWD, dir, flags, Mode::empty(), resolve).map_err(|e| match e {
        rustix::io::Errno::LOOP => Error::InvalidArgument {
            what: format!(
                "a symlink is on the way to the session path's parent {}; refusing",
                dir.display()
            ),
        },
        rustix::io::Errno::NOTDIR => Error::NotADirectory { path: dir.to_path_buf() },
        e => Error::io("open", dir, e),
    })
}

fn dev_ino(fd: impl AsFd, path: &Path) -> Result<(u64, u64)> {
    let e = statx_entry(fd.as_fd(), OsStr::new("")).at("statx", path)?;
    Ok((e.dev, e.ino))
}

impl Target {
    /// Check `path` as a new session's place (see the module doc). `trees` are the device and
    /// inode of every directory whose inside is the cache's: its root and the trees of
    /// sessions it shows at callers' paths.
    pub fn check(path: &Path, trees: &[(u64, u64)]) -> Result<Target> {
        check_plain(path)?;
        let (parent_path, name) = match (path.parent(), path.file_name()) {
            (Some(p), Some(n)) => (p, n.to_os_string()),
            _ => unreachable!("check_plain: at least one normal component"),
        };
        let parent = open_dir_no_symlinks(parent_path)?;
        match statx_entry(parent.as_fd(), &name) {
            Ok(_) => return Err(Error::AlreadyExists { path: path.to_path_buf() }),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(Error::io("statx", path, e)),
        }
        // Up from the parent through `..`, which crosses mounts the way the kernel resolves
        // them, to `/` (whose `..` is itself).
        let mut dir = rustix::io::fcntl_dupfd_cloexec(&parent, 0).at("dup", parent_path)?;
        let mut here = dev_ino(&dir, parent_path)?;
        for _ in 0..4096 {
            if trees.contains(&here) {
                return Err(Error::InvalidArgument {
                    what: format!(
                        "session path {} is inside the cache root or another session",
                        path.display()
                    ),
                });
            }
            let up = rustix::fs::openat(
                &dir,
                "..",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .at("open ..", parent_path)?;
            let above = dev_ino(&up, parent_path)?;
            if above == here {
                return Ok(Target { parent, name, path: path.to_path_buf() });
            }
            (dir, here) = (up, above);
        }
        Err(Error::InvalidArgument {
            what: format!("session path {}: too deep to check", path.display()),
        })
    }

    /// Make the directory, marked as made by `made_by`, and bind-mount `tree` (relative to
    /// the root) onto it. The directory is made and marked under the name `made_by` (unique,
    /// ours) beside the path and renamed into place without replacing anything, so that a kill
    /// never leaves an unmarked directory at the path ([`remove_unfinished`] takes away one
    /// left under the unique name). On failure, the directory made is removed again.
    pub fn attach(&self, root: &RootDir, tree: &Path, made_by: &str) -> Result<()> {
        let unfinished = self.path.with_file_name(made_by);
        rustix::fs::mkdirat(&self.parent, made_by, Mode::from_raw_mode(0o755))
            .at("mkdir", &unfinished)?;
        let made = (|| {
            let dir = rustix::fs::openat(
                &self.parent,
                made_by,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .at("open", &unfinished)?;
            rustix::fs::fsetxattr(&dir, MARK, made_by.as_bytes(), XattrFlags::empty())
                .at("setxattr trusted.goldclone.session", &unfinished)?;
            rustix::fs::renameat_with(
                &self.parent,
                made_by,
                &self.parent,
                &self.name,
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(|e| match e {
                rustix::io::Errno::EXIST => Error::AlreadyExists { path: self.path.clone() },
                e => Error::io("rename", &self.path, e),
            })?;
            Ok(dir)
        })();
        let dir = match made {
            Ok(dir) => dir,
            Err(e) => {
                let _ = rustix::fs::unlinkat(&self.parent, made_by, AtFlags::REMOVEDIR);
                return Err(e);
            }
        };
        let bound = (|| {
            // Only the tree's own mount (or directory): not what a user mounted inside it.
            let clone = rustix::mount::open_tree(
                root.fd(),
                tree,
                OpenTreeFlags::OPEN_TREE_CLONE
                    | OpenTreeFlags::OPEN_TREE_CLOEXEC
                    | OpenTreeFlags::AT_SYMLINK_NOFOLLOW,
            )
            .at_with("open_tree", || root.join(tree))?;
            // Onto the directory just made, held open: nothing put at the path meanwhile is
            // followed.
            rustix::mount::move_mount(
                &clone,
                "",
                &dir,
                "",
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
            )
            .at("move_mount", &self.path)
        })();
        if bound.is_err() {
            // Ours (marked, just renamed into place) and empty: rmdir removes nothing else.
            let _ = rustix::fs::unlinkat(&self.parent, &self.name, AtFlags::REMOVEDIR);
        }
        bound
    }
}

/// Remove the directory a setup killed in [`Target::attach`] left under its unique name
/// `made_by` beside `path`, if it is there and empty.
pub(crate) fn remove_unfinished(path: &Path, made_by: &str) -> Result<()> {
    let Some(parent) = parent_of(path)? else { return Ok(()) };
    match rustix::fs::unlinkat(&parent, made_by, AtFlags::REMOVEDIR) {
        Ok(())
        | Err(rustix::io::Errno::NOENT)
        | Err(rustix::io::Errno::NOTEMPTY)
        | Err(rustix::io::Errno::NOTDIR) => Ok(()),
        Err(e) => Err(Error::io("rmdir", path.with_file_name(made_by), e)),
    }
}

/// Unmount what is mounted on `path`, whose parent is open as `parent`: through the parent held
/// open, so that the unmount is of what was just checked there, never of what a symlink
/// swapped into the path since leads to.
fn unmount_in(parent: &OwnedFd, path: &Path, how: UnmountFlags) -> Result<()> {
    let mut at = PathBuf::from(format!("/proc/self/fd/{}", parent.as_raw_fd()));
    at.push(path.file_name().expect("checked plain"));
    rustix::mount::unmount(&at, UnmountFlags::NOFOLLOW | how).at("umount", path)
}

/// The parent of `path` opened without symlinks, or `None` where it is gone.
fn parent_of(path: &Path) -> Result<Option<OwnedFd>> {
    check_plain(path)?;
    match open_dir_no_symlinks(path.parent().expect("checked plain")) {
        Ok(p) => Ok(Some(p)),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What is at the recorded `path` of a session whose tree is `tree` (relative to the root) and
/// that setup `made_by` made.
pub(crate) fn state_of(root: &RootDir, tree: &Path, path: &Path, made_by: &str) -> Result<State> {
    let Some(parent) = parent_of(path)? else { return Ok(State::Absent) };
    state_in(root, tree, &parent, path, made_by)
}

/// [`state_of`], the parent open.
fn state_in(
    root: &RootDir,
    tree: &Path,
    parent: &OwnedFd,
    path: &Path,
    made_by: &str,
) -> Result<State> {
    let name = path.file_name().expect("checked plain");
    let st = match rustix::fs::statx(
        parent,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::TYPE | StatxFlags::INO,
    ) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(State::Absent),
        Err(e) => return Err(Error::io("statx", path, e)),
    };
    let is_dir = u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFDIR;
    let mount_root = st.stx_attributes.contains(rustix::fs::StatxAttributes::MOUNT_ROOT);
    let dev = rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor);
    if is_dir && mount_root {
        let (tp, tn) = match (tree.parent(), tree.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => return Ok(State::Other("no session tree to compare with".into())),
        };
        let shows_tree = root
            .dir(tp)
            .ok()
            .and_then(|d| statx_entry(d.as_fd(), tn).ok())
            .is_some_and(|e| e.dev == dev && e.ino == st.stx_ino);
        return Ok(if shows_tree {
            State::Attached
        } else {
            State::Other(format!("{} is a mount of something else", path.display()))
        });
    }
    if is_dir {
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .at("open", path)?;
        let mut mark = [0u8; 256];
        let ours = rustix::fs::fgetxattr(&fd, MARK, &mut mark)
            .is_ok_and(|n| &mark[..n] == made_by.as_bytes());
        if !ours {
            return Ok(State::Other(format!(
                "{} is a directory goldclone did not make for this session",
                path.display()
            )));
        }
        if crate::backend::rootdir::list_fd(fd.as_fd(), path)?.is_empty() {
            return Ok(State::Empty);
        }
        return Ok(State::Other(format!(
            "{} holds files goldclone did not put there",
            path.display()
        )));
    }
    Ok(State::Other(format!("{} is not a directory", path.display())))
}

/// Unmount the bind at `path` lazily (`MNT_DETACH`): gone from the path in this mount
/// namespace at once, it stays for whoever still uses it. The directory stays too: removing a
/// directory detaches every mount on it in every other namespace (Linux 3.18+), so a process
/// that sees the session at `path` in a namespace of its own would lose its path to it; it is
/// removed with [`detach`] once nothing holds the session. Returns what is at `path` now.
pub(crate) fn unmount_lazily(
    root: &RootDir,
    tree: &Path,
    path: &Path,
    made_by: &str,
) -> Result<State> {
    let Some(parent) = parent_of(path)? else { return Ok(State::Absent) };
    if state_in(root, tree, &parent, path, made_by)? == State::Attached {
        unmount_in(&parent, path, UnmountFlags::DETACH)?;
    }
    state_in(root, tree, &parent, path, made_by)
}

/// Take the session away from its recorded `path`: unmount the bind (not lazily: Busy while
/// anything still uses it) and remove the empty directory made for it. Something else at the
/// path is left alone and returned as `Other`.
pub(crate) fn detach(root: &RootDir, tree: &Path, path: &Path, made_by: &str) -> Result<State> {
    let Some(parent) = parent_of(path)? else { return Ok(State::Absent) };
    let name = path.file_name().expect("checked plain");
    if state_in(root, tree, &parent, path, made_by)? == State::Attached {
        unmount_in(&parent, path, UnmountFlags::empty())?;
    }
    match state_in(root, tree, &parent, path, made_by)? {
        State::Empty => match rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(State::Absent),
            // Filled meanwhile: not ours any more.
            Err(rustix::io::Errno::NOTEMPTY) => Ok(State::Other(format!(
                "{} holds files goldclone did not put there",
                path.display()
            ))),
            Err(e) => Err(Error::io("rmdir", path, e)),
        },
        State::Attached => Err(Error::from_errno("umount", path, libc::EBUSY)),
        other => Ok(other),
    }
}
