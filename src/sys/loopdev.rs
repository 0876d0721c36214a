//! Loop devices (linux/loop.h): find a free one, attach a file with `LOOP_CONFIGURE`, ask one
//! what it is backed by. No `losetup` binary. Also `FS_IOC_FIEMAP`'s extent count, which decides
//! what a FICLONE of an image costs.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};

// linux/loop.h. The loop ioctls are numbered without _IOC encoding.
const LOOP_CTL_GET_FREE: u64 = 0x4C82;
const LOOP_CONFIGURE: u64 = 0x4C0A;
const LOOP_GET_STATUS64: u64 = 0x4C05;
/// `LO_FLAGS_AUTOCLEAR`: the device detaches itself when its last user (a mount) lets go.
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `LO_FLAGS_DIRECT_IO`: the device reads and writes its file with O_DIRECT, not through a
/// second page cache.
pub const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LoopInfo64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; 64],
    pub lo_crypt_name: [u8; 64],
    pub lo_encrypt_key: [u8; 32],
    pub lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

nix::ioctl_none_bad!(ioctl_ctl_get_free, LOOP_CTL_GET_FREE);
nix::ioctl_write_ptr_bad!(ioctl_configure, LOOP_CONFIGURE, LoopConfig);
nix::ioctl_read_bad!(ioctl_get_status64, LOOP_GET_STATUS64, LoopInfo64);

/// A loop device attached to a file: its node, open. Dropping it closes our descriptor; with
/// `LO_FLAGS_AUTOCLEAR` the device detaches once nothing else (a mount) uses it.
#[derive(Debug)]
pub struct Attached {
    /// `/dev/loopN`.
    pub path: PathBuf,
    /// Our descriptor of the device: its one user until a mount takes over (with autoclear, a
    /// device whose last user goes detaches itself).
    _open: OwnedFd,
    /// Whether the device does direct I/O on its file.
    pub direct_io: bool,
}

/// How many times a free device is looked for when another process takes the one
/// `LOOP_CTL_GET_FREE` named before we configure it (EBUSY).
const ATTEMPTS: usize = 64;

/// Attach the open file `file` to a free loop device, with `block_size`-byte sectors, read-write,
/// autoclear, and (`direct_io`) direct I/O where the file's filesystem takes it, else buffered.
///
/// `LOOP_CTL_GET_FREE` names a free device (making one if none is); another process may take it
/// before `LOOP_CONFIGURE` does, which fails with EBUSY, and the search starts again.
pub fn attach(file: BorrowedFd<'_>, block_size: u32, direct_io: bool) -> io::Result<Attached> {
    let control =
        rustix::fs::open("/dev/loop-control", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let mut last = io::Error::from_raw_os_error(libc::EBUSY);
    for _ in 0..ATTEMPTS {
        // SAFETY: `control` is open /dev/loop-control; LOOP_CTL_GET_FREE takes no argument.
        let n = unsafe { ioctl_ctl_get_free(control.as_raw_fd()) }.map_err(io::Error::from)?;
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = match open_node(&path) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(e),
            Err(e) => {
                last = e;
                continue;
            }
        };
        for direct_io in [direct_io, false] {
            match configure(dev.as_fd(), file, block_size, direct_io) {
                Ok(()) => return Ok(Attached { path, _open: dev, direct_io }),
                // The file's filesystem cannot do O_DIRECT at this block size: buffered.
                Err(e) if direct_io && e.raw_os_error() == Some(libc::EINVAL) => continue,
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
        if last.raw_os_error() != Some(libc::EBUSY) {
            return Err(last);
        }
    }
    Err(last)
}

/// Open the device node `path`, which devtmpfs may create a moment after LOOP_CTL_GET_FREE
/// made the device.
fn open_node(path: &std::path::Path) -> io::Result<OwnedFd> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::NOENT) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn configure(
    dev: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    block_size: u32,
    direct_io: bool,
) -> io::Result<()> {
    let mut flags = LO_FLAGS_AUTOCLEAR;
    if direct_io {
        flags |= LO_FLAGS_DIRECT_IO;
    }
    let config = LoopConfig {
        fd: file.as_raw_fd() as u32,
        block_size,
        info: LoopInfo64 { lo_flags: flags, ..empty_info() },
        reserved: [0; 8],
    };
    // SAFETY: `dev` is an open loop device and `file` an open file for the call; `config` is a
    // live, fully initialised struct loop_config the kernel only reads.
    unsafe { ioctl_configure(dev.as_raw_fd(), &config) }.map(drop).map_err(io::Error::from)
}

fn empty_info() -> LoopInfo64 {
    LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: 0,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    }
}

/// What the open loop device `dev` is attached to; ENXIO if it is attached to nothing.
pub fn status(dev: BorrowedFd<'_>) -> io::Result<LoopInfo64> {
    let mut info = empty_info();
    // SAFETY: `dev` is open; the kernel writes one struct loop_info64 into `info`.
    unsafe { ioctl_get_status64(dev.as_raw_fd(), &mut info) }.map_err(io::Error::from)?;
    Ok(info)
}

/// The (device, inode) of the file behind the loop device whose number is `major:minor`, if
/// it is a loop device and attached. Its node is found by its number (`/sys/dev/block`): with
/// `max_part` a device's minor is not its index. Opened read-only and without O_EXCL: asking
/// changes nothing (a device detached meanwhile answers ENXIO, which is `None`).
pub fn backing_of(major: u32, minor: u32) -> io::Result<Option<(u64, u64)>> {
    let Ok(target) = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")) else {
        return Ok(None);
    };
    let Some(name) = target.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
        return Ok(None);
    };
    // A whole loop device has a `loop` directory in sysfs (a partition of one does not).
    if !name.starts_with("loop")
        || !std::path::Path::new("/sys/block").join(&name).join("loop").is_dir()
    {
        return Ok(None);
    }
    let path = format!("/dev/{name}");
    let fd = match rustix::fs::open(&*path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NXIO) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // The node must be the device it is named for (a stale or foreign node proves nothing).
    let rdev = rustix::fs::fstat(&fd)?.st_rdev;
    if rustix::fs::major(rdev) != major || rustix::fs::minor(rdev) != minor {
        return Ok(None);
    }
    match status(fd.as_fd()) {
        Ok(info) => Ok(Some((info.lo_device, info.lo_inode))),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The loop devices attached now to the file with (device, inode) `file` (in
/// `loop_info64.lo_device`'s encoding), whose path is `path`, by name: each `/sys/block/loopN`
/// asked by its number. A device that cannot be asked (no node for it in this /dev, as in a
/// container) is counted when the backing file sysfs names for it is `path`: a device on the
/// file must never go unseen.
pub fn attached_to(file: (u64, u64), path: &std::path::Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/sys/block")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(dev) = std::fs::read_to_string(entry.path().join("dev")) else { continue };
        let Some((major, minor)) = dev.trim().split_once(':') else { continue };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else { continue };
        match backing_of(major, minor)? {
            Some(backing) if backing == file => out.push(name),
            Some(_) => {}
            None => {
                // Detached (no backing file in sysfs), or attached but not askable here.
                let named = std::fs::read(entry.path().join("loop/backing_file"));
                if named.is_ok_and(|n| n.trim_ascii_end() == path.as_os_str().as_encoded_bytes()) {
                    out.push(name);
                }
            }
        }
    }
    Ok(out)
}

// linux/fiemap.h: #define FS_IOC_FIEMAP _IOWR('f', 11, struct fiemap)
#[repr(C)]
struct Fiemap {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}
const _: () = assert!(std::mem::size_of::<Fiemap>() == 32);
nix::ioctl_readwrite!(ioctl_fiemap, b'f', 11, Fiemap);

/// How many extents the open file `fd` has: FIEMAP with no room for extents, which only counts
/// them. A reflink's cost is proportional to this.
pub fn extent_count(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut map = Fiemap {
        fm_start: 0,
        fm_length: u64::MAX,
        fm_flags: 0,
        fm_mapped_extents: 0,
        fm_extent_count: 0,
        fm_reserved: 0,
    };
    // SAFETY: `fd` is open; with fm_extent_count 0 the kernel writes only the header, which is
    // `map`, live and fully initialised.
    unsafe { ioctl_fiemap(fd.as_raw_fd(), &mut map) }.map_err(io::Error::from)?;
    Ok(u64::from(map.fm_mapped_extents))
}
