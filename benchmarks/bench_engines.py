#!/usr/bin/env python3
"""Engine benchmarks: each engine's pull and container mount, as a ratio to the port in the same run.

    .venv/bin/python benchmarks/bench_engines.py [--engine NAME ...] [--files 5000] [--profile ext4]
        [--repeat 3] [--json out.json]

One layer tar of ``--files`` small files (1-512 bytes, 50 per directory) is built once. Then, on
a fresh backing filesystem of ``--profile`` (a real loop-mounted fs, made as the lab makes it),
each engine is started once and, best of ``--repeat``:

- ``pull``  -- the layer becomes an image (the port: Create + ApplyDiff; containers-storage:
  create-layer + applydiff; Docker: ``docker load``), and
- ``mount`` -- a container is created on it and its root is mounted by the engine and read
  (Docker: the container is started and its /proc/PID/root is the view),

each as a ratio to the port's time in the same run (ours / port: above 1 means slower than the
port). The start-up of each engine (a private dockerd, for instance) is reported on its own,
not folded into the ratios. Numbers are noisy on a shared 2-core machine: read the ratios.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tarfile
import tempfile
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from overlaylab.agent.backingfs import make_backing_fs  # noqa: E402
from overlaylab.agent.engines import engine_names, get_engine  # noqa: E402
from overlaylab.agent.profiles import load_profiles  # noqa: E402


def build_layer(path: str, files: int) -> None:
    """``files`` files of 1-512 bytes in directories of 50, as an uncompressed layer tar."""
    rng = random.Random(7)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in range((files + 49) // 50):
            info = tarfile.TarInfo("data/d%04d" % d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
            for i in range(min(50, files - d * 50)):
                body = os.urandom(rng.randint(1, 512))
                info = tarfile.TarInfo("data/d%04d/f%02d" % (d, i))
                info.size, info.mode = len(body), 0o644
                tar.addfile(info, io.BytesIO(body))


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_engine(name: str, profile, layer: str, files: int, repeat: int, work: str) -> Dict[str, object]:
    engine = get_engine(name)
    why = engine.unavailable()
    if why:
        return {"engine": name, "unavailable": why}
    out: Dict[str, object] = {"engine": name, "version": engine.version()}
    fsdir = tempfile.mkdtemp(prefix="fs-", dir=work)
    with make_backing_fs(profile, fsdir) as bfs:
        scratch = tempfile.mkdtemp(prefix="w-", dir=work)
        t = time.perf_counter()
        with engine.open(bfs.mountpoint, scratch) as session:
            out["start_s"] = round(time.perf_counter() - t, 3)
            if not session.verdict.accepted:
                out["refused"] = session.verdict.message
                return out
            images: List[str] = []

            def pull() -> None:
                images.append(session.pull([layer]))

            def mount() -> None:
                container = session.create(images[-1])
                with session.rootfs(container) as root:
                    seen = sum(len(names) for _, _, names in os.walk(os.path.join(root, "data")))
                if seen != files:
                    raise SystemExit("%s: the container shows %d of %d files" % (name, seen, files))
                session.remove(container)

            out["pull_s"] = round(best(pull, repeat), 3)
            out["mount_s"] = round(best(mount, repeat), 3)
            for image in images:
                session.remove(image)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", action="append", help="engine (repeatable; default every registered one)")
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--profile", default="ext4")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    names = args.engine or engine_names()
    unknown = [n for n in names if n not in engine_names()]
    if unknown or args.files < 1 or args.repeat < 1:
        parser.error("unknown engine %s (have: %s)" % (", ".join(unknown), ", ".join(engine_names()))
                     if unknown else "--files and --repeat must be positive")
    if "port" not in names:
        names = ["port"] + names  # the reference every ratio is taken against
    profiles = load_profiles()
    if args.profile not in profiles:
        parser.error("unknown profile %s (have: %s)" % (args.profile, ", ".join(profiles)))
    with tempfile.TemporaryDirectory(prefix="bench-engines.") as work:
        layer = os.path.join(work, "layer.tar")
        build_layer(layer, args.files)
        results = [bench_engine(n, profiles[args.profile], layer, args.files, args.repeat, work) for n in names]
    port = results[0]
    print("%d-file layer on %s, best of %d; ratio = engine / port in this run" % (args.files, args.profile, args.repeat))
    print("%-20s %9s %9s %9s %9s %9s  %s" % ("engine", "start s", "pull s", "pull x", "mount s", "mount x", "version"))
    for r in results:
        if "pull_s" not in r:
            print("%-20s %s" % (r["engine"], r.get("unavailable") or "refused: %s" % r.get("refused")))
            continue
        print("%-20s %9.2f %9.2f %9.2f %9.2f %9.2f  %s" % (
            r["engine"], r["start_s"], r["pull_s"], r["pull_s"] / port["pull_s"], r["mount_s"],
            r["mount_s"] / port["mount_s"], r.get("version", "")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
