//! Send and receive: a generation as a portable stream ([`crate::stream`]) to another cache,
//! of any backend, on any host; the caller carries the bytes (a pipe, ssh, an HTTP body).
//!
//! * A send holds its generation ([`state::hold_generation`]) from the moment it has checked
//!   it, so a promote or a session's cleanup that retires it meanwhile leaves it until the send
//!   is done; the project's lock is held only while the send starts, so setups and promotes go
//!   on while it streams. A delete of the project is refused while a send reads it.
//! * A receive is an import (of a new project) or an import of the next generation (of an
//!   existing one), under the same intents and recovery, with the stream as its source: a
//!   stream is read to its verified trailer before anything is committed, so a truncated or
//!   corrupt stream leaves the receiver's generations and sessions as they were and its
//!   staging is removed (or, after a crash, by the next open or gc).
//! * Every generation has an id on every host: its `origin` where it was received, else one
//!   made from this cache's id, its number and its creation time. Receiving the generation that
//!   is current already changes nothing.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use super::state::{self, read_generation, GenerationMeta};
use super::{validate_name, Cache};
use crate::backend::{Presence, Source, Watch};
use crate::copy::CancelToken;
use crate::stream::{self, StreamHeader, StreamReader};
use crate::{Context, Error, Result};

/// What a finished send wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The generation sent.
    pub generation: u64,
    /// Its id, the same on every host.
    pub id: String,
    /// Entries and bytes of file data in the stream.
    pub entries: u64,
    pub bytes: u64,
    /// Bytes of stream written.
    pub stream_bytes: u64,
}

impl Cache {
    /// The id of a generation on every host (see the module's doc).
    pub(super) fn stream_id(&self, meta: &GenerationMeta) -> String {
        match &meta.origin {
            Some(origin) => origin.clone(),
            // The commit's own staging name is unique: a project deleted and imported again
            // within a second gets another id.
            None => {
                format!("{}.{}.{}", self.id, meta.generation, meta.made_by.trim_start_matches('.'))
            }
        }
    }

    /// Write generation `generation` (default: the current one) of `project` to `out` as a
    /// portable stream, which [`Cache::receive`] makes a generation of a cache of any backend.
    /// NotFound if the project or the generation does not exist. On ZFS and zvol the send
    /// reads through a session of the current generation that it makes and removes, so only
    /// the current generation can be sent there (Unsupported for an older one); a send killed
    /// there leaves that session (`goldclone-send-…`) for a cleanup.
    pub fn send(
        &self,
        project: &str,
        generation: Option<u64>,
        out: &mut dyn Write,
    ) -> Result<Sent> {
        self.send_with(project, generation, out, &Watch::default())
    }

    /// [`Cache::send`], reporting to and stopped by `watch` (totals are known up front).
    pub fn send_with(
        &self,
        project: &str,
        generation: Option<u64>,
        out: &mut dyn Write,
        watch: &Watch,
    ) -> Result<Sent> {
        validate_name(project)?;
        if self.store.sends_through_session() {
            return self.send_through_session(project, generation, out, watch);
        }
        let (tree, meta, hold) = {
            let _lock = self.lock_shared(project)?;
            let (current, _) = self.current_generation(project)?;
            let number = generation.unwrap_or(current.number);
            let unknown =
                || Error::UnknownGeneration { project: project.to_string(), generation: number };
            if number == 0 || number > current.number {
                return Err(unknown());
            }
            let hold = state::hold_generation(&self.root, project, number)?.ok_or_else(unknown)?;
            let meta = read_generation(&self.root, project, number)?.ok_or_else(unknown)?;
            let g = self.generation(project, number, current.number);
            match self.store.generation_presence(&self.root, &g, &meta.identity)? {
                Presence::Here => {}
                Presence::Absent => return Err(unknown()),
                Presence::Elsewhere(what) | Presence::Other(what) => {
                    return Err(Error::Damaged { path: self.root.join(&g.place), what })
                }
            }
            let tree = self.store.open_generation(&self.root, &g, &meta.identity)?;
            (tree, meta, hold)
        };
        // The hold keeps the generation from here: the counting walk and the stream go on
        // without the project's lock.
        let place = self.root.join(&super::Layout::generation(project, meta.generation));
        let written = self.header(&meta, tree.as_fd(), &place).and_then(|header| {
            Ok((write_stream(tree.as_fd(), &place, &header, out, watch)?, header))
        });
        drop(tree);
        drop(hold);
        // Retired while it was sent: gone now unless a session still uses it (else gc).
        if let Ok(_lock) = self.lock_shared(project) {
            let _ = self.reclaim_if_unused(project, meta.generation);
        }
        let (written, header) = written?;
        Ok(sent(header, written))
    }

    /// A send on ZFS and zvol: through a session of the current generation, made for the send
    /// and removed after it (a session keeps its generation, and a promote goes on meanwhile).
    /// Only the current generation: sessions are made of it alone.
    fn send_through_session(
        &self,
        project: &str,
        generation: Option<u64>,
        out: &mut dyn Write,
        watch: &Watch,
    ) -> Result<Sent> {
        let (current, _) = {
            let _lock = self.lock_shared(project)?;
            self.current_generation(project)?
        };
        let number = generation.unwrap_or(current.number);
        if number == 0 || number > current.number {
            return Err(Error::UnknownGeneration {
                project: project.to_string(),
                generation: number,
            });
        }
        if number != current.number {
            if read_generation(&self.root, project, number)?.is_none() {
                return Err(Error::UnknownGeneration {
                    project: project.to_string(),
                    generation: number,
                });
            }
            return Err(Error::Unsupported {
                what: format!(
                    "on the {} backend only the current generation ({}) can be sent",
                    self.backend().name(),
                    current.number
                ),
            });
        }
        let name = format!("goldclone-send-{}", crate::sys::unique_suffix());
        // A token of the setup's own: its commit must not count as the send's.
        let setup = Watch { progress: None, cancel: watch.cancel.as_ref().map(CancelToken::child) };
        let path = self.setup_with(project, &name, &setup)?;
        let sent = (|| {
            let made_from = self.session_meta(project, &name)?.generation;
            if made_from != number {
                return Err(Error::GenerationBusy {
                    project: project.to_string(),
                    generation: number,
                    what: format!(
                        "generation {made_from} became current as the send began: send again"
                    ),
                });
            }
            let meta = read_generation(&self.root, project, number)?.ok_or_else(|| {
                Error::UnknownGeneration { project: project.to_string(), generation: number }
            })?;
            let tree =
                crate::sys::fs::openat_noatime(rustix::fs::CWD, &path, crate::sys::fs::READ_DIR)
                    .at("open", &path)?;
            let header = self.header(&meta, tree.as_fd(), &path)?;
            let written = write_stream(tree.as_fd(), &path, &header, out, watch)?;
            Ok(sent(header, written))
        })();
        // Lazily: a stream written whole is not failed by something that looks into the
        // session at this moment (gc removes it once free).
        let lazy = super::CleanupOptions { lazy: true };
        let cleaned = self.cleanup_with_options(project, &name, &lazy);
        let sent = sent?;
        if let Err(e) = cleaned {
            tracing::warn!(
                target: "goldclone::golden",
                "{project}: the send's session {name} was not removed: {e}"
            );
        }
        Ok(sent)
    }

    /// The stream header of generation `meta`, whose tree is open at `tree`.
    fn header(
        &self,
        meta: &GenerationMeta,
        tree: BorrowedFd<'_>,
        at: &Path,
    ) -> Result<StreamHeader> {
        let count = stream::count_tree(tree, at)?;
        Ok(StreamHeader {
            format: stream::PORTABLE.into(),
            version: stream::FORMAT_VERSION,
            project: meta.project.clone(),
            generation: meta.generation,
            id: self.stream_id(meta),
            base: None,
            sent_from: self.backend().name().into(),
            entries: count.entries,
            bytes: count.bytes,
            used: count.used,
        })
    }

    /// Read a stream that [`Cache::send`] wrote and make it a generation of `project`: the
    /// first one if the project does not exist here, else the next one (as
    /// [`Cache::import_next`]: sessions keep theirs). Returns the generation's number here.
    /// BadStream if the stream is not one, breaks off, or fails a checksum: nothing is
    /// committed then. InvalidArgument if it is a generation of another project. If the stream
    /// is of the project's current generation already, it is still read to its end and
    /// checked, nothing changes and its number is returned. Into an existing project the
    /// receive holds the project's exclusive lock while it reads (setups of it wait), as an
    /// import of the next generation does while it copies.
    pub fn receive(&self, project: &str, input: &mut dyn Read) -> Result<u64> {
        self.receive_with(project, input, &Watch::default())
    }

    /// [`Cache::receive`], reporting to and stopped by `watch`.
    pub fn receive_with(&self, project: &str, input: &mut dyn Read, watch: &Watch) -> Result<u64> {
        validate_name(project)?;
        let reader = StreamReader::open(input)?;
        let header = reader.header().clone();
        if header.format != stream::PORTABLE {
            return Err(Error::Unsupported {
                what: format!(
                    "a stream of format {:?} (this goldclone reads portable ones)",
                    header.format
                ),
            });
        }
        if header.project != project {
            return Err(Error::InvalidArgument {
                what: format!(
                    "the stream is a generation of project {:?}, not of {project:?}",
                    header.project
                ),
            });
        }
        if let Some(base) = &header.base {
            return Err(Error::Unsupported {
                what: format!("an incremental stream (from {base}): receive a full one"),
            });
        }
        let reader = std::cell::RefCell::new(Some(reader));
        let src = Source::Stream(&reader, &header);
        let exists = state::read_current(&self.root, project).ok().flatten().is_some();
        let received = if exists {
            self.import_next_from(project, &src, Some(&header.id), watch)?
        } else {
            self.import_from(project, &src, Some(&header.id), watch)?
        };
        tracing::info!(
            target: "goldclone::golden",
            "{project}: received generation {} of {} (sent from a {} cache) as generation {received}",
            header.generation,
            header.id,
            header.sent_from
        );
        Ok(received)
    }
}

/// Write the tree open at `tree` as a stream with `header`; SIGPIPE kept away (see
/// `sys::signal`). The bytes written.
fn write_stream(
    tree: BorrowedFd<'_>,
    at: &Path,
    header: &StreamHeader,
    out: &mut dyn Write,
    watch: &Watch,
) -> Result<u64> {
    crate::sys::signal::without_sigpipe(|| {
        stream::send_tree(tree, at, header, out, watch.progress.as_deref(), watch.cancel.as_ref())
    })
}

fn sent(header: StreamHeader, stream_bytes: u64) -> Sent {
    Sent {
        generation: header.generation,
        id: header.id,
        entries: header.entries,
        bytes: header.bytes,
        stream_bytes,
    }
}
