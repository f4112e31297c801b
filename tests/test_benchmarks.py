"""The benchmark scripts stay runnable: a small run of each prints its ratios (the figures
themselves are measured on demand, never asserted here: the machine is noisy)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.needs import need_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_engine_benchmark_times_each_engine_against_the_port(tmp_path):
    need_tool("containers-storage")
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_engines.py"), "--files", "120",
                          "--repeat", "1", "--engine", "containers-storage", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    results = json.loads(out.read_text())
    assert [r["engine"] for r in results] == ["port", "containers-storage"]  # the port is always the reference
    assert all(r["pull_s"] > 0 and r["mount_s"] > 0 for r in results)
    assert "containers-storage" in res.stdout and "x = engine / port" in res.stdout


def test_engine_benchmark_refuses_an_unknown_engine_in_one_line():
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_engines.py"), "--engine", "dockr"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown engine dockr" in res.stderr and "Traceback" not in res.stderr
