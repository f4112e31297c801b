"""Finding and signalling this process's descendants (for a clean stop on Ctrl-C or SIGTERM),
and commands run in a process group of their own with a deadline."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union


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


# --- commands in a process group of their own ---------------------------------------------
#
# A command started in a new session leads its own process group, so one ``killpg`` reaches
# everything it started (ssh's ProxyCommand, vagrant's ruby children, qemu helpers), and a
# terminal's Ctrl-C goes to the lab only: the lab decides when and how the command stops.

#: ``(signal, seconds to wait for the exit)`` in turn; ``None`` waits as long as it takes
StopSteps = Sequence[Tuple[int, Optional[float]]]
KILL_NOW: StopSteps = ((signal.SIGKILL, None),)


def popen_group(argv, **popen_kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` in a new session (its own process group, see above)."""
    return subprocess.Popen(argv, start_new_session=True, **popen_kwargs)


def kill_group(proc: Union[subprocess.Popen, int], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group ``proc`` (a Popen or a pid) leads; a group that is
    gone, or none of whose members we may signal, is left alone."""
    pid = proc if isinstance(proc, int) else proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_group(proc: subprocess.Popen, steps: StopSteps = KILL_NOW) -> bool:
    """Signal ``proc``'s group with each ``(signal, grace)`` of ``steps`` in turn until ``proc``
    exits within the grace; True once it has (and is reaped), False if it outlived them all."""
    for sig, grace in steps:
        kill_group(proc, sig)
        try:
            proc.wait(grace)
            return True
        except subprocess.TimeoutExpired:
            continue
    return False


def communicate_in_group(proc: subprocess.Popen, timeout: float, steps: StopSteps = KILL_NOW,
                         input: Optional[bytes] = None) -> Tuple[object, object]:
    """``proc.communicate(input)`` with a deadline. Past it — or on any exception meanwhile,
    Ctrl-C included — ``proc``'s group is stopped with ``steps`` and the exception re-raised
    (``subprocess.TimeoutExpired`` for the deadline)."""
    try:
        return proc.communicate(input, timeout=timeout)
    except BaseException:
        stop_group(proc, steps)
        raise


def read_pipes(proc: subprocess.Popen, deadline: float, on_chunk: Callable[[str, bytes], None]) -> None:
    """Read ``proc``'s stdout and stderr pipes (those it has) as bytes arrive, handing each
    chunk to ``on_chunk("out" | "err", chunk)``, until every pipe is closed. Raises
    ``subprocess.TimeoutExpired`` once ``deadline`` (``time.monotonic()``) passes first; the
    caller decides what becomes of the process."""
    import selectors
    sel = selectors.DefaultSelector()
    for name, stream in (("out", proc.stdout), ("err", proc.stderr)):
        if stream is not None:
            sel.register(stream, selectors.EVENT_READ, name)
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(proc.args, 0)
            for key, _ in sel.select(timeout=min(left, 1.0)):
                chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                on_chunk(key.data, chunk)
    finally:
        sel.close()
