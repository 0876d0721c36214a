//! `goldclone`: the operators' command line over the goldclone library.

#[macro_use]
#[path = "../cli/mod.rs"]
mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Instant private copies of a golden directory tree.
#[derive(Debug, Parser)]
#[command(name = "goldclone", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a sample docker-like tree, copy it the best available way, compare with `cp -a`.
    Demo(cli::demo::DemoArgs),
    /// Show what backs a path (ZFS dataset, zvol, btrfs, reflink-capable or plain filesystem).
    Detect(cli::detect::DetectArgs),
    /// Copy a directory tree exactly (`cp -a` semantics), in parallel, reflinking where possible.
    Copy(cli::copy::CopyArgs),
    /// Remove staging directories left behind by killed copies.
    Cleanup(cli::copy::CleanupArgs),
    /// Compare two trees entry by entry (metadata, xattrs, hardlinks, content).
    Verify(cli::copy::VerifyArgs),
    /// Golden trees: import an existing directory as a project's generation 1.
    #[command(subcommand)]
    Golden(cli::golden::GoldenCommand),
    /// Sessions: setup, promote, cleanup.
    #[command(subcommand)]
    Session(cli::golden::SessionCommand),
    /// Finish interrupted operations and remove everything no committed state refers to.
    Gc(cli::golden::RootArgs),
    /// A project's current generation and sessions.
    Info(cli::golden::InfoArgs),
    /// Benchmarks against the tools the service uses today.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo(a) => cli::demo::run(a),
        Command::Detect(a) => cli::detect::run(a),
        Command::Copy(a) => cli::copy::run(a),
        Command::Cleanup(a) => cli::copy::cleanup(a),
        Command::Verify(a) => match cli::copy::verify(a) {
            Ok(true) => Ok(()),
            Ok(false) => return finish(ExitCode::from(1)),
            Err(e) => Err(e),
        },
        Command::Golden(g) => cli::golden::golden(g),
        Command::Session(s) => cli::golden::session(s),
        Command::Gc(r) => match cli::golden::gc(r) {
            Ok(true) => Ok(()),
            Ok(false) => return finish(ExitCode::from(2)),
            Err(e) => Err(e),
        },
        Command::Info(i) => cli::golden::info(i),
        Command::Bench(b) => cli::bench::run(b),
    };
    match result {
        Ok(()) => finish(ExitCode::SUCCESS),
        Err(e) => fail(&e),
    }
}

/// Flush stdout: output that cannot be written is an error, reported like any other.
fn finish(code: ExitCode) -> ExitCode {
    use std::io::Write as _;
    match std::io::stdout().lock().flush() {
        Ok(()) => code,
        Err(e) => fail(&goldclone::Error::io("write", "<stdout>", e)),
    }
}

/// Report `e` on stderr (if stderr can take it) and exit 1.
fn fail(e: &goldclone::Error) -> ExitCode {
    errln!("goldclone: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        errln!("  caused by: {s}");
        source = s.source();
    }
    ExitCode::from(1)
}
