#!/usr/bin/env python3
"""Driver benchmarks, as ratios against reference tools measured in the same run.

    .venv/bin/python benchmarks/bench_driver.py [--files 5000] [--large 4] [--large-mib 16] [--repeat 3]

Builds a synthetic image layer (thousands of small files in nested directories, a few large
files, symlinks and hard links) on a tmpfs, then times, best of ``--repeat``:

- ``apply_diff`` of the layer tar into a new layer   vs  GNU ``tar -x`` of the same tar
- ``diff`` (full-tree export) of the layer           vs  GNU ``tar -c`` of the same tree
- Create case C (``copy_dir``, content copy)          vs  ``cp -a``
- ApplyDiff's hard-link copy (``copy_dir`` + link)    vs  ``cp -al``
- Get+Put of a Shape-O layer (mount + umount)         vs  ``mount -t overlay`` + ``umount`` (util-linux)

and the peak RSS of the process doing the work (ours vs the tool's). Targets (issue 2):
apply and export within 1.5x of GNU tar, copies within 1.2x of cp. A ratio is ours / theirs:
below 1.0 means faster than the reference tool.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from overlaylab.graphdriver import overlay  # noqa: E402
from overlaylab.graphdriver.copy import COPY_HARDLINK, copy_dir  # noqa: E402
from overlaylab.mountutil import mount, umount, unmount_all_under  # noqa: E402

TARGETS = {"apply_diff": 1.5, "diff_export": 1.5, "copy_content": 1.2, "copy_hardlink": 1.2}


def build_tree(root: str, files: int, large: int, large_mib: int) -> None:
    rng = random.Random(42)
    per_dir = 50
    for i in range(files):
        d = os.path.join(root, "d%03d" % (i // (per_dir * 20)), "s%03d" % ((i // per_dir) % 20))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "f%05d" % i), "wb") as f:
            f.write(rng.getrandbits(8 * 512).to_bytes(512, "little")[: rng.randint(1, 512)])
        if i % 100 == 0:
            os.symlink("f%05d" % i, os.path.join(d, "l%05d" % i))
        if i % 250 == 0:
            os.link(os.path.join(d, "f%05d" % i), os.path.join(d, "h%05d" % i))
    os.makedirs(os.path.join(root, "big"), exist_ok=True)
    chunk = os.urandom(1 << 20)
    for j in range(large):
        with open(os.path.join(root, "big", "blob%d" % j), "wb") as f:
            for _ in range(large_mib):
                f.write(chunk)


def best_of(repeat: int, setup: Callable[[], None], work: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        setup()
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_tool(argv: List[str], **kw) -> int:
    """Run a reference tool; return its peak RSS in KiB (from the child's rusage)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(argv, check=True, **kw)
    return max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--large", type=int, default=4)
    ap.add_argument("--large-mib", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cycles", type=int, default=200, help="Get+Put cycles")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks need root (mounts)", file=sys.stderr)
        return 2

    work = tempfile.mkdtemp(prefix="overlaylab-bench.")
    mount("tmpfs", work, "tmpfs", 0, "size=4g")
    results: Dict[str, Dict[str, float]] = {}
    try:
        src = os.path.join(work, "src")
        os.makedirs(src)
        build_tree(src, args.files, args.large, args.large_mib)
        layer_tar = os.path.join(work, "layer.tar")
        subprocess.run(["tar", "-C", src, "--numeric-owner", "-cf", layer_tar, "."], check=True)
        tar_bytes = os.path.getsize(layer_tar)

        os.umask(0o022)
        os.makedirs(os.path.join(work, "docker"))
        driver = overlay.init(os.path.join(work, "docker", "overlay"))
        counter = [0]

        def fresh_layer() -> str:
            counter[0] += 1
            lid = "bench%d" % counter[0]
            driver.create(lid, "", "")
            return lid

        # apply_diff vs tar -x ------------------------------------------------------------
        target = os.path.join(work, "x")
        state = {}

        def apply_setup():
            for name in os.listdir(driver.home):
                driver.remove(name)
            state["id"] = fresh_layer()

        def apply_ours():
            with open(layer_tar, "rb") as f:
                driver.apply_diff(state["id"], "", f)

        def tar_setup():
            shutil.rmtree(target, ignore_errors=True)
            os.makedirs(target)

        ours = best_of(args.repeat, apply_setup, apply_ours)
        theirs = best_of(args.repeat, tar_setup, lambda: run_tool(
            ["tar", "-C", target, "--numeric-owner", "-xpf", layer_tar]))
        results["apply_diff"] = {"ours_s": ours, "ref_s": theirs, "ref": "GNU tar -x"}

        # diff export vs tar -c -------------------------------------------------------------
        base = state["id"]

        def export_ours():
            stream = driver.diff(base, "")
            try:
                while stream.read(1 << 20):
                    pass
            finally:
                stream.close()

        ours = best_of(args.repeat, lambda: None, export_ours)
        root = driver.get(base, "")
        driver.put(base)
        theirs = best_of(args.repeat, lambda: None, lambda: run_tool(
            ["tar", "-C", root, "--numeric-owner", "-cf", "/dev/null", "."]))
        # GNU tar special-cases /dev/null (it skips reading file data): write to a pipe instead.
        theirs_pipe = best_of(args.repeat, lambda: None, lambda: subprocess.run(
            "tar -C %s --numeric-owner -cf - . | cat > /dev/null" % root, shell=True, check=True))
        results["diff_export"] = {"ours_s": ours, "ref_s": theirs_pipe, "ref": "GNU tar -c | cat",
                                  "ref_devnull_s": theirs}

        # copies vs cp ----------------------------------------------------------------------
        dst = os.path.join(work, "copy")

        def clean_dst():
            shutil.rmtree(dst, ignore_errors=True)

        ours = best_of(args.repeat, clean_dst, lambda: copy_dir(root, dst, 0))
        theirs = best_of(args.repeat, clean_dst, lambda: run_tool(["cp", "-a", root, dst]))
        results["copy_content"] = {"ours_s": ours, "ref_s": theirs, "ref": "cp -a"}
        ours = best_of(args.repeat, clean_dst, lambda: copy_dir(root, dst, COPY_HARDLINK))
        theirs = best_of(args.repeat, clean_dst, lambda: run_tool(["cp", "-al", root, dst]))
        results["copy_hardlink"] = {"ours_s": ours, "ref_s": theirs, "ref": "cp -al"}
        clean_dst()

        # get+put cycles vs mount(8)/umount(8) ----------------------------------------------
        driver.create("ctr", base, "")
        t0 = time.perf_counter()
        for _ in range(args.cycles):
            driver.get("ctr", "")
            driver.put("ctr")
        ours = time.perf_counter() - t0
        meta = driver.get_metadata("ctr")
        opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (meta["LowerDir"], meta["UpperDir"], meta["WorkDir"])
        t0 = time.perf_counter()
        for _ in range(args.cycles):
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, meta["MergedDir"]], check=True)
            subprocess.run(["umount", meta["MergedDir"]], check=True)
        theirs = time.perf_counter() - t0
        results["get_put"] = {"ours_s": ours, "ref_s": theirs, "ref": "mount(8)+umount(8)",
                              "ours_per_s": args.cycles / ours, "ref_per_s": args.cycles / theirs}
        results["_meta"] = {"files": args.files, "large": args.large, "large_mib": args.large_mib,
                            "tar_bytes": tar_bytes, "repeat": args.repeat, "cycles": args.cycles,
                            "peak_rss_ours_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                            "peak_rss_children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}
    finally:
        unmount_all_under(work)
        try:
            umount(work)
        except OSError:
            pass
        shutil.rmtree(work, ignore_errors=True)

    from tabulate import tabulate
    rows = []
    for name, r in results.items():
        if name.startswith("_"):
            continue
        ratio = r["ours_s"] / r["ref_s"]
        target = TARGETS.get(name)
        verdict = "" if target is None else ("ok" if ratio <= target else "over target")
        rows.append([name, "%.3f" % r["ours_s"], r["ref"], "%.3f" % r["ref_s"], "%.2f" % ratio,
                     "<= %.1f" % target if target else "-", verdict])
    m = results["_meta"]
    print("layer: %d small files + %d x %d MiB, tar %.1f MiB; best of %d" % (
        m["files"], m["large"], m["large_mib"], m["tar_bytes"] / 2**20, m["repeat"]))
    print(tabulate(rows, headers=["operation", "ours (s)", "reference", "ref (s)", "ratio", "target", ""]))
    gp = results["get_put"]
    print("get+put: %.0f cycles/s (mount(8)+umount(8): %.0f/s)" % (gp["ours_per_s"], gp["ref_per_s"]))
    print("peak RSS: this process %d MiB, reference tools %d MiB" % (
        m["peak_rss_ours_kib"] // 1024, m["peak_rss_children_kib"] // 1024))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
