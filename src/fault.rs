//! Fault injection for the crash tests: with the `fault-injection` feature, reaching the point
//! named by `GOLDCLONE_FAULT` kills the process with SIGKILL — no unwinding, no destructors, no
//! buffered writes, exactly as `kill -9` would. Without the feature every point is a no-op.
//!
//! Cross-cutting: the lifecycle and the backends both mark points, so this module sits below
//! both and knows neither.

/// Every point, in the order an operation reaches them. Some are inside one backend's part of an
/// operation, and only that backend reaches them (see `BackendKind::reaches`).
pub const POINTS: &[&str] = &[
    "import:intent-recorded",
    "import:snapshot-taken",
    "import:head-promoted",
    "import:image-filled",
    "import:tree-created",
    "import:meta-written",
    "import:current-written",
    "setup:intent-recorded",
    "setup:image-cloned",
    "setup:tree-created",
    "setup:attached",
    "setup:meta-written",
    "setup:remounted",
    "promote:intent-recorded",
    "promote:session-taken",
    "promote:edited",
    "promote:snapshot-taken",
    "promote:head-promoted",
    "promote:tree-created",
    "promote:meta-written",
    "promote:current-written",
    "cleanup:intent-recorded",
    "cleanup:detached",
    "cleanup:tree-moved",
    "cleanup:meta-removed",
    "delete:intent-recorded",
    "delete:current-removed",
    "delete:sessions-removed",
];

#[cfg(feature = "fault-injection")]
pub(crate) fn point(name: &str) {
    debug_assert!(POINTS.contains(&name), "unlisted fault point {name}");
    if std::env::var("GOLDCLONE_FAULT").as_deref() == Ok(name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn point(_name: &str) {}
