"""How long ``overlaylab merge`` takes for 10 runs of 1,269 cells each (12,690 cells).

The runs are synthesised from a real run's records: its cell records are cloned (scenario ids
suffixed ``~N``) up to 141 (scenario, engine) pairs per profile x 9 profiles = 1,269 cells per
run, one run per made-up target ``k01``..``k10``, each run shard K/10 of one matrix with a real
fingerprint. Then ``merge_runs`` (checks, the merged ``results.jsonl``) and ``publish`` (every
report, the index) are timed separately.

    python benchmarks/bench_merge.py REAL_RUN_DIR
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from overlaylab.lab.merge import merge_runs
from overlaylab.lab.results import load_run
from overlaylab.lab.run import publish
from overlaylab.lab.shard import fingerprint

RUNS, PER_PROFILE = 10, 141


def synthesise(source: str, out: str) -> list:
    real = load_run(source)
    profiles = real.profile_names()[:9]
    templates = [c for c in real.cells if c["profile"] == profiles[0]]
    sids = ["%s~%d" % (templates[i % len(templates)]["scenario"], i) for i in range(PER_PROFILE)]
    kernels = ["k%02d" % i for i in range(1, RUNS + 1)]
    matrix = {"kernels": kernels, "profiles": profiles, "scenarios": sids, "engines": []}
    fp = fingerprint(matrix)
    by_profile = {p: [c for c in real.cells if c["profile"] == p] for p in profiles}
    paths = []
    for k, kernel in enumerate(kernels, 1):
        path = os.path.join(out, "shard-%d" % k)
        os.makedirs(path)
        meta = dict(real.meta, run_id="shard-%d" % k, matrix=matrix, fingerprint=fp, repeat=1, status="finished",
                    shard={"k": k, "n": RUNS, "cells": PER_PROFILE * len(profiles)})
        with open(os.path.join(path, "run.json"), "w") as f:
            json.dump(meta, f)
        with open(os.path.join(path, "results.jsonl"), "w") as f:
            f.write(json.dumps(dict(real.targets[0], target=kernel)) + "\n")
            for p in profiles:
                f.write(json.dumps(dict(real.profile_record(real.targets[0]["target"], p) or {}, record="profile",
                                        target=kernel, profile=p)) + "\n")
                for i, sid in enumerate(sids):
                    cell = by_profile[p][i % len(by_profile[p])]
                    f.write(json.dumps(dict(cell, target=kernel, scenario=sid, engine=None)) + "\n")
        paths.append(path)
    return paths


def main(argv: list) -> int:
    if len(argv) != 1:
        print("usage: bench_merge.py REAL_RUN_DIR", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthesise(argv[0], os.path.join(tmp, "in"))
        started = time.monotonic()
        merged = merge_runs(paths, os.path.join(tmp, "reports"))
        merging = time.monotonic() - started
        started = time.monotonic()
        rep = publish(merged, lambda *a, **k: None)
        reporting = time.monotonic() - started
        print("merged %d runs, %d cells: merge %.2f s, reports and index %.2f s" % (
            len(paths), len(rep.cells), merging, reporting))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
