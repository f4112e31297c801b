"""Helpers of the VM tests (the ``kernel_61`` fixture is suite-wide, in tests/conftest.py)."""
from __future__ import annotations

import os
from typing import Set


def qemu_pids(under: str) -> Set[int]:
    """Live qemu processes whose command line names ``under`` (a run or state directory).

    Read from /proc rather than from a pid file, so a VM whose runner died is found too; a
    zombie is left out, as it is already gone but for its parent's wait.
    """
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
            with open("/proc/%s/stat" % pid) as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            continue
        if argv and os.path.basename(argv[0]).startswith(b"qemu-system") and under.encode() in b" ".join(argv) \
                and not zombie:
            found.add(int(pid))
    return found
