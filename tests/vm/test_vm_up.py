"""`overlaylab vm up|list|down` end to end: one real boot (debian-6.1 under qemu) for the whole
module, reached with testinfra through the printed host spec, torn down whatever happens."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from .conftest import qemu_pids

pytestmark = [pytest.mark.vm, pytest.mark.slow]

OVERLAYLAB = [sys.executable, "-m", "overlaylab"]
KERNEL = "debian-6.1"


def _cli(args, env, timeout=600):
    return subprocess.run(OVERLAYLAB + args, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def lab_vm(kernel_61, tmp_path_factory):
    """`vm up debian-6.1` with two profile disks, in a state dir of its own; always `vm down`."""
    state_dir = str(tmp_path_factory.mktemp("vmstate"))
    env = dict(os.environ, OVERLAYLAB_VM_STATE=state_dir)
    up = None
    try:
        up = _cli(["vm", "up", KERNEL, "-p", "=ext4 or =xfs"], env)
        assert up.returncode == 0, up.stderr
        with open(os.path.join(state_dir, KERNEL, "state.json")) as f:
            state = json.load(f)
        yield {"env": env, "up": up, "state": state, "state_dir": state_dir, "kernel": kernel_61}
    finally:
        _cli(["vm", "down", "--all"], env, timeout=120)
        # belt and braces: nothing of this module's VM may outlive it
        with contextlib.suppress(Exception):
            with open(os.path.join(state_dir, KERNEL, "keeper.pid")) as f:
                os.kill(int(f.read()), signal.SIGKILL)
        for pid in qemu_pids(state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def test_vm_up_prints_a_testinfra_spec_that_works(lab_vm):
    import testinfra

    out = lab_vm["up"].stdout
    spec = re.search(r"^testinfra: (\S+)$", out, re.M).group(1)
    ssh = re.search(r"^ssh: +(.+)$", out, re.M).group(1)
    assert spec == lab_vm["state"]["spec"]
    assert spec.startswith("ssh://root@127.0.0.1:%d?" % lab_vm["state"]["port"])
    host = testinfra.get_host(spec)
    assert host.check_output("uname -r") == lab_vm["kernel"].release != os.uname().release
    # and the printed ssh command, as a person would type it
    r = subprocess.run(ssh.split() + ["-o", "BatchMode=yes", "uname", "-r"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == lab_vm["kernel"].release, r.stderr
    # the phases of the boot were shown while waiting
    for phase in ("fetch", "initramfs", "boot", "disks"):
        assert re.search(r"%s: %s done in" % (KERNEL, phase), lab_vm["up"].stderr), lab_vm["up"].stderr


def test_guest_has_by_profile_links_and_lsblk_serials(lab_vm):
    import testinfra

    host = testinfra.get_host(lab_vm["state"]["spec"])
    listing = host.check_output("ls -l /dev/disk/by-profile/")
    links = dict(re.findall(r" (\S+) -> \.\./\.\./(vd[a-z]+)$", listing, re.M))
    assert set(links) == {"ext4", "xfs"}, listing
    for name, dev in links.items():
        assert host.check_output("cat /sys/block/%s/serial" % dev) == name
        assert host.check_output("readlink -f /dev/disk/by-profile/%s" % name) == "/dev/" + dev
        assert lab_vm["state"]["disks"][name] == "/dev/" + dev
    lsblk = host.check_output("lsblk -dn -o NAME,SERIAL")
    assert sorted(tuple(line.split()) for line in lsblk.splitlines()) == sorted((d, n) for n, d in links.items())


def test_vm_list_shows_it_and_vm_up_again_finds_it(lab_vm):
    r = _cli(["vm", "list", "--json"], lab_vm["env"])
    assert r.returncode == 0, r.stderr
    vms = json.loads(r.stdout)
    assert [(v["kernel"], v["pid"], v["port"], v["spec"]) for v in vms] == [
        (KERNEL, lab_vm["state"]["pid"], lab_vm["state"]["port"], lab_vm["state"]["spec"])]
    table = _cli(["vm", "list"], lab_vm["env"]).stdout
    assert re.search(r"^%s +%s +up +%d +%d " % (KERNEL, re.escape(lab_vm["kernel"].release), lab_vm["state"]["pid"],
                                                 lab_vm["state"]["port"]), table, re.M), table
    again = _cli(["vm", "up", KERNEL], lab_vm["env"], timeout=60)
    assert again.returncode == 0 and "already up" in again.stderr
    assert lab_vm["state"]["spec"] in again.stdout


def test_vm_shell_uses_the_vm_that_is_up_and_leaves_it_up(lab_vm):
    r = subprocess.run(OVERLAYLAB + ["vm", "shell", KERNEL], input="uname -r; readlink /dev/disk/by-profile/xfs\n",
                       capture_output=True, text=True, timeout=120, env=lab_vm["env"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [lab_vm["kernel"].release, "../../" + lab_vm["state"]["disks"]["xfs"][5:]]
    assert "booting" not in r.stderr and "left running" in r.stderr
    assert qemu_pids(lab_vm["state"]["workdir"]) == {lab_vm["state"]["qemu_pid"]}


def test_vm_down_stops_it_from_another_process(lab_vm):
    state = lab_vm["state"]
    assert qemu_pids(state["workdir"]) == {state["qemu_pid"]}
    r = _cli(["vm", "down", KERNEL], lab_vm["env"], timeout=120)
    assert r.returncode == 0, r.stderr
    assert "%s down" % KERNEL in r.stdout
    assert qemu_pids(state["workdir"]) == set()
    assert not os.path.exists(state["workdir"]) and not os.path.exists(os.path.join(lab_vm["state_dir"], KERNEL))
    assert json.loads(_cli(["vm", "list", "--json"], lab_vm["env"]).stdout) == []
    gone = _cli(["vm", "down", KERNEL], lab_vm["env"])
    assert gone.returncode == 1 and "no VM for %s is up" % KERNEL in gone.stderr


def test_vm_commands_reject_bad_input_in_one_line(tmp_path):
    env = dict(os.environ, OVERLAYLAB_VM_STATE=str(tmp_path))
    r = _cli(["vm", "up", "debain-6.1"], env, timeout=60)
    assert r.returncode == 2 and "did you mean debian-6.1" in r.stderr and "Traceback" not in r.stderr
    r = _cli(["vm", "down"], env, timeout=60)
    assert r.returncode == 2 and "--all" in r.stderr
