"""Finding and signalling this process's descendants (for a clean stop on Ctrl-C or SIGTERM)."""
from __future__ import annotations

import os
import signal
from typing import Dict, List


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Adopt orphaned descendants (``prctl(PR_SET_CHILD_SUBREAPER)``), so an agent whose
    ``timeout``/shell parents died first is still found (and waited for) on the way out."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _children_map() -> Dict[int, List[int]]:
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces or parentheses: fields follow the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> List[int]:
    """Every process below ``pid``, parents before children."""
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def signal_descendants(sig: int = signal.SIGTERM, pid: int = 0) -> List[int]:
    """Send ``sig`` to every descendant of ``pid`` (default: this process); returns who got it."""
    hit = []
    for child in descendants(pid or os.getpid()):
        try:
            os.kill(child, sig)
            hit.append(child)
        except OSError:
            pass
    return hit


def wait_descendants_gone(timeout: float = 30.0, pid: int = 0) -> bool:
    """Wait until ``pid`` (default: this process) has no descendants left; False on timeout."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in descendants(pid or os.getpid()) if not _is_zombie(p)]
        if not alive:
            return True
        time.sleep(0.1)
    return False


def _is_zombie(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
        return stat[stat.rfind(b")") + 2:].split()[0] == b"Z"
    except OSError:
        return True


# --- owners: who made a thing, and whether they are still there ---------------------------

def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``): a pid means nothing across boots."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "r") as f:
            return f.read().strip()
    except OSError:
        return ""


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or ""
    when there is no such process: with the boot id it tells a live owner from a reused pid."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    fields = stat[stat.rfind(b")") + 2:].split()
    return fields[19].decode() if len(fields) > 19 else ""


def owner(pid: int = 0) -> Dict[str, object]:
    """The owner record the lab writes on what it makes: pid, start time, boot id."""
    pid = pid or os.getpid()
    return {"pid": pid, "start": start_time(pid), "boot_id": boot_id()}


def owner_alive(rec: Dict[str, object]) -> bool:
    """True while the process an :func:`owner` record names still runs (same boot, same pid,
    same start time). A record without a pid counts as gone."""
    try:
        pid = int(rec.get("pid") or 0)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    if rec.get("boot_id") and rec.get("boot_id") != boot_id():
        return False
    now = start_time(pid)
    if not now or _is_zombie(pid):
        return False
    return not rec.get("start") or rec.get("start") == now


# --- critical sections --------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class signals_deferred:
    """``with signals_deferred():`` holds SIGINT, SIGTERM and SIGHUP back for the block and
    delivers them when it ends, so a teardown that was started is finished: a Ctrl-C can no
    longer abort ``losetup -d`` half way. The signals are blocked (commands started inside
    inherit the mask, so a signal sent to the whole group does not kill them either), and the
    Python handlers are swapped for a recorder meanwhile (a signal the kernel hands to another
    thread would otherwise still run the handler in the main thread). Nests; a no-op outside
    the main thread (Python runs handlers only there)."""

    def __enter__(self) -> "signals_deferred":
        import threading
        self._old_mask = None
        self._handlers: Dict[int, object] = {}
        self._caught: List[int] = []
        if threading.current_thread() is not threading.main_thread():
            return self
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        for sig in STOP_SIGNALS:
            old = signal.getsignal(sig)
            if callable(old):  # SIG_IGN / SIG_DFL stay as they are
                self._handlers[sig] = old
                signal.signal(sig, lambda num, frame: self._caught.append(num))
        return self

    def __exit__(self, *exc) -> None:
        if self._old_mask is None:
            return
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)  # pending ones arrive now
        for num in self._caught:
            if num not in signal.sigpending():
                signal.raise_signal(num)  # caught meanwhile by another thread: deliver it now


# --- stopping agents gracefully -------------------------------------------------------------

def cmdline(pid: int) -> List[str]:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def is_agent(pid: int) -> bool:
    """A lab agent process (``python -m overlaylab.agent ...``)."""
    argv = cmdline(pid)
    return any(argv[i] == "-m" and argv[i + 1] == "overlaylab.agent" for i in range(len(argv) - 1))


def stop_agents(pid: int = 0, sig: int = signal.SIGTERM, timeout: float = 120.0) -> List[int]:
    """Signal the agents among ``pid``'s descendants (default: ours) *directly* and wait for
    them to finish their teardown. Not their ``timeout`` wrappers: coreutils ``timeout`` turns
    any signal it gets into a SIGKILL of its group 5 s later, which would cut a teardown short.
    Returns the agents signalled."""
    import time
    agents = [p for p in descendants(pid or os.getpid()) if is_agent(p) and not _is_zombie(p)]
    for p in agents:
        try:
            os.kill(p, sig)
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(not _is_zombie(p) and start_time(p) for p in agents):
        time.sleep(0.1)
    return agents
