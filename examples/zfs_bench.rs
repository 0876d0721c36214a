//! The ZFS benchmark as a standalone program, for running it before `goldclone bench zfs` is
//! wired into the main binary (tests/zfs-vm.sh uses whichever exists).

use clap::Parser;

#[derive(Parser)]
#[command(about = "goldclone (libzfs_core + mount(2)) vs the zfs CLI")]
struct Cli {
    #[command(flatten)]
    args: goldclone::cli::zfs::BenchZfsArgs,
}

fn main() -> std::process::ExitCode {
    match goldclone::cli::zfs::bench_zfs(Cli::parse().args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench zfs: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
