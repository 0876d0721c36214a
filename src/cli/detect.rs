//! `goldclone detect PATH [--json]`: what backs a path and which backend would copy it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use goldclone::detect::{detect, Backend, Detection};
use goldclone::Context;

/// Arguments of `goldclone detect`.
#[derive(Debug, Clone, Args)]
pub struct DetectArgs {
    /// The path to inspect (must exist; symlinks are followed).
    pub path: PathBuf,
    /// Print the detection as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Run `goldclone detect`: print the detection of `args.path` to stdout.
pub fn run(args: &DetectArgs) -> goldclone::Result<()> {
    let d = detect(&args.path)?;
    let out = render(&d, args.json)?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()).at("write", "<stdout>")
}

/// Format a detection: pretty JSON (one trailing newline) or an aligned two-column table.
pub fn render(d: &Detection, json: bool) -> goldclone::Result<String> {
    if json {
        let mut s = serde_json::to_string_pretty(d).at("serialize", &d.path)?;
        s.push('\n');
        return Ok(s);
    }
    let m = &d.mount;
    let rows: [(&str, String); 11] = [
        ("path", show(&d.path)),
        ("backend", backend_line(&d.backend)),
        (
            "reflink",
            match d.reflink {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "unknown (could not probe)".into(),
            },
        ),
        (
            "image backend",
            match &d.image_backend {
                None => "yes (sessions as reflinked XFS images on loop devices)".into(),
                Some(why) => format!("no: {why}"),
            },
        ),
        ("filesystem", m.fs_type.clone()),
        ("source", escape(&m.source)),
        ("mount point", show(&m.mount_point)),
        ("mount root", show(&m.root)),
        (
            "mount id",
            format!("{} (parent {}, device {}:{})", m.mount_id, m.parent_id, m.major, m.minor),
        ),
        ("mount options", m.mount_options.clone()),
        ("super options", escape(&m.super_options)),
    ];
    let mut s = String::new();
    for (k, v) in rows {
        // Writing to a String cannot fail.
        let _ = writeln!(s, "{k:<14}{v}");
    }
    Ok(s)
}

fn backend_line(b: &Backend) -> String {
    match b {
        Backend::ZfsDataset { dataset, pool } => {
            format!("zfs_dataset: ZFS dataset {} (pool {})", escape(dataset), escape(pool))
        }
        Backend::Zvol { device, dataset, pool, fs_type } => format!(
            "zvol: {} on ZFS volume {} (pool {}), device {}",
            fs_type,
            escape(dataset),
            escape(pool),
            show(device)
        ),
        Backend::Btrfs { subvolume: true, subvolume_id } => {
            format!("btrfs: subvolume {subvolume_id} (the path is its root; can be snapshotted)")
        }
        Backend::Btrfs { subvolume: false, subvolume_id } => {
            format!("btrfs: inside subvolume {subvolume_id} (the path is not a subvolume root)")
        }
        Backend::Reflink { fs_type } => {
            format!("reflink: {fs_type} with FICLONE (a cache uses the image backend where it can run, else the reflink tree copy)")
        }
        Backend::Plain { fs_type } => format!(
            "plain: {fs_type} (byte copy; a cache uses the image backend, images copied \
             sparsely, where it can run, else the tree copy)"
        ),
    }
}

/// A path for a one-line table cell: lossy UTF-8, control characters escaped.
fn show(p: &Path) -> String {
    escape(&p.to_string_lossy())
}

fn escape(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars().flat_map(char::escape_default).collect()
    } else {
        s.to_owned()
    }
}
