"""The storage engines' prerequisites in a qemu guest (one boot for the module per kernel).

``OVERLAYLAB_VM_KERNELS=debian-6.1,debian-5.10,debian-sid`` boots more kernels (default: 6.1).

The guest runs the host's binaries over 9p; what the engines need besides comes from the guest
init (overlaylab/vm/guest_init.sh): cgroup2 at /sys/fs/cgroup, /dev/fuse (the fuse module of
the initramfs), /dev/fd, a writable /run, /var/lib and /etc/docker. Each test checks one of
them, with the real engine where one can: containers-storage on a fresh ext4 on the guest's
disk, fuse-overlayfs mounting a layer, a private dockerd (Docker 20.10, containerd, runc)
running a container.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time

import pytest

from tests.needs import missing, need, need_tool

from overlaylab.kernels import KernelUnavailable, fetch_kernel
from overlaylab.providers.qemu import QemuProvider, run_with_timeout

from .conftest import qemu_pids

pytestmark = [pytest.mark.vm, pytest.mark.slow]

KERNELS = [k.strip() for k in os.environ.get("OVERLAYLAB_VM_KERNELS", "debian-6.1").split(",") if k.strip()]

DISK = "engines"
MNT = "/mnt/lab/engines"        # the ext4 of the guest's disk
DOCKER_SOCK = "/tmp/dockerd/docker.sock"
#: process names (/proc/PID/comm, 15 characters at most) no engine may leave behind
ENGINE_COMMS = ("dockerd", "containerd", "containerd-shim", "runc", "docker-init", "fuse-overlayfs")


@pytest.fixture(scope="module", params=KERNELS)
def guest(request):
    """The kernel under qemu with one raw disk, made ext4 and mounted at MNT in the guest."""
    need_tool("qemu-system-x86_64", "qemu-system-x86")
    need(os.path.exists("/bin/busybox"), "busybox-static is not installed")
    for tool, package in (("containers-storage", None), ("fuse-overlayfs", None), ("dockerd", "docker.io"),
                          ("containerd", None), ("runc", None), ("docker", "docker.io")):
        need_tool(tool, package)
    try:
        kernel = fetch_kernel(request.param)
    except KernelUnavailable as e:
        missing(str(e))
    workdir = None
    try:
        with QemuProvider().up(kernel, [(DISK, 256)]) as vm:
            workdir = vm.workdir
            r = run_with_timeout(vm.host, "mkfs.ext4 -q -F %s && mkdir -p %s && mount %s %s"
                                 % (vm.disks[DISK], MNT, vm.disks[DISK], MNT), 120)
            assert r.rc == 0, r.stderr
            yield vm
    finally:
        # the provider kills qemu (and with it every mount and daemon of the guest): make sure
        for pid in qemu_pids(workdir) if workdir else ():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    assert workdir is None or (not qemu_pids(workdir) and not os.path.exists(workdir))


def sh(vm, command: str, timeout: float = 120.0) -> str:
    """Run ``command`` in the guest; its stdout, or the test fails with its stderr."""
    r = run_with_timeout(vm.host, command, timeout)
    assert r.rc == 0, "%s: rc=%s\n%s%s" % (command, r.rc, r.stdout, r.stderr)
    return r.stdout


def engine_processes(vm) -> list:
    comms = sh(vm, "cat /proc/[0-9]*/comm 2>/dev/null || true").split()
    return [c for c in comms if c.startswith(ENGINE_COMMS)]


def test_guest_mounts_cgroup2_with_its_controllers(guest):
    mounts = sh(guest, "cat /proc/self/mounts")
    assert re.search(r"^cgroup2 /sys/fs/cgroup cgroup2 rw,", mounts, re.M), mounts
    controllers = sh(guest, "cat /sys/fs/cgroup/cgroup.controllers").split()
    assert {"cpu", "io", "memory", "pids"} <= set(controllers), controllers
    # a child cgroup can be made and given a controller (what containerd does for each container)
    sh(guest, "echo +pids > /sys/fs/cgroup/cgroup.subtree_control && mkdir /sys/fs/cgroup/lab-t "
              "&& grep -qw pids /sys/fs/cgroup/lab-t/cgroup.controllers && rmdir /sys/fs/cgroup/lab-t")


def test_guest_has_a_usable_dev_fuse(guest):
    assert sh(guest, "stat -c '%F %t:%T' /dev/fuse").strip() == "character special file a:e5"  # 10:229
    assert re.search(r"^nodev\tfuse$", sh(guest, "cat /proc/filesystems"), re.M)
    sh(guest, "python3 -c \"import os; os.close(os.open('/dev/fuse', os.O_RDWR))\"")


def test_guest_executes_a_file_descriptor(guest):
    """fexecve (execveat with AT_EMPTY_PATH), as runc re-executes itself: 5.10 needs /dev/fd."""
    assert sh(guest, "readlink /dev/fd").strip() == "/proc/self/fd"
    out = sh(guest, "python3 -c \"import os; os.execve(os.open('/bin/busybox', os.O_RDONLY), "
                    "['busybox', 'echo', 'fexecve-ok'], {})\"")
    assert out.strip() == "fexecve-ok"


def test_guest_run_var_lib_and_etc_docker_are_writable_and_host_state_still_reads(guest):
    sh(guest, "touch /run/lab-t /var/run/lab-t2 && test -e /run/lab-t2")   # /var/run is /run
    sh(guest, "mkdir -p /var/lib/containers/storage /var/lib/docker && touch /etc/docker/lab-t")
    # the host's entries of /var/lib are there, read-only: dpkg still knows what is installed
    query = "dpkg-query -W -f '${Version}' docker.io"
    assert sh(guest, query) == subprocess.run(query, shell=True, capture_output=True, text=True).stdout != ""
    assert "Read-only file system" in guest.run("touch /var/lib/dpkg/lab-t").stderr
    assert "Read-only file system" in guest.run("touch /usr/lab-t").stderr


def test_containers_storage_accepts_a_fresh_ext4_in_the_guest(guest):
    cs = "containers-storage --graph %s/cs/g --run %s/cs/r --storage-driver overlay" % (MNT, MNT)
    try:
        status = sh(guest, cs + " status 2>&1")    # the 1.43 CLI prints its status on stderr
        assert "Backing Filesystem: extfs" in status and "Supports d_type: true" in status, status
    finally:
        sh(guest, cs + " shutdown")     # it bind-mounts its overlay dir on itself
    assert " %s/cs" % MNT not in sh(guest, "cat /proc/self/mounts")


def test_fuse_overlayfs_mounts_a_container_layer_in_the_guest(guest):
    cs = ("containers-storage --graph %s/fo/g --run %s/fo/r --storage-driver overlay "
          "--storage-opt overlay.mount_program=/usr/bin/fuse-overlayfs" % (MNT, MNT))
    base = sh(guest, cs + " create-layer").strip()
    top = sh(guest, "%s create-layer %s" % (cs, base)).strip()
    try:
        merged = sh(guest, "%s mount %s" % (cs, top)).strip()
        line = [m for m in sh(guest, "cat /proc/self/mounts").splitlines() if " %s " % merged in m]
        assert line and line[0].split()[2] == "fuse.fuse-overlayfs", line
        sh(guest, "echo hi > %s/new" % merged)
        assert sh(guest, "%s changes %s" % (cs, top)).strip() == 'Add "/new"'
    finally:
        sh(guest, "%s unmount %s; %s shutdown" % (cs, top, cs))
    assert " %s/fo" % MNT not in sh(guest, "cat /proc/self/mounts")
    assert "fuse-overlayfs" not in engine_processes(guest)


def test_private_dockerd_runs_a_container_on_overlay2_and_stops_leaving_nothing(guest, capsys):
    data_root = MNT + "/docker"
    exec_root = "/tmp/dockerd/x"
    docker = "docker -H unix://" + DOCKER_SOCK
    start = ("mkdir -p /tmp/dockerd %s && setsid -f dockerd --data-root %s --exec-root %s -H unix://%s "
             "--pidfile /tmp/dockerd/pid --storage-driver overlay2 --iptables=false --ip6tables=false "
             "--ip-masq=false --bridge=none >/tmp/dockerd/log 2>&1 </dev/null"
             % (data_root, data_root, exec_root, DOCKER_SOCK))
    t0 = time.monotonic()
    sh(guest, start)
    try:
        sh(guest, "until %s version >/dev/null 2>&1; do pgrep -x dockerd >/dev/null"
                  " || { tail -5 /tmp/dockerd/log >&2; exit 1; }; sleep 0.2; done" % docker, 180)
        started = time.monotonic() - t0
        info = sh(guest, docker + " info")
        assert re.search(r"^ Storage Driver: overlay2$", info, re.M), info
        assert re.search(r"^  Backing Filesystem: extfs$", info, re.M), info
        assert re.search(r"^ Cgroup Version: 2$", info, re.M), info
        # a one-layer image of the host's static busybox, and a container of it without network
        sh(guest, "mkdir -p /tmp/bb/bin && cp /bin/busybox /tmp/bb/bin/ && ln -sf busybox /tmp/bb/bin/sh "
                  "&& tar -C /tmp/bb -c . | %s import - lab/busybox" % docker)
        t1 = time.monotonic()
        out = sh(guest, "%s run --rm --network none lab/busybox sh -c 'cat /proc/self/cgroup; echo ran'" % docker)
        ran = time.monotonic() - t1
        assert out.split() == ["0::/", "ran"], out   # its own cgroup namespace on cgroup v2
    finally:
        # the guest's only dockerd is this one; it stops its containerd and their shims
        sh(guest, "kill $(pgrep -x dockerd) 2>/dev/null; "
                  "while pgrep -x dockerd >/dev/null || pgrep -x containerd >/dev/null; do sleep 0.1; done", 60)
    assert engine_processes(guest) == []
    mounts = sh(guest, "cat /proc/self/mounts")
    assert data_root + "/" not in mounts and exec_root not in mounts, mounts
    with capsys.disabled():
        print("\n[vm] %s (%s, boot %.1fs): dockerd ready in %.1fs, docker run in %.1fs"
              % (guest.kernel_release, guest.accel, guest.boot_seconds, started, ran))
