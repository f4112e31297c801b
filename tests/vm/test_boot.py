"""Real boots under qemu (TCG unless KVM really works). Slow: marked ``vm``.

``OVERLAYLAB_VM_KERNELS=debian-6.1,debian-5.10,debian-sid`` boots more kernels (default: 6.1).
"""
from __future__ import annotations

import os
import time

import pytest

from tests.needs import missing, need, need_tool

from overlaylab.kernels import KernelUnavailable, fetch_kernel
from overlaylab.providers.qemu import QemuProvider, run_with_timeout

KERNELS = [k.strip() for k in os.environ.get("OVERLAYLAB_VM_KERNELS", "debian-6.1").split(",") if k.strip()]
PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def qemu_pids():
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if cmd and os.path.basename(cmd[0]).startswith(b"qemu-system"):
                out.append((int(pid), b" ".join(cmd)))
    return out


@pytest.mark.parametrize("name", KERNELS)
def test_boot_kernel_with_disks_and_reach_it_with_testinfra(name, capsys):
    need_tool("qemu-system-x86_64", "qemu-system-x86")
    need(os.path.exists("/bin/busybox"), "busybox-static is not installed")
    try:
        kernel = fetch_kernel(name)
    except KernelUnavailable as e:
        missing(str(e))
    t0 = time.monotonic()
    provider = QemuProvider()
    with provider.up(kernel, [("ext4", 256), ("xfs", 512)]) as vm:
        up = time.monotonic() - t0
        host = vm.host
        workdir, qemu_pid = vm.workdir, vm.vm.proc.pid
        assert os.path.isdir(workdir)
        assert host.check_output("uname -r") == kernel.release != os.uname().release
        assert vm.kernel_release == kernel.release
        assert vm.accel in ("kvm", "tcg")
        r = run_with_timeout(host, "modprobe overlay && grep -w overlay /proc/filesystems", 60)
        assert r.rc == 0 and "overlay" in r.stdout, r.stderr
        assert set(vm.disks) == {"ext4", "xfs"}
        for dev in vm.disks.values():
            assert host.run("test -b %s" % dev).rc == 0
        assert host.run("blockdev --getsize64 %s" % vm.disks["xfs"]).stdout.strip() == str(512 << 20)
        # xfs is not loaded at boot (initramfs.ON_DEMAND_MODULES): the kernel asks for it at the
        # first xfs mount, through the host's kmod over the guest kernel's modules dir
        assert host.run("grep -q '^xfs ' /proc/modules").rc != 0
        r = run_with_timeout(host, "mkfs.xfs -q -f {0} && mkdir -p /mnt/lab/x && mount -t xfs {0} /mnt/lab/x "
                                   "&& grep '^xfs ' /proc/modules; umount /mnt/lab/x".format(vm.disks["xfs"]), 120)
        assert r.stdout.startswith("xfs "), (r.stdout, r.stderr)
        r = run_with_timeout(host, "python3 -c 'import sys, overlaylab; print(sys.version.split()[0], overlaylab.__file__)'", 120)
        assert r.rc == 0, r.stderr
        version, path = r.stdout.split()
        assert path.startswith(PROJECT)
        assert version == ".".join(map(str, __import__("sys").version_info[:3]))  # the host's interpreter
        r = run_with_timeout(host, vm.agent_command(["--help"]).replace("-m overlaylab.agent --help",
                             "-c 'import overlaylab.kernels, sys; print(sys.executable)'"), 120)
        assert r.rc == 0 and r.stdout.strip() == vm.agent_python, r.stderr
        # the lab's mount points are writable and the host root is not
        assert host.run("touch /mnt/lab/x && touch /tmp/x && touch /root/x").rc == 0
        assert host.run("touch /usr/overlaylab-must-fail").rc != 0
        assert os.path.getsize(vm.console_log) > 0
        if kernel.config:
            assert host.file("/boot/config-%s" % kernel.release).contains("CONFIG_OVERLAY_FS=")
        boot = vm.boot_seconds
    # the VM and its files are gone
    assert not os.path.exists(workdir)
    assert not os.path.exists("/proc/%d" % qemu_pid) or open("/proc/%d/stat" % qemu_pid).read().split(")")[1].split()[0] == "Z"
    assert not [c for p, c in qemu_pids() if workdir.encode() in c]
    with capsys.disabled():
        print("\n[vm] %s %s accel=%s boot-to-ssh=%.1fs up()=%.1fs" % (name, kernel.release, vm.accel, boot, up))
