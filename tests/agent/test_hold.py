"""The holder of a remote host's per-run directory, run for real here: when its stdin closes
(or it is told to stop) it stops the agents working there and removes mounts, loop devices and
the directory; killed, it leaves a lease that `cleanup` finds."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from overlaylab.agent import cleanup as cleanup_mod
from overlaylab.mountutil import mounts_under


def _holder(directory, env):
    return subprocess.Popen([sys.executable, "-m", "overlaylab.agent", "hold", directory, "--run", "r1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _loop_mount(directory):
    """A mounted ext4 on a loop device backed by a file in ``directory``, as an agent makes."""
    image = os.path.join(directory, "w", "fs.img")
    os.makedirs(os.path.dirname(image))
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    dev = subprocess.run(["losetup", "--find", "--show", image], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True)
    mnt = os.path.join(directory, "w", "mnt")
    os.makedirs(mnt)
    subprocess.run(["mount", dev, mnt], check=True)
    return dev, mnt


def _loop_free(dev):
    return not os.path.exists("/sys/block/%s/loop/backing_file" % os.path.basename(dev))


@pytest.fixture
def env(tmp_path):
    return dict(os.environ, OVERLAYLAB_STATE_DIR=str(tmp_path / "leases"))


def test_closing_stdin_removes_the_directory_with_its_mounts_and_loop_devices(tmp_path, env):
    directory = str(tmp_path / "overlaylab-r1-abcd")
    os.makedirs(directory)
    p = _holder(directory, env)
    dev = None
    try:
        held = json.loads(p.stdout.readline())
        assert held["record"] == "held" and held["dir"] == directory and held["pid"] == p.pid
        assert os.listdir(env["OVERLAYLAB_STATE_DIR"]) == [held["lease"] + ".json"]
        dev, mnt = _loop_mount(directory)
        out, err = p.communicate(timeout=120)  # closes stdin
        released = json.loads(out.splitlines()[-1])
        assert released["record"] == "released" and released["problems"] == [], err
        assert "mount %s" % mnt in released["items"] and "loop device %s" % dev in released["items"]
        assert not os.path.exists(directory) and _loop_free(dev) and not mounts_under(str(tmp_path))
        assert not os.path.exists(env["OVERLAYLAB_STATE_DIR"])  # the empty lease directory went too
    finally:
        if p.poll() is None:
            p.kill()
        for m in reversed(mounts_under(str(tmp_path))):
            subprocess.run(["umount", "-l", m.mountpoint])
        if dev and not _loop_free(dev):
            subprocess.run(["losetup", "-d", dev])


def test_sigterm_stops_the_agents_working_there_first(tmp_path, env):
    directory = str(tmp_path / "overlaylab-r1-ef01")
    os.makedirs(directory)
    p = _holder(directory, env)
    # an agent of this directory: `python -m overlaylab.agent` with PYTHONPATH there, waiting
    agent = subprocess.Popen([sys.executable, "-m", "overlaylab.agent", "hold", os.path.join(directory, "inner")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env=dict(env, PYTHONPATH=os.pathsep.join([directory, os.path.dirname(os.path.dirname(
                                 os.path.abspath(cleanup_mod.__file__)))])))
    try:
        os.makedirs(os.path.join(directory, "inner"), exist_ok=True)
        assert json.loads(p.stdout.readline())["record"] == "held"
        assert json.loads(agent.stdout.readline())["record"] == "held"
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=120)
        released = json.loads(out.splitlines()[-1])
        assert released["stopped"] == ["SIGTERM agent %d" % agent.pid]
        assert agent.wait(timeout=30) is not None and not os.path.exists(directory)
    finally:
        for proc in (p, agent):
            if proc.poll() is None:
                proc.kill()


def test_a_killed_holder_leaves_a_lease_that_cleanup_removes(tmp_path, env, monkeypatch):
    directory = str(tmp_path / "overlaylab-r1-2345")
    os.makedirs(directory)
    p = _holder(directory, env)
    dev = None
    try:
        assert json.loads(p.stdout.readline())["record"] == "held"
        dev, mnt = _loop_mount(directory)
        p.kill()
        p.wait(timeout=30)
        assert os.path.ismount(mnt)
        monkeypatch.setenv("OVERLAYLAB_STATE_DIR", env["OVERLAYLAB_STATE_DIR"])
        found = cleanup_mod.cleanup("r1")
        assert [e["problems"] for e in found] == [[]]
        assert any(i.startswith("mount %s" % mnt) for i in found[0]["items"])
        assert not os.path.exists(directory) and _loop_free(dev)
    finally:
        if p.poll() is None:
            p.kill()
        for m in reversed(mounts_under(str(tmp_path))):
            subprocess.run(["umount", "-l", m.mountpoint])
        if dev and not _loop_free(dev):
            subprocess.run(["losetup", "-d", dev])
