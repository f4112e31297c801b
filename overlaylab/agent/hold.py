"""A remote host's per-run directory, held for one run and removed when the runner lets go.

``overlaylab run --hosts`` ships the agent to ``/var/tmp/overlaylab-<run>-<token>/`` on each
host and starts ``python3 -m overlaylab.agent hold DIR --run RUN`` there over ssh, its stdin
the ssh channel. The holder puts the lab's owner marker on DIR (kind ``remote-run``, owner:
itself; :mod:`overlaylab.agent.cleanup`) and waits until its stdin closes — the runner closing
it at the end of the host's work, or the ssh connection dying with a Ctrl-C'd or killed runner —
or until it gets SIGINT, SIGTERM or SIGHUP. Then it stops the agents working in DIR (SIGTERM:
they tear down their filesystems; SIGKILL after a grace period), removes what is left below
DIR (mounts, loop devices backed by its files, the directory with the shipped agent) and the
leases of it all, and prints a ``released`` record. Should the holder itself be killed, its
lease names a dead owner, so ``overlaylab cleanup --hosts`` (the agent's ``cleanup`` run
there) removes the same things.

Standard library only; everything is imported before DIR (which holds this very zipapp) goes.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, Callable, Dict, List

from . import cleanup as cleanup_mod
from .procutil import is_agent, signals_deferred

#: seconds the agents get to tear down after SIGTERM before they are killed
AGENT_GRACE = 90.0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt()


def _below(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def _pythonpath(pid: int) -> str:
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return ""
    for item in env:
        if item.startswith(b"PYTHONPATH="):
            return item[len(b"PYTHONPATH="):].decode("utf-8", "replace")
    return ""


def agents_in(directory: str) -> List[int]:
    """Agent processes (``python -m overlaylab.agent``) running from the agent in ``directory``."""
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me and is_agent(int(name)):
            if any(_below(p, directory) for p in _pythonpath(int(name)).split(":") if p):
                out.append(int(name))
    return sorted(out)


def stop_agents_in(directory: str, grace: float = AGENT_GRACE) -> List[str]:
    """SIGTERM the agents working in ``directory``, SIGKILL those still there after ``grace``."""
    done = []
    pids = agents_in(directory)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            done.append("SIGTERM agent %d" % pid)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if os.path.exists("/proc/%d" % p) and p in agents_in(directory)]
        time.sleep(0.2)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            done.append("SIGKILL agent %d (still running after %.0f s)" % (pid, grace))
        except OSError:
            pass
    return done


def release(directory: str, lease: Dict[str, Any]) -> Dict[str, Any]:
    """Stop the agents in ``directory`` and remove everything below it; what was done."""
    stopped = stop_agents_in(directory)
    left = cleanup_mod.inspect(lease)
    items = left.items
    problems = cleanup_mod.remove(left)
    for other in cleanup_mod.leases():  # the agents' own leases of work dirs below it
        if other["id"] != lease["id"] and _below(other.get("path", ""), directory):
            cleanup_mod.release(other)
    try:
        os.rmdir(cleanup_mod.state_dir())  # only if no other lease is in it
    except OSError:
        pass
    return {"stopped": stopped, "items": items, "problems": problems}


def hold(directory: str, run: str, emit: Callable[[Dict[str, Any]], None]) -> int:
    directory = os.path.realpath(directory)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    lease = cleanup_mod.mark(directory, "remote-run", run=run)
    try:
        emit({"record": "held", "dir": directory, "lease": lease["id"], "pid": os.getpid(),
              "python": sys.version.split()[0]})
        while sys.stdin.buffer.read(65536):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        with signals_deferred():
            result = release(directory, lease)
    try:
        emit(dict(result, record="released", dir=directory))
    except (OSError, ValueError):
        pass  # the runner is gone: nobody to tell
    return 1 if result["problems"] else 0
