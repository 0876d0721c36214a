#!/usr/bin/python3
"""Plot the latency distributions from `goldclone bench zfs` (zfs-bench.csv) as a PNG.

    /usr/bin/python3 benches/plot_zfs.py benches/zfs-bench.csv benches/zfs-latency.png

(Debian's python3-matplotlib is installed for the system interpreter, hence /usr/bin/python3;
tests/zfs-vm.sh runs this after `BENCH=1`.)
"""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    samples = defaultdict(list)
    with open(src, newline="") as f:
        for row in csv.DictReader(f):
            samples[(row["operation"], row["implementation"])].append(float(row["milliseconds"]))

    ops = ["snapshot", "session_ready", "destroy"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 1]})
    data, labels, colors = [], [], []
    for op in ops:
        for imp, color in (("goldclone", "tab:green"), ("zfs-cli", "tab:red")):
            if (op, imp) in samples:
                data.append(samples[(op, imp)])
                labels.append(f"{op}\n{imp}")
                colors.append(color)
    parts = ax.boxplot(data, patch_artist=True, whis=(0, 100))
    for patch, color in zip(parts["boxes"], colors):
        patch.set_facecolor(color)
        patch.set_alpha(0.5)
    for i, d in enumerate(data, start=1):
        ax.scatter([i] * len(d), d, s=6, color="black", alpha=0.4, zorder=3)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("goldclone (libzfs_core + mount(2)) vs zfs CLI")

    conc = [(k, v) for k, v in samples.items() if k[0] in ("single_ready", "concurrent_ready_wall")]
    conc.sort()
    ax2.boxplot([v for _, v in conc], whis=(0, 100))
    for i, (_, v) in enumerate(conc, start=1):
        ax2.scatter([i] * len(v), v, s=8, color="black", alpha=0.5, zorder=3)
    ax2.set_xticks(range(1, len(conc) + 1), [k[0].replace("_", "\n") for k, _ in conc], fontsize=8)
    ax2.set_ylabel("wall time (ms)")
    ax2.set_title("N session clones at once vs one")
    fig.tight_layout()
    fig.savefig(dst, dpi=120)


if __name__ == "__main__":
    main(*(sys.argv[1:3] if len(sys.argv) >= 3 else ("benches/zfs-bench.csv", "benches/zfs-latency.png")))
