"""The qemu command line as small pure argv builders, and one runner that owns the process.

Each builder returns a list of arguments for one concern (machine, memory, kernel, console,
root share, disks, network); :func:`qemu_argv` joins them. Nothing here runs anything except
:class:`QemuVM` (start, wait for the ready marker, hard timeout, console capture, clean-up) and
:func:`detect_kvm` (a real, short probe boot, cached).
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..agent.procutil import kill_group, popen_group, stop_group

QEMU = "qemu-system-x86_64"
READY_MARKER = "OVERLAYLAB-READY"
FAILED_MARKER = "OVERLAYLAB-FAILED"
#: console lines that mean the guest is gone for good
PANIC_PATTERNS = ("Kernel panic - not syncing", "end Kernel panic")


class VMBootError(RuntimeError):
    """The guest did not come up (panic, hang, qemu error); ``console_tail`` is the evidence."""

    def __init__(self, message: str, console_tail: str = "", console_log: Optional[str] = None) -> None:
        self.console_tail = console_tail
        self.console_log = console_log
        text = message
        if console_tail:
            text += "\n--- console tail (%s) ---\n%s" % (console_log or "", console_tail)
        super().__init__(text)


# --- pure argv builders ------------------------------------------------------------------------

def machine_args(accel: str = "tcg") -> List[str]:
    """``-machine q35`` with the accelerator; ``-cpu max`` under TCG (RDRAND, SSE4.2...)."""
    if accel not in ("kvm", "tcg"):
        raise ValueError("accel must be kvm or tcg, not %r" % accel)
    args = ["-machine", "q35", "-accel", "kvm" if accel == "kvm" else "tcg,thread=multi"]
    args += ["-cpu", "host" if accel == "kvm" else "max"]
    return args


def resources_args(memory_mb: int = 1024, cpus: int = 2) -> List[str]:
    return ["-m", str(int(memory_mb)), "-smp", str(int(cpus))]


#: kernel command line: serial console, panic exits (with -no-reboot), trust RDRAND so
#: getrandom() does not stall sshd on old kernels under TCG. ``loglevel=6``: the console shows
#: KERN_NOTICE and more urgent (warnings, errors, what a test writes to /dev/kmsg at <5>; a
#: panic or Oops raises the level itself: kernel/panic.c ``console_verbose()``), not the ~25 KB
#: of KERN_INFO boot lines, each byte of which is an emulated UART write under TCG
#: (benchmarks/bench_boot.py); /dev/kmsg, which the agent reads, keeps every line. The TSC is
#: the clocksource (no ``tsc=unstable``): TCG derives every vCPU's TSC from the host's clock and a
#: guest has one vCPU by default, so there is nothing to keep in sync (a kernel that finds a warp
#: between vCPUs falls back to the HPET itself), and clock reads stay in the vDSO instead of an
#: emulated HPET read each (first result on 5.10 and 6.1 ~0.9 s sooner, bench_boot --first-cell)
DEFAULT_APPEND = ("console=ttyS0,115200 panic=-1 rdinit=/init random.trust_cpu=on "
                  "mitigations=off net.ifnames=0 8250.nr_uarts=1 loglevel=6")


def kernel_args(vmlinuz: str, initrd: str, append: str = DEFAULT_APPEND) -> List[str]:
    return ["-kernel", vmlinuz, "-initrd", initrd, "-append", append]


def console_args(console_log: str) -> List[str]:
    """No display; the serial console into ``console_log``; no monitor; exit instead of reboot."""
    return ["-nographic", "-no-reboot", "-monitor", "none",
            "-chardev", "file,id=con0,path=%s" % console_log, "-serial", "chardev:con0"]


def virtfs_args(path: str, tag: str, readonly: bool = True, ident: Optional[str] = None) -> List[str]:
    """A 9p share (``-fsdev`` + ``virtio-9p-pci``); ``multidevs=remap`` keeps inode numbers unique."""
    ident = ident or "fs_" + re.sub(r"[^A-Za-z0-9_]", "_", tag)
    fsdev = "local,id=%s,path=%s,security_model=none,multidevs=remap" % (ident, path)
    if readonly:
        fsdev += ",readonly=on"
    return ["-fsdev", fsdev, "-device", "virtio-9p-pci,fsdev=%s,mount_tag=%s" % (ident, tag)]


def disk_args(images: Sequence[Tuple[str, str]]) -> List[str]:
    """One virtio-blk disk per (serial, raw image): ``-drive if=none`` + ``-device
    virtio-blk-pci,serial=...`` (qemu dropped ``serial=`` from ``-drive if=virtio``); the serial
    names the disk in the guest (``/sys/block/vdX/serial``). ``cache=unsafe``: the images die
    with the run. Disks appear as vda, vdb... in the order given."""
    args: List[str] = []
    for i, (serial, path) in enumerate(images):
        if "," in path:
            raise ValueError("disk image path must not contain a comma: %r" % path)
        args += ["-drive", "file=%s,if=none,id=disk%d,format=raw,cache=unsafe" % (path, i),
                 "-device", "virtio-blk-pci,drive=disk%d,serial=%s" % (i, serial[:20])]
    return args


def network_args(ssh_port: int, guest_port: int = 22) -> List[str]:
    """User-mode network, isolated (``restrict=on``), one forward from loopback to the guest's sshd."""
    return ["-netdev", "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:%d" % (ssh_port, guest_port),
            "-device", "virtio-net-pci,netdev=net0"]


def rng_args() -> List[str]:
    return ["-device", "virtio-rng-pci"]


def qemu_argv(*, vmlinuz: str, initrd: str, console_log: str, accel: str = "tcg",
              memory_mb: int = 1024, cpus: int = 2, append: str = DEFAULT_APPEND,
              shares: Sequence[Tuple[str, str]] = (), disks: Sequence[Tuple[str, str]] = (),
              ssh_port: Optional[int] = None, qemu: str = QEMU, extra: Sequence[str] = ()) -> List[str]:
    """The whole command line: ``shares`` are read-only (host path, tag) 9p shares."""
    argv = [qemu, "-name", "overlaylab"]
    argv += machine_args(accel) + resources_args(memory_mb, cpus)
    argv += kernel_args(vmlinuz, initrd, append) + console_args(console_log)
    for path, tag in shares:
        argv += virtfs_args(path, tag)
    argv += disk_args(disks)
    if ssh_port is not None:
        argv += network_args(ssh_port)
    else:
        argv += ["-nic", "none"]
    argv += rng_args() + list(extra)
    return argv


# --- helpers -----------------------------------------------------------------------------------

def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (qemu binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_sparse_image(path: str, size_mb: int) -> str:
    with open(path, "wb") as f:
        f.truncate(int(size_mb) * 1024 * 1024)
    return path


def tail_text(path: Optional[str], lines: int = 40) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.replace("\r", "").splitlines()[-lines:])


try:  # resolved in the parent: the child between fork and exec must not dlopen
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not glibc
    _PRCTL = None


def _pdeathsig() -> None:  # runs in the child before exec (after popen_group's setsid)
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG: die with the lab process


# --- the runner --------------------------------------------------------------------------------

_LIVE: "weakref.WeakSet[QemuVM]" = weakref.WeakSet()


def _kill_all_live() -> None:
    for vm in list(_LIVE):
        vm.kill()


atexit.register(_kill_all_live)


@dataclass
class QemuVM:
    """One qemu process: ``with QemuVM(argv, console_log) as vm: vm.wait_ready()``.

    Owns the process group (killed for sure on exit, exceptions, SIGINT and SIGTERM), the hard
    timeout (a watchdog kills qemu after ``hard_timeout`` seconds) and the console log. Temporary
    files listed in ``cleanup_paths`` are removed on exit.
    """

    argv: List[str]
    console_log: str
    hard_timeout: float = 3600.0
    ssh_port: Optional[int] = None
    cleanup_paths: List[str] = field(default_factory=list)
    stderr_log: Optional[str] = None
    proc: Optional[subprocess.Popen] = None
    started_at: float = 0.0
    ready_at: Optional[float] = None
    marker_at: Optional[float] = None
    timed_out: bool = False

    def __hash__(self) -> int:  # for the WeakSet
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    # lifecycle
    def start(self) -> "QemuVM":
        self.stderr_log = self.stderr_log or self.console_log + ".qemu-stderr"
        open(self.console_log, "wb").close()  # a retry must not see the last boot's marker
        err = open(self.stderr_log, "wb")
        try:
            # its own process group, killed as a whole
            self.proc = popen_group(self.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    preexec_fn=_pdeathsig, close_fds=True)
        finally:
            err.close()
        self.started_at = time.monotonic()
        _LIVE.add(self)
        self._watchdog = threading.Timer(self.hard_timeout, self._hard_timeout)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def _hard_timeout(self) -> None:
        self.timed_out = True
        self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def console(self) -> str:
        try:
            with open(self.console_log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def evidence(self, lines: int = 40) -> str:
        tail = tail_text(self.console_log, lines)
        err = tail_text(self.stderr_log, 10)
        if err.strip():
            tail += "\n--- qemu stderr ---\n" + err
        return tail

    def wait_ready(self, timeout: float = 120.0, marker: str = READY_MARKER) -> float:
        """Wait for ``marker`` on the console and, with a forwarded port, an SSH banner.

        Returns seconds from start to ready. A qemu exit, a panic or ``FAILED`` line on the
        console, or the timeout raises :class:`VMBootError` with the console tail.
        """
        deadline = time.monotonic() + timeout
        seen_marker = False
        while True:
            text = self.console()
            if not seen_marker and re.search(r"^%s\b" % re.escape(marker), text, re.M):
                seen_marker = True
                self.marker_at = time.monotonic()
            if FAILED_MARKER + ":" in text:
                self.kill()
                raise VMBootError("guest init failed", self.evidence(), self.console_log)
            if any(p in text for p in PANIC_PATTERNS):
                self.kill()
                raise VMBootError("guest kernel panicked", self.evidence(), self.console_log)
            if not self.alive():
                rc = self.proc.returncode if self.proc else None
                why = "hard timeout" if self.timed_out else "qemu exited (rc=%s) before the guest was ready" % rc
                raise VMBootError(why, self.evidence(), self.console_log)
            if seen_marker and (self.ssh_port is None or self._ssh_banner()):
                self.ready_at = time.monotonic()
                return self.ready_at - self.started_at
            if time.monotonic() > deadline:
                self.kill()
                raise VMBootError("guest not ready after %.0fs (hang?)" % timeout, self.evidence(),
                                  self.console_log)
            time.sleep(0.1)

    def _ssh_banner(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=2) as s:
                s.settimeout(3)
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def wait_exit(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        """Kill qemu's process group (TERM, then KILL) and reap it. Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            stop_group(proc, ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)))
        else:
            kill_group(proc, signal.SIGKILL)  # stray children of the group, if any
        wd = getattr(self, "_watchdog", None)
        if wd is not None:
            wd.cancel()
        _LIVE.discard(self)

    def close(self) -> None:
        self.kill()
        for p in self.cleanup_paths:
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(p)

    def __enter__(self) -> "QemuVM":
        self._prev_term = None
        if threading.current_thread() is threading.main_thread():
            self._prev_term = signal.getsignal(signal.SIGTERM)

            def on_term(signum, frame):  # turn SIGTERM into an exception so __exit__ runs
                raise SystemExit(128 + signum)

            signal.signal(signal.SIGTERM, on_term)
        try:
            return self.start()
        except BaseException:
            self._restore_signals()
            raise

    def _restore_signals(self) -> None:
        if getattr(self, "_prev_term", None) is not None:
            signal.signal(signal.SIGTERM, self._prev_term)
            self._prev_term = None

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        finally:
            self._restore_signals()


# --- accelerator detection ---------------------------------------------------------------------

_ACCEL_CACHE: Dict[str, str] = {}
PROBE_MARKER = "OVERLAYLAB-KVM-PROBE-OK"


def _qemu_version(qemu: str = QEMU) -> str:
    try:
        out = subprocess.run([qemu, "--version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             universal_newlines=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


def detect_kvm(vmlinuz: str, cache_dir: Optional[os.PathLike] = None, timeout: float = 20.0,
               qemu: str = QEMU, refresh: bool = False) -> Tuple[str, str]:
    """Which accelerator really works: ``("kvm"|"tcg", reason)``.

    ``/dev/kvm`` existing is not enough (on some hosts guests hang or qemu aborts), so this
    boots ``vmlinuz`` with a minimal busybox initramfs under KVM and waits up to ``timeout``
    seconds for its marker. The answer is cached per host kernel and qemu version (in memory
    and in ``<cache>/accel.json``). ``OVERLAYLAB_ACCEL=kvm|tcg`` overrides the probe.
    """
    forced = os.environ.get("OVERLAYLAB_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced, "forced by OVERLAYLAB_ACCEL"
    if not os.path.exists("/dev/kvm") or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm missing or not accessible"
    from ..kernels.cache import cache_root, read_json, write_json_atomic

    key = "%s|%s" % (os.uname().release, _qemu_version(qemu))
    cache_file = cache_root(cache_dir) / "accel.json"
    if not refresh:
        if key in _ACCEL_CACHE:
            return _ACCEL_CACHE[key], "cached"
        data = read_json(cache_file, {})
        if isinstance(data, dict) and key in data:
            _ACCEL_CACHE[key] = data[key]["accel"]
            return data[key]["accel"], "cached: %s" % data[key].get("reason", "")
    from .initramfs import build_probe_initramfs

    work = tempfile.mkdtemp(prefix="overlaylab-kvmprobe-")
    try:
        initrd = build_probe_initramfs(os.path.join(work, "probe.cpio.gz"), PROBE_MARKER)
        log = os.path.join(work, "console.log")
        argv = qemu_argv(vmlinuz=vmlinuz, initrd=initrd, console_log=log, accel="kvm",
                         memory_mb=256, cpus=1, append="console=ttyS0 panic=-1 rdinit=/init quiet",
                         qemu=qemu)
        t0 = time.monotonic()
        with QemuVM(argv, log, hard_timeout=timeout + 5) as vm:
            try:
                vm.wait_ready(timeout, marker=PROBE_MARKER)
                accel, reason = "kvm", "probe boot printed its marker in %.1fs" % (time.monotonic() - t0)
            except VMBootError as e:
                first = str(e).splitlines()[0]
                err = tail_text(vm.stderr_log, 3).strip().replace("\n", " | ")
                accel, reason = "tcg", "KVM probe failed: %s%s" % (first, (" (%s)" % err[:200]) if err else "")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _ACCEL_CACHE[key] = accel
    data = read_json(cache_file, {})
    data = data if isinstance(data, dict) else {}
    data[key] = {"accel": accel, "reason": reason, "probed_at": int(time.time())}
    write_json_atomic(cache_file, data)
    return accel, reason
