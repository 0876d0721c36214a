//! btrfs subvolume ioctls: create, snapshot, delete, read-only flag, subvolume id. No `btrfs`
//! binary.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

// linux/btrfs.h
const BTRFS_PATH_NAME_MAX: usize = 4087;
const BTRFS_SUBVOL_NAME_MAX: usize = 4039;
/// `BTRFS_SUBVOL_RDONLY`: the snapshot (or subvolume flag) is read-only.
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2` (the size/qgroup union is 4 u64s; the name union is the name).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; BTRFS_SUBVOL_NAME_MAX + 1],
}

const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);

nix::ioctl_write_ptr!(ioctl_subvol_create, 0x94, 14, VolArgs);
nix::ioctl_write_ptr!(ioctl_snap_destroy, 0x94, 15, VolArgs);
nix::ioctl_write_ptr!(ioctl_snap_create_v2, 0x94, 23, VolArgsV2);
nix::ioctl_read!(ioctl_subvol_getflags, 0x94, 25, u64);
nix::ioctl_write_ptr!(ioctl_subvol_setflags, 0x94, 26, u64);

fn copy_name(dst: &mut [u8], name: &CStr) -> io::Result<()> {
    let bytes = name.to_bytes();
    if bytes.len() >= dst.len() || bytes.is_empty() || bytes.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    dst[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// Create an empty subvolume `name` in the directory `parent`.
pub fn subvol_create(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let mut args = VolArgs { fd: 0, name: [0; BTRFS_PATH_NAME_MAX + 1] };
    copy_name(&mut args.name, name)?;
    // SAFETY: `parent` is open; `args` is a live, fully initialised btrfs_ioctl_vol_args.
    unsafe { ioctl_subvol_create(parent.as_raw_fd(), &args) }.map(drop).map_err(io::Error::from)
}

/// Snapshot the subvolume `source` as `name` in the directory `parent`, read-only if asked.
pub fn snapshot(
    source: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    name: &CStr,
    read_only: bool,
) -> io::Result<()> {
    let mut args = VolArgsV2 {
        fd: source.as_raw_fd() as i64,
        transid: 0,
        flags: if read_only { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; BTRFS_SUBVOL_NAME_MAX + 1],
    };
    copy_name(&mut args.name, name)?;
    // SAFETY: both fds are open; `args` is a live, fully initialised btrfs_ioctl_vol_args_v2.
    unsafe { ioctl_snap_create_v2(parent.as_raw_fd(), &args) }.map(drop).map_err(io::Error::from)
}

/// Delete the subvolume `name` in the directory `parent`, with everything in it.
pub fn subvol_delete(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let mut args = VolArgs { fd: 0, name: [0; BTRFS_PATH_NAME_MAX + 1] };
    copy_name(&mut args.name, name)?;
    // SAFETY: `parent` is open; `args` is a live, fully initialised btrfs_ioctl_vol_args.
    unsafe { ioctl_snap_destroy(parent.as_raw_fd(), &args) }.map(drop).map_err(io::Error::from)
}

/// Make the open subvolume `subvol` read-only (or writable again).
pub fn set_read_only(subvol: BorrowedFd<'_>, read_only: bool) -> io::Result<()> {
    let mut flags: u64 = 0;
    // SAFETY: `subvol` is open; the kernel writes one u64 into `flags`.
    unsafe { ioctl_subvol_getflags(subvol.as_raw_fd(), &mut flags) }.map_err(io::Error::from)?;
    flags = if read_only { flags | BTRFS_SUBVOL_RDONLY } else { flags & !BTRFS_SUBVOL_RDONLY };
    // SAFETY: `subvol` is open; the kernel reads one u64 from `flags`.
    unsafe { ioctl_subvol_setflags(subvol.as_raw_fd(), &flags) }.map(drop).map_err(io::Error::from)
}

/// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every btrfs subvolume's root directory.
pub const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

/// `struct btrfs_ioctl_ino_lookup_args` from linux/btrfs.h (4096 bytes).
#[repr(C)]
pub struct BtrfsInoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

// linux/btrfs.h: #define BTRFS_IOC_INO_LOOKUP _IOWR(BTRFS_IOCTL_MAGIC, 18, struct btrfs_ioctl_ino_lookup_args)
nix::ioctl_readwrite!(ioctl_btrfs_ino_lookup, 0x94, 18, BtrfsInoLookupArgs);

/// The id of the btrfs subvolume holding the open file `fd` (5 for the top-level subvolume).
///
/// Uses `BTRFS_IOC_INO_LOOKUP` with `treeid = 0, objectid = BTRFS_FIRST_FREE_OBJECTID`, the one
/// form of that ioctl the kernel answers without CAP_SYS_ADMIN. ENOTTY on other filesystems.
pub fn btrfs_subvolume_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut args =
        BtrfsInoLookupArgs { treeid: 0, objectid: BTRFS_FIRST_FREE_OBJECTID, name: [0; 4080] };
    // SAFETY: `fd` is open for the call; `args` is a live, correctly laid out
    // btrfs_ioctl_ino_lookup_args that the kernel reads and writes within its 4096 bytes.
    unsafe { ioctl_btrfs_ino_lookup(fd.as_raw_fd(), &mut args) }.map_err(io::Error::from)?;
    Ok(args.treeid)
}

const _: () = assert!(std::mem::size_of::<BtrfsInoLookupArgs>() == 4096);

// linux/btrfs_tree.h: the quota tree and its items.
const BTRFS_QUOTA_TREE_OBJECTID: u64 = 8;
const BTRFS_QGROUP_STATUS_KEY: u32 = 240;
const BTRFS_QGROUP_INFO_KEY: u32 = 242;
const BTRFS_QGROUP_STATUS_FLAG_ON: u64 = 1 << 0;
const BTRFS_QGROUP_STATUS_FLAG_RESCAN: u64 = 1 << 1;
const BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT: u64 = 1 << 2;
const BTRFS_QGROUP_STATUS_FLAG_SIMPLE_MODE: u64 = 1 << 3;

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: [u64; 4],
}

/// `struct btrfs_ioctl_search_args`: the key, then items as (`struct
/// btrfs_ioctl_search_header`, item) pairs.
#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf: [u8; 4096 - std::mem::size_of::<SearchKey>()],
}

const _: () = assert!(std::mem::size_of::<SearchKey>() == 104);
const _: () = assert!(std::mem::size_of::<SearchArgs>() == 4096);
/// `struct btrfs_ioctl_search_header`: transid, objectid, offset (u64), type, len (u32).
const SEARCH_HEADER_LEN: usize = 32;

nix::ioctl_readwrite!(ioctl_tree_search, 0x94, 17, SearchArgs);

/// The item of the quota tree with key (0, `key_type`, `offset`), if there is one.
fn quota_item(fd: BorrowedFd<'_>, key_type: u32, offset: u64) -> io::Result<Option<Vec<u8>>> {
    let mut args = SearchArgs {
        key: SearchKey {
            tree_id: BTRFS_QUOTA_TREE_OBJECTID,
            min_objectid: 0,
            max_objectid: 0,
            min_offset: offset,
            max_offset: offset,
            min_transid: 0,
            max_transid: u64::MAX,
            min_type: key_type,
            max_type: key_type,
            nr_items: 1,
            unused: 0,
            unused1: [0; 4],
        },
        buf: [0; 4096 - std::mem::size_of::<SearchKey>()],
    };
    // SAFETY: `fd` is open; `args` is a live, fully initialised btrfs_ioctl_search_args that the
    // kernel reads and writes within its 4096 bytes.
    match unsafe { ioctl_tree_search(fd.as_raw_fd(), &mut args) } {
        Ok(_) => {}
        // No quota tree: quotas were never enabled.
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    if args.key.nr_items == 0 {
        return Ok(None);
    }
    let u32_at = |at: usize| u32::from_ne_bytes(args.buf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_ne_bytes(args.buf[at..at + 8].try_into().unwrap());
    // The search is bounded to one key, but check what came back rather than trust it.
    let (objectid, item_offset, item_type, len) = (u64_at(8), u64_at(16), u32_at(24), u32_at(28));
    let len = len as usize;
    if objectid != 0 || item_offset != offset || item_type != key_type {
        return Ok(None);
    }
    let item = args.buf.get(SEARCH_HEADER_LEN..SEARCH_HEADER_LEN + len);
    Ok(item.map(<[u8]>::to_vec))
}

/// The bytes the subvolume `subvol_id` references, as its level-0 qgroup counts them, where
/// that count is kept and exact: quotas on, neither inconsistent nor being rescanned, and not
/// simple quotas (which charge shared extents to the subvolume that wrote them, not to every
/// snapshot that references them). `None` where there is no such count.
///
/// Reads the quota tree with `BTRFS_IOC_TREE_SEARCH` (CAP_SYS_ADMIN; EPERM without it). The
/// counts are those of the last committed transaction.
pub fn qgroup_referenced(fd: BorrowedFd<'_>, subvol_id: u64) -> io::Result<Option<u64>> {
    // struct btrfs_qgroup_status_item: version, generation, flags, rescan (le64 each).
    let Some(status) = quota_item(fd, BTRFS_QGROUP_STATUS_KEY, 0)? else { return Ok(None) };
    let le64 =
        |b: &[u8], at: usize| b.get(at..at + 8).map(|s| u64::from_le_bytes(s.try_into().unwrap()));
    let Some(flags) = le64(&status, 16) else { return Ok(None) };
    let unusable = BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT
        | BTRFS_QGROUP_STATUS_FLAG_RESCAN
        | BTRFS_QGROUP_STATUS_FLAG_SIMPLE_MODE;
    if flags & BTRFS_QGROUP_STATUS_FLAG_ON == 0 || flags & unusable != 0 {
        return Ok(None);
    }
    // struct btrfs_qgroup_info_item: generation, rfer, rfer_cmpr, excl, excl_cmpr (le64 each);
    // a level-0 qgroup's id is its subvolume's id.
    let Some(info) = quota_item(fd, BTRFS_QGROUP_INFO_KEY, subvol_id)? else { return Ok(None) };
    Ok(le64(&info, 8))
}
