//! `goldclone bench zfs`: in-process libzfs_core + mount(2) against the `zfs` CLI, on one pool.
//!
//! Per iteration, interleaved so both sides see the same pool state and noise:
//! * snapshot: `lzc_snapshot` vs `zfs snapshot`;
//! * session ready: `lzc_clone` + mount(2) vs `zfs clone` + `mount -t zfs` (the two processes
//!   the service forks today);
//! * destroy: umount2 + `lzc_destroy` vs `umount` + `zfs destroy`.
//!
//! Sessions are cloned under a parent with `mountpoint=legacy` and get no properties of their
//! own, on both sides: properties on a clone cost the kernel a second transaction group
//! (`zfs_ioc_clone` sets them in a separate sync task), which doubled the clone time here.
//!
//! Then N session clones started at once (threads) against one alone. Prints a table, the
//! ratios, and JSON; writes raw latencies to `zfs-bench.csv` and the summary to
//! `zfs-bench.json` in `--out-dir` (`benches/plot_zfs.py` turns the CSV into a PNG).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use goldclone::zfs::mount::{mount_filesystem, unmount, MountOptions};
use goldclone::zfs::{CanMount, DatasetName, Props, SnapshotName, Zfs};
use goldclone::{Context, Error, Result};

/// Arguments of `goldclone bench zfs`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchZfsArgs {
    /// Pool to work in; the benchmark creates and destroys `<pool>/goldclone-bench-<pid>`.
    #[arg(long)]
    pub pool: String,
    /// Timed iterations per operation and implementation (at least 20).
    #[arg(long, default_value_t = 30)]
    pub iterations: usize,
    /// Session clones started at once in the concurrency test.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Rounds of the concurrency test (each: one session alone, then N at once, then the N torn
    /// down, alternately one destroy each and one `destroy_many`).
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Files written into the golden dataset before it is snapshotted.
    #[arg(long, default_value_t = 500)]
    pub files: usize,
    /// Directory for zfs-bench.csv and zfs-bench.json.
    #[arg(long, default_value = ".")]
    pub out_dir: PathBuf,
    /// The `zfs` command to compare against.
    #[arg(long, default_value = "zfs")]
    pub zfs_cli: String,
    /// The `mount` command to compare against (`umount` is taken from the same directory).
    #[arg(long, default_value = "mount")]
    pub mount_cli: String,
}

fn cli_error(what: String) -> Error {
    Error::io("zfs cli", "zfs", std::io::Error::other(what))
}

fn run_cli(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program).args(args).output().at("spawn", program)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(cli_error(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<Duration> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Bench {
    zfs: Zfs,
    /// Parent of the session clones, `mountpoint=legacy`.
    sessions: DatasetName,
    mount_cli: String,
    umount_cli: String,
    base: SnapshotName,
    mnt: PathBuf,
    cli: String,
}

impl Bench {
    fn session_ready(&self, name: &str) -> Result<Steps> {
        let ds = self.sessions.child(name)?;
        let dir = self.mnt.join(name);
        std::fs::create_dir_all(&dir).at("mkdir", &dir)?;
        let start = Instant::now();
        self.zfs.clone_snapshot(&ds, &self.base, &Props::new())?;
        let cloned = Instant::now();
        mount_filesystem(&ds, &dir, MountOptions::default())?;
        Ok(Steps { clone: cloned - start, mount: cloned.elapsed() })
    }

    fn session_destroy(&self, name: &str) -> Result<()> {
        unmount(&self.mnt.join(name))?;
        self.zfs.destroy(&self.sessions.child(name)?)
    }

    fn cli_session_ready(&self, name: &str) -> Result<()> {
        let ds = self.sessions.child(name)?;
        let dir = self.mnt.join(name);
        std::fs::create_dir_all(&dir).at("mkdir", &dir)?;
        run_cli(&self.cli, &["clone", self.base.as_str(), ds.as_str()])?;
        run_cli(&self.mount_cli, &["-t", "zfs", ds.as_str(), &dir.to_string_lossy()])
    }

    fn cli_session_destroy(&self, name: &str) -> Result<()> {
        run_cli(&self.umount_cli, &[&self.mnt.join(name).to_string_lossy()])?;
        run_cli(&self.cli, &["destroy", self.sessions.child(name)?.as_str()])
    }
}

/// CPU time all CPUs have spent busy since boot, from the first line of /proc/stat (USER_HZ is
/// 100 on Linux by ABI). Zero if it cannot be read: the report then shows no CPU figures.
fn machine_busy() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return Duration::ZERO };
    let Some(line) = stat.lines().next() else { return Duration::ZERO };
    // cpu user nice system idle iowait irq softirq steal ...
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    Duration::from_millis(busy * 10)
}

/// Where a session-ready's time went.
struct Steps {
    clone: Duration,
    mount: Duration,
}

fn populate(dir: &Path, files: usize) -> Result<()> {
    for i in 0..files {
        let sub = dir.join(format!("d{}", i % 20));
        std::fs::create_dir_all(&sub).at("mkdir", &sub)?;
        let f = sub.join(format!("f{i}"));
        std::fs::write(&f, format!("golden file {i}\n").repeat(64)).at("write", &f)?;
    }
    Ok(())
}

/// Run the benchmark. Needs root, a pool with some free space, and the `zfs` CLI for the
/// comparison.
pub fn bench_zfs(args: BenchZfsArgs) -> Result<()> {
    if args.iterations < 20 {
        return Err(Error::Unsupported {
            what: "fewer than 20 iterations give no meaningful p99".into(),
        });
    }
    let zfs = Zfs::open()?;
    let pool = DatasetName::new(&args.pool)?;
    let root = pool.child(&format!("goldclone-bench-{}", std::process::id()))?;
    let mnt = PathBuf::from(format!("/tmp/goldclone-bench-{}", std::process::id()));
    zfs.create_filesystem(&root, &Props::new().canmount(CanMount::Off).mountpoint("none"))?;
    let golden = root.child("golden")?;
    zfs.create_filesystem(&golden, &Props::new().canmount(CanMount::NoAuto))?;
    let gdir = mnt.join("golden");
    std::fs::create_dir_all(&gdir).at("mkdir", &gdir)?;
    mount_filesystem(&golden, &gdir, MountOptions::default())?;
    let populated = populate(&gdir, args.files);
    unmount(&gdir)?;
    populated?;
    let base = golden.snapshot("base")?;
    zfs.snapshot(std::slice::from_ref(&base))?;
    let sessions = root.child("sessions")?;
    zfs.create_filesystem(&sessions, &Props::new().canmount(CanMount::Off).mountpoint("legacy"))?;
    let umount_cli = match Path::new(&args.mount_cli).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            dir.join("umount").to_string_lossy().into_owned()
        }
        _ => "umount".to_owned(),
    };
    let bench = Bench {
        zfs,
        sessions,
        mount_cli: args.mount_cli.clone(),
        umount_cli,
        base,
        mnt: mnt.clone(),
        cli: args.zfs_cli.clone(),
    };

    let result = measure(&bench, &args);
    // Tear down whatever the measurement left, even after a failure.
    let _ = std::fs::read_dir(&mnt).map(|rd| {
        for e in rd.flatten() {
            let _ = unmount(&e.path());
        }
    });
    let teardown = zfs.destroy_tree(&root);
    let _ = std::fs::remove_dir_all(&mnt);
    let report = result?;
    teardown?;

    std::fs::create_dir_all(&args.out_dir).at("mkdir", &args.out_dir)?;
    let csv = args.out_dir.join("zfs-bench.csv");
    std::fs::write(&csv, &report.csv).at("write", &csv)?;
    let json_path = args.out_dir.join("zfs-bench.json");
    let json = serde_json::to_string_pretty(&report.json).expect("serializable");
    std::fs::write(&json_path, &json).at("write", &json_path)?;
    out!("{}", report.table)?;
    outln!("{json}")?;
    Ok(())
}

struct Report {
    table: String,
    csv: String,
    json: serde_json::Value,
}

fn measure(b: &Bench, args: &BenchZfsArgs) -> Result<Report> {
    let n = args.iterations;
    let mut samples: BTreeMap<(&str, &str), Vec<Duration>> = BTreeMap::new();
    let golden = b.base.dataset();
    for i in 0..n {
        // Snapshots of the golden dataset.
        let s = golden.snapshot(&format!("gc{i}"))?;
        let d = timed(|| b.zfs.snapshot(std::slice::from_ref(&s)))?;
        samples.entry(("snapshot", "goldclone")).or_default().push(d);
        let cli_snap = format!("{golden}@cli{i}");
        let d = timed(|| run_cli(&b.cli, &["snapshot", &cli_snap]))?;
        samples.entry(("snapshot", "zfs-cli")).or_default().push(d);

        // Session ready: clone + mount.
        let (gname, cname) = (format!("gc-s{i}"), format!("cli-s{i}"));
        let d = timed(|| b.session_ready(&gname))?;
        samples.entry(("session_ready", "goldclone")).or_default().push(d);
        let d = timed(|| b.cli_session_ready(&cname))?;
        samples.entry(("session_ready", "zfs-cli")).or_default().push(d);

        // Destroy the session (unmount + destroy).
        let d = timed(|| b.session_destroy(&gname))?;
        samples.entry(("destroy", "goldclone")).or_default().push(d);
        let d = timed(|| b.cli_session_destroy(&cname))?;
        samples.entry(("destroy", "zfs-cli")).or_default().push(d);
    }

    // N session clones at once vs one alone, goldclone only (the service's concurrent case).
    let mut concurrent = Vec::new();
    let mut single = Vec::new();
    let (mut busy_concurrent, mut busy_single) = (Duration::ZERO, Duration::ZERO);
    let pool = b.base.pool().to_owned();
    for r in 0..args.rounds {
        // One alone first, then the crowd, each after a pool sync so neither pays for the
        // other's leftover work (deferred frees of destroyed clones).
        b.zfs.sync(&pool)?;
        let name = format!("one{r}");
        let busy_before = machine_busy();
        let start = Instant::now();
        let steps = b.session_ready(&name)?;
        single.push(start.elapsed());
        busy_single += machine_busy().saturating_sub(busy_before);
        samples.entry(("single_clone_step", "goldclone")).or_default().push(steps.clone);
        samples.entry(("single_mount_step", "goldclone")).or_default().push(steps.mount);
        b.session_destroy(&name)?;

        b.zfs.sync(&pool)?;
        let busy_before = machine_busy();
        let barrier = Barrier::new(args.concurrency);
        let start = Instant::now();
        let outcomes: Vec<Result<Steps>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..args.concurrency)
                .map(|t| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        b.session_ready(&format!("par{r}-{t}"))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("bench thread panicked")).collect()
        });
        concurrent.push(start.elapsed());
        busy_concurrent += machine_busy().saturating_sub(busy_before);
        for steps in outcomes {
            let steps = steps?;
            samples.entry(("concurrent_clone_step", "goldclone")).or_default().push(steps.clone);
            samples.entry(("concurrent_mount_step", "goldclone")).or_default().push(steps.mount);
        }
        // Tear the crowd down, alternating one destroy per session with one destroy_many.
        let names: Vec<String> = (0..args.concurrency).map(|t| format!("par{r}-{t}")).collect();
        b.zfs.sync(&pool)?;
        let start = Instant::now();
        if r % 2 == 0 {
            for n in &names {
                b.session_destroy(n)?;
            }
            samples
                .entry(("crowd_teardown_one_by_one", "goldclone"))
                .or_default()
                .push(start.elapsed());
        } else {
            for n in &names {
                unmount(&b.mnt.join(n))?;
            }
            let datasets = names.iter().map(|n| b.sessions.child(n)).collect::<Result<Vec<_>>>()?;
            b.zfs.destroy_many(&datasets)?;
            samples
                .entry(("crowd_teardown_destroy_many", "goldclone"))
                .or_default()
                .push(start.elapsed());
        }
    }
    let wall_concurrent: Duration = concurrent.iter().sum();
    samples.insert(("concurrent_ready_wall", "goldclone"), concurrent);
    samples.insert(("single_ready", "goldclone"), single);

    let mut csv = String::from("operation,implementation,iteration,milliseconds\n");
    let mut stats = BTreeMap::new();
    for ((op, imp), v) in &mut samples {
        for (i, d) in v.iter().enumerate() {
            let _ = writeln!(csv, "{op},{imp},{i},{:.3}", ms(*d));
        }
        v.sort();
        stats.insert(format!("{op}/{imp}"), (percentile(v, 50.0), percentile(v, 99.0), v.len()));
    }
    let p50 = |k: &str| stats[k].0;
    let p99 = |k: &str| stats[k].1;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<28} {:>10} {:>10} {:>6}",
        "operation/implementation", "p50 ms", "p99 ms", "n"
    );
    for (k, (a, b99, len)) in &stats {
        let _ = writeln!(table, "{k:<28} {:>10.1} {:>10.1} {len:>6}", ms(*a), ms(*b99));
    }
    let mut ratios = serde_json::Map::new();
    for op in ["snapshot", "session_ready", "destroy"] {
        let (g, c) = (format!("{op}/goldclone"), format!("{op}/zfs-cli"));
        let r50 = p50(&c).as_secs_f64() / p50(&g).as_secs_f64();
        let r99 = p99(&c).as_secs_f64() / p99(&g).as_secs_f64();
        let _ = writeln!(table, "{op}: goldclone is {r50:.1}x faster at p50, {r99:.1}x at p99");
        ratios.insert(format!("{op}_speedup_p50"), r50.into());
        ratios.insert(format!("{op}_speedup_p99"), r99.into());
    }
    let conc = p50("concurrent_ready_wall/goldclone").as_secs_f64()
        / p50("single_ready/goldclone").as_secs_f64();
    let _ = writeln!(
        table,
        "{} session clones at once: {conc:.2}x the time of one (p50 of {} rounds; target <= 3x)",
        args.concurrency, args.rounds
    );
    ratios.insert("concurrent_over_single_p50".into(), conc.into());
    if stats.contains_key("crowd_teardown_destroy_many/goldclone") {
        let r = p50("crowd_teardown_one_by_one/goldclone").as_secs_f64()
            / p50("crowd_teardown_destroy_many/goldclone").as_secs_f64();
        let _ = writeln!(
            table,
            "tearing down {} sessions: destroy_many is {r:.1}x faster than one destroy each (p50)",
            args.concurrency
        );
        ratios.insert("teardown_destroy_many_speedup_p50".into(), r.into());
    }
    // Where the concurrency went: CPU time the whole machine spent per session, alone and in a
    // crowd, and how busy all CPUs were during the crowd. If the CPUs are saturated, the crowd
    // can finish no faster than sessions x CPU-per-session / CPUs.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let sessions = (args.rounds * args.concurrency) as f64;
    let cpu_single = ms(busy_single) / args.rounds as f64;
    let cpu_crowd = ms(busy_concurrent) / sessions;
    let utilisation = busy_concurrent.as_secs_f64() / (wall_concurrent.as_secs_f64() * cpus as f64);
    let _ = writeln!(
        table,
        "CPU per session: {cpu_single:.1} ms alone, {cpu_crowd:.1} ms in a crowd of {}; all {cpus} \
         CPUs {:.0}% busy during the crowd (10 ms /proc/stat resolution)",
        args.concurrency,
        utilisation * 100.0
    );
    let speedup = ratios["session_ready_speedup_p50"].as_f64().unwrap_or(0.0);
    let _ = writeln!(
        table,
        "session ready target (>= 5x at p50): {}",
        if speedup >= 5.0 { "met" } else { "NOT met" }
    );

    let json = serde_json::json!({
        "iterations": args.iterations,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "golden_files": args.files,
        "milliseconds": stats.iter().map(|(k, (a, b99, len))| {
            (k.clone(), serde_json::json!({"p50": ms(*a), "p99": ms(*b99), "n": len}))
        }).collect::<serde_json::Map<_, _>>(),
        "ratios": ratios,
        "cpu": {
            "cpus": cpus,
            "cpu_ms_per_session_alone": cpu_single,
            "cpu_ms_per_session_in_crowd": cpu_crowd,
            "crowd_utilisation": utilisation,
        },
    });
    Ok(Report { table, csv, json })
}
