#!/usr/bin/env python3
"""Engine benchmarks: each engine's pull and container mount, as a ratio to the port in the same run.

    .venv/bin/python benchmarks/bench_engines.py [--engine NAME ...] [--files 5000] [--profile ext4]
        [--repeat 3] [--json out.json]

One layer tar of ``--files`` small files (1-512 bytes, 50 per directory) is built once. Then, on
a fresh backing filesystem of ``--profile`` (a real loop-mounted fs, made as the lab makes it),
each engine is started once and, best of ``--repeat`` rounds:

- ``pull``  -- the layer becomes an image (the port: Create + ApplyDiff; containers-storage:
  create-layer + applydiff; Docker: ``docker load``); each round removes the image first, so an
  engine that deduplicates layers does not win on its cache;
- ``mount`` -- a container is created on it, its root is mounted by the engine and every file
  name read (Docker: the container is started; the view is Docker's own MergedDir),

each as a ratio to the port's time in the same run (engine / port: above 1 means slower than
the port). Starting the engine (a private dockerd, for instance) is reported on its own, not
folded into the ratios. The machine is noisy: read the ratios, not the seconds.
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
from typing import Dict

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


def bench_engine(name: str, profile, layer: str, files: int, repeat: int, work: str) -> Dict[str, object]:
    engine = get_engine(name)
    why = engine.unavailable()
    if why:
        return {"engine": name, "unavailable": why}
    out: Dict[str, object] = {"engine": name, "version": engine.version()}
    with make_backing_fs(profile, tempfile.mkdtemp(prefix="fs-", dir=work)) as bfs:
        t = time.perf_counter()
        with engine.open(bfs.mountpoint, tempfile.mkdtemp(prefix="w-", dir=work)) as session:
            out["start_s"] = round(time.perf_counter() - t, 3)
            if not session.verdict.accepted:
                out["refused"] = session.verdict.message
                return out
            pulls, mounts = [], []
            for _ in range(repeat):
                t = time.perf_counter()
                image = session.pull([layer])
                pulls.append(time.perf_counter() - t)
                t = time.perf_counter()
                container = session.create(image)
                with session.rootfs(container) as root:
                    seen = sum(len(names) for _, _, names in os.walk(os.path.join(root, "data")))
                mounts.append(time.perf_counter() - t)
                if seen != files:
                    raise SystemExit("%s: the container shows %d of %d files" % (name, seen, files))
                session.remove(container)
                session.remove(image)
            out["pull_s"], out["mount_s"] = round(min(pulls), 3), round(min(mounts), 3)
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
    if unknown:
        parser.error("unknown engine %s (have: %s)" % (", ".join(unknown), ", ".join(engine_names())))
    if args.files < 1 or args.repeat < 1:
        parser.error("--files and --repeat must be positive")
    names = ["port"] + [n for n in names if n != "port"]  # the reference every ratio is taken against
    profiles = load_profiles()
    if args.profile not in profiles:
        parser.error("unknown profile %s (have: %s)" % (args.profile, ", ".join(profiles)))
    with tempfile.TemporaryDirectory(prefix="bench-engines.") as work:
        layer = os.path.join(work, "layer.tar")
        build_layer(layer, args.files)
        results = [bench_engine(n, profiles[args.profile], layer, args.files, args.repeat, work) for n in names]
    port = results[0]
    print("%d-file layer on %s, best of %d; x = engine / port in this run" % (args.files, args.profile, args.repeat))
    print("%-20s %8s %8s %8s %8s %8s  %s" % ("engine", "start s", "pull s", "pull x", "mount s", "mount x", "version"))
    for r in results:
        if "pull_s" not in r:
            print("%-20s %s" % (r["engine"], r.get("unavailable") or "refused: %s" % r.get("refused")))
            continue
        print("%-20s %8.2f %8.2f %8.2f %8.2f %8.2f  %s" % (
            r["engine"], r["start_s"], r["pull_s"], r["pull_s"] / port["pull_s"], r["mount_s"],
            r["mount_s"] / port["mount_s"], r.get("version", "")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
