"""Test-only scenarios of the kernel-health tests (issue #14; tests/agent/test_health.py,
tests/lab/test_health_run.py, tests/vm/test_guest_panic.py).

- ``health-kmsg-warning`` writes one line shaped like a kernel WARNING to /dev/kmsg and PASSes:
  the agent's health check reads the kernel log, so this exercises it end to end without
  hurting the kernel (a user write to /dev/kmsg only logs: no taint, no real warning; the line
  says who wrote it).
- ``health-panic`` crashes the kernel it runs on (sysrq ``c``) on the ``tmpfs`` profile and does
  nothing on the others. Outside a lab qemu guest (the guest init names it ``overlaylab-<release>``)
  it refuses: UNSUPPORTED.

:func:`site_dir` writes a ``sitecustomize.py`` that registers both in every process with that
directory (and the project) on ``PYTHONPATH``: CLI subprocesses, the local agent (like
tests/throwaway_engine.py) and a qemu guest's agent (its PYTHONPATH is the session's project root).
"""
from __future__ import annotations

import os
import socket

WARNING_LINE = ("WARNING: CPU: 0 PID: 1 at fs/overlayfs/overlaylab-health-test.c:1 ovl_test+0x0/0x0 "
                "(written by overlaylab's tests)")
PANIC_PROFILE = "tmpfs"

SITECUSTOMIZE = """\
import os
from tests.health_scenarios import register
register()
import overlaylab.providers.local as _local
_here = os.path.dirname(os.path.abspath(__file__))
if not _local.PROJECT_ROOT.startswith(_here + os.pathsep):
    _local.PROJECT_ROOT = _here + os.pathsep + _local.PROJECT_ROOT
"""


def _warn(ctx) -> None:
    with open("/dev/kmsg", "w") as f:
        f.write("<4>%s\n" % WARNING_LINE)


def _panic(ctx) -> None:
    if ctx.facts.get("profile") != PANIC_PROFILE:
        return
    from overlaylab.agent.scenario import Unsupported
    if not socket.gethostname().startswith("overlaylab-"):
        raise Unsupported("health-panic crashes the kernel: only in a lab qemu guest")
    with open("/proc/sys/kernel/sysrq", "w") as f:
        f.write("1\n")
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("c\n")


def register() -> None:
    """Add both scenarios to this process's catalogue (once)."""
    from overlaylab.agent.scenario import REGISTRY, scenario
    if "health-kmsg-warning" in REGISTRY:
        return
    scenario("health-kmsg-warning", "logs a line shaped like a kernel WARNING", "tests/health_scenarios.py",
             "quirks", needs_mount=False, timeout=30.0)(_warn)
    scenario("health-panic", "crashes the guest kernel on the tmpfs profile", "tests/health_scenarios.py",
             "quirks", needs_mount=False, timeout=60.0)(_panic)


def site_dir(parent: str) -> str:
    """``parent/site`` holding the sitecustomize.py that registers them: for PYTHONPATH (with
    the project after it)."""
    d = os.path.join(parent, "site")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "sitecustomize.py"), "w", encoding="utf-8") as f:
        f.write(SITECUSTOMIZE)
    return d
