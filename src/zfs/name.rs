//! Dataset and snapshot names, validated before any call reaches the kernel.
//!
//! The rules are OpenZFS's `zfs_namecheck.c` (`dataset_namecheck`, `pool_namecheck`): components
//! of `[A-Za-z0-9_.: -]` separated by `/`, no empty component (so no leading, trailing or doubled
//! `/`), `.` and `..` are not components, at most one `@` and only in the last component, the
//! first component is a pool name (starts with a letter; not `mirror`, `raidz`, `draid`, or
//! `c<digit>...`), and the whole name is shorter than `ZFS_MAX_DATASET_NAME_LEN` (256) bytes.
//! Stricter than the kernel in one place: `%`, which OpenZFS reserves for its own temporary
//! clones during receive, is refused.

use std::ffi::{CStr, CString};
use std::fmt;

use crate::sys::block::ZFS_MAX_DATASET_NAME_LEN;
use crate::Error;

/// Longest valid full name in bytes (the kernel's buffer is 256 including the NUL).
pub const MAX_NAME_LEN: usize = ZFS_MAX_DATASET_NAME_LEN - 1;

fn valid_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b' ')
}

fn invalid(name: &str, reason: &'static str) -> Error {
    Error::InvalidName { name: name.to_owned(), reason }
}

fn check_length(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(invalid(name, "empty name"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::NameTooLong {
            name: name.to_owned(),
            len: name.len(),
            max: MAX_NAME_LEN,
        });
    }
    Ok(())
}

fn check_component(full: &str, c: &str) -> Result<(), Error> {
    if c.is_empty() {
        return Err(invalid(full, "empty component (leading, trailing or doubled '/')"));
    }
    if c == "." || c == ".." {
        return Err(invalid(full, "'.' and '..' are not valid components"));
    }
    if c.bytes().any(|b| b == b'%') {
        return Err(invalid(full, "'%' is reserved for OpenZFS's temporary clones"));
    }
    if !c.bytes().all(valid_char) {
        return Err(invalid(full, "characters other than A-Z a-z 0-9 _ - . : and space"));
    }
    Ok(())
}

fn check_pool(full: &str, pool: &str) -> Result<(), Error> {
    if !pool.as_bytes()[0].is_ascii_alphabetic() {
        return Err(invalid(full, "pool name must start with a letter"));
    }
    if matches!(pool, "mirror" | "raidz" | "draid") {
        return Err(invalid(full, "pool name is a reserved vdev type"));
    }
    let b = pool.as_bytes();
    if b[0] == b'c' && b.len() > 1 && b[1].is_ascii_digit() {
        return Err(invalid(full, "pool name looks like a disk (c<digit>...)"));
    }
    Ok(())
}

/// Validate a filesystem or volume name (`pool[/child...]`).
fn check_dataset(full: &str, name: &str) -> Result<(), Error> {
    if name.starts_with('/') {
        return Err(invalid(full, "leading '/'"));
    }
    if name.ends_with('/') {
        return Err(invalid(full, "trailing '/'"));
    }
    if name.contains('#') {
        return Err(invalid(full, "'#' (bookmark) is not allowed here"));
    }
    let mut components = name.split('/');
    let pool = components.next().unwrap_or_default();
    check_component(full, pool)?;
    check_pool(full, pool)?;
    components.try_for_each(|c| check_component(full, c))
}

/// A validated filesystem or volume name, e.g. `tank/golden/app`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatasetName(CString);

/// A validated snapshot name, e.g. `tank/golden/app@v42`: exactly one `@`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotName {
    full: CString,
    at: usize,
}

impl DatasetName {
    /// Validate `name` as a filesystem or volume name.
    pub fn new(name: &str) -> Result<Self, Error> {
        check_length(name)?;
        if name.contains('@') {
            return Err(invalid(name, "'@' belongs in snapshot names, not dataset names"));
        }
        check_dataset(name, name)?;
        // Validation refused everything outside printable ASCII, so there is no NUL.
        Ok(DatasetName(CString::new(name).expect("validated name has no NUL")))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("validated name is ASCII")
    }

    /// The name for C calls.
    pub fn as_cstr(&self) -> &CStr {
        &self.0
    }

    /// The pool this dataset lives in (first component).
    pub fn pool(&self) -> &str {
        pool_of(self.as_str())
    }

    /// The parent dataset, or `None` for a pool's root dataset.
    pub fn parent(&self) -> Option<DatasetName> {
        let s = self.as_str();
        s.rfind('/').map(|i| DatasetName(CString::new(&s[..i]).expect("prefix of a valid name")))
    }

    /// `self/child`, validated.
    pub fn child(&self, child: &str) -> Result<DatasetName, Error> {
        DatasetName::new(&format!("{}/{}", self.as_str(), child))
    }

    /// `self@snap`, validated.
    pub fn snapshot(&self, snap: &str) -> Result<SnapshotName, Error> {
        SnapshotName::new(&format!("{}@{}", self.as_str(), snap))
    }
}

impl SnapshotName {
    /// Validate `name` as `dataset@snapshot`.
    pub fn new(name: &str) -> Result<Self, Error> {
        check_length(name)?;
        let Some(at) = name.find('@') else {
            return Err(invalid(name, "a snapshot name needs '@'"));
        };
        let (dataset, snap) = (&name[..at], &name[at + 1..]);
        if snap.contains('@') {
            return Err(invalid(name, "more than one '@'"));
        }
        if snap.contains('/') {
            return Err(invalid(name, "'/' after '@'"));
        }
        check_dataset(name, dataset)?;
        check_component(name, snap)?;
        Ok(SnapshotName { full: CString::new(name).expect("validated name has no NUL"), at })
    }

    /// The full name as text.
    pub fn as_str(&self) -> &str {
        self.full.to_str().expect("validated name is ASCII")
    }

    /// The full name for C calls.
    pub fn as_cstr(&self) -> &CStr {
        &self.full
    }

    /// The dataset part (before `@`).
    pub fn dataset(&self) -> DatasetName {
        DatasetName(CString::new(&self.as_str()[..self.at]).expect("prefix of a valid name"))
    }

    /// The snapshot part (after `@`).
    pub fn snap(&self) -> &str {
        &self.as_str()[self.at + 1..]
    }

    /// The pool this snapshot lives in.
    pub fn pool(&self) -> &str {
        pool_of(self.as_str())
    }
}

/// The pool part of any ZFS name: up to the first `/`, `@` or `#`.
pub fn pool_of(name: &str) -> &str {
    name.split(['/', '@', '#']).next().unwrap_or(name)
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::str::FromStr for DatasetName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        DatasetName::new(s)
    }
}
impl std::str::FromStr for SnapshotName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        SnapshotName::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn kind_of_dataset(s: &str) -> Option<ErrorKind> {
        DatasetName::new(s).err().map(|e| e.kind())
    }
    fn kind_of_snapshot(s: &str) -> Option<ErrorKind> {
        SnapshotName::new(s).err().map(|e| e.kind())
    }

    #[test]
    fn accepts_valid_dataset_names() {
        for ok in ["tank", "tank/a", "tank/a-b_c.d:e f", "T1/x/y/z", "tank/..x", "tank/.x"] {
            assert_eq!(kind_of_dataset(ok), None, "{ok:?} should be valid");
        }
    }

    #[test]
    fn rejects_malformed_dataset_names() {
        for bad in [
            "",
            "/tank",
            "tank/",
            "tank//a",
            "tank/a@s",
            "tank/a#b",
            "tank/a%b",
            "tank/a*",
            "tank/./a",
            "tank/..",
            "1tank",
            "mirror",
            "raidz/a",
            "draid",
            "c0t0d0",
            "tank/ä",
            "tank/a\0b",
        ] {
            assert_eq!(
                kind_of_dataset(bad),
                Some(ErrorKind::InvalidName),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn length_limit_is_255_bytes() {
        let at_limit = format!("tank/{}", "a".repeat(MAX_NAME_LEN - 5));
        assert_eq!(at_limit.len(), 255);
        assert_eq!(kind_of_dataset(&at_limit), None);
        let over = format!("{at_limit}a");
        assert_eq!(kind_of_dataset(&over), Some(ErrorKind::NameTooLong));
        let snap_over = format!("{}@s", &at_limit[..254]);
        assert_eq!(snap_over.len(), 256);
        assert_eq!(kind_of_snapshot(&snap_over), Some(ErrorKind::NameTooLong));
    }

    #[test]
    fn snapshot_names_need_exactly_one_at() {
        assert_eq!(kind_of_snapshot("tank/a@s1"), None);
        assert_eq!(kind_of_snapshot("tank@s"), None);
        for bad in ["tank/a", "tank/a@", "tank/a@@s", "tank/a@s@t", "@s", "tank/a@s/x", "tank/@s"] {
            assert_eq!(
                kind_of_snapshot(bad),
                Some(ErrorKind::InvalidName),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn parts() {
        let s = SnapshotName::new("tank/golden/app@v1").unwrap();
        assert_eq!(s.pool(), "tank");
        assert_eq!(s.dataset().as_str(), "tank/golden/app");
        assert_eq!(s.snap(), "v1");
        let d = DatasetName::new("tank/golden/app").unwrap();
        assert_eq!(d.parent().unwrap().as_str(), "tank/golden");
        assert_eq!(DatasetName::new("tank").unwrap().parent(), None);
        assert_eq!(d.child("s1").unwrap().as_str(), "tank/golden/app/s1");
        assert_eq!(d.snapshot("x").unwrap(), SnapshotName::new("tank/golden/app@x").unwrap());
    }
}
