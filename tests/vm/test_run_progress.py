"""What a run with a VM kernel says and keeps: its phases in run.log, the console log in the run
directory (one real boot of debian-6.1); and the fetch's byte count from a real apt download."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from overlaylab.lab.progress import target_scope

OVERLAYLAB = [sys.executable, "-m", "overlaylab"]
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} "


@pytest.mark.vm
@pytest.mark.slow
def test_qemu_run_logs_its_phases_and_keeps_the_console_log(kernel_61, tmp_path):
    reports = str(tmp_path / "reports")
    r = subprocess.run(OVERLAYLAB + ["run", "-K", "debian-6.1", "-p", "=ext4", "-k", "=create-empty",
                                     "--reports-dir", reports], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (run_id,) = os.listdir(os.path.join(reports, "runs"))
    run_dir = os.path.join(reports, "runs", run_id)
    console = os.path.join(run_dir, "console-debian-6.1.log")
    with open(console, errors="replace") as f:
        text = f.read()
    assert "Linux version %s" % kernel_61.release in text and "OVERLAYLAB-READY %s" % kernel_61.release in text
    with open(os.path.join(run_dir, "run.log")) as f:
        log = f.read()
    for phase in ("fetch", "initramfs", "accel", "boot", "disks", "probes"):
        assert re.search(r"^%sdebian-6\.1: %s( \(.*\))? \.\.\.$" % (STAMP, phase), log, re.M), (phase, log)
        assert re.search(r"^%sdebian-6\.1: %s done in \d+\.\ds" % (STAMP, phase), log, re.M), (phase, log)
    assert re.search(r"debian-6\.1: boot done in .*console %s" % re.escape(console), log)
    assert re.search(r"^%starget debian-6\.1 up: kernel %s \(qemu, \w+, booted in" % (STAMP, re.escape(kernel_61.release)),
                     log, re.M), log
    assert re.search(r"^%s\[1/1\] debian-6\.1 ext4 done in \d+\.\ds: 1 PASS$" % STAMP, log, re.M), log
    assert re.search(r"^%starget debian-6\.1 done in \d+\.\ds: 1/1 cells, 1 PASS$" % STAMP, log, re.M), log
    # the same lines (without timestamps) on stderr, which is not a terminal here
    assert "target debian-6.1 done in" in r.stderr and "debian-6.1: boot done in" in r.stderr


def test_kernel_download_reports_bytes(tmp_path):
    """A real `apt-get download` through the lab's private apt (a small package, not a kernel):
    the fetch phase's progress ends at the package's size."""
    from overlaylab.kernels.fetch import PrivateApt

    apt = PrivateApt("bookworm")
    apt.update()
    events = []
    with target_scope("t", lambda event, info: events.append((event, info))):
        debs = apt.download(["hello"], str(tmp_path))
    assert [os.path.basename(d).split("_")[0] for d in debs] == ["hello"]
    size = os.path.getsize(debs[0])
    progress = [i for e, i in events if e == "phase-progress"]
    assert progress and all(i["phase"] == "fetch" and i["unit"] == "bytes" for i in progress)
    assert progress[-1]["done"] == progress[-1]["total"] == size
