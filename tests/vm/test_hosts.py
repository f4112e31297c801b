"""`overlaylab run --hosts/--inventory` and `cleanup --hosts` for real: two qemu VMs (debian-6.1
and debian-5.10, `overlaylab vm up`) are remote machines with their own kernels reached over
real ssh, named in hand-written testinfra specs and a hand-written Ansible inventory. Nothing
(VMs, ssh masters, per-run directories on the hosts) outlives the module."""
from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from .conftest import qemu_pids

pytestmark = [pytest.mark.vm, pytest.mark.slow]

OVERLAYLAB = [sys.executable, "-m", "overlaylab"]
KERNELS = ("debian-6.1", "debian-5.10")
INVENTORY_HOST = """\
        {name}:
          ansible_host: 127.0.0.1
          ansible_port: {port}
          ansible_user: root
          ansible_ssh_private_key_file: {key}
          ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
"""


def _cli(args, env=None, timeout=900):
    return subprocess.run(OVERLAYLAB + args, capture_output=True, text=True, timeout=timeout, env=env)


def _remote(vm, command, check=True):
    r = subprocess.run(["ssh", "-F", vm["ssh_config"], "-p", str(vm["port"]), "root@127.0.0.1", command],
                       capture_output=True, text=True, timeout=120)
    assert not check or r.returncode == 0, r.stderr
    return r.stdout


def _lab_traces(vm):
    """What the lab may have left on a host: per-run directories, leases, loop devices, mounts."""
    return _remote(vm, "ls -d /var/tmp/overlaylab-* /run/overlaylab-leases 2>/dev/null; losetup -a; "
                       "grep /var/tmp/overlaylab- /proc/mounts; true")


def _ssh_masters():
    """Our ssh ControlMasters still running (their sockets are in /tmp/overlaylab-ssh-*)."""
    out = subprocess.run(["pgrep", "-af", "ControlPath=/tmp/overlaylab-ssh-"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[1:2] in (["ssh"], ["sshpass"])]


def _ssh_dirs_of(run_id):
    """This machine's ssh socket directories of run ``run_id`` (by the lab's marker in them)."""
    import glob
    out = []
    for d in glob.glob("/tmp/overlaylab-ssh-*"):
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(d, ".overlaylab-owner.json")) as f:
                if json.load(f).get("run") == run_id:
                    out.append(d)
    return out


def _records(run_dir):
    with open(os.path.join(run_dir, "results.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _run_dir(reports):
    runs = os.path.join(reports, "runs")
    return os.path.join(runs, sorted(os.listdir(runs))[-1])


def _inventory(tmp_path, vms, disks=None):
    text = "all:\n  children:\n    lab:\n      hosts:\n"
    for name, vm in vms.items():
        text += INVENTORY_HOST.format(name=name, port=vm["port"], key=os.path.join(vm["workdir"], "id_ed25519"))
        if disks and name in disks:
            text += "          overlaylab_disks: %s\n" % json.dumps(disks[name])
    path = tmp_path / "inventory.yml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def vms(tmp_path_factory):
    """Both VMs up (`vm up`, a disk per profile ext4 and xfs) in a state dir of their own; always down."""
    state_dir = str(tmp_path_factory.mktemp("hostvms"))
    env = dict(os.environ, OVERLAYLAB_VM_STATE=state_dir)
    procs = [subprocess.Popen(OVERLAYLAB + ["vm", "up", k, "-p", "=ext4 or =xfs"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in KERNELS]
    try:
        out = {}
        for kernel, p in zip(KERNELS, procs):
            stdout, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, stderr
            with open(os.path.join(state_dir, kernel, "state.json")) as f:
                out["vm" + kernel.split("-")[1].replace(".", "")] = json.load(f)
        yield out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        _cli(["vm", "down", "--all"], env, timeout=180)
        for pid in qemu_pids(state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for line in _ssh_masters():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[0]), signal.SIGKILL)


def test_run_hosts_runs_each_hosts_kernel_over_ssh_and_leaves_nothing_there(vms, tmp_path):
    r = _cli(["run", "--hosts", ",".join(vm["spec"] for vm in vms.values()), "-p", "=ext4", "-k", "=create-empty",
              "--reports-dir", str(tmp_path)])
    assert r.returncode == 0, r.stdout + r.stderr
    records = _records(_run_dir(str(tmp_path)))
    targets = {rec["target"]: rec for rec in records if rec["record"] == "target"}
    names = {"127.0.0.1:%d" % vm["port"]: vm for vm in vms.values()}
    assert set(targets) == set(names)
    for name, rec in targets.items():
        assert rec["provider"] == "ssh" and rec["kernel_release"] == names[name]["kernel_release"]
    releases = {rec["kernel_release"] for rec in targets.values()}
    assert len(releases) == 2 and os.uname().release not in releases
    cells = [(rec["target"], rec["outcome"], rec["provider"]) for rec in records if rec["record"] == "cell"]
    assert sorted(cells) == sorted((name, "PASS", "ssh") for name in names)
    for vm in vms.values():
        assert _lab_traces(vm) == ""
    assert _ssh_masters() == []


def test_run_inventory_names_targets_by_their_inventory_names(vms, tmp_path):
    inventory = _inventory(tmp_path, vms)
    r = _cli(["run", "--inventory", inventory, "-p", "=ext4", "-k", "=create-empty", "--reports-dir", str(tmp_path)])
    assert r.returncode == 0, r.stdout + r.stderr
    records = _records(_run_dir(str(tmp_path)))
    targets = {rec["target"]: rec for rec in records if rec["record"] == "target"}
    assert {t: (rec["provider"], rec["kernel_release"]) for t, rec in targets.items()} == {
        name: ("ansible", vm["kernel_release"]) for name, vm in vms.items()}
    assert sorted((rec["target"], rec["outcome"]) for rec in records if rec["record"] == "cell") == [
        ("vm510", "PASS"), ("vm61", "PASS")]
    # one group of it, spelled the testinfra way
    r = _cli(["run", "--hosts", "ansible://vm61?ansible_inventory=%s" % inventory, "-p", "=ext4", "-k",
              "=create-empty", "--reports-dir", str(tmp_path)])
    assert r.returncode == 0 and "== vm61 | kernel %s | provider ansible" % vms["vm61"]["kernel_release"] in r.stdout
    assert "vm510" not in r.stdout


def test_an_unreachable_host_is_error_with_ssh_words_while_the_other_passes(vms, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    r = _cli(["run", "--hosts", "%s,ssh://root@127.0.0.1:%d" % (vms["vm61"]["spec"], closed), "-p", "=ext4",
              "-k", "=create-empty or =create-base", "--reports-dir", str(tmp_path)])
    assert r.returncode == 3, r.stdout + r.stderr
    cells = [rec for rec in _records(_run_dir(str(tmp_path))) if rec["record"] == "cell"]
    dead = [c for c in cells if c["target"] == "127.0.0.1:%d" % closed]
    assert [c["outcome"] for c in dead] == ["ERROR", "ERROR"]
    assert all("port %d: Connection refused" % closed in c["error"] for c in dead), dead[0]["error"]
    alive = [c["outcome"] for c in cells if c["target"] == "127.0.0.1:%d" % vms["vm61"]["port"]]
    assert alive == ["PASS", "PASS"]


def test_allow_mkfs_formats_the_disk_the_inventory_names_with_the_lab_label(vms, tmp_path):
    vm = vms["vm61"]
    device = vm["disks"]["xfs"]
    inventory = _inventory(tmp_path, {"vm61": vm}, {"vm61": {"xfs": device}})
    r = _cli(["run", "--inventory", inventory, "--allow-mkfs", "-p", "=xfs", "-k", "=create-empty",
              "--reports-dir", str(tmp_path)])
    assert r.returncode == 0, r.stdout + r.stderr
    records = _records(_run_dir(str(tmp_path)))
    profile = [rec for rec in records if rec["record"] == "profile"][0]
    assert profile["fs"]["device"] == device
    assert [rec["outcome"] for rec in records if rec["record"] == "cell"] == ["PASS"]
    assert _remote(vm, "blkid -p -o export %s | grep -E '^(TYPE|LABEL)='" % device).split() == [
        "LABEL=overlaylab", "TYPE=xfs"]
    assert _lab_traces(vm) == ""
    # without --allow-mkfs the same inventory gets a loop file in the per-run directory
    r = _cli(["run", "--inventory", inventory, "-p", "=xfs", "-k", "=create-empty", "--reports-dir", str(tmp_path)])
    profile = [rec for rec in _records(_run_dir(str(tmp_path))) if rec["record"] == "profile"][0]
    assert r.returncode == 0 and profile["fs"]["device"].startswith("/dev/loop")


def test_a_mounted_disk_and_a_foreign_filesystem_are_refused_and_left_alone(vms, tmp_path):
    vm = vms["vm61"]
    ext4, xfs = vm["disks"]["ext4"], vm["disks"]["xfs"]
    _remote(vm, "mkfs.ext4 -q -F -L overlaylab %s && mkdir -p /mnt/busy && mount %s /mnt/busy && "
                "mkfs.xfs -q -f -L data %s" % (ext4, ext4, xfs))
    try:
        inventory = _inventory(tmp_path, {"vm61": vm}, {"vm61": {"ext4": ext4, "xfs": xfs}})
        r = _cli(["run", "--inventory", inventory, "--allow-mkfs", "-p", "=ext4 or =xfs", "-k", "=create-empty",
                  "--reports-dir", str(tmp_path)])
        assert r.returncode == 3, r.stdout + r.stderr
        cells = {rec["profile"]: rec for rec in _records(_run_dir(str(tmp_path))) if rec["record"] == "cell"}
        assert cells["ext4"]["outcome"] == "ERROR"
        assert "%s is mounted (on /mnt/busy)" % ext4 in cells["ext4"]["error"]
        assert cells["xfs"]["outcome"] == "ERROR"
        assert "%s holds a xfs filesystem labelled 'data', not one the lab made" % xfs in cells["xfs"]["error"]
        assert _remote(vm, "blkid -p -o export %s | grep ^LABEL=" % xfs).strip() == "LABEL=data"
        assert "/mnt/busy" in _remote(vm, "grep %s /proc/mounts" % ext4)
    finally:
        _remote(vm, "umount /mnt/busy; rmdir /mnt/busy; wipefs -q -a %s %s" % (ext4, xfs), check=False)


def _start_run(vm, tmp_path):
    """A run on the host, returned the moment its runner says the agent made the ext4 profile
    (mounted, its cells about to run). Its own progress line, not a poll of the host's mount
    table over ssh: the run's two cells take about a second, and a poll every half second
    through ssh could miss the whole run."""
    p = subprocess.Popen(OVERLAYLAB + ["run", "--hosts", vm["spec"], "-p", "=ext4", "-k", "=create-empty or =changes",
                                       "--reports-dir", str(tmp_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    said = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([p.stderr], [], [], 1.0)
        if ready:
            chunk = os.read(p.stderr.fileno(), 65536)
            if not chunk:
                break  # the run ended first
            said += chunk
            if b"ext4: filesystem made and probed" in said:
                return p
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    pytest.fail("the run never made its backing fs on the host: %s" % said.decode(errors="replace")[-2000:])


def test_ctrl_c_removes_the_per_run_directory_from_the_host(vms, tmp_path):
    vm = vms["vm510"]
    p = _start_run(vm, tmp_path)
    try:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=300)
        assert p.returncode == 130
        deadline = time.monotonic() + 120
        while _lab_traces(vm) and time.monotonic() < deadline:
            time.sleep(1)
        assert _lab_traces(vm) == ""
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def test_cleanup_hosts_removes_what_a_killed_run_left(vms, tmp_path):
    vm = vms["vm61"]
    p = _start_run(vm, tmp_path)
    try:
        # the run dies abruptly: the runner stops (frozen first, so that it cannot clean up after
        # the agent it sees die), its holder and agent on the host are killed, then the runner
        os.killpg(p.pid, signal.SIGSTOP)
        _remote(vm, "for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ 2>/dev/null | "
                    "grep -q '^PYTHONPATH=/var/tmp/overlaylab-' && kill -9 ${p#/proc/}; done; true")
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        time.sleep(2)
        left = _lab_traces(vm)
        # the per-run directory and its lease at least; a mount and loop device too when the kill
        # hit a profile in the middle (tests/agent/test_hold.py pins those with a real mount)
        assert "/var/tmp/overlaylab-" in left and "/run/overlaylab-leases" in left, left
        r = _cli(["cleanup", "--hosts", vm["spec"]], timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "removed 127.0.0.1:%d: remote-run directory /var/tmp/overlaylab-" % vm["port"] in r.stdout
        if "/dev/loop" in left:
            assert "removed 127.0.0.1:%d: loop device /dev/loop" % vm["port"] in r.stdout
        assert _lab_traces(vm) == ""
        # and here, the killed runner's ssh socket directory, found by its marker
        run_id = re.search(r"/var/tmp/overlaylab-(\d{8}-\d{6}-[0-9a-f]+)-", left).group(1)
        # (another `overlaylab run` on this machine may have removed it first: it cleans dead runs)
        r = _cli(["cleanup", "--run", run_id], timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert _ssh_dirs_of(run_id) == []
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        for line in _ssh_masters():  # the killed runner's ssh master
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
