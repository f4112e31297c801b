"""The lab end to end on the host kernel: CLI run, stored results, re-shown tables, interruption,
and what happens when a target or the agent goes wrong."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from overlaylab.agent.profiles import load_profiles
from overlaylab.lab.results import RunStore, load_run
from overlaylab.lab.matrix import Matrix
from overlaylab.lab.runner import Runner, parse_records
from overlaylab.agent.scenario import all_scenarios
from overlaylab.mountutil import mounts_under
from tests.lab.fakes import AgentResult, FakeSession

OVERLAYLAB = [sys.executable, "-m", "overlaylab"]


def _run_cli(args, env=None, timeout=600):
    return subprocess.run(OVERLAYLAB + args, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def _tables(text):
    """The matrix and count tables of a run's output: from '== <target>' to the summary line."""
    start = text.index("== host")
    return text[start:text.index(" cells: ", start)]


def _loops_under(path, settle=0.0):
    """Loop devices backed by files under ``path``; with ``settle``, wait that long for the
    kernel's asynchronous release after ``losetup -d`` before answering."""
    deadline = time.monotonic() + settle
    while True:
        out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        loops = [line for line in out.splitlines() if path in line]
        if not loops or time.monotonic() >= deadline:
            return loops
        time.sleep(0.2)


@pytest.fixture
def lab_tmp(tmp_path):
    """TMPDIR for the agent, so anything it leaves is found (and cleaned) here."""
    d = tmp_path / "agent-tmp"
    d.mkdir()
    yield str(d)
    from overlaylab.agent.backingfs import unmount_tree
    unmount_tree(str(d))
    for line in _loops_under(str(d)):
        subprocess.run(["losetup", "-d", line.split(":")[0]])


def test_local_run_stores_cells_and_prints_tables(tmp_path, lab_tmp):
    reports = tmp_path / "reports"
    res = _run_cli(["run", "--provider", "local", "--reports-dir", str(reports), "-p", "=tmpfs or =btrfs",
                    "-k", "driver-init or create-empty or whiteouts-through-diff"], env={"TMPDIR": lab_tmp})
    assert res.returncode == 0, res.stdout + res.stderr
    runs = os.listdir(reports / "runs")
    assert len(runs) == 1
    run = load_run(str(reports / "runs" / runs[0]))
    assert run.meta["status"] == "finished" and run.meta["schema"] == 1
    cells = run.cell_map()
    assert len(cells) == 6
    assert cells[("host", "btrfs", "driver-init", "port")]["outcome"] == "REFUSED"
    assert "'overlay' is not supported over btrfs." in json.dumps(cells[("host", "btrfs", "driver-init", "port")])
    assert cells[("host", "tmpfs", "whiteouts-through-diff", "port")]["outcome"] == "PASS"
    assert all(c["met"] for c in run.cells)
    profile = run.profile_record("host", "tmpfs")
    assert profile["fs"]["info"] and profile["facts"]["fs_magic"]["name"] == "tmpfs"
    assert run.target_record("host")["kernel_release"] == os.uname().release
    assert "REFUSED" in res.stdout and "whiteouts-through-diff" in res.stdout
    # `show` re-prints the same matrix from disk.
    shown = _run_cli(["show", runs[0], "--reports-dir", str(reports)])
    assert shown.returncode == 0
    assert _tables(shown.stdout) == _tables(res.stdout) and "whiteouts-through-diff" in _tables(shown.stdout)
    assert mounts_under(lab_tmp) == [] and _loops_under(lab_tmp, settle=10) == []


def _start_run(reports, lab_tmp, profiles):
    """``overlaylab run`` in its own session (so a test can signal its whole group)."""
    return subprocess.Popen(OVERLAYLAB + ["run", "--provider", "local", "--reports-dir", str(reports), "-p", profiles],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=lab_tmp), start_new_session=True)


def test_interrupt_tears_everything_down(tmp_path, lab_tmp):
    reports = tmp_path / "reports"
    proc = _start_run(reports, lab_tmp, "=ext4")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _loops_under(lab_tmp):
            time.sleep(0.1)
        assert _loops_under(lab_tmp), "the agent never attached its loop device"
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        # the runner's own bounds: agents 120 s to tear down (a profile's engines too: dockerd,
        # containers), workers 120 s, descendants 30 s; this test pins the teardown, not its speed
        out, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out + err
    run_dir = os.path.join(str(reports), "runs", os.listdir(str(reports / "runs"))[0])
    assert load_run(run_dir).meta["status"] == "interrupted"
    assert mounts_under(lab_tmp) == []
    assert _loops_under(lab_tmp, settle=10) == []


def test_sigterm_to_the_runner_alone_stops_the_agent_cleanly(tmp_path, lab_tmp):
    reports = tmp_path / "reports"
    proc = _start_run(reports, lab_tmp, "=xfs")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not mounts_under(lab_tmp):
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out + err
    assert mounts_under(lab_tmp) == [] and _loops_under(lab_tmp, settle=10) == []


def test_damaged_last_line_is_skipped_not_fatal(tmp_path):
    store = RunStore(str(tmp_path), run_id="r1")
    store.start(matrix={})
    store.append({"record": "cell", "target": "host", "profile": "p", "scenario": "s", "outcome": "PASS", "met": True})
    store.finish()
    with open(os.path.join(store.path, "results.jsonl"), "a") as f:
        f.write('{"record": "cell", "target": "host", "prof')  # a crash mid-write
    run = load_run(store.path)
    assert len(run.cells) == 1 and run.skipped_lines == 1
    assert run.cells[0]["schema"] == 1


class _Session(FakeSession):

    def __init__(self, behaviour):
        self.behaviour = behaviour

    def run(self, command, timeout):
        return self.behaviour(command, timeout)


class _Provider:
    name = "stub"

    def __init__(self, behaviour=None, boot_error=None):
        self.behaviour, self.boot_error = behaviour, boot_error

    @contextlib.contextmanager
    def up(self, kernel, disks=(), keep=False):
        if self.boot_error:
            raise self.boot_error
        yield _Session(self.behaviour)


def _matrix(scenarios=("create-empty", "driver-init")):
    catalogue = all_scenarios()
    profiles = load_profiles()
    return Matrix(["k1"], {"tmpfs": profiles["tmpfs"]}, {s: catalogue[s] for s in scenarios})


def test_a_target_that_does_not_boot_gives_error_cells(tmp_path):
    class BootError(Exception):
        console_tail = ["Kernel panic - not syncing: VFS: Unable to mount root fs"]

    store = RunStore(str(tmp_path), run_id="r2")
    store.start()
    Runner(_Provider(boot_error=BootError("no ready marker after 60 s")), store, _matrix()).run()
    store.finish()
    run = load_run(store.path)
    assert [c["outcome"] for c in run.cells] == ["ERROR", "ERROR"]
    assert "Kernel panic" in json.dumps(run.cells[0]["evidence"])
    assert run.target_record("k1")["error"] == "no ready marker after 60 s"


def test_an_agent_that_hangs_keeps_finished_cells_and_errors_the_rest(tmp_path):
    first = json.dumps({"record": "cell", "profile": "tmpfs", "scenario": "create-empty", "group": "lifecycle",
                        "outcome": "PASS", "expected": "PASS", "met": True, "duration": 0.1, "error": "",
                        "log": [], "evidence": {}})

    def behaviour(command, timeout):
        target = json.dumps({"record": "target", "facts": {}}) + "\n" if "--probe-target" in command else ""
        return AgentResult(124, target + first + "\n", "Terminated")  # `timeout` killed it after one cell

    store = RunStore(str(tmp_path), run_id="r3")
    store.start()
    Runner(_Provider(behaviour), store, _matrix()).run()
    store.finish()
    cells = load_run(store.path).cell_map()
    assert cells[("k1", "tmpfs", "create-empty", "port")]["outcome"] == "PASS"
    hung = cells[("k1", "tmpfs", "driver-init", "port")]
    assert hung["outcome"] == "ERROR" and "was killed" in hung["error"]
    assert hung["evidence"]["stderr_tail"] == ["Terminated"]


def test_parse_records_ignores_noise():
    records, junk = parse_records('warning: something\n{"record": "done"}\n{"x": 1}\n')
    assert records == [{"record": "done"}] and junk == ["warning: something", '{"x": 1}']


def test_vm_kernels_skip_the_scale_tier_by_default():
    catalogue = all_scenarios()
    profiles = load_profiles()
    light = {sid: sc for sid, sc in catalogue.items() if "scale" not in sc.tags}
    m = Matrix(["host", "debian-6.1"], {"tmpfs": profiles["tmpfs"]}, catalogue, vm_scenarios=light)
    assert m.scenarios_for("host") == catalogue and m.scenarios_for("debian-6.1") == light
    assert {"deep-layer-limit", "too-many-links", "enospc"} <= set(catalogue) - set(light)
    assert m.cell_count == len(catalogue) + len(light)
    assert m.to_dict()["vm_scenarios"] == list(light)


@pytest.mark.parametrize("probe_ok", [True, False], ids=["probed", "probe-failed"])
def test_the_first_agent_probes_the_kernel_and_the_next_get_its_facts(probe_ok):
    """The first agent of a target probes the kernel (run --probe-target: no agent of its own
    for that) and its target record is stored before any cell; each later agent run gets its
    facts (unless the probe failed: then it probes for itself)."""
    import argparse
    import base64
    import types

    from overlaylab.agent.main import _target_facts
    facts = {"kernel_release": "6.1.0-test", "overlay_params": {"redirect_dir": "N"}}
    cell = {"record": "cell", "profile": "tmpfs", "scenario": "driver-init", "group": "lifecycle",
            "outcome": "PASS", "expected": "PASS", "met": True, "duration": 0.1}
    commands = []

    def behaviour(command, timeout):
        commands.append(command)
        if "--probe-target" in command and not probe_ok:
            return AgentResult(1, "", "Traceback ...\nOSError: no /proc/filesystems")
        target = json.dumps({"record": "target", "facts": facts}) + "\n" if "--probe-target" in command else ""
        return AgentResult(0, target + json.dumps(cell) + "\n")

    kept = []
    store = types.SimpleNamespace(run_id="r-facts", append=kept.append)
    runner = Runner(_Provider(behaviour), store, _matrix(("driver-init",)), repeat=2)
    runner.run()
    agents = [c for c in commands if " run " in c]
    assert len(agents) == 2 and "--probe-target" in agents[0] and "--probe-target" not in agents[1]
    assert not [c for c in commands if " probe-target" in c]  # no agent of its own
    assert kept[0]["record"] == "target" and kept[0]["up_seconds"] >= 0
    if not probe_ok:  # a failed probe is not trusted: the agent probes for itself
        assert kept[0]["probe_error"] == ["Traceback ...", "OSError: no /proc/filesystems"]
        assert "facts" not in kept[0] and "--target-facts-b64" not in agents[1]
        return
    assert kept[0]["facts"] == facts and "probe_error" not in kept[0]
    assert [r["record"] for r in kept] == ["target", "cell", "cell"]
    given = agents[1].split("--target-facts-b64 ")[1].split()[0]
    assert json.loads(base64.b64decode(given)) == facts
    assert _target_facts(argparse.Namespace(target_facts_b64=given)) == facts
    assert _target_facts(argparse.Namespace(target_facts_b64="not base64 json")) is None
    assert _target_facts(argparse.Namespace(target_facts_b64=None)) is None
