"""Faults leave nothing behind: signals during teardown, a killed agent, dead runs' leftovers,
runs whose runner died, and a full reports disk."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from overlaylab import cleanup as cleanup_mod
from overlaylab.lab.backingfs import unmount_tree
from overlaylab.mountutil import mounts_under

OVERLAYLAB = [sys.executable, "-m", "overlaylab"]
REAL_LOSETUP = shutil.which("losetup", path="/usr/sbin:/sbin:/usr/bin:/bin")


def _loops_under(path, settle=0.0):
    """Loop devices whose backing file is under ``path`` (waiting up to ``settle`` s for the
    kernel's asynchronous release)."""
    deadline = time.monotonic() + settle
    while True:
        loops = [d for d, b in cleanup_mod.loop_backing_files().items() if b.startswith(path.rstrip("/") + "/")]
        if not loops or time.monotonic() >= deadline:
            return loops
        time.sleep(0.2)


def _wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


@pytest.fixture
def lab_tmp(tmp_path):
    """TMPDIR for agents (so anything they leave is found, and cleaned, here) and a private
    lease directory; both are emptied whatever the test did."""
    d = tmp_path / "agent-tmp"
    d.mkdir()
    state = tmp_path / "state"
    env = {"TMPDIR": str(d), cleanup_mod.STATE_ENV: str(state)}
    yield str(d), env
    unmount_tree(str(d))
    for dev in _loops_under(str(d)):
        subprocess.run([REAL_LOSETUP, "-d", dev])


@pytest.fixture
def slow_losetup(tmp_path):
    """A PATH shim: ``losetup -d`` touches a flag file, sleeps 3 s, then runs the real one."""
    shim = tmp_path / "shim"
    shim.mkdir()
    flag = tmp_path / "detaching"
    (shim / "losetup").write_text("#!/bin/sh\ncase \" $* \" in *\" -d \"*) touch %s; sleep 3;; esac\nexec %s \"$@\"\n"
                                  % (flag, REAL_LOSETUP))
    (shim / "losetup").chmod(0o755)
    return str(shim), flag


def _agent(env, *args):
    return subprocess.Popen([sys.executable, "-m", "overlaylab.agent"] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, **env))


def test_a_signal_during_losetup_d_does_not_leak_the_loop_device(lab_tmp, slow_losetup):
    tmp, env = lab_tmp
    shim, flag = slow_losetup
    proc = _agent(dict(env, PATH=shim + ":" + os.environ["PATH"]), "run", "--profile", "ext4", "--scenario", "driver-init")
    try:
        _wait_for(flag.exists, 120, "the agent's losetup -d")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the agent *and* the detaching losetup get it
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert _loops_under(tmp, settle=10) == [], err
    assert mounts_under(tmp) == []
    assert os.listdir(tmp) == []  # the agent directory went too
    assert os.listdir(env[cleanup_mod.STATE_ENV]) == []  # its lease was released
    assert proc.returncode == 130 and '"interrupted"' in out  # the signal was delivered, after teardown
    assert '"cell"' in out


def _start_run(reports, env, *args):
    return subprocess.Popen(OVERLAYLAB + ["run", "--provider", "local", "--reports-dir", str(reports)] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **env), start_new_session=True)


def _agents_of(pid):
    from overlaylab.procutil import descendants, is_agent
    return [p for p in descendants(pid) if is_agent(p)]


def _only_run(reports):
    from overlaylab.lab.results import load_run
    (name,) = os.listdir(os.path.join(str(reports), "runs"))
    return load_run(os.path.join(str(reports), "runs", name))


def test_sigkill_of_the_agent_is_named_cleaned_up_and_the_next_profile_runs(tmp_path, lab_tmp):
    tmp, env = lab_tmp
    reports = tmp_path / "reports"
    proc = _start_run(reports, env, "-p", "=ext4 or =tmpfs", "-k", "deep-layer-chain or driver-init")
    try:
        _wait_for(lambda: mounts_under(tmp) and _agents_of(proc.pid), 120, "the ext4 profile's mount")
        (agent,) = _agents_of(proc.pid)
        os.kill(agent, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, out + err  # ERROR cells, a finished run
    cells = _only_run(reports).cell_map()
    assert len(cells) == 4
    killed = [c for (t, p, s), c in cells.items() if p == "ext4" and c["outcome"] == "ERROR"]
    assert killed, cells
    for cell in killed:
        assert "the agent died: SIGKILL (signal 9)" in cell["error"] and "ran past" not in cell["error"]
        assert any("mount " in i for i in cell["evidence"]["cleanup"]), cell["evidence"]["cleanup"]
        assert any("loop device /dev/loop" in i for i in cell["evidence"]["cleanup"])
    # the next profile ran, in a new agent
    assert cells[("host", "tmpfs", "driver-init")]["outcome"] == "PASS"
    assert cells[("host", "tmpfs", "deep-layer-chain")]["outcome"] == "PASS"
    # the dead agent's mount, loop device and directory are gone
    assert mounts_under(tmp) == [] and _loops_under(tmp, settle=10) == []
    assert os.listdir(tmp) == []
    assert os.listdir(env[cleanup_mod.STATE_ENV]) == []
