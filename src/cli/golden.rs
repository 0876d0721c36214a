//! `goldclone golden import`, `goldclone session setup|promote|cleanup`, `goldclone gc`,
//! `goldclone info`: the golden lifecycle by hand.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use goldclone::golden::{BackendKind, Cache, OpenOptions};
use goldclone::{Context, Result};

/// Where the cache is and how to open it.
#[derive(Debug, Clone, Args)]
pub struct RootArgs {
    /// The cache root directory (on ZFS: the directory its dataset is mounted at).
    #[arg(long)]
    pub root: PathBuf,
    /// Use this backend instead of the one detection picks.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

impl RootArgs {
    fn open(&self) -> Result<Cache> {
        self.open_with(&SizeArgs::default())
    }

    fn open_with(&self, sizes: &SizeArgs) -> Result<Cache> {
        Cache::open(
            &self.root,
            &OpenOptions {
                backend: self.backend,
                image_size: sizes.image_size.unwrap_or(0),
                zvol_size: sizes.zvol_size.unwrap_or(0),
                zvol_block_size: sizes.zvol_block_size.unwrap_or(0),
                ..OpenOptions::default()
            },
        )
    }
}

/// Sizes of what an import makes, where the backend has them (bytes, or with a K, M, G or T
/// suffix, powers of 1024). Unset: the backend's default, chosen from the tree and the
/// filesystem.
#[derive(Debug, Clone, Default, Args)]
pub struct SizeArgs {
    /// Image backend: size of the generation's (sparse) image, which its sessions get too; at
    /// least 512M.
    #[arg(long, value_parser = parse_size)]
    pub image_size: Option<u64>,
    /// zvol backend: size of the project's (sparse) volume, which its sessions get too.
    #[arg(long, value_parser = parse_size)]
    pub zvol_size: Option<u64>,
    /// zvol backend: volblocksize of new volumes, a power of two from 4K to 128K.
    #[arg(long, value_parser = parse_size)]
    pub zvol_block_size: Option<u64>,
}

/// `4096`, `512M`, `16G`, `1T` (binary units; an optional `iB`/`B` after the letter).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{s:?}: unknown unit {c:?} (K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size (e.g. 512M, 16G)"))?;
    n.checked_mul(1 << shift).filter(|&b| b > 0).ok_or_else(|| format!("{s:?}: out of range"))
}

/// `goldclone golden ...`
#[derive(Debug, Clone, Subcommand)]
pub enum GoldenCommand {
    /// Make an existing directory generation 1 of a new project, or with `--next` the next
    /// generation of an existing one.
    Import {
        #[command(flatten)]
        root: RootArgs,
        /// The project exists: the directory becomes its next generation (sessions keep
        /// theirs).
        #[arg(long)]
        next: bool,
        #[command(flatten)]
        sizes: SizeArgs,
        /// Project id.
        project: String,
        /// The directory to import.
        dir: PathBuf,
    },
    /// Write a generation (default: the current one) to stdout as a portable stream, which
    /// `golden receive` makes a generation of a cache of any backend, e.g.
    /// `goldclone golden send --root R P | ssh host goldclone golden receive --root R P`.
    Send {
        #[command(flatten)]
        root: RootArgs,
        /// The generation to send (default: the current one).
        #[arg(long)]
        generation: Option<u64>,
        /// Send an increment from this older generation (one this cache has sent before): only
        /// what changed since it, for a receiver whose current generation it is.
        #[arg(long)]
        from: Option<u64>,
        /// Project id.
        project: String,
    },
    /// Read a stream from stdin and make it a generation of the project: its first, or its
    /// next (sessions keep theirs). Nothing is committed unless the whole stream verifies.
    Receive {
        #[command(flatten)]
        root: RootArgs,
        #[command(flatten)]
        sizes: SizeArgs,
        /// Project id (the stream's own).
        project: String,
    },
    /// List the projects that have a golden (reads records only).
    List {
        #[command(flatten)]
        root: RootArgs,
    },
    /// Delete a project: its sessions, generations and records. Refused while a session is in
    /// use.
    Delete {
        #[command(flatten)]
        root: RootArgs,
        /// Project id.
        project: String,
    },
}

/// `goldclone session ...`
#[derive(Debug, Clone, Subcommand)]
pub enum SessionCommand {
    /// Give a session its private writable copy of the project's current generation.
    Setup(SetupArgs),
    /// Make a (quiesced) session the project's next generation.
    Promote(PromoteArgs),
    /// Remove a session.
    Cleanup(CleanupArgs),
    /// Show a session: its path, generation, creation time and whether anything holds it.
    Info(SessionArgs),
}

/// A project and a session in a cache.
#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    #[command(flatten)]
    root: RootArgs,
    /// Project id.
    project: String,
    /// Session id.
    session: String,
}

/// `goldclone session setup`
#[derive(Debug, Clone, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// Show the session at this absolute path (made by goldclone; nothing may be there yet)
    /// instead of ROOT/PROJECT/sessions/SESSION.
    #[arg(long, value_name = "PATH")]
    at: Option<PathBuf>,
    /// Return an existing session of this name as it is instead of failing.
    #[arg(long)]
    reuse: bool,
}

/// `goldclone session cleanup`
#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// If something still uses the session, take it from its paths now and leave its tree to
    /// its users; gc removes it once nothing holds it.
    #[arg(long)]
    lazy: bool,
}

/// `goldclone session promote`
#[derive(Debug, Clone, Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// Take the session itself as the generation (it is gone afterwards): a rename on the copy
    /// backend, whatever the tree's size.
    #[arg(long)]
    consume: bool,
    /// A path (relative to the tree's top) to leave out of the new generation; repeatable.
    #[arg(long = "drop", value_name = "PATH")]
    drop: Vec<std::path::PathBuf>,
}

/// `goldclone info`
#[derive(Debug, Clone, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    root: RootArgs,
    /// Project id.
    project: String,
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    outln!("{value:#}")
}

/// Run `goldclone golden ...`.
pub fn golden(cmd: &GoldenCommand) -> Result<()> {
    match cmd {
        GoldenCommand::List { root } => {
            let projects = root.open()?.projects()?;
            if root.json {
                print_json(&serde_json::json!({ "projects": projects }))?;
            } else {
                for p in projects {
                    outln!("{p}")?;
                }
            }
            Ok(())
        }
        GoldenCommand::Delete { root, project } => {
            root.open()?.delete_project(project)?;
            if root.json {
                print_json(&serde_json::json!({ "project": project, "deleted": true }))?;
            } else {
                outln!("project {project} deleted")?;
            }
            Ok(())
        }
        GoldenCommand::Send { root, generation, from, project } => {
            use std::io::IsTerminal;
            if std::io::stdout().is_terminal() {
                return Err(goldclone::Error::InvalidArgument {
                    what: "the stream is binary: redirect stdout to a file or a pipe".into(),
                });
            }
            let cache = root.open()?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            let sent = cache.send(project, *generation, *from, &mut out)?;
            // stdout is the stream: what was sent goes to stderr.
            let summary = serde_json::json!({
                "project": project,
                "generation": sent.generation,
                "id": sent.id,
                "entries": sent.entries,
                "bytes": sent.bytes,
                "stream_bytes": sent.stream_bytes,
            });
            if root.json {
                eprintln!("{summary:#}");
            } else {
                eprintln!(
                    "sent generation {} of {project}: {} entries, {} bytes of data, {} bytes of stream",
                    sent.generation, sent.entries, sent.bytes, sent.stream_bytes
                );
            }
            Ok(())
        }
        GoldenCommand::Receive { root, sizes, project } => {
            let cache = root.open_with(sizes)?;
            let mut input = std::io::BufReader::with_capacity(1 << 20, std::io::stdin().lock());
            let generation = cache.receive(project, &mut input)?;
            if root.json {
                print_json(
                    &serde_json::json!({ "project": project, "generation": generation, "backend": cache.backend() }),
                )?;
            } else {
                outln!(
                    "received project {project} as generation {generation} ({})",
                    cache.backend().name()
                )?;
            }
            Ok(())
        }
        GoldenCommand::Import { root, next, sizes, project, dir } => {
            let cache = root.open_with(sizes)?;
            let generation = if *next {
                cache.import_next(project, dir)?
            } else {
                cache.import(project, dir)?
            };
            if root.json {
                print_json(
                    &serde_json::json!({ "project": project, "generation": generation, "backend": cache.backend() }),
                )?;
            } else {
                outln!(
                    "imported {} as project {project}, generation {generation} ({})",
                    dir.display(),
                    cache.backend().name()
                )?;
            }
            Ok(())
        }
    }
}

/// Run `goldclone session ...`.
pub fn session(cmd: &SessionCommand) -> Result<()> {
    match cmd {
        SessionCommand::Setup(s) => {
            let a = &s.session;
            let opts = goldclone::golden::SetupOptions { at: s.at.clone(), reuse: s.reuse };
            let (path, reused) = a.root.open()?.setup_with_options(
                &a.project,
                &a.session,
                &opts,
                &Default::default(),
            )?;
            if a.root.json {
                print_json(
                    &serde_json::json!({ "project": a.project, "session": a.session, "path": path, "reused": reused }),
                )?;
            } else {
                outln!("{}", path.display())?;
            }
        }
        SessionCommand::Promote(p) => {
            let a = &p.session;
            let opts = goldclone::golden::PromoteOptions {
                consume: p.consume,
                drop: p.drop.clone(),
                edit: None,
            };
            let generation = a.root.open()?.promote_with_options(
                &a.project,
                &a.session,
                &opts,
                &Default::default(),
            )?;
            if a.root.json {
                print_json(
                    &serde_json::json!({ "project": a.project, "session": a.session, "generation": generation }),
                )?;
            } else {
                outln!("session {} is now generation {generation} of {}", a.session, a.project)?;
            }
        }
        SessionCommand::Info(a) => {
            let info = a.root.open()?.session_info(&a.project, &a.session)?;
            if a.root.json {
                print_json(&serde_json::to_value(&info).unwrap_or_default())?;
            } else {
                outln!("session {} of {}", info.session, info.project)?;
                let shown = if info.attached { "" } else { " (not shown there now)" };
                outln!("  path:        {}{shown}", info.path.display())?;
                outln!("  generation:  {}", info.generation)?;
                outln!("  created at:  {} (unix seconds)", info.created_at)?;
                if info.holders.is_empty() {
                    outln!("  in use:      no")?;
                } else {
                    outln!("  in use by:   {}", info.holders.join("; "))?;
                }
            }
        }
        SessionCommand::Cleanup(c) => {
            let a = &c.session;
            let opts = goldclone::golden::CleanupOptions { lazy: c.lazy };
            let cleaned = a.root.open()?.cleanup_with_options(&a.project, &a.session, &opts)?;
            let holders = match &cleaned {
                goldclone::golden::Cleaned::Removed => None,
                goldclone::golden::Cleaned::Detached { holders } => Some(holders),
            };
            if a.root.json {
                print_json(
                    &serde_json::json!({ "project": a.project, "session": a.session, "removed": holders.is_none(), "detached_from": holders }),
                )?;
            } else if let Some(h) = holders {
                outln!(
                    "detached session {} of {} (in use by {}); gc removes it once free",
                    a.session,
                    a.project,
                    h.join("; ")
                )?;
            } else {
                outln!("removed session {} of {}", a.session, a.project)?;
            }
        }
    }
    Ok(())
}

/// Run `goldclone gc`; `Ok(false)` when something could not be done (exit status 2).
pub fn gc(root: &RootArgs) -> Result<bool> {
    let report = root.open()?.gc()?;
    if root.json {
        print_json(&serde_json::to_value(&report).at("serialize", "<stdout>")?)?;
    } else if report.is_empty() {
        outln!("nothing to collect")?;
    } else {
        for (label, items) in [
            ("recovered", &report.recovered),
            ("removed", &report.removed),
            ("kept", &report.kept),
            ("failed", &report.failed),
        ] {
            for r in items {
                outln!("{label} {r}")?;
            }
        }
    }
    Ok(report.failed.is_empty())
}

/// Run `goldclone info`.
pub fn info(a: &InfoArgs) -> Result<()> {
    let info = a.root.open()?.info(&a.project)?;
    if a.root.json {
        print_json(&serde_json::to_value(&info).at("serialize", "<stdout>")?)?;
    } else {
        outln!("project:     {}", info.project)?;
        outln!("generation:  {}", info.generation)?;
        outln!("created_at:  {}", info.created_at)?;
        outln!("from:        {}", info.source_session.as_deref().unwrap_or("(imported)"))?;
        outln!("backend:     {:?}", info.backend)?;
        outln!("size:        {} bytes", info.size_bytes)?;
        for (s, g) in &info.sessions {
            outln!("session:     {s} (generation {g})")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("16g"), Ok(16 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("8K"), Ok(8192));
        for bad in ["", "0", "M", "12X", "-1G", "1.5G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
    }
}
