//! Tree comparison: every way in which two directory trees differ, entry by entry.
//!
//! [`compare`] walks two trees in lockstep without following symlinks and reports, for every
//! relative path, what differs: presence, file type, permission bits (setuid, setgid and sticky
//! included), owner, group, device numbers, size, content, symlink target, mtime and atime to the
//! nanosecond, every extended attribute (all namespaces: `user.*`, `trusted.*`, `security.*` and
//! the ACLs in `system.posix_acl_*`), the hardlink structure, and optionally sparseness. ctime is
//! never compared: nothing can set it. The root directories themselves are compared too (as path
//! `.`): a copy must carry its source root's metadata.
//!
//! # XFS's ACL aliases
//! As seen by root, XFS lists every POSIX ACL twice: as `system.posix_acl_access` (`_default`)
//! and as the raw on-disk attribute `trusted.SGI_ACL_FILE` (`trusted.SGI_ACL_DEFAULT`). The
//! `trusted.SGI_ACL_*` names are ignored on a tree whose root is on XFS, where they are only
//! another view of the ACL that `system.posix_acl_*` already compares; on any other filesystem they
//! are ordinary attributes (a copy that carried them over from XFS made them) and are compared.
//!
//! # Access times
//! Reading a file, listing a directory or reading a symlink can update its atime (on a `relatime`
//! mount: whenever the atime is older than the mtime or than a day). So that comparing does not
//! disturb what it compares, every entry is `lstat`ed before it is read, and files and
//! directories are opened with `O_NOATIME` (allowed to their owner and to root). `readlink` has no
//! such flag: the first comparison of an old symlink updates its atime, so comparing the *same*
//! trees twice can report symlink atimes the second time. Compare a copy against an untouched
//! reference, or narrow [`CompareOptions::atime`].
//!
//! The default, [`AtimeScope::Files`], checks the atime of regular and special files, which a
//! reader that uses `O_NOATIME` (goldclone's copy does) leaves alone, but not of symlinks, whose
//! atime any `readlink` of an old symlink updates — the copy's own included, so a source compared
//! right after being copied has new symlink atimes while its copy has the old ones — nor of
//! directories, which any listing updates. [`AtimeScope::NonDirectories`] adds symlinks and
//! [`AtimeScope::All`] directories too.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::sys::xattr;
use crate::{Context, Result};

/// Which entries' atimes [`compare`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtimeScope {
    /// No atimes.
    None,
    /// Regular files and special files (fifos, devices, sockets): the default. Symlinks are
    /// left out because the kernel's readlink moves a symlink's atime (there is no O_NOATIME for
    /// it), so reading either tree, by the copy or by this comparison, changes what is compared.
    Files,
    /// Files, special files and symlinks.
    NonDirectories,
    /// Everything, directories included.
    All,
}

/// What [`compare`] checks. `Default` checks everything except directory and symlink atimes.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Compare regular files byte by byte (when their sizes match). Default on.
    pub content: bool,
    /// Compare owner and group. Default on.
    pub owner: bool,
    /// Compare mtimes (seconds and nanoseconds). Default on.
    pub mtime: bool,
    /// Whose atimes to compare (seconds and nanoseconds). Default [`AtimeScope::Files`].
    pub atime: AtimeScope,
    /// Compare extended attributes of every entry, in every namespace. Default on.
    pub xattrs: bool,
    /// Compare the hardlink structure: the partition of each tree's non-directory paths into
    /// groups that share an inode must be the same. Default on.
    pub hardlinks: bool,
    /// For a regular file that is sparse in A (fewer allocated bytes than its size), require that
    /// B allocates at most `sparse_slack` bytes more than A. Default on.
    pub check_sparse: bool,
    /// Allowed excess allocation in B for [`check_sparse`](Self::check_sparse). Default 1 MiB.
    pub sparse_slack: u64,
    /// Stop after this many differences (0 = report all). Default 0.
    pub max_differences: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            content: true,
            owner: true,
            mtime: true,
            atime: AtimeScope::Files,
            xattrs: true,
            hardlinks: true,
            check_sparse: true,
            sparse_slack: 1 << 20,
            max_differences: 0,
        }
    }
}

/// What aspect of an entry differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DiffKind {
    /// The entry exists only in tree A.
    OnlyInA,
    /// The entry exists only in tree B.
    OnlyInB,
    /// Different file types (file, directory, symlink, ...).
    FileType,
    /// Different permission bits (including setuid, setgid, sticky).
    Mode,
    /// Different owner.
    Uid,
    /// Different group.
    Gid,
    /// Different device numbers of a character or block device.
    Rdev,
    /// Different sizes of a regular file.
    Size,
    /// Same size, different bytes.
    Content,
    /// Different symlink targets.
    SymlinkTarget,
    /// Different modification times.
    Mtime,
    /// Different access times.
    Atime,
    /// An extended attribute is missing on one side or has a different value.
    Xattr,
    /// The entry shares its inode with a different set of paths.
    Hardlink,
    /// B allocates more than A where A is sparse.
    Sparse,
    /// The entry could not be read on one side (the description has the error).
    Unreadable,
}

impl fmt::Display for DiffKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DiffKind::OnlyInA => "only in A",
            DiffKind::OnlyInB => "only in B",
            DiffKind::FileType => "file type",
            DiffKind::Mode => "mode",
            DiffKind::Uid => "uid",
            DiffKind::Gid => "gid",
            DiffKind::Rdev => "rdev",
            DiffKind::Size => "size",
            DiffKind::Content => "content",
            DiffKind::SymlinkTarget => "symlink target",
            DiffKind::Mtime => "mtime",
            DiffKind::Atime => "atime",
            DiffKind::Xattr => "xattr",
            DiffKind::Hardlink => "hardlinks",
            DiffKind::Sparse => "sparseness",
            DiffKind::Unreadable => "unreadable",
        };
        f.write_str(s)
    }
}

/// One difference between the trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Path relative to both roots; `.` for the roots themselves. May hold any bytes but NUL.
    pub path: PathBuf,
    /// What differs.
    pub kind: DiffKind,
    /// Both sides' values, human-readable.
    pub detail: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", escape(self.path.as_os_str().as_bytes()), self.kind, self.detail)
    }
}

/// Print bytes readably: printable ASCII as is, everything else (newlines, tabs, non-UTF-8) as
/// `\n`, `\t`, `\xNN`; backslash as `\\`.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

/// Counts of differences per kind, for a one-line summary (`goldclone verify`).
pub fn summarize(diffs: &[Difference]) -> String {
    if diffs.is_empty() {
        return "trees are identical".to_string();
    }
    let mut per: BTreeMap<DiffKind, usize> = BTreeMap::new();
    for d in diffs {
        *per.entry(d.kind).or_default() += 1;
    }
    let parts: Vec<String> = per.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!("{} differences: {}", diffs.len(), parts.join(", "))
}

/// Compare the trees rooted at `a` and `b` and return every difference, sorted by path within
/// each directory (depth first). An empty vector means the trees are identical in everything
/// `opts` checks. Fails only if a root itself cannot be examined; unreadable entries below the
/// roots are reported as [`DiffKind::Unreadable`].
pub fn compare(a: &Path, b: &Path, opts: &CompareOptions) -> Result<Vec<Difference>> {
    let ma = std::fs::symlink_metadata(a).at("lstat", a)?;
    let mb = std::fs::symlink_metadata(b).at("lstat", b)?;
    let mut w = Walker {
        a,
        b,
        opts,
        diffs: Vec::new(),
        links_a: HashMap::new(),
        links_b: HashMap::new(),
        xfs_a: is_xfs(a),
        xfs_b: is_xfs(b),
    };
    let root = PathBuf::from(".");
    w.entry(&root, &ma, &mb);
    if ma.is_dir() && mb.is_dir() {
        w.walk_dir(PathBuf::new())?;
    }
    if opts.hardlinks {
        w.check_hardlinks();
    }
    if opts.max_differences > 0 {
        w.diffs.truncate(opts.max_differences);
    }
    Ok(w.diffs)
}

struct Walker<'o> {
    a: &'o Path,
    b: &'o Path,
    opts: &'o CompareOptions,
    diffs: Vec<Difference>,
    /// Non-directory paths present on both sides, by (dev, ino) of each side.
    links_a: HashMap<(u64, u64), Vec<PathBuf>>,
    links_b: HashMap<(u64, u64), Vec<PathBuf>>,
    /// The tree's root is on XFS (see "XFS's ACL aliases").
    xfs_a: bool,
    xfs_b: bool,
}

fn is_xfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::XFS_SUPER_MAGIC)
}

/// XFS's raw names of the POSIX ACLs.
const XFS_ACL_ALIASES: [&[u8]; 2] = [b"trusted.SGI_ACL_FILE", b"trusted.SGI_ACL_DEFAULT"];

fn type_name(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "regular file"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

fn same_type(a: &Metadata, b: &Metadata) -> bool {
    (a.mode() & libc::S_IFMT) == (b.mode() & libc::S_IFMT)
}

fn fmt_time(s: i64, ns: i64) -> String {
    format!("{s}.{ns:09}")
}

fn fmt_value(v: &[u8]) -> String {
    const MAX: usize = 64;
    if v.len() > MAX {
        format!("\"{}\"... ({} bytes)", escape(&v[..MAX]), v.len())
    } else {
        format!("\"{}\"", escape(v))
    }
}

/// Open a file or directory for reading without updating its atime where allowed.
fn open_noatime(path: &Path, dir: bool) -> io::Result<File> {
    use rustix::fs::OFlags;
    let flags = if dir {
        crate::sys::fs::READ_DIR
    } else {
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC
    };
    crate::sys::fs::openat_noatime(rustix::fs::CWD, path, flags).map(File::from)
}

/// The names in a directory, sorted by bytes, without `.` and `..`.
fn list_dir(path: &Path) -> io::Result<Vec<OsString>> {
    let fd = open_noatime(path, true)?;
    let mut dir = nix::dir::Dir::from_fd(fd.into()).map_err(io::Error::from)?;
    let mut names = Vec::new();
    for ent in dir.iter() {
        let ent = ent.map_err(io::Error::from)?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsString::from_vec(n.to_vec()));
        }
    }
    names.sort();
    Ok(names)
}

/// All extended attributes of `path` (not following a symlink), by name; without XFS's ACL
/// aliases if `xfs`.
fn xattrs_of(path: &Path, xfs: bool) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let names = match xattr::llist(&c) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    let mut out = BTreeMap::new();
    for n in names {
        if xfs && XFS_ACL_ALIASES.contains(&n.as_bytes()) {
            continue;
        }
        match xattr::lget(&c, &n) {
            Ok(v) => {
                out.insert(n.into_bytes(), v);
            }
            // Removed between list and get.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Compare two open files byte by byte; `Ok(None)` if equal, else the first differing offset.
fn first_difference(mut fa: File, mut fb: File) -> io::Result<Option<u64>> {
    const BUF: usize = 256 << 10;
    let mut ba = vec![0u8; BUF];
    let mut bb = vec![0u8; BUF];
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        if ba[..n] != bb[..n] {
            let i = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y).unwrap_or(0);
            return Ok(Some(off + i as u64));
        }
        if na != nb {
            return Ok(Some(off + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        off += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Walker<'_> {
    fn push(&mut self, path: &Path, kind: DiffKind, detail: String) {
        self.diffs.push(Difference { path: path.to_path_buf(), kind, detail });
    }

    fn full(&self, side_a: bool, rel: &Path) -> PathBuf {
        let root = if side_a { self.a } else { self.b };
        if rel.as_os_str().is_empty() || rel == Path::new(".") {
            root.to_path_buf()
        } else {
            root.join(rel)
        }
    }

    /// Walk the directory `rel` (present as a directory on both sides), depth first.
    fn walk_dir(&mut self, root_rel: PathBuf) -> Result<()> {
        let mut stack = vec![root_rel];
        while let Some(rel) = stack.pop() {
            let (pa, pb) = (self.full(true, &rel), self.full(false, &rel));
            let shown = if rel.as_os_str().is_empty() { PathBuf::from(".") } else { rel.clone() };
            let na = match list_dir(&pa) {
                Ok(n) => n,
                Err(e) => {
                    self.push(&shown, DiffKind::Unreadable, format!("A: readdir: {e}"));
                    continue;
                }
            };
            let nb = match list_dir(&pb) {
                Ok(n) => n,
                Err(e) => {
                    self.push(&shown, DiffKind::Unreadable, format!("B: readdir: {e}"));
                    continue;
                }
            };
            // Merge the two sorted name lists.
            let (mut i, mut j) = (0, 0);
            let mut subdirs = Vec::new();
            while i < na.len() || j < nb.len() {
                let ord = match (na.get(i), nb.get(j)) {
                    (Some(x), Some(y)) => x.as_bytes().cmp(y.as_bytes()),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    _ => std::cmp::Ordering::Greater,
                };
                match ord {
                    std::cmp::Ordering::Less => {
                        let r = rel.join(&na[i]);
                        let what = std::fs::symlink_metadata(self.full(true, &r))
                            .map(|m| type_name(&m))
                            .unwrap_or("entry");
                        self.push(&r, DiffKind::OnlyInA, format!("{what} missing in B"));
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        let r = rel.join(&nb[j]);
                        let what = std::fs::symlink_metadata(self.full(false, &r))
                            .map(|m| type_name(&m))
                            .unwrap_or("entry");
                        self.push(&r, DiffKind::OnlyInB, format!("{what} missing in A"));
                        j += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        let r = rel.join(&na[i]);
                        i += 1;
                        j += 1;
                        let ma = match std::fs::symlink_metadata(self.full(true, &r)) {
                            Ok(m) => m,
                            Err(e) => {
                                self.push(&r, DiffKind::Unreadable, format!("A: lstat: {e}"));
                                continue;
                            }
                        };
                        let mb = match std::fs::symlink_metadata(self.full(false, &r)) {
                            Ok(m) => m,
                            Err(e) => {
                                self.push(&r, DiffKind::Unreadable, format!("B: lstat: {e}"));
                                continue;
                            }
                        };
                        if ma.is_dir() && mb.is_dir() {
                            self.entry(&r, &ma, &mb);
                            subdirs.push(r);
                        } else {
                            if self.opts.hardlinks && same_type(&ma, &mb) {
                                self.links_a
                                    .entry((ma.dev(), ma.ino()))
                                    .or_default()
                                    .push(r.clone());
                                self.links_b
                                    .entry((mb.dev(), mb.ino()))
                                    .or_default()
                                    .push(r.clone());
                            }
                            self.entry(&r, &ma, &mb);
                        }
                    }
                }
                if self.opts.max_differences > 0 && self.diffs.len() >= self.opts.max_differences {
                    return Ok(());
                }
            }
            // Pop in name order.
            subdirs.reverse();
            stack.extend(subdirs);
        }
        Ok(())
    }

    /// Compare one entry present on both sides.
    fn entry(&mut self, rel: &Path, ma: &Metadata, mb: &Metadata) {
        if !same_type(ma, mb) {
            self.push(
                rel,
                DiffKind::FileType,
                format!("A: {}, B: {}", type_name(ma), type_name(mb)),
            );
            return;
        }
        let t = ma.file_type();
        if (ma.mode() & 0o7777) != (mb.mode() & 0o7777) && !t.is_symlink() {
            self.push(
                rel,
                DiffKind::Mode,
                format!("A: {:04o}, B: {:04o}", ma.mode() & 0o7777, mb.mode() & 0o7777),
            );
        }
        if self.opts.owner {
            if ma.uid() != mb.uid() {
                self.push(rel, DiffKind::Uid, format!("A: {}, B: {}", ma.uid(), mb.uid()));
            }
            if ma.gid() != mb.gid() {
                self.push(rel, DiffKind::Gid, format!("A: {}, B: {}", ma.gid(), mb.gid()));
            }
        }
        if (t.is_char_device() || t.is_block_device()) && ma.rdev() != mb.rdev() {
            self.push(
                rel,
                DiffKind::Rdev,
                format!(
                    "A: {}:{}, B: {}:{}",
                    libc::major(ma.rdev()),
                    libc::minor(ma.rdev()),
                    libc::major(mb.rdev()),
                    libc::minor(mb.rdev())
                ),
            );
        }
        if t.is_file() && ma.size() != mb.size() {
            self.push(rel, DiffKind::Size, format!("A: {}, B: {}", ma.size(), mb.size()));
        }
        if self.opts.mtime && (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
            self.push(
                rel,
                DiffKind::Mtime,
                format!(
                    "A: {}, B: {}",
                    fmt_time(ma.mtime(), ma.mtime_nsec()),
                    fmt_time(mb.mtime(), mb.mtime_nsec())
                ),
            );
        }
        let atime = match self.opts.atime {
            AtimeScope::None => false,
            AtimeScope::Files => !t.is_dir() && !t.is_symlink(),
            AtimeScope::NonDirectories => !t.is_dir(),
            AtimeScope::All => true,
        };
        if atime && (ma.atime(), ma.atime_nsec()) != (mb.atime(), mb.atime_nsec()) {
            self.push(
                rel,
                DiffKind::Atime,
                format!(
                    "A: {}, B: {}",
                    fmt_time(ma.atime(), ma.atime_nsec()),
                    fmt_time(mb.atime(), mb.atime_nsec())
                ),
            );
        }
        let (pa, pb) = (self.full(true, rel), self.full(false, rel));
        if self.opts.xattrs {
            match (xattrs_of(&pa, self.xfs_a), xattrs_of(&pb, self.xfs_b)) {
                (Ok(xa), Ok(xb)) => {
                    for (name, va) in &xa {
                        match xb.get(name) {
                            None => self.push(
                                rel,
                                DiffKind::Xattr,
                                format!("{} missing in B", escape(name)),
                            ),
                            Some(vb) if vb != va => self.push(
                                rel,
                                DiffKind::Xattr,
                                format!(
                                    "{}: A: {}, B: {}",
                                    escape(name),
                                    fmt_value(va),
                                    fmt_value(vb)
                                ),
                            ),
                            Some(_) => {}
                        }
                    }
                    for name in xb.keys().filter(|n| !xa.contains_key(*n)) {
                        self.push(rel, DiffKind::Xattr, format!("{} missing in A", escape(name)));
                    }
                }
                (Err(e), _) => self.push(rel, DiffKind::Unreadable, format!("A: xattrs: {e}")),
                (_, Err(e)) => self.push(rel, DiffKind::Unreadable, format!("B: xattrs: {e}")),
            }
        }
        if t.is_symlink() {
            match (std::fs::read_link(&pa), std::fs::read_link(&pb)) {
                (Ok(la), Ok(lb)) if la != lb => self.push(
                    rel,
                    DiffKind::SymlinkTarget,
                    format!(
                        "A: {}, B: {}",
                        escape(la.as_os_str().as_bytes()),
                        escape(lb.as_os_str().as_bytes())
                    ),
                ),
                (Ok(_), Ok(_)) => {}
                (Err(e), _) => self.push(rel, DiffKind::Unreadable, format!("A: readlink: {e}")),
                (_, Err(e)) => self.push(rel, DiffKind::Unreadable, format!("B: readlink: {e}")),
            }
        }
        if t.is_file() {
            self.file(rel, &pa, &pb, ma, mb);
        }
    }

    fn file(&mut self, rel: &Path, pa: &Path, pb: &Path, ma: &Metadata, mb: &Metadata) {
        if self.opts.check_sparse {
            let (alloc_a, alloc_b) = (ma.blocks() * 512, mb.blocks() * 512);
            if alloc_a < ma.size() && alloc_b > alloc_a + self.opts.sparse_slack {
                self.push(
                    rel,
                    DiffKind::Sparse,
                    format!("size {}: A allocates {alloc_a} bytes, B {alloc_b}", ma.size()),
                );
            }
        }
        if self.opts.content && ma.size() == mb.size() {
            let fa = match open_noatime(pa, false) {
                Ok(f) => f,
                Err(e) => return self.push(rel, DiffKind::Unreadable, format!("A: open: {e}")),
            };
            let fb = match open_noatime(pb, false) {
                Ok(f) => f,
                Err(e) => return self.push(rel, DiffKind::Unreadable, format!("B: open: {e}")),
            };
            match first_difference(fa, fb) {
                Ok(None) => {}
                Ok(Some(off)) => {
                    self.push(rel, DiffKind::Content, format!("first difference at byte {off}"))
                }
                Err(e) => self.push(rel, DiffKind::Unreadable, format!("read: {e}")),
            }
        }
    }

    /// Report every path whose inode is shared with a different set of paths in A than in B.
    fn check_hardlinks(&mut self) {
        // Each path's group as a sorted list; a path is reported when its groups differ.
        fn groups(links: &mut HashMap<(u64, u64), Vec<PathBuf>>) -> HashMap<PathBuf, &[PathBuf]> {
            let mut out = HashMap::new();
            for paths in links.values_mut() {
                paths.sort();
                for p in paths.iter() {
                    out.insert(p.clone(), &paths[..]);
                }
            }
            out
        }
        let mut la = std::mem::take(&mut self.links_a);
        let mut lb = std::mem::take(&mut self.links_b);
        let ra = groups(&mut la);
        let rb = groups(&mut lb);
        let mut found: Vec<Difference> = Vec::new();
        for (p, group_a) in &ra {
            let group_b = rb[p];
            if *group_a != group_b {
                let show = |g: &[PathBuf]| {
                    let mut v: Vec<String> = g
                        .iter()
                        .filter(|q| *q != p)
                        .map(|q| escape(q.as_os_str().as_bytes()))
                        .collect();
                    v.sort();
                    if v.is_empty() {
                        "no other path".to_string()
                    } else {
                        v.join(", ")
                    }
                };
                found.push(Difference {
                    path: p.clone(),
                    kind: DiffKind::Hardlink,
                    detail: format!(
                        "linked in A with [{}], in B with [{}]",
                        show(group_a),
                        show(group_b)
                    ),
                });
            }
        }
        found.sort_by(|x, y| x.path.cmp(&y.path));
        self.diffs.extend(found);
    }
}

/// Path of `name` under `dir`, for names given as raw bytes (non-UTF-8 allowed).
pub fn join_bytes(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(OsStr::from_bytes(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::{symlink, PermissionsExt};

    struct TmpDir(PathBuf);
    impl TmpDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "goldclone-treediff-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir(&p).unwrap();
            TmpDir(p)
        }
    }
    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn set_times(p: &Path, a: (i64, i64), m: (i64, i64)) {
        utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &TimeSpec::new(a.0, a.1),
            &TimeSpec::new(m.0, m.1),
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    fn cpath(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    /// A small tree with one of everything an unprivileged user can make, times set last.
    fn build(root: &Path) {
        let w = |p: &str, data: &[u8]| std::fs::write(root.join(p), data).unwrap();
        std::fs::create_dir_all(root.join("d/sub")).unwrap();
        w("f", b"hello world");
        w("d/g", &vec![7u8; 100_000]);
        w("d/sub/h", b"");
        std::fs::hard_link(root.join("f"), root.join("d/f-link")).unwrap();
        symlink("../f", root.join("d/ln")).unwrap();
        symlink("/nonexistent/target", root.join("dangling")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640))
            .unwrap();
        let name = join_bytes(root, b"bad\xffname\n");
        std::fs::write(&name, b"x").unwrap();
        let mut f = File::create(root.join("sparse")).unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(b"end").unwrap();
        drop(f);
        xattr::lset(&cpath(&root.join("f")), c"user.k", b"v1").unwrap();
        xattr::lset(&cpath(&root.join("d/g")), c"user.k", b"v1").unwrap();
        std::fs::set_permissions(root.join("d/g"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut i = 0;
        for p in ["f", "d/g", "d/sub/h", "d/ln", "dangling", "fifo", "sparse", "d/sub", "d", "."] {
            i += 1;
            set_times(
                &root.join(p),
                (1_600_000_000 + i, 123_456_789 + i),
                (1_500_000_000 + i, 987_654_321 - i),
            );
        }
        set_times(&name, (1_600_000_100, 5), (1_500_000_100, 6));
    }

    fn pair() -> (TmpDir, TmpDir) {
        let (a, b) = (TmpDir::new("a"), TmpDir::new("b"));
        build(&a.0);
        build(&b.0);
        (a, b)
    }

    /// Directory mtimes change when entries are added, so perturbations restore them.
    fn with_dir_times_kept(dir: &Path, f: impl FnOnce()) {
        let m = std::fs::symlink_metadata(dir).unwrap();
        f();
        set_times(dir, (m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()));
    }

    fn only(diffs: &[Difference], kind: DiffKind, path: &str) {
        let want = PathBuf::from(path);
        assert!(
            diffs.len() == 1 && diffs[0].kind == kind && diffs[0].path == want,
            "expected exactly one {kind:?} difference at {path}, got:\n{}",
            diffs.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")
        );
    }

    fn cmp(a: &TmpDir, b: &TmpDir) -> Vec<Difference> {
        compare(&a.0, &b.0, &CompareOptions { atime: AtimeScope::All, ..Default::default() })
            .unwrap()
    }

    #[test]
    fn identical_trees() {
        let (a, b) = pair();
        let d = cmp(&a, &b);
        assert!(d.is_empty(), "{d:?}");
        // And comparing does not disturb atimes of files and directories.
        let d = cmp(&a, &b);
        let non_symlink: Vec<_> =
            d.iter().filter(|d| !d.path.ends_with("ln") && !d.path.ends_with("dangling")).collect();
        assert!(non_symlink.is_empty(), "{non_symlink:?}");
    }

    #[test]
    fn mode() {
        let (a, b) = pair();
        std::fs::set_permissions(b.0.join("d/g"), std::fs::Permissions::from_mode(0o4600)).unwrap();
        only(&cmp(&a, &b), DiffKind::Mode, "d/g");
    }

    #[test]
    fn mtime_nanoseconds() {
        let (a, b) = pair();
        let m = std::fs::symlink_metadata(b.0.join("d/g")).unwrap();
        set_times(&b.0.join("d/g"), (m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec() + 1));
        only(&cmp(&a, &b), DiffKind::Mtime, "d/g");
    }

    #[test]
    fn atime_nanoseconds_on_symlink() {
        let (a, b) = pair();
        let p = b.0.join("dangling");
        let m = std::fs::symlink_metadata(&p).unwrap();
        set_times(&p, (m.atime(), m.atime_nsec() + 1), (m.mtime(), m.mtime_nsec()));
        only(&cmp(&a, &b), DiffKind::Atime, "dangling");
    }

    #[test]
    fn dir_atime_only_with_all() {
        let (a, b) = pair();
        let p = b.0.join("d/sub");
        let m = std::fs::symlink_metadata(&p).unwrap();
        set_times(&p, (m.atime() + 1, m.atime_nsec()), (m.mtime(), m.mtime_nsec()));
        only(&cmp(&a, &b), DiffKind::Atime, "d/sub");
        assert!(compare(&a.0, &b.0, &CompareOptions::default()).unwrap().is_empty());
    }

    #[test]
    fn xattr_value_and_presence() {
        let (a, b) = pair();
        xattr::lset(&cpath(&b.0.join("d/g")), c"user.k", b"v2").unwrap();
        only(&cmp(&a, &b), DiffKind::Xattr, "d/g");
        // On a hardlinked file, every link shows it. (Comparing again: the first comparison's
        // readlink updated the symlinks' atimes, so leave those out.)
        xattr::lset(&cpath(&b.0.join("d/g")), c"user.k", b"v1").unwrap();
        xattr::lset(&cpath(&b.0.join("f")), c"user.k", b"v3").unwrap();
        let again = CompareOptions { atime: AtimeScope::Files, ..Default::default() };
        let d = compare(&a.0, &b.0, &again).unwrap();
        assert_eq!(
            d.iter().map(|x| (x.kind, x.path.to_str().unwrap())).collect::<Vec<_>>(),
            vec![(DiffKind::Xattr, "f"), (DiffKind::Xattr, "d/f-link")],
            "{d:?}"
        );
        xattr::lset(&cpath(&b.0.join("f")), c"user.k", b"v1").unwrap();
        xattr::lset(&cpath(&b.0.join("d")), c"user.extra", b"").unwrap();
        only(&compare(&a.0, &b.0, &again).unwrap(), DiffKind::Xattr, "d");
    }

    #[test]
    fn hardlink_broken() {
        let (a, b) = pair();
        // Replace d/f-link by an independent copy with identical metadata.
        let p = b.0.join("d/f-link");
        let m = std::fs::symlink_metadata(&p).unwrap();
        with_dir_times_kept(&b.0.join("d"), || {
            std::fs::remove_file(&p).unwrap();
            std::fs::write(&p, b"hello world").unwrap();
        });
        xattr::lset(&cpath(&p), c"user.k", b"v1").unwrap();
        set_times(&p, (m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()));
        std::fs::set_permissions(&p, m.permissions()).unwrap();
        let d = cmp(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().all(|x| x.kind == DiffKind::Hardlink), "{d:?}");
        let paths: Vec<_> = d.iter().map(|x| x.path.clone()).collect();
        assert_eq!(paths, vec![PathBuf::from("d/f-link"), PathBuf::from("f")]);
    }

    #[test]
    fn hardlink_added() {
        let (a, b) = pair();
        // Make d/sub/h a link to d/g in B only (same content and metadata as before is not needed:
        // the structure difference must be reported whatever else differs).
        with_dir_times_kept(&b.0.join("d/sub"), || {
            std::fs::remove_file(b.0.join("d/sub/h")).unwrap();
            std::fs::hard_link(b.0.join("d/g"), b.0.join("d/sub/h")).unwrap();
        });
        let d = cmp(&a, &b);
        assert!(
            d.iter().any(|x| x.kind == DiffKind::Hardlink && x.path == Path::new("d/g")),
            "{d:?}"
        );
        assert!(
            d.iter().any(|x| x.kind == DiffKind::Hardlink && x.path == Path::new("d/sub/h")),
            "{d:?}"
        );
    }

    #[test]
    fn symlink_target() {
        let (a, b) = pair();
        let p = b.0.join("d/ln");
        let m = std::fs::symlink_metadata(&p).unwrap();
        with_dir_times_kept(&b.0.join("d"), || {
            std::fs::remove_file(&p).unwrap();
            symlink("../F", &p).unwrap();
        });
        set_times(&p, (m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()));
        only(&cmp(&a, &b), DiffKind::SymlinkTarget, "d/ln");
    }

    #[test]
    fn content_byte() {
        let (a, b) = pair();
        let p = b.0.join("d/g");
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.seek(SeekFrom::Start(77_777)).unwrap();
        f.write_all(&[8]).unwrap();
        drop(f);
        set_times(&p, (m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()));
        let d = cmp(&a, &b);
        only(&d, DiffKind::Content, "d/g");
        assert!(d[0].detail.contains("77777"), "{}", d[0]);
    }

    #[test]
    fn sparse_filled() {
        let (a, b) = pair();
        let p = b.0.join("sparse");
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mut data = vec![0u8; (8 << 20) + 3];
        data[8 << 20..].copy_from_slice(b"end");
        std::fs::write(&p, &data).unwrap();
        set_times(&p, (m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()));
        only(&cmp(&a, &b), DiffKind::Sparse, "sparse");
        let lax = CompareOptions { check_sparse: false, ..Default::default() };
        assert!(compare(&a.0, &b.0, &lax).unwrap().is_empty());
    }

    #[test]
    fn missing_and_type_and_non_utf8_names() {
        let (a, b) = pair();
        with_dir_times_kept(&b.0, || {
            std::fs::remove_file(b.0.join("fifo")).unwrap();
            std::fs::create_dir(b.0.join("fifo")).unwrap();
            std::fs::remove_file(join_bytes(&b.0, b"bad\xffname\n")).unwrap();
            std::fs::write(b.0.join("zzz"), b"").unwrap();
        });
        let d = compare(
            &a.0,
            &b.0,
            &CompareOptions { mtime: false, atime: AtimeScope::None, ..Default::default() },
        )
        .unwrap();
        let got: Vec<(DiffKind, Vec<u8>)> =
            d.iter().map(|x| (x.kind, x.path.as_os_str().as_bytes().to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (DiffKind::OnlyInA, b"bad\xffname\n".to_vec()),
                (DiffKind::FileType, b"fifo".to_vec()),
                (DiffKind::OnlyInB, b"zzz".to_vec()),
            ],
            "{d:?}"
        );
        assert_eq!(d[0].to_string(), "bad\\xffname\\n: only in A: regular file missing in B");
    }

    #[test]
    fn size_and_root_mode() {
        let (a, b) = pair();
        let p = b.0.join("d/sub/h");
        let m = std::fs::symlink_metadata(&p).unwrap();
        std::fs::write(&p, b"!").unwrap();
        set_times(&p, (m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()));
        only(&cmp(&a, &b), DiffKind::Size, "d/sub/h");
        std::fs::write(&p, b"").unwrap();
        set_times(&p, (m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()));
        std::fs::set_permissions(&b.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
        // Comparing again: the first comparison's readlink moved the symlinks' atimes, each at
        // its own moment (a clock tick apart on a loaded machine), so leave those out.
        let again = CompareOptions { atime: AtimeScope::Files, ..Default::default() };
        only(&compare(&a.0, &b.0, &again).unwrap(), DiffKind::Mode, ".");
    }

    #[test]
    fn owner_and_rdev_as_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let (a, b) = pair();
        for (t, dev) in [(&a, libc::makedev(1, 3)), (&b, libc::makedev(1, 5))] {
            with_dir_times_kept(&t.0, || {
                nix::sys::stat::mknod(
                    &t.0.join("dev"),
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    dev,
                )
                .unwrap();
            });
            set_times(&t.0.join("dev"), (1, 2), (3, 4));
        }
        only(&cmp(&a, &b), DiffKind::Rdev, "dev");
        std::os::unix::fs::lchown(b.0.join("d/g"), Some(1234), Some(2345)).unwrap();
        let d =
            compare(&a.0, &b.0, &CompareOptions { atime: AtimeScope::Files, ..Default::default() })
                .unwrap();
        let got: Vec<_> = d.iter().map(|x| (x.kind, x.path.to_str().unwrap())).collect();
        assert_eq!(
            got,
            vec![(DiffKind::Rdev, "dev"), (DiffKind::Uid, "d/g"), (DiffKind::Gid, "d/g")]
        );
        let lax = CompareOptions { owner: false, atime: AtimeScope::Files, ..Default::default() };
        assert_eq!(compare(&a.0, &b.0, &lax).unwrap().len(), 1);
    }
}
