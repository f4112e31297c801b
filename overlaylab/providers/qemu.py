"""The qemu provider: one VM per kernel, reachable as a testinfra host over ssh.

``QemuProvider().up(kernel, disks=[("ext4", 512), ...])`` is a context manager. It resolves the
kernel (catalogue name, :class:`~overlaylab.kernels.KernelEntry` or
:class:`~overlaylab.kernels.KernelImage`), builds (or reuses) the initramfs, picks the
accelerator (a real KVM probe boot, else TCG), and boots with:

* the host root read-only over 9p (tag ``hostroot``), so the guest runs the host's sshd and
  Python, and sees the project;
* a second read-only 9p share (tag ``labcfg``) from a per-run directory holding ``lab.env``,
  ``sshd_config``, a per-run host key and the per-run client's public key — nothing secret or
  per-run goes on the kernel command line;
* one raw sparse image per disk profile (``-drive if=virtio,serial=<profile>``);
* user-mode networking with ``restrict=on`` and one forward ``127.0.0.1:<port> -> guest:22``.

It yields a :class:`QemuSession`: ``.host`` (testinfra), ``.disks`` (profile -> /dev/vdX, from
``/sys/block/vd*/serial`` in the guest, as guest init prints it), ``.kernel_release``, ``.accel``,
``.console_log``, ``.boot_seconds``, and ``restart()`` (boot the same guest again after it
panicked or hung). On exit the qemu process group is killed and the run directory (images,
keys, console log) removed, unless ``keep=True``.

In the guest: ``python3`` is the host's interpreter (its directory leads ``PATH``),
``PYTHONPATH`` points at the project, and ``MODPROBE_OPTIONS`` points modprobe at the guest
kernel's modules (the host root has none for it).
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ..agent.bytecode import precompile
from ..kernels.cache import KernelImage
from ..kernels.catalogue import KernelEntry
from ..kernels.fetch import fetch_kernel
from ..kernels.image import fast_boot_kernel
from ..lab.progress import keep_path, phase
from ..vm import qemu as qemu_mod
from ..vm.initramfs import InitramfsInfo, build_initramfs
from ..vm.qemu import READY_MARKER, QemuVM, VMBootError
from ..paths import PROJECT_ROOT as _ROOT
from .session import SessionMethods
from .transport import run_with_timeout

PROJECT_ROOT = str(_ROOT)
GUEST_RUN_DIR = "/run/overlaylab"
GUEST_MODROOT = GUEST_RUN_DIR + "/modroot"
# Boot failures that are TCG's, not the kernel's, each seen to boot on the next try with the
# same image: a corrupted initramfs read, and an int3 Oops while the kernel patches its own text
# on two vCPUs (Debian's 7.2 in early boot, "Oops: int3" in set_next_task_fair). Retried, with
# the console line kept as evidence in the target record's boot_retries.
TRANSIENT_BOOT_FAILURES = ("Initramfs unpacking failed", "Oops: int3")


def transient_boot_failure(console_tail: str) -> Optional[str]:
    """The transient failure a failed boot's console shows, or None."""
    return next((f for f in TRANSIENT_BOOT_FAILURES if f in console_tail), None)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- per-run files (pure text builders) --------------------------------------------------------

_CONSOLE_DISK = re.compile(r"^OVERLAYLAB-DISK (\S+) (vd[a-z]+)\r?$", re.M)


def console_disks(console: str) -> Dict[str, str]:
    """serial -> /dev/vdX from guest init's ``OVERLAYLAB-DISK`` console lines (the last boot's)."""
    return {serial: "/dev/" + dev for serial, dev in _CONSOLE_DISK.findall(console)}


def guest_environment(python: Optional[str] = None, project_root: str = PROJECT_ROOT) -> Dict[str, str]:
    """The environment ssh sessions in the guest get: the host's Python first on PATH."""
    python = python or sys.executable
    bindir = os.path.dirname(os.path.abspath(python))
    path = DEFAULT_PATH if bindir in DEFAULT_PATH.split(":") else bindir + ":" + DEFAULT_PATH
    return {
        "PATH": path,
        "PYTHONPATH": project_root,
        "PYTHONDONTWRITEBYTECODE": "1",  # the host root is read-only in the guest
        "MODPROBE_OPTIONS": "-d " + GUEST_MODROOT,
        "LC_ALL": "C.UTF-8",
    }


def sshd_config_text(env: Dict[str, str], use_pam: bool = False) -> str:
    """sshd_config for the guest: key-only root login, the per-run keys under /run/overlaylab."""
    setenv = " ".join('"%s=%s"' % (k, v) for k, v in env.items())
    return "\n".join([
        "# overlaylab guest sshd (the host's sshd, run in the guest's chroot)",
        "Port 22",
        "ListenAddress 0.0.0.0",
        "HostKey %s/ssh_host_ed25519_key" % GUEST_RUN_DIR,
        "PidFile %s/sshd.pid" % GUEST_RUN_DIR,
        "AuthorizedKeysFile %s/authorized_keys" % GUEST_RUN_DIR,
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM %s" % ("yes" if use_pam else "no"),
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "X11Forwarding no",
        "MaxStartups 64:30:128",
        "MaxSessions 64",
        "ClientAliveInterval 0",
        "Subsystem sftp internal-sftp",
        "SetEnv %s" % setenv,
        "",
    ])


def lab_env_text(values: Dict[str, str]) -> str:
    """``lab.env``, sourced by the guest init (busybox sh)."""
    return "".join("%s=%s\n" % (k, shlex.quote(str(v))) for k, v in values.items())


def ssh_client_config_text(port: int, identity: str, control_path: str) -> str:
    """The ssh_config testinfra uses: the per-run key, no host-key checks (keys live one run)."""
    return "\n".join([
        "Host *",
        "    HostName 127.0.0.1",
        "    Port %d" % port,
        "    User root",
        "    IdentityFile %s" % identity,
        "    IdentitiesOnly yes",
        "    StrictHostKeyChecking no",
        "    UserKnownHostsFile /dev/null",
        "    GlobalKnownHostsFile /dev/null",
        "    LogLevel ERROR",
        "    BatchMode yes",
        "    ControlPath %s" % control_path,
        "    ServerAliveInterval 5",
        "    ServerAliveCountMax 6",
        "",
    ])


#: sun_path holds 108 bytes; ssh appends a random suffix to the ControlPath while it binds
_CONTROL_PATH_MAX = 80


def control_path_for(workdir: str) -> str:
    """The ssh ControlPath in *workdir*: ``cm-%p`` (one VM per port), or ``none`` (no
    multiplexing, slower but working) when a long TMPDIR would overflow the socket path."""
    path = os.path.join(workdir, "cm-%p")
    return path if len(path) + 5 <= _CONTROL_PATH_MAX else "none"


#: directories of the host root that the guest covers with a tmpfs
GUEST_TMPFS_DIRS = ("/tmp", "/var/tmp", "/root", "/mnt")


def hidden_host_paths(paths: Sequence[str], covered: Sequence[str] = GUEST_TMPFS_DIRS) -> List[str]:
    """The ``paths`` (real, absolute) that a guest tmpfs would hide, so the init binds them back."""
    out: List[str] = []
    for p in paths:
        if not p:
            continue
        real = os.path.realpath(p)
        if any(real == c or real.startswith(c.rstrip("/") + "/") for c in covered) and real not in covered:
            if real not in out and ":" not in real:
                out.append(real)
    return out


def root_password_locked(shadow: str = "/etc/shadow") -> bool:
    """True if root's password field starts with ``!`` (sshd without PAM refuses such accounts)."""
    try:
        with open(shadow, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("root:"):
                    return line.split(":")[1].startswith("!")
    except OSError:
        pass
    return False


def _keygen(path: str, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


_DISK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,20}$")


def validate_disks(disks: Sequence[Tuple[str, int]]) -> List[Tuple[str, int]]:
    out = []
    seen = set()
    for name, size_mb in disks:
        if not _DISK_NAME.match(name):
            raise ValueError("disk name %r: use 1-20 of [A-Za-z0-9_.-] (it is the virtio serial)" % name)
        if name in seen:
            raise ValueError("disk name %r given twice" % name)
        if int(size_mb) <= 0:
            raise ValueError("disk %r: size must be > 0 MB" % name)
        seen.add(name)
        out.append((name, int(size_mb)))
    return out


# --- the provider ------------------------------------------------------------------------------

@dataclass
class QemuSession(SessionMethods):
    host: object
    disks: Dict[str, str]
    kernel_release: str
    accel: str
    console_log: str
    boot_seconds: float
    kernel: KernelImage
    initramfs: InitramfsInfo
    ssh_port: int
    ssh_config: str
    workdir: str
    argv: List[str]
    accel_reason: str = ""
    boot_retries: List[str] = field(default_factory=list)
    vm: Optional[QemuVM] = field(default=None, repr=False)
    agent_python: str = sys.executable
    # the agent runs with the host's interpreter (shared over 9p) and the project on PYTHONPATH
    agent_env: Dict[str, str] = field(default_factory=lambda: {"PYTHONPATH": PROJECT_ROOT})
    provider: str = "qemu"
    boot_timeout: float = 180.0
    #: seconds each :meth:`restart` took to boot the guest again
    restarts: List[float] = field(default_factory=list)
    _closed: bool = field(default=False, repr=False)

    def run(self, command: str, timeout: float = 300.0):
        """``run_with_timeout(self.host, command, timeout)``."""
        return run_with_timeout(self.host, command, timeout)

    def close(self) -> None:
        """Stop testinfra's ssh ControlMaster of this session (the VM is the provider's)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["ssh", "-F", self.ssh_config, "-O", "exit", "127.0.0.1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)

    restartable = True

    @property
    def kernel_image(self) -> KernelImage:
        return self.kernel

    def exited(self, timeout: float) -> bool:
        """Whether qemu exited (a panicked guest's does: ``-no-reboot``), waiting up to ``timeout``."""
        return self.vm is not None and self.vm.wait_exit(timeout)

    def restart(self) -> float:
        """Boot the guest again after it panicked or hung: qemu is killed and started with the
        same argv (kernel, disks, ssh port); the dead boot's console log is kept next to the
        new one as ``<log>.boot<N>``. Returns the seconds to ready; raises
        :class:`~overlaylab.vm.qemu.VMBootError` with the console tail if it does not come up."""
        old = self.vm
        if old is not None:
            old.kill()
        self.close()  # the ssh ControlMaster of the dead guest
        base, ext = os.path.splitext(self.console_log)
        with contextlib.suppress(OSError):
            shutil.copyfile(self.console_log, "%s.boot%d%s" % (base, len(self.restarts) + 1, ext))
        vm = QemuVM(self.argv, self.console_log, hard_timeout=old.hard_timeout if old else 4 * 3600.0,
                    ssh_port=self.ssh_port, stderr_log=old.stderr_log if old else None)
        self.vm = vm.start()  # the provider's up() kills whichever VM the session holds last
        with phase("reboot", "%s, to ssh" % self.accel) as state:
            seconds = vm.wait_ready(self.boot_timeout)
            state["detail"] = "%s, %.1f s" % (self.accel, seconds)
        self._closed = False
        self.restarts.append(round(seconds, 3))
        return seconds

    def poweroff(self, timeout: float = 10.0) -> bool:
        """Ask the guest init to sync and power off; True if qemu exited in time."""
        with contextlib.suppress(Exception):
            run_with_timeout(self.host, "touch %s/poweroff" % GUEST_RUN_DIR, 5, grace=5)
        return self.vm.wait_exit(timeout) if self.vm else True


class QemuProvider:
    """Boots kernels under qemu; see the module docstring.

    One vCPU by default: the lab runs a VM per core (``--jobs auto``), and under TCG a second
    vCPU per guest costs more than it gives: the secondary CPU's delay-loop calibration and
    the cross-CPU text patching at boot (the ``Oops: int3`` above), IPIs and TLB shootdowns
    emulated in software while the cells run. Two guests of 5.10 and 6.1 running the ext4 and
    xfs profiles side by side on this 2-core machine (``run -K debian-6.1 -K debian-5.10 -p
    '=ext4 or =xfs' --engine port``, loaded, A/B/B/A) took 87 and 58 s with one vCPU each, 130
    and 119 s with two, booting in 6-15 s against 12-14 s (benchmarks/bench_boot.py has the boot
    phases: ``--cpus 1`` vs ``--cpus 2``).
    """

    name = "qemu"

    def __init__(self, cache_dir: Optional[os.PathLike] = None, memory_mb: int = 2048, cpus: int = 1,
                 accel: Optional[str] = None, boot_timeout: float = 180.0, hard_timeout: float = 4 * 3600.0,
                 python: Optional[str] = None, project_root: str = PROJECT_ROOT,
                 workdir_base: Optional[str] = None, qemu: str = qemu_mod.QEMU,
                 ninep_cache: str = "loose", fast_boot: bool = True,
                 append: str = qemu_mod.DEFAULT_APPEND) -> None:
        self.cache_dir = cache_dir
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.accel = accel
        self.boot_timeout = boot_timeout
        self.hard_timeout = hard_timeout
        self.python = python or sys.executable
        self.project_root = project_root
        self.workdir_base = workdir_base
        self.qemu = qemu
        self.ninep_cache = ninep_cache
        self.fast_boot = fast_boot
        self.append = append  # the kernel command line

    def resolve_kernel(self, kernel: Union[str, KernelEntry, KernelImage]) -> KernelImage:
        if isinstance(kernel, KernelImage):
            return kernel
        return fetch_kernel(kernel, self.cache_dir)

    def choose_accel(self, boot_image: str) -> Tuple[str, str]:
        if self.accel in ("kvm", "tcg"):
            return self.accel, "chosen by the caller"
        return qemu_mod.detect_kvm(boot_image, self.cache_dir, qemu=self.qemu)

    def _prepare_run(self, kernel: KernelImage, disks: Sequence[Tuple[str, int]], workdir: str,
                     port: int) -> Tuple[str, str]:
        cfg = os.path.join(workdir, "cfg")
        os.makedirs(cfg, exist_ok=True)
        identity = os.path.join(workdir, "id_ed25519")
        if not os.path.exists(identity):
            _keygen(identity, "overlaylab-client")
            _keygen(os.path.join(cfg, "ssh_host_ed25519_key"), "overlaylab-guest")
            shutil.copyfile(identity + ".pub", os.path.join(cfg, "authorized_keys"))
        sshd = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin")
        if sshd is None:
            raise VMBootError("the host has no sshd for the guest to run (apt-get install openssh-server)")
        env = guest_environment(self.python, self.project_root)
        with open(os.path.join(cfg, "sshd_config"), "w") as f:
            f.write(sshd_config_text(env, use_pam=root_password_locked()))
        with open(os.path.join(cfg, "lab.env"), "w") as f:
            f.write(lab_env_text({
                "LAB_RELEASE": kernel.release,
                "LAB_MODULES_DIR": os.path.realpath(kernel.modules_dir) if kernel.modules_dir else "",
                "LAB_SSHD": sshd,
                "LAB_CONFIG": os.path.realpath(kernel.config) if kernel.config else "",
                "LAB_READY_MARKER": READY_MARKER,
                "LAB_HOSTNAME": "overlaylab-" + re.sub(r"[^a-z0-9-]", "-", kernel.release.lower())[:40],
                "LAB_9P_CACHE": self.ninep_cache,
                "LAB_KEEP_PATHS": ":".join(hidden_host_paths([
                    sys.base_prefix, sys.prefix, os.path.dirname(os.path.dirname(self.python)),
                    os.path.dirname(os.path.dirname(os.path.realpath(self.python))),
                    self.project_root])),
            }))
        ssh_config = os.path.join(workdir, "ssh_config")
        with open(ssh_config, "w") as f:
            f.write(ssh_client_config_text(port, identity, control_path_for(workdir)))
        os.makedirs(os.path.join(workdir, "disks"), exist_ok=True)
        for name, size_mb in disks:
            qemu_mod.make_sparse_image(os.path.join(workdir, "disks", name + ".img"), size_mb)
        return cfg, ssh_config

    @contextlib.contextmanager
    def up(self, kernel_entry: Union[str, KernelEntry, KernelImage],
           disks: Sequence[Tuple[str, int]] = (), keep: bool = False) -> Iterator[QemuSession]:
        """Boot ``kernel_entry`` with one virtio disk per ``(name, size_mb)``; yield a session.

        Raises :class:`~overlaylab.kernels.KernelUnavailable` if the kernel cannot be had and
        :class:`~overlaylab.vm.qemu.VMBootError` (with the console tail) if it does not boot.
        """
        import testinfra

        disks = validate_disks(disks)
        with phase("fetch", "kernel %s" % getattr(kernel_entry, "name", kernel_entry)) as state:
            kernel = self.resolve_kernel(kernel_entry)
            state["detail"] = kernel.release
        if not kernel.modules_dir:
            sys.stderr.write("overlaylab: %s has no modules directory; relying on built-ins\n" % kernel.name)
        with phase("initramfs", kernel.release) as state:
            initramfs = build_initramfs(kernel, cache_dir=self.cache_dir)
            state["detail"] = "%s, %.1f MB" % ("cached" if initramfs.cached else "built", initramfs.size / 1e6)
        with phase("bytecode", "the agent's, for the guest"):
            # the guest reads the tree read-only: compiled here, it compiles nothing at boot
            for root in self.project_root.split(os.pathsep):  # PYTHONPATH in the guest
                precompile(os.path.join(root, "overlaylab"))
        with phase("accel") as state:
            boot_image = fast_boot_kernel(kernel.vmlinuz, self.cache_dir) if self.fast_boot \
                else kernel.vmlinuz
            accel, accel_reason = self.choose_accel(boot_image)
            state["detail"] = accel
        workdir = tempfile.mkdtemp(prefix="overlaylab-qemu-", dir=self.workdir_base)
        from ..agent import cleanup as cleanup_mod  # the marker lets `overlaylab cleanup` find it all
        lease = cleanup_mod.mark(workdir, "qemu", kernel=kernel.name)
        # kept in the run directory when there is one (lab/progress.py), else in the workdir
        console_log = keep_path("console-%s.log") or os.path.join(workdir, "console.log")
        vm: Optional[QemuVM] = None
        retries: List[str] = []
        try:
            for attempt in range(3):
                port = qemu_mod.free_port()
                cfg, ssh_config = self._prepare_run(kernel, disks, workdir, port)
                images = [(name, os.path.join(workdir, "disks", name + ".img")) for name, _ in disks]
                argv = qemu_mod.qemu_argv(
                    vmlinuz=boot_image, initrd=initramfs.path, console_log=console_log,
                    accel=accel, memory_mb=self.memory_mb, cpus=self.cpus, append=self.append,
                    shares=[("/", "hostroot"), (cfg, "labcfg")], disks=images, ssh_port=port,
                    qemu=self.qemu, extra=["-pidfile", os.path.join(workdir, "qemu.pid")])
                argv[argv.index("-name") + 1] = cleanup_mod.qemu_name(lease)
                with open(os.path.join(workdir, "qemu.argv"), "w") as f:
                    f.write(" ".join(shlex.quote(a) for a in argv) + "\n")
                vm = QemuVM(argv, console_log, hard_timeout=self.hard_timeout, ssh_port=port,
                            stderr_log=os.path.join(workdir, "qemu-stderr.log"))
                with vm:
                    try:
                        with phase("boot", "%s, to ssh" % accel) as state:
                            boot_seconds = vm.wait_ready(self.boot_timeout)
                            state["detail"] = "%s, console %s" % (accel, console_log)
                    except VMBootError as e:
                        if "host forwarding" in e.console_tail and attempt < 2:
                            continue  # the port was taken in between: another one
                        transient = transient_boot_failure(e.console_tail)
                        if transient and attempt < 2:
                            retries.append("attempt %d: %s" % (attempt + 1, transient))
                            continue
                        raise
                    host = testinfra.get_host("ssh://root@127.0.0.1:%d" % port, ssh_config=ssh_config)
                    session = QemuSession(
                        host=host, disks={}, kernel_release=kernel.release, accel=accel,
                        console_log=console_log, boot_seconds=boot_seconds, kernel=kernel,
                        initramfs=initramfs, ssh_port=port, ssh_config=ssh_config, workdir=workdir,
                        argv=argv, accel_reason=accel_reason, vm=vm, agent_python=self.python,
                        agent_env={"PYTHONPATH": self.project_root}, boot_retries=list(retries),
                        boot_timeout=self.boot_timeout)
                    with phase("disks", ", ".join(n for n, _ in disks) or "none"):
                        session.disks = self._map_disks(session, [n for n, _ in disks])
                    try:
                        yield session
                    finally:
                        if keep:
                            session.poweroff()
                        session.close()
                        if session.vm is not vm and session.vm is not None:
                            session.vm.kill()  # a restart's VM
                return
        except VMBootError as e:
            # the run directory goes away: keep the whole console log as evidence
            if not keep and e.console_log and os.path.isfile(e.console_log) \
                    and e.console_log.startswith(workdir + os.sep):
                from ..kernels.cache import cache_root

                d = cache_root(self.cache_dir) / "console"
                d.mkdir(parents=True, exist_ok=True)
                kept = d / ("%s-%s.log" % (kernel.release, time.strftime("%Y%m%d-%H%M%S")))
                with contextlib.suppress(OSError):
                    shutil.copyfile(e.console_log, kept)
                    e.console_log = str(kept)
            raise
        finally:
            if vm is not None:
                vm.kill()
            if not keep:
                shutil.rmtree(workdir, ignore_errors=True)
            cleanup_mod.release(lease)

    def _map_disks(self, session: QemuSession, names: List[str]) -> Dict[str, str]:
        """profile -> /dev/vdX, from the serials the guest sees: the ``OVERLAYLAB-DISK <serial>
        <vdX>`` lines guest init printed on the console before its ready marker, or (a line the
        kernel's own output broke) from the guest's /sys over ssh."""
        if not names:
            return {}
        found = console_disks(session.vm.console() if session.vm else "")
        if all(n in found for n in names):
            return {n: found[n] for n in names}
        # one process (``grep -H``: "/sys/block/vda/serial:ext4"), not two per disk: each
        # fork costs milliseconds under TCG and this is on the way to the first result
        r = run_with_timeout(session.host, "grep -H . /sys/block/vd*/serial", 30)
        found = {}
        for line in r.stdout.splitlines():
            path, _, serial = line.partition(":")
            parts = path.split("/")
            if serial.strip() and len(parts) == 5:
                found[serial.strip()] = "/dev/" + parts[3]
        missing = [n for n in names if n not in found]
        if missing:
            raise VMBootError("guest does not see disk(s) %s (saw %s)" % (", ".join(missing), r.stdout.strip()),
                              qemu_mod.tail_text(session.console_log), session.console_log)
        return {n: found[n] for n in names}
