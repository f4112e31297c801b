"""A mixed host + VM run (``--provider auto``, ``--jobs 2``): every record names the provider
that really ran it, and a host cell's bug bundle reproduces. Boots one VM: marked ``vm``.

The same run reads its profiles from ``--profiles-file`` (a custom tmpfs profile), so the qemu
agent is shown to honour it too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import shlex
import shutil
import tarfile
import tempfile
import textwrap

import pytest

from overlaylab.lab.results import load_run
from overlaylab.mountutil import mounts_under

pytestmark = [pytest.mark.vm, pytest.mark.slow]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERLAYLAB = [sys.executable, "-m", "overlaylab"]
VM_KERNEL = os.environ.get("OVERLAYLAB_VM_KERNEL", "debian-6.1")

PROFILES = textwrap.dedent("""\
    [profile.tmpfs]
    description = "tmpfs, as in vms/filesystems.toml"
    kind = "tmpfs"
    size_mib = 64

    [profile.labtmp]
    description = "a custom tmpfs only this file has"
    kind = "tmpfs"
    size_mib = 40
    mount_options = "mode=0711"
    """)


def _cli(args, env, timeout=900):
    return subprocess.run(OVERLAYLAB + list(args), capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=dict(os.environ, **env))


def test_mixed_run_records_the_real_provider_and_a_host_bundle_reproduces(tmp_path):
    reports = tmp_path / "reports"
    # TMPDIR holds the local agent's mounts and the VM's workdir: short, or ssh's ControlPath
    # (a unix socket, < 108 bytes) does not fit
    agent_tmp = tempfile.mkdtemp(prefix="olmix.")
    fs = tmp_path / "fs.toml"
    fs.write_text(PROFILES)
    env = {"TMPDIR": agent_tmp}
    try:
        res = _cli(["run", "--provider", "auto", "-K", "host", "-K", VM_KERNEL, "--jobs", "2",
                    "--profiles-file", str(fs), "-p", "=tmpfs or =labtmp", "-k", "=driver-init",
                    "--reports-dir", str(reports)], env)
        assert res.returncode == 0, res.stdout + res.stderr
        run_id = os.listdir(str(reports / "runs"))[0]
        run = load_run(str(reports / "runs" / run_id))
        cells = run.cell_map()
        assert len(cells) == 4
        for (kernel, profile, scenario, _engine), cell in cells.items():
            assert cell["provider"] == ("local" if kernel == "host" else "qemu"), (kernel, profile, cell)
            assert cell["outcome"] == "PASS", cell
        assert run.target_record("host")["provider"] == "local"
        assert run.target_record(VM_KERNEL)["provider"] == "qemu"
        # the custom profile was made by the qemu agent too, with its own options
        vm_fs = json.dumps(run.profile_record(VM_KERNEL, "labtmp")["fs"])
        assert "size=40m" in vm_fs and "mode=0711" in vm_fs

        bundle = _cli(["bundle", run_id, "host/tmpfs/driver-init", "-o", str(tmp_path),
                       "--reports-dir", str(reports)], env, timeout=120)
        assert bundle.returncode == 0, bundle.stderr
        path = bundle.stdout.strip().splitlines()[-1]
        with tarfile.open(path) as tar:
            repro = json.loads(tar.extractfile(
                [m for m in tar.getmembers() if m.name.endswith("repro.json")][0]).read())
        assert repro["provider"] == "local", repro
        dry = _cli(["repro", path, "--dry-run", "--profiles-file", str(fs)], env, timeout=120)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        argv = shlex.split(dry.stdout.strip().splitlines()[-1])
        assert argv[argv.index("--provider") + 1] == "local", argv
        # the run's profiles travel in the bundle; they are ours, so we name our own file
        again = _cli(["repro", path, "--profiles-file", str(fs), "--reports-dir", str(tmp_path / "repro-reports")],
                     env, timeout=600)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "REPRODUCED: host/tmpfs/driver-init is PASS again" in again.stdout
    finally:
        from overlaylab.agent.backingfs import unmount_tree
        unmount_tree(agent_tmp)
        leftovers = mounts_under(agent_tmp)
        if not leftovers:
            shutil.rmtree(agent_tmp, ignore_errors=True)
    assert leftovers == []
