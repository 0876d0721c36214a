//! `goldclone demo`: build a sample docker-like tree, copy it the best way the filesystem allows,
//! check the copy, and time it next to `cp -a`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::Args;
use goldclone::copy::{self, CopyOptions};
use goldclone::detect;
use goldclone::fixture::{self, FixtureSpec};
use goldclone::treediff::{self, CompareOptions};
use goldclone::{Context, Error, Result};

/// Arguments of `goldclone demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where to build the sample tree (default: a new directory under $TMPDIR). The filesystem of
    /// this directory decides the method.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the trees afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// Run the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    let work = base.join(format!("goldclone-demo-{}", std::process::id()));
    std::fs::create_dir(&work).at("mkdir", &work)?;
    let result = demo_in(&work);
    if !args.keep {
        copy::remove_tree(&work)?;
    } else {
        outln!("kept {}", work.display())?;
    }
    result
}

fn demo_in(work: &Path) -> Result<()> {
    let golden = work.join("golden");
    let spec = FixtureSpec::demo();
    let t = Instant::now();
    let built = fixture::build(&golden, &spec)?;
    outln!(
        "built a docker-like sample tree: {} entries ({} files, {} MiB) in {:.2} s",
        built.entries,
        built.files,
        built.bytes >> 20,
        t.elapsed().as_secs_f64()
    )?;

    let found = detect::detect(work)?;
    outln!(
        "{} is on {} ({}): backend {}",
        work.display(),
        found.mount.mount_point.display(),
        found.mount.fs_type,
        found.backend.kind()
    )?;

    let ours = work.join("session-goldclone");
    let stats = copy::copy_tree(&golden, &ours, &CopyOptions::default())?;
    // Compare before `cp` runs: cp reads without O_NOATIME and so moves the source's atimes.
    let diffs = treediff::compare(&golden, &ours, &CompareOptions::default())?;
    let cp_dst = work.join("session-cp");
    let t = Instant::now();
    let status = Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(&golden)
        .arg(&cp_dst)
        .status()
        .at("spawn cp", "cp")?;
    let cp_secs = t.elapsed().as_secs_f64();
    if !status.success() {
        return Err(Error::io(
            "cp -a",
            &cp_dst,
            std::io::Error::other(format!("cp exited with {status}")),
        ));
    }

    let vs_cp = treediff::compare(&cp_dst, &ours, &CompareOptions::default())?;
    let ours_secs = stats.elapsed().as_secs_f64();
    outln!(
        "goldclone copy: {:.3} s ({} entries, file data by {}, up to {} threads)",
        ours_secs,
        stats.entries,
        stats.main_method(),
        stats.threads
    )?;
    outln!("cp -a --reflink=auto: {cp_secs:.3} s")?;
    outln!("speed-up: {:.2}x", cp_secs / ours_secs.max(1e-9))?;
    outln!(
        "verification: {} difference(s) from the source, {} from cp -a's copy",
        diffs.len(),
        vs_cp.len()
    )?;
    for d in diffs.iter().chain(vs_cp.iter()).take(20) {
        outln!("  {d}")?;
    }
    if !diffs.is_empty() {
        return Err(Error::Unsupported {
            what: format!("the copy differs from its source in {} place(s)", diffs.len()),
        });
    }
    Ok(())
}
