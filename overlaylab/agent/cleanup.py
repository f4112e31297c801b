"""What dead lab runs left on this machine, found by the lab's own markers, and removed.

Everything the lab makes that could outlive a crash is *marked* when it is made:

- an agent's work directory (its loop images, mounts and scratch live below it), a qemu VM's
  run directory (disk images, keys, console log, ``qemu.pid``) and a Vagrant run directory
  each get a marker file, ``.overlaylab-owner.json``, naming the run, the kind and the owner
  process (pid, start time, boot id);
- the same record goes into a lease file in the state directory (``$OVERLAYLAB_STATE_DIR``,
  default ``/run/overlaylab-leases``), so the directory can be found again from anywhere;
- a qemu VM is started with ``-name overlaylab-<lease>`` and ``-pidfile`` inside its marked
  directory; a Vagrant run's libvirt domains carry the run's ``overlaylab-<token>-`` prefix,
  recorded in its lease.

A lease whose marker still matches and whose owner process is gone (another boot, no such
pid, or a pid reused by another process) is a leftover. Its pieces are found from the
markers only, never by matching names broadly: mounts at or below the marked directory, loop
devices whose backing file is below it, the qemu process its pidfile names (checked against
the ``-name`` on its command line), libvirt domains with the recorded prefix. Removal goes
qemu/domains, mounts (deepest first, lazily if busy), loop devices (retried), the directory,
the lease.

Standard library only: targets run ``python -m overlaylab.agent cleanup`` too.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .. import mountutil
from .procutil import cmdline, owner, owner_alive, signals_deferred

STATE_ENV = "OVERLAYLAB_STATE_DIR"
DEFAULT_STATE_DIR = "/run/overlaylab-leases"
MARKER = ".overlaylab-owner.json"
RUN_ENV = "OVERLAYLAB_RUN"  # the run id, set by `overlaylab run` for everything below it
LIBVIRT_URI = "qemu:///system"


def state_dir() -> str:
    return os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR


def current_run() -> str:
    return os.environ.get(RUN_ENV, "")


def qemu_name(lease: Dict[str, Any]) -> str:
    """The ``-name`` a marked qemu VM runs under."""
    return "overlaylab-%s" % lease["id"]


def mark(path: str, kind: str, run: Optional[str] = None, owner_pid: int = 0,
         **extra: Any) -> Dict[str, Any]:
    """Put the marker on directory ``path`` and register its lease; returns the lease.

    ``kind``: ``agent-dir``, ``qemu``, ``vagrant``. A lease that cannot be registered (no
    writable state directory, e.g. in a read-only guest) still leaves the marker."""
    # os.urandom(6).hex() is secrets.token_hex(6) without importing secrets (hmac, _hashlib):
    # guests pay ~50 ms per import under TCG
    lease: Dict[str, Any] = {"id": "%s-%s" % (kind, os.urandom(6).hex()), "kind": kind, "path": os.path.realpath(path),
                             "run": run if run is not None else current_run(), "owner": owner(owner_pid),
                             "created": time.time()}
    lease.update(extra)
    _write_json(os.path.join(path, MARKER), lease)
    try:
        os.makedirs(state_dir(), exist_ok=True)
        _write_json(_lease_path(lease), lease)
    except OSError:
        lease["unregistered"] = True
    return lease


def release(lease: Optional[Dict[str, Any]]) -> None:
    """The marked thing is gone (or handed back): drop its lease."""
    if lease:
        try:
            os.unlink(_lease_path(lease))
        except OSError:
            pass


def _lease_path(lease: Dict[str, Any]) -> str:
    return os.path.join(state_dir(), lease["id"] + ".json")


def _write_json(path: str, data: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True)
    os.replace(tmp, path)


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


# --- finding ------------------------------------------------------------------------------

@dataclass
class Leftover:
    """One lease whose owner is gone, with what is still there of it."""

    lease: Dict[str, Any]
    mounts: List[str] = field(default_factory=list)
    loops: List[str] = field(default_factory=list)
    processes: List[int] = field(default_factory=list)
    domains: List[str] = field(default_factory=list)
    directory: Optional[str] = None

    @property
    def items(self) -> List[str]:
        out = ["qemu process %d (-name %s)" % (p, qemu_name(self.lease)) for p in self.processes]
        out += ["libvirt domain %s" % d for d in self.domains]
        out += ["mount %s" % m for m in self.mounts]
        out += ["loop device %s" % d for d in self.loops]
        if self.directory:
            out.append("%s directory %s" % (self.lease.get("kind"), self.directory))
        return out or ["stale lease %s" % self.lease.get("id")]

    def describe(self) -> List[str]:
        own = self.lease.get("owner") or {}
        tail = "(run %s, owner pid %s gone)" % (self.lease.get("run") or "?", own.get("pid", "?"))
        return ["%s %s" % (item, tail) for item in self.items]


def _marker_matches(lease: Dict[str, Any]) -> bool:
    marker = _read_json(os.path.join(lease.get("path", ""), MARKER))
    return bool(marker) and marker.get("id") == lease.get("id")


def loop_backing_files() -> Dict[str, str]:
    """``/dev/loopN`` -> its backing file, for every bound loop device (from sysfs)."""
    out: Dict[str, str] = {}
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return out
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            with open("/sys/block/%s/loop/backing_file" % name, "r", errors="surrogateescape") as f:
                out["/dev/" + name] = f.read().strip()
        except OSError:
            continue
    return out


def _below(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def _qemu_processes(lease: Dict[str, Any]) -> List[int]:
    pidfile = os.path.join(lease["path"], "qemu.pid")
    try:
        with open(pidfile, "r") as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return []
    argv = cmdline(pid) if pid > 0 else []
    # The pidfile says who; the -name on its command line proves it is still that VM.
    if any(argv[i] == "-name" and argv[i + 1].split(",")[0] == qemu_name(lease) for i in range(len(argv) - 1)):
        return [pid]
    return []


def _virsh(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", LIBVIRT_URI] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _domains(prefix: str) -> List[str]:
    if not prefix or shutil.which("virsh") is None:
        return []
    try:
        res = _virsh("list", "--all", "--name")
    except (OSError, subprocess.SubprocessError):
        return []
    return [d.strip() for d in res.stdout.splitlines() if d.strip().startswith(prefix)]


def inspect(lease: Dict[str, Any]) -> Leftover:
    """What is still there of ``lease``'s marked directory (nothing but the lease if it is gone)."""
    left = Leftover(lease)
    path = lease.get("path") or ""
    if not path or not _marker_matches(lease):
        return left  # the directory went away (or is someone else's now): only the lease is left
    left.directory = path
    left.mounts = [m.mountpoint for m in mountutil.mounts_under(path)]
    left.loops = sorted(dev for dev, backing in loop_backing_files().items() if _below(backing, path))
    if lease.get("kind") == "qemu":
        left.processes = _qemu_processes(lease)
    if lease.get("domain_prefix"):
        left.domains = _domains(lease["domain_prefix"])
    return left


def leases() -> List[Dict[str, Any]]:
    d = state_dir()
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return []
    out = []
    for name in names:
        if name.endswith(".json"):
            lease = _read_json(os.path.join(d, name))
            if lease and lease.get("id") == name[:-5] and lease.get("path"):
                out.append(lease)
    return out


def find_leftovers(run: Optional[str] = None) -> List[Leftover]:
    """Leftovers of every lease (of ``run`` only, if given) whose owner process is gone."""
    out = []
    for lease in leases():
        if run is not None and lease.get("run") != run:
            continue
        if owner_alive(lease.get("owner") or {}):
            continue
        out.append(inspect(lease))
    return out


# --- removing -------------------------------------------------------------------------------

def _kill(pid: int) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except OSError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                pass
            if not os.path.exists("/proc/%d" % pid):
                return
            time.sleep(0.1)


def detach_loop(dev: str, attempts: int = 10) -> bool:
    """``losetup -d DEV``, retried while the kernel still calls it busy; True once it is free."""
    for i in range(attempts):
        try:
            res = subprocess.run(["losetup", "-d", dev], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 universal_newlines=True, timeout=60, stdin=subprocess.DEVNULL)
            if res.returncode == 0:
                return True
        except (OSError, subprocess.SubprocessError):
            pass
        if not os.path.exists("/sys/block/%s/loop/backing_file" % os.path.basename(dev)):
            return True  # gone already (autoclear, or a racing detach)
        time.sleep(0.2 * (i + 1))
    return False


def remove(left: Leftover) -> List[str]:
    """Remove one leftover, in an order that cannot lose data; returns what failed (empty: all
    gone). Signals are deferred meanwhile, so a Ctrl-C cannot stop it half way."""
    problems: List[str] = []
    with signals_deferred():
        for pid in left.processes:
            _kill(pid)
        for dom in left.domains:
            try:
                _virsh("destroy", dom)
                _virsh("undefine", dom, "--remove-all-storage", "--nvram")
            except (OSError, subprocess.SubprocessError) as err:
                problems.append("libvirt domain %s: %s" % (dom, err))
        if left.directory:
            for _ in range(5):
                mounts = mountutil.mounts_under(left.directory)
                if not mounts:
                    break
                for m in reversed(mounts):
                    try:
                        mountutil.umount(m.mountpoint)
                    except OSError:
                        try:
                            mountutil.umount(m.mountpoint, mountutil.MNT_DETACH)
                        except OSError as err:
                            problems.append("umount %s: %s" % (m.mountpoint, err))
            loops = [dev for dev, backing in loop_backing_files().items() if _below(backing, left.directory)]
            for dev in loops:
                if not detach_loop(dev):
                    problems.append("losetup -d %s failed" % dev)
            if mountutil.mounts_under(left.directory):
                problems.append("%s: still mounted, left in place" % left.directory)
            elif left.lease.get("keep_dir"):
                try:
                    os.unlink(os.path.join(left.directory, MARKER))
                except OSError:
                    pass
            else:
                shutil.rmtree(left.directory, ignore_errors=True)
                if os.path.exists(left.directory):
                    problems.append("%s: could not be removed" % left.directory)
        if not problems:
            release(left.lease)
    return problems


def cleanup(run: Optional[str] = None, dry_run: bool = False) -> List[Dict[str, Any]]:
    """Find (and unless ``dry_run`` remove) what dead runs left; one dict per leftover."""
    out = []
    for left in find_leftovers(run):
        entry = {"lease": left.lease, "items": left.describe(), "problems": []}
        if not dry_run:
            entry["problems"] = remove(left)
        out.append(entry)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m overlaylab.agent.cleanup", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="list only")
    parser.add_argument("--run", default=None, help="only this run's leftovers")
    parser.add_argument("--json", action="store_true", help="one JSON line per leftover")
    args = parser.parse_args(argv)
    found = cleanup(args.run, args.dry_run)
    for entry in found:
        if args.json:
            print(json.dumps(entry, sort_keys=True, default=str))
            continue
        for item in entry["items"]:
            print(("would remove " if args.dry_run else "removed ") + item)
        for problem in entry["problems"]:
            print("could not remove: " + problem)
    if not found and not args.json:
        print("nothing left behind")
    return 1 if any(e["problems"] for e in found) else 0


if __name__ == "__main__":  # pragma: no cover
    import sys
    sys.exit(main())
