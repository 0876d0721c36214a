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
use super::{validate_name, Cache, Layout};
use crate::backend::{BackendKind, BaseTree, Presence, Source, StreamBase, Watch};
use crate::copy::CancelToken;
use crate::stream::{self, StreamHeader, StreamReader};
use crate::{Context, Error, Result};

/// How long a generation this process just stopped holding may stay held by a copy of the
/// hold in a child that another thread forked and has not exec'd yet.
const HOLD_LINGERS: std::time::Duration = std::time::Duration::from_millis(200);

/// Manifests a project keeps: of the generations sent last, by number (see [`Cache::send`]).
pub const KEPT_MANIFESTS: usize = 4;

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
    ///
    /// With `base`, the stream is an increment from that older generation: only what changed
    /// since it (entries, removals, files whose data changed), which a receiver whose current
    /// generation is `base` makes into this one. The base needs no longer exist here, only its
    /// manifest, which every send writes for the generation it sends (the newest
    /// [`KEPT_MANIFESTS`] sent are kept): NotFound ([`Error::NoBase`]) if there is none.
    pub fn send(
        &self,
        project: &str,
        generation: Option<u64>,
        base: Option<u64>,
        out: &mut dyn Write,
    ) -> Result<Sent> {
        self.send_with(project, generation, base, out, &Watch::default())
    }

    /// [`Cache::send`], reporting to and stopped by `watch` (totals are known up front).
    pub fn send_with(
        &self,
        project: &str,
        generation: Option<u64>,
        base: Option<u64>,
        out: &mut dyn Write,
        watch: &Watch,
    ) -> Result<Sent> {
        validate_name(project)?;
        if self.store.sends_through_session() {
            return self.send_through_session(project, generation, base, out, watch);
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
        let written = self.stream_generation(&meta, tree.as_fd(), &place, base, out, watch);
        drop(tree);
        drop(hold);
        // Retired while it was sent: gone now unless a session still uses it (else gc).
        if let Ok(_lock) = self.lock_shared(project) {
            let _ = self.reclaim_if_unused_within(project, meta.generation, HOLD_LINGERS);
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
        base: Option<u64>,
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
            let (written, header) =
                self.stream_generation(&meta, tree.as_fd(), &path, base, out, watch)?;
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

    /// Write generation `meta`, whose tree is open at `tree` (at `at`), as a stream to `out`:
    /// in full, or as an increment from generation `base` by its manifest. SIGPIPE is kept
    /// away (see `sys::signal`). Keeps the generation's manifest. The bytes written and the
    /// header.
    fn stream_generation(
        &self,
        meta: &GenerationMeta,
        tree: BorrowedFd<'_>,
        at: &Path,
        base: Option<u64>,
        out: &mut dyn Write,
        watch: &Watch,
    ) -> Result<(u64, StreamHeader)> {
        let project = meta.project.as_str();
        let base_path = base.map(|b| Layout::manifest(project, b));
        let base_bytes = match (base, &base_path) {
            (Some(b), _) if b >= meta.generation => {
                return Err(Error::InvalidArgument {
                    what: format!(
                        "an increment's base ({b}) must be older than the generation sent ({})",
                        meta.generation
                    ),
                })
            }
            (Some(b), Some(path)) => Some(self.root.read(path)?.ok_or_else(|| Error::NoBase {
                project: project.to_string(),
                base: format!("generation {b}"),
                what: format!(
                    "this cache keeps no manifest of it (a generation gets one when it is sent, \
                     and the newest {KEPT_MANIFESTS} are kept): send generation {} in full",
                    meta.generation
                ),
            })?),
            _ => None,
        };
        let mut base_input: &[u8] = base_bytes.as_deref().unwrap_or_default();
        let mut base_reader = match &base_path {
            Some(path) if base_bytes.is_some() => Some(stream::manifest::ManifestReader::open(
                &mut base_input,
                &self.root.join(path).to_string_lossy(),
            )?),
            _ => None,
        };
        let mut header = self.header(meta, tree, at)?;
        header.base = base_reader.as_ref().map(|r| r.id().to_string());
        let mut kept = Vec::new();
        let mut record =
            stream::manifest::ManifestWriter::start(&mut kept, &header.id, meta.created_at)?;
        // The copy backend copies every file into a session, so its generations share no
        // inodes: every file is compared by its data there.
        let quick_check = self.backend() != BackendKind::Copy;
        let written = crate::sys::signal::without_sigpipe(|| {
            let manifests = stream::Manifests {
                base: base_reader.as_mut(),
                record: Some(&mut record),
                quick_check,
            };
            let progress = watch.progress.as_deref();
            stream::send_tree(tree, at, &header, out, progress, watch.cancel.as_ref(), manifests)
        })?;
        record.finish()?;
        drop(record);
        // The stream is whole: a manifest that cannot be kept costs only later increments.
        if let Err(e) = self.keep_manifest(project, meta.generation, &kept) {
            tracing::warn!(
                target: "goldclone::golden",
                "{project}: the manifest of generation {} was not kept: {e}",
                meta.generation
            );
        }
        Ok((written, header))
    }

    /// Keep the manifest of generation `number`, and only the newest [`KEPT_MANIFESTS`].
    fn keep_manifest(&self, project: &str, number: u64, manifest: &[u8]) -> Result<()> {
        let dir = Layout::manifests(project);
        self.root.mkdir_all(&dir)?;
        self.root.write_atomic(&Layout::manifest(project, number), manifest)?;
        let mut numbers: Vec<u64> =
            self.root.list(&dir)?.iter().filter_map(|n| n.to_str()?.parse().ok()).collect();
        numbers.sort_unstable_by(|a, b| b.cmp(a));
        for old in numbers.into_iter().skip(KEPT_MANIFESTS) {
            self.root.remove_file(&Layout::manifest(project, old))?;
        }
        Ok(())
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
        let received = match &header.base {
            Some(base) => self.receive_increment(project, reader, &header, base, watch)?,
            None => {
                let reader = std::cell::RefCell::new(Some(reader));
                let src = Source::Stream(&reader, &header, None);
                let exists = state::read_current(&self.root, project).ok().flatten().is_some();
                if exists {
                    self.import_next_from(project, &src, Some(&header.id), None, watch)?
                } else {
                    self.import_from(project, &src, Some(&header.id), watch)?
                }
            }
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

impl Cache {
    /// Receive an increment from `base`: the project's current generation here must be it.
    /// The stream changes, under the import's intent, a clone of it where the backend makes
    /// the next generation as one (ZFS, zvol, images, btrfs), else (the copy backend) a copy of
    /// its tree in the next generation's staging (reflinked where the filesystem can).
    fn receive_increment(
        &self,
        project: &str,
        reader: StreamReader<'_>,
        header: &StreamHeader,
        base: &str,
        watch: &Watch,
    ) -> Result<u64> {
        let no_base = |what: String| Error::NoBase {
            project: project.to_string(),
            base: base.to_string(),
            what,
        };
        let current = {
            let _lock = match self.lock_shared(project) {
                Ok(l) => l,
                Err(Error::UnknownProject { .. }) => {
                    return Err(no_base("the project is not here: receive a full stream".into()))
                }
                Err(e) => return Err(e),
            };
            self.current_generation(project)?.1
        };
        let current_id = self.stream_id(&current);
        if current_id == header.id {
            reader.verify_to_end()?;
            return Ok(current.generation);
        }
        if current_id != base {
            return Err(no_base(format!(
                "the current generation here is {} ({current_id}): receive a full stream, or \
                 an increment from it",
                current.generation
            )));
        }
        let reader = std::cell::RefCell::new(Some(reader));
        if self.store.applies_increments_in_place() {
            // ZFS, zvol, images, btrfs: the next generation starts as a clone of the current one,
            // which `import_next_from` checks is the base under the exclusive lock: the
            // increment is applied to that clone, with no copy of the base's tree.
            let src = Source::Stream(&reader, header, Some(StreamBase::InPlace));
            return self.import_next_from(project, &src, Some(&header.id), Some(base), watch);
        }
        let (tree, hold) = {
            let _lock = self.lock_shared(project)?;
            let number = current.generation;
            let gone = || no_base("the base was retired meanwhile: receive again".into());
            let hold = state::hold_generation(&self.root, project, number)?.ok_or_else(gone)?;
            let (now, _) = self.current_generation(project)?;
            if now.number != number {
                return Err(gone());
            }
            let g = self.generation(project, number, number);
            let fd = self.store.open_generation(&self.root, &g, &current.identity)?;
            (BaseTree { fd, path: self.root.join(&g.place) }, hold)
        };
        let src = Source::Stream(&reader, header, Some(StreamBase::Copy(&tree)));
        let received = self.import_next_from(project, &src, Some(&header.id), Some(base), watch);
        drop(tree);
        drop(hold);
        if let Ok(_lock) = self.lock_shared(project) {
            let _ = self.reclaim_if_unused_within(project, current.generation, HOLD_LINGERS);
        }
        received
    }
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
