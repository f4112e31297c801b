"""Which cell a crashed guest was running (lab/runner.py ``_after_crash``): the last cell mark
on the console (overlaylab/agent/cellmark.py) names it even when the agent's ``start`` record
went down with the guest; a mark of a cell whose record arrived does not. The target is a stub
session with a console file (no kernel is booted; tests/vm/test_guest_panic.py boots one)."""
from __future__ import annotations

import contextlib
import json

from overlaylab.agent import cellmark
from overlaylab.agent.profiles import load_profiles
from overlaylab.agent.scenario import all_scenarios
from overlaylab.lab.matrix import Matrix
from overlaylab.lab.results import RunStore, load_run
from overlaylab.lab.runner import Runner
from tests.lab.fakes import AgentResult, FakeSession

SCENARIOS = ("create-empty", "driver-init", "diff-size")
PANIC = ["[    7.029343] sysrq: Trigger a crash",
         "[    7.029617] Kernel panic - not syncing: sysrq triggered crash"]


def _cell(scenario):
    return {"record": "cell", "profile": "tmpfs", "scenario": scenario, "group": "lifecycle", "outcome": "PASS",
            "expected": "PASS", "met": True, "duration": 0.1, "error": "", "log": [], "evidence": {}}


class _Session(FakeSession):
    """The first agent prints ``first`` and leaves ``console`` on the console as its guest
    panics; the rebooted guest's agent runs whatever it is asked."""
    restartable = True

    def __init__(self, console_log, first, console):
        self.console_log, self.first, self.console = console_log, first, console
        self.commands, self.crashed = [], False

    def run(self, command, timeout):
        self.commands.append(command)
        if command.endswith(" true"):  # the runner's "does it answer" probe
            return AgentResult(1)
        if not self.crashed:
            self.crashed = True
            with open(self.console_log, "w") as f:
                f.write("\n".join(self.console) + "\n")
            return AgentResult(255, "".join(json.dumps(r) + "\n" for r in self.first), "Connection closed")
        asked = command.split("--scenario ")[1:]
        return AgentResult(0, "".join(json.dumps(_cell(a.split()[0])) + "\n" for a in asked))

    def exited(self, timeout):
        return self.crashed

    def restart(self):
        open(self.console_log, "w").close()  # a new boot, a new console
        return 1.0


def _run(tmp_path, first, console):
    session = _Session(str(tmp_path / "console.log"), first, console)

    class Provider:
        name = "stub"

        @contextlib.contextmanager
        def up(self, kernel, disks=(), keep=False):
            yield session

    catalogue = all_scenarios()
    matrix = Matrix(["k1"], {"tmpfs": load_profiles()["tmpfs"]}, {s: catalogue[s] for s in SCENARIOS})
    store = RunStore(str(tmp_path / "reports"), run_id="crash")
    store.start()
    Runner(Provider(), store, matrix).run()
    store.finish()
    cells = {c["scenario"]: c for c in load_run(store.path).cells}
    return session, cells


def test_a_panic_that_took_the_start_record_down_is_blamed_on_the_cell_its_console_mark_names(tmp_path):
    profile = {"record": "profile", "profile": "tmpfs"}
    console = ["OVERLAYLAB-READY 9.9-test uptime=3.07",
               "[    6.9] " + cellmark.message("tmpfs", "create-empty", "port")] + PANIC
    session, cells = _run(tmp_path, [profile, _cell("create-empty")], console)
    assert all("--console-marks" in c for c in session.commands if "overlaylab.agent run" in c)
    assert cells["create-empty"]["outcome"] == "PASS"  # its record arrived: its mark is old news
    # the last mark is create-empty's, whose record came: the panic was between cells
    assert cells["driver-init"]["error"] == "the guest kernel panicked while the profile was set up or between its cells"

    console = console[:2] + ["[    7.0] " + cellmark.message("tmpfs", "driver-init", "port")] + PANIC
    _, cells = _run(tmp_path / "2", [profile, _cell("create-empty")], console)
    assert cells["driver-init"]["outcome"] == "ERROR"
    assert cells["driver-init"]["error"] == "the guest kernel panicked during this cell"
    assert cellmark.message("tmpfs", "driver-init", "port") in "\n".join(cells["driver-init"]["evidence"]["console_tail"])
    assert cells["diff-size"]["outcome"] == "PASS"  # the rebooted guest ran the rest


def test_without_a_mark_the_streams_start_record_names_the_cell(tmp_path):
    start = {"record": "start", "profile": "tmpfs", "scenario": "driver-init", "engine": "port"}
    _, cells = _run(tmp_path, [{"record": "profile", "profile": "tmpfs"}, _cell("create-empty"), start],
                    ["OVERLAYLAB-READY 9.9-test uptime=3.07"] + PANIC)
    assert cells["driver-init"]["error"] == "the guest kernel panicked during this cell"
    assert cells["diff-size"]["outcome"] == "PASS"


def test_marks_are_parsed_from_console_lines_and_only_whole_ones_count():
    mark = cellmark.message("ext4-fewinodes", "image-whiteouts", "docker-overlay2")
    assert cellmark.last_mark(["[   12.345678] " + mark, "[   12.4] something else"]) == \
        ("ext4-fewinodes", "image-whiteouts", "docker-overlay2")
    assert cellmark.last_mark([mark, "[ 1.0] " + cellmark.message("a", "b", "c")]) == ("a", "b", "c")
    # a line the kernel's output broke in two is no mark
    assert cellmark.last_mark(["[ 1.0] overlaylab-cell: tmpfs create-", "empty port"]) is None
    assert cellmark.is_mark("[ 1.0] " + mark) and not cellmark.is_mark("[ 1.0] overlayfs: empty lowerdir")
