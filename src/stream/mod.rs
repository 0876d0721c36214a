//! The portable stream: a tree with goldclone's full fidelity (owners, modes, ns times, xattrs
//! with `trusted.overlay.*` and ACLs, hardlinks, device nodes, sparse files) as checksummed
//! records, so that a generation made on one host's backend can become a generation on any
//! backend of another host. docs/STREAM.md describes the format.
//!
//! [`send_tree`] walks an open directory in name order and writes the stream; [`StreamReader`]
//! checks the magic and header, and [`StreamReader::unpack_into`] makes the tree in an empty
//! directory. The reader creates everything beneath that directory by its own open fds (never
//! through a path a stream names), so a stream cannot reach outside it; it is verified to its
//! trailer before the caller commits what it made.
//!
//! Why our own format and not pax tar: tar has no checksum over data, so a flipped bit in a
//! file arrives silently, and the `tar` crate writes no sparse entries; the records here are
//! about 200 lines (`record.rs`).

pub mod manifest;
mod receive;
pub mod record;
mod send;

use serde::{Deserialize, Serialize};

pub use receive::StreamReader;
pub use send::{count_tree, send_tree, Manifests, TreeCount};

/// The version of the format this library writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The name of the portable format in a header.
pub const PORTABLE: &str = "portable";

/// What a stream is: the first record, JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    /// The stream's format (`"portable"`).
    pub format: String,
    /// Its version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// The project it is a generation of.
    pub project: String,
    /// The generation's number on the sender.
    pub generation: u64,
    /// The generation's id on every host (see `GenerationMeta::origin`).
    pub id: String,
    /// The id of the generation this is an increment from; `None` for a full stream.
    pub base: Option<String>,
    /// The backend it was sent from (for messages).
    pub sent_from: String,
    /// Entries, bytes of file data, and bytes the tree occupied on the sender: totals for
    /// progress and for sizing the receiver's image or volume.
    pub entries: u64,
    pub bytes: u64,
    pub used: u64,
}
