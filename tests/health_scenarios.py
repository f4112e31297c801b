"""Test-only scenarios of the kernel-health tests (issue #14; tests/agent/test_health.py,
tests/lab/test_health_run.py, tests/vm/test_guest_panic.py, tests/vm/test_guest_hang.py).

- ``health-kmsg-warning`` writes one line shaped like a kernel WARNING to /dev/kmsg and PASSes:
  the agent's health check reads the kernel log, so this exercises it end to end without
  hurting the kernel (a user write to /dev/kmsg only logs: no taint, no real warning; the line
  says who wrote it).
- ``health-panic`` crashes the kernel it runs on (sysrq ``c``) on the ``tmpfs`` profile and does
  nothing on the others. Outside a lab qemu guest (the guest init names it ``overlaylab-<release>``)
  it refuses: UNSUPPORTED.
- ``health-hang`` (same profile, same guard) logs :data:`HANG_LINE` to /dev/kmsg (the serial
  console shows it: the host sees the cell is in flight) and sleeps :data:`HANG_SECONDS`: the test
  freezes the VM meanwhile (SIGSTOP on qemu), which is a hung guest as the host sees it.

:func:`site_dir` writes a ``sitecustomize.py`` that registers both in every process with that
directory (and the project) on ``PYTHONPATH``: CLI subprocesses, the local agent (like
tests/throwaway_engine.py) and a qemu guest's agent (its PYTHONPATH is the session's project root).
"""
from __future__ import annotations

import os
import socket
import time

WARNING_LINE = ("WARNING: CPU: 0 PID: 1 at fs/overlayfs/overlaylab-health-test.c:1 ovl_test+0x0/0x0 "
                "(written by overlaylab's tests)")
PANIC_PROFILE = "tmpfs"
HANG_LINE = "overlaylab-health-hang: in flight, sleeping (written by overlaylab's tests)"
HANG_SECONDS = 600.0
#: the test-only scenarios :func:`register` adds (a test removes them from the registry after)
SCENARIO_IDS = ("health-kmsg-warning", "health-panic", "health-hang")

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


def _lab_guest_only(sid: str, harm: str) -> None:
    from overlaylab.agent.scenario import Unsupported
    if not socket.gethostname().startswith("overlaylab-"):
        raise Unsupported("%s %s: only in a lab qemu guest" % (sid, harm))


def _panic(ctx) -> None:
    if ctx.facts.get("profile") != PANIC_PROFILE:
        return
    _lab_guest_only("health-panic", "crashes the kernel")
    with open("/proc/sys/kernel/sysrq", "w") as f:
        f.write("1\n")
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("c\n")


def _hang(ctx) -> None:
    if ctx.facts.get("profile") != PANIC_PROFILE:
        return
    _lab_guest_only("health-hang", "waits %.0f s for the test to freeze the VM" % HANG_SECONDS)
    with open("/dev/kmsg", "w") as f:
        f.write("<5>%s\n" % HANG_LINE)
    time.sleep(HANG_SECONDS)


def register() -> None:
    """Add the scenarios of :data:`SCENARIO_IDS` to this process's catalogue (once)."""
    from overlaylab.agent.scenario import REGISTRY, scenario
    if "health-kmsg-warning" in REGISTRY:
        return
    scenario("health-kmsg-warning", "logs a line shaped like a kernel WARNING", "tests/health_scenarios.py",
             "quirks", needs_mount=False, timeout=30.0)(_warn)
    scenario("health-panic", "crashes the guest kernel on the tmpfs profile", "tests/health_scenarios.py",
             "quirks", needs_mount=False, timeout=60.0)(_panic)
    scenario("health-hang", "sleeps long on the tmpfs profile while the test freezes the guest",
             "tests/health_scenarios.py", "quirks", needs_mount=False, timeout=HANG_SECONDS + 300)(_hang)


def site_dir(parent: str) -> str:
    """``parent/site`` holding the sitecustomize.py that registers them: for PYTHONPATH (with
    the project after it)."""
    d = os.path.join(parent, "site")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "sitecustomize.py"), "w", encoding="utf-8") as f:
        f.write(SITECUSTOMIZE)
    return d
