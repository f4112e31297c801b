"""A real bisection, with boots: xfs V4 without ftype stops mounting between Debian's 6.12 and
7.x (Debian's 7.x config drops ``CONFIG_XFS_SUPPORT_V4``; upstream linux
``fs/xfs/Kconfig`` ``XFS_SUPPORT_V4``). ``create-empty`` PASSes where the kernel mounts V4 and is
UNSUPPORTED where it cannot, so bisecting it from debian-6.1 to debian-sid boots the two ends
and debian-6.12 between them (three boots under TCG) and names debian-sid as the first bad
kernel. Each step is a normal run that ``show`` reads; nothing is left running."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from overlaylab.mountutil import mounts_under
from tests.needs import missing
from tests.vm.conftest import qemu_pids

pytestmark = [pytest.mark.vm, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERLAYLAB = [sys.executable, "-m", "overlaylab"]


def _cli(args, env, timeout):
    return subprocess.run(OVERLAYLAB + list(args), capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=dict(os.environ, **env))


@pytest.fixture
def debian_kernels():
    from overlaylab.kernels import KernelUnavailable, fetch_kernel
    try:
        return {name: fetch_kernel(name) for name in ("debian-6.1", "debian-6.12", "debian-sid")}
    except KernelUnavailable as err:
        missing(str(err))


def test_bisect_names_debian_sid_first_bad_for_xfs_v4_after_booting_6_12(debian_kernels, tmp_path):
    reports = tmp_path / "reports"
    # the VMs' work directories go here: short, or ssh's ControlPath (< 108 bytes) does not fit
    vm_tmp = tempfile.mkdtemp(prefix="olbis.")
    env = {"TMPDIR": vm_tmp}
    try:
        start = time.monotonic()
        res = _cli(["bisect", "xfs-v4-noftype/create-empty", "--good", "debian-6.1", "--bad", "debian-sid",
                    "--reports-dir", str(reports)], env, timeout=1800)
        seconds = time.monotonic() - start
        assert res.returncode == 0, res.stdout + res.stderr[-3000:]
        out = res.stdout
        sid, v612 = debian_kernels["debian-sid"].release, debian_kernels["debian-6.12"].release
        assert "first bad: debian-sid (%s): UNSUPPORTED" % sid in out, out
        assert "last good: debian-6.12 (%s): PASS" % v612 in out, out
        assert "Deprecated V4 format" in out or "V4" in out, out  # the kernel's own words, as evidence

        logs = os.listdir(str(reports / "bisect"))
        with open(str(reports / "bisect" / logs[0] / "bisect.json")) as f:
            log = json.load(f)
        assert log["status"] == "found"
        steps = [(s["kernel"], s["outcomes"], s["verdict"]) for s in log["steps"]]
        assert steps == [("debian-6.1", ["PASS"], "good"), ("debian-sid", ["UNSUPPORTED"], "bad"),
                         ("debian-6.12", ["PASS"], "good")], steps
        assert log["first_bad"]["kernel"] == "debian-sid" and log["last_good"]["kernel"] == "debian-6.12"
        assert "unavailable" in log["first_bad"]["evidence"][0]
        assert log["left_out"] == [] or [i["kernel"] for i in log["left_out"]] == ["host"]

        # each step is an ordinary run: `show` reads it
        for step in log["steps"]:
            shown = _cli(["show", step["run_id"], "--reports-dir", str(reports)], env, timeout=120)
            assert shown.returncode == 0 and step["kernel"] in shown.stdout, shown.stdout + shown.stderr
        print("bisection took %.0f s for %d boots" % (seconds, len(steps)))
    finally:
        assert qemu_pids(vm_tmp) == set()
        leftovers = mounts_under(vm_tmp)
        if not leftovers:
            shutil.rmtree(vm_tmp, ignore_errors=True)
    assert leftovers == []


def test_bisect_over_a_kernels_dir_boots_builds_by_their_directory_names(debian_kernels, tmp_path):
    """The same kernels as a developer's directory of builds (a bzImage plus
    ``lib/modules/<release>`` each, as ``make modules_install`` leaves them), with the ends
    assumed: only the middle build boots, found by its directory name through the catalogue
    the bisection made of the directory."""
    builds = tmp_path / "builds"
    for name, build in (("debian-6.1", "v6.1"), ("debian-6.12", "v6.12"), ("debian-sid", "v7.2")):
        image = debian_kernels[name]
        (builds / build / "lib" / "modules").mkdir(parents=True)
        os.symlink(image.vmlinuz, str(builds / build / "bzImage"))
        os.symlink(image.modules_dir, str(builds / build / "lib" / "modules" / image.release))
    reports = tmp_path / "reports"
    vm_tmp = tempfile.mkdtemp(prefix="olbis.")
    try:
        res = _cli(["bisect", "xfs-v4-noftype/create-empty", "--good", "v6.1", "--bad", "v7.2", "--assume-ends",
                    "--kernels-dir", str(builds), "--reports-dir", str(reports)], {"TMPDIR": vm_tmp}, timeout=900)
        assert res.returncode == 0, res.stdout + res.stderr[-3000:]
        assert "step 1: v6.12 (%s): PASS -> good" % debian_kernels["debian-6.12"].release in res.stdout
        assert "first bad: v7.2 (%s): assumed (--assume-ends), not run" % debian_kernels["debian-sid"].release \
            in res.stdout
        assert "last good: v6.12" in res.stdout and "step 2" not in res.stdout, res.stdout
        log_dir = reports / "bisect" / os.listdir(str(reports / "bisect"))[0]
        assert '[kernels."v6.12"]' in (log_dir / "kernels.toml").read_text()
    finally:
        assert qemu_pids(vm_tmp) == set()
        leftovers = mounts_under(vm_tmp)
        if not leftovers:
            shutil.rmtree(vm_tmp, ignore_errors=True)
    assert leftovers == []
