"""Kernel health through a whole host run (issue #14): a cell during which the kernel log gets a
WARNING line carries its ``health`` mark into results.jsonl, and every report counts it per
target — the terminal summary, report.md, report.html and summary.json.

The WARNING is a line the test-only scenario ``health-kmsg-warning`` (tests/health_scenarios.py) writes
to /dev/kmsg: the real kernel log the agent reads, without hurting the kernel.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from overlaylab.mountutil import mounts_under
from tests.health_scenarios import site_dir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_warned_cell_is_counted_per_target_in_every_report():
    top = tempfile.mkdtemp(prefix="olhealth.")
    try:
        env = dict(os.environ, PYTHONPATH=site_dir(top) + os.pathsep + REPO, TMPDIR=top)
        r = subprocess.run([sys.executable, "-m", "overlaylab", "run", "--provider", "local", "-p", "=tmpfs",
                            "-k", "=health-kmsg-warning or =driver-init", "--reports-dir", os.path.join(top, "r")],
                           capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "host: 1 cells with kernel warnings: host/tmpfs/health-kmsg-warning" in r.stdout
        (run_id,) = os.listdir(os.path.join(top, "r", "runs"))
        run_dir = os.path.join(top, "r", "runs", run_id)
        with open(os.path.join(run_dir, "results.jsonl")) as f:
            cells = {c["scenario"]: c for c in map(json.loads, f) if c.get("record") == "cell"}
        warned = cells["health-kmsg-warning"]
        assert warned["outcome"] == "PASS" and warned["met"]  # the mark does not change the outcome
        assert [w["kind"] for w in warned["health"]["kernel_warnings"]] == ["warning"]
        assert "overlaylab-health-test.c" in warned["health"]["kernel_warnings"][0]["line"]
        assert "health" not in cells["driver-init"]
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
        assert summary["targets"][0]["kernel_warnings"] == 1
        assert [c["cell"] for c in summary["kernel_warnings"]] == ["host/tmpfs/health-kmsg-warning"]
        with open(os.path.join(run_dir, "report.md")) as f:
            md = f.read().splitlines()
        header = next(line for line in md if line.startswith("| kernel ") and "kernel warnings" in line)
        row = md[md.index(header) + 2]
        assert header.rstrip(" |").endswith("kernel warnings") and row.rstrip(" |").endswith(" 1"), (header, row)
        with open(os.path.join(run_dir, "report.html")) as f:
            html = f.read()
        assert '<b class="kernel-warnings">1 cells with kernel warnings</b>' in html
        assert '"kernel health"' in html  # the cell's details show its mark
    finally:
        leaked = [m.mountpoint for m in mounts_under(top)]
        shutil.rmtree(top, ignore_errors=True)
        assert not leaked, leaked
