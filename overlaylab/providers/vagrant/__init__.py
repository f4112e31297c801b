"""The Vagrant provider: one box per target, brought up by python-vagrant, reached by testinfra.

``VagrantProvider().up("bookworm", disks=[("ext4", 64), ...])`` is a context manager:

1. the box (``vms/boxes.toml``; built and added first if it is a local debootstrap box Vagrant
   does not have yet) gets a per-run settings file for the repository's ``Vagrantfile``: one
   extra sparse qcow2 disk per profile (virtio serial = profile name), a free ssh port on
   127.0.0.1 (user-mode NIC, ``restrict=on``), a per-run libvirt domain prefix, TCG unless KVM
   is known to work, the serial console to a file;
2. ``vagrant up`` (python-vagrant, with ``VAGRANT_DOTFILE_PATH`` in the run directory so runs do
   not share machine state), then ``vagrant ssh-config`` -> testinfra ``ssh://`` host;
3. the package is shipped into the guest as a zipapp built from this working tree (plus a
   ``tomli`` shim for Python < 3.11) and run as ``sudo python3 -m overlaylab.agent``;
4. on exit — also after an error or Ctrl-C — ``vagrant destroy -f``, then a check that no libvirt
   domain or volume with the run's prefix and no listener on the port is left (whatever is, is
   removed with virsh), unless ``keep=True``.

Every python-vagrant call runs with a time limit (:class:`TimedVagrant`), every testinfra call
through :func:`~overlaylab.providers.transport.run_with_timeout`. A box that does not come up raises
:class:`VagrantUpError` whose ``.output`` is Vagrant's output (the runner makes ERROR cells).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import testinfra
import vagrant

from . import boxes as boxes_mod
from .boxes import BoxSpec, Catalogue
from ...agent.procutil import communicate_in_group, popen_group
from ...lab.progress import keep_path, phase
from ...paths import PACKAGE_DIR, PROJECT_ROOT
from ..session import SessionMethods
from ..session import agent_command as session_agent_command
from ..transport import run_with_timeout
from ...vm.qemu import free_port

LIBVIRT_URI = "qemu:///system"
GUEST_AGENT_PATH = "/var/tmp/overlaylab.pyz"
MIN_GUEST_PYTHON = (3, 9)


class VagrantError(RuntimeError):
    """A python-vagrant call failed or timed out; ``.output`` is Vagrant's output (tail)."""

    def __init__(self, message: str, output: str = "", evidence: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.output = output
        self.evidence = evidence or {}


class VagrantTimeout(VagrantError):
    pass


class VagrantUpError(VagrantError):
    """The box did not come up (``vagrant up``, ssh, or the guest's Python)."""


# --- python-vagrant with time limits ---------------------------------------------------------

class TimedVagrant(vagrant.Vagrant):
    """python-vagrant whose every command has a time limit.

    python-vagrant runs ``subprocess.check_call``/``check_output`` without one; these two
    overrides run the same command in its own process group, kill the group when the limit
    passes (``TERM``, then ``KILL``) and raise :class:`VagrantTimeout`. Output goes to ``log_path``
    as well, so a failure carries Vagrant's own words.
    """

    def __init__(self, root: str, env: Dict[str, str], log_path: str, timeout: float = 600.0):
        super().__init__(root=root, env=env, out_cm=vagrant.make_file_cm(log_path),
                         err_cm=vagrant.make_file_cm(log_path))
        self.log_path = log_path
        self.timeout = timeout

    @contextlib.contextmanager
    def limit(self, seconds: float) -> Iterator["TimedVagrant"]:
        old, self.timeout = self.timeout, seconds
        try:
            yield self
        finally:
            self.timeout = old

    def _run(self, args: Sequence[Optional[str]], capture: bool) -> str:
        command = self._make_vagrant_command(args)
        with open(self.log_path, "a") as log:
            log.write("\n$ %s\n" % " ".join(command))
            log.flush()
            p = popen_group(command, cwd=self.root, env=self.env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE if capture else log, stderr=log)
            try:  # past the limit, or on Ctrl-C, vagrant stops before the caller cleans up
                out, _ = communicate_in_group(p, self.timeout, VAGRANT_STOP)
            except subprocess.TimeoutExpired:
                raise VagrantTimeout("`vagrant %s` ran past %.0f s" % (" ".join(a for a in args if a), self.timeout),
                                     self.log_tail()) from None
        if p.returncode != 0:
            raise VagrantError("`vagrant %s` exited with status %d" % (" ".join(a for a in args if a), p.returncode),
                               self.log_tail())
        return (out or b"").decode("utf-8", "replace")

    def _call_vagrant_command(self, args):  # noqa: D401 - python-vagrant's hook
        self._run(args, capture=False)

    def _run_vagrant_command(self, args):
        return self._run(args, capture=True)

    def _stream_vagrant_command(self, args):  # pragma: no cover - not used here
        yield self._run(args, capture=True)

    def log_tail(self, lines: int = 60) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "\n".join(f.read().splitlines()[-lines:])
        except OSError:
            return ""


#: how a vagrant command past its limit (or interrupted) is stopped: its group TERMed, KILLed
#: 10 s later, and 10 s more to go
VAGRANT_STOP = ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0))


# --- pure helpers ----------------------------------------------------------------------------

def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def machine_name(kernel: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", kernel.split("/")[-1]) or "box"


def spec_for(catalogue: Catalogue, kernel: str) -> BoxSpec:
    """The catalogue box ``kernel`` — or, for a box from elsewhere, a spec with the defaults."""
    try:
        return catalogue.get(kernel)
    except KeyError:
        if "/" not in kernel:
            raise
        return BoxSpec(name=machine_name(kernel), vagrant_box=kernel, build="none")


def parse_disk_serials(text: str) -> Dict[str, str]:
    """``/dev/vdX`` by virtio serial, from lines ``/sys/block/vdX <serial>``."""
    out: Dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0].startswith("/sys/block/"):
            out[parts[1].strip()] = "/dev/" + parts[0].rsplit("/", 1)[1]
    return out


def agent_zip_members(package_dir: Path = PACKAGE_DIR) -> List[Tuple[str, Path]]:
    """(archive name, file) for what a target needs of the package (the agent and the port:
    :data:`overlaylab.agent.GUEST_PACKAGES` and ``GUEST_MODULES``), from the working tree."""
    from ...agent import GUEST_MODULES, GUEST_PACKAGES
    out = []
    for module in GUEST_MODULES:
        path = package_dir / (module + ".py")
        if path.is_file():
            out.append(("overlaylab/" + path.name, path))
    for package in GUEST_PACKAGES:
        for path in sorted((package_dir / package).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
                continue
            out.append(("overlaylab/" + path.relative_to(package_dir).as_posix(), path))
    return out


TOMLI_SHIM = '''"""tomli for Pythons without tomllib: the real one if the guest has it, else python3-toml."""
import importlib.machinery as _m, importlib.util as _u, sys as _s
_here = __file__.rsplit("/tomli.py", 1)[0]
_spec = _m.PathFinder.find_spec("tomli", [p for p in _s.path if p and not _here.startswith(p)])
if _spec is not None and _spec.origin and "overlaylab" not in _spec.origin:
    _real = _u.module_from_spec(_spec); _spec.loader.exec_module(_real)
    loads, load = _real.loads, _real.load
    TOMLDecodeError = _real.TOMLDecodeError
else:
    import toml as _toml
    TOMLDecodeError = _toml.TomlDecodeError
    def loads(s, parse_float=float):
        return _toml.loads(s)
    def load(fp, parse_float=float):
        data = fp.read()
        return loads(data.decode("utf-8") if isinstance(data, bytes) else data)
'''

AGENT_MAIN = "import runpy\nrunpy.run_module('overlaylab.agent', run_name='__main__', alter_sys=True)\n"


def build_agent_zipapp(dest: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """Write the package as a zipapp (``python3 overlaylab.pyz ARGS`` runs the agent; with the
    file on ``PYTHONPATH``, ``python3 -m overlaylab.agent`` does too). Returns its sha256."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("__main__.py", AGENT_MAIN)
        z.writestr("tomli.py", TOMLI_SHIM)
        for arcname, path in agent_zip_members(package_dir):
            z.write(str(path), arcname)
    data = buf.getvalue()
    dest.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def agent_command(args: Sequence[str], agent_path: str = GUEST_AGENT_PATH, python: str = "python3") -> str:
    """How the guest runs the agent: as root (sudo), the shipped zipapp on PYTHONPATH."""
    env = {"PYTHONPATH": agent_path, "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8",
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    return session_agent_command(args, python, env, sudo=True)


# --- libvirt leftovers -------------------------------------------------------------------------

def _virsh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", LIBVIRT_URI] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def libvirt_leftovers(prefix: str, port: Optional[int] = None) -> Dict[str, List[str]]:
    """Domains and volumes whose names start with ``prefix``, and the port if still listening."""
    left: Dict[str, List[str]] = {"domains": [], "volumes": [], "ports": []}
    res = _virsh("list", "--all", "--name")
    left["domains"] = [d.strip() for d in res.stdout.splitlines() if d.strip().startswith(prefix)]
    pools = [p.strip() for p in _virsh("pool-list", "--all", "--name").stdout.splitlines() if p.strip()]
    for pool in pools:
        for line in _virsh("vol-list", "--pool", pool).stdout.splitlines()[2:]:
            name = line.split()[0] if line.split() else ""
            if name.startswith(prefix):
                left["volumes"].append("%s/%s" % (pool, name))
    if port and port_in_use(port):
        left["ports"].append("127.0.0.1:%d" % port)
    return left


def remove_leftovers(left: Dict[str, List[str]]) -> None:
    for dom in left.get("domains", []):
        _virsh("destroy", dom)
        _virsh("undefine", dom, "--remove-all-storage", "--nvram")
    for vol in left.get("volumes", []):
        pool, _, name = vol.partition("/")
        _virsh("vol-delete", "--pool", pool, name)


# --- the session and the provider --------------------------------------------------------------

@dataclass
class VagrantSession(SessionMethods):
    host: Any
    machine: str
    vagrant: TimedVagrant
    run_dir: str
    ssh_config: str
    ssh_port: int
    domain_prefix: str
    kernel_release: str = ""
    disks: Dict[str, str] = field(default_factory=dict)
    accel: str = "tcg"
    boot_seconds: float = 0.0
    console_log: Optional[str] = None
    python: str = "python3"
    python_version: str = ""
    agent_path: str = GUEST_AGENT_PATH
    timings: Dict[str, float] = field(default_factory=dict)
    cleanup: Dict[str, Any] = field(default_factory=dict)
    boot_retries: List[str] = field(default_factory=list)
    provider: str = "vagrant"

    @property
    def domain(self) -> str:
        return self.domain_prefix + self.machine

    def run(self, command: str, timeout: float = 300.0):
        return run_with_timeout(self.host, command, timeout)

    def agent_command(self, args: Sequence[str]) -> str:
        return agent_command(args, self.agent_path, self.python)

    def ssh_argv(self, command: Optional[str] = None) -> List[str]:
        argv = ["ssh", "-F", self.ssh_config, self.machine]
        return argv + ([command] if command else [])


class VagrantProvider:
    name = "vagrant"

    def __init__(self, catalogue: Optional[Catalogue] = None, root: os.PathLike = PROJECT_ROOT,
                 up_timeout: float = 900.0, call_timeout: float = 120.0, build_missing: bool = True,
                 accel: Optional[str] = None, log=None):
        self.catalogue = catalogue
        self.root = str(root)
        self.up_timeout = up_timeout
        self.call_timeout = call_timeout
        self.build_missing = build_missing
        self.accel = accel
        self.log = log or (lambda msg: sys.stderr.write("vagrant: %s\n" % msg))
        #: one entry per machine brought up: box, domain prefix, port, timings, clean-up check
        self.history: List[Dict[str, Any]] = []

    def _catalogue(self) -> Catalogue:
        if self.catalogue is None:
            self.catalogue = boxes_mod.load_catalogue()
        return self.catalogue

    def _ensure_box(self, spec: BoxSpec) -> None:
        have = {row[0] for row in boxes_mod.vagrant_box_list(self.call_timeout)}
        if spec.vagrant_box in have:
            return
        if spec.build != "debootstrap" or not self.build_missing:
            raise VagrantUpError("Vagrant has no box %s; add it (`vagrant box add`) or build it "
                                 "(`overlaylab boxes build %s`)" % (spec.vagrant_box, spec.name))
        self.log("box %s missing: building it (overlaylab boxes build %s)" % (spec.vagrant_box, spec.name))
        try:
            boxes_mod.build_box(spec.name, self._catalogue())
        except boxes_mod.BoxError as err:
            raise VagrantUpError("building box %s failed: %s" % (spec.name, err), err.output) from None

    @contextlib.contextmanager
    def up(self, kernel: str, disks: Sequence[Tuple[str, int]] = (), keep: bool = False) -> Iterator[VagrantSession]:
        spec = spec_for(self._catalogue(), kernel)
        self._ensure_box(spec)
        accel = self.accel or boxes_mod.choose_accel()[0]
        run_dir = tempfile.mkdtemp(prefix="overlaylab-vagrant-%s-" % spec.name)
        os.chmod(run_dir, 0o755)  # libvirt writes the console log here
        token = secrets.token_hex(4)
        prefix = "overlaylab-%s-" % token
        from ...agent import cleanup as cleanup_mod  # the lease names the prefix of this run's domains
        lease = cleanup_mod.mark(run_dir, "vagrant", domain_prefix=prefix, box=spec.name)
        port = free_port()
        console_log = os.path.join(run_dir, "console.log")
        settings = boxes_mod.vagrant_settings([boxes_mod.machine_settings(
            spec, port, disks, accel=accel, domain_prefix=prefix, console_log=console_log)])
        settings_path = os.path.join(run_dir, "vagrant-settings.json")
        with open(settings_path, "w") as f:
            json.dump(settings, f, indent=1)
        env = dict(os.environ)
        env.update({boxes_mod.ENV_VAGRANT_CONFIG: settings_path,
                    "VAGRANT_DOTFILE_PATH": os.path.join(run_dir, "dot-vagrant"),
                    "VAGRANT_DEFAULT_PROVIDER": "libvirt", "VAGRANT_NO_COLOR": "1",
                    "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_LOG": env.get("VAGRANT_LOG", "")})
        v = TimedVagrant(self.root, env, os.path.join(run_dir, "vagrant.log"), self.call_timeout)
        machine = spec.name
        session: Optional[VagrantSession] = None
        ok = False
        record: Dict[str, Any] = {"box": spec.name, "vagrant_box": spec.vagrant_box, "domain_prefix": prefix,
                                  "ssh_port": port, "run_dir": run_dir, "accel": accel, "timings": {}}
        self.history.append(record)
        try:
            t0 = time.monotonic()
            try:
                with v.limit(self.up_timeout), phase("vagrant up", spec.name):
                    v.up(vm_name=machine, provider="libvirt")
            except VagrantError as err:
                raise VagrantUpError("box %s did not come up: %s" % (spec.name, err), err.output,
                                     {"vagrant_output": err.output.splitlines(),
                                      "console_tail": _tail_file(console_log)}) from None
            up_seconds = time.monotonic() - t0
            ssh_config = os.path.join(run_dir, "ssh_config")
            with v.limit(self.call_timeout):
                text = v.ssh_config(vm_name=machine)
            with open(ssh_config, "w") as f:
                f.write(text)
            host = testinfra.get_host("ssh://%s" % machine, ssh_config=ssh_config)
            session = VagrantSession(host=host, machine=machine, vagrant=v, run_dir=run_dir,
                                     ssh_config=ssh_config, ssh_port=port, domain_prefix=prefix,
                                     accel=accel, boot_seconds=up_seconds, console_log=console_log)
            session.timings["vagrant_up"] = round(up_seconds, 1)
            with phase("guest set-up"):
                self._prepare_guest(session, spec)
            session.timings["ready"] = round(time.monotonic() - t0, 1)
            record["timings"] = session.timings
            ok = True
            yield session
        finally:
            kept = keep_path("console-%s.log")  # the run directory keeps every VM's console
            if kept and os.path.isfile(console_log):
                with contextlib.suppress(OSError):
                    shutil.copyfile(console_log, kept)
            if keep:
                self._keep_note(spec, machine, run_dir, env, port)
            else:
                cleanup = self._destroy(v, machine, prefix, port)
                record["cleanup"] = cleanup
                if session is not None:
                    session.cleanup = cleanup
                if cleanup.get("left_after_destroy") and any(cleanup["left_after_destroy"].values()):
                    self.log("vagrant destroy left %s; removed with virsh" % cleanup["left_after_destroy"])
                if ok or not cleanup.get("still_left"):
                    shutil.rmtree(run_dir, ignore_errors=True)
                if not cleanup.get("still_left"):
                    cleanup_mod.release(lease)
            if keep:
                cleanup_mod.release(lease)  # kept on purpose: not a leftover

    # internals -------------------------------------------------------------------------------
    def _prepare_guest(self, session: VagrantSession, spec: BoxSpec) -> None:
        """Check the guest (Python >= 3.9, sudo), ship the agent, find the profile disks."""
        res = session.run("uname -r; command -v python3 && python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'; "
                          "sudo -n true && echo sudo-ok", 60)
        lines = res.stdout.split()
        if res.rc != 0 or "sudo-ok" not in lines or len(lines) < 3:
            raise VagrantUpError("box %s lacks python3 or password-less sudo" % spec.name,
                                 res.stdout + res.stderr)
        session.kernel_release = lines[0]
        session.python_version = lines[2]
        major, minor = (int(x) for x in lines[2].split(".")[:2])
        if (major, minor) < MIN_GUEST_PYTHON:
            raise VagrantUpError("box %s has Python %s; the agent needs >= %d.%d" % ((spec.name, lines[2]) + MIN_GUEST_PYTHON))
        pyz = Path(session.run_dir) / "overlaylab.pyz"
        build_agent_zipapp(pyz)
        with open(pyz, "rb") as f:
            p = subprocess.run(session.ssh_argv("cat > %s.part && mv %s.part %s" % ((session.agent_path,) * 3)),
                               stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        if p.returncode != 0:
            raise VagrantUpError("could not copy the agent into box %s" % spec.name,
                                 p.stderr.decode("utf-8", "replace"))
        res = session.run("for d in /sys/block/vd*; do [ -e $d/serial ] && echo $d $(cat $d/serial); done; true", 30)
        by_serial = parse_disk_serials(res.stdout)
        settings = json.load(open(os.path.join(session.run_dir, "vagrant-settings.json")))
        for disk in settings["machines"][0]["disks"]:
            dev = by_serial.get(disk["serial"])
            if not dev:
                raise VagrantUpError("box %s: no disk with serial %s for profile %s (saw %s)"
                                     % (spec.name, disk["serial"], disk["profile"], by_serial))
            session.disks[disk["profile"]] = dev

    def _destroy(self, v: TimedVagrant, machine: str, prefix: str, port: int) -> Dict[str, Any]:
        result: Dict[str, Any] = {}
        t0 = time.monotonic()
        try:
            with v.limit(self.call_timeout):
                v.destroy(vm_name=machine)
        except BaseException as err:  # also Ctrl-C during the destroy: virsh below still runs
            result["destroy_error"] = "%s: %s" % (type(err).__name__, err)
        result["destroy_seconds"] = round(time.monotonic() - t0, 1)
        try:
            left = libvirt_leftovers(prefix, port)
            result["left_after_destroy"] = left
            if any(left.values()):
                remove_leftovers(left)
                for _ in range(10):
                    left = libvirt_leftovers(prefix, port)
                    if not any(left.values()):
                        break
                    time.sleep(1)
            result["still_left"] = {k: v for k, v in left.items() if v}
        except (OSError, subprocess.SubprocessError) as err:
            result["check_error"] = str(err)
        return result

    def _keep_note(self, spec: BoxSpec, machine: str, run_dir: str, env: Dict[str, str], port: int) -> None:
        script = os.path.join(run_dir, "vagrant.sh")
        with open(script, "w") as f:
            f.write("#!/bin/sh\n# vagrant for the kept box %s: ./vagrant.sh ssh %s | ./vagrant.sh destroy -f %s\n"
                    "export %s=%s VAGRANT_DOTFILE_PATH=%s VAGRANT_DEFAULT_PROVIDER=libvirt\n"
                    "cd %s && exec vagrant \"$@\"\n" % (
                        spec.name, machine, machine, boxes_mod.ENV_VAGRANT_CONFIG,
                        shlex.quote(env[boxes_mod.ENV_VAGRANT_CONFIG]), shlex.quote(env["VAGRANT_DOTFILE_PATH"]),
                        shlex.quote(self.root)))
        os.chmod(script, 0o755)
        self.log("kept box %s (ssh on 127.0.0.1:%d): %s ssh %s   (or: ssh -F %s/ssh_config %s); "
                 "remove with: %s destroy -f %s" % (spec.name, port, script, machine, run_dir, machine, script, machine))


def _tail_file(path: str, lines: int = 40) -> List[str]:
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()[-lines:]
    except OSError:
        return []
