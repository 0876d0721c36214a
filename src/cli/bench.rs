//! `goldclone bench copy`: goldclone's tree copy against `cp -a --reflink` and against the
//! per-layer parallel `cp -a` the service runs today, in one run, as medians and ratios.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use goldclone::copy::{self, CopyOptions};
use goldclone::fixture::{self, FixtureSpec};
use goldclone::treediff::{self, CompareOptions};
use goldclone::{detect, Context, Error, Result};

/// `goldclone bench ...`
#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Tree copy vs `cp -a --reflink` and vs per-layer parallel `cp -a`.
    Copy(BenchCopyArgs),
    /// libzfs_core in process vs the `zfs` CLI: snapshot, session ready, destroy, 16 at once.
    Zfs(super::zfs::BenchZfsArgs),
    /// Lifecycle setups on a cache: one alone vs N at once (shared transaction groups on ZFS).
    Lifecycle(BenchLifecycleArgs),
    /// Promote against tree size: copying, consuming the session, and `cp -a` + sync; setup
    /// with and without progress.
    Promote(BenchPromoteArgs),
    /// Send a generation and receive it into another cache, against `tar` over the same file.
    Send(BenchSendArgs),
}

/// Arguments of `goldclone bench send`.
#[derive(Debug, Clone, Args)]
pub struct BenchSendArgs {
    /// The sending cache's root (its backend detected, or forced with --backend).
    #[arg(long)]
    pub root: PathBuf,
    /// Force the sender's backend.
    #[arg(long, value_enum)]
    pub backend: Option<goldclone::golden::BackendKind>,
    /// The receiving cache's root (another cache than the sender's).
    #[arg(long)]
    pub to: PathBuf,
    /// Force the receiver's backend.
    #[arg(long, value_enum)]
    pub to_backend: Option<goldclone::golden::BackendKind>,
    /// Where the stream (and tar's archive) is written: a directory.
    #[arg(long, default_value = "/var/tmp")]
    pub stream_dir: PathBuf,
    /// Entries in the sample tree (the copy benchmark's).
    #[arg(long, default_value_t = 100_000)]
    pub entries: usize,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// Arguments of `goldclone bench promote`.
#[derive(Debug, Clone, Args)]
pub struct BenchPromoteArgs {
    /// The cache root (its backend is detected, or forced with --backend). The `cp -a`
    /// baseline copies into a directory beside it, on the same filesystem.
    #[arg(long)]
    pub root: PathBuf,
    /// Force a backend.
    #[arg(long, value_enum)]
    pub backend: Option<goldclone::golden::BackendKind>,
    /// Tree sizes (entries), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2000,20000,100000")]
    pub entries: Vec<usize>,
    /// Rounds per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

/// Arguments of `goldclone bench lifecycle`.
#[derive(Debug, Clone, Args)]
pub struct BenchLifecycleArgs {
    /// The cache root (its backend is detected, or forced with --backend).
    #[arg(long)]
    pub root: PathBuf,
    /// Force a backend.
    #[arg(long, value_enum)]
    pub backend: Option<goldclone::golden::BackendKind>,
    /// Sessions set up at once.
    #[arg(long, default_value_t = 16)]
    pub sessions: usize,
    /// Rounds (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Entries in the imported sample tree.
    #[arg(long, default_value_t = 2000)]
    pub entries: usize,
    /// The copy benchmark's sample tree (12 layers, about 6 KB per entry: 772,000 entries hold
    /// about 4.5 GB; at least 100,000 entries) instead of the demo's (about 29 KB per entry).
    #[arg(long)]
    pub bench_tree: bool,
}

/// Arguments of `goldclone bench copy`.
#[derive(Debug, Clone, Args)]
pub struct BenchCopyArgs {
    /// Directory on the filesystem to measure; the sample tree is built (once) inside it.
    #[arg(long)]
    pub dir: PathBuf,
    /// Entries in the sample tree.
    #[arg(long, default_value_t = 100_000)]
    pub entries: usize,
    /// Timed runs of each method (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// goldclone worker threads (0 = default).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Concurrent `cp -a` processes of the per-layer baseline.
    #[arg(long, default_value_t = 8)]
    pub cp_jobs: usize,
    /// Also time goldclone writing files smaller than this many bytes instead of reflinking
    /// them (0: only the default, which reflinks every file).
    #[arg(long, default_value_t = 0)]
    pub clone_min_size: u64,
    /// Drop the page cache before every timed run (cold cache).
    #[arg(long)]
    pub cold: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run a bench subcommand.
pub fn run(cmd: &BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Copy(args) => bench_copy(args),
        BenchCommand::Zfs(args) => super::zfs::bench_zfs(args.clone()),
        BenchCommand::Lifecycle(args) => bench_lifecycle(args),
        BenchCommand::Promote(args) => bench_promote(args),
        BenchCommand::Send(args) => bench_send(args),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Goldclone,
    GoldcloneSmallWritten,
    CpReflink,
    CpPerLayer,
}

impl Method {
    fn label(self, reflink: bool) -> &'static str {
        match (self, reflink) {
            (Method::Goldclone, _) => "goldclone copy",
            (Method::GoldcloneSmallWritten, _) => "goldclone copy --clone-min-size",
            (Method::CpReflink, true) => "cp -a --reflink=always",
            (Method::CpReflink, false) => "cp -a (--reflink=auto)",
            (Method::CpPerLayer, _) => "per-layer parallel cp -a",
        }
    }
}

fn bench_copy(args: &BenchCopyArgs) -> Result<()> {
    if args.runs == 0 {
        return Err(Error::InvalidArgument { what: "--runs must be at least 1".into() });
    }
    let src = args.dir.join(format!("bench-src-{}", args.entries));
    if !src.exists() {
        let t = Instant::now();
        let built = fixture::build(&src, &FixtureSpec::bench(args.entries))?;
        errln!(
            "built {} entries ({} files, {} MiB) in {:.1} s",
            built.entries,
            built.files,
            built.bytes >> 20,
            t.elapsed().as_secs_f64()
        );
    }
    let found = detect::detect(&args.dir)?;
    let reflink = detect::reflink_supported(&args.dir)?.unwrap_or(false);
    errln!(
        "{}: {} ({}), reflink {}",
        args.dir.display(),
        found.mount.fs_type,
        found.backend.kind(),
        reflink
    );

    // Correctness first, untimed: the copy must equal its source.
    let check = args.dir.join("bench-check");
    copy::remove_tree(&check)?;
    copy::copy_tree(&src, &check, &CopyOptions { threads: args.threads, ..Default::default() })?;
    let diffs = treediff::compare(&src, &check, &CompareOptions::default())?;
    copy::remove_tree(&check)?;
    if !diffs.is_empty() {
        return Err(Error::Unsupported { what: format!("copy differs from source: {}", diffs[0]) });
    }

    let mut methods = vec![Method::Goldclone, Method::CpReflink, Method::CpPerLayer];
    if args.clone_min_size > 0 {
        methods.insert(1, Method::GoldcloneSmallWritten);
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); methods.len()];
    for run in 0..args.runs {
        // Rotate the order so no method always runs right after the same other one.
        for k in 0..methods.len() {
            let i = (run + k) % methods.len();
            let dst = args.dir.join(format!("bench-dst-{i}"));
            copy::remove_tree(&dst)?;
            settle(args.cold);
            let t = Instant::now();
            match methods[i] {
                Method::Goldclone => {
                    copy::copy_tree(
                        &src,
                        &dst,
                        &CopyOptions { threads: args.threads, ..Default::default() },
                    )?;
                }
                Method::GoldcloneSmallWritten => {
                    let opts = CopyOptions {
                        threads: args.threads,
                        clone_min_size: args.clone_min_size,
                        ..Default::default()
                    };
                    copy::copy_tree(&src, &dst, &opts)?;
                }
                Method::CpReflink => {
                    let flag = if reflink { "--reflink=always" } else { "--reflink=auto" };
                    run_cp(&[flag], &src, &dst)?;
                }
                Method::CpPerLayer => per_layer_cp(&src, &dst, args.cp_jobs)?,
            }
            times[i].push(t.elapsed());
            errln!(
                "run {}/{}: {:<26} {:.3} s",
                run + 1,
                args.runs,
                methods[i].label(reflink),
                t.elapsed().as_secs_f64()
            );
            copy::remove_tree(&dst)?;
        }
    }
    let medians: Vec<f64> = times.iter().map(|t| median(t)).collect();
    let ours = medians[0];
    if args.json {
        let rows: Vec<_> = methods
            .iter()
            .zip(&medians)
            .zip(&times)
            .map(|((m, med), all)| {
                serde_json::json!({
                    "method": m.label(reflink),
                    "median_s": med,
                    "runs_s": all.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
                    "ratio_vs_goldclone": med / ours,
                })
            })
            .collect();
        let out = serde_json::json!({
            "fs_type": found.mount.fs_type, "reflink": reflink, "entries": args.entries,
            "runs": args.runs, "cold_cache": args.cold, "methods": rows,
        });
        outln!("{out:#}")?;
    } else {
        outln!(
            "| filesystem | method | median (s) | runs (s) | goldclone speed-up |\n|---|---|---|---|---|"
        )?;
        for ((m, med), all) in methods.iter().zip(&medians).zip(&times) {
            let runs: Vec<String> = all.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect();
            outln!(
                "| {} | {} | {:.3} | {} | {:.2}x |",
                found.mount.fs_type,
                m.label(reflink),
                med,
                runs.join(" "),
                med / ours
            )?;
        }
    }
    Ok(())
}

/// One setup alone vs `sessions` at once, each round on a fresh set of session names; sessions
/// are cleaned up between rounds (untimed).
fn bench_lifecycle(args: &BenchLifecycleArgs) -> Result<()> {
    use goldclone::golden::{Cache, OpenOptions};
    if args.rounds == 0 || args.sessions == 0 {
        return Err(Error::InvalidArgument {
            what: "--rounds and --sessions must be at least 1".into(),
        });
    }
    let backend = args.backend;
    let cache = Cache::open(&args.root, &OpenOptions { backend, ..OpenOptions::default() })?;
    let project = format!("bench-{}", std::process::id());
    let sample =
        std::env::temp_dir().join(format!("goldclone-bench-sample-{}", std::process::id()));
    let spec = if args.bench_tree {
        FixtureSpec::bench(args.entries)
    } else {
        let demo = FixtureSpec { files_per_dir: 20, ..FixtureSpec::demo() };
        FixtureSpec { layers: (args.entries / 400).max(1), ..demo }
    };
    let built = fixture::build(&sample, &spec)?;
    errln!("sample tree: {} entries, {} bytes", built.entries, built.bytes);
    let t = Instant::now();
    cache.import(&project, &sample)?;
    errln!("import: {:.1} s", t.elapsed().as_secs_f64());
    copy::remove_tree(&sample)?;
    // `each`: every setup's own time among the ones at once (session ready under load).
    let (mut alone, mut crowd, mut each) = (Vec::new(), Vec::new(), Vec::new());
    // Machine-wide CPU time busy during each batch (kernel workers included), and all of it.
    let mut busy: Vec<(f64, f64)> = Vec::new();
    for round in 0..args.rounds {
        let t = Instant::now();
        cache.setup(&project, &format!("a{round}"))?;
        alone.push(t.elapsed());
        cache.cleanup(&project, &format!("a{round}"))?;
        let cpu_before = cpu_busy_and_total();
        let t = Instant::now();
        let results: Vec<(Result<PathBuf>, Duration)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..args.sessions)
                .map(|i| {
                    let (cache, project) = (&cache, &project);
                    scope.spawn(move || {
                        let t = Instant::now();
                        (cache.setup(project, &format!("c{round}-{i}")), t.elapsed())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("setup thread")).collect()
        });
        crowd.push(t.elapsed());
        if let (Some(a), Some(b)) = (cpu_before, cpu_busy_and_total()) {
            busy.push((b.0.saturating_sub(a.0) as f64, b.1.saturating_sub(a.1) as f64));
        }
        for (r, took) in results {
            r?;
            each.push(took);
        }
        for i in 0..args.sessions {
            cache.cleanup(&project, &format!("c{round}-{i}"))?;
        }
        errln!(
            "round {}: one setup {:.3} s, {} at once {:.3} s",
            round + 1,
            alone[round].as_secs_f64(),
            args.sessions,
            crowd[round].as_secs_f64()
        );
    }
    let (one, many) = (median(&alone), median(&crowd));
    outln!("backend {:?}, {} rounds, medians:", cache.backend(), args.rounds)?;
    outln!("  one setup alone:          {one:.3} s (slowest {:.3} s)", percentile(&alone, 100.0))?;
    outln!(
        "  {} setups at once:        {many:.3} s ({:.2}x the time of one, {:.3} s per session)",
        args.sessions,
        many / one,
        many / args.sessions as f64
    )?;
    outln!(
        "  each setup among them:    p50 {:.3} s, p99 {:.3} s ({} setups)",
        percentile(&each, 50.0),
        percentile(&each, 99.0),
        each.len()
    )?;
    let (used, all) = busy.iter().fold((0.0, 0.0), |(u, a), (bu, ba)| (u + bu, a + ba));
    if all > 0.0 {
        outln!(
            "  CPUs busy during batches: {:.0}% ({:.1} ms of CPU per setup, kernel workers \
             included)",
            100.0 * used / all,
            1000.0 * used / CLOCK_TICKS / (args.sessions * busy.len()) as f64
        )?;
    }
    cache.gc()?;
    Ok(())
}

/// Per tree size: a promote that copies the session, one that consumes it, and the service's
/// way today (`cp -a --reflink=auto` of the session into a new directory, then `sync -f`), all
/// of a session whose files were rewritten; and a setup with and without progress reports.
fn bench_promote(args: &BenchPromoteArgs) -> Result<()> {
    use goldclone::copy::{CancelToken, Progress};
    use goldclone::golden::{Cache, OpenOptions, PromoteOptions, Watch};
    if args.rounds == 0 || args.entries.is_empty() {
        return Err(Error::InvalidArgument { what: "--rounds and --entries must be given".into() });
    }
    let cache =
        Cache::open(&args.root, &OpenOptions { backend: args.backend, ..OpenOptions::default() })?;
    let beside = args.root.with_file_name(format!(".goldclone-bench-cp-{}", std::process::id()));
    let mut rows: Vec<(u64, u64, [f64; 4], [f64; 2])> = Vec::new();
    for &entries in &args.entries {
        let project = format!("bench-promote-{}-{entries}", std::process::id());
        let sample =
            args.root.with_file_name(format!(".goldclone-bench-src-{}", std::process::id()));
        let spec = FixtureSpec { files_per_dir: 20, ..FixtureSpec::demo() };
        let built =
            fixture::build(&sample, &FixtureSpec { layers: (entries / 1200).max(1), ..spec })?;
        cache.import(&project, &sample)?;
        copy::remove_tree(&sample)?;
        let (mut copied, mut consumed, mut reclaimed, mut cp) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut setup, mut watched) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            let edited = |name: &str| -> Result<PathBuf> {
                let s = cache.setup(&project, name)?;
                std::fs::write(s.join(format!("round-{round}")), "x").at("write", &s)?;
                settle(false);
                Ok(s)
            };
            edited("copied")?;
            let t = Instant::now();
            cache.promote(&project, "copied")?;
            copied.push(t.elapsed());
            cache.cleanup(&project, "copied")?;

            // As in the service: other sessions still run on the previous generation.
            cache.setup(&project, "bystander")?;
            edited("consumed")?;
            let opts = PromoteOptions { consume: true, ..PromoteOptions::default() };
            let t = Instant::now();
            cache.promote_with_options(&project, "consumed", &opts, &Watch::default())?;
            consumed.push(t.elapsed());
            cache.cleanup(&project, "bystander")?;
            // The consumed session was the previous generation's last: the call removes it too.
            edited("last")?;
            let t = Instant::now();
            cache.promote_with_options(&project, "last", &opts, &Watch::default())?;
            reclaimed.push(t.elapsed());

            let s2 = edited("baseline")?;
            let t = Instant::now();
            let status = cp_command(&["--reflink=auto"], &s2, &beside).status().at("cp", &s2)?;
            let synced =
                Command::new("sync").arg("-f").arg(&beside).status().at("sync", &beside)?;
            cp.push(t.elapsed());
            if !status.success() || !synced.success() {
                return Err(Error::InvalidArgument {
                    what: format!("cp -a {} failed", s2.display()),
                });
            }
            copy::remove_tree(&beside)?;
            cache.cleanup(&project, "baseline")?;

            settle(false);
            let t = Instant::now();
            cache.setup(&project, "plain")?;
            setup.push(t.elapsed());
            cache.cleanup(&project, "plain")?;
            settle(false);
            let progress = Progress::new();
            let watch =
                Watch { progress: Some(progress.clone()), cancel: Some(CancelToken::new()) };
            let t = Instant::now();
            cache.setup_with(&project, "watched", &watch)?;
            watched.push(t.elapsed());
            cache.cleanup(&project, "watched")?;
            errln!(
                "{entries} entries, round {}: promote copying {:.3} s, consuming {:.3} s (reclaiming the old generation {:.3} s), cp -a + sync {:.3} s; setup {:.3} s, with progress {:.3} s ({} entries reported)",
                round + 1,
                copied[round].as_secs_f64(),
                consumed[round].as_secs_f64(),
                reclaimed[round].as_secs_f64(),
                cp[round].as_secs_f64(),
                setup[round].as_secs_f64(),
                watched[round].as_secs_f64(),
                progress.entries()
            );
        }
        rows.push((
            built.entries,
            built.bytes,
            [median(&copied), median(&consumed), median(&reclaimed), median(&cp)],
            [median(&setup), median(&watched)],
        ));
        cache.gc()?;
    }
    outln!("backend {:?}, {} rounds, medians:", cache.backend(), args.rounds)?;
    outln!(
        "| entries | MB | promote, copying (s) | promote, consuming (s) | consuming, old generation \
         removed in the call (s) | `cp -a --reflink=auto` + `sync -f` (s) | cp / consuming | setup \
         (s) | setup with progress (s) |"
    )?;
    outln!("|---|---|---|---|---|---|---|---|---|")?;
    for (entries, bytes, [copied, consumed, reclaimed, cp], [setup, watched]) in rows {
        outln!(
            "| {entries} | {:.0} | {copied:.3} | **{consumed:.4}** | {reclaimed:.3} | {cp:.3} | \
             **{:.0}x** | {setup:.3} | {watched:.3} |",
            bytes as f64 / 1e6,
            cp / consumed
        )?;
    }
    Ok(())
}

/// USER_HZ, the unit of /proc/stat (100 on every Linux architecture goldclone builds for).
const CLOCK_TICKS: f64 = 100.0;

/// Machine-wide (busy, total) CPU time from /proc/stat's first line, in ticks: busy is
/// everything but idle and iowait.
fn cpu_busy_and_total() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total - idle, total))
}

/// The `p`th percentile (nearest rank) of `samples`, in seconds.
fn percentile(samples: &[Duration], p: f64) -> f64 {
    let mut s: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s.get(rank.clamp(1, s.len().max(1)) - 1).copied().unwrap_or(0.0)
}

fn median(samples: &[Duration]) -> f64 {
    let mut s: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Write back dirty data from the previous run so it is not billed to the next one; optionally
/// drop the page cache too.
fn settle(cold: bool) {
    nix::unistd::sync();
    if cold {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3\n");
    }
}

fn cp_command(flags: &[&str], src: &Path, dst: &Path) -> Command {
    let mut cmd = Command::new("cp");
    cmd.arg("-a").args(flags).arg(src).arg(dst);
    cmd
}

fn wait_ok(mut child: Child, what: &Path) -> Result<()> {
    let status = child.wait().at("wait cp", what)?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::io("cp -a", what, std::io::Error::other(format!("cp exited with {status}"))))
    }
}

fn run_cp(flags: &[&str], src: &Path, dst: &Path) -> Result<()> {
    let child = cp_command(flags, src, dst).spawn().at("spawn cp", dst)?;
    wait_ok(child, dst)
}

/// The service's copy today: one `cp -a --reflink=auto` per top-level entry and per
/// `overlay2/` child, `jobs` at a time.
fn per_layer_cp(src: &Path, dst: &Path, jobs: usize) -> Result<()> {
    let mut work: Vec<(PathBuf, PathBuf)> = Vec::new();
    std::fs::create_dir(dst).at("mkdir", dst)?;
    for entry in std::fs::read_dir(src).at("readdir", src)? {
        let entry = entry.at("readdir", src)?;
        if entry.file_name() == "overlay2" && entry.path().is_dir() {
            let layers = dst.join("overlay2");
            std::fs::create_dir(&layers).at("mkdir", &layers)?;
            for layer in std::fs::read_dir(entry.path()).at_with("readdir", || entry.path())? {
                let layer = layer.at_with("readdir", || entry.path())?;
                work.push((layer.path(), layers.join(layer.file_name())));
            }
        } else {
            work.push((entry.path(), dst.join(entry.file_name())));
        }
    }
    let mut running: Vec<(Child, PathBuf)> = Vec::new();
    for (from, to) in work {
        if running.len() >= jobs.max(1) {
            let (child, path) = running.remove(0);
            wait_ok(child, &path)?;
        }
        let child = cp_command(&["--reflink=auto"], &from, &to).spawn().at("spawn cp", &to)?;
        running.push((child, to));
    }
    for (child, path) in running {
        wait_ok(child, &path)?;
    }
    Ok(())
}

/// `goldclone bench send`: a full send of a generation to a file and its receive into another
/// cache, against `tar` with xattrs and ACLs writing the same tree (read through a session of
/// the generation, as the sender reads it) to a file and unpacking it beside the receiving
/// cache, synced as a receive commits (the usual way to ship a tree); then an increment of 1%
/// of the files. Page caches are dropped before every timed step; sizes and medians.
fn bench_send(args: &BenchSendArgs) -> Result<()> {
    use goldclone::golden::{Cache, OpenOptions};
    if args.rounds == 0 {
        return Err(Error::InvalidArgument { what: "--rounds must be at least 1".into() });
    }
    let open = |root: &Path, backend| {
        Cache::open(root, &OpenOptions { backend, ..OpenOptions::default() })
    };
    let to = args.to.clone();
    if to.canonicalize().ok() == args.root.canonicalize().ok() {
        return Err(Error::InvalidArgument {
            what: "--to must be another cache than --root".into(),
        });
    }
    let sender = open(&args.root, args.backend)?;
    let receiver = open(&to, args.to_backend)?;
    let id = std::process::id();
    let project = format!("bench-send-{id}");
    let sample = args.root.with_file_name(format!(".goldclone-bench-send-src-{id}"));
    let built = fixture::build(&sample, &FixtureSpec::bench(args.entries))?;
    sender.import(&project, &sample)?;
    let stream_path = args.stream_dir.join(format!("goldclone-bench-{id}.stream"));
    let tar_path = args.stream_dir.join(format!("goldclone-bench-{id}.tar"));
    let unpacked = to.with_file_name(format!(".goldclone-bench-untar-{id}"));
    let (mut send, mut recv, mut tar_c, mut tar_x) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut stream_bytes, mut tar_bytes) = (0, 0);
    for round in 0..args.rounds {
        settle(true);
        let t = Instant::now();
        let mut out = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&stream_path).at("create", &stream_path)?,
        );
        let sent = sender.send(&project, None, None, &mut out)?;
        drop(out);
        send.push(t.elapsed());
        stream_bytes = sent.stream_bytes;
        settle(true);
        // Received whole into a project that does not exist there, deleted after.
        let t = Instant::now();
        let mut input = std::io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(&stream_path).at("open", &stream_path)?,
        );
        let generation = receiver.receive(&project, &mut input)?;
        recv.push(t.elapsed());
        receiver.delete_project(&project)?;
        if generation != 1 {
            return Err(Error::InvalidArgument {
                what: format!("received as generation {generation}"),
            });
        }
        // tar reads the generation as the sender does: through the backend (a session).
        let reading = sender.setup(&project, "bench-tar")?;
        settle(true);
        let t = Instant::now();
        let tar = |args: &[&std::ffi::OsStr]| -> Result<()> {
            let status = Command::new("tar").args(args).status().at("tar", &sample)?;
            if status.success() {
                Ok(())
            } else {
                Err(Error::io(
                    "tar",
                    &sample,
                    std::io::Error::other(format!("tar exited with {status}")),
                ))
            }
        };
        tar(&[
            "--xattrs".as_ref(),
            "--acls".as_ref(),
            "-C".as_ref(),
            reading.as_os_str(),
            "-cf".as_ref(),
            tar_path.as_os_str(),
            ".".as_ref(),
        ])?;
        tar_c.push(t.elapsed());
        sender.cleanup(&project, "bench-tar")?;
        tar_bytes = std::fs::metadata(&tar_path).map_or(0, |m| m.len());
        std::fs::create_dir_all(&unpacked).at("mkdir", &unpacked)?;
        settle(true);
        let t = Instant::now();
        tar(&[
            "--xattrs".as_ref(),
            "--xattrs-include=*".as_ref(),
            "--acls".as_ref(),
            "-C".as_ref(),
            unpacked.as_os_str(),
            "-xpf".as_ref(),
            tar_path.as_os_str(),
        ])?;
        // Durable, as a received generation is when it is committed.
        let fd = std::fs::File::open(&unpacked).at("open", &unpacked)?;
        rustix::fs::syncfs(&fd).at("syncfs", &unpacked)?;
        tar_x.push(t.elapsed());
        copy::remove_tree(&unpacked)?;
        errln!(
            "round {}: send {:.2} s, receive {:.2} s; tar -c {:.2} s, tar -x {:.2} s",
            round + 1,
            send[round].as_secs_f64(),
            recv[round].as_secs_f64(),
            tar_c[round].as_secs_f64(),
            tar_x[round].as_secs_f64()
        );
    }
    // The increment: a session of generation 1 with 1% of its files changed, promoted (the
    // service's flow); sent from generation 1's manifest (kept by the sends above) and received
    // onto generation 1 on the receiver (received whole, untimed, before each round).
    let work = sender.setup(&project, "bench-change")?;
    let (changed_files, changed_bytes) = change_one_percent(&work)?;
    sender.promote(&project, "bench-change")?;
    sender.cleanup(&project, "bench-change")?;
    let (mut inc_send, mut inc_recv) = (Vec::new(), Vec::new());
    let mut inc_bytes = 0;
    let inc_path = args.stream_dir.join(format!("goldclone-bench-{id}.increment"));
    for round in 0..args.rounds {
        let mut input = std::io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(&stream_path).at("open", &stream_path)?,
        );
        receiver.receive(&project, &mut input)?;
        settle(true);
        let t = Instant::now();
        let mut out = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&inc_path).at("create", &inc_path)?,
        );
        let sent = sender.send(&project, None, Some(1), &mut out)?;
        drop(out);
        inc_send.push(t.elapsed());
        inc_bytes = sent.stream_bytes;
        settle(true);
        let t = Instant::now();
        let mut input = std::io::BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(&inc_path).at("open", &inc_path)?,
        );
        let generation = receiver.receive(&project, &mut input)?;
        inc_recv.push(t.elapsed());
        receiver.delete_project(&project)?;
        if generation != 2 {
            return Err(Error::InvalidArgument {
                what: format!("the increment was received as generation {generation}"),
            });
        }
        errln!(
            "round {}: increment send {:.2} s, receive {:.2} s, {} bytes",
            round + 1,
            inc_send[round].as_secs_f64(),
            inc_recv[round].as_secs_f64(),
            inc_bytes
        );
    }
    let _ = std::fs::remove_file(&inc_path);
    let _ = std::fs::remove_file(&stream_path);
    let _ = std::fs::remove_file(&tar_path);
    sender.delete_project(&project)?;
    copy::remove_tree(&sample)?;
    let (s, r, c, x) = (median(&send), median(&recv), median(&tar_c), median(&tar_x));
    let (is, ir) = (median(&inc_send), median(&inc_recv));
    outln!(
        "{} entries, {:.0} MB; {:?} -> {:?}; {} rounds, medians:",
        built.entries,
        built.bytes as f64 / 1e6,
        sender.backend(),
        receiver.backend(),
        args.rounds
    )?;
    outln!("| | write (s) | read (s) | both (s) | stream (MB) |")?;
    outln!("|---|---|---|---|---|")?;
    outln!(
        "| goldclone send / receive | {s:.2} | {r:.2} | **{:.2}** | {:.0} |",
        s + r,
        stream_bytes as f64 / 1e6
    )?;
    outln!(
        "| `tar --xattrs --acls` -c / -x | {c:.2} | {x:.2} | {:.2} | {:.0} |",
        c + x,
        tar_bytes as f64 / 1e6
    )?;
    outln!("| tar / goldclone | | | **{:.2}x** | |", (c + x) / (s + r))?;
    outln!(
        "| goldclone increment (1%: {changed_files} files, {:.1} MB changed) | {is:.2} | {ir:.2} \
         | **{:.2}** | {:.1} |",
        changed_bytes as f64 / 1e6,
        is + ir,
        inc_bytes as f64 / 1e6
    )?;
    outln!(
        "| increment / full | {:.2}x | {:.2}x | {:.2}x | **{:.3}x** |",
        is / s,
        ir / r,
        (is + ir) / (s + r),
        inc_bytes as f64 / stream_bytes as f64
    )?;
    Ok(())
}

/// Change every hundredth regular file below `dir` (in name order), appending to it: the
/// files and bytes of data changed (the changed files' sizes after).
fn change_one_percent(dir: &Path) -> Result<(u64, u64)> {
    use std::io::Write as _;
    let (mut seen, mut files, mut bytes) = (0u64, 0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .at("readdir", &d)?
            .collect::<std::io::Result<Vec<_>>>()
            .at("readdir", &d)?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let t = e.file_type().at_with("stat", || e.path())?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                seen += 1;
                if seen % 100 == 0 {
                    let path = e.path();
                    let mut f =
                        std::fs::OpenOptions::new().append(true).open(&path).at("open", &path)?;
                    f.write_all(b"changed by goldclone bench send\n").at("write", &path)?;
                    files += 1;
                    bytes += f.metadata().at("stat", &path)?.len();
                }
            }
        }
    }
    Ok((files, bytes))
}
