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


def test_matrix_benchmark_times_a_run_by_target_and_phase(tmp_path):
    out = tmp_path / "matrix.json"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_matrix.py"), "--no-engines",
                          "--reports-dir", str(tmp_path / "reports"), "--json", str(out),
                          "--", "--provider", "local", "-p", "=tmpfs", "-k", "lifecycle"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    figures = json.loads(out.read_text())
    run = figures["without_engines"]
    assert run["argv"][-4:] == ["-p", "=tmpfs", "-k", "lifecycle"] and "--engine" in run["argv"]
    (host,) = run["targets"]
    assert host["target"] == "host" and host["cells"] == run["cells"] > 0 and host["cell_s"] > 0
    assert host["wall_s"] is not None and host["first_s"] is not None and 0 < host["first_s"] <= host["wall_s"]
    assert run["unmet"] == 0 and figures["with_engines"] is None
    assert figures["verdicts"][0].startswith("default run, engines excluded: ")
    assert "target <= 180 s" in res.stdout and "s/cell" in res.stdout
    assert run["cpu_s"] > 0  # the run's and its children's user + sys


def test_matrix_benchmark_gives_the_cpu_ratio_that_bounds_the_engine_wall_ratio(tmp_path):
    out = tmp_path / "matrix.json"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_matrix.py"),
                          "--reports-dir", str(tmp_path / "reports"), "--json", str(out),
                          "--", "--provider", "local", "-p", "=tmpfs", "-k", "engine-verdict"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    figures = json.loads(out.read_text())
    plain, engines = figures["without_engines"], figures["with_engines"]
    assert engines["cells"] > plain["cells"] > 0
    # the engines' daemons and helpers are counted: CPU is the agent's and every process it reaped
    assert engines["cpu_s"] > plain["cpu_s"] > 0
    (line,) = [v for v in figures["verdicts"] if v.strip().startswith("CPU (user + sys)")]
    assert "%.2fx" % (engines["cpu_s"] / plain["cpu_s"]) in line


def test_matrix_benchmark_refuses_a_directory_that_is_not_a_run(tmp_path):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_matrix.py"), "--from", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "is not a run directory" in res.stderr and "Traceback" not in res.stderr
