"""qemu argv builders (pure) and the runner's lifecycle (with a stand-in for qemu)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from overlaylab.vm import qemu as Q


def argv(**kw):
    base = dict(vmlinuz="/k/vmlinuz", initrd="/k/initrd", console_log="/run/x/console.log",
                shares=[("/", "hostroot"), ("/run/x/cfg", "labcfg")],
                disks=[("ext4", "/run/x/ext4.img"), ("xfs", "/run/x/xfs.img"), ("btrfs", "/run/x/b.img")],
                ssh_port=40022)
    base.update(kw)
    return Q.qemu_argv(**base)


def values(args, flag):
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_network_is_restricted_and_forwards_only_from_loopback():
    (netdev,) = values(argv(), "-netdev")
    assert "restrict=on" in netdev.split(",")
    fwds = [p for p in netdev.split(",") if p.startswith("hostfwd=")]
    assert fwds == ["hostfwd=tcp:127.0.0.1:40022-:22"]
    assert "-nic" not in argv() and values(argv(ssh_port=None), "-nic") == ["none"]


def test_one_virtio_drive_per_disk_named_by_serial():
    a = argv()
    drives = values(a, "-drive")
    assert len(drives) == 3
    assert all("if=none" in d and "format=raw" in d for d in drives)
    blk = [d for d in values(a, "-device") if d.startswith("virtio-blk-pci")]
    assert [d.split("serial=")[1] for d in blk] == ["ext4", "xfs", "btrfs"]
    with pytest.raises(ValueError):
        Q.disk_args([("x", "/a,b.img")])


def test_host_root_is_shared_read_only_with_remapped_inodes():
    fsdevs = values(argv(), "-fsdev")
    assert len(fsdevs) == 2
    for f in fsdevs:
        opts = f.split(",")
        assert "readonly=on" in opts and "multidevs=remap" in opts and "security_model=none" in opts
    assert "path=/" in fsdevs[0].split(",")
    tags = [d for d in values(argv(), "-device") if d.startswith("virtio-9p-pci")]
    assert [t.split("mount_tag=")[1] for t in tags] == ["hostroot", "labcfg"]


def test_console_goes_to_a_file_and_the_guest_cannot_reboot():
    a = argv()
    assert "-nographic" in a and "-no-reboot" in a
    assert values(a, "-chardev") == ["file,id=con0,path=/run/x/console.log"]
    assert values(a, "-serial") == ["chardev:con0"]
    assert "panic=-1" in values(a, "-append")[0] and "console=ttyS0" in values(a, "-append")[0]


def test_accelerator_and_resources():
    a = argv(accel="tcg", memory_mb=1536, cpus=2)
    assert values(a, "-accel") == ["tcg,thread=multi"] and values(a, "-cpu") == ["max"]
    assert values(a, "-m") == ["1536"] and values(a, "-smp") == ["2"]
    assert values(argv(accel="kvm"), "-accel") == ["kvm"]
    with pytest.raises(ValueError):
        Q.machine_args("hvf")


def test_kvm_can_be_forced_off(monkeypatch):
    monkeypatch.setenv("OVERLAYLAB_ACCEL", "tcg")
    assert Q.detect_kvm("/nonexistent")[0] == "tcg"


def test_free_port_and_sparse_images(tmp_path):
    assert 1024 < Q.free_port() < 65536
    img = Q.make_sparse_image(str(tmp_path / "d.img"), 512)
    st = os.stat(img)
    assert st.st_size == 512 << 20 and st.st_blocks * 512 < 1 << 20


# --- the runner, with a shell script standing in for qemu --------------------------------------

def fake(tmp_path, body):
    log = str(tmp_path / "console.log")
    script = "exec 1>>%s\n%s" % (log, textwrap.dedent(body))
    return ["sh", "-c", script], log


def alive(pid):
    try:
        os.kill(pid, 0)
        # a zombie is dead for our purpose
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):  # gone, or reaped between the two looks
        return False


def gone(pid, timeout=10.0):
    """Whether ``pid`` is dead within ``timeout``: SIGKILL is delivered, not waited for, and
    only the group's leader is the VM's child to reap (a grandchild exits on its own time)."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_ready_marker_then_teardown_kills_the_whole_group(tmp_path):
    a, log = fake(tmp_path, """
        sleep 300 &
        echo $! > %s/child.pid
        echo booting; echo OVERLAYLAB-READY 6.1.0-test
        wait
    """ % tmp_path)
    extra = tmp_path / "extra.img"
    extra.write_bytes(b"x")
    with Q.QemuVM(a, log, cleanup_paths=[str(extra)]) as vm:
        secs = vm.wait_ready(10)
        assert 0 <= secs < 10
        pid = vm.proc.pid
        child = int((tmp_path / "child.pid").read_text())
        assert alive(child)
    assert not alive(pid) and gone(child)
    assert not extra.exists()


def test_failed_init_raises_with_console_tail(tmp_path):
    a, log = fake(tmp_path, "echo line-one; echo 'OVERLAYLAB-FAILED: cannot mount'; sleep 300")
    with Q.QemuVM(a, log) as vm:
        with pytest.raises(Q.VMBootError) as ei:
            vm.wait_ready(10)
    assert "cannot mount" in ei.value.console_tail and "line-one" in str(ei.value)


def test_panic_and_early_exit_and_hang_are_boot_errors(tmp_path):
    a, log = fake(tmp_path, "echo 'Kernel panic - not syncing: VFS'; sleep 300")
    with Q.QemuVM(a, log) as vm, pytest.raises(Q.VMBootError, match="panicked"):
        vm.wait_ready(10)
    a, log = fake(tmp_path, "echo bye; exit 3")
    with Q.QemuVM(a, log) as vm, pytest.raises(Q.VMBootError, match="rc=3"):
        vm.wait_ready(10)
    a, log = fake(tmp_path, "echo still booting; sleep 300")
    t0 = time.monotonic()
    with Q.QemuVM(a, log) as vm, pytest.raises(Q.VMBootError, match="not ready"):
        vm.wait_ready(1.0)
    assert time.monotonic() - t0 < 10
    assert not vm.alive()


def test_hard_timeout_kills_a_running_vm(tmp_path):
    a, log = fake(tmp_path, "echo OVERLAYLAB-READY x; sleep 300")
    with Q.QemuVM(a, log, hard_timeout=1.0) as vm:
        vm.wait_ready(10)
        assert vm.wait_exit(10)
        assert vm.timed_out


def test_sigterm_to_the_lab_process_still_kills_qemu(tmp_path):
    """A lab run killed with SIGTERM must not leave its VM behind."""
    prog = textwrap.dedent("""
        import sys, time
        from overlaylab.vm.qemu import QemuVM
        log = sys.argv[1]
        with QemuVM(["sh", "-c", "echo OVERLAYLAB-READY x >> %s; sleep 300" % log], log) as vm:
            vm.wait_ready(10)
            print(vm.proc.pid, flush=True)
            time.sleep(300)
    """)
    log = str(tmp_path / "console.log")
    p = subprocess.Popen([sys.executable, "-c", prog, log], stdout=subprocess.PIPE,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    qpid = int(p.stdout.readline())
    assert alive(qpid)
    p.send_signal(signal.SIGTERM)
    p.wait(20)
    assert gone(qpid)


def test_control_path_fits_a_unix_socket_even_under_a_long_tmpdir():
    from overlaylab.providers.qemu import control_path_for
    short = control_path_for("/tmp/overlaylab-qemu.abc123")
    assert short == "/tmp/overlaylab-qemu.abc123/cm-%p"
    # pytest's tmp_path under a long TMPDIR: ssh would fail "ControlPath too long"
    long_dir = "/tmp/pytest-of-root/pytest-12/test_a_rather_long_test_name_here0/" + "x" * 40
    assert control_path_for(long_dir) == "none"


def test_disks_are_mapped_from_guest_inits_console_lines():
    from overlaylab.providers.qemu import console_disks

    console = ("[    2.1] virtio_blk virtio2: [vda] 131072 512-byte logical blocks\n"
               "OVERLAYLAB-DISK ext4 vda\r\n"
               "OVERLAYLAB-DISK xfs-v4-noftype vdb\n"
               "[    2.2] a kernel line, then OVERLAYLAB-DISK btrfs vdc\n"  # broken by printk: not a line of init's
               "OVERLAYLAB-READY 6.1.0-50-amd64 uptime=3.7\n")
    assert console_disks(console) == {"ext4": "/dev/vda", "xfs-v4-noftype": "/dev/vdb"}
