//! Is anybody using a session? A process uses a tree when its working directory, root,
//! executable or one of its open files lies inside it.

use std::fs;
use std::path::Path;

/// Pids (other than ours) using anything under `tree`, from /proc.
pub(crate) fn users_of(tree: &Path) -> Vec<u32> {
    let me = std::process::id();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let base = entry.path();
        let inside = |link: &Path| fs::read_link(link).is_ok_and(|target| target.starts_with(tree));
        let mut uses = ["cwd", "root", "exe"].iter().any(|l| inside(&base.join(l)));
        if !uses {
            if let Ok(fds) = fs::read_dir(base.join("fd")) {
                uses = fds.flatten().any(|fd| inside(&fd.path()));
            }
        }
        if uses {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}
