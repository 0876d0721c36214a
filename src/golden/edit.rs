//! Edits of a new generation before it is committed (a promote's `drop` list and edit hook).
//!
//! Dropped paths are not removed at once: each is renamed into an aside directory
//! (`<staging name>.dropped/<index>`), so that a promote that fails or is killed before its
//! commit puts them back ([`Aside::restore_into`]). Where the tree is a directory of the root's
//! filesystem (the copy backend) the aside directory is in the project's state directory (not
//! its trash: gc never empties it) and is removed after the commit; elsewhere (a btrfs
//! subvolume, a ZFS dataset: a rename out of them fails) it is at the top of the tree and is
//! removed right before the tree is sealed ([`Aside::remove`]). Every path is
//! resolved beneath the tree without following symlinks or crossing mounts: a drop path that
//! leads through a symlink fails (and the promote with it) rather than touch what the symlink
//! points at; a symlink *at* a drop path is itself dropped, never followed.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};

use crate::backend::RootDir;
use crate::{Context, Error, Result};

const DIR: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);
const BENEATH: ResolveFlags =
    ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_XDEV);

/// A drop path is a plain relative path inside the tree: normal components only, at least one,
/// no NUL, not the aside directory's prefix.
pub(crate) fn check_drop_path(p: &str) -> std::result::Result<(), String> {
    if p.is_empty() || p.contains('\0') {
        return Err(format!("drop path {p:?} is empty or has a NUL"));
    }
    // Checked by hand: Path::components would quietly skip a "." or an empty component.
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!(
            "drop path {p:?} is not a plain relative path (no leading /, no . or .. or //)"
        ));
    }
    if p.starts_with(super::state::OWN_PREFIX) {
        return Err(format!("drop path {p:?} names goldclone's own entries"));
    }
    Ok(())
}

/// Check a caller's drop list; `InvalidArgument` for the first bad path.
pub(crate) fn check_drops(drops: &[PathBuf]) -> Result<Vec<String>> {
    drops
        .iter()
        .map(|p| {
            let s = p.to_str().ok_or_else(|| Error::InvalidArgument {
                what: format!("drop path {} is not UTF-8", p.display()),
            })?;
            check_drop_path(s).map_err(|what| Error::InvalidArgument { what })?;
            Ok(s.to_string())
        })
        .collect()
}

/// Open the tree at `rel`: its parent beneath the root, the tree itself without following a
/// symlink (a mount there, a ZFS session, is entered).
pub(crate) fn open_tree(root: &RootDir, rel: &Path) -> Result<OwnedFd> {
    let (parent, name) = root.parent(rel)?;
    rustix::fs::openat(&parent, name, DIR, Mode::empty()).at_with("open", || root.join(rel))
}

/// The directory `rel` inside `tree` (the tree itself for an empty path), beneath it.
fn open_inside(tree: BorrowedFd<'_>, rel: &Path, shown: &Path) -> Result<Option<OwnedFd>> {
    if rel.as_os_str().is_empty() {
        return rustix::io::fcntl_dupfd_cloexec(tree, 0).map(Some).at("dup", shown);
    }
    match rustix::fs::openat2(tree, rel, DIR, Mode::empty(), BENEATH) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(Error::io("open", shown.join(rel), e)),
    }
}

fn split(p: &str) -> (&Path, &OsStr) {
    let path = Path::new(p);
    (path.parent().unwrap_or(Path::new("")), path.file_name().unwrap_or_default())
}

/// The aside directory's name for the promote whose staging name is `staging`.
pub(crate) fn aside_name(staging: &str) -> String {
    format!("{staging}.dropped")
}

/// Where a promote's dropped paths wait for its commit: `<dir>/<staging name>.dropped/`, one
/// entry per drop path, named by its index.
pub(crate) struct Aside {
    /// The directory the aside directory is (or will be) in.
    dir: OwnedFd,
    /// Its path, for messages.
    shown: PathBuf,
    name: String,
}

impl Aside {
    /// The aside directory of the promote whose staging name is `staging`, in `dir` (at
    /// `shown`).
    pub fn new(dir: OwnedFd, shown: PathBuf, staging: &str) -> Aside {
        Aside { dir, shown, name: aside_name(staging) }
    }

    fn path(&self) -> PathBuf {
        self.shown.join(&self.name)
    }

    /// Make the aside directory and move each of `drops` that exists in the tree `tree` (at
    /// `shown`) into it. A path that is not there is skipped.
    pub fn move_from(&self, tree: &OwnedFd, shown: &Path, drops: &[String]) -> Result<()> {
        if drops.is_empty() {
            return Ok(());
        }
        rustix::fs::mkdirat(&self.dir, self.name.as_str(), Mode::from_raw_mode(0o700))
            .at_with("mkdir", || self.path())?;
        let aside = open_inside(self.dir.as_fd(), Path::new(&self.name), &self.shown)?
            .ok_or_else(|| Error::from_errno("open", self.path(), libc::ENOENT))?;
        for (i, d) in drops.iter().enumerate() {
            let (parent, name) = split(d);
            let Some(parent_fd) = open_inside(tree.as_fd(), parent, shown)? else { continue };
            match rustix::fs::renameat_with(
                &parent_fd,
                name,
                &aside,
                i.to_string().as_str(),
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(Error::io("rename", shown.join(d), e)),
            }
        }
        Ok(())
    }

    /// Put back into `tree` (at `shown`) what [`Aside::move_from`] moved, last first (a drop
    /// inside another goes back after its parent), then remove the aside directory if it is
    /// empty. What cannot go back (its place was taken meanwhile, say by the edit hook) stays in
    /// the aside directory: never removed, its paths returned.
    pub fn restore_into(
        &self,
        tree: &OwnedFd,
        shown: &Path,
        drops: &[String],
    ) -> Result<Vec<String>> {
        let Some(aside) = open_inside(self.dir.as_fd(), Path::new(&self.name), &self.shown)? else {
            return Ok(Vec::new());
        };
        let mut kept = Vec::new();
        for (i, d) in drops.iter().enumerate().rev() {
            // Only what was moved: a drop path that failed (through a symlink) moved nothing.
            let entry = i.to_string();
            match rustix::fs::statat(&aside, entry.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(_) => {}
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(Error::io("stat", self.path().join(&entry), e)),
            }
            let (parent, name) = split(d);
            let back = match open_inside(tree.as_fd(), parent, shown) {
                Ok(Some(parent_fd)) => rustix::fs::renameat_with(
                    &aside,
                    entry.as_str(),
                    &parent_fd,
                    name,
                    RenameFlags::NOREPLACE,
                )
                .is_ok(),
                _ => false,
            };
            if !back {
                kept.push(format!("{} (dropped {d})", self.path().join(&entry).display()));
            }
        }
        match rustix::fs::unlinkat(&self.dir, self.name.as_str(), AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTEMPTY) => Ok(kept),
            Err(e) => Err(Error::io("rmdir", self.path(), e)),
        }
    }

    /// Remove the aside directory and everything in it: the drops take effect. Never follows a
    /// symlink or crosses a mount; a missing one is fine.
    pub fn remove(&self) -> Result<()> {
        crate::copy::remove_at(self.dir.as_fd(), OsStr::new(&self.name), &self.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_paths_are_plain_relative_paths() {
        for ok in ["containers", "overlay2/abc", "a b/c", "network/files/local-kv.db"] {
            assert_eq!(check_drop_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/etc",
            "../x",
            "a/../b",
            "./a",
            "a/./b",
            "a\0b",
            ".goldclone-x",
            "/",
            "a//b",
            "a/",
        ] {
            assert!(check_drop_path(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
