//! `goldclone copy`, `goldclone cleanup` and `goldclone verify`: the tree-copy backend by hand.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use goldclone::copy::{self, CancelToken, CopyOptions, CopyStats, Progress};
use goldclone::treediff::{self, CompareOptions};
use goldclone::{Context, Result};

/// Arguments of `goldclone copy`.
#[derive(Debug, Clone, Args)]
pub struct CopyArgs {
    /// Source directory (the golden tree).
    pub src: PathBuf,
    /// Destination; must not exist, its parent must.
    pub dst: PathBuf,
    /// Worker threads (default 0: one per CPU while the source is read from memory, twice that,
    /// 4 to 32, while it is read from storage).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// syncfs the destination before renaming it into place.
    #[arg(long)]
    pub sync: bool,
    /// Write files smaller than this many bytes instead of reflinking them (less CPU per file on
    /// XFS, but not shared with the source; see BENCHMARKS.md).
    #[arg(long, default_value_t = 0)]
    pub clone_min_size: u64,
    /// Print the statistics as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub quiet: bool,
}

/// Run `goldclone copy`.
pub fn run(args: &CopyArgs) -> Result<()> {
    let progress = Progress::new();
    let cancel = CancelToken::new();
    install_interrupt_handler(&cancel);
    let show_bar = !args.quiet && !args.json && std::io::stderr().is_terminal();
    let opts = CopyOptions {
        threads: args.threads,
        progress: Some(progress.clone()),
        cancel: Some(cancel),
        sync: args.sync,
        count_totals: show_bar,
        clone_min_size: args.clone_min_size,
    };
    let stats =
        with_progress_bar(show_bar, &progress, || copy::copy_tree(&args.src, &args.dst, &opts))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&stats).at("serialize", "<stdout>")?)?;
    } else {
        print_stats(&stats)?;
    }
    Ok(())
}

/// Human summary of a finished copy.
pub fn print_stats(s: &CopyStats) -> goldclone::Result<()> {
    outln!(
        "copied {} entries ({} files, {} dirs, {} symlinks, {} special, {} hardlinks), {:.1} MiB in {:.3} s with up to {} threads",
        s.entries,
        s.files,
        s.dirs,
        s.symlinks,
        s.specials,
        s.hardlinks,
        s.bytes as f64 / (1 << 20) as f64,
        s.elapsed().as_secs_f64(),
        s.threads
    )?;
    outln!(
        "file data: {} reflinked, {} copy_file_range, {} sparse, {} read/write (main method: {})",
        s.cloned,
        s.copy_file_range,
        s.sparse,
        s.read_write,
        s.main_method()
    )
}

/// Run `work` while a bar on stderr shows entries and bytes (totals once known).
pub fn with_progress_bar<T>(show: bool, progress: &Progress, work: impl FnOnce() -> T + Send) -> T
where
    T: Send,
{
    if !show {
        return work();
    }
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {msg}",
                )
                .expect("a valid progress template"),
            );
            while !done.load(Ordering::Relaxed) {
                let (entries, bytes) = (progress.entries(), progress.bytes());
                match progress.totals() {
                    Some((te, tb)) => {
                        bar.set_length(te.max(1));
                        bar.set_position(entries.min(te));
                        bar.set_message(format!(
                            "{entries}/{te} entries, {}/{} MiB",
                            bytes >> 20,
                            tb >> 20
                        ));
                    }
                    None => bar.set_message(format!("{entries} entries, {} MiB", bytes >> 20)),
                }
                bar.tick();
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        let out = work();
        done.store(true, Ordering::Relaxed);
        out
    })
}

/// Ctrl-C (or SIGTERM) cancels the copy, which then removes its staging directory, instead of
/// killing it half-way; a second one quits at once.
fn install_interrupt_handler(cancel: &CancelToken) {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    // Block the signals in this thread (and so in every thread spawned later); a watcher thread
    // takes them synchronously with sigwait, so no async-signal-safety concerns.
    if sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
        return;
    }
    let cancel = cancel.clone();
    let watcher = std::thread::Builder::new().name("goldclone-signals".into()).spawn(move || {
        // The signals stay blocked in every thread, so this thread must take the second one too:
        // it ends the process at once (the staging directory stays for `goldclone cleanup`).
        if set.wait().is_ok() {
            errln!("goldclone: interrupted, removing the partial copy (again to quit at once)");
            cancel.cancel();
        }
        if let Ok(signal) = set.wait() {
            errln!(
                "goldclone: {signal:?} again, quitting; `goldclone cleanup` removes the leftover"
            );
            std::process::exit(128 + signal as i32);
        }
    });
    if watcher.is_err() {
        // No thread to take them (a thread limit): Ctrl-C kills the copy as it would `cp`, and
        // `goldclone cleanup` removes what it leaves.
        let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    }
}

/// Arguments of `goldclone cleanup`.
#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// Directory whose leftover staging directories (from killed copies) to remove.
    pub dir: PathBuf,
    /// Print the removed paths as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `goldclone cleanup`.
pub fn cleanup(args: &CleanupArgs) -> Result<()> {
    let removed = copy::cleanup_staging(&args.dir)?;
    if args.json {
        let list: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
        outln!("{}", serde_json::json!({ "removed": list }))?;
    } else if removed.is_empty() {
        outln!("no leftover staging directories in {}", args.dir.display())?;
    } else {
        for p in &removed {
            outln!("removed {}", p.display())?;
        }
    }
    Ok(())
}

/// Arguments of `goldclone verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Tree A (the original).
    pub a: PathBuf,
    /// Tree B (the copy).
    pub b: PathBuf,
    /// Skip the byte-by-byte content comparison.
    #[arg(long)]
    pub no_content: bool,
}

/// Run `goldclone verify`: exit status 0 only when the trees are the same.
pub fn verify(args: &VerifyArgs) -> Result<bool> {
    let opts = CompareOptions { content: !args.no_content, ..CompareOptions::default() };
    let diffs = treediff::compare(&args.a, &args.b, &opts)?;
    for d in &diffs {
        outln!("{d}")?;
    }
    outln!("{} difference(s)", diffs.len())?;
    Ok(diffs.is_empty())
}
