"""Docker 20.10's overlay and overlay2 as engines: a private dockerd on real backing filesystems.

Every test checks afterwards that no dockerd, containerd or shim process, no container, no
mount, no cgroup and no ``/run`` directory of the session is left (the ``nothing_left`` fixture).
"""
from __future__ import annotations

import json
import os
import signal
import tarfile
import shutil
import tempfile
import time

import pytest

from .layers import tar_file
from overlaylab import mountutil
from overlaylab.agent.engines import EngineRefused, get_engine
from overlaylab.agent.engines.docker import GLOBAL_DIRS, daemon_pids, is_static_elf
from tests.conftest import SESSION_TMP
from tests.needs import need_tool


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


ENGINES = ["docker-overlay", "docker-overlay2"]
#: profile -> Docker's "Backing Filesystem" row, or None where both drivers refuse (no d_type)
BACKING = {"ext4": "extfs", "ext4-nofiletype": None, "xfs": "xfs", "btrfs": "btrfs", "tmpfs": "tmpfs"}


def _cgroups_left():
    return [os.path.join(m.mountpoint, d) for m in mountutil.mountinfo() if m.fstype in ("cgroup", "cgroup2")
            and os.path.isdir(m.mountpoint) for d in os.listdir(m.mountpoint) if d.startswith("overlaylab-dk")]


def _new_cgroups_nobody_runs(before, seconds=10.0):
    """Session cgroup parents made since ``before`` that no live dockerd names. Another lab run on
    the machine removes its own just after its dockerd ends, so wait a little; a leak stays."""
    deadline = time.monotonic() + seconds
    while True:
        alive = " ".join(" ".join(_cmdline(p)) for p in daemon_pids())
        left = [c for c in set(_cgroups_left()) - before if "/" + os.path.basename(c) not in alive]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture
def nothing_left(monkeypatch):
    for tool, package in (("dockerd", "docker.io"), ("docker", "docker.io"), ("containerd", "containerd"),
                          ("containerd-shim-runc-v2", "containerd"), ("runc", "runc"),
                          ("busybox", "busybox-static")):
        need_tool(tool, package)
    before = set(daemon_pids())
    cgroups_before = set(_cgroups_left())
    absent = [d for d in GLOBAL_DIRS if not os.path.exists(d)]
    # Run roots too long for a socket go to the temp dir: a short one of this test's own, so that
    # what is ours can be told from another lab run's daemons and mounts on the same machine.
    short = tempfile.mkdtemp(prefix="dkt.", dir="/tmp")
    monkeypatch.setattr(tempfile, "tempdir", short)
    try:
        yield
    finally:
        monkeypatch.undo()
        ours = (SESSION_TMP, short)
        left = [p for p in set(daemon_pids()) - before if any(o in " ".join(_cmdline(p)) for o in ours)]
        mounts = [m.mountpoint for m in mountutil.mountinfo() if m.mountpoint.startswith(ours)]
        cgroups = _new_cgroups_nobody_runs(cgroups_before)
        shutil.rmtree(short, ignore_errors=True)
    assert left == [], "dockerd/containerd/shim processes left"
    assert [m for m in mounts if "/dk." in m] == []
    assert cgroups == []
    if not before:
        assert [d for d in absent if os.path.exists(d)] == []


def _layers(tmp_path):
    base = tar_file(str(tmp_path / "base.tar"), [
        ("a", None), ("a/gone", b"1"), ("a/kept", b"2"), ("o", None), ("o/old", b"3"), ("del.txt", b"4")])
    top = tar_file(str(tmp_path / "top.tar"), [
        ("a", None), ("a/.wh.gone", b""), ("o", None), ("o/.wh..wh..opq", b""), ("o/new", b"5"), ("add.txt", b"6")])
    return [base, top]


def test_engine_is_available_here_and_says_its_version():
    engine = get_engine("docker-overlay2")
    assert engine.unavailable() is None
    assert engine.version().startswith("Docker version 20.10")


def test_static_busybox_is_told_from_a_dynamic_executable():
    need_tool("busybox", "busybox-static")
    assert is_static_elf("/bin/busybox")
    assert not is_static_elf(os.path.realpath("/bin/ls"))
    assert not is_static_elf("/etc/hostname")


@pytest.mark.parametrize("profile", sorted(BACKING))
@pytest.mark.parametrize("engine_name", ENGINES)
def test_dockerd_verdict_on_the_backing_fs(engine_name, profile, backing_fs, tmp_path, nothing_left):
    bfs = backing_fs(profile)
    driver = engine_name.split("-")[1]
    with get_engine(engine_name).open(bfs.mountpoint, str(tmp_path)) as session:
        verdict = session.verdict
        if BACKING[profile] is None:
            assert not verdict.accepted
            assert verdict.message.startswith("error initializing graphdriver: %s: the backing extfs filesystem "
                                              "is formatted without d_type support" % driver)
            with pytest.raises(EngineRefused, match="without d_type support"):
                session.pull([])
        else:
            assert verdict.accepted, verdict.message
            assert verdict.evidence["Storage Driver"] == driver
            assert verdict.evidence["Driver Status"]["Backing Filesystem"] == BACKING[profile]
            assert verdict.evidence["Driver Status"]["Supports d_type"] == "true"
        assert session.timings["start"] < 30


@pytest.mark.parametrize("engine_name", ENGINES)
def test_full_cycle_on_ext4(engine_name, backing_fs, tmp_path, nothing_left):
    bfs = backing_fs("ext4")
    with get_engine(engine_name).open(bfs.mountpoint, str(tmp_path)) as s:
        image = s.pull(_layers(tmp_path))
        container = s.create(image)
        with s.rootfs(container) as root:
            assert mountutil.is_mounted(root)
            assert _cgroups_left()  # the container's cgroups sit below the session's own parent
            assert {"a", "o", "add.txt", "del.txt"} <= set(os.listdir(root))
            assert os.listdir(os.path.join(root, "a")) == ["kept"]
            assert not os.path.lexists(os.path.join(root, "a", "gone"))
            assert os.listdir(os.path.join(root, "o")) == ["new"]
            assert not os.path.lexists(os.path.join(root, "o", "old"))
            assert [n for _, _, names in os.walk(root) for n in names if n.startswith(".wh.")] == []
            with open(os.path.join(root, "written"), "w") as f:
                f.write("w")
            os.remove(os.path.join(root, "del.txt"))
        assert not mountutil.is_mounted(root)  # Docker unmounts a stopped container
        upper = s.docker("inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", container).stdout.strip()
        assert os.path.isfile(os.path.join(upper, "written"))
        assert s.changes(container) == [("D", "/del.txt"), ("A", "/written")]
        diff = str(tmp_path / "diff.tar")
        s.export_diff(container, diff)
        with tarfile.open(diff) as tar:
            assert sorted(tar.getnames()) == [".wh.del.txt", "written"]
            assert tar.extractfile("written").read() == b"w"
        s.remove(container)
        s.remove(image)
        assert s.docker("ps", "-aq").stdout.strip() == ""
        assert s.docker("images", "-aq").stdout.strip() == ""


def test_export_of_an_unchanged_container_is_an_emptytar_file(backing_fs, tmp_path, nothing_left):
    bfs = backing_fs("ext4")
    with get_engine("docker-overlay2").open(bfs.mountpoint, str(tmp_path)) as s:
        container = s.create(s.pull(_layers(tmp_path)[:1]))
        s.export_diff(container, str(tmp_path / "empty.tar"))
        with tarfile.open(str(tmp_path / "empty.tar")) as tar:
            assert tar.getnames() == []
        assert s.changes(container) == []


def test_two_sessions_coexist_and_the_last_one_out_removes_run_docker(backing_fs, tmp_path, nothing_left):
    bfs = backing_fs("ext4")
    engine = get_engine("docker-overlay2")
    first_absent = not os.path.exists("/run/docker/plugins")
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    with engine.open(bfs.mountpoint, str(tmp_path / "1")) as one:
        with engine.open(bfs.mountpoint, str(tmp_path / "2")) as two:
            assert one.verdict.accepted and two.verdict.accepted
            assert one.data_root != two.data_root
            container = two.create(two.pull(_layers(tmp_path)[:1]))
            with two.rootfs(container) as root:
                assert sorted(os.listdir(os.path.join(root, "a"))) == ["gone", "kept"]
        assert os.path.isdir("/run/docker/plugins")  # the other dockerd still runs
        assert one.docker("info", "--format", "{{.Driver}}").stdout.strip() == "overlay2"
    if first_absent and not daemon_pids():
        assert not os.path.exists("/run/docker")


def test_ctrl_c_after_the_daemons_died_still_leaves_nothing(backing_fs, tmp_path, nothing_left):
    bfs = backing_fs("ext4")
    with pytest.raises(KeyboardInterrupt):
        with get_engine("docker-overlay").open(bfs.mountpoint, str(tmp_path)) as s:
            container = s.create(s.pull(_layers(tmp_path)[:1]))
            with s.rootfs(container):
                shims = s._shims()
                assert len(shims) == 1
                os.kill(s.dockerd.pid, signal.SIGKILL)
                os.kill(s.containerd.pid, signal.SIGKILL)
                raise KeyboardInterrupt
    assert "killed shim %d and its container" % shims[0] in s.teardown
    assert not os.path.exists(s.shim_socket(container))


def test_evidence_names_engine_version_verdict_and_timings(backing_fs, tmp_path, nothing_left):
    bfs = backing_fs("tmpfs")
    with get_engine("docker-overlay").open(bfs.mountpoint, str(tmp_path)) as s:
        evidence = json.loads(json.dumps(s.evidence()))
    assert evidence["engine"] == "docker-overlay"
    assert evidence["verdict"]["accepted"] is True
    assert "the overlay storage-driver is deprecated" in " ".join(evidence["verdict"]["evidence"]["Warnings"])
    assert evidence["timings"]["start"] > 0
    assert any(c["argv"][-1].endswith("/info") for c in evidence["commands"])
