"""Host set-up for the Vagrant provider on machines without systemd (containers, CI runners).

``overlaylab host-setup`` makes the host able to run ``vagrant up`` with vagrant-libvirt:

1. installs the Debian packages that are missing (``--no-install-recommends``);
2. the ``/dev/kvm`` fix: without udev the node is ``crw------- root root``; libvirt then finds
   "KVM was enabled when probing, but it is not available now" on every API call, throws its
   capabilities cache away, and re-probes QEMU about 26 times per ``vagrant up`` (105 s instead
   of 30 s; ../shared/notes/vagrant.md, pitfall 1). ``chgrp kvm && chmod 0660``, what Debian's udev
   rule would do. Guests still run on TCG (the Vagrantfile's ``libvirt.driver = "qemu"``);
3. starts ``virtlogd`` and ``libvirtd`` if they are not running (``systemctl`` where systemd is
   PID 1, the daemons' own ``-d`` otherwise), and waits for libvirt to answer.

Every step looks first and acts only if needed, so it is idempotent and safe on machines where
all of this already runs. The decision is a pure function (:func:`plan`) over a
:class:`HostState` snapshot; :func:`inspect` takes the snapshot and :func:`apply` performs it.
It never creates a libvirt network (the lab's Vagrantfile needs none).
"""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

#: what the Vagrant provider needs on a Debian host (CI installs the same list)
HOST_PACKAGES: Tuple[str, ...] = (
    "vagrant", "vagrant-libvirt", "libvirt-daemon-system", "libvirt-daemon-driver-qemu",
    "libvirt-clients", "qemu-system-x86", "qemu-utils", "debootstrap", "openssh-client", "fdisk",
)
DAEMONS: Tuple[Tuple[str, str], ...] = (("virtlogd", "/usr/sbin/virtlogd"), ("libvirtd", "/usr/sbin/libvirtd"))
LIBVIRT_URI = "qemu:///system"


@dataclass
class HostState:
    missing_packages: List[str] = field(default_factory=list)
    kvm_exists: bool = False
    kvm_gid: Optional[int] = None
    kvm_mode: int = 0
    kvm_group_gid: Optional[int] = None  # gid of group "kvm", None if there is none
    qemu_user_in_kvm: bool = True
    running: Dict[str, bool] = field(default_factory=dict)
    systemd: bool = False
    is_root: bool = True


@dataclass(frozen=True)
class Action:
    what: str  # "install" | "kvm-perms" | "kvm-group" | "start"
    argv: Tuple[Tuple[str, ...], ...]
    why: str


def plan(state: HostState, packages: Sequence[str] = HOST_PACKAGES) -> List[Action]:
    """The actions that bring the host from ``state`` to ready (empty when it is ready)."""
    actions: List[Action] = []
    if state.missing_packages:
        env = ("env", "DEBIAN_FRONTEND=noninteractive")
        actions.append(Action("install", (
            env + ("apt-get", "update", "-qq"),
            env + ("apt-get", "install", "-y", "-qq", "--no-install-recommends") + tuple(state.missing_packages)),
            "missing packages: %s" % " ".join(state.missing_packages)))
    if state.kvm_exists and state.kvm_group_gid is not None:
        if state.kvm_gid != state.kvm_group_gid or (state.kvm_mode & 0o060) != 0o060:
            actions.append(Action("kvm-perms", (("chgrp", "kvm", "/dev/kvm"), ("chmod", "0660", "/dev/kvm")),
                                  "/dev/kvm is not group kvm rw (no udev): libvirt re-probes QEMU on every call"))
        if not state.qemu_user_in_kvm:
            actions.append(Action("kvm-group", (("usermod", "-aG", "kvm", "libvirt-qemu"),),
                                  "libvirt-qemu is not in group kvm"))
    for name, path in DAEMONS:
        if not state.running.get(name, False):
            argv = ("systemctl", "start", name) if state.systemd else (path, "-d")
            actions.append(Action("start", (argv,), "%s is not running" % name))
    return actions


def missing_packages(packages: Sequence[str] = HOST_PACKAGES) -> List[str]:
    """Packages dpkg does not have installed."""
    out: List[str] = []
    for pkg in packages:
        try:
            res = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", pkg], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, timeout=30)
            if res.returncode != 0 or res.stdout.strip() != "installed":
                out.append(pkg)
        except (OSError, subprocess.SubprocessError):
            out.append(pkg)
    return out


def running_daemons(names: Sequence[str], proc: str = "/proc") -> Dict[str, bool]:
    """Whether a process with each exact command name (``/proc/PID/comm``) is running."""
    seen = set()
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        try:
            with open(os.path.join(proc, pid, "comm")) as f:
                seen.add(f.read().strip())
        except OSError:
            continue
    return {n: n in seen for n in names}


def systemd_is_init(proc: str = "/proc") -> bool:
    try:
        with open(os.path.join(proc, "1", "comm")) as f:
            return f.read().strip() == "systemd"
    except OSError:
        return False


def inspect(packages: Sequence[str] = HOST_PACKAGES) -> HostState:
    st = HostState(missing_packages=missing_packages(packages), is_root=os.geteuid() == 0,
                   running=running_daemons([n for n, _ in DAEMONS]), systemd=systemd_is_init())
    try:
        s = os.stat("/dev/kvm")
        st.kvm_exists = stat.S_ISCHR(s.st_mode)
        st.kvm_gid, st.kvm_mode = s.st_gid, stat.S_IMODE(s.st_mode)
    except OSError:
        st.kvm_exists = False
    try:
        g = grp.getgrnam("kvm")
        st.kvm_group_gid = g.gr_gid
        try:
            q = pwd.getpwnam("libvirt-qemu")
            st.qemu_user_in_kvm = "libvirt-qemu" in g.gr_mem or q.pw_gid == g.gr_gid
        except KeyError:
            st.qemu_user_in_kvm = True  # no such user (yet): nothing to fix
    except KeyError:
        st.kvm_group_gid = None
    return st


def wait_for_libvirt(timeout: float = 30.0) -> Tuple[bool, str]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            res = subprocess.run(["virsh", "-c", LIBVIRT_URI, "version"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, timeout=20)
            last = res.stdout.strip()
            if res.returncode == 0:
                return True, last
        except (OSError, subprocess.SubprocessError) as err:
            last = str(err)
        time.sleep(0.5)
    return False, last


def apply(actions: Sequence[Action], echo: Callable[[str], None] = print, timeout: float = 900.0) -> None:
    for action in actions:
        echo("- %s (%s)" % (action.what, action.why))
        for argv in action.argv:
            echo("  $ %s" % " ".join(argv))
            res = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, timeout=timeout)
            if res.returncode != 0:
                raise RuntimeError("`%s` failed (%d):\n%s" % (" ".join(argv), res.returncode, res.stdout[-4000:]))
        if action.what == "start":
            time.sleep(0.5)


def host_setup(dry_run: bool = False, echo: Callable[[str], None] = print) -> List[Action]:
    """Inspect, plan, apply; then check that libvirt answers. Returns the actions taken."""
    state = inspect()
    actions = plan(state)
    if not actions:
        echo("host is ready for the Vagrant provider (nothing to do)")
    if dry_run:
        for a in actions:
            echo("would %s: %s" % (a.what, a.why))
            for argv in a.argv:
                echo("  $ %s" % " ".join(argv))
        return actions
    if actions and not state.is_root:
        raise PermissionError("host-setup needs root for: %s" % ", ".join(a.what for a in actions))
    apply(actions, echo)
    if any(a.what == "install" for a in actions):
        # packages may have brought a new kvm group or daemons' files: look again
        more = [a for a in plan(inspect()) if a.what != "install"]
        apply(more, echo)
        actions = list(actions) + more
    if shutil.which("virsh"):
        ok, text = wait_for_libvirt()
        if not ok:
            raise RuntimeError("libvirt does not answer on %s: %s" % (LIBVIRT_URI, text))
        echo(text.splitlines()[-1] if text else "libvirt answers")
    return actions
