"""``run --shard K/N`` and ``merge``: the split is deterministic, disjoint, complete and balanced;
real shard runs merged equal the whole run cell for cell; merge refuses what does not belong
together; and the README's CI layout works as written (shard jobs, artifacts, a merge job)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from overlaylab.agent.profiles import load_profiles
from overlaylab.lab import shard
from overlaylab.lab.matrix import plan_matrix
from overlaylab.lab.results import load_run, record_attempt
from overlaylab.agent.records import cell_key

OVERLAYLAB = [sys.executable, "-m", "overlaylab"]
SELECTION = ["--provider", "local", "-p", "=tmpfs or =ext4", "-k", "driver-init or create-empty or changes"]


def _cli(args, tmp=None, timeout=600):
    env = dict(os.environ, **({"TMPDIR": str(tmp)} if tmp else {}))
    return subprocess.run(OVERLAYLAB + args, capture_output=True, text=True, timeout=timeout, env=env)


def _default_matrix():
    _, matrix = plan_matrix("auto", [], [], [], [], load_profiles())
    return matrix.to_dict()


def _outcomes(path):
    return {(cell_key(c), record_attempt(c)): c["outcome"] for c in load_run(path).cells}


def _only_run(reports):
    runs = sorted(os.listdir(os.path.join(str(reports), "runs")))
    assert len(runs) == 1, runs
    return os.path.join(str(reports), "runs", runs[0])


@pytest.fixture
def lab_tmp():
    """TMPDIR for the agent: short, since dockerd's sockets under it must fit a unix socket path."""
    from pathlib import Path
    d = tempfile.mkdtemp(prefix="ol-", dir="/tmp")
    try:
        yield Path(d)
    finally:
        from overlaylab.agent.backingfs import unmount_tree
        unmount_tree(d)
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 40])
def test_shards_are_disjoint_and_cover_the_matrix_exactly(n):
    matrix = _default_matrix()
    everything = shard.matrix_cells(matrix)
    shards = [shard.shard_cells(matrix, k, n) for k in range(1, n + 1)]
    flat = [c for s in shards for c in s]
    # every kernel's profiles x its (scenario, engine) runs: the catalogue's size, not a constant
    expected = sum(len(matrix["profiles"]) * len(shard.runs_for(matrix, k)) for k in matrix["kernels"])
    assert len(flat) == len(set(flat)) == len(everything) == expected > 1000
    assert set(flat) == set(everything)
    for s in shards:  # each shard in matrix order, with whole (kernel, profile) units
        assert s == [c for c in everything if c in set(s)]
        for kernel, profile in {(c[0], c[1]) for c in s}:
            assert sum(1 for c in s if c[:2] == (kernel, profile)) == len(shard.runs_for(matrix, kernel))


def test_the_split_is_the_same_in_another_interpreter_with_another_hash_seed():
    code = ("import json; from overlaylab.lab import shard; from tests.lab.test_shards import _default_matrix; "
            "print(json.dumps([shard.shard_cells(_default_matrix(), k, 4) for k in (1, 2, 3, 4)]))")
    outs = []
    for seed in ("1", "987654"):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=dict(os.environ, PYTHONHASHSEED=seed))
        outs.append(res.stdout)
    here = json.loads(json.dumps([shard.shard_cells(_default_matrix(), k, 4) for k in (1, 2, 3, 4)]))
    assert json.loads(outs[0]) == json.loads(outs[1]) == here


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_shards_are_balanced_by_expected_cost(n):
    matrix = _default_matrix()
    costs = [shard.shard_cost(s) for s in shard.split(matrix, n)]
    biggest_unit = max(u.cost for u in shard.units(matrix))
    # longest-processing-time-first: no shard exceeds the lightest by more than one unit and a boot
    assert max(costs) - min(costs) <= biggest_unit + shard.BOOT, costs
    # and sharding pays: the slowest shard is well under the whole matrix
    assert max(costs) < 0.75 * shard.shard_cost(shard.units(matrix))


@pytest.mark.parametrize("n", [2, 3, 4, 6, 8, 20])
def test_vm_kernels_are_split_across_shards_only_where_it_pays(n):
    """Every shard that boots a VM kernel runs at least one whole profile of it, and the split
    adds at most one boot per extra shard (whole kernels go to one shard first)."""
    matrix = _default_matrix()
    boots = 0
    for s in shard.split(matrix, n):
        vm_kernels = {u.kernel for u in s if shard.is_vm(u.kernel)}
        boots += len(vm_kernels)
        for kernel in vm_kernels:
            assert sum(len(u.cells) for u in s if u.kernel == kernel) >= len(shard.runs_for(matrix, kernel)) > 1
    assert 4 <= boots <= 4 + n - 1


@pytest.mark.parametrize("bad", ["3/2", "0/2", "x", "1/0", "2"])
def test_a_bad_shard_is_one_line_and_exit_2(bad, tmp_path):
    res = _cli(["run", "--provider", "local", "--reports-dir", str(tmp_path), "--shard", bad])
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "--shard" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists()


def _shard_runs(reports, tmp, n, extra=()):
    for k in range(1, n + 1):
        res = _cli(["run"] + SELECTION + list(extra) + ["--reports-dir", str(reports), "--shard", "%d/%d" % (k, n)], tmp)
        assert res.returncode == 0, res.stdout + res.stderr


def test_two_shards_merged_equal_the_whole_run_cell_for_cell(tmp_path, lab_tmp):
    whole = tmp_path / "whole"
    res = _cli(["run"] + SELECTION + ["--reports-dir", str(whole)], lab_tmp)
    assert res.returncode == 0, res.stderr
    shards = tmp_path / "shards"
    _shard_runs(shards, lab_tmp, 2)
    parts = [os.path.join(str(shards), "runs", r) for r in sorted(os.listdir(str(shards / "runs")))]
    metas = [load_run(p).meta for p in parts]
    assert [m["shard"]["k"] for m in metas] == [1, 2] and all(m["shard"]["cells"] > 0 for m in metas)
    assert metas[0]["fingerprint"] == metas[1]["fingerprint"] == load_run(_only_run(whole)).meta["fingerprint"]
    merged_dir = tmp_path / "merged"
    res = _cli(["merge", "--reports-dir", str(merged_dir)] + parts)
    assert res.returncode == 0, res.stdout + res.stderr
    merged = _only_run(merged_dir)
    assert _outcomes(merged) == _outcomes(_only_run(whole)) and len(_outcomes(merged)) == 16
    run = load_run(merged)
    assert run.meta["status"] == "finished" and [s["run_id"] for s in run.meta["sources"]] == \
        [os.path.basename(p) for p in parts]
    assert [t["target"] for t in run.targets] == ["host"] and len(run.profiles) == 2
    # a normal run: the same reports as a single run, and `show` reads it
    for name in ("report.md", "report.html", "junit.xml", "summary.json"):
        assert os.path.getsize(os.path.join(merged, name)) > 0
    shown = _cli(["show", merged])
    assert shown.returncode == 0 and "16 cells: PASS 16" in shown.stdout


def _run_json(path, **changes):
    meta_path = os.path.join(path, "run.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta.update(changes)
    with open(meta_path, "w") as f:
        json.dump(meta, f)


def test_merge_refuses_other_matrices_versions_duplicates_and_gaps(tmp_path, lab_tmp):
    reports = tmp_path / "r"
    _shard_runs(reports, lab_tmp, 2)
    one, two = [os.path.join(str(reports), "runs", r) for r in sorted(os.listdir(str(reports / "runs")))]
    foreign = tmp_path / "foreign"
    res = _cli(["run", "--provider", "local", "-p", "=tmpfs", "-k", "driver-init", "--reports-dir", str(foreign)], lab_tmp)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"

    def refused(args, words):
        res = _cli(["merge", "--reports-dir", str(out)] + args)
        assert res.returncode == 2, res.stdout + res.stderr
        assert res.stderr.count("\n") == 1 and words in res.stderr, res.stderr
        assert not (out / "runs").exists() or os.listdir(str(out / "runs")) == []

    refused([one, _only_run(foreign)], "is of another matrix")
    refused([one, one], "duplicate cell")
    refused([one], "cells are in no run")
    refused([one], "shard 2/2 missing")
    other_version = tmp_path / "v"
    shutil.copytree(two, str(other_version))
    meta = load_run(str(other_version)).meta
    _run_json(str(other_version), host=dict(meta["host"], overlaylab="9.9.9"))
    refused([one, str(other_version)], "made by overlaylab 9.9.9")
    # --allow-partial: one shard alone is a partial run; resume then runs exactly the gap
    res = _cli(["merge", "--allow-partial", "--reports-dir", str(out), one])
    assert res.returncode == 3, res.stdout + res.stderr
    partial = _only_run(out)
    run = load_run(partial)
    assert run.meta["status"] == "partial" and run.meta["missing_cells"] == 16 - len(run.cells) > 0
    res = _cli(["run", "--resume", partial, "--reports-dir", str(out)], lab_tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    assert load_run(partial).meta["status"] == "finished"
    assert _outcomes(partial) == {**_outcomes(one), **_outcomes(two)} and len(_outcomes(partial)) == 16


def test_the_ci_layout_of_the_readme_merges_artifacts_of_shard_jobs(tmp_path, lab_tmp):
    """What the README's GitHub Actions / GitLab example does, step by step: each shard job runs
    with its own reports dir and uploads ``reports/runs/<id>/`` as artifact ``shard-K``; the
    merge job downloads them all into ``shards/shard-K/<id>/`` and merges ``shards/*/*``."""
    n = 3
    artifacts = tmp_path / "shards"
    for k in range(1, n + 1):
        job = tmp_path / ("job-%d" % k)  # a fresh runner: its own checkout, its own reports
        res = _cli(["run"] + SELECTION + ["--reports-dir", str(job / "reports"), "--shard", "%d/%d" % (k, n)], lab_tmp)
        assert res.returncode == 0, res.stderr
        shutil.copytree(str(job / "reports" / "runs"), str(artifacts / ("shard-%d" % k)))  # upload + download
    inputs = sorted(str(artifacts / a / r) for a in os.listdir(str(artifacts)) for r in os.listdir(str(artifacts / a)))
    assert len(inputs) == n
    res = _cli(["merge", "--reports-dir", str(tmp_path / "reports")] + inputs)
    assert res.returncode == 0, res.stdout + res.stderr
    merged = load_run(_only_run(tmp_path / "reports"))
    assert len(merged.cell_map()) == 16 and sorted(s["shard"]["k"] for s in merged.meta["sources"]) == [1, 2, 3]
