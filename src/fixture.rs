//! Sample docker-like trees, for the demo, the benchmark and the copy tests.
//!
//! [`build`] writes a tree shaped like `/var/lib/docker` with the overlay2 storage driver:
//!
//! ```text
//! overlay2/<64-hex layer id>/{diff/<usr/lib/...>, link, lower, work/, committed}
//! overlay2/l/<26-char short id> -> ../<layer id>/diff
//! image/overlay2/{layerdb/sha256/<chain id>/{cache-id,diff,size,parent,tar-split.json.gz},
//!                 imagedb/content/sha256/<image id>, repositories.json}
//! containers/<id>/{config.v2.json, hostconfig.json, hostname, hosts, resolv.conf, <id>-json.log}
//! volumes/{metadata.db, <name>/_data/...}
//! buildkit/{cache.db, metadata_v2.db, snapshots.db, content/ingest/, executor/}
//! network/files/local-kv.db, plugins/, runtimes/, swarm/, tmp/, trust/
//! ```
//!
//! File contents come from a xorshift generator seeded by [`FixtureSpec::seed`], and every
//! entry's mtime and atime are set last, from a hash of its path, to distinct nanosecond values.
//! So two builds from the same spec are identical in everything [`crate::treediff::compare`]
//! checks: a test can compare a copy against a second, untouched build instead of against a
//! source whose atimes the copy itself may have changed.
//!
//! Whiteouts (character devices 0/0), `trusted.*` xattrs, foreign owners and device nodes need
//! root; [`FixtureSpec::whiteouts`] and [`FixtureSpec::fidelity_extras`] then fail with
//! `EPERM` for anyone else.

use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::sys::xattr;
use crate::{Context, Error, Result};

/// The other owner used for foreign-owned entries in [`FixtureSpec::fidelity`] trees.
pub const OTHER_UID: u32 = 1234;
/// The other group used for foreign-owned entries.
pub const OTHER_GID: u32 = 2345;
/// Size of the sparse file in fidelity trees.
pub const SPARSE_SIZE: u64 = 64 << 20;

/// How big regular files are: most are small (a power-law-ish spread over `0..=small_max`), one in
/// `large_one_in` is a large binary of `large_min..=large_max` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeMix {
    /// Upper bound of small files, bytes.
    pub small_max: u64,
    /// One file in this many is large (0 = none).
    pub large_one_in: u32,
    /// Smallest large file, bytes.
    pub large_min: u64,
    /// Largest large file, bytes.
    pub large_max: u64,
}

impl Default for SizeMix {
    /// Mostly 0–16 KiB files, one in a thousand a 1–4 MiB binary.
    fn default() -> Self {
        SizeMix { small_max: 16 << 10, large_one_in: 1000, large_min: 1 << 20, large_max: 4 << 20 }
    }
}

/// What [`build`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureSpec {
    /// Number of overlay2 image layers.
    pub layers: usize,
    /// Package directories per layer (`diff/usr/lib/.../l<layer>-pkg<n>`).
    pub dirs_per_layer: usize,
    /// Regular files per package directory.
    pub files_per_dir: usize,
    /// File size distribution.
    pub file_size: SizeMix,
    /// Hardlinks within layers (`diff/usr/bin/*` linked to files in package directories).
    pub hardlinks: bool,
    /// Whiteouts (char devices 0/0) and opaque directories (`trusted.overlay.opaque=y`) in
    /// layers after the first. Needs root.
    pub whiteouts: bool,
    /// The special cases of [`FixtureSpec::fidelity`] under `special/`. Needs root.
    pub fidelity_extras: bool,
    /// Seed of the content generator and the timestamps.
    pub seed: u64,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl FixtureSpec {
    /// About 5,000 entries and 20 MB: quick enough for `goldclone demo`. Whiteouts only when
    /// running as root.
    pub fn demo() -> Self {
        FixtureSpec {
            layers: 4,
            dirs_per_layer: 60,
            files_per_dir: 20,
            file_size: SizeMix::default(),
            hardlinks: true,
            whiteouts: is_root(),
            fidelity_extras: false,
            seed: 0x601d_c10e,
        }
    }

    /// At least `entries` entries (and at least 100,000) in a docker-like shape: 12 layers of
    /// package directories with 15 files each; about 6 KB per entry on average (100,000
    /// entries: 580 MB). Whiteouts only when running as root.
    pub fn bench(entries: usize) -> Self {
        let entries = entries.max(100_000);
        let (layers, files_per_dir) = (12, 15);
        let dirs_per_layer = entries.div_ceil(layers * (files_per_dir + 1));
        FixtureSpec {
            layers,
            dirs_per_layer,
            files_per_dir,
            file_size: SizeMix::default(),
            hardlinks: true,
            whiteouts: is_root(),
            fidelity_extras: false,
            seed: 0xbe4c_0001,
        }
    }

    /// A small tree with every case an exact copy must get right: whiteouts and opaque
    /// directories, `trusted.overlay.redirect`, hardlinks across and within directories, a
    /// 64 MiB sparse file, a multi-MiB file, a fifo and device nodes, dangling, absolute,
    /// relative and directory symlinks (one with a `trusted.*` xattr), names with newlines, tabs
    /// and non-UTF-8 bytes, a 255-byte name, a 40-deep directory chain, a read-only directory
    /// with files, setuid/setgid files owned by [`OTHER_UID`], a sticky directory, ACLs (access
    /// and default), user, trusted and security xattrs (a file capability), empty files and
    /// directories, and distinct nanosecond times on everything. Needs root.
    pub fn fidelity() -> Self {
        FixtureSpec {
            layers: 3,
            dirs_per_layer: 4,
            files_per_dir: 5,
            file_size: SizeMix {
                small_max: 16 << 10,
                large_one_in: 20,
                large_min: 1 << 20,
                large_max: 2 << 20,
            },
            hardlinks: true,
            whiteouts: true,
            fidelity_extras: true,
            seed: 0xf1de_1175,
        }
    }
}

/// What [`build`] made, counted by a walk of the finished tree (the root not included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FixtureStats {
    /// Directory entries of every kind (a hardlinked inode counts once per path).
    pub entries: u64,
    /// Directories.
    pub dirs: u64,
    /// Regular files, each inode once.
    pub files: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Fifos, sockets and device nodes (whiteouts included).
    pub specials: u64,
    /// Paths that are additional links to an inode already counted.
    pub hardlinks: u64,
    /// Sum of regular file sizes, each inode once (apparent size, holes included).
    pub bytes: u64,
}

/// Build the tree `spec` describes at `root`, which must not exist or be an empty directory.
pub fn build(root: &Path, spec: &FixtureSpec) -> Result<FixtureStats> {
    match std::fs::symlink_metadata(root) {
        Ok(m) if m.is_dir() => {
            let mut it = std::fs::read_dir(root).at("readdir", root)?;
            if it.next().is_some() {
                return Err(Error::AlreadyExists { path: root.to_path_buf() });
            }
        }
        Ok(_) => return Err(Error::NotADirectory { path: root.to_path_buf() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(root).at("mkdir", root)?;
        }
        Err(e) => return Err(Error::io("lstat", root, e)),
    }
    if (spec.whiteouts || spec.fidelity_extras) && !is_root() {
        return Err(Error::from_errno(
            "build fixture (whiteouts and fidelity extras need root)",
            root,
            libc::EPERM,
        ));
    }
    let mut b = Builder { root, rng: Rng::new(spec.seed), spec };
    b.docker()?;
    if spec.fidelity_extras {
        b.extras()?;
    }
    let mut stats = FixtureStats::default();
    let mut seen = HashSet::new();
    set_times_and_count(root, Path::new(""), spec.seed, &mut seen, &mut stats)?;
    Ok(stats)
}

/// xorshift64* — small, fast, good enough for file contents and names.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next() % (hi - lo + 1)
        }
    }
    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let v = self.next().to_le_bytes();
        rest.copy_from_slice(&v[..rest.len()]);
    }
    fn hex(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b"0123456789abcdef"[(self.next() % 16) as usize])).collect()
    }
    fn short_id(&mut self) -> String {
        (0..26)
            .map(|_| {
                char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[(self.next() % 36) as usize])
            })
            .collect()
    }
}

/// A stable 64-bit hash (FNV-1a then a finalizer) of the seed and a path.
fn path_hash(seed: u64, rel: &[u8], salt: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in rel {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// The (atime, mtime) every entry gets: mtimes in 2017–2020, atimes a little later, all with
/// nanoseconds.
fn times_for(seed: u64, rel: &[u8]) -> (TimeSpec, TimeSpec) {
    let h1 = path_hash(seed, rel, 1);
    let h2 = path_hash(seed, rel, 2);
    let msec = 1_500_000_000 + (h1 % 100_000_000) as i64;
    let mnsec = ((h1 >> 32) % 1_000_000_000) as i64;
    let asec = msec + 1 + (h2 % 10_000_000) as i64;
    let ansec = ((h2 >> 32) % 1_000_000_000) as i64;
    (TimeSpec::new(asec, ansec), TimeSpec::new(msec, mnsec))
}

/// Post-order walk in name order: count, and set times on each inode at its first path, each
/// directory after its contents.
fn set_times_and_count(
    root: &Path,
    rel: &Path,
    seed: u64,
    seen: &mut HashSet<(u64, u64)>,
    stats: &mut FixtureStats,
) -> Result<()> {
    let dir = if rel.as_os_str().is_empty() { root.to_path_buf() } else { root.join(rel) };
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .at("readdir", &dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .at("readdir", &dir)?;
    names.sort();
    for name in names {
        let r = rel.join(&name);
        let p = root.join(&r);
        let m = std::fs::symlink_metadata(&p).at("lstat", &p)?;
        stats.entries += 1;
        let ft = m.file_type();
        if ft.is_dir() {
            stats.dirs += 1;
            set_times_and_count(root, &r, seed, seen, stats)?;
        } else if !seen.insert((m.dev(), m.ino())) {
            stats.hardlinks += 1;
            continue;
        } else if ft.is_file() {
            stats.files += 1;
            stats.bytes += m.size();
        } else if ft.is_symlink() {
            stats.symlinks += 1;
        } else {
            stats.specials += 1;
        }
        set_times(&p, r.as_os_str().as_bytes(), seed)?;
    }
    set_times(&dir, rel.as_os_str().as_bytes(), seed)
}

fn set_times(p: &Path, rel: &[u8], seed: u64) -> Result<()> {
    let (a, m) = times_for(seed, rel);
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, p, &a, &m, UtimensatFlags::NoFollowSymlink)
        .at("utimensat", p)
}

/// Package directory prefixes inside a layer's `diff/`.
const PREFIXES: &[&str] = &[
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/python3/dist-packages",
    "usr/share/doc",
    "usr/include",
    "usr/share/locale/de/LC_MESSAGES",
    "var/lib/dpkg/info",
    "opt/app/node_modules",
    "etc",
];
const EXTS: &[&str] = &[".so", ".py", ".h", ".json", ".txt", "", ".js", ".mo", ".conf", ".pyc"];

struct Builder<'a> {
    root: &'a Path,
    rng: Rng,
    spec: &'a FixtureSpec,
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::from_errno("path with NUL", p, libc::EINVAL))
}

/// The kernel's binary form of a POSIX ACL (`system.posix_acl_access`/`_default`): a version-2
/// header, then (tag, perm, id) entries sorted by tag and id.
pub fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// ACL entry tags (linux/posix_acl.h).
pub mod acl {
    /// Owner.
    pub const USER_OBJ: u16 = 0x01;
    /// A named user.
    pub const USER: u16 = 0x02;
    /// Owning group.
    pub const GROUP_OBJ: u16 = 0x04;
    /// A named group.
    pub const GROUP: u16 = 0x08;
    /// Mask.
    pub const MASK: u16 = 0x10;
    /// Others.
    pub const OTHER: u16 = 0x20;
    /// The id of entries that have none.
    pub const UNDEFINED_ID: u32 = u32::MAX;
}

impl Builder<'_> {
    fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    fn mkdir(&self, rel: impl AsRef<Path>) -> Result<PathBuf> {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).at("mkdir", &p)?;
        Ok(p)
    }

    fn write(&self, rel: impl AsRef<Path>, data: &[u8]) -> Result<PathBuf> {
        let p = self.path(rel);
        std::fs::write(&p, data).at("write", &p)?;
        Ok(p)
    }

    /// A file of `size` pseudo-random bytes.
    fn random_file(&mut self, rel: impl AsRef<Path>, size: u64) -> Result<PathBuf> {
        let p = self.path(rel);
        let mut f = File::create(&p).at("create", &p)?;
        let mut buf = vec![0u8; (size as usize).min(1 << 20)];
        let mut left = size;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            self.rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n]).at("write", &p)?;
            left -= n as u64;
        }
        Ok(p)
    }

    fn file_size(&mut self) -> u64 {
        let mix = &self.spec.file_size;
        if mix.large_one_in > 0 && self.rng.next() % u64::from(mix.large_one_in) == 0 {
            return self.rng.range(mix.large_min, mix.large_max);
        }
        // 3% empty, 60% up to 1/8 of the maximum, the rest up to the maximum.
        match self.rng.next() % 100 {
            0..=2 => 0,
            3..=62 => self.rng.range(1, mix.small_max / 8),
            _ => self.rng.range(1, mix.small_max),
        }
    }

    fn symlink(&self, target: impl AsRef<Path>, rel: impl AsRef<Path>) -> Result<PathBuf> {
        let p = self.path(rel);
        std::os::unix::fs::symlink(target, &p).at("symlink", &p)?;
        Ok(p)
    }

    fn link(&self, existing: impl AsRef<Path>, rel: impl AsRef<Path>) -> Result<()> {
        let (src, p) = (self.path(existing), self.path(rel));
        std::fs::hard_link(&src, &p).at("link", &p)
    }

    fn mknod(
        &self,
        rel: impl AsRef<Path>,
        kind: SFlag,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<PathBuf> {
        let p = self.path(rel);
        nix::sys::stat::mknod(
            &p,
            kind,
            Mode::from_bits_truncate(perm),
            libc::makedev(major, minor),
        )
        .at("mknod", &p)?;
        Ok(p)
    }

    fn xattr(&self, p: &Path, name: &CStr, value: &[u8]) -> Result<()> {
        xattr::lset(&cstr(p)?, name, value).at("lsetxattr", p)
    }

    fn chmod(&self, p: &Path, mode: u32) -> Result<()> {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).at("chmod", p)
    }

    fn chown(&self, p: &Path, uid: u32, gid: u32) -> Result<()> {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).at("lchown", p)
    }

    /// The docker-like part.
    fn docker(&mut self) -> Result<()> {
        let spec = self.spec;
        self.mkdir("overlay2/l")?;
        let mut layer_ids: Vec<(String, String)> = Vec::new();
        let mut chain_parent: Option<String> = None;
        for layer in 0..spec.layers {
            let id = self.rng.hex(64);
            let short = self.rng.short_id();
            let base = PathBuf::from("overlay2").join(&id);
            let diff = base.join("diff");
            self.mkdir(&diff)?;
            self.mkdir(base.join("work"))?;
            self.write(base.join("link"), short.as_bytes())?;
            self.symlink(format!("../{id}/diff"), format!("overlay2/l/{short}"))?;
            if layer > 0 {
                let lower: Vec<String> =
                    layer_ids.iter().rev().map(|(_, s)| format!("l/{s}")).collect();
                self.write(base.join("lower"), lower.join(":").as_bytes())?;
                self.write(base.join("committed"), b"")?;
            }
            let mut files_in_layer: Vec<PathBuf> = Vec::new();
            for d in 0..spec.dirs_per_layer {
                let dir =
                    diff.join(PREFIXES[d % PREFIXES.len()]).join(format!("l{layer}-pkg{d:05}"));
                self.mkdir(&dir)?;
                for f in 0..spec.files_per_dir {
                    let name = format!("file{f:03}{}", EXTS[(d + f) % EXTS.len()]);
                    let size = self.file_size();
                    self.random_file(dir.join(&name), size)?;
                    if f == 0 {
                        files_in_layer.push(dir.join(name));
                    }
                }
            }
            if spec.hardlinks && !files_in_layer.is_empty() {
                // Like dpkg's hardlinked binaries: a few usr/bin entries linked into packages.
                let bin = diff.join("usr/bin");
                self.mkdir(&bin)?;
                let n = (files_in_layer.len() / 10).clamp(1, 50);
                for (k, f) in
                    files_in_layer.iter().step_by(files_in_layer.len().div_ceil(n)).enumerate()
                {
                    self.link(f, bin.join(format!("tool{k:03}")))?;
                }
            }
            if spec.whiteouts && layer > 0 {
                // The previous layer's first package directory deleted: a whiteout at its path.
                let victim = PathBuf::from(PREFIXES[0]).join(format!("l{}-pkg00000", layer - 1));
                self.mkdir(diff.join(PREFIXES[0]))?;
                self.mknod(diff.join(&victim), SFlag::S_IFCHR, 0, 0, 0)?;
                self.mkdir(diff.join("etc"))?;
                self.mknod(
                    diff.join(format!("etc/removed-by-layer{layer}.conf")),
                    SFlag::S_IFCHR,
                    0,
                    0,
                    0,
                )?;
                // An opaque directory: this layer's var/cache/apt hides everything below it.
                self.mkdir(diff.join("var/cache/apt/archives/partial"))?;
                self.random_file(diff.join("var/cache/apt/pkgcache.bin"), 3000)?;
                let opaque = self.path(diff.join("var/cache/apt"));
                self.xattr(&opaque, c"trusted.overlay.opaque", b"y")?;
            }
            // image/overlay2/layerdb
            let chain = self.rng.hex(64);
            let ldb = PathBuf::from("image/overlay2/layerdb/sha256").join(&chain);
            self.mkdir(&ldb)?;
            self.write(ldb.join("cache-id"), id.as_bytes())?;
            let diffid = format!("sha256:{}", self.rng.hex(64));
            self.write(ldb.join("diff"), diffid.as_bytes())?;
            let size = (spec.dirs_per_layer * spec.files_per_dir * 4000).to_string();
            self.write(ldb.join("size"), size.as_bytes())?;
            if let Some(parent) = &chain_parent {
                self.write(ldb.join("parent"), format!("sha256:{parent}").as_bytes())?;
            }
            let ts = self.rng.range(200, 16 << 10);
            self.random_file(ldb.join("tar-split.json.gz"), ts)?;
            chain_parent = Some(chain);
            layer_ids.push((id, short));
        }
        // image db
        let image_id = self.rng.hex(64);
        self.mkdir("image/overlay2/imagedb/content/sha256")?;
        self.mkdir("image/overlay2/imagedb/metadata/sha256")?;
        self.mkdir("image/overlay2/distribution/diffid-by-digest/sha256")?;
        let layers_json: Vec<String> =
            layer_ids.iter().map(|(id, _)| format!("\"sha256:{id}\"")).collect();
        let config = format!(
            "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
            layers_json.join(",")
        );
        self.write(format!("image/overlay2/imagedb/content/sha256/{image_id}"), config.as_bytes())?;
        self.write(
            "image/overlay2/repositories.json",
            format!(
                "{{\"Repositories\":{{\"golden\":{{\"golden:latest\":\"sha256:{image_id}\"}}}}}}"
            )
            .as_bytes(),
        )?;
        // containers
        for _ in 0..2 {
            let cid = self.rng.hex(64);
            let c = PathBuf::from("containers").join(&cid);
            self.mkdir(c.join("mounts"))?;
            self.mkdir(c.join("checkpoints"))?;
            self.write(
                c.join("config.v2.json"),
                format!("{{\"ID\":\"{cid}\",\"Image\":\"sha256:{image_id}\"}}").as_bytes(),
            )?;
            self.write(c.join("hostconfig.json"), b"{\"NetworkMode\":\"default\"}")?;
            self.write(c.join("hostname"), &cid.as_bytes()[..12])?;
            self.write(c.join("hosts"), b"127.0.0.1\tlocalhost\n")?;
            self.write(c.join("resolv.conf"), b"nameserver 10.0.0.2\n")?;
            let log = self.rng.range(1000, 64 << 10);
            self.random_file(c.join(format!("{cid}-json.log")), log)?;
        }
        // volumes
        self.mkdir("volumes")?;
        self.random_file("volumes/metadata.db", 32 << 10)?;
        for v in 0..2 {
            let data = PathBuf::from("volumes").join(format!("cache-vol{v}")).join("_data");
            self.mkdir(&data)?;
            for f in 0..5 {
                let s = self.file_size();
                self.random_file(data.join(format!("entry{f}.bin")), s)?;
            }
        }
        // buildkit and the rest
        self.mkdir("buildkit/content/ingest")?;
        self.mkdir("buildkit/executor")?;
        for db in ["cache.db", "metadata_v2.db", "snapshots.db", "containerdmeta.db"] {
            self.random_file(PathBuf::from("buildkit").join(db), 16 << 10)?;
        }
        self.mkdir("network/files")?;
        self.random_file("network/files/local-kv.db", 32 << 10)?;
        for d in ["plugins", "runtimes", "swarm", "tmp", "trust"] {
            self.mkdir(d)?;
        }
        Ok(())
    }

    /// The special cases, under `special/` (and one redirect in the first layer).
    fn extras(&mut self) -> Result<()> {
        let s = PathBuf::from("special");
        self.mkdir(&s)?;

        // Data shapes.
        let sparse = self.path(s.join("sparse-64m"));
        {
            let mut f = File::create(&sparse).at("create", &sparse)?;
            let mut buf = vec![0u8; 256 << 10];
            for (off, len) in [
                (0u64, 4096usize),
                (1 << 20, 64 << 10),
                ((17 << 20) + 123, 100_000),
                (40 << 20, 256 << 10),
            ] {
                self.rng.fill(&mut buf[..len]);
                f.seek(SeekFrom::Start(off)).at("lseek", &sparse)?;
                f.write_all(&buf[..len]).at("write", &sparse)?;
            }
            f.set_len(SPARSE_SIZE).at("ftruncate", &sparse)?;
        }
        self.random_file(s.join("big-6m.bin"), (6 << 20) + 4321)?;
        self.write(s.join("empty"), b"")?;
        self.mkdir(s.join("empty-dir"))?;

        // Special files.
        let fifo = self.path(s.join("fifo"));
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o640)).at("mkfifo", &fifo)?;
        self.mknod(s.join("whiteout"), SFlag::S_IFCHR, 0, 0, 0)?;
        self.mknod(s.join("null"), SFlag::S_IFCHR, 0o666, 1, 3)?;
        self.mknod(s.join("loop200"), SFlag::S_IFBLK, 0o660, 7, 200)?;

        // Symlinks.
        self.mkdir(s.join("files"))?;
        self.write(s.join("files/small.txt"), b"small\n")?;
        self.symlink("../nowhere/missing", s.join("dangling"))?;
        self.symlink("/etc/hostname", s.join("absolute"))?;
        self.symlink("files/small.txt", s.join("relative"))?;
        self.symlink("files", s.join("dirlink"))?;
        let lx = self.symlink("files/small.txt", s.join("link-with-xattr"))?;
        self.xattr(&lx, c"trusted.x", b"on a symlink")?;
        let lo = self.symlink("../special/files", s.join("link-owned"))?;
        self.chown(&lo, OTHER_UID, OTHER_GID)?;

        // Names.
        let names = self.mkdir(s.join("names"))?;
        for n in [
            &b"new\nline"[..],
            b"tab\there",
            b"bad\xff\xfebytes",
            b"sp ace",
            b"-dash",
            b"\xe2\x98\x83snowman",
        ] {
            let p = names.join(OsStr::from_bytes(n));
            std::fs::write(&p, n).at("write", &p)?;
        }
        let long = "L".repeat(255);
        self.write(s.join("names").join(&long), b"255-byte name")?;
        let odd_dir = names.join(OsStr::from_bytes(b"dir\nwith\xffodd"));
        std::fs::create_dir(&odd_dir).at("mkdir", &odd_dir)?;
        std::fs::write(odd_dir.join("inside"), b"x").at("write", &odd_dir)?;

        // A 40-deep chain.
        let mut deep = s.join("deep");
        for i in 0..40 {
            deep.push(format!("d{i:02}"));
        }
        self.mkdir(&deep)?;
        self.write(deep.join("leaf.txt"), b"bottom")?;

        // Owners and modes.
        let suid = self.random_file(s.join("suid-sgid"), 5000)?;
        self.chown(&suid, OTHER_UID, OTHER_GID)?;
        self.chmod(&suid, 0o6755)?;
        let suid2 = self.random_file(s.join("suid-root-group"), 300)?;
        self.chown(&suid2, OTHER_UID, 0)?;
        self.chmod(&suid2, 0o4755)?;
        let sticky = self.mkdir(s.join("sticky"))?;
        self.chmod(&sticky, 0o1777)?;
        let tf = self.write(s.join("sticky/tmpfile"), b"t")?;
        self.chown(&tf, OTHER_UID, OTHER_GID)?;
        self.chmod(&tf, 0o600)?;
        let odd = self.write(s.join("mode-0000"), b"unreadable to others")?;
        self.chmod(&odd, 0o000)?;
        // A file capability (cap_net_raw+ep), as `ping` carries. Set after chown, which drops it.
        let cap = self.random_file(s.join("ping"), 2000)?;
        self.chown(&cap, 0, OTHER_GID)?;
        self.chmod(&cap, 0o755)?;
        let mut capv = Vec::new();
        capv.extend_from_slice(&0x0200_0001u32.to_le_bytes()); // VFS_CAP_REVISION_2 | EFFECTIVE
        capv.extend_from_slice(&(1u32 << 13).to_le_bytes()); // permitted[0]: CAP_NET_RAW
        capv.extend_from_slice(&0u32.to_le_bytes()); // inheritable[0]
        capv.extend_from_slice(&0u32.to_le_bytes()); // permitted[1]
        capv.extend_from_slice(&0u32.to_le_bytes()); // inheritable[1]
        self.xattr(&cap, c"security.capability", &capv)?;

        // Hardlinks: three paths in three directories, and a pair within one directory.
        self.mkdir(s.join("links/a"))?;
        self.mkdir(s.join("links/b"))?;
        self.random_file(s.join("links/a/one"), 7000)?;
        self.link(s.join("links/a/one"), s.join("links/b/two"))?;
        self.link(s.join("links/a/one"), s.join("three"))?;
        self.random_file(s.join("links/a/x"), 100)?;
        self.link(s.join("links/a/x"), s.join("links/a/y"))?;

        // Xattrs in several namespaces, and ACLs.
        let xf = self.random_file(s.join("xattrs"), 1000)?;
        self.xattr(&xf, c"user.mime_type", b"application/octet-stream")?;
        self.xattr(&xf, c"user.empty", b"")?;
        self.xattr(&xf, c"user.binary", &[0, 1, 2, 0xff, 0, 10])?;
        self.xattr(&xf, c"trusted.overlay.origin", &[0, 0xfb, 0x21, 0x00, 0x01])?;
        let big: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        self.xattr(&xf, c"user.big", &big)?;
        let xd = self.mkdir(s.join("xattr-dir"))?;
        self.xattr(&xd, c"user.dir", b"yes")?;
        self.xattr(&xd, c"trusted.overlay.opaque", b"y")?;
        use acl::*;
        let af = self.random_file(s.join("acl-file"), 100)?;
        self.chmod(&af, 0o640)?;
        let access = acl_xattr(&[
            (USER_OBJ, 6, UNDEFINED_ID),
            (USER, 6, OTHER_UID),
            (GROUP_OBJ, 4, UNDEFINED_ID),
            (GROUP, 4, OTHER_GID),
            (MASK, 6, UNDEFINED_ID),
            (OTHER, 0, UNDEFINED_ID),
        ]);
        self.xattr(&af, c"system.posix_acl_access", &access)?;
        let ad = self.mkdir(s.join("acl-dir"))?;
        let dir_access = acl_xattr(&[
            (USER_OBJ, 7, UNDEFINED_ID),
            (USER, 5, OTHER_UID),
            (GROUP_OBJ, 5, UNDEFINED_ID),
            (MASK, 5, UNDEFINED_ID),
            (OTHER, 5, UNDEFINED_ID),
        ]);
        self.xattr(&ad, c"system.posix_acl_access", &dir_access)?;
        let dir_default = acl_xattr(&[
            (USER_OBJ, 7, UNDEFINED_ID),
            (USER, 7, OTHER_UID),
            (GROUP_OBJ, 5, UNDEFINED_ID),
            (GROUP, 7, OTHER_GID),
            (MASK, 7, UNDEFINED_ID),
            (OTHER, 0, UNDEFINED_ID),
        ]);
        self.xattr(&ad, c"system.posix_acl_default", &dir_default)?;
        // Created after the default ACL: inherits it (and a computed access ACL).
        self.write(s.join("acl-dir/inherited"), b"inherits the default ACL")?;
        self.mkdir(s.join("acl-dir/subdir"))?;

        // overlayfs metadata on a layer directory: a renamed directory.
        if self.spec.layers > 1 {
            let first_layer = self.first_layer_diff()?;
            let renamed = first_layer.join("opt/renamed");
            std::fs::create_dir_all(&renamed).at("mkdir", &renamed)?;
            self.xattr(&renamed, c"trusted.overlay.redirect", b"/opt/original")?;
        }

        // A read-only directory with files, last: nothing can be created in it afterwards.
        let ro = self.mkdir(s.join("readonly"))?;
        self.random_file(s.join("readonly/a"), 1234)?;
        let rb = self.write(s.join("readonly/b"), b"read-only file")?;
        self.chmod(&rb, 0o444)?;
        self.mkdir(s.join("readonly/sub"))?;
        self.chmod(&ro, 0o555)?;
        Ok(())
    }

    fn first_layer_diff(&self) -> Result<PathBuf> {
        // Layer ids are random; find one through overlay2/l, whose entries are name-sorted.
        let l = self.path("overlay2/l");
        let mut names: Vec<_> = std::fs::read_dir(&l)
            .at("readdir", &l)?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        let first =
            names.first().ok_or_else(|| Error::from_errno("no layers", &l, libc::ENOENT))?;
        let target = std::fs::read_link(l.join(first)).at("readlink", &l)?;
        Ok(l.join(target))
    }
}

/// Make every directory under `root` writable by its owner and remove the tree: fixture trees
/// hold read-only directories that plain `remove_dir_all` cannot empty. Missing `root` is fine.
pub fn remove(root: &Path) -> io::Result<()> {
    fn unlock(p: &Path) -> io::Result<()> {
        let m = std::fs::symlink_metadata(p)?;
        if !m.is_dir() {
            return Ok(());
        }
        if m.mode() & 0o700 != 0o700 {
            std::fs::set_permissions(
                p,
                std::fs::Permissions::from_mode((m.mode() | 0o700) & 0o7777),
            )?;
        }
        for e in std::fs::read_dir(p)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                unlock(&e.path())?;
            }
        }
        Ok(())
    }
    match unlock(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r?,
    }
    std::fs::remove_dir_all(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::treediff::{compare, AtimeScope, CompareOptions};

    fn tmp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("goldclone-fixture-{tag}-{}", std::process::id()))
    }

    struct Guard(Vec<PathBuf>);
    impl Drop for Guard {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = remove(p);
            }
        }
    }

    #[test]
    fn deterministic_demo() {
        let (a, b) = (tmp("demo-a"), tmp("demo-b"));
        let _g = Guard(vec![a.clone(), b.clone()]);
        let spec = FixtureSpec::demo();
        let sa = build(&a, &spec).unwrap();
        let sb = build(&b, &spec).unwrap();
        assert_eq!(sa, sb);
        assert!(sa.entries >= 5000 && sa.entries < 6500, "{sa:?}");
        assert!(sa.hardlinks > 0 && sa.symlinks >= spec.layers as u64, "{sa:?}");
        let d = compare(&a, &b, &CompareOptions { atime: AtimeScope::All, ..Default::default() })
            .unwrap();
        assert!(d.is_empty(), "{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"));
        // A different seed gives different contents.
        let c = tmp("demo-c");
        let _g2 = Guard(vec![c.clone()]);
        build(&c, &FixtureSpec { seed: 7, ..spec }).unwrap();
        assert!(!compare(&a, &c, &CompareOptions::default()).unwrap().is_empty());
    }

    #[test]
    fn bench_entry_count() {
        let s = FixtureSpec::bench(100_000);
        let per_layer = s.dirs_per_layer * (s.files_per_dir + 1);
        assert!(s.layers * per_layer >= 100_000);
        assert!(FixtureSpec::bench(300_000).dirs_per_layer > s.dirs_per_layer);
    }

    #[test]
    fn refuses_non_empty_root() {
        let a = tmp("nonempty");
        let _g = Guard(vec![a.clone()]);
        std::fs::create_dir_all(a.join("x")).unwrap();
        let e = build(&a, &FixtureSpec::demo()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::AlreadyExists);
    }

    #[test]
    fn acl_binary_format() {
        let v =
            acl_xattr(&[(acl::USER_OBJ, 6, acl::UNDEFINED_ID), (acl::OTHER, 4, acl::UNDEFINED_ID)]);
        assert_eq!(
            v,
            [2, 0, 0, 0, 1, 0, 6, 0, 255, 255, 255, 255, 0x20, 0, 4, 0, 255, 255, 255, 255]
        );
    }

    #[test]
    fn fidelity_tree_as_root() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let (a, b) = (tmp("fid-a"), tmp("fid-b"));
        let _g = Guard(vec![a.clone(), b.clone()]);
        let sa = build(&a, &FixtureSpec::fidelity()).unwrap();
        build(&b, &FixtureSpec::fidelity()).unwrap();
        let d = compare(&a, &b, &CompareOptions { atime: AtimeScope::All, ..Default::default() })
            .unwrap();
        assert!(d.is_empty(), "{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"));
        let m = std::fs::symlink_metadata(a.join("special/sparse-64m")).unwrap();
        assert_eq!(m.size(), SPARSE_SIZE);
        assert!(m.blocks() * 512 < 4 << 20, "sparse file allocates {} bytes", m.blocks() * 512);
        assert_eq!(
            std::fs::symlink_metadata(a.join("special/suid-sgid")).unwrap().mode() & 0o7777,
            0o6755
        );
        assert_eq!(
            std::fs::symlink_metadata(a.join("special/readonly")).unwrap().mode() & 0o7777,
            0o555
        );
        let acl =
            xattr::lget(&cstr(&a.join("special/acl-file")).unwrap(), c"system.posix_acl_access")
                .unwrap();
        assert_eq!(acl.len(), 4 + 6 * 8);
        assert!(sa.specials >= 4 + 2 * 2, "{sa:?}");
        let mt = std::fs::symlink_metadata(a.join("special/dangling")).unwrap();
        assert!(mt.mtime() < 1_700_000_000 && mt.mtime_nsec() != 0);
    }
}
