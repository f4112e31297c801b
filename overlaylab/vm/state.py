"""Lab VMs that stay up in the background: ``overlaylab vm up|list|down|shell``.

Each VM is one *keeper* process (``python -m overlaylab.vm.keeper DIR``, started detached in its
own session) that boots the kernel with :class:`~overlaylab.providers.qemu.QemuProvider` and
holds the session open until it gets SIGTERM (``vm down``), qemu exits, or the hard timeout
passes; then the provider tears everything down as in a run (qemu killed, images, keys and
workdir removed). The keeper is qemu's parent, so qemu also dies if the keeper is killed.

State lives in one directory per kernel under :func:`state_root` (``$OVERLAYLAB_VM_STATE``,
default ``~/.cache/overlaylab/vms``)::

    <root>/<kernel>/request.json   what to boot (kernel, disks, timeouts)
    <root>/<kernel>/keeper.pid     the keeper's pid
    <root>/<kernel>/state.json     {"status": "booting"|"up"|"failed", port, spec, ssh_config, ...}
    <root>/<kernel>/keeper.log     its phases (fetch, initramfs, boot, ...) and errors
    <root>/<kernel>/console-<kernel>.log  the guest's serial console

so any process can list the VMs and stop them. A directory whose keeper is gone is stale and
is removed by :func:`list_vms`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..agent.procutil import kill_group, popen_group

STATE_ENV = "OVERLAYLAB_VM_STATE"
KEEPER_MODULE = "overlaylab.vm.keeper"
DEFAULT_HARD_TIMEOUT = 4 * 3600.0


class VMStateError(RuntimeError):
    """A lab VM could not be started, found or stopped (one-line reason)."""


def state_root() -> Path:
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env)
    from ..kernels.cache import cache_root
    return cache_root() / "vms"


def _safe(kernel: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", kernel)


def vm_dir(kernel: str) -> Path:
    return state_root() / _safe(kernel)


def host_spec(port: int, ssh_config: str) -> str:
    """The testinfra host of a lab VM. testinfra's URL query takes ``ssh_identity_file`` but no
    option to skip host-key checks (the guest's host key is new each boot), so the spec names
    the VM's ssh_config, which sets the key, the port and ``StrictHostKeyChecking no``."""
    return "ssh://root@127.0.0.1:%d?ssh_config=%s" % (port, ssh_config)


def ssh_command(port: int, ssh_config: str) -> str:
    return "ssh -F %s -p %d root@127.0.0.1" % (ssh_config, port)


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: Dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _cmdline(pid: int) -> List[bytes]:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _zombie(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def keeper_alive(pid: Optional[int]) -> bool:
    """True if ``pid`` is a live keeper process (not a recycled pid)."""
    if not pid:
        return False
    return KEEPER_MODULE.encode() in _cmdline(int(pid)) and not _zombie(int(pid))


def qemu_alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    cmd = _cmdline(int(pid))
    return bool(cmd) and os.path.basename(cmd[0]).startswith(b"qemu-system") and not _zombie(int(pid))


def keeper_pid(d: Path) -> Optional[int]:
    try:
        return int((d / "keeper.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def read_vm(kernel: str) -> Optional[Dict[str, Any]]:
    """The state of ``kernel``'s VM if its keeper is alive (else None)."""
    d = vm_dir(kernel)
    pid = keeper_pid(d)
    if not keeper_alive(pid):
        return None
    state = _read_json(d / "state.json") or {"status": "starting"}
    state.setdefault("kernel", kernel)
    state["pid"] = pid
    state["dir"] = str(d)
    return state


def _remove(d: Path, state: Optional[Dict[str, Any]] = None) -> None:
    workdir = (state or _read_json(d / "state.json") or {}).get("workdir")
    if workdir and os.path.basename(workdir).startswith("overlaylab-qemu-"):
        shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(d, ignore_errors=True)


def list_vms() -> List[Dict[str, Any]]:
    """Every lab VM whose keeper is alive, by kernel name; stale directories are removed."""
    root = state_root()
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if not d.is_dir():
            continue
        request = _read_json(d / "request.json") or {}
        kernel = request.get("kernel") or d.name
        state = read_vm(kernel)
        if state is None:
            started = request.get("requested_at", 0)
            if time.time() - started > 30:  # not one being started right now
                _remove(d)
            continue
        out.append(state)
    return out


def start_vm(kernel: str, disks: Sequence[Tuple[str, int]], hard_timeout: float = DEFAULT_HARD_TIMEOUT,
             boot_timeout: float = 180.0, on_line: Callable[[str], None] = lambda line: None,
             wait: float = 900.0) -> Dict[str, Any]:
    """Start a keeper for ``kernel`` and wait until its VM answers ssh; return its state.

    ``on_line`` gets the keeper's log lines (its phases) as they come. Raises
    :class:`VMStateError` if a VM for ``kernel`` is already up or it does not come up."""
    existing = read_vm(kernel)
    if existing is not None:
        raise VMStateError("a VM for %s is already up (pid %s)" % (kernel, existing["pid"]))
    d = vm_dir(kernel)
    _remove(d)
    d.mkdir(parents=True)
    write_json(d / "request.json", {"kernel": kernel, "disks": [list(x) for x in disks],
                                    "hard_timeout": hard_timeout, "boot_timeout": boot_timeout,
                                    "requested_at": time.time()})
    log_path = d / "keeper.log"
    with open(log_path, "wb") as log:
        env = dict(os.environ)
        from ..paths import PROJECT_ROOT
        project = str(PROJECT_ROOT)
        env["PYTHONPATH"] = project + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = popen_group([sys.executable, "-m", KEEPER_MODULE, str(d)], stdin=subprocess.DEVNULL,
                           stdout=log, stderr=log, close_fds=True, cwd="/", env=env)
    seen = 0
    deadline = time.monotonic() + wait

    def pump() -> None:
        nonlocal seen
        try:
            with open(log_path, "rb") as f:
                f.seek(seen)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        seen += end
        for line in data[:end].decode("utf-8", "replace").splitlines():
            on_line(line)

    try:
        while True:
            pump()
            state = _read_json(d / "state.json") or {}
            if state.get("status") == "up":
                state["pid"] = proc.pid
                state["dir"] = str(d)
                return state
            if state.get("status") == "failed" or proc.poll() is not None:
                proc.wait()
                pump()
                why = state.get("error") or "the keeper exited with status %s (see %s)" % (proc.returncode, log_path)
                _remove(d, state)
                raise VMStateError("%s did not come up: %s" % (kernel, why))
            if time.monotonic() > deadline:
                raise VMStateError("%s not up after %.0fs" % (kernel, wait))
            time.sleep(0.2)
    except BaseException:
        if proc.poll() is None:  # interrupted or timed out: take it down again
            stop_pid(proc.pid, d)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        raise


def stop_pid(pid: int, d: Path, timeout: float = 60.0) -> None:
    """SIGTERM the keeper (it tears the VM down), SIGKILL it and its qemu if it takes too long."""
    state = _read_json(d / "state.json") or {}
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while keeper_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if keeper_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    qpid = state.get("qemu_pid")
    if qemu_alive(qpid):
        kill_group(int(qpid), signal.SIGKILL)  # qemu leads its own process group
        end = time.monotonic() + 10
        while qemu_alive(qpid) and time.monotonic() < end:
            time.sleep(0.1)
    _remove(d, state)


def stop_vm(kernel: str, timeout: float = 60.0) -> Dict[str, Any]:
    """Stop ``kernel``'s VM; return the state it had. :class:`VMStateError` if none is up."""
    state = read_vm(kernel)
    if state is None:
        up = [v["kernel"] for v in list_vms()]
        raise VMStateError("no VM for %s is up (%s)" % (kernel, "up: " + ", ".join(up) if up else "none is up"))
    stop_pid(int(state["pid"]), Path(state["dir"]), timeout)
    return state
