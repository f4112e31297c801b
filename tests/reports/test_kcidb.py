"""``overlaylab report -f kcidb``: KCIDB I/O data of real runs, validated with kcidb-io itself.

The real run is the reports tests' ``lab`` run (``--provider local``, ``-p '=tmpfs or =btrfs'``,
``-k '=driver-init or =create-empty or =mount-label'``: PASS, REFUSED and FAIL-as-expected cells
on the host kernel); the engine cells come from :mod:`tests.reports.engine_runs`.
"""
from __future__ import annotations

import json
import os
import sys

import pytest
from kcidb_io.schema import LATEST

from overlaylab.lab.results import load_run
from overlaylab.reports import RunReport
from overlaylab.reports.kcidb import build

from .conftest import cli, copy_run
from .engine_runs import CELLS, ENGINES, make_engine_run



def _kcidb(run_dir: str, out: str) -> dict:
    res = cli(["report", "-f", "kcidb", run_dir, "-o", out])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == out
    with open(out, encoding="utf-8") as f:
        return json.load(f)


def _by_cell(data: dict) -> dict:
    return {t["misc"]["cell"]: t for t in data["tests"]}


def test_kcidb_of_a_real_local_run_validates_with_one_test_per_cell(lab, tmp_path):
    data = _kcidb(lab.plain, str(tmp_path / "kcidb.json"))
    LATEST.validate_exactly(data)                       # kcidb-io's own validation, here too
    assert (data["version"]["major"], data["version"]["minor"]) == (LATEST.major, LATEST.minor) == (5, 3)
    rep = RunReport.from_run(load_run(lab.plain))
    tests = _by_cell(data)
    assert len(data["tests"]) == len(tests) == len(rep.cells) == 6          # one test per cell, no more
    assert sorted(tests) == sorted(cv.id for cv in rep.cells.values())
    assert len({t["path"] for t in data["tests"]}) == 6
    # statuses: PASS -> PASS, REFUSED (as expected) -> SKIP, FAIL (as expected: no SELinux) -> FAIL
    assert tests["host/tmpfs/create-empty"]["status"] == "PASS"
    assert tests["host/tmpfs/driver-init"]["status"] == "PASS"
    assert tests["host/btrfs/driver-init"]["status"] == "SKIP"
    assert tests["host/btrfs/create-empty"]["status"] == "SKIP"
    assert tests["host/tmpfs/mount-label"]["status"] == "FAIL"
    assert tests["host/tmpfs/mount-label"]["misc"]["met"] is True
    # one checkout and one build for the one kernel, linked
    assert [c["id"] for c in data["checkouts"]] == ["overlaylab:%s/host" % rep.run_id]
    assert [b["checkout_id"] for b in data["builds"]] == ["overlaylab:%s/host" % rep.run_id]
    assert data["checkouts"][0]["misc"]["kernel_release"] == os.uname().release
    assert data["builds"][0]["architecture"] == os.uname().machine.replace("-", "_")
    assert data["builds"][0]["misc"]["kernel_config_overlay"]["CONFIG_OVERLAY_FS"] in ("y", "m")
    for t in data["tests"]:
        assert t["origin"] == "overlaylab" and t["build_id"] == data["builds"][0]["id"]
        assert t["id"] == "overlaylab:%s/%s" % (rep.run_id, t["misc"]["cell"])
        env = t["environment"]["misc"]
        assert env["kernel_release"] == os.uname().release
        assert env["backing_fs"] == t["misc"]["cell"].split("/")[1]          # tmpfs or btrfs, as mounted
        assert t["start_time"] >= rep.run.meta["started"][:19] and t["duration"] >= 0
    label = tests["host/tmpfs/mount-label"]
    assert label["path"] == "overlaylab.tmpfs.mount-label"
    assert rep.get("host", "tmpfs", "mount-label").error[:60] in label["log_excerpt"]
    assert label["log_excerpt"].startswith("== error ==\n")


def test_kcidb_ids_and_bytes_are_stable_across_two_renders(lab, tmp_path):
    first, second = str(tmp_path / "a.json"), str(tmp_path / "b.json")
    _kcidb(lab.repeat, first)
    _kcidb(lab.repeat, second)
    with open(first, "rb") as a, open(second, "rb") as b:
        assert a.read() == b.read()
    with open(first) as f:
        data = json.load(f)
    LATEST.validate_exactly(data)
    run_id = os.path.basename(lab.repeat)
    ids = [o["id"] for kind in ("checkouts", "builds", "tests") for o in data[kind]]
    assert all(i.startswith("overlaylab:%s/" % run_id) for i in ids)
    assert len({t["id"] for t in data["tests"]}) == len(data["tests"])
    # --repeat 2: still one test per cell, its duration the attempts' sum
    rep = RunReport.from_run(load_run(lab.repeat))
    assert len(data["tests"]) == len(rep.cells)
    for t in data["tests"]:
        cv = rep.cells[tuple(t["misc"]["cell"].split("/")) + ("port",)]
        assert len(t["misc"]["outcomes"]) == 2
        assert t["duration"] == pytest.approx(sum(a["duration"] for a in cv.attempts), abs=0.002)


def test_kcidb_engine_cells_get_distinct_paths_and_mapped_statuses(lab, tmp_path):
    run_dir = make_engine_run(lab.plain, str(tmp_path / "reports"))
    data = _kcidb(run_dir, str(tmp_path / "kcidb.json"))
    LATEST.validate_exactly(data)
    tests = _by_cell(data)
    rep = RunReport.from_run(load_run(run_dir))
    assert len(data["tests"]) == len(rep.cells)
    assert len({(t["build_id"], t["path"]) for t in data["tests"]}) == len(data["tests"])
    assert [c["misc"]["kernel"] for c in data["checkouts"]] == ["host", "debian-6.1"]
    paths = {e: tests["host/tmpfs/engine-whiteouts" + ("" if e == "port" else "/" + e)]["path"] for e in ENGINES}
    assert paths == {"port": "overlaylab.tmpfs.engine-whiteouts",
                     "containers-storage": "overlaylab.tmpfs.engine-whiteouts.containers-storage",
                     "docker-overlay2": "overlaylab.tmpfs.engine-whiteouts.docker-overlay2"}
    # FLAKY (PASS, then FAIL not as expected): the schema's highest status of the attempts
    flaky = tests["host/tmpfs/engine-whiteouts/docker-overlay2"]
    assert flaky["status"] == "FAIL" and flaky["misc"]["outcome"] == "FLAKY"
    assert flaky["misc"]["outcomes"] == ["PASS", "FAIL"]
    assert tests["host/btrfs/engine-verdict"]["status"] == "SKIP"                      # REFUSED as expected
    assert tests["debian-6.1/btrfs/engine-whiteouts/containers-storage"]["status"] == "SKIP"   # UNSUPPORTED
    assert tests["debian-6.1/btrfs/engine-whiteouts/docker-overlay2"]["status"] == "ERROR"     # ERROR!
    assert tests["debian-6.1/tmpfs/engine-verdict"]["status"] == "FAIL"                # FAIL! stays FAIL
    assert CELLS[("debian-6.1", "tmpfs", "engine-whiteouts")]["containers-storage"] is None
    assert "debian-6.1/tmpfs/engine-whiteouts/containers-storage" not in tests        # not run: no test
    engine = tests["host/btrfs/engine-verdict/containers-storage"]
    assert engine["misc"]["engine_version"] == "1.43.0"
    assert "== engine verdict ==\naccepted" in engine["log_excerpt"]


def test_kcidb_not_as_expected_refused_is_fail_and_unsupported_is_miss(lab, tmp_path):
    cells = {("host", "btrfs", "engine-verdict"): {"port": ["REFUSED!"], "containers-storage": ["UNSUPPORTED!"],
                                                   "docker-overlay2": ["UNSUPPORTED"]}}
    run_dir = make_engine_run(lab.plain, str(tmp_path / "reports"), "20990101-000000-unmt", cells=cells)
    data = build(RunReport.from_run(load_run(run_dir)))
    LATEST.validate_exactly(data)
    tests = _by_cell(data)
    assert tests["host/btrfs/engine-verdict"]["status"] == "FAIL"
    assert "NOT as expected: expected PASS" in tests["host/btrfs/engine-verdict"]["comment"]
    assert tests["host/btrfs/engine-verdict/containers-storage"]["status"] == "MISS"
    assert tests["host/btrfs/engine-verdict/docker-overlay2"]["status"] == "SKIP"


def test_kcidb_log_excerpt_is_cut_to_the_schemas_limit(lab, tmp_path):
    limit = LATEST.json["$defs"]["test"]["properties"]["log_excerpt"]["maxLength"]

    def huge_dmesg(rec):
        if rec["profile"] == "tmpfs" and rec["scenario"] == "create-empty":
            rec["evidence"] = dict(rec.get("evidence") or {}, dmesg=["[ %d.0] overlayfs: line\0 %d" % (i, i)
                                                                      for i in range(5000)])
        return rec
    run_dir = copy_run(lab.plain, str(tmp_path / "reports"), "20990101-000000-huge", huge_dmesg)
    data = build(RunReport.from_run(load_run(run_dir)))
    LATEST.validate_exactly(data)
    excerpt = _by_cell(data)["host/tmpfs/create-empty"]["log_excerpt"]
    assert len(excerpt) == limit == 16384 and "\0" not in excerpt
    assert excerpt.startswith("== dmesg ==\n[ 0.0] overlayfs: line 0")
    assert excerpt.endswith("`overlaylab bundle RUN host/tmpfs/create-empty`]")


def test_kcidb_refuses_to_write_invalid_data_in_one_line(lab, tmp_path):
    run_dir = copy_run(lab.plain, str(tmp_path / "reports"), "20990101-000000-bad", started="yesterday")
    out = str(tmp_path / "kcidb.json")
    res = cli(["report", "-f", "kcidb", run_dir, "-o", out])
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert not os.path.exists(out)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "not valid KCIDB v5.3 data at checkouts/0/start_time" in lines[0] and "yesterday" in lines[0]


def test_kcidb_into_a_directory_is_kcidb_json(lab, tmp_path):
    res = cli(["report", "-f", "kcidb", lab.plain, "-o", str(tmp_path)])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "kcidb.json")
    assert os.listdir(str(tmp_path)) == ["kcidb.json"]


def test_kcidb_without_kcidb_io_says_which_extra_to_install(lab, monkeypatch):
    from overlaylab.reports.kcidb import KcidbError
    monkeypatch.setitem(sys.modules, "kcidb_io.schema", None)    # as if the package were not installed
    with pytest.raises(KcidbError, match=r"^the kcidb format needs the kcidb-io package: "
                                         r"pip install 'overlaylab\[kcidb\]'$"):
        build(RunReport.from_run(load_run(lab.plain)))
