"""overlaylab.agent.records: one vocabulary, records that round-trip, old runs that still load."""
from __future__ import annotations

import json

from overlaylab.agent import records
from overlaylab.agent import scenario
from overlaylab.lab import results, tables
from overlaylab.agent.records import CellRecord, Outcome, ProfileRecord, TargetRecord
from overlaylab.reports import html, model

# A cell as schema-1 runs stored it (the agent's keys plus the runner's).
OLD_CELL = {"record": "cell", "profile": "ext4", "scenario": "create-empty", "group": "lifecycle",
            "outcome": "FAIL", "expected": "PASS", "expected_why": "", "met": False, "duration": 0.25,
            "error": "boom", "log": ["a"], "evidence": {"errno": 5}, "target": "host",
            "kernel_release": "6.1.0", "provider": "local", "schema": 1, "run_id": "r1",
            "some_future_key": [1, 2]}


def test_the_vocabulary_is_defined_once():
    assert scenario.Outcome is Outcome
    assert results.OUTCOMES is records.OUTCOMES == ("PASS", "FAIL", "REFUSED", "UNSUPPORTED", "ERROR")
    assert model.ALL_OUTCOMES is records.ALL_OUTCOMES
    assert html.SHORT is records.SHORT is model.SHORT
    refused = model.CellView(("host", "btrfs", "driver-init", "port"), [{"outcome": "REFUSED", "met": True}])
    error = model.CellView(("host", "ext4", "driver-init", "port"), [{"outcome": "ERROR", "met": False}])
    assert tables.cell_text(refused) == records.SHORT["REFUSED"]
    assert tables.cell_text(error) == records.SHORT["ERROR"] + "!"
    assert set(records.SHORT) == set(records.ALL_OUTCOMES) == set(records.MEANING) == set(records.SYMBOLS)


def test_an_old_cell_round_trips_unchanged():
    rec = CellRecord.from_json(OLD_CELL)
    assert rec.outcome == "FAIL" and rec.key == ("host", "ext4", "create-empty", "port")
    assert rec.extra == {"some_future_key": [1, 2]}
    assert rec.to_json() == OLD_CELL
    assert json.loads(rec.line()) == OLD_CELL


def test_a_cell_from_the_agent_has_the_keys_readers_rely_on():
    rec = CellRecord("tmpfs", "driver-init", Outcome.REFUSED, group="lifecycle", expected=Outcome.REFUSED,
                     met=True).to_json()
    assert rec == {"record": "cell", "profile": "tmpfs", "scenario": "driver-init", "group": "lifecycle",
                   "outcome": "REFUSED", "expected": "REFUSED", "expected_why": "", "met": True,
                   "duration": 0.0, "error": "", "log": [], "evidence": {}}


def test_profile_and_target_records_keep_their_shape():
    unavailable = ProfileRecord("xfs-v4", unavailable={"step": "mkfs"}).to_json()
    assert unavailable == {"record": "profile", "profile": "xfs-v4", "unavailable": {"step": "mkfs"},
                           "fs": None, "probes": {}, "facts": {}, "dmesg": []}
    target = {"record": "target", "target": "host", "provider": "local", "kernel_release": "6.1.0",
              "accel": None, "disks": {}, "probes": {"d_type": {"value": True}}}
    assert TargetRecord.from_json(target).to_json() == target


def test_the_store_takes_records_and_loads_them_back(tmp_path):
    store = results.RunStore(str(tmp_path), run_id="r1")
    store.start()
    store.append(CellRecord.from_json(OLD_CELL))
    store.append(TargetRecord("host", "local", error="did not boot"))
    store.finish()
    run = results.load_run(store.path)
    assert run.cells == [OLD_CELL]
    assert run.targets[0]["error"] == "did not boot" and run.targets[0]["schema"] == records.SCHEMA_VERSION


def test_parse_records_ignores_noise():
    recs, junk = records.parse_records('warning: x\n{"record": "done"}\n{"x": 1}\n\n')
    assert recs == [{"record": "done"}] and junk == ["warning: x", '{"x": 1}']
