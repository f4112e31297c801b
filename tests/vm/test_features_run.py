"""The features table across two kernels: one run of the host and one qemu boot of debian-6.1
(ext4, one scenario). Data-only lower layers (``lowerdir=l1::data``, 6.5) are there on the host
and refused by 6.1, which reads ``::`` as an empty lower dir."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from overlaylab.agent.features import FEATURES
from overlaylab.mountutil import mounts_under

from .conftest import qemu_pids

pytestmark = [pytest.mark.vm, pytest.mark.slow]

OVERLAYLAB = [sys.executable, "-m", "overlaylab"]
#: what debian-6.1's overlayfs has on ext4 (probed in its guest, where the agent runs chrooted
#: and cannot make user namespaces: userxattr and idmapped_lower stay undecided there)
DEBIAN_61 = {"redirect_dir": "yes", "metacopy": "yes", "index": "yes", "xino": "yes", "nfs_export": "yes",
             "volatile": "yes", "userxattr": "?", "idmapped_lower": "?", "data_only_lower": "no"}


def test_the_features_table_shows_what_debian_61_lacks_beside_the_host(kernel_61, tmp_path):
    reports = str(tmp_path / "reports")
    agent_tmp = tempfile.mkdtemp(prefix="olfeat.")  # short: ssh's ControlPath lives under it
    try:
        r = subprocess.run(OVERLAYLAB + ["run", "--provider", "auto", "-K", "host", "-K", "debian-6.1",
                                         "-p", "=ext4", "-k", "=create-empty", "--reports-dir", reports],
                           capture_output=True, text=True, timeout=900, env=dict(os.environ, TMPDIR=agent_tmp))
    finally:
        left = qemu_pids(reports)
        leaked = [m.mountpoint for m in mounts_under(agent_tmp)]
        if not leaked:
            shutil.rmtree(agent_tmp, ignore_errors=True)
    assert not left and not leaked, (left, leaked)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    table = r.stdout[r.stdout.index("Overlay features (a real mount per kernel x backing fs):"):].splitlines()
    header = table[1].split()
    rows = {line.split()[0]: dict(zip(header[1:], line.split()[1:])) for line in table[3:5]}
    assert rows == {"host": {f: "yes" for f in FEATURES}, "debian-6.1": DEBIAN_61}

    (run_id,) = os.listdir(os.path.join(reports, "runs"))
    with open(os.path.join(reports, "runs", run_id, "results.jsonl")) as f:
        profiles = {rec["target"]: rec for rec in map(json.loads, f) if rec.get("record") == "profile"}
    assert profiles["debian-6.1"]["kernel_release"] == kernel_61.release
    vm = profiles["debian-6.1"]["facts"]["overlay_features"]["features"]["data_only_lower"]
    assert vm["supported"] is False and vm["evidence"]["errno"] == "EINVAL"
    assert any(line.endswith("overlayfs: empty lowerdir") for line in vm["evidence"]["dmesg"]), vm
    host = profiles["host"]["facts"]["overlay_features"]["features"]["data_only_lower"]
    assert host["supported"] is True and host["evidence"]["errno"] is None
    for name in ("userxattr", "idmapped_lower"):
        undecided = profiles["debian-6.1"]["facts"]["overlay_features"]["features"][name]
        assert "Operation not permitted" in undecided["reason"] or "EPERM" in undecided["reason"], undecided
