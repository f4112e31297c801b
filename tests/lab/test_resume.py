"""``run --resume RUN``: a run interrupted by SIGINT, then resumed, equals one that was never
interrupted; a run still running is refused; ``--rerun-errors`` replaces the ERROR cells of an
agent that was killed."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from overlaylab.agent.records import cell_key
from overlaylab.lab.results import load_run, record_attempt

OVERLAYLAB = [sys.executable, "-m", "overlaylab"]
CLASSIC = ["--provider", "local", "-p", "=tmpfs or =ext4 or =xfs or =btrfs", "-k", "not scale and not engine"]


@pytest.fixture
def lab_tmp():
    d = tempfile.mkdtemp(prefix="ol-", dir="/tmp")
    try:
        yield d
    finally:
        from overlaylab.agent.backingfs import unmount_tree
        unmount_tree(d)
        shutil.rmtree(d, ignore_errors=True)


def _cli(args, tmp, timeout=900):
    return subprocess.run(OVERLAYLAB + args, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, TMPDIR=tmp))


def _start(args, tmp):
    return subprocess.Popen(OVERLAYLAB + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=tmp), start_new_session=True)


def _run_dir(reports):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = os.listdir(os.path.join(reports, "runs")) if os.path.isdir(os.path.join(reports, "runs")) else []
        if runs:
            return os.path.join(reports, "runs", runs[0])
        time.sleep(0.1)
    raise AssertionError("no run directory under %s" % reports)


def _wait_cells(run_dir, n, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with open(os.path.join(run_dir, "results.jsonl")) as f:
                if f.read().count('"record": "cell"') >= n:
                    return
        time.sleep(0.05)
    raise AssertionError("fewer than %d cells after %d s" % (n, timeout))


def _outcomes(path):
    return {(cell_key(c), record_attempt(c)): c["outcome"] for c in load_run(path).cells}


def test_an_interrupted_run_resumed_equals_an_uninterrupted_one(lab_tmp):
    reports = os.path.join(lab_tmp, "r")
    proc = _start(["run"] + CLASSIC + ["--reports-dir", reports], lab_tmp)
    try:
        run_dir = _run_dir(reports)
        _wait_cells(run_dir, 20)
        # while it runs, a resume is refused in one line
        refused = _cli(["run", "--resume", run_dir], lab_tmp)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1
        assert "still running (runner pid %d" % proc.pid in refused.stderr
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out + err
    before = load_run(run_dir)
    assert before.meta["status"] == "interrupted" and 20 <= len(before.cells) < before.meta["cells_expected"]
    kept = _outcomes(run_dir)
    res = _cli(["run", "--resume", run_dir, "--reports-dir", reports], lab_tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    after = load_run(run_dir)
    assert after.meta["status"] == "finished" and after.meta["resumed"][0]["cells_before"] == len(kept)
    resumed = _outcomes(run_dir)
    assert {k: resumed[k] for k in kept} == kept and len(after.cells) == len(resumed)  # nothing ran twice
    whole = os.path.join(lab_tmp, "whole")
    res = _cli(["run"] + CLASSIC + ["--reports-dir", whole], lab_tmp)
    assert res.returncode == 0, res.stderr
    assert resumed == _outcomes(_run_dir(whole)) and len(resumed) == after.meta["cells_expected"]
    assert os.path.getsize(os.path.join(run_dir, "report.md")) > 0


def _agent_pids(run_id):
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
            if b"overlaylab.agent" in argv and b"run" in argv and run_id.encode() in argv:
                pids.append(int(pid))
    return pids


def test_rerun_errors_replaces_the_error_cells_of_a_killed_agent(lab_tmp):
    reports = os.path.join(lab_tmp, "r")
    selection = ["--provider", "local", "-p", "=ext4 or =tmpfs", "-k", "lifecycle or diff"]
    proc = _start(["run"] + selection + ["--reports-dir", reports], lab_tmp)
    try:
        run_dir = _run_dir(reports)
        _wait_cells(run_dir, 2)
        pids = _agent_pids(os.path.basename(run_dir))
        assert pids, "no agent process of the run"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # the OOM killer's way: the runner errors the rest of the profile
        out, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, out + err
    errors = {k for k, o in _outcomes(run_dir).items() if o == "ERROR"}
    assert errors, "the killed agent left no ERROR cells"
    total = len(_outcomes(run_dir))
    # without --rerun-errors the run is complete: nothing to do, the ERROR cells stay
    res = _cli(["run", "--resume", run_dir, "--reports-dir", reports], lab_tmp)
    assert res.returncode == 3 and {k for k, o in _outcomes(run_dir).items() if o == "ERROR"} == errors
    res = _cli(["run", "--resume", run_dir, "--rerun-errors", "--reports-dir", reports], lab_tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    outcomes = _outcomes(run_dir)
    assert "ERROR" not in outcomes.values() and len(outcomes) == total == len(load_run(run_dir).cells)
    with open(os.path.join(run_dir, "replaced.jsonl")) as f:
        replaced = [json.loads(line) for line in f]
    assert {(cell_key(c), record_attempt(c)) for c in replaced} == errors
    assert load_run(run_dir).meta["resumed"][-1]["rerun_errors"] == len(errors)


def test_resume_takes_no_selection_and_needs_a_run(lab_tmp):
    res = _cli(["run", "--resume", "nonesuch", "--reports-dir", lab_tmp], lab_tmp)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no run 'nonesuch'" in res.stderr
    res = _cli(["run", "--resume", "latest", "-p", "ext4", "--shard", "1/2"], lab_tmp)
    assert res.returncode == 2 and "drop -p, --shard" in res.stderr
