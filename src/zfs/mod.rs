//! ZFS through libzfs_core, loaded at run time.

/// A failed libzfs_core call.
#[derive(Debug, thiserror::Error)]
#[error("zfs {op} {name}: errno {errno}")]
pub struct ZfsError {
    op: &'static str,
    name: String,
    errno: i32,
}

impl ZfsError {
    /// The errno libzfs_core returned.
    pub fn errno(&self) -> i32 {
        self.errno
    }
    /// Stable classification.
    pub fn kind(&self) -> crate::ErrorKind {
        crate::error::kind_of_errno(self.errno)
    }
}
