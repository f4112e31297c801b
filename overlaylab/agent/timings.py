"""Where an agent's seconds go: named phases, summed, for the ``timings`` of its records.

A profile record's ``timings`` holds the agent's start-up (``startup``: interpreter, ``site``
and the agent's imports, read from the process's own start time in ``/proc/self/stat``), the
backing fs's steps (``image``, ``losetup``, ``mkfs``, ``inspect``, ``mount``), the probes
(``probes``, ``features``, ``driver_init``) and the kernel-log reads (``kmsg``); a cell
record's ``timings`` its ``setup`` (expectation, scratch directory, taint), ``scenario``,
``teardown`` (the context's close, the scratch removal) and ``health`` (kmsg and taint reads).
Both are optional fields: records without them (older runs) load unchanged.

``OVERLAYLAB_AGENT_PROFILE=DIR`` makes the agent run under :mod:`cProfile` and write
``DIR/agent-<command>-<pid>.prof`` (:func:`profiled`; read it with ``python -m pstats``).

Standard library only: the agent runs this inside a target.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Dict, Iterator, Optional

PROFILE_ENV = "OVERLAYLAB_AGENT_PROFILE"


class Timings(Dict[str, float]):
    """Seconds per phase name; a phase timed twice adds up."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - start)

    def add(self, name: str, seconds: float) -> None:
        self[name] = round(self.get(name, 0.0) + seconds, 4)


def process_age() -> Optional[float]:
    """Seconds since this process was started (``starttime`` of ``/proc/self/stat`` against
    ``/proc/uptime``, both since boot; clock-tick resolution), or None where unreadable."""
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        # the fields after the command name, which is in parentheses and may hold anything
        fields = stat.rsplit(")", 1)[1].split()
        return round(uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


def profiled(name: str, func: Callable[[], Any]) -> Any:
    """``func()``, under cProfile when ``OVERLAYLAB_AGENT_PROFILE`` names a directory."""
    where = os.environ.get(PROFILE_ENV)
    if not where:
        return func()
    import cProfile
    profiler = cProfile.Profile()
    try:
        return profiler.runcall(func)
    finally:
        os.makedirs(where, exist_ok=True)
        profiler.dump_stats(os.path.join(where, "agent-%s-%d.prof" % (name, os.getpid())))
