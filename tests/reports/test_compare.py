"""Baselines and regressions (``compare``, ``run --baseline``) and the run index (``history``)."""
from __future__ import annotations

import json
import os
import shutil

from overlaylab.lab.results import load_run
from overlaylab.reports import RunReport
from overlaylab.reports.compare import compare, load_baseline, render_baseline

from .conftest import CHECKED_IN_BASELINE, PROFILES, SCENARIOS, cli, copy_run, run_dir_of
from .engine_runs import ENGINE, with_engine_cells

# A baseline that differs from what this machine really gives in known cells:
#   tmpfs/mount-label    really FAIL (no SELinux)   baseline PASS     -> newly failing (REGRESSION)
#   tmpfs/create-empty   really PASS                baseline FAIL     -> fixed
#   btrfs/driver-init    really REFUSED             baseline PASS     -> changed (still as expected)
#   tmpfs/driver-init    really PASS                not in baseline   -> new
#   btrfs/create-empty   really REFUSED             [PASS, REFUSED]   -> same (a known flaky cell)
#   tmpfs/no-such        -                          exact entry       -> out of the run's matrix
EDITED = """
schema = 1
name = "edited"
[[cell]]
match = "host/tmpfs/mount-label"
outcome = "PASS"
[[cell]]
match = "host/tmpfs/create-empty"
outcome = "FAIL"
[[cell]]
match = "host/btrfs/driver-init"
outcome = "PASS"
[[cell]]
match = "host/btrfs/create-empty"
outcome = ["PASS", "REFUSED"]
[[cell]]
match = "host/btrfs/*"
outcome = "REFUSED"
[[cell]]
match = "host/tmpfs/no-such"
outcome = "PASS"
"""


def _kinds(cmp):
    return {c.id: (c.kind, c.regression) for c in cmp.changes}


def test_compare_with_a_baseline_differing_in_known_cells(lab, tmp_path):
    base_file = tmp_path / "edited.toml"
    base_file.write_text(EDITED)
    rep = RunReport.from_run(load_run(lab.plain))
    cmp = compare(load_baseline(str(base_file)), rep)
    assert _kinds(cmp) == {
        "host/tmpfs/mount-label": ("newly-failing", True),
        "host/tmpfs/create-empty": ("fixed", False),
        "host/btrfs/driver-init": ("changed", False),
        "host/tmpfs/driver-init": ("new", False),
        "host/btrfs/create-empty": ("same", False),
        "host/btrfs/mount-label": ("same", False),
    }
    assert cmp.out_of_scope == 1
    res = cli(["compare", str(base_file), lab.plain])
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert any("host/tmpfs/mount-label" in l and "newly-failing (REGRESSION)" in l and "PASS" in l and "FAIL" in l
               for l in lines)
    assert any("host/tmpfs/create-empty" in l and "fixed" in l for l in lines)
    assert lines[-1].endswith("1 newly-failing, 1 fixed, 1 changed, 0 flaky, 1 new, 0 missing, 2 same; REGRESSIONS: 1")
    res = cli(["compare", str(base_file), lab.plain, "--format", "json"])
    data = json.loads(res.stdout)
    assert res.returncode == 1 and data["regressions"] == 1 and data["counts"]["fixed"] == 1


def test_run_with_baseline_exits_non_zero_on_regressions(lab, tmp_path):
    base_file = tmp_path / "edited.toml"
    base_file.write_text(EDITED)
    res = cli(["run", "--provider", "local", "--reports-dir", lab.reports, "-p", PROFILES, "-k", SCENARIOS,
               "--baseline", str(base_file)], env=lab.env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Compared with edited:" in res.stdout and "REGRESSIONS: 1" in res.stdout
    rep = RunReport.from_run(load_run(run_dir_of(res.stdout)))
    assert all(c.met for c in rep.cells.values())  # every cell as expected: the baseline alone fails it
    res = cli(["run", "--provider", "local", "--reports-dir", lab.reports, "--baseline", str(tmp_path / "nope.toml")])
    assert res.returncode == 2 and "--baseline" in res.stderr


def test_compare_runs_and_missing_cells(lab, tmp_path):
    res = cli(["compare", lab.plain, lab.repeat])
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().endswith("6 same; no regressions")
    # an interrupted run that lost a cell: missing, not a regression
    shorter = copy_run(lab.plain, str(tmp_path / "r"), "20990101-000000-shrt")
    path = os.path.join(shorter, "results.jsonl")
    with open(path) as f:
        lines = [l for l in f if '"scenario": "create-empty"' not in l or '"tmpfs"' not in l]
    with open(path, "w") as f:
        f.writelines(lines)
    cmp = compare(load_baseline(lab.plain), RunReport.from_run(load_run(shorter)))
    assert [(c.id, c.kind) for c in cmp.changes if c.kind != "same"] == [("host/tmpfs/create-empty", "missing")]
    assert not cmp.regressions


def test_baseline_file_round_trip_and_checked_in_baseline(lab, tmp_path):
    rep = RunReport.from_run(load_run(lab.plain))
    text = render_baseline(rep, name="mine")
    path = tmp_path / "b.toml"
    path.write_text(text)
    cmp = compare(load_baseline(str(path)), rep)
    assert all(c.kind == "same" for c in cmp.changes) and len(cmp.changes) == 6
    res = cli(["report", lab.plain, "--format", "baseline", "-o", str(tmp_path / "c.toml")])
    assert res.returncode == 0
    assert compare(load_baseline(str(tmp_path / "c.toml")), rep).counts()["same"] == 6
    # JSON is accepted too (same structure)
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    data = tomllib.loads(text)
    (tmp_path / "b.json").write_text(json.dumps(data))
    assert compare(load_baseline(str(tmp_path / "b.json")), rep).counts()["same"] == 6
    # the project's own baseline knows every cell of this machine's host kernel
    checked_in = load_baseline(CHECKED_IN_BASELINE)
    assert checked_in.kernels.get("host")
    for key in rep.cells:
        assert checked_in.lookup(key) is not None, key
    assert checked_in.lookup(("host", "btrfs", "enospc")).outcomes == ("REFUSED",)
    assert checked_in.lookup(("host", "xfs-v4-noftype", "create-empty")).outcomes == ("UNSUPPORTED",)


def test_history_shows_how_a_cell_moved(lab, tmp_path):
    reports = str(tmp_path / "reports")
    os.makedirs(os.path.join(reports, "runs"))
    for src in (lab.plain, lab.repeat):
        shutil.copytree(src, os.path.join(reports, "runs", os.path.basename(src)))

    def regress(rec):
        if rec["profile"] == "tmpfs" and rec["scenario"] == "driver-init":
            rec.update(outcome="FAIL", met=False, error="synthetic regression")
        return rec
    copy_run(lab.plain, reports, "29991231-235959-last", regress, started="2999-12-31T23:59:59+00:00")
    res = cli(["history", "--reindex", "--reports-dir", reports])
    assert res.returncode == 0, res.stderr
    assert "indexed 3 runs" in res.stderr
    assert os.path.basename(lab.plain) in res.stdout and "29991231-235959-last" in res.stdout
    assert "host/tmpfs/driver-init" in res.stdout  # listed among the cells that moved
    res = cli(["history", "--cell", "host/tmpfs/driver-init", "--reports-dir", reports])
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "== host/tmpfs/driver-init: 3 runs, outcome changed 1 times; now FAIL" in out
    assert "<- was PASS" in out and "2/2 PASS" in out
    # globs, and the index the real runs updated as they finished
    res = cli(["history", "--cell", "host/btrfs/*", "--reports-dir", lab.reports])
    assert res.returncode == 0 and "== host/btrfs/driver-init" in res.stdout and "== host/btrfs/mount-label" in res.stdout
    assert os.path.basename(lab.plain) in res.stdout and os.path.basename(lab.repeat) in res.stdout
    assert os.path.exists(os.path.join(lab.reports, "index.sqlite"))


def _docker_differs(rec):
    """Docker's overlay2 accepts btrfs, which the port refuses: its cells there PASS."""
    if rec["profile"] == "btrfs":
        rec.update(outcome="PASS", expected="PASS", met=True, expected_why="")


def test_baseline_round_trip_with_engine_cells(lab, tmp_path):
    """Engine cells are compared by their 4-part key; --format baseline writes 4-part matches for
    them and 3-part ones for the port, and a 3-part match never covers another engine's cell."""
    reports = str(tmp_path / "reports")
    run = with_engine_cells(lab.plain, reports, "20260101-000000-eng1", _docker_differs)
    rep = RunReport.from_run(load_run(run))
    assert len(rep.cells) == 12 and rep.engines() == ["port", ENGINE]
    res = cli(["report", run, "--format", "baseline", "-o", str(tmp_path / "e.toml")])
    assert res.returncode == 0, res.stderr
    base = load_baseline(str(tmp_path / "e.toml"))
    matches = [e.match for e in base.entries]
    assert "host/btrfs/*/%s" % ENGINE in matches and "host/btrfs/*" in matches
    assert all(m.count("/") == 3 and m.endswith("/" + ENGINE) for m in matches if m.count("/") == 3)
    cmp = compare(base, rep)
    assert cmp.counts()["same"] == 12 and not cmp.regressions
    assert base.lookup(("host", "btrfs", "driver-init", ENGINE)).outcomes == ("PASS",)
    assert base.lookup(("host", "btrfs", "driver-init", "port")).outcomes == ("REFUSED",)
    # a port-only baseline (3-part matches) knows none of the engine cells: they are new
    port_only = compare(load_baseline(CHECKED_IN_BASELINE), rep)
    assert {c.id for c in port_only.of_kind("new")} == {cv.id for cv in rep.cells.values() if cv.engine == ENGINE}
    # an engine cell that regresses is named by its 4-part id; its port twin is untouched
    worse = RunReport.from_run(load_run(with_engine_cells(lab.plain, reports, "20260101-000000-eng2", lambda rec: (
        _docker_differs(rec), rec.update(outcome="FAIL", met=False) if rec["scenario"] == "driver-init" else None))))
    assert {c.id for c in compare(base, worse).regressions} == {
        "host/tmpfs/driver-init/" + ENGINE, "host/btrfs/driver-init/" + ENGINE}
