"""The ssh provider: remote machines (``--hosts``, ``--inventory``) as targets, reached over ssh.

``SshProvider(hosts).up(name)`` is a context manager for one :class:`~overlaylab.providers.hosts.RemoteHost`:

1. asks the host over ssh for its kernel release, its user and its ``python3`` (3.9 or newer,
   else the target fails with the reason; a user other than root needs password-less sudo);
2. ships the agent — the self-contained zipapp of the guest closure the Vagrant provider
   builds (:func:`overlaylab.providers.vagrant.build_agent_zipapp`) — to a per-run directory
   ``/var/tmp/overlaylab-<run>-<token>/``, and starts ``python3 -m overlaylab.agent hold`` there
   (:mod:`overlaylab.agent.hold`), whose stdin is the ssh channel: it owns the directory;
3. yields an :class:`SshSession`: agents run with the host's own ``python3``, the zipapp on
   ``PYTHONPATH`` and ``TMPDIR`` in the per-run directory (so the loop images of the backing
   filesystems go there); with ``--allow-mkfs`` the disks the inventory names for the
   selected profiles are used instead, and the agent refuses one that is in use or holds a
   filesystem the lab did not make (``--check-devices``);
4. on the way out closes the holder's stdin: it stops the agents still working there and
   removes everything below the directory, then the directory. A Ctrl-C'd or killed runner
   closes the channel too (the ssh client dies), so the host cleans up by itself; a holder that
   is killed leaves a lease with a dead owner for ``overlaylab cleanup --hosts``.

Nothing else on the host is changed (the agent's leases live in ``/run/overlaylab-leases``
while it runs). ssh's own errors (connection refused, host key, authentication) make the
target's cells ERROR with ssh's words as evidence (:mod:`overlaylab.providers.transport`).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..agent import cleanup as cleanup_mod
from ..agent.procutil import communicate_in_group, popen_group, stop_group
from ..lab.progress import phase
from .hosts import RemoteHost
from .session import SessionMethods
from .session import agent_command as session_agent_command
from .transport import local_command, run_with_timeout

REMOTE_BASE = "/var/tmp"
MIN_PYTHON = (3, 9)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: seconds to wait for the holder's ``held`` line, and for its ``released`` line at the end
HOLD_TIMEOUT = 60.0
RELEASE_TIMEOUT = 180.0

_FACTS = ("uname -r; id -u; id -un; p=$(command -v python3) && echo \"$p\" && "
          "\"$p\" -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])'")


class RemoteHostError(RuntimeError):
    """A host that is reachable but cannot run the agent (no Python 3.9, no sudo, no room)."""


@dataclass
class SshSession(SessionMethods):
    host: Any
    name: str
    kernel_release: str
    remote_dir: str
    provider: str = "ssh"
    disks: Dict[str, str] = field(default_factory=dict)
    python: str = "python3"
    python_version: str = ""
    sudo: bool = False
    accel: Optional[str] = None
    boot_seconds: float = 0.0
    boot_retries: List[str] = field(default_factory=list)
    console_log: Optional[str] = None
    released: Dict[str, Any] = field(default_factory=dict)

    @property
    def agent_path(self) -> str:
        return self.remote_dir + "/overlaylab.pyz"

    def run(self, command: str, timeout: float = 300.0):
        return run_with_timeout(self.host, command, timeout)

    def agent_command(self, args: Sequence[str]) -> str:
        args = list(args)
        if args[:1] == ["run"] and self.disks:
            args.append("--check-devices")  # the host's own disks: refuse one in use
        env = {"PYTHONPATH": self.agent_path, "TMPDIR": self.remote_dir, "PYTHONDONTWRITEBYTECODE": "1",
               "LC_ALL": "C.UTF-8", "PATH": DEFAULT_PATH}
        return session_agent_command(args, self.python, env, sudo=self.sudo)


def parse_facts(name: str, text: str) -> Tuple[str, bool, str, str]:
    """(kernel release, needs sudo, python3 path, its version) from :data:`_FACTS`'s output;
    :class:`RemoteHostError` for a host whose Python cannot run the agent."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 3:
        raise RemoteHostError("host %s did not say its kernel and user: %r" % (name, text.strip()[:200]))
    release, uid, user = lines[:3]
    if len(lines) < 5:
        raise RemoteHostError("host %s has no python3; the agent needs Python %d.%d or newer there"
                              % ((name,) + MIN_PYTHON))
    python, version = lines[3], lines[4]
    try:
        have = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        raise RemoteHostError("host %s: %s did not say its version (%r)" % (name, python, version)) from None
    if have < MIN_PYTHON:
        raise RemoteHostError("host %s has Python %s (%s); the agent needs %d.%d or newer"
                              % ((name, version, python) + MIN_PYTHON))
    return release, uid != "0", python, version


class SshProvider:
    """Remote hosts over ssh; see the module docstring. ``provider_for(name)`` says ``ssh`` or
    ``ansible``, as each host was named."""

    name = "ssh"

    def __init__(self, hosts: Sequence[RemoteHost] = (), allow_mkfs: bool = False) -> None:
        self.hosts = {h.name: h for h in hosts}
        self.allow_mkfs = allow_mkfs

    def provider_for(self, name: str) -> str:
        host = self.hosts.get(name)
        return host.provider if host else self.name

    @contextlib.contextmanager
    def up(self, name: str, disks: Sequence[Tuple[str, int]] = (), keep: bool = False) -> Iterator[SshSession]:
        """``keep`` has no meaning here: nothing is booted, and the per-run directory always goes."""
        remote = self.hosts[name]
        started = time.monotonic()
        control_dir = tempfile.mkdtemp(prefix="overlaylab-ssh-")
        # marked like every run directory: a killed runner's is removed by `overlaylab cleanup`
        lease = cleanup_mod.mark(control_dir, "ssh", host=name)
        backend = remote.host.backend
        if getattr(backend, "NAME", "") == "ssh" and "controlpath" not in (backend.ssh_extra_args or "").lower():
            # one master per session, ours; testinfra %-formats the option (so %%C is ssh's %C)
            backend.controlpath = os.path.join(control_dir, "cm-%%C")
        holder: Optional[subprocess.Popen] = None
        session: Optional[SshSession] = None
        try:
            with phase("connect", name):
                res = run_with_timeout(remote.host, _FACTS, 60)
            release, sudo, python, version = parse_facts(name, res.stdout)
            if sudo:
                check = run_with_timeout(remote.host, "sudo -n true", 30)
                if check.rc != 0:
                    raise RemoteHostError("host %s: the lab needs root, and user %s has no password-less sudo: %s"
                                          % (name, res.stdout.splitlines()[2].strip(), check.stderr.strip()))
            run_id = cleanup_mod.current_run() or "norun"
            session = SshSession(host=remote.host, name=name, kernel_release=release, provider=remote.provider,
                                 remote_dir="%s/overlaylab-%s-%s" % (REMOTE_BASE, run_id, secrets.token_hex(4)),
                                 python=python, python_version=version, sudo=sudo)
            with phase("ship agent", session.remote_dir):
                self._ship(session, control_dir)
                holder = self._hold(session, run_id)
            if self.allow_mkfs:
                wanted = {n for n, _ in disks}
                session.disks = {p: dev for p, dev in remote.disks.items() if p in wanted}
            session.boot_seconds = time.monotonic() - started
            yield session
        finally:
            try:
                if holder is not None:
                    with phase("release", session.remote_dir if session else name):
                        released = self._let_go(holder)
                        if session is not None:
                            session.released = released
                elif session is not None:  # shipped (or half), never held: remove it plainly
                    with contextlib.suppress(Exception):
                        run_with_timeout(remote.host, "rm -rf %s" % session.remote_dir, 60)
            finally:
                self._close_master(remote.host, control_dir)
                cleanup_mod.release(lease)

    # internals -------------------------------------------------------------------------------
    def _ship(self, session: SshSession, control_dir: str) -> None:
        from .vagrant import build_agent_zipapp  # the same zipapp Vagrant boxes get
        pyz = Path(control_dir) / "overlaylab.pyz"
        build_agent_zipapp(pyz)
        command = local_command(session.host, "umask 077 && mkdir %s && cat > %s" % (session.remote_dir, session.agent_path))
        if command is None:
            raise RemoteHostError("host %s: its connection cannot carry a file (use ssh)" % session.name)
        with open(pyz, "rb") as f:
            p = popen_group(command, shell=True, stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                _, err = communicate_in_group(p, 300)
            except subprocess.TimeoutExpired:
                raise RemoteHostError("host %s: copying the agent took over 300 s" % session.name) from None
        if p.returncode != 0:
            what = "ssh to %s failed" % session.name if p.returncode == 255 else \
                "could not copy the agent to %s:%s" % (session.name, session.agent_path)
            raise RemoteHostError("%s: %s" % (what, err.decode("utf-8", "replace").strip()))

    def _hold(self, session: SshSession, run_id: str) -> subprocess.Popen:
        """Start the holder and wait for its ``held`` line."""
        command = local_command(session.host, session.agent_command(["hold", session.remote_dir, "--run", run_id]))
        p = popen_group(command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + HOLD_TIMEOUT
        line = b""
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
        try:
            record = json.loads(line.decode("utf-8", "replace"))
        except ValueError:
            record = {}
        if record.get("record") != "held":
            stop_group(p)
            err = p.stderr.read().decode("utf-8", "replace").strip()
            p.stdin.close()
            raise RemoteHostError("host %s: the agent did not start in %s: %s" % (
                session.name, session.remote_dir, err or line.decode("utf-8", "replace").strip() or "no answer"))
        return p

    @staticmethod
    def _let_go(holder: subprocess.Popen) -> Dict[str, Any]:
        """Close the holder's stdin and read its ``released`` record (the host removes the
        directory whether or not the answer gets back)."""
        try:
            out, err = communicate_in_group(holder, RELEASE_TIMEOUT)
        except subprocess.TimeoutExpired:
            return {"problems": ["no answer from the holder after %.0f s" % RELEASE_TIMEOUT]}
        for line in out.decode("utf-8", "replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("record") == "released":
                    return record
        return {"problems": ["the holder did not answer (status %s): %s" % (
            holder.returncode, err.decode("utf-8", "replace").strip()[-300:])]}

    @staticmethod
    def _close_master(host: Any, control_dir: str) -> None:
        """Stop the ssh ControlMaster of this session, then remove its socket directory."""
        backend = host.backend
        if getattr(backend, "NAME", "") == "ssh":
            cmd, args = backend._build_ssh_command("")
            command = backend.quote(" ".join(cmd[:-1] + ["-O exit %s"]), *args[:-1])
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=15)
            if backend.controlpath and backend.controlpath.startswith(control_dir):
                backend.controlpath = None
        shutil.rmtree(control_dir, ignore_errors=True)
