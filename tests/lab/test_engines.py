"""The engine axis on the host side: which cells a matrix holds per engine, how ``--engine``
selects, what the runner asks of the agent (every engine, time for each), ``list engines``,
and a real run whose engine cells carry their engine.

The catalogue's own engine scenarios come with the agent's change; these tests use a throwaway
scenario of group ``engine`` (tests/throwaway_engine.py), in this process and in every process
a CLI test starts, the agent's included.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import pytest

from overlaylab.agent.engines import engine_names
from overlaylab.agent.profiles import load_profiles
from overlaylab.agent.scenario import all_scenarios
from overlaylab.lab.matrix import Matrix, SelectionError, plan_matrix, select_engines
from overlaylab.lab.results import RunStore, load_run
from overlaylab.lab.runner import AGENT_GRACE, ENGINE_GRACE, TCG_SLOWDOWN, Runner
from tests.lab.fakes import AgentResult, FakeSession

from ..throwaway_engine import THROWAWAY, registered, site_dir

OVERLAYLAB = [sys.executable, "-m", "overlaylab"]



@pytest.fixture
def engine_scenario():
    with registered() as sc:
        yield sc


# --- the matrix -------------------------------------------------------------------------------

def test_engine_scenarios_run_once_per_engine_and_the_others_once(engine_scenario):
    profiles = load_profiles()
    _, m = plan_matrix("local", [], [], ["=tmpfs or =btrfs"], ["=driver-init or =" + THROWAWAY], profiles,
                       ["port", "docker-overlay"])
    assert m.engines == ["port", "docker-overlay"]
    assert m.runs_for("host") == [("driver-init", "port"), (THROWAWAY, "port"), (THROWAWAY, "docker-overlay")]
    assert m.cell_count == 2 * 3 and m.cells_for("host") == 6
    assert m.to_dict()["engines"] == ["port", "docker-overlay"]
    # no --engine: every registered engine
    _, every = plan_matrix("local", [], [], ["=tmpfs"], ["=" + THROWAWAY], profiles)
    assert every.engines == engine_names() and every.cell_count == len(engine_names())


def test_engines_add_nothing_without_an_engine_scenario(engine_scenario):
    _, m = plan_matrix("local", [], [], ["=tmpfs"], ["=driver-init or =create-empty"], load_profiles(), ["all"])
    assert m.engines == [] and m.to_dict()["engines"] == []
    assert sorted(m.runs_for("host")) == [("create-empty", "port"), ("driver-init", "port")] and m.cell_count == 2


@pytest.mark.parametrize("exprs,chosen", [
    ([], ["port", "containers-storage", "fuse-overlayfs", "docker-overlay", "docker-overlay2"]),
    (["all"], ["port", "containers-storage", "fuse-overlayfs", "docker-overlay", "docker-overlay2"]),
    (["docker-overlay"], ["docker-overlay"]),             # a name is exact, not a substring
    (["docker*"], ["docker-overlay", "docker-overlay2"]),
    (["not fuse"], ["port", "containers-storage", "docker-overlay", "docker-overlay2"]),
    (["daemon"], ["docker-overlay", "docker-overlay2"]),
    (["containers"], ["containers-storage", "fuse-overlayfs"]),
    (["port", "=docker-overlay2"], ["port", "docker-overlay2"]),
    (["docker and not =docker-overlay"], ["docker-overlay2"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_engine_expressions_select_by_name_keyword_and_glob(exprs, chosen):
    assert select_engines(exprs) == chosen


@pytest.mark.parametrize("exprs,words", [
    (["dokcer"], ["--engine 'dokcer'", "matches no engine", "did you mean docker"]),
    (["docker-overlay3"], ["matches no engine", "did you mean docker-overlay"]),
    (["docker and fuse"], ["matches no engine (have: port, "]),
    (["docker and"], ["unexpected end at column 11"]),
])
def test_a_bad_engine_selection_is_one_line(exprs, words):
    with pytest.raises(SelectionError) as err:
        select_engines(exprs)
    text = str(err.value)
    assert "\n" not in text and all(w in text for w in words), text


# --- the runner -------------------------------------------------------------------------------

class _Session(FakeSession):

    def __init__(self, accel=None):
        self.accel = accel
        self.calls = []

    def run(self, command, timeout):
        self.calls.append((command, timeout))
        target = json.dumps({"record": "target", "facts": {}}) + "\n" if "--probe-target" in command else ""
        return AgentResult(0, target + json.dumps({"record": "cell", "profile": "tmpfs", "scenario": THROWAWAY, "engine": "port",
                                      "group": "engine", "outcome": "PASS", "expected": "PASS", "met": True}) + "\n")


class _Provider:
    name = "stub"

    def __init__(self, session):
        self.session = session

    @contextlib.contextmanager
    def up(self, kernel, disks=(), keep=False):
        yield self.session


def test_the_agent_gets_every_engine_and_missing_engine_cells_are_errors(tmp_path, engine_scenario):
    """One agent command with each engine; a cell the agent did not report is an ERROR cell of
    its own engine; progress counts every engine cell."""
    sc = all_scenarios()
    matrix = Matrix(["k1"], {"tmpfs": load_profiles()["tmpfs"]},
                    {"driver-init": sc["driver-init"], THROWAWAY: engine_scenario}, engines=["port", "docker-overlay"])
    session = _Session()
    events = []
    store = RunStore(str(tmp_path), run_id="engines")
    store.start()
    Runner(_Provider(session), store, matrix, progress=lambda e, info: events.append(e)).run()
    store.finish()
    agent = [c for c, _ in session.calls if " run " in c]
    assert len(agent) == 1 and "--engine port --engine docker-overlay" in agent[0]
    cells = load_run(store.path).cell_map()
    assert sorted(cells) == sorted([("k1", "tmpfs", "driver-init", "port"), ("k1", "tmpfs", THROWAWAY, "port"),
                                    ("k1", "tmpfs", THROWAWAY, "docker-overlay")])
    assert cells[("k1", "tmpfs", THROWAWAY, "port")]["outcome"] == "PASS"
    missing = cells[("k1", "tmpfs", THROWAWAY, "docker-overlay")]
    assert missing["outcome"] == "ERROR" and missing["engine"] == "docker-overlay"
    assert "engine" not in cells[("k1", "tmpfs", "driver-init", "port")]  # port cells keep their old form
    assert events.count("cell") == matrix.cell_count == 3


@pytest.mark.parametrize("accel,factor", [(None, 1.0), ("kvm", 1.0), ("tcg", TCG_SLOWDOWN)])
def test_the_agent_gets_extra_time_per_engine(tmp_path, engine_scenario, accel, factor):
    profiles = {"tmpfs": load_profiles()["tmpfs"]}
    matrix = Matrix(["k1"], profiles, {THROWAWAY: engine_scenario},
                    engines=["port", "containers-storage", "docker-overlay2"])
    runner = Runner(_Provider(_Session()), RunStore(str(tmp_path), run_id="t"), matrix)
    timeout = runner._agent_timeout(_Session(accel), "k1", 1, matrix.runs_for("k1"))
    assert timeout == AGENT_GRACE + 3 * engine_scenario.timeout + 2 * ENGINE_GRACE * factor
    port_matrix = Matrix(["k1"], profiles, {THROWAWAY: engine_scenario}, engines=["port"])
    port_only = Runner(_Provider(_Session()), RunStore(str(tmp_path), run_id="u"), port_matrix)
    assert port_only._agent_timeout(_Session(accel), "k1", 2, port_matrix.runs_for("k1")) == 2 * (AGENT_GRACE + engine_scenario.timeout)


# --- the command line -----------------------------------------------------------------------------

def _cli(args, env=None, timeout=300):
    return subprocess.run(OVERLAYLAB + list(args), capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def test_list_engines_names_all_five_with_their_availability():
    res = _cli(["list", "engines", "--json"], timeout=60)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["name"] for r in rows] == engine_names() and len(rows) == 5
    for r in rows:
        assert set(r) == {"name", "description", "version", "available", "unavailable"}
        assert r["available"] is (r["unavailable"] is None)
        assert r["available"] or r["unavailable"]  # a reason whenever it cannot run here
    table = _cli(["list", "engines"], timeout=60)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split() == ["engine", "version", "here",
                                                                              "description"]
    for r in rows:
        line = next(line for line in table.stdout.splitlines() if line.split()[0] == r["name"])
        assert ("available here" if r["available"] else r["unavailable"]) in line


@pytest.fixture
def lab_tmp(tmp_path):
    """TMPDIR for the agent: anything it leaves is found (and removed) here."""
    d = tmp_path / "agent-tmp"
    d.mkdir()
    yield str(d)
    from overlaylab.agent.backingfs import unmount_tree
    from overlaylab.mountutil import mounts_under
    left = mounts_under(str(d))
    unmount_tree(str(d))
    assert left == []


def test_a_run_records_engine_cells_and_its_bundle_reproduces_one(tmp_path, lab_tmp):
    reports = str(tmp_path / "reports")
    env = {"PYTHONPATH": site_dir(str(tmp_path)), "TMPDIR": lab_tmp}
    started = time.monotonic()
    res = _cli(["run", "--provider", "local", "--reports-dir", reports, "-p", "=tmpfs",
                "-k", "=driver-init or =" + THROWAWAY, "--engine", "port"], env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    run_dir = os.path.join(reports, "runs", os.listdir(os.path.join(reports, "runs"))[0])
    run = load_run(run_dir)
    assert run.meta["matrix"]["engines"] == ["port"] and run.meta["cells_expected"] == 2
    cells = run.cell_map()
    assert sorted(cells) == [("host", "tmpfs", "driver-init", "port"), ("host", "tmpfs", THROWAWAY, "port")]
    engine_cell = cells[("host", "tmpfs", THROWAWAY, "port")]
    assert engine_cell["engine"] == "port" and engine_cell["group"] == "engine" and engine_cell["met"]
    assert time.monotonic() - started < 120

    # its bundle's repro runs exactly that cell again: --engine port, or every engine would run
    out = _cli(["bundle", run_dir, "host/tmpfs/%s" % THROWAWAY, "-o", str(tmp_path)], env=env)
    assert out.returncode == 0, out.stderr
    dry = _cli(["repro", out.stdout.strip(), "--dry-run"], env=env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.split()[3:] == ["run", "--provider", "local", "-K", "host", "-p", "=tmpfs",
                                      "-k", "=" + THROWAWAY, "--engine", "port"]
    again = _cli(["repro", out.stdout.strip(), "--reports-dir", reports], env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "REPRODUCED: host/tmpfs/%s is %s again" % (THROWAWAY, engine_cell["outcome"]) in again.stdout


def test_vm_kernels_leave_the_engine_group_to_an_explicit_k():
    profiles = load_profiles()
    _, default = plan_matrix("auto", ["host", "debian-6.1"], [], ["=tmpfs"], [], profiles)
    host_engine = [s for s, e in default.runs_for("host") if all_scenarios()[s].group == "engine"]
    vm_engine = [s for s, e in default.runs_for("debian-6.1") if all_scenarios()[s].group == "engine"]
    assert host_engine and len(set(e for _, e in default.runs_for("host"))) == len(engine_names())
    assert vm_engine == []  # TCG: a dockerd per profile and container runs cost minutes per kernel
    _, asked = plan_matrix("auto", ["debian-6.1"], [], ["=tmpfs"], ["engine"], profiles)
    assert {e for _, e in asked.runs_for("debian-6.1")} == set(engine_names())
