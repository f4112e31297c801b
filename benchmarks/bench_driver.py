#!/usr/bin/env python3
"""Driver benchmarks, as ratios against reference tools measured in the same run.

    .venv/bin/python benchmarks/bench_driver.py [--layers tiny,distro] [--files 5000]
        [--large 4] [--large-mib 16] [--distro-files 5000] [--repeat 3] [--json out.json]

Two synthetic image layers are built on a tmpfs, and each is put through the same operations:

- ``tiny`` -- the **tiny-file stress** layer: ``--files`` files of 1-512 bytes in nested
  directories (50 per directory), a symlink every 100 files and a hard link every 250, plus
  ``--large`` files of ``--large-mib`` MiB. Almost all of the time goes into per-entry work
  (headers, path handling, syscalls), i.e. interpreter overhead: this is the worst case for a
  pure-Python implementation.
- ``distro`` -- the **distro-like** layer, shaped like a Debian base image: ``--distro-files``
  files (default 5000) with log-normal sizes (median ~4 KiB, clamped to 100 B .. 256 KiB,
  about 110 MiB in all) spread unevenly over a few hundred directories of depth 1-6, ~8 %
  symlinks, a few hard links, executables in ``bin`` directories. This is what ``docker
  pull``/``commit`` of a real image looks like.

For each layer, ours and the reference alternate (ours, theirs, ours, theirs...: a burst of
load from elsewhere hits both), best of ``--repeat`` each:

- ``apply_diff`` of the layer tar into a new layer   vs  GNU ``tar -x`` of the same tar
  (ours includes the fork + chroot of the apply helper, like the reference's re-exec)
- ``diff`` (full-tree export) of the layer           vs  GNU ``tar -c`` of the same tree, piped
- Create case C (``copy_dir``, content copy)          vs  ``cp -a``
- ApplyDiff's hard-link copy (``copy_dir`` + link)    vs  ``cp -al``

and once, on the tiny layer: Get+Put of a Shape-O layer (mount + umount) vs ``mount -t
overlay`` + ``umount`` (util-linux). A ratio is ours / theirs: below 1.0 means faster than
the reference tool. ``ratio`` is wall time (the target); ``cpu`` is user+system time of
every process doing the work (less disturbed by other load on a shared machine).

Peak RSS, per operation, from one more run of each: ours is the peak of the process doing
the work (a fork of this process, or the apply child it forks) -- a whole Python process,
interpreter and imports included -- and that peak minus the RSS the process started the work
with ("added": what the work itself costs); theirs is the tool's own peak from
``/usr/bin/time`` (the ``time`` package; without it no tool RSS is shown). The rusage of a
child of this process cannot be used for a tool: the kernel keeps the high-water mark of the
address space a child had before ``exec`` (this process's, shared by fork/vfork), so every
tool would show at least this process's size.

Targets (issue 15): apply_diff <= 1.5x GNU ``tar -x``, diff export <= 1.2x ``tar -c``,
content copy <= 1.1x ``cp -a``, hard-link copy <= 1.0x ``cp -al``, peak RSS no more than the
tool's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from overlaylab.graphdriver import overlay  # noqa: E402
from overlaylab.graphdriver.copy import COPY_HARDLINK, copy_dir  # noqa: E402
from overlaylab.mountutil import mount, umount, unmount_all_under  # noqa: E402

TARGETS = {"apply_diff": 1.5, "diff_export": 1.2, "copy_content": 1.1, "copy_hardlink": 1.0}
LAYER_TITLES = {"tiny": "tiny-file stress", "distro": "distro-like"}
TIME = "/usr/bin/time"


def build_tree(root: str, files: int, large: int, large_mib: int) -> None:
    """The tiny-file stress layer."""
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


_TOP = ["bin", "etc", "lib", "sbin", "usr/bin", "usr/sbin", "usr/lib", "usr/lib/x86_64-linux-gnu",
        "usr/share", "usr/share/doc", "usr/share/locale", "usr/share/man", "usr/share/zoneinfo",
        "usr/include", "var/lib/dpkg/info", "var/cache", "usr/lib/python3", "usr/share/perl5"]


def build_distro_tree(root: str, files: int) -> None:
    """The distro-like layer: realistic sizes and an uneven, moderately deep directory tree."""
    rng = random.Random(7)
    dirs: List[str] = []
    for top in _TOP:
        dirs.append(top)
    # Package-like subdirectories below the big shared directories, some of them nested.
    for i in range(max(40, files // 15)):
        parent = rng.choice(dirs[:len(_TOP)] if rng.random() < 0.6 else dirs)
        if parent.count("/") >= 5:
            parent = rng.choice(_TOP)
        dirs.append("%s/pkg%03d" % (parent, i))
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    # Uneven fill: a few directories (bin, lib, dpkg/info) hold hundreds of files.
    weights = [40.0 if d in ("usr/bin", "usr/lib/x86_64-linux-gnu", "var/lib/dpkg/info",
                             "usr/share/zoneinfo") else 1.0 / (1 + d.count("/")) for d in dirs]
    pool = os.urandom(4 << 20)
    made: List[str] = []
    for i in range(files):
        d = rng.choices(dirs, weights)[0]
        size = min(max(int(rng.lognormvariate(math.log(4096), 2.2)), 100), 256 << 10)
        path = os.path.join(root, d, "file%05d%s" % (i, rng.choice(("", ".so", ".gz", ".py", ".pm", ".h"))))
        off = rng.randrange(len(pool) - size)
        with open(path, "wb") as f:
            f.write(pool[off:off + size])
        os.chmod(path, 0o755 if "bin" in d or rng.random() < 0.05 else 0o644)
        made.append(path)
        r = rng.random()
        if r < 0.08:
            os.symlink(os.path.basename(path), path + ".link")
        elif r < 0.083:
            os.link(path, path + ".hl")


def _cpu() -> float:
    """User+system seconds of this process and its reaped children so far."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


Step = Tuple[Callable[[], None], Callable[[], None]]  # (untimed setup, timed work)


def alternate(repeat: int, ours: Step, theirs: Step) -> Dict[str, float]:
    """Best-of-``repeat`` wall and CPU seconds of both, run alternately."""
    best = {"ours_s": math.inf, "ref_s": math.inf, "ours_cpu_s": math.inf, "ref_cpu_s": math.inf}
    for _ in range(repeat):
        for key, (setup, work) in (("ours", ours), ("ref", theirs)):
            setup()
            c0, t0 = _cpu(), time.perf_counter()
            work()
            t1, c1 = time.perf_counter(), _cpu()
            best[key + "_s"] = min(best[key + "_s"], t1 - t0)
            best[key + "_cpu_s"] = min(best[key + "_cpu_s"], c1 - c0)
    return best


def run_tool(argv: List[str], **kw) -> None:
    subprocess.run(argv, check=True, **kw)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def our_rss(setup: Callable[[], None], work: Callable[[], None]) -> Dict[str, int]:
    """Peak RSS (KiB) of ``work``, run once in a fork of this process (the probe), and that
    peak less the RSS its process had when the work began. The process is the probe itself,
    or the apply child that the work forks (the probe's only child: its peak is the probe's
    children's ``ru_maxrss``, its start the ``VmRSS`` it notes right after the fork)."""
    setup()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the probe
        code = 1
        try:
            os.close(r)
            child_r, child_w = os.pipe()
            real_fork = os.fork

            def noting_fork() -> int:
                child = real_fork()
                if child == 0:
                    os.write(child_w, b"%d\n" % _status_kib("VmRSS"))
                return child

            os.fork = noting_fork
            base = _status_kib("VmRSS")
            work()
            os.fork = real_fork
            os.close(child_w)
            with os.fdopen(child_r, "rb") as f:
                child_base = f.read().split()
            if child_base:
                base = int(child_base[0])
                peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            else:
                peak = _status_kib("VmHWM")
            os.write(w, json.dumps({"peak_kib": peak, "added_kib": peak - base}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        raise RuntimeError("RSS probe of %r failed" % work)
    return json.loads(data)


def tool_rss(setup: Callable[[], None], command: str) -> Optional[int]:
    """Peak RSS (KiB) of the tool a shell ``command`` starts with ``{time}`` in front of it
    (``/usr/bin/time`` writing ``%M`` to a file), or None without ``/usr/bin/time``."""
    if not os.access(TIME, os.X_OK):
        return None
    setup()
    with tempfile.NamedTemporaryFile("r") as out:
        subprocess.run(command.format(time="%s -f %%M -o %s" % (TIME, out.name)), shell=True, check=True)
        return int(out.read().split()[-1])


def _mib(kib: Optional[int]) -> str:
    return "-" if kib is None else "%.1f" % (kib / 1024)


def _met(ours: int, ref: Optional[int]) -> str:
    return "-" if ref is None else ("met" if ours <= ref else "MISSED")


def _nothing() -> None:
    pass


def tree_stats(root: str) -> Dict[str, int]:
    n_files = n_dirs = n_links = total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        n_dirs += len(dirnames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if os.path.islink(os.path.join(dirpath, name)):
                n_links += 1
            else:
                n_files += 1
                total += st.st_size
    return {"files": n_files, "dirs": n_dirs, "symlinks": n_links, "bytes": total}


def bench_layer(args, work: str, label: str, build: Callable[[str], None],
                with_get_put: bool) -> Dict[str, Dict[str, float]]:
    results: Dict[str, Dict[str, float]] = {}
    base_dir = os.path.join(work, label)
    src = os.path.join(base_dir, "src")
    os.makedirs(src)
    build(src)
    layer_tar = os.path.join(base_dir, "layer.tar")
    subprocess.run(["tar", "-C", src, "--numeric-owner", "-cf", layer_tar, "."], check=True)
    stats = tree_stats(src)
    stats["tar_bytes"] = os.path.getsize(layer_tar)
    shutil.rmtree(src)

    os.makedirs(os.path.join(base_dir, "docker"))
    driver = overlay.init(os.path.join(base_dir, "docker", "overlay"))
    counter = [0]

    def fresh_layer() -> str:
        counter[0] += 1
        lid = "bench%d" % counter[0]
        driver.create(lid, "", "")
        return lid

    # apply_diff vs tar -x ----------------------------------------------------------------
    target = os.path.join(base_dir, "x")
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

    tar_x = "tar -C %s --numeric-owner -xpf %s" % (target, layer_tar)
    results["apply_diff"] = dict(
        alternate(args.repeat, (apply_setup, apply_ours), (tar_setup, lambda: run_tool(tar_x.split()))),
        ref="GNU tar -x", rss=our_rss(apply_setup, apply_ours),
        ref_rss_kib=tool_rss(tar_setup, "{time} " + tar_x))
    shutil.rmtree(target, ignore_errors=True)
    apply_setup()
    apply_ours()

    # diff export vs tar -c -----------------------------------------------------------------
    base = state["id"]

    def export_ours():
        stream = driver.diff(base, "")
        try:
            while stream.read(1 << 20):
                pass
        finally:
            stream.close()

    root = driver.get(base, "")
    driver.put(base)
    # GNU tar special-cases /dev/null (it skips reading file data): write to a pipe instead.
    tar_c = "tar -C %s --numeric-owner -cf - ." % root
    results["diff_export"] = dict(
        alternate(args.repeat, (_nothing, export_ours),
                  (_nothing, lambda: subprocess.run(tar_c + " | cat > /dev/null", shell=True, check=True))),
        ref="GNU tar -c | cat", rss=our_rss(_nothing, export_ours),
        ref_rss_kib=tool_rss(_nothing, "{time} " + tar_c + " | cat > /dev/null"))

    # copies vs cp --------------------------------------------------------------------------
    dst = os.path.join(base_dir, "copy")

    def clean_dst():
        shutil.rmtree(dst, ignore_errors=True)

    for op, flags, cp in (("copy_content", 0, "cp -a"), ("copy_hardlink", COPY_HARDLINK, "cp -al")):
        def copy_ours(flags=flags):
            copy_dir(root, dst, flags)
        cp_cmd = "%s %s %s" % (cp, root, dst)
        results[op] = dict(
            alternate(args.repeat, (clean_dst, copy_ours), (clean_dst, lambda: run_tool(cp_cmd.split()))),
            ref=cp, rss=our_rss(clean_dst, copy_ours), ref_rss_kib=tool_rss(clean_dst, "{time} " + cp_cmd))
    clean_dst()

    # get+put cycles vs mount(8)/umount(8) --------------------------------------------------
    if with_get_put:
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
    results["_layer"] = stats  # type: ignore[assignment]
    unmount_all_under(base_dir)
    shutil.rmtree(base_dir, ignore_errors=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="tiny,distro",
                    help="comma-separated: tiny (tiny-file stress), distro (distro-like)")
    ap.add_argument("--files", type=int, default=5000, help="tiny layer: number of small files")
    ap.add_argument("--large", type=int, default=4, help="tiny layer: number of large files")
    ap.add_argument("--large-mib", type=int, default=16, help="tiny layer: size of each large file")
    ap.add_argument("--distro-files", type=int, default=5000, help="distro layer: number of files")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cycles", type=int, default=200, help="Get+Put cycles")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks need root (mounts)", file=sys.stderr)
        return 2
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    for name in layers:
        if name not in LAYER_TITLES:
            ap.error("unknown layer %r (known: %s)" % (name, ", ".join(LAYER_TITLES)))

    builders = {
        "tiny": lambda root: build_tree(root, args.files, args.large, args.large_mib),
        "distro": lambda root: build_distro_tree(root, args.distro_files),
    }
    work = tempfile.mkdtemp(prefix="overlaylab-bench.")
    mount("tmpfs", work, "tmpfs", 0, "size=4g")
    os.umask(0o022)
    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    try:
        for i, name in enumerate(layers):
            results[name] = bench_layer(args, work, name, builders[name], with_get_put=(i == 0))
    finally:
        unmount_all_under(work)
        try:
            umount(work)
        except OSError:
            pass
        shutil.rmtree(work, ignore_errors=True)
    from tabulate import tabulate
    rows, rss_rows = [], []
    for name in layers:
        for op, r in results[name].items():
            if op.startswith("_") or op == "get_put":
                continue
            ratio = r["ours_s"] / r["ref_s"]
            target = TARGETS[op]
            rows.append([LAYER_TITLES[name], op, "%.3f" % r["ours_s"], r["ref"], "%.3f" % r["ref_s"],
                         "%.2f" % ratio, "%.2f" % (r["ours_cpu_s"] / r["ref_cpu_s"]),
                         "<= %.1f" % target, "met" if ratio <= target else "MISSED"])
            rss, ref_rss = r["rss"], r["ref_rss_kib"]
            rss_rows.append([LAYER_TITLES[name], op, _mib(rss["peak_kib"]), _mib(rss["added_kib"]),
                             r["ref"], _mib(ref_rss), _met(rss["peak_kib"], ref_rss),
                             _met(rss["added_kib"], ref_rss)])
    for name in layers:
        s = results[name]["_layer"]
        extra = ""
        if name == "tiny":
            extra = " (%d x %d MiB among them)" % (args.large, args.large_mib)
        print("%s layer: %d files%s, %d dirs, %d symlinks, %.1f MiB of data, tar %.1f MiB" % (
            LAYER_TITLES[name], s["files"], extra, s["dirs"], s["symlinks"], s["bytes"] / 2**20,
            s["tar_bytes"] / 2**20))
    print("best of %d, ours and the reference alternating; ratio = wall time (the target), "
          "cpu = user+system time" % args.repeat)
    print(tabulate(rows, headers=["layer", "operation", "ours (s)", "reference", "ref (s)", "ratio",
                                  "cpu", "target", ""]))
    print("\npeak RSS (MiB; target: no more than the tool's). ours = the whole Python process doing "
          "the work; added = its peak less its RSS when the work began")
    print(tabulate(rss_rows, headers=["layer", "operation", "ours", "ours added", "reference",
                                      "ref", "ours <= ref", "added <= ref"]))
    for name in layers:
        gp = results[name].get("get_put")
        if gp:
            print("get+put: %.0f cycles/s (mount(8)+umount(8): %.0f/s)" % (gp["ours_per_s"], gp["ref_per_s"]))
    if args.json:
        doc = dict(results)
        doc["_meta"] = {"layers": layers, "files": args.files, "large": args.large,
                        "large_mib": args.large_mib, "distro_files": args.distro_files,
                        "repeat": args.repeat, "cycles": args.cycles, "targets": TARGETS}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
