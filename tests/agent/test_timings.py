"""The agent's per-phase timings: what the profile and cell records carry, and the cProfile switch."""
from __future__ import annotations

import os
import pstats
import subprocess
import sys
import time

from overlaylab.agent.backingfs import make_backing_fs
from overlaylab.agent.records import CellRecord, ProfileRecord
from overlaylab.agent.scenario import Scenario, run_scenario
from overlaylab.agent.timings import PROFILE_ENV, Timings, process_age, profiled

from .conftest import requires_root


def test_a_phase_timed_twice_adds_up():
    t = Timings()
    with t.phase("mkfs"):
        time.sleep(0.02)
    with t.phase("mkfs"):
        time.sleep(0.02)
    assert 0.04 <= t["mkfs"] < 1.0
    assert list(t) == ["mkfs"]


def test_process_age_counts_from_the_process_start():
    code = "import time; time.sleep(0.5); from overlaylab.agent.timings import process_age; print(process_age())"
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, check=True, text=True).stdout
    assert 0.5 <= float(out) < 30
    assert process_age() > 0


def test_a_cell_record_carries_its_phases(tmp_path):
    sc = Scenario("sleepy", "sleeps", "-", "lifecycle", lambda ctx: time.sleep(0.05), needs_mount=False)
    cell = run_scenario(sc, str(tmp_path), {}, str(tmp_path))
    assert set(cell.timings) == {"setup", "scenario", "teardown", "health"}
    assert cell.timings["scenario"] >= 0.05
    record = cell.to_record("tmpfs", "sleepy", "lifecycle").to_json()
    assert record["timings"]["scenario"] == cell.timings["scenario"]
    assert CellRecord.from_json(record).timings == cell.timings


def test_records_without_timings_load_and_write_back_without_them():
    old_cell = {"record": "cell", "profile": "ext4", "scenario": "create-empty", "outcome": "PASS"}
    assert CellRecord.from_json(old_cell).timings is None
    assert "timings" not in CellRecord.from_json(old_cell).to_json()
    old_profile = {"record": "profile", "profile": "ext4", "fs": None, "setup_seconds": 1.5}
    assert "timings" not in ProfileRecord.from_json(old_profile).to_json()


def test_the_profile_switch_writes_a_cprofile_file(tmp_path, monkeypatch):
    assert profiled("run", lambda: 41 + 1) == 42  # off: just the call
    assert not os.listdir(tmp_path)
    monkeypatch.setenv(PROFILE_ENV, str(tmp_path / "prof"))
    assert profiled("run", lambda: sum(range(1000))) == 499500
    (name,) = os.listdir(tmp_path / "prof")
    assert name == "agent-run-%d.prof" % os.getpid()
    assert pstats.Stats(str(tmp_path / "prof" / name)).total_calls > 0


@requires_root
def test_a_block_backing_fs_times_each_set_up_step(lab_profiles, lab_workdir):
    with make_backing_fs(lab_profiles["ext4"], lab_workdir) as bfs:
        assert set(bfs.timings) == {"image", "losetup", "mkfs", "inspect", "mount"}
        assert all(seconds >= 0 for seconds in bfs.timings.values())
        assert bfs.timings["mkfs"] > 0
