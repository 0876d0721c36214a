//! Subcommands of the `goldclone` binary, one module each.
//!
//! Output goes through [`outln!`] and [`errln!`], never `println!`: a closed pipe or a full
//! disk on stdout is an error the command reports (exit 1), not a panic.

/// `println!` that returns the write error as a `goldclone::Error` instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
            .map_err(|e| goldclone::Error::io("write", "<stdout>", e))
    }};
}

/// `print!` that returns the write error instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
            .map_err(|e| goldclone::Error::io("write", "<stdout>", e))
    }};
}

/// `eprintln!` that ignores a failing stderr: there is nowhere left to report it.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod bench;
pub mod copy;
pub mod demo;
pub mod detect;
pub mod golden;
pub mod zfs;
