//! zvol recognition without udev: the block major number the `zvol` driver registered in
//! `/proc/devices`, the device node from sysfs, the dataset name from the BLKZNAME ioctl.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::{Context, Error, Result};

/// The major number registered under `name` in the "Block devices:" section of a
/// `/proc/devices` text.
pub fn block_major(proc_devices: &str, name: &str) -> Option<u32> {
    let mut in_block = false;
    for line in proc_devices.lines() {
        let line = line.trim();
        if line.ends_with(':') {
            in_block = line == "Block devices:";
            continue;
        }
        if !in_block {
            continue;
        }
        let mut f = line.split_whitespace();
        if let (Some(major), Some(n), None) = (f.next(), f.next(), f.next()) {
            if n == name {
                if let Ok(m) = major.parse() {
                    return Some(m);
                }
            }
        }
    }
    None
}

/// The `DEVNAME=` value of a sysfs `uevent` text (`zd16`, `zd16p1`).
pub fn uevent_devname(uevent: &str) -> Option<&str> {
    uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")).filter(|n| !n.is_empty())
}

/// The zvol block major on this host, if the ZFS module is loaded.
pub(crate) fn zvol_major() -> Result<Option<u32>> {
    match std::fs::read_to_string("/proc/devices") {
        Ok(t) => Ok(block_major(&t, "zvol")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", "/proc/devices", e)),
    }
}

fn is_blk(path: &Path, major: u32, minor: u32) -> bool {
    std::fs::metadata(path).is_ok_and(|m| {
        m.file_type().is_block_device()
            && nix::sys::stat::major(m.rdev()) == u64::from(major)
            && nix::sys::stat::minor(m.rdev()) == u64::from(minor)
    })
}

/// A device node for block device `major:minor`: the mount source when it is one (it may be a
/// `/dev/zvol/...` symlink), else `/dev/<DEVNAME>` from sysfs (devtmpfs creates it, no udev).
pub(crate) fn device_node(source: &str, major: u32, minor: u32) -> Result<PathBuf> {
    let src = Path::new(source);
    if src.is_absolute() && is_blk(src, major, minor) {
        return Ok(src.to_path_buf());
    }
    let uevent_path = format!("/sys/dev/block/{major}:{minor}/uevent");
    let uevent = std::fs::read_to_string(&uevent_path).at_with("read", || uevent_path.clone())?;
    if let Some(name) = uevent_devname(&uevent) {
        let dev = Path::new("/dev").join(name);
        if is_blk(&dev, major, minor) {
            return Ok(dev);
        }
    }
    Err(Error::Unsupported {
        what: format!("no device node for block device {major}:{minor} (source {source:?})"),
    })
}

/// The ZFS dataset behind zvol device node `device`, by BLKZNAME. Needs read access to the
/// device (root, usually): EACCES comes back as [`ErrorKind::PermissionDenied`](crate::ErrorKind).
pub(crate) fn dataset_of(device: &Path) -> Result<String> {
    // std opens with O_CLOEXEC; O_RDONLY on a block device has no side effects.
    let f = File::open(device).at("open", device)?;
    crate::sys::block::blkzname(f.as_fd()).at("BLKZNAME", device)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICES: &str = "Character devices:
  1 mem
  4 /dev/vc/0
230 zvol
Block devices:
  7 loop
  8 sd
230 zvol
253 device-mapper
259 blkext
";

    #[test]
    fn finds_block_major() {
        assert_eq!(block_major(DEVICES, "zvol"), Some(230));
        assert_eq!(block_major(DEVICES, "loop"), Some(7));
        assert_eq!(block_major(DEVICES, "mem"), None, "character section must not match");
        assert_eq!(block_major("Character devices:\n230 zvol\n", "zvol"), None);
    }

    #[test]
    fn this_host() {
        let t = std::fs::read_to_string("/proc/devices").unwrap();
        assert!(block_major(&t, "loop").is_some());
    }

    #[test]
    fn devname() {
        assert_eq!(
            uevent_devname("MAJOR=230\nMINOR=16\nDEVNAME=zd16\nDEVTYPE=disk\n"),
            Some("zd16")
        );
        assert_eq!(uevent_devname("MAJOR=230\n"), None);
    }
}
