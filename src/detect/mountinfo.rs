//! `/proc/<pid>/mountinfo`: a pure parser and the path → mount lookup.
//!
//! Line format (proc(5)):
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)   (10)         (11)
//! ```
//!
//! Fields 4, 5, 9 and 10 escape space, tab, newline and backslash as octal `\040`, `\011`,
//! `\012`, `\134` (the kernel's `mangle()`); [`unescape`] undoes any `\ooo`.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

/// One mount, as `/proc/self/mountinfo` describes it. Escapes are already undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Unique id of the mount (may be reused after unmount).
    pub mount_id: u64,
    /// Id of the parent mount; the mount itself, or one outside this view, for the root.
    pub parent_id: u64,
    /// Major number of `st_dev` for the superblock (0 for anonymous devices: tmpfs, zfs, btrfs).
    pub major: u32,
    /// Minor number of `st_dev` for the superblock.
    pub minor: u32,
    /// The directory of the filesystem that forms the root of this mount: `/` unless it is a
    /// bind mount of a subdirectory (or a btrfs subvolume mounted with `subvol=`).
    #[serde(serialize_with = "super::serialize_path_lossy")]
    pub root: PathBuf,
    /// Where it is mounted, relative to the process's root directory.
    #[serde(serialize_with = "super::serialize_path_lossy")]
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,relatime`).
    pub mount_options: String,
    /// Optional fields (`shared:1`, `master:2`, `propagate_from:3`, `unbindable`).
    pub optional_fields: Vec<String>,
    /// Filesystem type, with any subtype (`fuse.sshfs`).
    pub fs_type: String,
    /// Mount source: a device, a ZFS dataset name, or anything the filesystem chose; lossy UTF-8.
    pub source: String,
    /// Per-superblock options, as the kernel printed them: values that contain `,`, `=`, space,
    /// tab, newline or backslash keep their octal escapes (split on `,`, then [`unescape`]).
    pub super_options: String,
}

/// A line of mountinfo that does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountinfoError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for MountinfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mountinfo line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for MountinfoError {}

/// Undo the kernel's octal escaping (`\040` → space, `\011` tab, `\012` newline, `\134`
/// backslash; any `\ooo` with three octal digits). A backslash not followed by three octal digits
/// is kept as is.
pub fn unescape(field: &str) -> Vec<u8> {
    unescape_bytes(field.as_bytes())
}

fn unescape_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && is_octal_triplet(&b[i + 1..i + 4]) {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn is_octal_triplet(t: &[u8]) -> bool {
    t.len() == 3 && t.iter().all(|c| (b'0'..=b'7').contains(c))
}

fn unescape_path(field: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape_bytes(field)))
}

fn unescape_string(field: &[u8]) -> String {
    String::from_utf8_lossy(&unescape_bytes(field)).into_owned()
}

fn lossy(field: &[u8]) -> String {
    String::from_utf8_lossy(field).into_owned()
}

fn number<T: std::str::FromStr>(field: &[u8], what: &'static str) -> Result<T, &'static str> {
    std::str::from_utf8(field).ok().and_then(|s| s.parse().ok()).ok_or(what)
}

/// Parse one mountinfo line (without its newline).
pub fn parse_line(line: &str) -> Result<Mount, &'static str> {
    parse_line_bytes(line.as_bytes())
}

/// Parse one mountinfo line given as bytes: the kernel escapes only space, tab, newline and
/// backslash, so mount points and sources can hold any other byte, UTF-8 or not.
pub fn parse_line_bytes(line: &[u8]) -> Result<Mount, &'static str> {
    // Fields are separated by single spaces; escaped fields contain none.
    let mut it = line.split(|&c| c == b' ');
    let mut next = |what: &'static str| it.next().filter(|s| !s.is_empty()).ok_or(what);
    let mount_id = number(next("missing mount id")?, "bad mount id")?;
    let parent_id = number(next("missing parent id")?, "bad parent id")?;
    let dev = next("missing major:minor")?;
    let colon = dev.iter().position(|&c| c == b':').ok_or("bad major:minor")?;
    let major = number(&dev[..colon], "bad major")?;
    let minor = number(&dev[colon + 1..], "bad minor")?;
    let root = unescape_path(next("missing root")?);
    let mount_point = unescape_path(next("missing mount point")?);
    let mount_options = lossy(next("missing mount options")?);
    let mut optional_fields = Vec::new();
    loop {
        match it.next() {
            None => return Err("missing '-' separator"),
            Some(b"-") => break,
            Some(b"") => continue,
            Some(f) => optional_fields.push(lossy(f)),
        }
    }
    // After the separator: fs type, source (possibly empty on old kernels), super options.
    let rest: Vec<&[u8]> = it.collect();
    let [fs_type, source, super_options] = rest.as_slice() else {
        return Err("expected fs type, source and super options after '-'");
    };
    if fs_type.is_empty() {
        return Err("empty filesystem type");
    }
    Ok(Mount {
        mount_id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        mount_options,
        optional_fields,
        fs_type: unescape_string(fs_type),
        source: unescape_string(source),
        super_options: lossy(super_options),
    })
}

/// Parse a whole mountinfo text, in kernel order (parents before children, and for mounts
/// stacked on one mount point, lower before upper). Empty lines are ignored.
pub fn parse_mountinfo(text: &str) -> Result<Vec<Mount>, MountinfoError> {
    parse_mountinfo_bytes(text.as_bytes())
}

/// [`parse_mountinfo`] over raw bytes, as read from `/proc/self/mountinfo` (which is not
/// necessarily UTF-8).
pub fn parse_mountinfo_bytes(text: &[u8]) -> Result<Vec<Mount>, MountinfoError> {
    text.split(|&c| c == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| parse_line_bytes(l).map_err(|reason| MountinfoError { line: i + 1, reason }))
        .collect()
}

/// The mount on which the absolute, canonical (symlink-free) `path` is visible, found the way the
/// kernel resolves paths: start at the root mount and descend, at each path prefix, into the
/// topmost mount whose parent is the current mount and whose mount point is that prefix.
///
/// This handles stacked mounts (the upper one wins) and overmounts (a mount at `/a/b` is hidden
/// once `/a` is mounted over, even though `/a/b` is the longest matching prefix). When the mount
/// tree is inconsistent (no root mount), falls back to the longest mount-point prefix, last
/// entry winning among equals. `None` only if no mount point is a prefix of `path`.
pub fn find_mount<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    walk_mount_tree(mounts, path).or_else(|| longest_prefix(mounts, path))
}

fn walk_mount_tree<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let root_dir = Path::new("/");
    // The root mount: at "/", with a parent that is not a mount at "/" in this view (the
    // parent is outside the process's root, or the mount is its own parent).
    let mut cur = mounts.iter().find(|m| {
        m.mount_point == root_dir
            && (m.parent_id == m.mount_id
                || !mounts.iter().any(|p| p.mount_id == m.parent_id && p.mount_point == root_dir))
    })?;
    let mut prefix = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::RootDir => prefix.push("/"),
            Component::Normal(c) => prefix.push(c),
            // Not canonical: refuse rather than guess.
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
        // Descend through every mount stacked at this prefix.
        while let Some(child) = mounts.iter().rev().find(|c| {
            c.parent_id == cur.mount_id && c.mount_id != cur.mount_id && c.mount_point == prefix
        }) {
            cur = child;
        }
    }
    Some(cur)
}

fn longest_prefix<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point)
            && match best {
                None => true,
                Some(b) => m.mount_point.components().count() >= b.mount_point.components().count(),
            }
        {
            best = Some(m);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"/mnt/a\040b\011c\012d\134e"), b"/mnt/a b\tc\nd\\e");
        // Not an escape: kept literally.
        assert_eq!(unescape(r"a\9bc"), b"a\\9bc");
        assert_eq!(unescape(r"end\04"), b"end\\04");
        assert_eq!(unescape(r"\"), b"\\");
        // Out of byte range: kept literally.
        assert_eq!(unescape(r"\777"), b"\\777");
        // Non-UTF-8 byte.
        assert_eq!(unescape(r"x\377"), b"x\xff");
    }

    #[test]
    fn parses_proc5_example() {
        let m = parse_line(
            "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!(m.mount_id, 36);
        assert_eq!(m.parent_id, 35);
        assert_eq!((m.major, m.minor), (98, 0));
        assert_eq!(m.root, Path::new("/mnt1"));
        assert_eq!(m.mount_point, Path::new("/mnt2"));
        assert_eq!(m.mount_options, "rw,noatime");
        assert_eq!(m.optional_fields, vec!["master:1"]);
        assert_eq!(m.fs_type, "ext3");
        assert_eq!(m.source, "/dev/root");
        assert_eq!(m.super_options, "rw,errors=continue");
    }

    #[test]
    fn parses_multiple_optional_fields_and_none() {
        let m = parse_line("100 27 0:52 / /a rw,relatime shared:5 master:3 propagate_from:2 unbindable - tmpfs t rw")
            .unwrap();
        assert_eq!(
            m.optional_fields,
            vec!["shared:5", "master:3", "propagate_from:2", "unbindable"]
        );
        let m = parse_line("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard").unwrap();
        assert!(m.optional_fields.is_empty());
        assert_eq!(m.mount_point, Path::new("/"));
    }

    #[test]
    fn parses_zfs_dataset_with_escaped_space() {
        let m = parse_line(
            r"120 29 0:61 / /tank/my\040data rw,noatime shared:70 - zfs tank/my\040data rw,xattr,posixacl,casesensitive",
        )
        .unwrap();
        assert_eq!(m.fs_type, "zfs");
        assert_eq!(m.source, "tank/my data");
        assert_eq!(m.mount_point, Path::new("/tank/my data"));
    }

    #[test]
    fn parses_btrfs_subvol_and_bind_mount() {
        let m = parse_line(
            "45 29 0:40 /@home /home rw,relatime shared:25 - btrfs /dev/nvme0n1p2 rw,ssd,space_cache=v2,subvolid=257,subvol=/@home",
        )
        .unwrap();
        assert_eq!(m.root, Path::new("/@home"));
        assert_eq!(m.fs_type, "btrfs");
        assert!(m.super_options.contains("subvol=/@home"));
        let m = parse_line(
            r"200 27 254:0 /srv/golden\040tree/sub /mnt/b\012ind rw,relatime - ext4 /dev/vda rw",
        )
        .unwrap();
        assert_eq!(m.root, Path::new("/srv/golden tree/sub"));
        assert_eq!(m.mount_point, Path::new("/mnt/b\nind"));
    }

    #[test]
    fn parses_overlay_and_fuse() {
        let m = parse_line(
            "612 600 0:77 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X:/var/lib/docker/overlay2/l/Y,upperdir=/var/lib/docker/overlay2/abc/diff,workdir=/var/lib/docker/overlay2/abc/work",
        )
        .unwrap();
        assert_eq!(m.fs_type, "overlay");
        assert!(m.super_options.starts_with("rw,lowerdir="));
        let m = parse_line(
            "90 29 0:50 / /home/u/remote rw,nosuid,nodev - fuse.sshfs u@h:/x rw,user_id=1000",
        )
        .unwrap();
        assert_eq!(m.fs_type, "fuse.sshfs");
        assert_eq!(m.source, "u@h:/x");
    }

    #[test]
    fn parses_zvol_xfs() {
        let m = parse_line(
            "130 27 230:16 / /var/lib/docker rw,relatime - xfs /dev/zd16 rw,attr2,inode64",
        )
        .unwrap();
        assert_eq!((m.major, m.minor), (230, 16));
        assert_eq!(m.source, "/dev/zd16");
    }

    #[test]
    fn rejects_malformed() {
        assert!(parse_line("").is_err());
        assert!(parse_line("36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 ext3 /dev/root rw").is_err());
        assert!(parse_line("x 35 98:0 / / rw - ext3 /dev/root rw").is_err());
        assert!(parse_line("36 35 98 / / rw - ext3 /dev/root rw").is_err());
        assert!(parse_line("36 35 98:0 / / rw -").is_err());
        let err = parse_mountinfo("27 1 254:0 / / rw - ext4 /dev/vda rw\ngarbage\n").unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn parses_non_utf8_bytes() {
        let m = parse_line_bytes(b"70 27 0:70 / /mnt/caf\xe9 rw - tmpfs src\xff rw").unwrap();
        assert_eq!(m.mount_point.as_os_str().as_encoded_bytes(), b"/mnt/caf\xe9");
        assert_eq!(m.source, "src\u{fffd}");
        let all = parse_mountinfo_bytes(
            b"27 1 254:0 / / rw - ext4 /dev/vda rw\n70 27 0:70 / /\xe9 rw - tmpfs t rw\n",
        )
        .unwrap();
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn tolerates_empty_source() {
        // Older kernels print an empty source for some filesystems: two spaces.
        let m = parse_line("50 27 0:45 / /x rw - tmpfs  rw,size=4k").unwrap();
        assert_eq!(m.source, "");
        assert_eq!(m.super_options, "rw,size=4k");
    }

    const TABLE: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
22 27 0:21 / /proc rw,relatime - proc proc rw
60 27 0:60 / /a rw - tmpfs t1 rw
61 60 0:61 / /a/b rw - tmpfs t2 rw
62 60 0:62 / /a rw - tmpfs t3 rw
63 27 0:63 / /s rw - tmpfs lower rw
64 63 0:64 / /s rw - tmpfs upper rw
65 27 254:0 /srv/sub /bind rw - ext4 /dev/vda rw
66 27 0:66 / /x\\040y rw - tmpfs sp rw
";

    fn table() -> Vec<Mount> {
        parse_mountinfo(TABLE).unwrap()
    }

    fn id(m: Option<&Mount>) -> u64 {
        m.unwrap().mount_id
    }

    #[test]
    fn finds_root_and_children() {
        let t = table();
        assert_eq!(id(find_mount(&t, Path::new("/"))), 27);
        assert_eq!(id(find_mount(&t, Path::new("/etc/passwd"))), 27);
        assert_eq!(id(find_mount(&t, Path::new("/proc"))), 22);
        assert_eq!(id(find_mount(&t, Path::new("/proc/self/mountinfo"))), 22);
        // Component prefix, not string prefix.
        assert_eq!(id(find_mount(&t, Path::new("/procfoo"))), 27);
        assert_eq!(id(find_mount(&t, Path::new("/bind/x"))), 65);
        assert_eq!(id(find_mount(&t, Path::new("/x y/z"))), 66);
    }

    #[test]
    fn stacked_mount_upper_wins() {
        let t = table();
        assert_eq!(id(find_mount(&t, Path::new("/s"))), 64);
        assert_eq!(id(find_mount(&t, Path::new("/s/f"))), 64);
    }

    #[test]
    fn overmounted_child_is_hidden() {
        let t = table();
        // /a/b (61) sits on the old /a (60), which 62 covers: /a/b now resolves inside 62.
        assert_eq!(id(find_mount(&t, Path::new("/a/b/c"))), 62);
        assert_eq!(id(find_mount(&t, Path::new("/a"))), 62);
        // Plain longest prefix would have said 61.
        assert_eq!(id(longest_prefix(&t, Path::new("/a/b/c"))), 61);
    }

    #[test]
    fn falls_back_to_longest_prefix_without_root() {
        // Root mount missing (inconsistent view): longest prefix, last among equals.
        let t =
            parse_mountinfo("60 27 0:60 / /a rw - tmpfs t1 rw\n61 27 0:61 / /a rw - tmpfs t2 rw\n")
                .unwrap();
        assert_eq!(id(find_mount(&t, Path::new("/a/x"))), 61);
        assert!(find_mount(&t, Path::new("/b")).is_none());
    }

    #[test]
    fn root_mount_in_chroot_like_view() {
        // Root whose parent is not visible, a second mount stacked on "/".
        let t = parse_mountinfo(
            "500 400 0:70 /jail / rw - ext4 /dev/sda1 rw\n501 500 0:71 / / rw - tmpfs over rw\n",
        )
        .unwrap();
        assert_eq!(id(find_mount(&t, Path::new("/etc"))), 501);
    }

    #[test]
    fn parses_this_machines_mountinfo() {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounts = parse_mountinfo(&text).unwrap();
        assert!(mounts.iter().any(|m| m.mount_point == Path::new("/")));
    }
}
