"""A stop signal to the runner process alone stops a qemu run: no next kernel boots, the VM is
torn down, the run is marked interrupted (exit 130). One short boot."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import qemu_pids

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def _kill_everything(proc, tmp):
    """Whatever the test's outcome: the runner's process group and any qemu under ``tmp``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in qemu_pids(str(tmp)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_to_the_runner_alone_stops_a_qemu_run(kernel_61, tmp_path, sig):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    reports = tmp_path / "reports"
    env = dict(os.environ, TMPDIR=str(tmp), OVERLAYLAB_STATE_DIR=str(tmp_path / "state"))
    # Two workers: the host runs beside them, the first two VM kernels boot at once; the third
    # waits for a free worker. It must never boot.
    proc = subprocess.Popen([sys.executable, "-m", "overlaylab", "run", "--provider", "auto", "-j", "2",
                             "-K", "host", "-K", "debian-6.1", "-K", "debian-6.1", "-K", "debian-6.1", "-p", "=tmpfs",
                             "-k", "driver-init", "--reports-dir", str(reports)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    seen_after = set()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(qemu_pids(str(tmp))) < 2 and proc.poll() is None:
            time.sleep(0.05)
        before = qemu_pids(str(tmp))
        assert len(before) == 2, "expected two VMs booting, saw %s" % before
        os.kill(proc.pid, sig)  # the runner alone, as `kill -INT`, `timeout -s INT` or a CI cancel
        signalled = time.monotonic()
        while proc.poll() is None and time.monotonic() < signalled + 180:
            seen_after |= qemu_pids(str(tmp)) - before
            time.sleep(0.05)
        stopped_in = time.monotonic() - signalled
        out, err = proc.communicate(timeout=60)
    finally:
        _kill_everything(proc, tmp)
    assert proc.returncode == 130, out + err
    assert seen_after == set(), "a VM booted after the stop signal"
    assert stopped_in < 60, "took %.0f s to stop" % stopped_in
    assert qemu_pids(str(tmp)) == set()
    (name,) = os.listdir(str(reports / "runs"))
    with open(str(reports / "runs" / name / "run.json")) as f:
        assert json.load(f)["status"] == "interrupted"
    assert [d for d in os.listdir(str(tmp)) if d.startswith("overlaylab-")] == []  # no VM dir, no agent dir
    assert os.listdir(str(tmp_path / "state")) == []
    assert "incomplete:" in err


def test_after_the_runner_is_killed_cleanup_removes_the_vm_and_show_says_interrupted(kernel_61, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    reports = tmp_path / "reports"
    env = dict(os.environ, TMPDIR=str(tmp), OVERLAYLAB_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.Popen([sys.executable, "-m", "overlaylab", "run", "--provider", "qemu", "-j", "1",
                             "-K", "debian-6.1", "-p", "=ext4", "-k", "driver-init", "--reports-dir", str(reports)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not qemu_pids(str(tmp)) and proc.poll() is None:
            time.sleep(0.05)
        assert qemu_pids(str(tmp)), "no VM started"
        os.kill(proc.pid, signal.SIGKILL)  # no teardown at all: power-loss-like for the runner
        proc.communicate(timeout=60)
        vm_dirs = [d for d in os.listdir(str(tmp)) if d.startswith("overlaylab-qemu-")]
        assert len(vm_dirs) == 1  # what it left: the VM's directory (images, keys)
        listed = subprocess.run([sys.executable, "-m", "overlaylab", "cleanup", "--dry-run"], capture_output=True,
                                text=True, env=env, timeout=120)
        assert "qemu directory %s" % os.path.join(str(tmp), vm_dirs[0]) in listed.stdout, listed.stdout
        done = subprocess.run([sys.executable, "-m", "overlaylab", "cleanup"], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert os.listdir(str(tmp)) == [] and qemu_pids(str(tmp)) == set()
        shown = subprocess.run([sys.executable, "-m", "overlaylab", "show", "latest", "--reports-dir", str(reports)],
                               capture_output=True, text=True, env=env, timeout=120)
        assert "interrupted: incomplete: 0 of 1 cells" in shown.stdout, shown.stdout + shown.stderr
    finally:
        _kill_everything(proc, tmp)
