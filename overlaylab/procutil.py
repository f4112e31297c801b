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
