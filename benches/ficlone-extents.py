#!/usr/bin/env python3
"""FICLONE time against a file's extent count: what the image backend's fragmentation guard
(`MAX_EXTENTS` in src/backend/image.rs) bounds.

    benches/ficlone-extents.py DIR [COUNTS...]

For each count N, a file in DIR (a filesystem that reflinks) gets N extents by writing every
other 4 KiB block (N writes, synced), then is cloned with FICLONE 5 times; prints the median
and the extent count FIEMAP reports. Removes its files.
"""
import fcntl, os, statistics, struct, sys, time

FICLONE = 0x40049409
BLOCK = 4096


def extents(fd):
    """FIEMAP's mapped extents (unmerged: filefrag merges adjacent ones in its count)."""
    buf = bytearray(struct.pack("QQIIII", 0, 2**64 - 1, 0, 0, 0, 0))
    fcntl.ioctl(fd, 0xC020660B, buf)
    return struct.unpack("QQIIII", bytes(buf))[3]


def main():
    d = sys.argv[1]
    counts = [int(c) for c in sys.argv[2:]] or [1000, 3000, 10000, 30000, 100000]
    print(f"{'extents':>10} {'FICLONE median (ms)':>20} {'per extent (us)':>16}")
    for n in counts:
        src = os.path.join(d, f"ficlone-src-{n}")
        fd = os.open(src, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o600)
        block = os.urandom(BLOCK)
        for i in range(n):
            os.pwrite(fd, block, 2 * i * BLOCK)
        os.fsync(fd)
        have = extents(fd)
        times = []
        for r in range(5):
            dst = os.path.join(d, f"ficlone-dst-{n}-{r}")
            dfd = os.open(dst, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
            t = time.perf_counter()
            fcntl.ioctl(dfd, FICLONE, fd)
            times.append(time.perf_counter() - t)
            os.close(dfd)
            os.unlink(dst)
        os.close(fd)
        os.unlink(src)
        med = statistics.median(times)
        print(f"{have:>10} {med * 1000:>20.1f} {med / have * 1e6:>16.1f}")


if __name__ == "__main__":
    main()
