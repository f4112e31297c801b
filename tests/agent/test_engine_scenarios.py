"""The engine-neutral scenarios (group ``engine``) and the agent's way of running them.

Real runs: every engine scenario on the port over real filesystems (loop devices, tmpfs) meets
the expectation its probed facts give; the whole group through ``run_engine_cells`` on each
engine (``-k port`` runs the one engine every checkout has); the agent's ``--engine`` option;
an engine whose program is missing gives UNSUPPORTED cells with the reason.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types

import pytest

from overlaylab.agent import probes as probe_mod
from overlaylab.agent.engine_cells import CellSession, engine_facts, probe_footprint, run_engine_cells
from overlaylab.agent.engines import ENGINES, engine_names, get_engine
from overlaylab.agent.engines.base import Engine, EngineError, EngineRefused, EngineSession, EngineUnavailable, Verdict
from overlaylab.agent.engines.port import PortEngine
from overlaylab.agent.main import probe_profile
from overlaylab.agent.scenario import ENGINE_GROUP, Facts, Outcome, all_scenarios, classify, run_scenario
from tests.needs import need, need_tool

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENGINE_IDS = {"engine-verdict", "image-whiteouts", "delete-in-container", "rename-image-dir", "hardlinks-pulled",
              "xattrs-pulled", "copy-up-isolation", "container-changes", "exported-diff", "many-layers",
              "out-of-space", "out-of-inodes", "remove-mounted-container"}


def engine_scenarios():
    return [sc for sc in all_scenarios().values() if sc.group == ENGINE_GROUP]


@pytest.fixture
def short_dir():
    """A scratch dir with a short path free of ``[``/``]`` (containerd and AF_UNIX need it)."""
    path = tempfile.mkdtemp(prefix="ol-eng.")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def profile_cells(fs_factory, lab_profiles, profile, engine, scratch):
    bfs = fs_factory(profile)
    facts = probe_profile(lab_profiles[profile], bfs.mountpoint, probe_mod.run_target_probes())[1]
    return facts, {rec.scenario: rec for rec in run_engine_cells(engine, engine_scenarios(), bfs.mountpoint, facts,
                                                                   scratch)}


def unmet(cells) -> str:
    return "\n".join("%s: got %s expected %s (%s) error: %s log: %s" % (sid, c.outcome, c.expected, c.expected_why,
                                                                        c.error[:300], c.log[-3:])
                     for sid, c in cells.items() if not c.met)


# The catalogue (pure) ------------------------------------------------------------------------------

def test_the_engine_group_has_every_listed_scenario_each_with_reference_and_expectation():
    scs = {sc.id: sc for sc in engine_scenarios()}
    assert ENGINE_IDS <= set(scs) and len(scs) >= 12
    for sc in scs.values():
        assert sc.expect_func is not None and sc.reference and "\n" not in sc.description, sc.id


def _facts(**over):
    base = {"fs_magic": {"name": "extfs"}, "d_type": True, "upperdir": True, "dir_rename": "EXDEV",
            "xattr_user": True, "fs_inodes": 16384, "engine": "port", "engine_verdict": {"accepted": True, "message": ""}}
    base.update(over)
    return Facts(base)


def _expected(sid, **over):
    return all_scenarios()[sid].expect(_facts(**over)).outcome


def test_expectations_follow_the_engines_verdict_and_the_probed_facts():
    refused = {"accepted": False, "message": "driver not supported"}
    assert all(sc.expect(_facts(engine_verdict=refused)).outcome is Outcome.REFUSED for sc in engine_scenarios())
    assert "driver not supported" in all_scenarios()["engine-verdict"].expect(_facts(engine_verdict=refused)).why
    # No d_type: a container's deletions show everywhere the kernel merges; an image's only where layers stack.
    assert _expected("delete-in-container", d_type=False) is Outcome.FAIL
    assert _expected("image-whiteouts", d_type=False) is Outcome.PASS
    assert _expected("image-whiteouts", d_type=False, engine="docker-overlay2") is Outcome.FAIL
    assert _expected("rename-image-dir") is Outcome.FAIL
    assert _expected("rename-image-dir", dir_rename="redirect") is Outcome.PASS
    assert _expected("xattrs-pulled", xattr_user=False) is Outcome.UNSUPPORTED
    assert _expected("many-layers", fs_inodes=128) is Outcome.FAIL
    assert _expected("out-of-inodes", fs_inodes=0) is Outcome.UNSUPPORTED
    assert _expected("out-of-inodes", fs_inodes=128) is Outcome.PASS
    assert _expected("engine-verdict", upperdir=False) is Outcome.FAIL
    assert _expected("out-of-space", upperdir=False) is Outcome.PASS
    # Without engine facts, the port's Init as probed decides.
    assert all_scenarios()["engine-verdict"].expect(Facts({"driver_init": "REFUSED"})).outcome is Outcome.REFUSED


FUSE_MOUNTED = {"accepted": True, "message": "", "mount_program": True}


@pytest.mark.parametrize("engine", ["fuse-overlayfs", "containers-storage"])
def test_a_mount_program_in_the_verdict_not_the_engines_name_gives_fuse_overlayfs_expectations(engine):
    # where the driver said it mounts through fuse-overlayfs (configured, or 1.43's fallback on ext4 without
    # filetype): no d_type or upperdir need, and fuse-overlayfs 1.10's own failures, each with its upstream source
    fuse = dict(engine=engine, engine_verdict=FUSE_MOUNTED)
    assert _expected("container-changes", d_type=False, **fuse) is Outcome.PASS
    assert _expected("engine-verdict", upperdir=False, **fuse) is Outcome.PASS
    for sid, ref in (("image-whiteouts", "fuse-overlayfs#324"), ("delete-in-container", "commit/6a1040f"),
                     ("hardlinks-pulled", "issues/435"), ("rename-image-dir", "commit/7bbfb5b")):
        expectation = all_scenarios()[sid].expect(_facts(**fuse))
        assert expectation.outcome is Outcome.FAIL and ref in expectation.why, sid
    # the same engine where the driver mounts with the kernel's overlayfs: the kernel's expectations
    for sid in ("image-whiteouts", "delete-in-container", "hardlinks-pulled"):
        assert _expected(sid, engine=engine) is Outcome.PASS, sid
    assert _expected("rename-image-dir", engine=engine, dir_rename="redirect") is Outcome.PASS
    assert _expected("delete-in-container", engine=engine, d_type=False) is Outcome.FAIL


def test_engine_facts_carry_the_verdicts_mount_program():
    session = EngineSession(get_engine("port"), "/nonexistent", "/nonexistent")
    session.verdict = Verdict(True, "accepted", {"mount_program": True})
    assert engine_facts({"profile": "ext4"}, session)["engine_verdict"] == dict(FUSE_MOUNTED, message="accepted",
                                                                                 footprint=None)
    session.verdict = Verdict(True, "accepted", {})
    assert engine_facts({}, session)["engine_verdict"]["mount_program"] is False


def test_engine_errors_are_classified():
    assert classify(EngineRefused("driver not supported")) is Outcome.REFUSED
    assert classify(EngineError("mount failed")) is Outcome.FAIL
    assert classify(EngineUnavailable("no /dev/fuse")) is Outcome.UNSUPPORTED


# Real runs on the port -----------------------------------------------------------------------------

PROFILES = ["ext4", "ext4-nofiletype", "xfs", "btrfs", "tmpfs", "ext4-small", "ext4-fewinodes"]
#: what the port does per profile on this kind of target, beyond "as expected"
KNOWN = {
    "ext4-nofiletype": {"delete-in-container": "FAIL", "container-changes": "FAIL", "image-whiteouts": "PASS"},
    "xfs": {"out-of-inodes": "UNSUPPORTED"},
    "tmpfs": {"out-of-inodes": "UNSUPPORTED"},
    "ext4-small": {"out-of-space": "PASS", "out-of-inodes": "PASS"},
    "ext4-fewinodes": {"many-layers": "FAIL", "out-of-inodes": "PASS"},
}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_engine_scenario_on_the_port_meets_its_expectation(fs_factory, lab_profiles, profile, short_dir):
    facts, cells = profile_cells(fs_factory, lab_profiles, profile, "port", short_dir)
    assert set(cells) == {sc.id for sc in engine_scenarios()}
    assert not unmet(cells), unmet(cells)
    for sid, outcome in KNOWN.get(profile, {}).items():
        assert cells[sid].outcome == outcome, (sid, cells[sid].error)
    for cell in cells.values():
        assert cell.engine == "port" and cell.outcome != "ERROR"
        assert cell.evidence["engine"]["version"].startswith("v1.10.3")
    if profile == "btrfs":
        assert {c.outcome for c in cells.values()} == {"REFUSED"}
        assert {c.error for c in cells.values()} == {"backing file system is unsupported for this graph driver"}
    else:
        assert cells["engine-verdict"].outcome == "PASS"
        assert cells["rename-image-dir"].error.endswith("Invalid cross-device link (EXDEV)") == (facts["dir_rename"] == "EXDEV")
    if cells["out-of-space"].outcome == "PASS":
        assert "no space left on device" in cells["out-of-space"].evidence["pull_error"]


def test_an_engine_scenario_without_a_session_runs_on_the_port(fs_factory, lab_profiles, short_dir):
    bfs = fs_factory("tmpfs")
    facts = probe_profile(lab_profiles["tmpfs"], bfs.mountpoint, probe_mod.run_target_probes())[1]
    cell = run_scenario(all_scenarios()["container-changes"], bfs.mountpoint, facts, short_dir)
    assert cell.outcome is Outcome.PASS and cell.met, cell.error
    assert cell.evidence["engine"]["engine"] == "port"
    assert [c["argv"][0] for c in cell.evidence["engine"]["commands"]][:3] == ["Create", "ApplyDiff", "Create"]


@pytest.mark.parametrize("engine", engine_names())
def test_the_whole_engine_group_on_ext4_meets_its_expectations(fs_factory, lab_profiles, engine, short_dir):
    why = get_engine(engine).unavailable()
    need(why is None, why or "")
    facts, cells = profile_cells(fs_factory, lab_profiles, "ext4", engine, short_dir)
    assert not unmet(cells), unmet(cells)
    assert all(c.engine == engine and c.evidence["engine"]["engine"] == engine for c in cells.values())
    assert cells["engine-verdict"].outcome == "PASS"


# The agent ---------------------------------------------------------------------------------------

def _agent(*args):
    return subprocess.run([sys.executable, "-m", "overlaylab.agent", "run"] + list(args), cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_the_agent_refuses_an_unknown_engine_in_one_line():
    res = _agent("--profile", "ext4", "--engine", "port", "--engine", "nosuch")
    assert res.returncode == 2 and res.stderr == ""
    lines = res.stdout.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["record"] == "error" and record["error"].startswith("unknown engine(s) nosuch (have: port, ")


def test_the_agent_runs_port_scenarios_as_before_and_engine_scenarios_per_engine():
    res = _agent("--profile", "tmpfs", "--scenario", "create-empty", "--scenario", "engine-verdict")
    assert res.returncode == 0, res.stderr
    cells = [json.loads(line) for line in res.stdout.splitlines() if '"record": "cell"' in line]
    assert [(c["scenario"], c.get("engine")) for c in cells] == [("create-empty", None), ("engine-verdict", "port")]
    assert all(c["met"] for c in cells)
    assert cells[1]["evidence"]["engine"]["verdict"]["accepted"] is True


class MissingProgramEngine(Engine):
    name = "missing-program"
    programs = ("overlaylab-no-such-program",)
    package = "overlaylab-nothing"


class NoFuseEngine(Engine):
    """Installed, but finds out only when starting that it cannot run (like fuse-overlayfs without /dev/fuse)."""
    name = "no-fuse"

    @contextlib.contextmanager
    def open(self, backing_dir, workdir):
        raise EngineUnavailable("/dev/fuse is missing")
        yield


class BrokenStartEngine(Engine):
    """Its daemon dies while starting: the engine misbehaved."""
    name = "broken-start"

    @contextlib.contextmanager
    def open(self, backing_dir, workdir):
        raise EngineError("dockerd exited 1: failed to start daemon", {"rc": 1})
        yield


@pytest.fixture
def register_engine(monkeypatch):
    """``register_engine(cls)``: the engine table knows ``cls`` for this test only."""
    module = types.ModuleType("overlaylab.agent.engines.engines_for_test")
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def register(cls):
        setattr(module, cls.__name__, cls)
        monkeypatch.setitem(ENGINES, cls.name, "engines_for_test:%s" % cls.__name__)
        return cls.name
    return register


def test_an_engine_whose_program_is_missing_gives_unsupported_cells_with_the_reason(register_engine, short_dir):
    name = register_engine(MissingProgramEngine)
    facts = Facts({"profile": "tmpfs", "engine_verdict": {"accepted": True}})
    cells = list(run_engine_cells(name, engine_scenarios(), short_dir, facts, short_dir))
    assert len(cells) == len(engine_scenarios())
    for cell in cells:
        assert (cell.outcome, cell.expected, cell.met, cell.engine) == ("UNSUPPORTED", "UNSUPPORTED", True, name)
        assert cell.error == "overlaylab-no-such-program is not installed (Debian package overlaylab-nothing)"
    assert os.listdir(short_dir) == []


@pytest.mark.parametrize("cls, outcome, error", [
    (NoFuseEngine, "UNSUPPORTED", "/dev/fuse is missing"),
    (BrokenStartEngine, "FAIL", "dockerd exited 1: failed to start daemon"),
])
def test_an_engine_that_cannot_start_gives_cells_with_its_reason(register_engine, short_dir, cls, outcome, error):
    name = register_engine(cls)
    cells = list(run_engine_cells(name, engine_scenarios(), short_dir, Facts({"profile": "tmpfs"}), short_dir))
    assert [(c.outcome, c.error) for c in cells] == [(outcome, error)] * len(engine_scenarios())
    assert all(c.met == (c.expected == outcome) for c in cells)
    if outcome == "UNSUPPORTED":  # the engine's absence is expected; a start that fails is not
        assert all(c.met for c in cells)
    else:
        assert not cells[0].met and cells[0].evidence["engine"]["error"] == {"rc": 1}
    assert os.listdir(short_dir) == []


# Inode footprints and per-cell clean-up -----------------------------------------------------------

def test_the_footprint_probe_measures_what_one_container_costs_each_engine(fs_factory, short_dir):
    need_tool("dockerd", "docker.io")
    bfs = fs_factory("ext4")
    costs = {}
    for name in ("port", "docker-overlay2"):
        with get_engine(name).open(bfs.mountpoint, tempfile.mkdtemp(dir=short_dir)) as session:
            footprint = probe_footprint(session, bfs.mountpoint, tempfile.mkdtemp(dir=short_dir))
            assert footprint["free_inodes"] > 1000 and "error" not in footprint, footprint
            costs[name] = footprint["per_container"]
    # Docker's layer database, init layer and container config against the port's few dirs
    assert 0 < costs["port"] < 20 < costs["docker-overlay2"], costs


def test_an_inode_starved_fs_expects_fail_where_the_engines_footprint_does_not_fit():
    starved = {"accepted": True, "message": "", "footprint": {"free_inodes": 82, "per_container": 71}}
    roomy = {"accepted": True, "message": "", "footprint": {"free_inodes": 103, "per_container": 18}}
    full = {"accepted": True, "message": "", "footprint": {"free_inodes": 3, "error": "no space left on device"}}
    def expect(sid, **over):
        return all_scenarios()[sid].expect(_facts(**over))

    assert expect("container-changes", engine="docker-overlay2", engine_verdict=starved).outcome == Outcome.FAIL
    assert "71 inodes per container" in expect("container-changes", engine="docker-overlay2",
                                               engine_verdict=starved).why
    assert expect("engine-verdict", engine="docker-overlay2", engine_verdict=starved).outcome == Outcome.PASS
    assert expect("container-changes", engine="containers-storage", engine_verdict=roomy).outcome == Outcome.PASS
    assert expect("engine-verdict", engine="docker-overlay2", engine_verdict=full).outcome == Outcome.FAIL


def test_what_a_failed_cell_pulled_is_removed_before_the_next_cell(fs_factory, short_dir):
    bfs = fs_factory("tmpfs")
    layer = os.path.join(short_dir, "l.tar")
    with tarfile.open(layer, "w") as tar:
        info = tarfile.TarInfo("f")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with get_engine("port").open(bfs.mountpoint, tempfile.mkdtemp(dir=short_dir)) as session:
        cell = CellSession(session)
        image = cell.pull([layer])
        cell.create(image)
        before = os.statvfs(bfs.mountpoint).f_ffree
        assert len(cell.close()) == 2  # the container, then its image
        assert os.statvfs(bfs.mountpoint).f_ffree > before and cell.close() == []


def test_a_footprint_that_could_not_be_measured_expects_nothing():
    """xfs allocates inodes as it goes: the free count can even grow while a container is made."""
    for footprint in ({"free_inodes": 153579}, {"free_inodes": 153579, "per_container": -3}):
        facts = _facts(engine="port", engine_verdict={"accepted": True, "message": "", "footprint": footprint})
        assert all_scenarios()["image-whiteouts"].expect(facts).outcome == Outcome.PASS, footprint


# An engine that keeps room after a cell: the next cell gets a fresh one ---------------------------

class LeakyPortEngine(PortEngine):
    """The port, but each pull also leaves a file on the backing fs that removing the image does
    not take back: what Docker does with the partial state of an operation that hit ENOSPC."""
    name = "leaky-port"
    opened = 0

    @contextlib.contextmanager
    def open(self, backing_dir, workdir):
        LeakyPortEngine.opened += 1
        with super().open(backing_dir, workdir) as session:
            real_pull = session.pull

            def pull(layer_tars):
                ref = real_pull(layer_tars)
                with open(tempfile.mkstemp(prefix="stray-", dir=backing_dir)[0], "w"):
                    pass
                return ref
            session.pull = pull
            yield session


def test_a_cell_that_leaves_the_engine_holding_inodes_is_followed_by_a_fresh_engine(register_engine, fs_factory,
                                                                                      lab_profiles, short_dir):
    """Each cell starts on the room the first had; the record says what was kept."""
    name = register_engine(LeakyPortEngine)
    LeakyPortEngine.opened = 0
    bfs = fs_factory("ext4-small")
    facts = probe_profile(lab_profiles["ext4-small"], bfs.mountpoint, probe_mod.run_target_probes())[1]
    scenarios = [all_scenarios()[s] for s in ("engine-verdict", "image-whiteouts", "hardlinks-pulled")]
    free_at_start = []
    cells = list(run_engine_cells(name, scenarios, bfs.mountpoint, facts, short_dir,
                                  on_start=lambda sc: free_at_start.append(os.statvfs(bfs.mountpoint).f_ffree)))
    assert [c.outcome for c in cells] == ["PASS"] * 3, unmet(cells)
    assert LeakyPortEngine.opened == 3
    # the stray files stay (the engine's, not the lab's), but each engine's own root went with it
    strays = len([n for n in os.listdir(bfs.mountpoint) if n.startswith("stray-")])
    assert strays == 3 + 3  # each engine's footprint probe pulled once, and so did each of the three cells
    for cell in cells[:2]:
        assert cell.evidence["engine"]["kept"]["inodes"] >= 1
        assert "the next cell gets a fresh engine" in cell.log[-1]
    assert "fresh engine" not in " ".join(cells[2].log)
    assert len(set(free_at_start)) == 3  # each start is one probe's stray and one cell's lower than the last


def test_an_engine_that_keeps_nothing_runs_every_cell_in_one_session(register_engine, fs_factory, lab_profiles,
                                                                     short_dir):
    LeakyPortEngine.opened = 0
    bfs = fs_factory("ext4-small")
    facts = probe_profile(lab_profiles["ext4-small"], bfs.mountpoint, probe_mod.run_target_probes())[1]
    scenarios = [all_scenarios()[s] for s in ("engine-verdict", "image-whiteouts", "hardlinks-pulled")]
    cells = list(run_engine_cells("port", scenarios, bfs.mountpoint, facts, short_dir))
    assert all(c.met for c in cells) and not any("kept" in c.evidence["engine"] for c in cells), unmet(cells)
    assert len({c.evidence["engine"]["open_seconds"] for c in cells}) == 1  # one session


def test_on_an_inode_starved_fs_every_docker_cell_starts_from_the_same_room(fs_factory, lab_profiles, short_dir):
    """Docker keeps inodes after the operations that hit ENOSPC on ext4-fewinodes (78 free became
    28 over the group, and out-of-space, out-of-inodes and remove-mounted-container failed in a
    whole run yet passed on their own). Now each cell starts on the same free inodes and meets
    the expectation of its own: the pull-only cases PASS, those that need two containers FAIL."""
    need_tool("dockerd", "docker.io")
    bfs = fs_factory("ext4-fewinodes")
    facts = probe_profile(lab_profiles["ext4-fewinodes"], bfs.mountpoint, probe_mod.run_target_probes())[1]
    free_at_start = []
    cells = {c.scenario: c for c in run_engine_cells(
        "docker-overlay2", engine_scenarios(), bfs.mountpoint, facts, short_dir,
        on_start=lambda sc: free_at_start.append(os.statvfs(bfs.mountpoint).f_ffree))}
    assert all(c.met for c in cells.values()), unmet(cells.values())
    # the same room at every start (a daemon's own files may move it by an inode or two; the
    # kept inodes of one engine for the whole group took it from 78 down to 28)
    assert max(free_at_start) - min(free_at_start) <= 2, free_at_start
    assert {s for s, c in cells.items() if c.outcome == "PASS"} == \
        {"engine-verdict", "out-of-space", "out-of-inodes", "remove-mounted-container"}
    assert any("kept" in c.evidence["engine"] for c in cells.values())


def test_room_counts_inodes_only_on_a_fixed_table_and_space_beyond_the_slack(fs_factory):
    from overlaylab.agent.engine_cells import Room
    root = fs_factory("tmpfs").mountpoint
    before = Room.of(root)
    for i in range(3):
        open(os.path.join(root, "f%d" % i), "w").close()
    assert before.kept(root, fixed_inodes=True) == {"inodes": 3}
    assert before.kept(root, fixed_inodes=False) == {}  # xfs, btrfs: their counts say nothing here
    with open(os.path.join(root, "small"), "wb") as f:
        f.write(b"x" * (Room.SPACE_SLACK // 2))
    assert "bytes" not in before.kept(root, fixed_inodes=False)
    with open(os.path.join(root, "big"), "wb") as f:
        f.write(b"x" * (2 * Room.SPACE_SLACK))
    assert before.kept(root, fixed_inodes=False)["bytes"] >= 2 * Room.SPACE_SLACK
